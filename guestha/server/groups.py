# SPDX-License-Identifier: Apache-2.0
"""Server-group messaging: who is in which group, where each member runs,
and routing broadcasts, notifications and status answers between them.

Theory of operation
-------------------
The directory is a cache of three things, each with its source:

* **membership** (instance -> server group): Nova's ``GET
  /os-server-groups?all_projects=True``, read page by page (Nova answers
  at most ``[api] max_limit`` groups a request) every ``[server]
  group_refresh_interval`` seconds and after every ``server_group.*`` and
  ``instance.delete.end`` notification; and when an instance that is in
  no known group speaks (it may have joined one a moment ago), at most
  every :data:`MISS_REFRESH_GAP` seconds per instance, that instance's own
  group: ``server_groups`` of the server (microversion 2.71) and ``GET
  /os-server-groups/{id}``, or, from a Nova older than 2.71, every group;
* **Nova state** of each instance (its ``vm_state``): Nova's versioned
  notifications, or ``GET /servers/{id}`` the first time it is needed;
* **host** of each instance: the agents (``relay_broadcast``,
  ``query_status`` and ``agent_alive`` name theirs), the notifications
  (``host`` of the payload), or ``OS-EXT-SRV-ATTR:host`` from Nova the
  first time it is needed.

Nova's state changes: every controller hears each notification (its own
pool) and, when it is a change for the peers, records it in the ledger
(:meth:`~guestha.server.ledger.Ledger.record_state_change`, once per
message id); the relay claims and tells what is recorded and untold
(:meth:`ServerGroups.tell_recorded`), when it hears a change and every
:data:`TELL_INTERVAL` seconds, so what came while no relay was elected
is told by the next one.

Whether a member takes part is its flavor's
``guestha:server_group_messaging`` (``NovaClient.guestha_features``,
cached by the Nova client).

Routing never leaves the sender's group: the recipients of a broadcast or
a notification are the OTHER members of the one group the sender belongs
to, whose flavor enables messaging and whose host is known; they are
grouped per host, one cast per agent.  Everything here is best effort: a
cast that fails is logged and dropped, as the protocol allows.

A request that cannot be served is answered with ``deliver_error`` and
one of the protocol's codes: ``not_member``, ``disabled``, ``too_large``,
``invalid_message``, ``rate_limited``, ``unavailable`` (Nova did not
answer).
"""

import base64
import binascii
import collections
import logging
import random
import re
import threading
import time

from guestha.db import api as db_api
from guestha import nova as nova_mod
from guestha.ratelimit import TokenBucket
from guestha import rpc
from guestha_guest.protocol import MAX_PAYLOAD
from guestha_guest.protocol.messages import MAX_STATUS_PARTS
from guestha_guest.protocol.messages import STATUS_MEMBERS_PER_PART

LOG = logging.getLogger(__name__)

#: Seconds between two reads of the groups caused by an unknown sender.
MISS_REFRESH_GAP = 5.0
#: The most members a status answer may name (the protocol's bound).
MAX_STATUS_MEMBERS = STATUS_MEMBERS_PER_PART * MAX_STATUS_PARTS
#: A state as the protocol carries it; anything else is sent as unknown.
_STATE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,32}\Z")
UNKNOWN = "unknown"
#: Lifecycle events that leave the vm_state as it was but that the peers
#: should hear of all the same (the member restarted or moved).
SAME_STATE_EVENTS = frozenset((
    "instance.reboot.end", "instance.rebuild.end",
    "instance.live_migration_post.end", "instance.resize_finish.end",
    "instance.evacuate", "instance.unrescue.end",
))
#: Rate-limit buckets kept before idle ones are forgotten.
_MAX_BUCKETS = 10000
#: Seconds between two looks of the relay for state changes recorded and
#: not told (the first after it was elected, or one another controller
#: recorded first).
TELL_INTERVAL = 1.0
#: Seconds back a newly elected relay tells what nobody told, at least:
#: the longest a relay may be missing (its lock's or lease's expiry and
#: the next election) with room to spare; older changes are not news.
REPLAY_WINDOW = 60.0


def _state(value):
    if isinstance(value, str) and _STATE_RE.match(value):
        return value
    return UNKNOWN


