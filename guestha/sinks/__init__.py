"""Fault sinks: where the controller sends the events it accepted.

A sink is a :class:`~guestha.sinks.base.FaultSink` plugin in the stevedore
namespace ``guestha.fault_sinks`` (``log``, ``vitrage``, ``masakari``),
enabled by ``[sinks] enabled``.  :class:`~guestha.sinks.base.SinkDispatcher`
feeds them, each from its own thread and queue, so one that is down never
holds up another.  See doc/source/sinks.rst.
"""
