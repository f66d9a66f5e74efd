# SPDX-License-Identifier: Apache-2.0
"""The guest daemon's configuration: an ini file read with configparser.

Every option is declared once, in :data:`OPTIONS`: its section, name,
default and the check that turns the text of the file into a value.  The
sample file ``etc/guestha-guest.ini`` documents the same options, and a
test keeps the two in step.

Every option has a default, so the file may be missing or empty: a guest
image must boot into a working daemon without any configuration.  A value
that is present but wrong is a :class:`ConfigError` naming the file, the
option, what is wrong and what is allowed; refusing to start is better than
monitoring with a setting the tenant did not ask for.  Unknown sections and
options, on the other hand, are only reported (in
:attr:`GuestConfig.warnings`, for the caller to log once logging is set
up): a newer sample file on an older daemon, or a harmless typo, must not
stop the heartbeat of a whole VM.
"""

from __future__ import annotations

import configparser
import os
import re
import socket

from guestha_guest.protocol.messages import ACTIONS
from guestha_guest.protocol.messages import MAX_MS

#: Where the daemon looks when no file is named.
DEFAULT_PATH = "/etc/guestha/guestha-guest.ini"
DEFAULT_PORT = "/dev/virtio-ports/org.openstack.guestha.0"
DEFAULT_SOCKET = "/run/guestha/app.sock"

#: Log levels the daemon accepts (names of the logging module's levels).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The registration name as the wire protocol allows it (Init.name).
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_MAX_SOCKET_PATH = 107


class ConfigError(Exception):
    """A configuration file that cannot be used, with the reason."""


class _Bad(ValueError):
    """A value failed its check; the message says what is allowed."""


# -- checks: text of the file -> value ----------------------------------------

def _int_range(lo, hi, zero_means=None):
    if zero_means is None:
        allowed = "an integer from %d to %d" % (lo, hi)
    else:
        allowed = "0 (%s) or an integer from %d to %d" % (zero_means, lo, hi)

    def check(text):
        try:
            value = int(text, 10)
        except ValueError:
            raise _Bad("must be " + allowed) from None
        if not (lo <= value <= hi or (zero_means is not None and value == 0)):
            raise _Bad("must be " + allowed)
        return value
    return check


def _choice(values, upper=False):
    allowed = "one of " + ", ".join(values)

    def check(text):
        value = text.upper() if upper else text.lower()
        if value not in values:
            raise _Bad("must be " + allowed)
        return value
    return check


def _bool(text):
    try:
        return configparser.ConfigParser.BOOLEAN_STATES[text.lower()]
    except KeyError:
        raise _Bad("must be true or false (also yes/no, on/off, 1/0)") \
            from None


def _nonempty(text):
    if not text:
        raise _Bad("must not be empty")
    return text


def _name(text):
    if not _NAME_RE.match(text):
        raise _Bad("must be 1 to 64 characters from A-Z a-z 0-9 . _ : -")
    return text


def _socket_path(text):
    if not os.path.isabs(text):
        raise _Bad("must be an absolute path")
    if len(os.fsencode(text)) > _MAX_SOCKET_PATH:
        raise _Bad("must be at most %d bytes long (the limit of a UNIX "
                   "socket address)" % _MAX_SOCKET_PATH)
    return text


