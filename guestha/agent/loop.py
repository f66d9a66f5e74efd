# SPDX-License-Identifier: Apache-2.0
"""The agent's one I/O loop: every channel of every instance, no thread
per VM.

Theory of operation
-------------------
One thread owns all instance state.  It waits in epoll (``_Epoll``) on the
channel sockets, the status socket and a wake-up socket, for at most the
time to the earliest timer in a heap.  Other threads (the libvirt watcher,
the oslo.messaging server delivering server-group messages, the hot-plug
workers) never touch an instance: they :meth:`post` a record, which wakes
the loop.  So a slow libvirt call, a Nova request or a broker outage can
delay nothing but itself, and one guest's flood costs it only its own rate
budget.

The heap holds ``(when, n, instance)``; an instance keeps its own
``wake_at`` and entries that no longer match it are stale and skipped, so
rescheduling is a push, never a search.

Wake-ups come in batches (``batch_delay``, ``[agent] batch_delay_ms``).
At 1,000 instances and a 1 s interval a challenge is due every
millisecond and its answer comes back a fraction of a millisecond later:
a loop that waits for the next thing would wake up one or two thousand
times a second, and each wake-up (the context switch, ``epoll``, the
loop's own Python) costs about as much as the work it does.  So after a
wake-up that found work, the loop sleeps until ``batch_delay`` after that
wake-up and then takes everything at once: the answers that arrived, the
challenges that fell due, the posted records.  A timer fires, and an
answer is read, at most about ``batch_delay`` late (a few milliseconds
against deadlines of at least 100 ms; an answer that arrives before its
deadline's timer has fired is read before it, as without the delay).  A
wake-up that found nothing to do (an idle agent) is followed by the
ordinary wait, until the earliest timer or the first ready socket.

Open faults (an instance's fault not yet followed by its recovery) are
kept for the next start in the outbox's sqlite file, in the transaction
that writes the fault or recovery event itself (see
:mod:`guestha.agent.outbox`): there is no moment at which one is saved
and the other not.  The loop keeps the same table in memory, following
the events it reports.
"""

import base64
import binascii
import collections
import concurrent.futures
import heapq
import itertools
import json
import logging
import math
import os
import queue
import select
import socket
import sqlite3
import threading
import time

from guestha.agent import events as ev
from guestha.agent import instance as inst_mod
from guestha.agent import monitored as monitored_mod
from guestha.agent import statereport
from guestha_guest import protocol as p

LOG = logging.getLogger(__name__)

#: The counters of an instance the metrics export
#: (guestha.metrics.HEARTBEAT_COUNTERS, without importing it here).
_HEARTBEAT_COUNTERS = ("challenges", "answers", "missed", "unhealthy",
                       "faults")


class Deliver(object):
    """A server-group message from the controller for one local instance
    (posted by the RPC endpoint thread)."""

    __slots__ = ("instance", "message")

    def __init__(self, instance, message):
        self.instance = instance
        self.message = message


class MetricsRequest(object):
    """A scrape's request for :meth:`AgentLoop.metrics_snapshot` (posted
    by the metrics exporter's thread, answered by the loop)."""

    __slots__ = ("done", "result")

    def __init__(self):
        self.done = threading.Event()
        self.result = None


class _Features(object):
    """What Nova said about an instance's flavor (posted by a worker)."""

    __slots__ = ("instance", "features")

    def __init__(self, instance, features):
        self.instance = instance
        self.features = features


_READ = select.EPOLLIN  # == selectors.EVENT_READ


