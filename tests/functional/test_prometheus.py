# SPDX-License-Identifier: Apache-2.0
"""A real Prometheus and Alertmanager over a real agent and controller
(issue 12).

What runs: RabbitMQ (the ``rabbit_vhost`` fixture), a real
``guestha-server`` (guestha/testing/server_harness.py, without Nova:
guestha/testing/novaless_servers.py) and a real ``guestha-agent`` with
``[metrics]`` enabled on loopback ports; the agent watches libvirt's in-process
test driver (``test:///<node file>``: no libvirtd) whose one running domain's
guestha channel is served by a real guest daemon.  Debian's ``prometheus``
(scraping both every second, evaluating ``etc/prometheus/guestha-rules.yml``
every second) and ``prometheus-alertmanager`` run on loopback ports with
temporary configurations and data directories, all through
``guestha/testing/processes.py`` so they end with the test.

The guest is hung (SIGSTOP): GuesthaInstanceFaultOpen must reach
Alertmanager within the detection bound + scrape interval + evaluation
interval + a margin (Prometheus' notification queue, the HTTP round
trips), and resolve once the guest answers again.
"""

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidlib

import pytest

from guestha.testing import agent_harness
from guestha.testing import child_processes
from guestha.testing import libvirt_domains
from guestha.testing import novaless_servers
from guestha.testing.ports import free_port
from guestha.testing.wait import wait_until

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which(
    "alertmanager")
RULES = os.path.join(child_processes.ROOT, "etc", "prometheus",
                     "guestha-rules.yml")
#: The guest's heartbeat interval (ms): with miss_threshold 1 a hang is
#: a fault within two intervals.
INTERVAL_MS = 200
SCRAPE = 1.0
EVALUATION = 1.0
#: Prometheus' notification queue and the HTTP round trips to
#: Alertmanager; generous, as the machine may be loaded by other tests.
MARGIN = 4.0

pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and ALERTMANAGER),
    reason="prometheus and prometheus-alertmanager not installed "
           "(Debian packages, tools/setup.sh installs them)")


def get_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


PROMETHEUS_YML = """\
global:
  scrape_interval: {scrape}s
  scrape_timeout: {scrape}s
  evaluation_interval: {evaluation}s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: guestha-agent
    static_configs:
      - targets: ["127.0.0.1:{agent_port}"]
  - job_name: guestha-server
    static_configs:
      - targets: ["127.0.0.1:{server_port}"]
"""

ALERTMANAGER_YML = """\
route:
  receiver: "null"
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


@pytest.fixture
def rig(rabbit_vhost, tmp_path):
    workdir = str(tmp_path)
    sockdir = child_processes.short_tempdir()
    processes = child_processes.Processes()
    server = None
    try:
        ports = {"agent_port": free_port(), "server_port": free_port(),
                 "am_port": free_port(), "prom_port": free_port()}
        server = novaless_servers.ServerProcess(
            workdir, rabbit_vhost, "ghprom-ctl",
            metrics={"enabled": "true", "host": "127.0.0.1",
                     "port": ports["server_port"]})
        server.start()

        guest = agent_harness.GuestProcess(processes, workdir, sockdir, "g1",
                                           interval_ms=INTERVAL_MS).start()
        uuid = str(uuidlib.uuid4())
        node = os.path.join(workdir, "node.xml")
        # the in-process test driver: the domains of the node file, no
        # libvirtd (its state is private to the agent's connection)
        uri = libvirt_domains.write_node(
            node, [("ghprom-g1", uuid, guest.channel)]).replace(
                "test+unix://", "test://")
        agent = agent_harness.AgentProcess(processes, workdir, sockdir,
                                           rabbit_vhost, host="ghprom-host")
        with open(agent.config, "w") as f:
            f.write(agent_harness.agent_conf(
                rabbit_vhost, agent.host, agent.state_dir,
                os.path.join(sockdir, "channels"), agent.status_socket,
                uri=uri, log_file=agent.log,
                metrics={"enabled": "true", "host": "127.0.0.1",
                         "port": ports["agent_port"]}))
        agent.start()

        am_dir = os.path.join(workdir, "alertmanager")
        os.makedirs(am_dir)
        with open(os.path.join(am_dir, "am.yml"), "w") as f:
            f.write(ALERTMANAGER_YML)
        processes.spawn(
            [ALERTMANAGER, "--config.file=%s" % os.path.join(am_dir, "am.yml"),
             "--storage.path=%s" % am_dir,
             "--web.listen-address=127.0.0.1:%d" % ports["am_port"],
             "--cluster.listen-address="],
            os.path.join(workdir, "alertmanager.log"))
        prom_dir = os.path.join(workdir, "prometheus")
        os.makedirs(prom_dir)
        with open(os.path.join(prom_dir, "prometheus.yml"), "w") as f:
            f.write(PROMETHEUS_YML.format(scrape=int(SCRAPE),
                                          evaluation=int(EVALUATION),
                                          rules=RULES, **ports))
        processes.spawn(
            [PROMETHEUS, "--config.file=%s"
             % os.path.join(prom_dir, "prometheus.yml"),
             "--storage.tsdb.path=%s" % os.path.join(prom_dir, "data"),
             "--web.listen-address=127.0.0.1:%d" % ports["prom_port"]],
            os.path.join(workdir, "prometheus.log"))
        am = "http://127.0.0.1:%d" % ports["am_port"]
        prom = "http://127.0.0.1:%d" % ports["prom_port"]
        wait_until(lambda: ready(am + "/-/ready"), 30,
                   "alertmanager to be ready", interval=0.1)
        wait_until(lambda: ready(prom + "/-/ready"), 30,
                   "prometheus to be ready", interval=0.1)
        yield {"agent": agent, "server": server, "guest": guest,
               "uuid": uuid, "am": am, "prom": prom, "workdir": workdir}
    finally:
        if server is not None:
            server.kill()
        processes.kill_all()
        shutil.rmtree(sockdir, ignore_errors=True)


def query(prom, expr):
    """Prometheus' instant vector for ``expr``: ``[(labels, value)]``."""
    data = get_json("%s/api/v1/query?%s" % (
        prom, urllib.parse.urlencode({"query": expr})))
    return [(r["metric"], float(r["value"][1]))
            for r in data["data"]["result"]]


