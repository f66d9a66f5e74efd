# SPDX-License-Identifier: Apache-2.0
"""The demo on the real cloud: ``tools/demo.py run --cloud``.

Brings up the cloud of tools/cloud.sh (unless it runs; then it is left
running), a real guestha-agent and guestha-server configured as a
deployment would be (guestha/testing/cloud_rig.py: the agent with no Nova
credentials, the controller with the cloud's, ``[actions] allowed_max =
reboot``), and boots ``--vms`` Nova servers of the ``guestha.heartbeat``
flavor from the ``guestha-guest`` image.  Then it prints, every
``--refresh`` seconds, the agent's view of each server, Nova's status
and the latest records of the log sink.  ``--script 30:freeze,60:pause``
acts at given seconds after the servers are monitored: ``freeze`` /
``thaw`` the guest daemon (SIGSTOP / SIGCONT through qemu-ga: a hung
daemon, which guestha repairs with a hard reboot through Nova), ``pause``
/ ``resume`` the server through Nova (no fault expected).  ``--duration``
stops it; Ctrl-C too.  The servers are deleted at the end and the cloud
taken down if the demo brought it up.
"""

import time

from guestha.testing import cloud_rig as riglib

CLOUD_ACTIONS = ("freeze", "thaw", "pause", "resume")


def _act(gha, server, action):
    if action == "freeze":
        riglib.guest_ok(server.id, "kill -STOP $(guestha-daemon-pid)")
    elif action == "thaw":
        riglib.guest_sh(server.id, "kill -CONT $(guestha-daemon-pid)")
    elif action == "pause":
        gha.conn.compute.pause_server(server)
    elif action == "resume":
        gha.conn.compute.unpause_server(server)
    else:
        raise ValueError("on the cloud the demo knows %s, not %s"
                         % (", ".join(CLOUD_ACTIONS), action))


def _screen(gha, servers, names, since, say):
    say("-" * 72)
    for server in servers:
        inst = gha.agent.instance(server.id) or {}
        nova = gha.conn.compute.get_server(server)
        counters = inst.get("counters") or {}
        say("%-5s %s  nova %-8s agent %-10s answers %-5s missed %-3s %s",
            names[server.id], server.id[:8], nova.status,
            inst.get("state", "-"), counters.get("answers", "-"),
            counters.get("missed", "-"),
            "FAULT" if inst.get("fault") else "")
    for record in [r for s in servers for r in gha.sink(s.id, since=since)
                   ][-6:]:
        say("  sink: %-8s %s %s %s", record.get("type"),
            names.get(record.get("instance"), "?"),
            " ".join(filter(None, (record.get("action"),
                                   record.get("step")))) or
            record.get("kind") or "", record.get("outcome") or "")


def run(args, say, script):
    """``script``: [(seconds, action, vm label or None)]."""
    was_up = riglib.cloud_status()["services"]["nova-compute"]["running"]
    if not was_up:
        say("bringing the cloud up (tools/cloud.sh up, 1-2 min) ...")
        riglib.cloud_sh("up")
    gha = None
    try:
        gha = riglib.GuestHA(riglib.Cloud(True))
        gha.start_server(max_actions=3)
        gha.agent.start()
        say("guestha-server and guestha-agent running (logs in %s)",
            gha.workdir)
        servers = [gha.create("demo-vm%d" % (i + 1))
                   for i in range(args.vms)]
        names = {s.id: "vm%d" % (i + 1) for i, s in enumerate(servers)}
        servers = [gha.wait_active(s)[0] for s in servers]
        say("%d server(s) ACTIVE; waiting for their daemons ...",
            len(servers))
        for server in servers:
            gha.wait_monitored(server.id)
        say("monitored: %s", ", ".join(sorted(names.values())))
        started = time.monotonic()
        since = time.time()
        pending = sorted(script)
        while not args.duration or (
                time.monotonic() - started < args.duration):
            now = time.monotonic() - started
            while pending and pending[0][0] <= now:
                _, action, label = pending.pop(0)
                label = label or "vm1"
                server = next(s for s in servers
                              if names[s.id] == label)
                say("%s: %s", label, action)
                _act(gha, server, action)
            _screen(gha, servers, names, since, say)
            time.sleep(args.refresh)
    finally:
        if gha is not None:
            say("stopping: servers deleted, agent and server stopped")
            gha.close()
        if not was_up:
            say("taking the cloud down")
            riglib.cloud_sh("down", check=False)
    return 0