class _Poller(object):
    """What the loop used of ``selectors.EpollSelector``, at less cost per
    wake-up (the loop wakes up about a thousand times a second at 1,000
    instances): the same ``epoll`` calls, without building a
    ``SelectorKey`` list on every wake-up.  Read events only; ``poll``
    returns ``(callback, fileobj, mask)``, the callback being called as
    ``callback(fileobj, mask)``; EPOLLHUP and EPOLLERR count as readable, as
    the selector counted them.
    """

    def __init__(self):
        self._epoll = select.epoll()
        self._handlers = {}  # fd -> (callback, fileobj)
        self._fds = {}       # fileobj -> fd (it may be closed by unregister)

    def register(self, fileobj, callback):
        fd = fileobj.fileno()
        if fd in self._handlers:
            raise KeyError("%r (fd %d) is already registered" % (fileobj, fd))
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = (callback, fileobj)
        self._fds[fileobj] = fd

    def unregister(self, fileobj):
        """Raises KeyError if ``fileobj`` is not registered."""
        fd = self._fds.pop(fileobj)
        del self._handlers[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed meanwhile: the kernel dropped it already

    def poll(self, timeout):
        if timeout <= 0:
            timeout = 0
        else:
            # as selectors: round up to the millisecond, so that a timer
            # is never woken for a little before it is due
            timeout = math.ceil(timeout * 1e3) * 1e-3
        handlers = self._handlers
        ready = []
        for fd, event in self._epoll.poll(timeout, max(len(handlers), 1)):
            entry = handlers.get(fd)
            if entry is not None:
                ready.append((entry[0], entry[1],
                              event if event & select.EPOLLOUT else _READ))
        return ready

    def modify(self, fileobj, writable):
        """Also report ``fileobj`` writable (EPOLLOUT in the mask), or
        not; raises KeyError if it is not registered."""
        fd = self._fds[fileobj]
        self._epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT if writable
                           else select.EPOLLIN)

    def close(self):
        self._epoll.close()
        self._handlers.clear()
        self._fds.clear()


