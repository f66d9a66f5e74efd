# SPDX-License-Identifier: Apache-2.0
"""``guestha-guest``: the guest daemon's command line."""

import argparse
import logging
import signal
import sys

import guestha_guest
from guestha_guest import config as config_mod
from guestha_guest import protocol as p

LOG = logging.getLogger("guestha_guest")


def build_daemon(cfg):
    """A :class:`~guestha_guest.daemon.GuestDaemon` from a loaded config."""
    from guestha_guest.appapi import AppServer
    from guestha_guest.daemon import GuestDaemon
    from guestha_guest.health import HookRunner

    g, h, a = cfg.guestha, cfg.health, cfg.app_api
    init = p.Init(name=g.name, interval_ms=g.interval_ms,
                  corrective_action=g.corrective_action,
                  shutdown_timeout_ms=g.shutdown_timeout_ms,
                  restart_timeout_ms=g.restart_timeout_ms)
    hooks = HookRunner(h.hook_dir, h.hook_timeout_ms / 1000.0,
                       period_s=(h.period_ms or g.interval_ms) / 1000.0,
                       max_age_s=(h.max_age_ms / 1000.0) or None)
    daemon = GuestDaemon(g.port, init, hooks=hooks,
                         hook_period_ms=h.period_ms)
    if a.enabled:
        daemon.apps = AppServer(a.socket, a.mode, a.max_apps, daemon.relay)
    return daemon


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="guestha-guest",
        description="guestha guest daemon: answers the compute host's "
                    "heartbeat over virtio-serial and serves the local "
                    "application API.")
    parser.add_argument("--config", default=config_mod.DEFAULT_PATH,
                        help="ini file (default %(default)s; a missing "
                             "file means all defaults)")
    parser.add_argument("--port", help="override [guestha] port: a device "
                        "path, or unix-listen:PATH to serve a host on a "
                        "UNIX socket as QEMU would")
    parser.add_argument("--log-level", help="override [guestha] log_level",
                        choices=config_mod.LOG_LEVELS, type=str.upper)
    parser.add_argument("--check-config", action="store_true",
                        help="load the configuration, print it and exit")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + guestha_guest.__version__)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_mod.load_config(args.config)
    except config_mod.ConfigError as exc:
        print("guestha-guest: %s" % exc, file=sys.stderr)
        return 2
    if args.port:
        cfg.guestha.port = args.port
    if args.log_level:
        cfg.guestha.log_level = args.log_level
    logging.basicConfig(
        level=cfg.guestha.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in cfg.warnings:
        LOG.warning("%s", warning)
    if args.check_config:
        print(cfg)
        return 0
    daemon = build_daemon(cfg)

    def _stop(signum, frame):
        LOG.info("signal %d: sending exit and stopping", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        daemon.start()
    except OSError as exc:
        LOG.error("cannot start: %s", exc)
        return 1
    daemon.install_signal_wakeup()
    LOG.info("guestha-guest %s started: port %s, interval %d ms, "
             "app API %s", guestha_guest.__version__, cfg.guestha.port,
             cfg.guestha.interval_ms,
             cfg.app_api.socket if cfg.app_api.enabled else "disabled")
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
