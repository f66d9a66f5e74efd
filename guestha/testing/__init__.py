# SPDX-License-Identifier: Apache-2.0
"""Support for running guestha's real processes (agent, controller,
libvirt test-driver domains, test VMs, simulated guests) in the tests, the
benchmarks and the demo; never imported by the services.

Nothing here runs at import: each module starts processes, servers or
domains only when called (``processes`` and ``guest_vms`` register exit
hooks that end what they started, nothing else).  The modules:

* :mod:`~guestha.testing.processes`: child processes that end with their
  parent however it ends (process groups, a death signal, a watchdog,
  the reaping of orphans); ``python -m guestha.testing.processes reap``;
* :mod:`~guestha.testing.child_processes`: the child processes of one
  test or benchmark run, ended together in its teardown;
* :mod:`~guestha.testing.wait`: waiting in real time for what another
  process does (:func:`~guestha.testing.wait.wait_until`);
* :mod:`~guestha.testing.ports`: a free TCP port of 127.0.0.1;
* :mod:`~guestha.testing.libvirt_domains`: domains and node files of
  libvirtd's test driver;
* :mod:`~guestha.testing.agent_harness`: a real guestha-agent, the
  controller stub and real guest daemons;
* :mod:`~guestha.testing.controller_stub`: the controller side of the RPC
  API, recording what reaches it (``python -m
  guestha.testing.controller_stub``);
* :mod:`~guestha.testing.server_harness`: real guestha-server processes,
  RPC agents in the test process, Nova's notifications;
* :mod:`~guestha.testing.novaless_servers`: guestha-server processes with
  no ``[nova]``;
* :mod:`~guestha.testing.shared_controllers`: a MariaDB and a Redis of a
  run's own, controllers posing as controller hosts, fault storms;
* :mod:`~guestha.testing.fake_nova`: a fake Nova compute API over HTTP;
* :mod:`~guestha.testing.guest_vms`: real test VMs (a tiny Linux guest
  under QEMU through libvirtd);
* :mod:`~guestha.testing.cloud_rig`: guestha on the cloud of
  ``tools/cloud.sh``.

The simulated guests are guest-side and standard library only:
:mod:`guestha_guest.testing`.  These modules run from a checkout: some
start what lives beside the package there (``tools/build-vm-assets.sh``,
``tools/cloud.sh``, ``tools/vm_guest_control.py``, the samples of
``tests/unit/server/samples``).
"""
