# SPDX-License-Identifier: Apache-2.0
"""Options of the compute agent: the ``[agent]`` group."""

import socket

from oslo_config import cfg


def _group():
    return cfg.OptGroup(
        "agent", title="Compute agent",
        help="The guestha compute agent (guestha-agent): which instances "
             "it monitors, the bounds it imposes on guests, and when a "
             "missed or unhealthy heartbeat becomes a fault.")


# a fresh group per registration keeps two ConfigOpts (tests) apart: see
# guestha/conf/libvirt.py
GROUP = _group()

OPTS = [
    cfg.StrOpt("host", default=socket.gethostname(),
               sample_default="<hostname>",
               help="Name of this compute host, as Nova knows it "
                    "(OS-EXT-SRV-ATTR:host). Faults carry it, and the "
                    "controller addresses this agent by it."),
    cfg.StrOpt("state_dir", default="/var/lib/guestha",
               help="Directory for the agent's durable state: the outbox "
                    "of undelivered faults and the list of open faults, "
                    "so that nothing is lost and recoveries are still "
                    "reported across agent restarts."),
    cfg.StrOpt("socket_dir", default="/var/lib/guestha/channels",
               help="Directory where hot-plugged channels put their "
                    "host-side UNIX sockets (<instance uuid>.sock). QEMU "
                    "creates the sockets, so its user must be able to "
                    "write here."),
    cfg.StrOpt("status_socket", default="/run/guestha/agent.sock",
               help="UNIX socket on which the agent answers "
                    "'guestha-agent --status'. Empty disables it."),
    cfg.BoolOpt("hotplug", default=True,
                help="Hot-plug the guestha channel into running domains "
                     "whose flavor has guestha:heartbeat=true or "
                     "guestha:server_group_messaging=true and that lack "
                     "it. Off: only domains defined with the channel are "
                     "monitored."),
    cfg.IntOpt("min_interval_ms", default=100, min=100, max=3600000,
               help="Smallest heartbeat interval granted to a guest; a "
                    "guest asking for less gets this."),
    cfg.IntOpt("max_interval_ms", default=60000, min=100, max=3600000,
               help="Largest heartbeat interval granted to a guest."),
    cfg.IntOpt("miss_threshold", default=1, min=1, max=100,
               help="Consecutive missed challenges that make a fault. With "
                    "1, a hung guest is reported within two intervals."),
    cfg.IntOpt("unhealthy_threshold", default=1, min=1, max=100,
               help="Consecutive unhealthy answers that make a fault."),
    cfg.FloatOpt("confirm_timeout", default=2.0, min=0.1, max=60,
                 help="Seconds to wait for libvirt to confirm that a domain "
                      "is running before a fault is reported. A paused or "
                      "migrating domain looks like a hung guest on the "
                      "channel: the domain state decides."),
    cfg.FloatOpt("channel_lost_grace", default=3.0, min=0, max=300,
                 help="Seconds a monitored channel may stay closed before "
                      "it is a channel-lost fault, leaving time for the "
                      "lifecycle event that explains it (stop, migration, "
                      "unplug)."),
    cfg.FloatOpt("sync_retry_min", default=1.0, min=0.1, max=60,
                 help="Seconds before an unanswered sync is repeated while "
                      "no guest has registered (a booting guest); doubles "
                      "up to sync_retry_max."),
    cfg.FloatOpt("sync_retry_max", default=30.0, min=1, max=600,
                 help="Longest wait between syncs to a silent guest."),
    cfg.IntOpt("max_bytes_per_second", default=32768, min=1024,
               help="Bytes a guest may send per second (averaged; bursts "
                    "of twice this are allowed). Beyond it, input is "
                    "dropped and counted as misbehaviour."),
    cfg.IntOpt("max_messages_per_second", default=50, min=5,
               help="Lines a guest may send per second (bursts of twice "
                    "this are allowed)."),
    cfg.FloatOpt("broadcasts_per_second", default=10.0, min=0.1,
                 help="Server-group broadcasts one guest may send per "
                      "second (bursts of twice this); beyond it the agent "
                      "refuses them with rate_limited before they reach "
                      "the controller, which has its own limit ([server] "
                      "broadcasts_per_second)."),
    cfg.IntOpt("misbehaviour_limit", default=20, min=1,
               help="Protocol errors and rate-limit violations within one "
                    "minute after which the agent resets the channel "
                    "(closes and reopens it, with back-off)."),
    cfg.FloatOpt("reset_backoff_max", default=60.0, min=1,
                 help="Longest back-off before reopening a channel reset "
                      "for misbehaviour (starts at 1 s, doubles at each "
                      "reset, halves after every minute of good "
                      "behaviour)."),
    cfg.FloatOpt("status_queries_per_second", default=5.0, min=0.1,
                 help="Server-group status queries one guest may send per "
                      "second (bursts of twice this); beyond it the agent "
                      "answers rate_limited without asking the "
                      "controller. Keep it at most the controller's "
                      "[server] status_queries_per_second."),
    cfg.IntOpt("guest_log_lines_per_minute", default=10, min=1,
               help="Log lines one guest's messages may cause per minute "
                    "(the errors it reports, its registrations and exits; "
                    "bursts of as many). Beyond it they are counted, not "
                    "logged; guest text in the log is always escaped and "
                    "cut to 200 characters."),
    cfg.IntOpt("fault_limit", default=3, min=1,
               help="Faults one instance may open within fault_window "
                    "seconds, whatever its guest does. When an instance "
                    "reaches it, the recovery its guest earns (a healthy "
                    "answer, an exit) is held back until its oldest fault "
                    "leaves the window, so a guest flapping between "
                    "faulty and healthy cannot make more faults (nor "
                    "their corrective actions). A stopped instance "
                    "recovers at once."),
    cfg.FloatOpt("fault_window", default=600.0, min=1,
                 help="Length of the window of fault_limit, in seconds."),
    cfg.IntOpt("output_buffer_bytes", default=256 * 1024, min=65536,
               help="Bytes queued per channel for a guest that does not "
                    "read fast enough (a line is never torn: what the "
                    "socket does not take is written when it can). Beyond "
                    "it, and for challenges whenever something is queued, "
                    "whole lines are dropped and counted. Must hold the "
                    "largest server-group status answer (about 190 KB)."),
    cfg.IntOpt("batch_delay_ms", default=40, min=0, max=100,
               help="After a wake-up that found work (an answer to read, a "
                    "challenge due), the agent's I/O loop sleeps until "
                    "this many milliseconds after it, then handles "
                    "everything that came meanwhile in one go, so that "
                    "it wakes up at most about 1000 / batch_delay_ms "
                    "times a second however many instances it monitors. "
                    "While a guest with a short interval is monitored, "
                    "the loop uses at most 4% of the shortest interval "
                    "instead (40 ms at 1 s, 4 ms at 100 ms). Challenges "
                    "go out, and answers are read, up to about this "
                    "late: round trips look that much longer and a "
                    "missed answer is noticed up to that much later; "
                    "the period of the challenges does not change (each "
                    "is due one interval after the previous one was due). "
                    "Deadlines are not delayed: the loop wakes up for an "
                    "answer's deadline, and an answer that arrived before "
                    "it is read before the deadline is checked. 0 wakes "
                    "up for each thing as it comes."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
