# SPDX-License-Identifier: Apache-2.0
import os
import re
import socket

import pytest

from guestha_guest import config
from guestha_guest.config import ConfigError
from guestha_guest.config import load_config
from guestha_guest import protocol as p

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SAMPLE = os.path.join(ROOT, "etc", "guestha-guest.ini")


def write(tmp_path, text):
    path = tmp_path / "guest.ini"
    path.write_text(text)
    return str(path)


def test_defaults_when_file_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "vm-1.example.org")
    cfg = load_config(str(tmp_path / "absent.ini"))
    assert cfg.path is None
    assert cfg.warnings == []
    assert cfg.guestha.as_dict() == {
        "port": "/dev/virtio-ports/org.openstack.guestha.0",
        "name": "vm-1.example.org",
        "interval_ms": 1000,
        "corrective_action": "none",
        "shutdown_timeout_ms": 30000,
        "restart_timeout_ms": 120000,
        "log_level": "INFO",
    }
    assert cfg.health.as_dict() == {
        "hook_dir": "/etc/guestha/health.d",
        "hook_timeout_ms": 2000,
        "period_ms": 0,
        "max_age_ms": 0,
    }
    assert cfg.app_api.as_dict() == {
        "enabled": True,
        "socket": "/run/guestha/app.sock",
        "mode": 0o660,
        "max_apps": 64,
    }


def test_default_path_is_etc(monkeypatch):
    seen = []

    def fake_open(path, *args, **kwargs):
        seen.append(path)
        raise FileNotFoundError(path)
    monkeypatch.setattr("builtins.open", fake_open)
    load_config()
    assert seen == ["/etc/guestha/guestha-guest.ini"]


def test_empty_file_gives_defaults(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(path)
    assert cfg.path == path
    assert cfg.guestha.interval_ms == 1000
    assert cfg.app_api.enabled is True


def test_values_read(tmp_path):
    cfg = load_config(write(tmp_path, """
[guestha]
port = unix-listen:/tmp/g.sock
name = web-01
interval_ms = 250
corrective_action = Reboot
shutdown_timeout_ms = 0
restart_timeout_ms = 3600000
log_level = debug

[health]
hook_dir = /srv/hooks
hook_timeout_ms = 500   # inline comments are allowed
period_ms = 100
max_age_ms = 1000

[app_api]
enabled = no
socket = /run/x/app.sock
mode = 0o600
max_apps = 1
"""))
    assert cfg.guestha.port == "unix-listen:/tmp/g.sock"
    assert cfg.guestha.name == "web-01"
    assert cfg.guestha.interval_ms == 250
    assert cfg.guestha.corrective_action == "reboot"
    assert cfg.guestha.shutdown_timeout_ms == 0
    assert cfg.guestha.restart_timeout_ms == 3600000
    assert cfg.guestha.log_level == "DEBUG"
    assert cfg.health.hook_dir == "/srv/hooks"
    assert cfg.health.hook_timeout_ms == 500
    assert cfg.health.period_ms == 100
    assert cfg.health.max_age_ms == 1000
    assert cfg.app_api.enabled is False
    assert cfg.app_api.socket == "/run/x/app.sock"
    assert cfg.app_api.mode == 0o600
    assert cfg.app_api.max_apps == 1


def test_partial_file_keeps_other_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "[health]\nperiod_ms = 5000\n"))
    assert cfg.health.period_ms == 5000
    assert cfg.health.hook_timeout_ms == 2000
    assert cfg.guestha.interval_ms == 1000


@pytest.mark.parametrize("section,option,value,allowed", [
    ("guestha", "interval_ms", "99", "an integer from 100 to 60000"),
    ("guestha", "interval_ms", "60001", "an integer from 100 to 60000"),
    ("guestha", "interval_ms", "1s", "an integer from 100 to 60000"),
    ("guestha", "interval_ms", "", "an integer from 100 to 60000"),
    ("guestha", "corrective_action", "explode",
     "one of none, log, reboot, stop"),
    ("guestha", "name", "has space", "1 to 64 characters"),
    ("guestha", "name", "x" * 65, "1 to 64 characters"),
    ("guestha", "shutdown_timeout_ms", "-1", "from 0 to 3600000"),
    ("guestha", "log_level", "LOUD", "one of DEBUG, INFO, WARNING"),
    ("guestha", "port", "", "must not be empty"),
    ("health", "hook_timeout_ms", "0", "an integer from 1 to 3600000"),
    ("health", "period_ms", "50",
     "0 (the granted interval) or an integer from 100 to 3600000"),
    ("health", "max_age_ms", "-5", "0 (three periods) or an integer"),
    ("app_api", "enabled", "maybe", "true or false"),
    ("app_api", "socket", "run/app.sock", "an absolute path"),
    ("app_api", "socket", "/" + "s" * 107, "at most 107 bytes"),
    ("app_api", "mode", "0999", "octal permission mode"),
    ("app_api", "mode", "01777", "from 0000 to 0777"),
    ("app_api", "max_apps", "0", "an integer from 1 to 1024"),
])
def test_bad_values(tmp_path, section, option, value, allowed):
    path = write(tmp_path, "[%s]\n%s = %s\n" % (section, option, value))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("%s:%s.%s: %r is not allowed; it must "
                          % (path, section, option, value)), msg
    assert allowed in msg


