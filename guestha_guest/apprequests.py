# SPDX-License-Identifier: Apache-2.0
"""The application API's requests: one JSON object a line, checked.

Applications are local but not trusted to be correct: a line that is not
a JSON object, or a request whose fields are missing or of the wrong
kind, is refused with a :class:`RequestError`, which the server turns
into an ``error`` reply (``doc/source/app-api.rst`` lists the codes).
"""

import json

#: Events an application can subscribe to.
EVENTS = ("broadcast", "notification", "status")
#: Longest string ``id``, in characters.
MAX_ID = 64


class RequestError(Exception):
    """A request refused; becomes an ``error`` reply."""

    def __init__(self, code, message, field=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def decode(line):
    """The request a line holds (a dict), or None for a blank line (a
    keep-alive).

    :raises RequestError: ``invalid_json``.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    try:
        req = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("invalid_json", "a line must be UTF-8") from None
    except (ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the decoder allows
        raise RequestError("invalid_json",
                           "not valid JSON: %s" % exc) from None
    if not isinstance(req, dict):
        raise RequestError("invalid_json",
                           "a line must hold one JSON object")
    return req


def field(req, name, kind, required=True, default=None):
    """``req[name]`` checked to be of ``kind`` ("bool", "int", "str",
    "list")."""
    if name not in req or req[name] is None:
        if required:
            raise RequestError("invalid_field", "field '%s' is required"
                               % name, name)
        return default
    value = req[name]
    # bool is an int in Python, never in JSON
    ok = {"bool": type(value) is bool,
          "int": type(value) is int,
          "str": isinstance(value, str),
          "list": isinstance(value, list)}[kind]
    if not ok:
        words = {"bool": "true or false", "int": "an integer",
                 "str": "a string", "list": "a list"}
        raise RequestError("invalid_field", "field '%s' must be %s"
                           % (name, words[kind]), name)
    return value


def request_id(req):
    """The request's ``id``: a string of at most 64 characters or an
    integer, echoed in the reply."""
    req_id = req.get("id")
    if req_id is None:
        return None
    if (type(req_id) is int
            or (isinstance(req_id, str) and len(req_id) <= MAX_ID)):
        return req_id
    raise RequestError("invalid_field", "field 'id' must be an integer or "
                       "a string of at most %d characters" % MAX_ID, "id")


def clean(text):
    """``text`` with its unprintable characters made spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def events(req):
    """The request's ``events``, each one of :data:`EVENTS`."""
    names = field(req, "events", "list")
    for event in names:
        if event not in EVENTS:
            raise RequestError("invalid_field", "field 'events' may hold "
                               "only %s" % ", ".join(EVENTS), "events")
    return names
