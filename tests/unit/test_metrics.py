# SPDX-License-Identifier: Apache-2.0
"""guestha.metrics: the agent loop's snapshot, the collectors' output and
the HTTP exporter (issue 12)."""

import threading
import urllib.request

from prometheus_client import exposition
from prometheus_client import registry as registry_mod
import pytest

from guestha.agent import events as ev
from guestha.agent import instance as im
from guestha.agent.loop import AgentLoop
from guestha import metrics
from tests.support.clock import ManualClock

UUID = "7d1f0a5e-2b3c-4d4e-8f60-718293a4b5c6"
PROJECT = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"


class Reporter(object):
    def __init__(self):
        self.events = []

    def submit(self, event):
        self.events.append(event)

    def cast_relay(self, method, **kwargs):
        pass

    def stats(self):
        return {"pending": 3, "on_disk": 2, "in_memory": 1, "delivered": 7,
                "rejected": 0, "retries": 4, "dropped": 0,
                "disk_error": None}


@pytest.fixture
def loop(tmp_path):
    clock = ManualClock(100.0)
    lp = AgentLoop("compute-1", im.Policy(min_interval_ms=100), Reporter(),
                   str(tmp_path), clock=clock)
    lp.started_at = 90.0
    # an instance of project PROJECT with no guestha channel
    lp._handle(ev.DomainUpdate(ev.DomainInfo(
        UUID, "vm1", ev.RUNNING, None, True, {"project": PROJECT}, 1),
        "started"), clock())
    return lp


def _text(collector):
    reg = registry_mod.CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return exposition.generate_latest(reg).decode()


def _agent_collector(loop, **kwargs):
    """The agent's collector on one snapshot of ``loop``, taken now."""
    snap = loop.metrics_snapshot(loop._clock())
    return metrics.AgentCollector("compute-1", lambda t: snap, **kwargs)


def _parse(series):
    name, _, labels = series.partition("{")
    return name, frozenset(labels.rstrip("}").split(",")) - {""}


def _value(text, name_and_labels):
    """The value of a series, its labels in any order."""
    want = _parse(name_and_labels)
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if not line.startswith("#") and _parse(series) == want:
            return float(value)
    raise AssertionError("%s not in:\n%s" % (name_and_labels, text))


def test_agent_snapshot_and_collector(loop):
    loop.report({"type": "fault", "id": "f1", "instance": UUID,
                 "kind": "missed"})
    loop.instances[UUID].faults.fault = {"id": "f1", "kind": "missed"}
    loop.instances[UUID].counters["missed"] = 2
    text = _text(_agent_collector(loop))
    state = loop.instances[UUID].state
    assert _value(text, 'guestha_agent_instances{host="compute-1",state="%s"}'
                  % state) == 1
    ids = 'host="compute-1",instance_id="%s",project_id="%s"' % (
        UUID, PROJECT)
    assert _value(text, "guestha_agent_instance_state{%s,state=\"%s\"}"
                  % (ids, state)) == 1
    assert _value(text, 'guestha_agent_instance_fault_open{%s,kind="missed"}'
                  % ids) == 1
    assert _value(text, "guestha_agent_instance_heartbeat_missed_total{%s}"
                  % ids) == 2
    assert _value(text, 'guestha_agent_faults_total{host="compute-1",'
                  'kind="missed"}') == 1
    assert _value(text, 'guestha_agent_faults_open{host="compute-1",'
                  'kind="missed"}') == 1
    assert _value(text, 'guestha_agent_outbox_events{host="compute-1",'
                  'where="disk"}') == 2
    assert _value(text, 'guestha_agent_outbox_events{host="compute-1",'
                  'where="memory"}') == 1
    assert _value(text, 'guestha_agent_uptime_seconds{host="compute-1"}') \
        == 10.0


def test_no_per_instance_labels(loop):
    text = _text(_agent_collector(loop, per_instance=False))
    assert UUID not in text and "instance_id" not in text
    assert "guestha_agent_instances{" in text


def test_gone_instances_keep_the_host_totals(loop):
    loop.instances[UUID].counters["answers"] = 5
    loop._gone(UUID, loop._clock())
    text = _text(_agent_collector(loop))
    assert _value(text, 'guestha_agent_heartbeat_answers_total'
                  '{host="compute-1"}') == 5


