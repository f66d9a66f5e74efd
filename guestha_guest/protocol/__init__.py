# SPDX-License-Identifier: Apache-2.0
"""The guestha wire protocol, sans I/O.

This package is the single source of truth for the format spoken on the
virtio-serial channel between the compute host and the guest.  It is
standard library only and does no I/O and reads no clock: the guest daemon
and the host agent both import it and feed it bytes and times.

* :mod:`.messages`: the envelope, every message type, encoding and
  validation, and the protocol constants (``MAX_LINE``, ``MAX_PAYLOAD``,
  ``PORT_NAME``...).
* :mod:`.connection`: framing, resynchronisation and version negotiation
  (the base layer).
* :mod:`.heartbeat`: the heartbeat state machines of host and guest.
* :mod:`.session`: one side of a channel, the connection and the
  heartbeat wired together (:class:`HostSession`, :class:`GuestSession`):
  bytes and times in, bytes to write and events out.
* :mod:`.errors`: :class:`LocalProtocolError` and
  :class:`RemoteProtocolError`.

The specification is ``doc/source/protocol.rst``.
"""

from guestha_guest.protocol.connection import (  # noqa: F401
    CLOSED, NEED_DATA, READY, SYNCING, Connection, ConnectionClosed, Synced)
from guestha_guest.protocol.errors import (  # noqa: F401
    ERROR_CODES, LocalProtocolError, ProtocolError, RemoteProtocolError)
from guestha_guest.protocol.messages import (  # noqa: F401
    ACTIONS, GUEST, HOST, MAX_LINE, MAX_PAYLOAD, PORT_NAME,
    SUPPORTED_VERSIONS, VERSION, Broadcast, Challenge, ChallengeResponse,
    Error, Exit, Init, InitAck, Member, Message, Notification, Status,
    StatusQuery, Sync, SyncAck, clean_text)
from guestha_guest.protocol.session import (  # noqa: F401
    BadLine, GuestSession, HostSession, Send)
