# SPDX-License-Identifier: Apache-2.0
"""The heartbeat application layer: one state machine for each side.

Theory of operation
-------------------
The guest registers with ``init`` (its name, the interval it wants, the
corrective action it recommends, how long it needs to shut down and to
restart).  The host clamps the interval to its operator's bounds and answers
``init_ack`` with the interval it grants.  From then on the host sends a
``challenge`` (an unpredictable token) every interval; the guest must answer
with a ``challenge_response`` that names the challenge (``ref``), echoes the
token and says whether it is healthy, before the next interval starts
(``deadline_ms``).  ``exit`` ends monitoring on purpose, without a fault.

The host declares a challenge *missed* when its deadline passes without a
valid answer, then resynchronises the channel (so the late answer, if it
ever comes, is discarded as stale) and challenges again as soon as the sync
is acknowledged; every further interval without an acknowledgement is one
more miss.  A guest hanging right after answering is therefore reported
missed at most two intervals later.  How many misses or unhealthy answers
make a *fault* is the caller's policy, not the protocol's.

Rules for the awkward cases:

* **wrong echo** (``ref`` names the outstanding challenge, the token
  differs): refused with ``error wrong_echo``; the challenge stays open
  until its deadline, so a correct answer may still arrive.
* **late answer**, **answer to an old challenge** (``ref`` is not the
  outstanding challenge): ignored and counted as stale, no error (after a
  resync or a reconnect, old answers are expected).
* **init from a registered guest** (a restarted daemon) and a **duplicate
  init** (a retransmission): a re-registration; answered with a new
  ``init_ack``.  It never delays a challenge: an outstanding challenge keeps
  its deadline, a scheduled one keeps its time (or comes earlier if the new
  interval is shorter).  So a guest cannot dodge challenges by re-sending
  init.  An outstanding challenge is also sent again, unchanged, after the
  ``init_ack``: a guest registers again after a resync (a restarted daemon,
  a retried init), and that resync made it drop the challenge as stale.  An
  answer naming the original or the copy is accepted.
* **challenge_response from an unregistered guest**: ``error
  not_registered``; the guest re-sends init.  After a resync while
  unregistered (for instance after the agent restarted) the host sends
  ``not_registered`` unsolicited, an *invitation*, so that a guest that
  believes itself registered registers at once.  A guest whose init is
  already on its way ignores an invitation (its init retry covers a lost
  init), so that a start-up does not cost a second init.
* **exit** from a registered guest: monitoring stops, no fault; a later
  ``init`` starts it again.

Both machines are literal tables (``HOST_TRANSITIONS`` and
``GUEST_TRANSITIONS``): ``(state, input) -> (handler, next state)``.  The
table alone decides the next state: a handler returns outputs only (it
runs before the state changes, and may read the state it leaves).  Where
the same message leads to different states, the machine's ``receive``
makes it different inputs (a response that answers the outstanding
challenge, one with a wrong echo, a stale one).  Time is an argument:
``tick(now)`` fires whatever timer is due and ``next_timer()`` says when
to call it.  The machines return *outputs*:
:class:`~guestha_guest.protocol.messages.Message` objects to send on the
connection, :class:`Resync` to restart the connection's synchronisation,
and reports (:class:`Registered`, :class:`Answered`, :class:`Missed`, ...)
for the caller to act on.  Send the messages in order before feeding the
next input: the machine reads the ``seq`` that :meth:`Connection.send`
assigns.
"""

import random

from guestha_guest.protocol import messages as m

# -- outputs -----------------------------------------------------------------


class Output(object):
    """Base of reports; compares by type and attributes."""

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % kv for kv in sorted(vars(self).items())))


class Resync(Output):
    """Instruction: call ``Connection.start_sync()`` and send its line."""


class Registered(Output):
    """The guest registered (again, if ``again``) with this interval."""

    def __init__(self, init, interval_ms, again):
        self.init = init
        self.interval_ms = interval_ms
        self.again = again


class Answered(Output):
    """A valid answer arrived ``rtt`` seconds after its challenge."""

    def __init__(self, healthy, reason, action, rtt):
        self.healthy = healthy
        self.reason = reason
        self.action = action
        self.rtt = rtt


class Missed(Output):
    """An interval passed without a valid answer (``why`` says which)."""

    def __init__(self, why):
        self.why = why


class Rejected(Output):
    """A message from the guest was refused (``code``), no state change."""

    def __init__(self, code):
        self.code = code


class Stale(Output):
    """An answer to a challenge that is no longer outstanding: ignored."""