def test_max_age_must_exceed_period(tmp_path):
    path = write(tmp_path, "[health]\nperiod_ms = 1000\nmax_age_ms = 1000\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        "%s:health.max_age_ms: 1000 is not allowed; it must be longer than "
        "health.period_ms (1000) or 0" % path)


def test_unknown_section_and_option_are_warnings(tmp_path):
    path = write(tmp_path, "[guestha]\ninterval = 500\n[extra]\na = 1\n"
                           "[DEFAULT]\nb = 2\n")
    cfg = load_config(path)
    assert cfg.guestha.interval_ms == 1000
    assert cfg.warnings == [
        "%s:guestha.interval: unknown option ignored (known: port, name, "
        "interval_ms, corrective_action, shutdown_timeout_ms, "
        "restart_timeout_ms, log_level)" % path,
        "%s: unknown section [extra] ignored (known: guestha, health, "
        "app_api)" % path,
        "%s: unknown section [DEFAULT] ignored (known: guestha, health, "
        "app_api)" % path,
    ]


def test_syntax_error(tmp_path):
    path = write(tmp_path, "interval_ms = 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert path in str(err.value)
    assert "\n" not in str(err.value)


def test_duplicate_option(tmp_path):
    path = write(tmp_path, "[guestha]\nname = a\nname = b\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert path in str(err.value)
    assert "'name'" in str(err.value)


def test_unreadable(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path))  # a directory
    assert str(err.value).startswith("%s: cannot read: " % tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[guestha]\nname = \xff\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value).startswith("%s: cannot read: " % path)


def test_percent_is_literal(tmp_path):
    cfg = load_config(write(tmp_path, "[health]\nhook_dir = /srv/100%\n"))
    assert cfg.health.hook_dir == "/srv/100%"


@pytest.mark.parametrize("hostname,expected", [
    ("web", "web"),
    ("a b/c", "a-b-c"),
    ("h" * 80, "h" * 64),
    ("", "guest"),
    # each character outside the token alphabet becomes one "-" (a name
    # with nothing else left is still a valid token), then the cut
    ("m\u00fcnchen", "m-nchen"),
    ("\U0001f600x", "-x"),
    ("vm\udcff", "vm-"),  # an undecodable byte, as Python shows it
    ("\u00e9" * 70, "-" * 64),
    ("a.b_c:d-e", "a.b_c:d-e"),
])
def test_default_name_from_hostname(monkeypatch, hostname, expected):
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert config.default_name() == expected


def test_defaults_make_a_valid_init(tmp_path):
    # the defaults must be what the wire protocol accepts
    cfg = load_config(str(tmp_path / "absent.ini"))
    g = cfg.guestha
    init = p.Init(name=g.name, interval_ms=g.interval_ms,
                  corrective_action=g.corrective_action,
                  shutdown_timeout_ms=g.shutdown_timeout_ms,
                  restart_timeout_ms=g.restart_timeout_ms)
    assert init.name == g.name


def test_extremes_make_a_valid_init(tmp_path):
    cfg = load_config(write(tmp_path, """
[guestha]
name = %s
interval_ms = 60000
corrective_action = stop
shutdown_timeout_ms = 3600000
restart_timeout_ms = 3600000
""" % ("A.b_c:d-" * 8)))
    g = cfg.guestha
    p.Init(name=g.name, interval_ms=g.interval_ms,
           corrective_action=g.corrective_action,
           shutdown_timeout_ms=g.shutdown_timeout_ms,
           restart_timeout_ms=g.restart_timeout_ms)


# -- the sample file ----------------------------------------------------------

def _sample_options():
    """(section, option, value) of every commented-out option."""
    found = []
    section = None
    with open(SAMPLE) as f:
        for line in f:
            m = re.match(r"^\[(\w+)\]$", line.strip())
            if m:
                section = m.group(1)
                continue
            m = re.match(r"^#(\w+) =(.*)$", line.rstrip("\n"))
            if m:
                found.append((section, m.group(1), m.group(2).strip()))
    return found


def test_sample_documents_every_option_in_order():
    documented = [(s, o) for s, o, _v in _sample_options()]
    assert documented == [(opt.section, opt.name)
                          for opt in config.OPTIONS]


def test_sample_shows_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    # uncomment every option that shows a value: the result must be the
    # defaults, so the sample cannot drift from the code
    lines = []
    with open(SAMPLE) as f:
        for line in f:
            if re.match(r"^#\w+ = \S", line):
                line = line[1:]
            lines.append(line)
    path = write(tmp_path, "".join(lines))
    cfg = load_config(path)
    defaults = load_config(str(tmp_path / "absent.ini"))
    assert cfg.warnings == []
    for section in config.SECTIONS:
        assert getattr(cfg, section).as_dict() == \
            getattr(defaults, section).as_dict()
    shown = {(s, o) for s, o, v in _sample_options() if v}
    assert shown == {(o.section, o.name) for o in config.OPTIONS} - {
        ("guestha", "name")}


def test_sample_as_is_gives_defaults():
    cfg = load_config(SAMPLE)
    assert cfg.warnings == []
    assert cfg.guestha.interval_ms == 1000