def fault_alerts(am, uuid):
    """Alertmanager's active GuesthaInstanceFaultOpen alerts of ``uuid``."""
    return [a for a in get_json(am + "/api/v2/alerts?active=true"
                                "&silenced=false&inhibited=false")
            if a["labels"].get("alertname") == "GuesthaInstanceFaultOpen"
            and a["labels"].get("instance_id") == uuid
            and a["status"]["state"] == "active"]


def test_a_hung_guest_fires_the_alert_and_recovery_resolves_it(
        rig, record_property):
    agent, guest, uuid = rig["agent"], rig["guest"], rig["uuid"]
    am, prom = rig["am"], rig["prom"]
    agent.wait_state(uuid, "MONITORED", min_answers=2)
    # both targets scraped, and the instance seen by Prometheus
    wait_until(
        lambda: sorted(m["job"] for m, v in query(prom, "up == 1")) == [
            "guestha-agent", "guestha-server"], 30,
        "prometheus to scrape the agent and the server", interval=0.2)
    wait_until(
        lambda: query(prom, 'guestha_agent_instance_state{instance_id="%s",'
                      'state="MONITORED"}' % uuid), 15,
        "prometheus to see the instance MONITORED", interval=0.2)
    assert fault_alerts(am, uuid) == []

    hung_at = time.monotonic()
    guest.hang()
    try:
        alert = wait_until(
            lambda: fault_alerts(am, uuid), 30,
            "GuesthaInstanceFaultOpen at Alertmanager", interval=0.05)[0]
        fired = time.monotonic() - hung_at
    finally:
        guest.unhang()
    unhung_at = time.monotonic()
    record_property("hang_to_alertmanager_s", round(fired, 3))
    bound = 2 * INTERVAL_MS / 1000.0 + SCRAPE + EVALUATION + MARGIN
    assert fired <= bound, (fired, bound)
    assert alert["labels"]["kind"] == "missed"
    assert alert["labels"]["host"] == agent.host
    assert alert["labels"]["severity"] == "critical"

    # the controller got the fault, and says so in its own metrics
    wait_until(
        lambda: query(prom, 'guestha_server_events_total{type="fault",'
                      'kind="missed"} >= 1'), 15,
        "prometheus to see the fault at the controller", interval=0.2)

    wait_until(lambda: not fault_alerts(am, uuid), 30,
               "the alert to resolve", interval=0.05)
    record_property("unhang_to_resolved_s",
                    round(time.monotonic() - unhung_at, 3))
    assert agent.instance(uuid)["fault"] is None
