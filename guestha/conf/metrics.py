# SPDX-License-Identifier: Apache-2.0
"""Options of the Prometheus exporters of guestha-agent and guestha-server:
the ``[metrics]`` group (see :mod:`guestha.metrics`)."""

from oslo_config import cfg

#: The default ports: one per service, so that an agent and a controller
#: on one host both export with the defaults.
AGENT_PORT = 9747
SERVER_PORT = 9748


def _group():
    return cfg.OptGroup(
        "metrics", title="Prometheus metrics",
        help="An HTTP endpoint (/metrics) in guestha-agent and "
             "guestha-server for Prometheus to scrape. Off by default; "
             "when enabled it listens on the loopback address unless host "
             "says otherwise. The figures are read when Prometheus scrapes "
             "(the agent's I/O loop hands over a snapshot), so scraping "
             "costs the loop nothing between scrapes.")


def _opts():
    return [
        cfg.BoolOpt("enabled", default=False,
                    help="Serve Prometheus metrics over HTTP."),
        cfg.HostAddressOpt("host", default="127.0.0.1",
                           help="Address the metrics endpoint listens on. "
                                "The metrics carry instance and project "
                                "ids: listen on a management network "
                                "only."),
        cfg.PortOpt("port",
                    help="Port of the metrics endpoint; unset: %d for "
                         "guestha-agent, %d for guestha-server."
                         % (AGENT_PORT, SERVER_PORT)),
        cfg.BoolOpt("per_instance_labels", default=True,
                    help="Export per-instance series (labels instance_id "
                         "and project_id): the state, open fault and "
                         "heartbeat counters of each instance. About seven "
                         "series per instance; at thousands of instances "
                         "per host, or to keep the number of series of a "
                         "cloud bounded, set false: only per-host "
                         "aggregates (instances by state, faults by "
                         "kind, totals) are exported."),
    ]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(_opts(), group="metrics")


def list_opts():
    return [(_group(), _opts())]
