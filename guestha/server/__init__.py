# SPDX-License-Identifier: Apache-2.0
"""The controller, ``guestha-server``.

* :mod:`guestha.server.ledger`: the durable record of accepted events and
  what each sink still owes (shared by the controllers of one host);
* :mod:`guestha.server.endpoint`: the RPC endpoint the agents call;
* :mod:`guestha.server.deliveries`: the one way events reach the sinks
  and the action worker, and their outcomes the ledger;
* :mod:`guestha.server.keeper`: the ledger's periodic work (flush, lease,
  take-over, relay election, pruning);
* :mod:`guestha.server.actions`: corrective actions through Nova, under
  the operator's policy and a cap;
* :mod:`guestha.server.groups`: server-group membership, states and
  hosts, and routing of broadcasts, notifications and status answers;
* :mod:`guestha.server.notifications`: Nova's versioned notifications;
* :mod:`guestha.server.service`: the whole, assembled from the
  configuration.

See doc/source/server.rst.
"""
