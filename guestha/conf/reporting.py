# SPDX-License-Identifier: Apache-2.0
"""Options of the agent's fault reporting: the ``[reporting]`` group."""

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "reporting", title="Fault reporting",
    help="How the compute agent delivers faults to the controller: the "
         "on-disk outbox (in [agent] state_dir) that keeps them through "
         "broker and controller outages and agent restarts, batching, "
         "and retries.")

OPTS = [
    cfg.IntOpt("outbox_max_events", default=100000, min=100,
               help="Undelivered events the outbox keeps. When it is full "
                    "the oldest are dropped, each logged at ERROR: a "
                    "bounded outbox cannot fill the disk."),
    cfg.IntOpt("report_batch", default=100, min=1, max=10000,
               help="Events sent to the controller in one report_events "
                    "call."),
    cfg.FloatOpt("report_timeout", default=10.0, min=0.5, max=600,
                 help="Seconds to wait for the controller to answer a "
                      "report_events call before sending the batch "
                      "again (the controller deduplicates by event id)."),
    cfg.FloatOpt("retry_backoff_min", default=0.5, min=0.01, max=600,
                 help="Seconds before the first retry after a failed "
                      "report; doubles with each failure (with +-20% "
                      "jitter) up to retry_backoff_max."),
    cfg.FloatOpt("retry_backoff_max", default=30.0, min=0.1, max=3600,
                 help="Longest wait between retries of a failed report."),
    cfg.FloatOpt("alive_interval", default=30.0, min=1, max=3600,
                 help="Seconds between agent_alive casts, which tell the "
                      "controllers that this agent runs and which of its "
                      "instances use heartbeat and server-group "
                      "messaging."),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