class Exited(Output):
    """The guest ended monitoring on purpose."""

    def __init__(self, reason):
        self.reason = reason


class HostError(Output):
    """The host refused something the guest sent (guest side)."""

    def __init__(self, error):
        self.error = error


class ChallengeAnswered(Output):
    """The guest answered a challenge (guest side)."""

    def __init__(self, healthy, reason):
        self.healthy = healthy
        self.reason = reason


class Acknowledged(Output):
    """The host granted ``interval_ms`` (guest side)."""

    def __init__(self, interval_ms, instance):
        self.interval_ms = interval_ms
        self.instance = instance


# -- host side ---------------------------------------------------------------

UNREGISTERED = "UNREGISTERED"
IDLE = "IDLE"              # registered, next challenge scheduled
CHALLENGED = "CHALLENGED"  # a challenge is outstanding
RESYNCING = "RESYNCING"    # a challenge was missed; waiting for sync_ack
EXITED = "EXITED"          # the guest said exit

HOST_TRANSITIONS = {
    (UNREGISTERED, "init"): ("_register", IDLE),
    (IDLE, "init"): ("_reregister", IDLE),
    (CHALLENGED, "init"): ("_reregister_rechallenge", CHALLENGED),
    (RESYNCING, "init"): ("_reregister", RESYNCING),
    (EXITED, "init"): ("_register", IDLE),

    # a challenge_response is "response" if it names the outstanding
    # challenge (or its re-sent copy) and echoes its token, "wrong_echo" if
    # it names it with another token, else "stale_response": a challenge
    # is outstanding only while CHALLENGED
    (UNREGISTERED, "stale_response"): ("_not_registered", UNREGISTERED),
    (IDLE, "stale_response"): ("_stale", IDLE),
    (CHALLENGED, "response"): ("_answered", IDLE),
    (CHALLENGED, "wrong_echo"): ("_wrong_echo", CHALLENGED),
    (CHALLENGED, "stale_response"): ("_stale", CHALLENGED),
    (RESYNCING, "stale_response"): ("_stale", RESYNCING),
    (EXITED, "stale_response"): ("_not_registered", EXITED),

    (UNREGISTERED, "exit"): ("_ignore", UNREGISTERED),
    (IDLE, "exit"): ("_exit", EXITED),
    (CHALLENGED, "exit"): ("_exit", EXITED),
    (RESYNCING, "exit"): ("_exit", EXITED),
    (EXITED, "exit"): ("_ignore", EXITED),

    (UNREGISTERED, "timer"): ("_ignore", UNREGISTERED),
    (IDLE, "timer"): ("_challenge_due", CHALLENGED),
    (CHALLENGED, "timer"): ("_miss", RESYNCING),
    (RESYNCING, "timer"): ("_miss", RESYNCING),
    (EXITED, "timer"): ("_ignore", EXITED),

    (UNREGISTERED, "synced"): ("_invite", UNREGISTERED),
    (IDLE, "synced"): ("_challenge", CHALLENGED),
    (CHALLENGED, "synced"): ("_challenge", CHALLENGED),
    (RESYNCING, "synced"): ("_challenge", CHALLENGED),
    (EXITED, "synced"): ("_ignore", EXITED),
}


class _Machine(object):
    """What both sides share: a transition table and one timer."""

    TRANSITIONS = None

    def next_timer(self):
        """When ``tick`` must next be called (``None``: no timer)."""
        return self._timer

    def tick(self, now):
        if self._timer is None or now < self._timer:
            return []
        return self._fire("timer", None, now)

    def synced(self, now):
        """The connection completed a sync (``Synced`` event)."""
        return self._fire("synced", None, now)

    def _fire(self, kind, msg, now):
        handler, next_state = self.TRANSITIONS[(self.state, kind)]
        outputs = getattr(self, handler)(msg, now)
        self.state = next_state
        return outputs

    def _ignore(self, msg, now):
        return []


