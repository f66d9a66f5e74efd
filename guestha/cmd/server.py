# SPDX-License-Identifier: Apache-2.0
"""``guestha-server``: the controller."""

import sys

from oslo_config import cfg
from oslo_log import log as logging

from guestha.conf import opts

LOG = logging.getLogger(__name__)


def prepare(argv, conf=cfg.CONF):
    opts.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project="guestha", prog="guestha-server")
    return conf


def main(argv=None):
    conf = prepare(sys.argv[1:] if argv is None else argv)
    logging.setup(conf, "guestha")
    from guestha.server.ledger import LedgerError
    from guestha.server.service import ServerService
    from guestha.sinks.base import SinkConfigError
    try:
        service = ServerService.from_conf(conf)
        service.run()
    except (LedgerError, SinkConfigError) as exc:
        LOG.error("guestha-server cannot run: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