class ServerGroups(object):
    """The directory and router (see the module docstring); thread-safe.

    :param nova: :class:`~guestha.nova.NovaClient` (or a fake with
        ``server_groups``, ``server``, ``guestha_features``, ``forget``).
    :param agents: :class:`~guestha.rpc.api.AgentAPI` (or a fake).
    :param is_relay: returns whether this controller tells the peers of
        Nova's state changes (one controller does; every controller gets
        every notification and keeps its cache).
    :param clock: monotonic seconds, for rate limits and refresh gaps.
    :param ledger: the :class:`~guestha.server.ledger.Ledger` the
        controllers share, where every controller records each state
        change and the relay claims what it tells (None: the relay tells
        what it hears, and a change heard while no relay is elected is
        told by nobody).
    :param replay_window: seconds back a relay tells recorded changes
        nobody told.
    :param wallclock: ``time.time``-like, for the ledger's records.
    """

    def __init__(self, nova, agents, broadcasts_per_second=20.0,
                 status_queries_per_second=5.0, is_relay=lambda: True,
                 clock=time.monotonic, ledger=None,
                 replay_window=REPLAY_WINDOW, wallclock=time.time):
        self.nova = nova
        self.agents = agents
        self.broadcasts_per_second = broadcasts_per_second
        self.status_queries_per_second = status_queries_per_second
        self.is_relay = is_relay
        self.ledger = ledger
        self.replay_window = replay_window
        self._wallclock = wallclock
        self._tell_lock = threading.Lock()
        self._clock = clock
        self._lock = threading.Lock()
        self._groups = {}       # group uuid -> [member uuids]
        self._group_of = {}     # instance uuid -> group uuid
        self._states = {}       # instance uuid -> vm_state
        self._hosts = {}        # instance uuid -> compute host
        self._buckets = collections.OrderedDict()
        self._missed_at = collections.OrderedDict()  # instance -> time
        self._refreshed_at = None
        self._refresh_wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = None
        self._teller = None
        self.counters = collections.Counter()

    @classmethod
    def from_conf(cls, conf, nova, agents, is_relay, ledger=None):
        # a relay is missing at most a lease (no tooz) or its lock's
        # timeout, and a try more
        gap = conf.server.lease_seconds
        if conf.coordination.backend_url:
            gap = conf.coordination.lock_timeout
        return cls(nova, agents,
                   broadcasts_per_second=conf.server.broadcasts_per_second,
                   status_queries_per_second=(
                       conf.server.status_queries_per_second),
                   is_relay=is_relay, ledger=ledger,
                   replay_window=max(REPLAY_WINDOW,
                                     2 * (gap + TELL_INTERVAL)))

    # -- membership --------------------------------------------------------

    def refresh(self):
        """Read every server group from Nova now.

        :returns: True if read, False if Nova did not answer (the cache
            is kept).
        """
        self._refreshed_at = self._clock()
        try:
            groups = self.nova.server_groups()
        except nova_mod.NovaUnavailable as exc:
            LOG.warning("server groups not refreshed: %s", exc)
            return False
        self.set_groups({g["id"]: g["members"] for g in groups})
        return True

    def set_groups(self, groups):
        """Replace the membership: ``{group uuid: [member uuids]}``."""
        group_of = {}
        for group, members in sorted(groups.items()):
            for member in members:
                group_of.setdefault(member, group)
        with self._lock:
            self._groups = {g: list(m) for g, m in groups.items()}
            self._group_of = group_of

    def update_group(self, group, members):
        """One group changed (a ``server_group.*`` notification);
        ``members`` None means the group is gone."""
        with self._lock:
            for member in self._groups.pop(group, ()):
                if self._group_of.get(member) == group:
                    del self._group_of[member]
            if members is not None:
                self._groups[group] = list(members)
                for member in members:
                    self._group_of.setdefault(member, group)

    def group_of(self, instance):
        """``(group uuid, [members])`` of ``instance``, or (None, [])."""
        with self._lock:
            group = self._group_of.get(instance)
            return group, list(self._groups.get(group, ()))

    def _group_or_refresh(self, instance):
        group, members = self.group_of(instance)
        if group is not None:
            return group, members
        now = self._clock()
        with self._lock:
            last = self._missed_at.get(instance)
            if last is not None and now - last < MISS_REFRESH_GAP:
                return None, []
            self._missed_at[instance] = now
            self._missed_at.move_to_end(instance)
            while len(self._missed_at) > _MAX_BUCKETS:
                self._missed_at.popitem(last=False)
        # the instance's own group: two requests however many groups
        # there are, where a refresh reads them all
        lookup = getattr(self.nova, "server_group_of", None)
        if lookup is not None:
            try:
                found = lookup(instance)
            except nova_mod.NovaUnavailable as exc:
                LOG.info("instance %s: server group not looked up alone "
                         "(%s); reading every group", instance, exc)
            else:
                if found is not None:
                    self.update_group(found["id"], found["members"])
                return self.group_of(instance)
        if (self._refreshed_at is None
                or now - self._refreshed_at >= MISS_REFRESH_GAP):
            self.refresh()
            group, members = self.group_of(instance)
        return group, members

    def forget_instance(self, instance):
        """``instance`` was deleted."""
        with self._lock:
            group = self._group_of.pop(instance, None)
            if group is not None and instance in self._groups.get(group, ()):
                self._groups[group].remove(instance)
            self._states.pop(instance, None)
            self._hosts.pop(instance, None)
            self._buckets.pop(instance, None)
        forget = getattr(self.nova, "forget", None)
        if forget is not None:
            forget(instance)

    # -- periodic refresh --------------------------------------------------

    def request_refresh(self):
        """Ask the refresher thread for a read soon (any thread)."""
        self._refresh_wanted.set()

    def start(self, interval, min_gap=1.0):
        """Refresh now, then every ``interval`` s (+/-10%) and on request,
        at most every ``min_gap`` s, in a thread; and, with a ledger, look
        for untold state changes every :data:`TELL_INTERVAL` s while this
        controller relays, in another."""
        self._thread = threading.Thread(
            target=self._refresher, args=(interval, min_gap),
            name="server-groups", daemon=True)
        self._thread.start()
        if self.ledger is not None:
            self._teller = threading.Thread(
                target=self._tell_loop, name="state-changes", daemon=True)
            self._teller.start()

    def stop(self, timeout=5.0):
        self._stopping.set()
        self._refresh_wanted.set()
        for thread in (self._thread, self._teller):
            if thread is not None:
                thread.join(timeout)

    def _tell_loop(self):
        while not self._stopping.wait(TELL_INTERVAL):
            try:
                self.tell_recorded()
            except db_api.DB_ERRORS as exc:
                LOG.warning("state changes not told yet: the database "
                            "failed: %s", exc)
            except Exception:  # a thread's top level: keep telling
                LOG.exception("telling the recorded state changes failed")

    def _refresher(self, interval, min_gap):
        while not self._stopping.is_set():
            try:
                self.refresh()
            except Exception:  # a thread's top level: keep refreshing
                LOG.exception("server-group refresh failed")
            self._refresh_wanted.wait(interval * random.uniform(0.9, 1.1))
            self._refresh_wanted.clear()
            self._stopping.wait(min_gap)

    # -- hosts and states --------------------------------------------------

    def learn_host(self, instance, host):
        if host:
            with self._lock:
                self._hosts[instance] = host

    def on_agent_alive(self, host, instances):
        """An agent's ``agent_alive``: its instances run on ``host``."""
        for item in instances or ():
            if isinstance(item, dict) and isinstance(
                    item.get("instance"), str):
                self.learn_host(item["instance"], host)

    def _lookup(self, instance):
        """Nova's host and state of ``instance``, cached."""
        try:
            server = self.nova.server(instance)
        except nova_mod.NovaUnavailable as exc:
            LOG.warning("instance %s: %s", instance, exc)
            return None, None
        if server is None:
            return None, None
        with self._lock:
            if server.get("host"):
                self._hosts.setdefault(instance, server["host"])
            if server.get("vm_state"):
                self._states.setdefault(instance, server["vm_state"])
            return self._hosts.get(instance), self._states.get(instance)

    def host_of(self, instance):
        with self._lock:
            host = self._hosts.get(instance)
        return host if host is not None else self._lookup(instance)[0]

    def state_of(self, instance):
        with self._lock:
            state = self._states.get(instance)
        if state is None:
            state = self._lookup(instance)[1]
        return _state(state)

    def _enabled(self, instance):
        """Whether ``instance``'s flavor enables server-group messaging;
        raises NovaUnavailable."""
        return bool(self.nova.guestha_features(instance).get(
            "server_group_messaging"))

    def _recipients(self, sender, members):
        """``{host: [instances]}`` of the other members that take part."""
        by_host = {}
        for member in members:
            if member == sender:
                continue
            try:
                if not self._enabled(member):
                    continue
            except nova_mod.NovaUnavailable as exc:
                LOG.warning("instance %s: skipped as a recipient: %s",
                            member, exc)
                continue
            host = self.host_of(member)
            if host is None:
                LOG.info("instance %s: skipped as a recipient: its host is "
                         "not known", member)
                continue
            by_host.setdefault(host, []).append(member)
        return by_host

    # -- requests from the agents ------------------------------------------

    def _take(self, kind, instance, rate):
        now = self._clock()
        key = (kind, instance)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(rate, 2 * rate, now)
                self._buckets[key] = bucket
                while len(self._buckets) > _MAX_BUCKETS:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now)

    def _refuse(self, host, instance, seq, code, message):
        self.counters["refused_" + code] += 1
        LOG.info("instance %s: server-group request %s refused: %s (%s)",
                 instance, seq, code, message)
        self._cast(self.agents.deliver_error, host, instance=instance,
                   seq=seq, code=code, message=message)

    def _cast(self, method, host, **kwargs):
        try:
            method(host, **kwargs)
        except rpc.TRANSIENT_ERRORS as exc:
            self.counters["cast_failed"] += 1
            LOG.warning("%s to the agent of %s failed (dropped, best "
                        "effort): %s", method.__name__, host, exc)
            return False
        return True

    def _admit(self, host, instance, seq):
        """The sender's group and members, or None after refusing."""
        self.learn_host(instance, host)
        group, members = self._group_or_refresh(instance)
        if group is None:
            self._refuse(host, instance, seq, "not_member",
                         "the instance is not a member of a server group")
            return None
        try:
            enabled = self._enabled(instance)
        except nova_mod.NovaUnavailable as exc:
            self._refuse(host, instance, seq, "unavailable",
                         "Nova did not answer: %s" % exc)
            return None
        if not enabled:
            self._refuse(host, instance, seq, "disabled",
                         "server-group messaging is not enabled for the "
                         "instance's flavor")
            return None
        return group, members

    def relay_broadcast(self, host, instance, payload_b64, seq):
        """A member's broadcast, from the agent of ``host``: to the agents
        of the other members."""
        admitted = self._admit(host, instance, seq)
        if admitted is None:
            return
        _group, members = admitted
        try:
            size = len(base64.b64decode(payload_b64, validate=True))
        except (binascii.Error, TypeError, ValueError):
            self._refuse(host, instance, seq, "invalid_message",
                         "the payload is not base64")
            return
        if size > MAX_PAYLOAD:
            self._refuse(host, instance, seq, "too_large",
                         "payload of %d bytes, at most %d"
                         % (size, MAX_PAYLOAD))
            return
        if not self._take("broadcast", instance,
                          self.broadcasts_per_second):
            self._refuse(host, instance, seq, "rate_limited",
                         "at most %g broadcasts per second"
                         % self.broadcasts_per_second)
            return
        self.counters["broadcasts"] += 1
        for peer_host, instances in sorted(
                self._recipients(instance, members).items()):
            self._cast(self.agents.deliver_broadcast, peer_host,
                       instances=instances, sender=instance,
                       payload_b64=payload_b64)

    def query_status(self, host, instance, seq):
        """A member asks for the state of every member, itself included."""
        admitted = self._admit(host, instance, seq)
        if admitted is None:
            return
        group, members = admitted
        if not self._take("status", instance,
                          self.status_queries_per_second):
            self._refuse(host, instance, seq, "rate_limited",
                         "at most %g status queries per second"
                         % self.status_queries_per_second)
            return
        if instance not in members:  # not yet in Nova's answer
            members.append(instance)
        answer = [{"instance": m, "state": self.state_of(m)}
                  for m in members[:MAX_STATUS_MEMBERS]]
        self.counters["status_answers"] += 1
        self._cast(self.agents.deliver_status, host, instance=instance,
                   seq=seq, members=answer, group=group)

    # -- Nova's notifications ----------------------------------------------

    def on_instance_change(self, instance, state, event, host=None,
                           old_state=None, change_id=None, at=None):
        """Nova says ``instance`` is now in ``state`` after ``event``.

        The other members hear of it (once per change) when the vm_state
        changed, or for :data:`SAME_STATE_EVENTS` (a reboot leaves it
        active).  ``old_state`` is the payload's previous state, used
        when this controller did not know the state yet.

        With a ledger and ``change_id`` (the notification's message id),
        every controller records the change and the relay tells what is
        recorded and untold (:meth:`tell_recorded`), so a change heard
        while no relay was elected is told by the next one.  ``at``:
        Nova's time of the notification (epoch seconds), which orders
        one instance's changes.

        :returns: the ``{host: [instances]}`` told, or None.
        """
        state = _state(state)
        with self._lock:
            if host:
                self._hosts[instance] = host
            known = self._states.get(instance)
            self._states[instance] = state
            group = self._group_of.get(instance)
            members = list(self._groups.get(group, ()))
        previous = known if known is not None else old_state
        if event == "instance.update":
            changed = previous is not None and previous != state
        else:
            changed = previous != state or event in SAME_STATE_EVENTS
        if group is None or not changed:
            return None
        if self.ledger is not None and change_id:
            try:
                self.ledger.record_state_change(
                    change_id, instance, state, event, host=host, at=at,
                    now=self._wallclock())
            except db_api.DB_ERRORS as exc:
                LOG.warning("instance %s: %s (%s) not recorded, the "
                            "database failed: %s", instance, state, event,
                            exc)
            else:
                try:
                    return self.tell_recorded().get(change_id)
                except db_api.DB_ERRORS as exc:
                    # recorded: the next look tells it
                    LOG.warning("instance %s: %s (%s) recorded, not told "
                                "yet, the database failed: %s", instance,
                                state, event, exc)
                    return None
        if not self.is_relay():
            return None
        return self._tell(instance, state, event, members)

    def tell_recorded(self):
        """If this controller relays: tell the state changes recorded in
        the last ``replay_window`` seconds that no relay told, in Nova's
        order, each once whichever controllers call this (the ledger
        hands each to one).  A change whose state is the one told last
        for its instance is not told again (two notifications of one
        change), unless its event is one of :data:`SAME_STATE_EVENTS`.

        :returns: ``{change id: {host: [instances]}}`` of those told.
        """
        if self.ledger is None or not self.is_relay():
            return {}
        told = {}
        with self._tell_lock:
            now = self._wallclock()
            claimed = self.ledger.claim_state_changes(
                now - self.replay_window, now=now)
            last = {}
            for change, before in claimed:
                instance, state = change["instance"], change["state"]
                previous = last.get(instance, before)
                last[instance] = state
                if previous == state and (
                        change["event"] not in SAME_STATE_EVENTS):
                    LOG.debug("instance %s: %s (%s) told before", instance,
                              state, change["event"])
                    continue
                if change["recorded_by"] != self.ledger.server_id or (
                        now - change["received"] > TELL_INTERVAL):
                    LOG.info("instance %s: %s (%s), recorded by %s %.1f s "
                             "ago, told now", instance, state,
                             change["event"], change["recorded_by"],
                             now - change["received"])
                with self._lock:
                    members = list(self._groups.get(
                        self._group_of.get(instance), ()))
                told[change["id"]] = self._tell(instance, state,
                                                change["event"], members)
        return told

    def _tell(self, instance, state, event, members):
        recipients = self._recipients(instance, members)
        for peer_host, instances in sorted(recipients.items()):
            self._cast(self.agents.deliver_notification, peer_host,
                       instances=instances, instance=instance, state=state,
                       event=event)
        self.counters["notifications"] += 1
        LOG.info("instance %s: %s (%s) told to %d peer(s) on %d host(s)",
                 instance, state, event,
                 sum(len(v) for v in recipients.values()), len(recipients))
        return recipients