class HostHeartbeat(_Machine):
    """The host's side of the heartbeat for one channel.

    :param min_interval_ms: smallest interval granted (operator bound).
    :param max_interval_ms: largest interval granted (operator bound).
    :param instance: the instance uuid told to the guest in ``init_ack``.
    :param rng: ``random.Random``-like source of tokens and jitter.
    """

    TRANSITIONS = HOST_TRANSITIONS

    def __init__(self, min_interval_ms=100, max_interval_ms=60000,
                 instance=None, rng=None):
        if not 1 <= min_interval_ms <= max_interval_ms <= m.MAX_MS:
            raise ValueError("need 1 <= min_interval_ms <= max_interval_ms "
                             "<= %d" % m.MAX_MS)
        self.min_interval_ms = min_interval_ms
        self.max_interval_ms = max_interval_ms
        self.instance = instance
        # (random's SystemRandom is the one secrets re-exports, without
        # importing secrets: it imports hashlib, hmac and OpenSSL's
        # libcrypto, 3.7 MiB of the guest daemon's 20 MB)
        self._rng = rng or random.SystemRandom()
        # a token's 16 random bytes: the rng's randbytes where it has one
        # (Python 3.9+; SystemRandom's is one getrandom call, and its hex
        # is cheaper than formatting getrandbits' integer), else
        # getrandbits (the same 32 lowercase hex digits either way)
        self._randbytes = getattr(self._rng, "randbytes", None)
        self.state = UNREGISTERED
        self.interval_ms = None
        self.init = None
        self._timer = None
        self._outstanding = None  # the challenge, as first sent
        self._copy = None  # its latest re-send (after a re-registration)
        self._challenged_at = None  # when the outstanding one was sent
        self._cadence_from = None   # when it was due

    @property
    def interval(self):
        return self.interval_ms / 1000.0

    def receive(self, msg, now):
        """Feed a heartbeat message from the guest."""
        if isinstance(msg, m.ChallengeResponse):
            # (first, and inline, not a method: every answer of every
            # instance passes here)
            out, copy = self._outstanding, self._copy
            if not ((out is not None and msg.ref == out.seq)
                    or (copy is not None and msg.ref == copy.seq)):
                kind = "stale_response"
            elif msg.challenge != out.challenge:
                kind = "wrong_echo"
            else:
                kind = "response"
        elif isinstance(msg, m.Init):
            kind = "init"
        elif isinstance(msg, m.Exit):
            kind = "exit"
        else:
            raise TypeError("not a guest heartbeat message: %r" % (msg,))
        return self._fire(kind, msg, now)

    # handlers ------------------------------------------------------------

    def _grant(self, init):
        return max(self.min_interval_ms,
                   min(self.max_interval_ms, init.interval_ms))

    def _register(self, init, now):
        self.init = init
        self.interval_ms = self._grant(init)
        # a random phase spreads the challenges of many guests registering
        # at once (after an agent restart) over one interval
        self._timer = now + self.interval * self._rng.random()
        return [m.InitAck(ref=init.seq, interval_ms=self.interval_ms,
                          instance=self.instance),
                Registered(init, self.interval_ms, again=False)]

    def _reregister(self, init, now):
        self.init = init
        self.interval_ms = self._grant(init)
        if self.state == IDLE:
            self._timer = min(self._timer, now + self.interval)
        return [m.InitAck(ref=init.seq, interval_ms=self.interval_ms,
                          instance=self.instance),
                Registered(init, self.interval_ms, again=True)]

    def _reregister_rechallenge(self, init, now):
        # The guest registers again after a resync of its own (a restarted
        # daemon, an init retry), and that resync discarded our challenge:
        # send it again, same token and deadline_ms, behind the init_ack.
        # The timer (the deadline) does not move.
        self._copy = m.Challenge(challenge=self._outstanding.challenge,
                                 deadline_ms=self._outstanding.deadline_ms)
        return self._reregister(init, now) + [self._copy]

    def _not_registered(self, msg, now):
        return [m.Error(app="heartbeat", code="not_registered",
                        message="register with init first", ref=msg.seq),
                Rejected("not_registered")]

    def _invite(self, msg, now):
        return [m.Error(app="heartbeat", code="not_registered",
                        message="register with init")]

    def _stale(self, msg, now):
        return [Stale()]

    def _exit(self, msg, now):
        self._timer = None
        self._outstanding = self._copy = None
        return [Exited(msg.reason)]

    def _challenge_due(self, msg, now):
        # the timer of the next challenge fired: the cadence counts from
        # when it was due, not from now, so that a loop that fires its
        # timers a little late (batched wake-ups) keeps every guest's
        # period and phase
        due = self._timer
        outputs = self._challenge(msg, now)
        self._cadence_from = due
        return outputs

    def _challenge(self, msg, now):
        randbytes = self._randbytes
        if randbytes is not None:
            token = randbytes(16).hex()
        else:
            token = "%032x" % self._rng.getrandbits(128)
        if type(self.interval_ms) is int:  # granted, so within bounds
            self._outstanding = m.host_challenge(token, self.interval_ms)
        else:
            self._outstanding = m.Challenge(challenge=token,
                                            deadline_ms=self.interval_ms)
        self._copy = None
        self._challenged_at = self._cadence_from = now
        self._timer = now + self.interval_ms / 1000.0  # self.interval
        return [self._outstanding]

    def _wrong_echo(self, resp, now):
        # the challenge stays open until its deadline: a correct answer
        # may still come
        return [m.Error(app="heartbeat", code="wrong_echo",
                        message="the response does not echo the "
                                "challenge", ref=resp.seq),
                Rejected("wrong_echo")]

    def _answered(self, resp, now):
        # the next challenge keeps the cadence of the previous one: one
        # interval after that one was due (at once if that time has passed:
        # after a re-registration shortened the interval, or a stall)
        self._timer = max(self._cadence_from + self.interval_ms / 1000.0,
                          now)
        self._outstanding = self._copy = None
        return [Answered(resp.healthy, resp.reason, resp.action,
                         now - self._challenged_at)]

    def _miss(self, msg, now):
        why = "no answer" if self.state == CHALLENGED else "no sync_ack"
        self._outstanding = self._copy = None
        self._timer = now + self.interval
        return [Missed(why), Resync()]