def test_round_trips_are_counted_once(loop):
    loop.record_rtt(0.5)            # before the first scrape: not counted
    loop.metrics_snapshot(0)
    for rtt in (0.0007, 0.003, 0.003):
        loop.record_rtt(rtt)
    snap = loop.metrics_snapshot(0)
    assert snap["rtt"]["buckets"][1] == ("0.001", 1)
    assert snap["rtt"]["buckets"][3] == ("0.005", 3)
    assert snap["rtt"]["buckets"][-1] == ("+Inf", 3)
    loop.record_rtt(2.0)
    snap = loop.metrics_snapshot(0)
    assert snap["rtt"]["buckets"][-1] == ("+Inf", 4)
    assert snap["rtt"]["sum"] == pytest.approx(2.0067)


def test_round_trips_folded_before_the_ring_overwrites_them(loop):
    loop.metrics_snapshot(0)
    for _ in range(10001):
        loop.record_rtt(0.001)
    loop._housekeeping(0)           # folds: more than 10,000 unfolded
    assert loop.round_trips._hist.count == 10001
    for _ in range(15000):
        loop.record_rtt(0.001)
    snap = loop.metrics_snapshot(0)
    assert snap["rtt"]["buckets"][-1] == ("+Inf", 25001)


def test_request_metrics_times_out_when_the_loop_does_not_answer(loop):
    with pytest.raises(TimeoutError):
        loop.request_metrics(timeout=0)


def test_request_metrics_answered_by_the_running_loop(loop):
    loop.start()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        snap = loop.request_metrics(timeout=30)
    finally:
        loop.stop()
        thread.join(30)
    assert [i[0] for i in snap["instances"]] == [UUID]


class FakeDispatcher(object):
    def stats(self):
        return {"log": {"waiting": 4, "sent": 10, "failed_attempts": 2,
                        "consecutive_failures": 2}}


def test_server_collector():
    events, actions = metrics.Tally(), metrics.Tally()
    events.add("fault", "missed")
    events.add("fault", "missed")
    events.add("recovery", None)
    actions.add("reboot", "done")
    text = _text(metrics.ServerCollector("ctl-1", FakeDispatcher(), events,
                                         actions))
    assert _value(text, 'guestha_server_events_total{kind="missed",'
                  'server="ctl-1",type="fault"}') == 2
    assert _value(text, 'guestha_server_sink_backlog{server="ctl-1",'
                  'sink="log"}') == 4
    assert _value(text, 'guestha_server_sink_events_total{outcome="sent",'
                  'server="ctl-1",sink="log"}') == 10
    assert _value(text, 'guestha_server_sink_consecutive_failures{'
                  'server="ctl-1",sink="log"}') == 2
    assert _value(text, 'guestha_server_actions_total{action="reboot",'
                  'outcome="done",server="ctl-1"}') == 1


def test_exporter_serves_http(loop):
    exporter = metrics.Exporter(_agent_collector(loop), "127.0.0.1",
                                0).start()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                    % exporter.port, timeout=30) as resp:
            body = resp.read().decode()
    finally:
        exporter.stop()
    assert "guestha_agent_instances{" in body


@pytest.mark.parametrize("what, path", [
    ("rules", "etc/prometheus/guestha-rules.yml"),
    ("config", "etc/prometheus/prometheus-guestha.yml")])
def test_promtool_accepts_the_samples(what, path):
    import os
    import shutil
    import subprocess
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    result = subprocess.run(["promtool", "check", what, path], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stdout


def _metrics_conf(port):
    from oslo_config import cfg

    from guestha.conf import metrics as metrics_conf
    conf = cfg.ConfigOpts()
    metrics_conf.register_opts(conf)
    conf([], project="guestha-test", default_config_files=[],
         default_config_dirs=[])
    conf.set_override("enabled", True, group="metrics")
    conf.set_override("port", port, group="metrics")
    return conf


def test_a_taken_port_leaves_the_service_running_without_metrics(caplog):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        conf = _metrics_conf(taken.getsockname()[1])
        exporter = metrics.exporter_from_conf(
            conf, metrics.ServerCollector("c", FakeDispatcher(),
                                          metrics.Tally()), 9748)
    assert exporter is None
    assert "cannot serve Prometheus metrics" in caplog.text


def test_disabled_by_default():
    conf = _metrics_conf(None)
    conf.clear_override("enabled", group="metrics")
    assert metrics.exporter_from_conf(conf, None, 9748) is None
