# SPDX-License-Identifier: Apache-2.0
"""Protocol errors.

Two classes, as in h11: a :class:`RemoteProtocolError` means the *peer*
broke the protocol (a bad line, an unknown type, a field out of bounds); it is
raised while parsing what the peer sent and can be answered with an ``error``
message (:meth:`RemoteProtocolError.to_message`).  A
:class:`LocalProtocolError` means *this side* tried something the protocol
forbids (sending an application message before the channel is synchronised, a
field out of bounds); it is a programming error on this side and is never
sent to the peer.

Every error carries a machine-readable ``code`` (one of :data:`ERROR_CODES`),
a human-readable ``message`` and, where known, ``ref``: the sequence number of
the offending message.  A :class:`RemoteProtocolError` also carries ``app``:
the application class of the offending line when the receiver knows it
(``"base"`` otherwise), which becomes the envelope ``app`` of the ``error``
message, so that the peer can route the refusal to the layer that sent the
line (a refused broadcast reaches the server-group layer, not a log).

A refused line that is itself an ``error`` (a JSON object whose ``type``
is ``"error"``, valid or not) is never answered: its error has
``answerable`` false, so that two peers that each find the other's errors
invalid cannot ping-pong refusals.
"""

#: Error codes carried by ``error`` messages, and their meaning.
ERROR_CODES = {
    # base layer
    "invalid_json": "the line is not a UTF-8 JSON object",
    "line_too_long": "the line exceeds the maximum line length",
    "invalid_message": "a field is missing, of the wrong type or out of "
                       "bounds",
    "unknown_type": "the application class or message type is unknown",
    "unexpected_message": "the message may not be sent in this direction "
                          "or in this state",
    "unsupported_version": "no common protocol version",
    # heartbeat
    "not_registered": "the guest has not registered (send init)",
    "wrong_echo": "the challenge response does not echo the challenge",
    # server group
    "too_large": "the broadcast payload exceeds the maximum size",
    "not_member": "the instance is not a member of a server group",
    "disabled": "server-group messaging is not enabled for this instance",
    "rate_limited": "too many messages; this one was dropped",
    "unavailable": "the service behind the host is not reachable now",
}


class ProtocolError(Exception):
    """Base class of all protocol errors."""

    def __init__(self, code, message, ref=None):
        if code not in ERROR_CODES:
            raise ValueError("unknown error code %r" % (code,))
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.ref = ref


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    :param app: the application class of the refused line, if known.
    :param answerable: false if the refused line is an ``error`` itself;
        then it must not be answered (:meth:`to_message` is not sent).
    """

    def __init__(self, code, message, ref=None, app="base",
                 answerable=True):
        # imported here: messages imports this module
        from guestha_guest.protocol.messages import APPS

        if app not in APPS:
            raise ValueError("unknown application class %r" % (app,))
        super().__init__(code, message, ref)
        self.app = app
        self.answerable = answerable

    def to_message(self):
        """The ``error`` message that tells the peer what went wrong."""
        from guestha_guest.protocol.messages import Error

        return Error(app=self.app, code=self.code,
                     message=self.message[:200], ref=self.ref)