# -- guest side --------------------------------------------------------------

REGISTERING = "REGISTERING"  # init sent, waiting for init_ack
REGISTERED = "REGISTERED"
# (UNREGISTERED and EXITED as on the host side)

GUEST_TRANSITIONS = {
    (UNREGISTERED, "synced"): ("_send_init", REGISTERING),
    (REGISTERING, "synced"): ("_send_init", REGISTERING),
    (REGISTERED, "synced"): ("_ignore", REGISTERED),
    (EXITED, "synced"): ("_ignore", EXITED),

    # an init_ack is "init_ack" if it answers the init we sent last,
    # else "stale_init_ack"
    (UNREGISTERED, "init_ack"): ("_ignore", UNREGISTERED),
    (REGISTERING, "init_ack"): ("_acknowledged", REGISTERED),
    (REGISTERED, "init_ack"): ("_acknowledged", REGISTERED),
    (EXITED, "init_ack"): ("_ignore", EXITED),
    (UNREGISTERED, "stale_init_ack"): ("_ignore", UNREGISTERED),
    (REGISTERING, "stale_init_ack"): ("_ignore", REGISTERING),
    (REGISTERED, "stale_init_ack"): ("_ignore", REGISTERED),
    (EXITED, "stale_init_ack"): ("_ignore", EXITED),

    (UNREGISTERED, "challenge"): ("_ignore", UNREGISTERED),
    (REGISTERING, "challenge"): ("_answer", REGISTERING),
    (REGISTERED, "challenge"): ("_answer", REGISTERED),
    (EXITED, "challenge"): ("_ignore", EXITED),

    (UNREGISTERED, "not_registered"): ("_ignore", UNREGISTERED),
    (REGISTERING, "not_registered"): ("_send_init", REGISTERING),
    (REGISTERED, "not_registered"): ("_send_init", REGISTERING),
    (EXITED, "not_registered"): ("_ignore", EXITED),

    # an unsolicited not_registered (no ref): the host (re)started
    (UNREGISTERED, "invitation"): ("_ignore", UNREGISTERED),
    (REGISTERING, "invitation"): ("_ignore", REGISTERING),
    (REGISTERED, "invitation"): ("_send_init", REGISTERING),
    (EXITED, "invitation"): ("_ignore", EXITED),

    (UNREGISTERED, "error"): ("_host_error", UNREGISTERED),
    (REGISTERING, "error"): ("_host_error", REGISTERING),
    (REGISTERED, "error"): ("_host_error", REGISTERED),
    (EXITED, "error"): ("_host_error", EXITED),

    (UNREGISTERED, "timer"): ("_ignore", UNREGISTERED),
    (REGISTERING, "timer"): ("_retry", UNREGISTERED),
    (REGISTERED, "timer"): ("_host_silent", UNREGISTERED),
    (EXITED, "timer"): ("_ignore", EXITED),

    # UNREGISTERED after a timeout: the host may still hold the
    # registration, so say exit if an init went out on this channel
    (UNREGISTERED, "exit"): ("_exit_if_init_sent", EXITED),
    (REGISTERING, "exit"): ("_send_exit", EXITED),
    (REGISTERED, "exit"): ("_send_exit", EXITED),
    (EXITED, "exit"): ("_ignore", EXITED),

    # the channel was reopened: a new peer, no registration
    (UNREGISTERED, "reset"): ("_forget", UNREGISTERED),
    (REGISTERING, "reset"): ("_forget", UNREGISTERED),
    (REGISTERED, "reset"): ("_forget", UNREGISTERED),
    (EXITED, "reset"): ("_forget", UNREGISTERED),
}