class AgentLoop(inst_mod.Env):
    """The agent's loop and the instances' environment.

    :param reporter: delivers fault reports (``submit``) and server-group
        relays (``cast_relay``); see :mod:`guestha.agent.reporter`.
    :param watcher: the libvirt watcher (``request_state``,
        ``request_hotplug``), or None (tests).
    :param hotplug_policy: decides whether to add a channel
        (:mod:`guestha.agent.hotplug`), or None to never hot-plug.
    :param outbox: the :class:`~guestha.agent.outbox.Outbox` whose open
        faults this start begins with (an older agent's
        ``<state_dir>/faults.json`` is moved into it); None (tests) to
        start with none.
    :param state_reports: report each instance's monitoring state to the
        controllers (:mod:`guestha.agent.statereport`), for the REST API.
    """

    def __init__(self, host, policy, reporter, state_dir, watcher=None,
                 hotplug_policy=None, status_socket=None,
                 clock=time.monotonic, wallclock=time.time,
                 alive_interval=30.0, outbox=None, state_reports=False,
                 batch_delay=0.0, sleep=time.sleep):
        self.host = host
        self.policy = policy
        self.reporter = reporter
        self.watcher = watcher
        self.hotplug_policy = hotplug_policy
        self.status_socket = status_socket
        self._clock = clock
        self._wallclock = wallclock
        self.alive_interval = alive_interval
        self.instances = {}
        self.sel = _Poller()
        self._heap = []
        self._n = itertools.count()
        self._posted = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        # wake-up batching (see the module's doc): 0 to wake for each
        # thing as it comes; the time of the latest wake-up that found
        # work, or None
        self.batch_delay = batch_delay
        self._sleep = sleep
        self._busy_since = None
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="guestha-hotplug")
        self._faults_path = os.path.join(state_dir, "faults.json")
        self._open_faults = self._load_faults(outbox)
        self._monitored = monitored_mod.MonitoredFile(state_dir)
        self._next_alive = None
        self._status_listener = None
        self.libvirt_connected = None
        self.started_at = None
        # the latest challenge round trips, all instances together
        self._rtts = collections.deque(maxlen=20000)
        self.answers = 0
        # for the metrics: faults reported by kind, the heartbeat counters
        # of instances gone since the start, and the round-trip histogram
        # (None until an exporter asks: the ring is folded into it in
        # batches, never per answer)
        self.fault_kinds = collections.Counter()
        self._retired = collections.Counter()
        self._rtt_hist = None
        self._rtt_folded = 0
        # each instance's state to the controllers, for the REST API
        self.state_reports = (statereport.StateReporter(
            host, reporter.submit, wallclock) if state_reports else None)

    # -- thread-safe entry points ---------------------------------------------

    def post(self, record):
        """Hand a record to the loop, from any thread."""
        self._posted.put(record)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the loop is already being woken

    def stop(self):
        self.post(None)

    # -- running --------------------------------------------------------------

    def start(self):
        self.sel.register(self._wake_r, self._woken)
        if self.status_socket:
            self._open_status_socket()
        self.started_at = self._clock()
        self._next_alive = self.started_at + 1.0
        self._running = True

    def run(self):
        if not self._running:
            self.start()
        try:
            while self._running:
                self.run_once()
        finally:
            self._shutdown()

    def run_once(self, max_wait=1.0):
        busy_since = self._busy_since
        if busy_since is not None:
            # the last wake-up found work: let more gather, then take it
            # all with one look (see the module's doc)
            rest = busy_since + self.batch_delay - self._clock()
            if rest > 0:
                self._sleep(rest)
            wait = 0.0
        else:
            wait = max_wait
            if self._heap:
                wait = max(0.0, min(wait, self._heap[0][0] - self._clock()))
        ready = self.sel.poll(wait)
        if self.batch_delay > 0:
            now = self._clock()
            heap = self._heap
            self._busy_since = now if ready or (
                heap and heap[0][0] <= now) else None
        for callback, fileobj, mask in ready:
            callback(fileobj, mask)
        self._process_posted()
        self._housekeeping(self._fire_timers(self._clock()))

    def _woken(self, sock, mask):
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _fire_timers(self, now):
        """Tick every instance whose timer is due at ``now``; returns the
        latest clock reading."""
        heap = self._heap
        clock = self._clock
        last = now
        while heap and heap[0][0] <= now:
            when, _n, instance = heapq.heappop(heap)
            if instance.wake_at != when or self.instances.get(
                    instance.uuid) is not instance:
                continue  # stale entry
            instance.wake_at = None
            # A fresh reading for each instance: its challenge goes out
            # now, and the next one is due an interval after that.  With
            # one reading for the whole batch, every instance fired in it
            # got the same next time, so instances fired together (after
            # any stall) stayed together for good and the batches only
            # grew, until working through one showed in the round trips
            # (p50 20-160 ms at 5,000 instances).
            last = clock()
            instance.tick(last)
        return last

    def _housekeeping(self, now):
        if (self._rtt_hist is not None
                and self.answers - self._rtt_folded > 10000):
            self._fold_rtts()  # before the ring (20,000) overwrites them
        if self._monitored.dirty:
            self._monitored.save(self.instances)
        if self.state_reports is not None:
            self.state_reports.tick(now, self.instances)
        if self._next_alive is not None and now >= self._next_alive:
            self._next_alive = now + self.alive_interval
            # what this host monitors, so controllers learn where each
            # instance lives; server_group_messaging is what the flavor
            # said when we looked it up for a hot-plug, None if we did not
            # look (the controller asks Nova itself)
            self.reporter.cast_relay("agent_alive", instances=[
                {"instance": i.uuid,
                 "heartbeat": i.state == inst_mod.MONITORED,
                 "server_group_messaging": i.features.get(
                     "server_group_messaging")}
                for i in self.instances.values()])

    def _shutdown(self):
        LOG.info("agent loop stopping")
        self._monitored.save(self.instances)
        for instance in list(self.instances.values()):
            instance._close()
        if self._status_listener is not None:
            self._status_listener.close()
            try:
                os.unlink(self.status_socket)
            except OSError:
                pass
        self._workers.shutdown(wait=False)
        self.sel.close()

    # -- posted records -------------------------------------------------------

    def _process_posted(self):
        if self._posted.empty():
            # the usual case: nothing posted (cheaper than get_nowait()
            # raising queue.Empty on every iteration of the loop)
            return
        while True:
            try:
                record = self._posted.get_nowait()
            except queue.Empty:
                return
            if record is None:
                self._running = False
                continue
            try:
                self._handle(record, self._clock())
            except Exception:  # noqa: BLE001 - one record, not the loop
                LOG.exception("failed to handle %r", record)

    def _handle(self, record, now):
        if isinstance(record, ev.DomainUpdate):
            info = record.info
            instance = self.instances.get(info.uuid)
            if instance is None:
                if info.state == ev.SHUTOFF:
                    # its next start boots a new guest: nothing from
                    # before this start of the agent applies
                    self._monitored.forget([info.uuid])
                    return
                instance = inst_mod.Instance(
                    info.uuid, self, self.policy, now,
                    open_fault=self._open_faults.get(info.uuid),
                    was_monitored=self._monitored.claim(
                        info.uuid, info.domain_id))
                self.instances[info.uuid] = instance
            instance.domain(info, now, record.event)
        elif isinstance(record, ev.DomainGone):
            self._gone(record.uuid, now)
        elif isinstance(record, ev.Reconciled):
            for uuid in [u for u in self.instances if u not in record.uuids]:
                self._gone(uuid, now)
            # domains deleted or migrated away while the agent was down
            self._monitored.forget(self._monitored.unclaimed()
                                   - set(record.uuids))
        elif isinstance(record, ev.LibvirtStatus):
            self.libvirt_connected = record.connected
            if record.connected:
                LOG.info("libvirt connected (%s)", record.uri)
            else:
                LOG.warning("libvirt connection lost (%s): %s; instance "
                            "state kept", record.uri, record.error)
        elif isinstance(record, ev.HotplugResult):
            instance = self.instances.get(record.uuid)
            if instance is not None:
                instance.hotplug_result(record, now)
        elif isinstance(record, ev.DomainState):
            instance = self.instances.get(record.uuid)
            if instance is not None:
                instance.confirmed(record.state, record.token, now)
        elif isinstance(record, _Features):
            instance = self.instances.get(record.instance)
            if instance is not None:
                instance.features = record.features
        elif isinstance(record, MetricsRequest):
            try:
                record.result = self.metrics_snapshot(now)
            finally:
                record.done.set()
        elif isinstance(record, Deliver):
            instance = self.instances.get(record.instance)
            if instance is None or not instance.deliver(record.message):
                LOG.debug("instance %s: server-group message not "
                          "delivered (channel not ready)", record.instance)
        else:
            LOG.error("unknown record %r", record)

    def _gone(self, uuid, now):
        instance = self.instances.pop(uuid, None)
        if instance is not None:
            for name in _HEARTBEAT_COUNTERS:
                self._retired[name] += instance.counters[name]
            # a fault still open stays in _open_faults (report() follows
            # the events), for the instance's return
            instance.domain_gone(now)

    # -- the RPC endpoint's handler (called in oslo.messaging's threads) ----

    def _deliver(self, instance, build):
        try:
            msg = build()
        except (p.LocalProtocolError, ValueError, TypeError,
                binascii.Error) as exc:
            LOG.warning("instance %s: dropped a server-group message from "
                        "the controller: %s", instance, exc)
            return
        self.post(Deliver(instance, msg))

    def on_deliver_broadcast(self, instances, sender, payload_b64):
        payload = base64.b64decode(payload_b64)
        for uuid in instances:
            self._deliver(uuid, lambda: p.Broadcast(payload=payload,
                                                    sender=sender))

    def on_deliver_notification(self, instances, instance, state, event):
        for uuid in instances:
            self._deliver(uuid, lambda: p.Notification(
                instance=instance, state=state, event=event))

    def on_deliver_status(self, instance, seq, members, group):
        self._deliver(instance, lambda: p.Status(
            ref=seq, group=group, members=[
                p.Member(m["instance"], m["state"]) for m in members]))

    def on_deliver_error(self, instance, seq, code, message):
        self._deliver(instance, lambda: p.Error(
            app="server_group", code=code, message=message[:200], ref=seq))

    # -- Env: what instances ask of us ----------------------------------------

    def schedule(self, instance, when):
        heapq.heappush(self._heap, (when, next(self._n), instance))

    def open_channel(self, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # connecting to a local UNIX socket completes at once or fails
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def watch(self, instance, sock):
        def ready(sock, mask, instance=instance):
            if mask & select.EPOLLOUT:
                instance.writable(self._clock())
                if not mask & ~select.EPOLLOUT:
                    return  # writable only
            instance.readable(self._clock())
        self.sel.register(sock, ready)

    def watch_writable(self, instance, sock, writable):
        try:
            self.sel.modify(sock, writable)
        except (KeyError, ValueError, OSError):
            pass  # unwatched or closed meanwhile

    def monitoring_changed(self):
        self._monitored.dirty = True

    def unwatch(self, sock):
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def confirm_running(self, instance, token):
        if self.watcher is None:
            # no libvirt (tests): trust what the last update said
            state = instance.info.state if instance.info else None
            self.post(ev.DomainState(instance.uuid, state, token,
                                     self._clock()))
            return
        self.watcher.request_state(instance.uuid, token)

    def hotplug(self, instance):
        if self.hotplug_policy is None or self.watcher is None:
            instance.note = "no guestha channel (hot-plug disabled)"
            return
        info = instance.info
        self._workers.submit(self._decide_hotplug, info)

    def _decide_hotplug(self, info):
        # a worker thread: the Nova lookup is HTTP and may be slow
        try:
            decision, arg = self.hotplug_policy.decide(info)
        except Exception as exc:  # noqa: BLE001 - top of a worker task
            LOG.warning("instance %s: hot-plug decision failed: %s",
                        info.uuid, exc)
            self.post(ev.HotplugResult(info.uuid, "error", str(exc), None,
                                       self._clock()))
            return
        if info.nova:
            try:
                # from the domain XML, or cached by the Nova client since
                # decide() asked
                features = self.hotplug_policy.features(info)
            except Exception:  # noqa: BLE001 - informational only
                features = None
            if features:
                self.post(_Features(info.uuid, dict(features)))
        if decision == "attach":
            self.watcher.request_hotplug(info.uuid, arg)
        else:
            self.post(ev.HotplugResult(info.uuid, "not_enabled", arg, None,
                                       self._clock()))

    def report(self, event):
        # the same bookkeeping as the outbox's, which does it in the
        # transaction that writes the event
        if event.get("type") == "fault":
            self.fault_kinds[event.get("kind")] += 1
            self._open_faults[event["instance"]] = {
                "id": event["id"], "kind": event.get("kind")}
        elif event.get("type") == "recovery":
            fault = self._open_faults.get(event["instance"])
            if fault is not None and fault["id"] == event["fault_id"]:
                del self._open_faults[event["instance"]]
        self.reporter.submit(event)

    def relay(self, method, **kwargs):
        self.reporter.cast_relay(method, **kwargs)

    def faults_changed(self):
        pass  # recorded with the event itself, by report()

    def wallclock(self):
        return self._wallclock()

    def record_rtt(self, seconds):
        self._rtts.append(seconds)
        self.answers += 1

    def rtt_summary(self):
        """Percentiles (ms) of the latest challenge round trips."""
        rtts = sorted(self._rtts)
        if not rtts:
            return None

        def pct(q):
            return round(1000.0 * rtts[min(len(rtts) - 1,
                                           int(q * len(rtts)))], 3)
        return {"samples": len(rtts), "p50": pct(0.50), "p99": pct(0.99),
                "max": round(1000.0 * rtts[-1], 3)}

    # -- durable open faults --------------------------------------------------

    def _load_faults(self, outbox):
        if outbox is None:
            return {}
        try:
            outbox.adopt_faults_json(self._faults_path)
        except (sqlite3.Error, OSError) as exc:
            LOG.error("cannot move the open faults of %s into the outbox "
                      "%s (%s): using the file as it is, and trying again "
                      "at the next start", self._faults_path, outbox.path,
                      exc)
            faults = _read_faults_json(self._faults_path)
        else:
            faults = {}
        try:
            faults.update(outbox.open_faults())
        except sqlite3.Error as exc:
            LOG.error("cannot read the open faults in the outbox %s (%s): "
                      "faults open before this start are forgotten",
                      outbox.path, exc)
        if faults:
            LOG.info("%d open fault(s) from before this start: %s",
                     len(faults), ", ".join(sorted(faults)))
        return faults

    # -- status ---------------------------------------------------------------

    def status(self):
        now = self._clock()
        return {"host": self.host,
                "uptime_s": round(now - (self.started_at or now), 1),
                "libvirt_connected": self.libvirt_connected,
                "reporter": self.reporter.stats(),
                "answers": self.answers,
                "rtt_ms": self.rtt_summary(),
                "instances": [i.status(now) for i in sorted(
                    self.instances.values(), key=lambda i: i.uuid)]}

    # -- metrics (guestha.metrics) ------------------------------------------

    def request_metrics(self, timeout):
        """The loop's :meth:`metrics_snapshot`, from any thread.

        :raises TimeoutError: the loop did not answer within ``timeout``.
        """
        request = MetricsRequest()
        self.post(request)
        if not request.done.wait(timeout) or request.result is None:
            raise TimeoutError("the agent loop did not answer within %.1f s"
                               % timeout)
        return request.result

    def metrics_snapshot(self, now):
        """What :class:`guestha.metrics.AgentCollector` exports (the
        loop's thread): plain values, no reference to live state."""
        if self._rtt_hist is None:
            from guestha import metrics
            self._rtt_hist = metrics.RttHistogram()
            # the round trips before the first scrape are not counted
            self._rtt_folded = self.answers
        self._fold_rtts()
        instances = []
        for i in self.instances.values():
            nova = (i.info.nova if i.info is not None else None) or {}
            c = i.counters
            instances.append((
                i.uuid, nova.get("project"), i.state,
                i.fault.get("kind") if i.fault else None,
                tuple(c[name] for name in _HEARTBEAT_COUNTERS)))
        hist = self._rtt_hist
        return {"instances": instances,
                "retired": dict(self._retired),
                "fault_kinds": dict(self.fault_kinds),
                "rtt": {"buckets": hist.buckets(), "sum": hist.total},
                "reporter": self.reporter.stats(),
                "libvirt_connected": self.libvirt_connected,
                "uptime_s": now - (self.started_at or now)}

    def _fold_rtts(self):
        new = min(self.answers - self._rtt_folded, len(self._rtts))
        self._rtt_folded = self.answers
        if new > 0:
            self._rtt_hist.add(list(itertools.islice(reversed(self._rtts),
                                                     new)))

    def _open_status_socket(self):
        path = self.status_socket
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o660)
        listener.listen(8)
        listener.setblocking(False)
        self._status_listener = listener
        self.sel.register(listener, self._status_client)

    def _status_client(self, listener, mask):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        data = (json.dumps(self.status()) + "\n").encode()
        # writing may take a while for thousands of instances and a slow
        # reader: not in the loop's thread
        threading.Thread(target=_send_and_close, args=(conn, data),
                         daemon=True).start()


def _read_faults_json(path):
    """An older agent's open faults file, read only."""
    try:
        with open(path) as f:
            faults = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        LOG.error("cannot read %s (%s): open faults from before this start "
                  "are forgotten", path, exc)
        return {}
    return faults if isinstance(faults, dict) else {}


def _send_and_close(conn, data):
    try:
        conn.settimeout(5.0)
        conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
