# SPDX-License-Identifier: Apache-2.0
"""Where the controller's events go: the sinks and the action worker.

:class:`Deliveries` is the one way an event reaches them, new from the
endpoint (:mod:`guestha.server.endpoint`) or dispatched again from the
ledger (:mod:`guestha.server.keeper`), and the way the sinks' workers tell
the ledger what became of each delivery: in flight before a batch goes to
its sink, done or failed after.
"""

from guestha import metrics
from guestha.server import ledger as ledger_mod


class Deliveries(object):
    """Hands events to the sinks and the action worker, and tells the
    ledger how each delivery ended (the dispatcher's ``on_result``).

    :param ledger: :class:`~guestha.server.ledger.Ledger`.
    :param dispatcher: :class:`~guestha.sinks.base.SinkDispatcher` (its
        ``submit``).
    :param actions: :class:`~guestha.server.actions.ActionWorker` (its
        ``submit``).
    """

    def __init__(self, ledger, dispatcher, actions):
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.actions = actions
        self.received = metrics.Tally()  # (type, kind), for the metrics

    def on_result(self, event, sink_name, state):
        self.ledger.mark_later(event["id"], sink_name, state)

    def before_send(self, sink_name, events):
        """The sink's worker is about to hand ``events`` to the sink: in
        flight in the ledger first (:meth:`Ledger.begin_sending`), and
        only those this controller still owns."""
        mine = self.ledger.begin_sending(sink_name,
                                         [e["id"] for e in events])
        send = []
        for event in events:
            if event["id"] in mine:
                mine.discard(event["id"])   # once, even if queued twice
                send.append(event)
        return send

    def on_results(self, sink_name, events, state):
        """A delivered batch's outcome, written at once: the shorter a
        delivery stays in flight after the sink has it, the fewer
        deliveries a controller that dies leaves in doubt.  Queued for the
        keeper's next flush if the database fails (and the other outcomes,
        drops and skips, always: :meth:`on_result`)."""
        results = [(e["id"], sink_name, state) for e in events]
        try:
            self.ledger.mark(results)
        except Exception:  # noqa: BLE001 - never lose an outcome
            for result in results:
                self.ledger.mark_later(*result)

    def dispatch(self, event, targets=None):
        """Hand a new ``event`` to every sink and, a fault, to the action
        worker; or an event dispatched again to its ``targets`` (the
        ledger's pending ones, :data:`~guestha.server.ledger.ACTIONS` for
        the worker).  The one way in to the worker."""
        if targets is None:
            self.received.add(event.get("type"), event.get("kind"))
            if self.ledger.handed_over(event["id"]):
                # it follows earlier events of its instance that another
                # controller owes (or that this one has not queued yet):
                # their owner dispatches it after them (Ledger.take_handed)
                return
            self.dispatcher.submit(event)
            if event.get("type") == "fault":
                self.actions.submit(event)
            return
        sinks = [t for t in targets if t != ledger_mod.ACTIONS]
        if sinks:
            self.dispatcher.submit(event, sinks=sinks)
        if ledger_mod.ACTIONS in targets:
            self.actions.submit(event)

    def redispatch(self, work):
        for event, targets in work:
            self.dispatch(event, targets)
        return len(work)

    def report_action(self, record):
        """An action record: into the ledger, then to the sinks."""
        if self.ledger.record(record):
            self.dispatcher.submit(record)