class GuestHeartbeat(_Machine):
    """The guest's side of the heartbeat.

    :param init: the :class:`~guestha_guest.protocol.messages.Init` to
        register with (re-sent as is on every registration).
    :param health: callable ``health(now) -> (healthy, reason, action)``
        answering a challenge; it must return at once (use cached results).
    :param retry: seconds to wait for ``init_ack`` before resyncing and
        registering again; doubles up to ``max_retry``.
    :param silence_factor: the host is considered gone (and the guest
        resyncs and registers again) after this many granted intervals
        without a challenge, plus one second.
    """

    TRANSITIONS = GUEST_TRANSITIONS

    def __init__(self, init, health, retry=1.0, max_retry=30.0,
                 silence_factor=3):
        self.init = init
        self._health = health
        self._retry_first = retry
        self._retry_s = retry
        self._max_retry = max_retry
        self._silence_factor = silence_factor
        self.state = UNREGISTERED
        self.interval_ms = None
        self.instance = None
        self._timer = None
        self.last_challenge_at = None
        self._sent_init = None
        self._init_sent = False  # on this channel

    def reset(self):
        """Forget the registration: the channel was reopened."""
        self._fire("reset", None, None)

    def _forget(self, msg, now):
        self._timer = None
        self._retry_s = self._retry_first
        self._init_sent = False
        return []

    def says_exit(self):
        """Whether :meth:`exit` would send ``exit`` now: the host may hold
        a registration of ours."""
        return self.state in (REGISTERING, REGISTERED) or (
            self.state == UNREGISTERED and self._init_sent)

    def exit(self, now):
        """Stop on purpose: returns the ``exit`` message to send, if any."""
        return self._fire("exit", None, now)

    def receive(self, msg, now):
        if isinstance(msg, m.InitAck):
            sent = self._sent_init
            kind = ("init_ack" if sent is not None and msg.ref == sent.seq
                    else "stale_init_ack")
        elif isinstance(msg, m.Challenge):
            kind = "challenge"
        elif isinstance(msg, m.Error) and msg.code == "not_registered":
            # with a ref, the host refused one of our answers; without,
            # it invites whoever is there to register
            kind = "invitation" if msg.ref is None else "not_registered"
        elif isinstance(msg, m.Error):
            kind = "error"
        else:
            raise TypeError("not a host heartbeat message: %r" % (msg,))
        return self._fire(kind, msg, now)

    def _send_init(self, msg, now):
        # a fresh object each time: the connection stamps its seq, and the
        # init_ack must name the init we sent last
        self._sent_init = m.Init(**self.init.fields())
        self._init_sent = True
        self._timer = now + self._retry_s
        return [self._sent_init]

    def _retry(self, msg, now):
        self._retry_s = min(self._retry_s * 2, self._max_retry)
        self._timer = None
        return [Resync()]

    def _acknowledged(self, ack, now):
        self.interval_ms = ack.interval_ms
        self.instance = ack.instance
        self._retry_s = self._retry_first
        self._watch(now)
        return [Acknowledged(ack.interval_ms, ack.instance)]

    def _watch(self, now):
        self._timer = now + (self._silence_factor * self.interval_ms
                             / 1000.0) + 1.0

    def _answer(self, challenge, now):
        healthy, reason, action = self._health(now)
        self.last_challenge_at = now
        # The host-silence watchdog is re-armed only when registered.  In
        # REGISTERING the timer is init's retry; replacing it (once
        # interval_ms is known from an earlier registration) would mean a
        # lost init never re-sent while challenges keep coming, and the
        # guest staying REGISTERING for good.
        if self.state == REGISTERED:
            self._watch(now)
        return [m.ChallengeResponse(
            ref=challenge.seq, challenge=challenge.challenge,
            healthy=bool(healthy),
            reason=None if reason is None else m.clean_text(reason),
            action=action),
            ChallengeAnswered(bool(healthy), reason)]

    def _host_error(self, error, now):
        return [HostError(error)]

    def _host_silent(self, msg, now):
        self._timer = None
        return [Resync()]

    def _send_exit(self, msg, now):
        self._timer = None
        return [m.Exit(reason="shutdown")]

    def _exit_if_init_sent(self, msg, now):
        if self._init_sent:
            return self._send_exit(msg, now)
        return []
