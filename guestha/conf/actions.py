# SPDX-License-Identifier: Apache-2.0
"""Options of the controller's corrective actions: the ``[actions]`` group.
"""

from oslo_config import cfg

# The actions, from least to most intrusive, are the wire protocol's: the
# controller applies the less intrusive of what the guest recommends and
# what the operator allows.
from guestha_guest.protocol import ACTIONS


def _group():
    return cfg.OptGroup(
        "actions", title="Corrective actions",
        help="What the controller may do about a fault through Nova. The "
             "guest recommends an action (none, log, reboot, stop); the "
             "operator allows at most allowed_max, which a flavor narrows "
             "with the extra spec guestha:corrective_action; the "
             "controller applies the less intrusive of the two, and at "
             "most max_actions per instance per window.")


# a fresh group per registration keeps two ConfigOpts (tests) apart: see
# guestha/conf/libvirt.py
GROUP = _group()

OPTS = [
    cfg.StrOpt("allowed_max", default="log", choices=ACTIONS,
               help="The most intrusive action the controller may take: "
                    "none (nothing, not even an action record), log (an "
                    "action record to the sinks and the log, nothing "
                    "done to the instance), reboot (through Nova: hard "
                    "at once for a guest that stopped answering, else "
                    "soft, then hard if the guest does not recover and "
                    "Nova's own reboot is over), stop (os-stop through "
                    "Nova)."),
    cfg.FloatOpt("soft_reboot_timeout", default=120.0, min=1.0, max=3600,
                 help="Seconds after a soft reboot within which the guest "
                      "must recover (its agent reports a recovery); "
                      "otherwise the controller reboots it hard, once "
                      "Nova's own reboot (which falls back to hard after "
                      "nova.conf's [libvirt] wait_soft_reboot_seconds) is "
                      "over: while Nova's task state is a reboot one, it "
                      "waits this long again, and after a reboot of "
                      "Nova's that ended less than this long ago (the "
                      "guest is booting) it waits until this long after "
                      "that end; at most 3 waits in all."),
    cfg.IntOpt("max_actions", default=3, min=0,
               help="Recoveries one instance may get within window "
                    "seconds, counted over every controller that shares "
                    "the ledger and over every path to a recovery: the "
                    "controller's reboots and stops and the faults the "
                    "masakari sink sends (Masakari recovers the instance "
                    "for each). Further ones are refused (\"refused: "
                    "cap\") or not sent to Masakari, so a guest that keeps "
                    "failing, or makes itself look so, is never recovered "
                    "in a loop. 0 refuses every action."),
    cfg.IntOpt("window", default=3600, min=1,
               help="Length of the window of max_actions, in seconds."),
    cfg.StrOpt("nova_mark", default="none", choices=("none", "error"),
               help="Mark a faulted instance in Nova, for a VNF manager "
                    "that watches Nova rather than guestha: 'error' sets "
                    "its state to ERROR (os-resetState, an admin API; "
                    "Nova's instance.update notification and the "
                    "server's status tell the VNF manager). Only for a "
                    "fault the controller does not recover itself (the "
                    "decision is log), so that the VNF manager heals it; "
                    "guestha never sets it back. Counted against "
                    "max_actions like a recovery."),
]


def register_opts(conf):
    conf.register_group(_group())
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