def _mode(text):
    digits = text[2:] if text[:2].lower() == "0o" else text
    try:
        value = int(digits, 8)
    except ValueError:
        raise _Bad("must be an octal permission mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise _Bad("must be an octal permission mode from 0000 to 0777")
    return value


def default_name():
    """The host name, made fit for registration (the protocol allows 1 to
    64 characters from ``A-Za-z0-9._:-``)."""
    name = _NAME_BAD_CHARS.sub("-", socket.gethostname())[:64]
    return name or "guest"


class Option(object):
    """One option: where it lives, its default, and its check.

    ``default`` is the value itself, or a callable that computes it when
    the configuration is loaded (the host name).
    """

    def __init__(self, section, name, default, check):
        self.section = section
        self.name = name
        self.default = default
        self.check = check

    def default_value(self):
        return self.default() if callable(self.default) else self.default


#: Every option, in the order of the sample file.
OPTIONS = (
    Option("guestha", "port", DEFAULT_PORT, _nonempty),
    Option("guestha", "name", default_name, _name),
    Option("guestha", "interval_ms", 1000, _int_range(100, 60000)),
    Option("guestha", "corrective_action", "none", _choice(ACTIONS)),
    Option("guestha", "shutdown_timeout_ms", 30000, _int_range(0, MAX_MS)),
    Option("guestha", "restart_timeout_ms", 120000, _int_range(0, MAX_MS)),
    Option("guestha", "log_level", "INFO", _choice(LOG_LEVELS, upper=True)),
    Option("health", "hook_dir", "/etc/guestha/health.d", _nonempty),
    Option("health", "hook_timeout_ms", 2000, _int_range(1, MAX_MS)),
    Option("health", "period_ms", 0,
           _int_range(100, MAX_MS, zero_means="the granted interval")),
    Option("health", "max_age_ms", 0,
           _int_range(1, MAX_MS, zero_means="three periods")),
    Option("app_api", "enabled", True, _bool),
    Option("app_api", "socket", DEFAULT_SOCKET, _socket_path),
    Option("app_api", "mode", 0o660, _mode),
    Option("app_api", "max_apps", 64, _int_range(1, 1024)),
)

SECTIONS = ("guestha", "health", "app_api")


class Section(object):
    """The options of one section as attributes (``cfg.health.period_ms``).
    """

    def __init__(self, name, values):
        self._name = name
        self.__dict__.update(values)

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("_")}

    def __repr__(self):
        return "Section(%r, %r)" % (self._name, self.as_dict())


class GuestConfig(object):
    """The loaded configuration.

    Attributes: ``guestha``, ``health`` and ``app_api``, one
    :class:`Section` per ini section with one attribute per option (see
    :data:`OPTIONS`); ``path``, the file that was read (``None`` if there
    was none); ``warnings``, messages about unknown sections and options,
    for the caller to log.

    Times are in milliseconds as in the file; ``app_api.mode`` is an int
    (``0o660``); ``guestha.log_level`` is upper case.
    """

    def __init__(self, values=None, path=None, warnings=()):
        values = values or {}
        for section in SECTIONS:
            sect = {}
            for opt in OPTIONS:
                if opt.section == section:
                    key = (section, opt.name)
                    sect[opt.name] = (values[key] if key in values
                                      else opt.default_value())
            setattr(self, section, Section(section, sect))
        self.path = path
        self.warnings = list(warnings)

    def __repr__(self):
        return "GuestConfig(path=%r, guestha=%r, health=%r, app_api=%r)" % (
            self.path, self.guestha, self.health, self.app_api)


def _parser():
    # No interpolation: a '%' in a path must stay a '%'.  No DEFAULT
    # section: it would copy its options into every section, which only
    # confuses a file this small, so "DEFAULT" is just an unknown section.
    return configparser.ConfigParser(
        interpolation=None, default_section="guestha: no default section",
        inline_comment_prefixes=("#", ";"), empty_lines_in_values=False)


def load_config(path=None):
    """Read the configuration from ``path`` (default :data:`DEFAULT_PATH`).

    A missing file gives the defaults.  Raises :class:`ConfigError` for a
    file that cannot be read or parsed, or a value that is not allowed.
    """
    path = DEFAULT_PATH if path is None else path
    parser = _parser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        return GuestConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("%s: cannot read: %s" % (path, exc)) from None
    except configparser.Error as exc:
        # its message already names the file and the line
        raise ConfigError(str(exc).replace("\n", " ")) from None

    known = {(opt.section, opt.name): opt for opt in OPTIONS}
    values = {}
    warnings = []
    for section in parser.sections():
        if section not in SECTIONS:
            warnings.append("%s: unknown section [%s] ignored (known: %s)"
                            % (path, section, ", ".join(SECTIONS)))
            continue
        for name, text in parser.items(section):
            opt = known.get((section, name))
            if opt is None:
                warnings.append(
                    "%s:%s.%s: unknown option ignored (known: %s)"
                    % (path, section, name, ", ".join(
                        o.name for o in OPTIONS if o.section == section)))
                continue
            try:
                values[(section, name)] = opt.check(text.strip())
            except _Bad as exc:
                raise ConfigError("%s:%s.%s: %r is not allowed; it %s"
                                  % (path, section, name, text, exc)) \
                    from None

    period = values.get(("health", "period_ms"), 0)
    max_age = values.get(("health", "max_age_ms"), 0)
    if period and max_age and max_age <= period:
        # every result would be stale before the next round replaced it
        raise ConfigError("%s:health.max_age_ms: %d is not allowed; it must "
                          "be longer than health.period_ms (%d) or 0"
                          % (path, max_age, period))
    return GuestConfig(values, path=path, warnings=warnings)
