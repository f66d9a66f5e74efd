# SPDX-License-Identifier: Apache-2.0
"""guestha configuration: one module per option group.

Each module under ``guestha/conf/`` defines the options of one group and
offers ``register_opts(conf)`` and ``list_opts()``; ``guestha.conf.opts``
lists them.  Importing this package registers them all on the global
``CONF`` (oslo.messaging registers its own options there too, so the
services use the global object).
"""

from oslo_config import cfg

from guestha.conf import opts

CONF = cfg.CONF

opts.register_opts(CONF)
