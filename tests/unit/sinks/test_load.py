# SPDX-License-Identifier: Apache-2.0
"""Loading the configured sinks through stevedore."""

from oslo_config import cfg
import pytest

from guestha.conf import sinks as sinks_conf
from guestha.sinks import base
from guestha.sinks import log as log_sink
from guestha.sinks import masakari as masakari_sink
from guestha.sinks import vitrage as vitrage_sink


@pytest.fixture
def conf(tmp_path):
    conf = cfg.ConfigOpts()
    sinks_conf.register_opts(conf)
    conf([], project="guestha-test")
    conf.set_override("log_path", str(tmp_path / "events.jsonl"),
                      group="sinks")
    return conf


def test_the_log_sink_is_the_default(conf):
    [sink] = base.load_sinks(conf)
    assert isinstance(sink, log_sink.LogSink) and sink.name == "log"


def test_all_three_in_the_configured_order(conf):
    for group in ("vitrage", "masakari"):
        conf.set_override("auth_type", "none", group=group)
        conf.set_override("endpoint_override", "http://127.0.0.1:1",
                          group=group)
    conf.set_override("enabled", ["vitrage", "log", "masakari"],
                      group="sinks")
    sinks = base.load_sinks(conf)
    assert [type(s) for s in sinks] == [vitrage_sink.VitrageSink,
                                        log_sink.LogSink,
                                        masakari_sink.MasakariSink]
    assert [s.name for s in sinks] == ["vitrage", "log", "masakari"]
    dispatcher = base.SinkDispatcher.from_conf(conf, sinks=sinks)
    assert dispatcher.sink_names == ["vitrage", "log", "masakari"]
    assert dispatcher.max_attempts == conf.sinks.max_attempts


def test_unknown_and_repeated_names_are_config_errors(conf):
    conf.set_override("enabled", ["log", "nagios"], group="sinks")
    with pytest.raises(base.SinkConfigError, match="nagios.*known: log"):
        base.load_sinks(conf)
    conf.set_override("enabled", ["log", "log"], group="sinks")
    with pytest.raises(base.SinkConfigError, match="twice"):
        base.load_sinks(conf)


def test_a_sink_that_refuses_its_config_is_a_config_error(conf):
    conf.set_override("enabled", ["vitrage"], group="sinks")
    with pytest.raises(base.SinkConfigError, match="vitrage.*auth_type"):
        base.load_sinks(conf)


def test_two_confs_keep_their_options_apart():
    a, b = cfg.ConfigOpts(), cfg.ConfigOpts()
    sinks_conf.register_opts(a)
    sinks_conf.register_opts(b)
    a([], project="a")
    b([], project="b")
    a.set_override("enabled", ["vitrage"], group="sinks")
    a.set_override("batch_size", 7, group="vitrage")
    assert b.sinks.enabled == ["log"] and b.vitrage.batch_size == 50
