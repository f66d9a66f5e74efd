# SPDX-License-Identifier: Apache-2.0
"""Messages of the guestha wire protocol and their JSON encoding.

Every message is one JSON object on one line.  The envelope (the base layer)
is the same for all of them::

    {"v": 1, "app": "heartbeat", "type": "init", "seq": 17, ...fields}

``v`` is the protocol version, ``app`` the application class that
multiplexes several application layers on one channel, ``type`` the message
type within that class and ``seq`` the sender's sequence number.  Replies
name the message they answer in ``ref``.  The remaining keys are the fields
of the message type, declared once below in each class's ``FIELDS``; the
same declarations validate what we send (raising
:class:`~guestha_guest.protocol.errors.LocalProtocolError`) and what we
receive (raising
:class:`~guestha_guest.protocol.errors.RemoteProtocolError`).  Unknown keys
are ignored so that a later minor revision can add optional fields.
"""

import base64
import binascii
import json
import re

from guestha_guest.protocol.errors import LocalProtocolError
from guestha_guest.protocol.errors import RemoteProtocolError

#: Protocol versions this implementation speaks, oldest first.
SUPPORTED_VERSIONS = (1,)
#: The version we prefer.
VERSION = SUPPORTED_VERSIONS[-1]

#: Name of the virtio-serial port (the ``<target name=...>`` of the libvirt
#: channel); the guest finds it as /dev/virtio-ports/<PORT_NAME>.
PORT_NAME = "org.openstack.guestha.0"

