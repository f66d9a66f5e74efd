# SPDX-License-Identifier: Apache-2.0
"""``guestha-agent``: the compute agent."""

import sys

from oslo_config import cfg
from oslo_log import log as logging

from guestha.conf import opts

CLI_OPTS = [
    cfg.BoolOpt("status", default=False,
                help="Print the instances a running agent monitors (their "
                     "state, interval, last answer and faults) and exit."),
    cfg.BoolOpt("json", default=False,
                help="With --status: print the status as JSON."),
]


def prepare(argv, conf=cfg.CONF):
    opts.register_opts(conf)
    conf.register_cli_opts(CLI_OPTS)
    logging.register_options(conf)
    conf(argv, project="guestha", prog="guestha-agent")
    return conf


def main(argv=None):
    conf = prepare(sys.argv[1:] if argv is None else argv)
    if conf.status:
        from guestha.agent import status
        return status.main(conf.agent.status_socket, as_json=conf.json)
    logging.setup(conf, "guestha")
    from guestha.agent.service import AgentService
    AgentService.from_conf(conf).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