#: Largest broadcast payload, in bytes, before base64 encoding.
MAX_PAYLOAD = 3050
#: Largest line, in bytes, the terminating newline included.  Sized for the
#: largest message, a broadcast delivered to a guest: 4068 bytes of base64
#: payload plus an envelope of at most 125 bytes (see the tests).
MAX_LINE = 4224
#: Largest sequence number; sequence numbers wrap to 0 after it.
MAX_SEQ = 2 ** 32 - 1
#: Corrective actions a guest may recommend.
ACTIONS = ("none", "log", "reboot", "stop")
#: Longest time field on the wire (one hour).
MAX_MS = 3600 * 1000
#: Members per ``status`` message part; a status answer with more members is
#: split into several parts, each a line of its own.  A part of a split
#: answer may hold no more (so the parts together never exceed 2560); a
#: single-line answer may hold as many as fit in MAX_LINE.
STATUS_MEMBERS_PER_PART = 40
#: Most parts of one status answer (so at most 2560 members).
MAX_STATUS_PARTS = 64
#: Deepest nesting of arrays and objects in a line (the top-level object
#: counts as 1).  Valid messages need 3 (status: object, members array,
#: member object); a deeper line is ``invalid_json``, checked before the
#: JSON parser runs, so that no implementation depends on its parser's
#: recursion limit.
MAX_DEPTH = 32
#: Longest broadcast payload string: the base64 encoding of MAX_PAYLOAD
#: bytes.  A longer string is ``too_large`` whatever it holds.
MAX_PAYLOAD_B64 = 4 * ((MAX_PAYLOAD + 2) // 3)

HOST = "host"
GUEST = "guest"

#: Application classes of version 1; ``error`` exists in each of them.
APPS = ("base", "heartbeat", "server_group")

_UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CODE_RE = re.compile(r"^[a-z_]{1,32}$")


class _Invalid(Exception):
    """A field failed validation; turned into a Local or Remote error with
    this ``code``."""

    def __init__(self, message, code="invalid_message"):
        super().__init__(message)
        self.code = code


class Field(object):
    """One field of a message type: its name, its checks, its default.

    ``senders`` are the roles whose value of the field a receiver takes;
    from any other sender the key is ignored like an unknown one (never
    validated, never kept).
    """

    def __init__(self, name, check, required=True, default=None,
                 senders=(HOST, GUEST)):
        self.name = name
        self.check = check
        self.required = required
        self.default = default
        self.senders = senders


def _int(lo, hi):
    def check(value):
        # bool is an int in Python but never a number on the wire
        if type(value) is not int or not lo <= value <= hi:
            raise _Invalid("must be an integer from %d to %d" % (lo, hi))
        return value
    return check


def _bool(value):
    if type(value) is not bool:
        raise _Invalid("must be true or false")
    return value


def _str(max_len, pattern=None, min_len=0):
    def check(value):
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        if not min_len <= len(value) <= max_len:
            raise _Invalid("must be %d to %d characters long"
                           % (min_len, max_len))
        # fullmatch, not match: "$" also matches before a trailing
        # newline, so "abc\n" would pass as a token, a code or a state.
        if pattern is not None and not pattern.fullmatch(value):
            raise _Invalid("has characters that are not allowed")
        if pattern is None and any(ord(c) < 0x20 for c in value):
            raise _Invalid("must not contain control characters")
        return value
    return check


def _enum(values):
    def check(value):
        if value not in values:
            raise _Invalid("must be one of %s" % ", ".join(values))
        return value
    return check


def _uuid(value):
    # fullmatch, as in _str (else a uuid followed by "\n" would pass)
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise _Invalid("must be a lower-case canonical UUID")
    return value


def _versions(value):
    if (not isinstance(value, list) or not 1 <= len(value) <= 16
            or any(type(v) is not int or not 1 <= v <= 255 for v in value)):
        raise _Invalid("must be a list of 1 to 16 integers from 1 to 255")
    return value


def _members(value):
    if not isinstance(value, list) or len(value) > (
            STATUS_MEMBERS_PER_PART * MAX_STATUS_PARTS):
        raise _Invalid("must be a list of at most %d members"
                       % (STATUS_MEMBERS_PER_PART * MAX_STATUS_PARTS))
    out = []
    for member in value:
        if isinstance(member, Member):
            # Member objects are checked too, so that a bad instance or
            # state raises LocalProtocolError instead of being sent.
            out.append(Member(_uuid(member.instance), _STATE(member.state)))
            continue
        if not isinstance(member, dict):
            raise _Invalid("members must be objects")
        out.append(Member(_uuid(member.get("instance")),
                          _STATE(member.get("state"))))
    return out


_STATE = _str(32, _TOKEN_RE, min_len=1)


class Member(object):
    """A server-group member in a ``status`` answer."""

    __slots__ = ("instance", "state")

    def __init__(self, instance, state):
        self.instance = instance
        self.state = state

    def to_wire(self):
        return {"instance": self.instance, "state": self.state}

    def __eq__(self, other):
        return (isinstance(other, Member) and self.instance == other.instance
                and self.state == other.state)

    def __hash__(self):
        return hash((self.instance, self.state))

    def __repr__(self):
        return "Member(%r, %r)" % (self.instance, self.state)


class _Payload(object):
    """Broadcast payload: bytes in Python, base64 on the wire."""

    @staticmethod
    def check(value):
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif isinstance(value, str):
            # the length first: a string too long to be the encoding of
            # MAX_PAYLOAD bytes is too_large whether or not it is base64
            # (and is not decoded at all)
            if len(value) > MAX_PAYLOAD_B64:
                raise _Invalid("is %d base64 characters; the maximum is %d"
                               % (len(value), MAX_PAYLOAD_B64),
                               code="too_large")
            try:
                data = base64.b64decode(value.encode("ascii"), validate=True)
            except (ValueError, binascii.Error):
                raise _Invalid("must be base64 (RFC 4648, with padding)")
        else:
            raise _Invalid("must be a base64 string")
        if len(data) > MAX_PAYLOAD:
            raise _Invalid("is %d bytes; the maximum is %d"
                           % (len(data), MAX_PAYLOAD), code="too_large")
        return data


def _is_control(c):
    # C0, DEL and C1
    return ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f


def clean_text(text, max_len=120):
    """``text`` made fit for a reason field, for callers passing on free
    text from hooks or applications: control characters (C0, DEL, C1)
    become spaces, a surrogate pair becomes the character it encodes, a lone
    surrogate (as ``surrogateescape`` leaves for undecodable bytes) becomes
    U+FFFD; then the text is cut to ``max_len`` characters.  The result
    survives encoding and decoding unchanged."""
    out = []
    pending = None  # a high surrogate waiting for its low half
    for c in str(text):
        if pending is not None:
            if 0xdc00 <= ord(c) <= 0xdfff:
                out.append(chr(0x10000 + ((ord(pending) - 0xd800) << 10)
                               + (ord(c) - 0xdc00)))
                pending = None
                continue
            out.append("\ufffd")
            pending = None
        if 0xd800 <= ord(c) <= 0xdbff:
            pending = c
        elif 0xdc00 <= ord(c) <= 0xdfff:
            out.append("\ufffd")
        elif _is_control(c):
            out.append(" ")
        else:
            out.append(c)
    if pending is not None:
        out.append("\ufffd")
    return "".join(out)[:max_len]


_SEQ = _int(0, MAX_SEQ)
_MS = _int(0, MAX_MS)
_REASON = _str(120)


class Message(object):
    """Base of all messages: envelope plus declared fields.

    ``seq`` is set by :meth:`Connection.send` (outgoing) or from the line
    (incoming).  ``ref``, where a type declares it, names the ``seq`` of the
    message being answered.
    """

    APP = None
    TYPE = None
    #: who may send it: a tuple of HOST and/or GUEST
    SENDERS = (HOST, GUEST)
    FIELDS = ()

    def __init__(self, seq=None, **kwargs):
        self.seq = seq
        if not self._NAMES.issuperset(kwargs):
            raise TypeError("%s has no field %s" % (
                type(self).__name__,
                ", ".join(sorted(set(kwargs) - self._NAMES))))
        attrs = self.__dict__
        for name, check, required, default in self._SPECS:
            value = kwargs.get(name)
            if value is None:
                # None means "absent", as JSON null does in decode(), so an
                # optional field gets its default either way
                value = default
            if value is None:
                if required:
                    raise LocalProtocolError(
                        "invalid_message", "%s.%s is required"
                        % (self.TYPE, name))
            else:
                try:
                    value = check(value)
                except _Invalid as exc:
                    raise LocalProtocolError(
                        exc.code, "%s.%s %s" % (self.TYPE, name, exc))
            attrs[name] = value
        try:
            self._check_together()
        except _Invalid as exc:
            raise LocalProtocolError(exc.code, "%s %s" % (self.TYPE, exc))

    def _check_together(self):
        """Rules that involve several fields; raise _Invalid."""

    def fields(self):
        return {f.name: getattr(self, f.name) for f in self.FIELDS}

    def __eq__(self, other):
        return (type(self) is type(other)
                and self.fields() == other.fields())

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        items = ", ".join("%s=%r" % (k, v) for k, v in self.fields().items()
                          if v is not None)
        return "%s(%s, seq=%r)" % (type(self).__name__, items, self.seq)


# -- base layer --------------------------------------------------------------

class Sync(Message):
    """Start of a resynchronisation: discard everything until my ack."""

    APP, TYPE = "base", "sync"
    FIELDS = (Field("nonce", _str(64, _TOKEN_RE, min_len=1)),
              Field("versions", _versions))


class SyncAck(Message):
    """Answer to a :class:`Sync`: echoes its nonce, picks the version."""

    APP, TYPE = "base", "sync_ack"
    FIELDS = (Field("nonce", _str(64, _TOKEN_RE, min_len=1)),
              Field("version", _int(1, 255)))


class Error(Message):
    """A refused message.  Its envelope ``app`` is the refused message's."""

    APP, TYPE = "base", "error"
    FIELDS = (Field("code", _str(32, _CODE_RE, min_len=1)),
              Field("message", _str(200)),
              Field("ref", _SEQ, required=False),
              Field("versions", _versions, required=False))

    def __init__(self, app="base", **kwargs):
        super().__init__(**kwargs)
        if app not in _APPS:
            raise LocalProtocolError("invalid_message",
                                     "unknown application class %r" % app)
        self.app = app


# -- heartbeat ---------------------------------------------------------------

class Init(Message):
    """The guest registers for heartbeat monitoring."""

    APP, TYPE = "heartbeat", "init"
    SENDERS = (GUEST,)
    FIELDS = (Field("name", _str(64, _TOKEN_RE, min_len=1)),
              Field("interval_ms", _int(1, MAX_MS)),
              Field("corrective_action", _enum(ACTIONS), required=False,
                    default="none"),
              Field("shutdown_timeout_ms", _MS, required=False, default=0),
              Field("restart_timeout_ms", _MS, required=False, default=0))


class InitAck(Message):
    """The host accepts a registration and grants an interval."""

    APP, TYPE = "heartbeat", "init_ack"
    SENDERS = (HOST,)
    FIELDS = (Field("ref", _SEQ),
              Field("interval_ms", _int(1, MAX_MS)),
              Field("instance", _uuid, required=False))


class Challenge(Message):
    """The host asks: are you alive and healthy?  Answer within deadline."""

    APP, TYPE = "heartbeat", "challenge"
    SENDERS = (HOST,)
    FIELDS = (Field("challenge", _str(64, _TOKEN_RE, min_len=1)),
              Field("deadline_ms", _int(1, MAX_MS)))


class ChallengeResponse(Message):
    """The guest's answer: the echoed challenge and its health."""

    APP, TYPE = "heartbeat", "challenge_response"
    SENDERS = (GUEST,)
    FIELDS = (Field("ref", _SEQ),
              Field("challenge", _str(64, _TOKEN_RE, min_len=1)),
              Field("healthy", _bool),
              Field("reason", _REASON, required=False),
              Field("action", _enum(ACTIONS), required=False))


class Exit(Message):
    """The guest ends monitoring on purpose: no fault."""

    APP, TYPE = "heartbeat", "exit"
    SENDERS = (GUEST,)
    FIELDS = (Field("reason", _REASON, required=False),)


# -- server group ------------------------------------------------------------

class Broadcast(Message):
    """A datagram for every other member of the sender's server group.

    ``from`` is the source the host stamps when it delivers a broadcast.
    In a guest's broadcast it is ignored (not validated, not kept): the
    host knows the source from the channel the broadcast arrived on.
    """

    APP, TYPE = "server_group", "broadcast"
    FIELDS = (Field("payload", _Payload.check),
              Field("from", _uuid, required=False, senders=(HOST,)))

    def __init__(self, **kwargs):
        if "sender" in kwargs:
            kwargs["from"] = kwargs.pop("sender")
        super().__init__(**kwargs)

    @property
    def sender(self):
        return getattr(self, "from")


class Notification(Message):
    """A peer's Nova state changed."""

    APP, TYPE = "server_group", "notification"
    SENDERS = (HOST,)
    FIELDS = (Field("instance", _uuid),
              Field("state", _STATE),
              Field("event", _str(64, _TOKEN_RE, min_len=1)))


class StatusQuery(Message):
    """The guest asks for the Nova state of every member of its group."""

    APP, TYPE = "server_group", "status_query"
    SENDERS = (GUEST,)
    FIELDS = ()


class Status(Message):
    """Answer to a status query: every member, the asker included.

    On the wire a long answer is split into ``parts`` lines; the
    :class:`Connection` splits and reassembles, so users see one message.
    A part of a split answer holds at most STATUS_MEMBERS_PER_PART members.
    """

    APP, TYPE = "server_group", "status"
    SENDERS = (HOST,)
    FIELDS = (Field("ref", _SEQ),
              Field("members", _members),
              Field("group", _uuid, required=False),
              Field("part", _int(1, MAX_STATUS_PARTS), required=False,
                    default=1),
              Field("parts", _int(1, MAX_STATUS_PARTS), required=False,
                    default=1))

    def _check_together(self):
        if self.part > self.parts:
            raise _Invalid("part %d of %d: part must not exceed parts"
                           % (self.part, self.parts))
        if self.parts > 1 and len(self.members) > STATUS_MEMBERS_PER_PART:
            raise _Invalid("part of a split answer has %d members; the "
                           "maximum is %d" % (len(self.members),
                                              STATUS_MEMBERS_PER_PART))


_TYPES = {}
for _cls in (Sync, SyncAck, Init, InitAck, Challenge, ChallengeResponse,
             Exit, Broadcast, Notification, StatusQuery, Status):
    _TYPES[(_cls.APP, _cls.TYPE)] = _cls
_APPS = APPS
for _app in _APPS:
    _TYPES[(_app, "error")] = Error
for _cls in set(_TYPES.values()):
    # made once from FIELDS, for the constructor and encode()
    _cls._NAMES = frozenset(f.name for f in _cls.FIELDS)
    _cls._NAMES_IN_ORDER = tuple(f.name for f in _cls.FIELDS)
    _cls._SPECS = tuple((f.name, f.check, f.required, f.default)
                        for f in _cls.FIELDS)
    # what decode() takes from each sender, field by field: (name, check
    # or None if the key is not this sender's to set, required, default)
    _cls._TAKES = {sender: tuple(
        (f.name, f.check if sender in f.senders else None,
         f.required and sender in f.senders, f.default)
        for f in _cls.FIELDS) for sender in (HOST, GUEST)}
#: base-layer types whose format is frozen across versions: they parse
#: whatever ``v`` says, so versions can be negotiated at all.
_FROZEN = {("base", "sync"), ("base", "sync_ack"), ("base", "error")}


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


# json.loads(..., parse_constant=) builds a decoder per call
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(line):
    """True if arrays and objects nest deeper than MAX_DEPTH in ``line``.

    Cheap for every real line: it counts brackets first, and scans only a
    line with more than MAX_DEPTH opening brackets (a long status part),
    skipping strings, and stops at the first bracket too deep.  An
    unterminated string can make the scan see brackets that are not there;
    such a line is not JSON anyway, and invalid_json either way.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b'""', line).translate(None,
                                                        _NOT_BRACKETS):
        if byte == 0x5b or byte == 0x7b:  # [ or {
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def decode(line, sender):
    """Parse one line (without its newline) sent by ``sender``.

    :returns: a :class:`Message`.
    :raises RemoteProtocolError: for anything that is not a valid message.
        Its ``answerable`` is false if the line is an ``error`` (a JSON
        object whose ``type`` is ``"error"``): errors are never answered.
    """
    # (_too_deep's own first test, without the call for every line)
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _too_deep(line):
        raise RemoteProtocolError(
            "invalid_json", "not JSON: nested deeper than %d" % MAX_DEPTH)
    try:
        text = line.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using "
                                       "utf-8-sig)", text, 0)
        try:  # the decoder's decode(), less its calls for a bare object
            obj, end = _DECODER.scan_once(text, 0)
        except Exception:  # noqa: BLE001 - decode() says it properly
            end = None
        if end != len(text):
            obj = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError("invalid_json", "not JSON: %s" % exc)
    if not isinstance(obj, dict):
        raise RemoteProtocolError("invalid_json", "not a JSON object")
    if sender == GUEST and obj.get("type") == "challenge_response":
        msg = _round_response(obj)  # see "The heartbeat round" below
        if msg is not None:
            return msg
    try:
        return _decode_object(obj, sender)
    except RemoteProtocolError as exc:
        if obj.get("type") == "error":
            exc.answerable = False
        raise


def _decode_object(obj, sender):
    app, mtype, version = obj.get("app"), obj.get("type"), obj.get("v")
    # refusals name the class of the refused line when we know it, so the
    # peer can hand them to the layer that sent the line
    err_app = app if isinstance(app, str) and app in APPS else "base"
    seq = obj.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        try:
            seq = _SEQ(seq)
        except _Invalid as exc:
            raise RemoteProtocolError("invalid_message", "seq %s" % exc,
                                      app=err_app)
    if not isinstance(app, str) or not isinstance(mtype, str):
        raise RemoteProtocolError("invalid_message",
                                  "app and type must be strings", ref=seq,
                                  app=err_app)
    cls = _TYPES.get((app, mtype))
    if cls is None:
        raise RemoteProtocolError(
            "unknown_type", "unknown message %r of application %r"
            % (mtype[:40], app[:40]), ref=seq, app=err_app)
    if (type(version) is not int or version not in SUPPORTED_VERSIONS) and (
            app if cls is not Error else "base", mtype) not in _FROZEN:
        raise RemoteProtocolError(
            "unsupported_version", "version %r is not one of %s"
            % (version, list(SUPPORTED_VERSIONS)), ref=seq, app=err_app)
    if sender not in cls.SENDERS:
        raise RemoteProtocolError(
            "unexpected_message", "a %s may not send %s.%s"
            % (sender, app, mtype), ref=seq, app=err_app)
    msg = cls.__new__(cls)
    attrs = msg.__dict__
    if cls is Error:
        attrs["app"] = app  # the refused line's class, from the envelope
    for name, check, required, default in cls._TAKES[sender]:
        value = obj.get(name)
        if value is None or check is None:
            # absent (null is absent), or not this sender's to set
            if value is None and required:
                raise RemoteProtocolError(
                    "invalid_message", "%s.%s is required"
                    % (mtype, name), ref=seq, app=err_app)
            attrs[name] = default
            continue
        try:
            attrs[name] = check(value)
        except _Invalid as exc:
            raise RemoteProtocolError(
                exc.code, "%s.%s %s" % (mtype, name, exc), ref=seq,
                app=err_app)
    try:
        msg._check_together()
    except _Invalid as exc:
        raise RemoteProtocolError(exc.code, "%s %s" % (mtype, exc),
                                  ref=seq, app=err_app)
    msg.seq = seq
    return msg


def _wire(value):
    """``value`` as JSON text, as ``json.dumps(value, separators=(",",
    ":"), ensure_ascii=True)`` writes it, for the values of fields:
    bytes become base64 strings and Members objects.  The common types
    are written directly (json.dumps costs more than the rest of
    encoding a challenge)."""
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is bytes:
        return '"%s"' % base64.b64encode(value).decode("ascii")
    if kind is list and value and isinstance(value[0], Member):
        value = [member.to_wire() for member in value]
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def encode(msg, seq, version=VERSION):
    """Serialise ``msg`` with sequence number ``seq`` as one line: the
    envelope, then the fields in declaration order, the absent ones
    left out."""
    if type(msg) is Challenge:
        data = _round_challenge_line(msg, seq, version)  # see below
        if data is not None:
            return data
    app = getattr(msg, "app", msg.APP)
    if type(version) is int and type(seq) is int and app in APPS:
        parts = ['{"v":%d,"app":"%s","type":"%s","seq":%d' % (
            version, app, msg.TYPE, seq)]  # (names that need no escape)
    else:
        parts = ['{"v":%s,"app":%s,"type":%s,"seq":%s' % (
            _wire(version), _wire(app), _wire(msg.TYPE), _wire(seq))]
    attrs = msg.__dict__
    for name in msg._NAMES_IN_ORDER:
        value = attrs[name]
        if value is not None:
            parts.append(',"%s":%s' % (name, _wire(value)))
    parts.append("}\n")
    data = "".join(parts).encode("ascii")
    if len(data) > MAX_LINE:
        raise LocalProtocolError(
            "line_too_long", "%s.%s encodes to %d bytes; the maximum is %d"
            % (msg.APP, msg.TYPE, len(data), MAX_LINE))
    return data


_json_str = json.encoder.encode_basestring_ascii  # as json.dumps writes a str


# -- the heartbeat round -----------------------------------------------------
#
# Every interval of every monitored instance the host builds a challenge,
# encodes it and decodes the answer: at 1,000 instances the agent spends
# more on these three than on anything else, and the general code above
# costs about 0.9% of a core more (the agent benchmark, measured in
# doc/source/benchmarks.rst, "Fast paths").  So they have shortcuts, here
# and nowhere else.  Each one gives exactly what the general code gives
# (tests/unit/protocol/test_encoding.py compares them), or None to let the
# general code decide, errors included.

def host_challenge(token, deadline_ms):
    """The host's own challenge, as ``Challenge(challenge=token,
    deadline_ms=deadline_ms)`` but without validating them: only for a
    token and an interval the host made itself (a hex token, a granted
    interval)."""
    msg = Challenge.__new__(Challenge)
    msg.seq = None
    msg.challenge = token
    msg.deadline_ms = deadline_ms
    return msg


def _round_challenge_line(msg, seq, version):
    # the line encode() writes for a plain challenge, from a template
    if (type(seq) is type(version) is int and type(msg.deadline_ms) is int
            and type(msg.challenge) is str and "app" not in msg.__dict__
            and len(msg.challenge) <= 64):
        return ('{"v":%d,"app":"heartbeat","type":"challenge","seq":%d,'
                '"challenge":%s,"deadline_ms":%d}\n' % (
                    version, seq, _json_str(msg.challenge),
                    msg.deadline_ms)).encode("ascii")
    return None


_ACTION_OR_NONE = ACTIONS + (None,)  # (a tuple made once, not per answer)


def _round_response(obj):
    # a challenge_response in the plain shape, checked as ChallengeResponse
    # .FIELDS check it; anything else (valid or not) returns None
    seq, ref, token, reason = (obj.get("seq"), obj.get("ref"),
                               obj.get("challenge"), obj.get("reason"))
    if (obj.get("app") != "heartbeat" or type(seq) is not int
            or not 0 <= seq <= MAX_SEQ or type(ref) is not int
            or not 0 <= ref <= MAX_SEQ or type(obj.get("v")) is not int
            or obj["v"] not in SUPPORTED_VERSIONS
            or type(obj.get("healthy")) is not bool
            or type(token) is not str or not 0 < len(token) <= 64
            or not _TOKEN_RE.fullmatch(token)
            or obj.get("action") not in _ACTION_OR_NONE):
        return None
    if reason is not None:
        try:
            reason = _REASON(reason)
        except _Invalid:
            return None
    msg = ChallengeResponse.__new__(ChallengeResponse)
    msg.ref, msg.challenge, msg.healthy = ref, token, obj["healthy"]
    msg.reason, msg.action, msg.seq = reason, obj.get("action"), seq
    return msg
