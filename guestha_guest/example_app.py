# SPDX-License-Identifier: Apache-2.0
"""An example application on the guest daemon's application API.

::

    python3 -m guestha_guest.example_app --socket /run/guestha/app.sock \\
        --name demo [--broadcast TEXT] [--stall-after SECONDS]

It registers as ``--name``, answers the daemon's health checks with the
liveness of its worker thread (healthy while the worker's heartbeat is
recent), subscribes to broadcasts, notifications and status, and prints
every event it receives, one JSON object a line.  ``--broadcast TEXT``
sends TEXT to the other members of the server group once registered.
``--stall-after`` makes the worker stop after that many seconds, to watch
the guest turn unhealthy.  It unregisters on Ctrl-C or SIGTERM, so that
stopping it on purpose is not a fault.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time

from guestha_guest.client import DEFAULT_SOCKET
from guestha_guest.client import GuestHAClient
from guestha_guest.client import GuestHAConnectionClosed
from guestha_guest.client import GuestHAError

#: How often the worker proves it is alive, and how old its proof may be.
BEAT = 0.5
STALE_AFTER = 2.0


class Worker(threading.Thread):
    """Stands in for the application's real work: it records a heartbeat
    each time round its loop, which is what the health check looks at."""

    def __init__(self, stall_after=None):
        super().__init__(name="worker", daemon=True)
        self.heartbeat = time.monotonic()
        self._stall_at = (None if stall_after is None
                          else time.monotonic() + stall_after)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(BEAT):
            if self._stall_at is not None and time.monotonic() >= \
                    self._stall_at:
                return  # a stuck worker: its heartbeat stops
            self.heartbeat = time.monotonic()

    def stop(self):
        self._halt.set()

    def health(self, check):
        age = time.monotonic() - self.heartbeat
        if age > STALE_AFTER:
            return False, "worker stalled for %.1f s" % age
        return True, None


def _show(event):
    if event.get("op") == "broadcast":
        try:
            text = base64.b64decode(event.get("payload", "")).decode(
                "utf-8", "replace")
            event = dict(event, text=text)
        except ValueError:
            pass
    print(json.dumps(event, sort_keys=True), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m guestha_guest.example_app",
        description="An example application of the guestha application API.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET,
                        help="the daemon's socket (default %(default)s)")
    parser.add_argument("--name", default="demo",
                        help="the name to register (default %(default)s)")
    parser.add_argument("--deadline-ms", type=int, default=5000,
                        help="report at least this often (default "
                        "%(default)s)")
    parser.add_argument("--not-critical", action="store_true",
                        help="register as not critical: its health does not "
                        "count for the guest's")
    parser.add_argument("--broadcast", metavar="TEXT",
                        help="send TEXT to the server group once")
    parser.add_argument("--stall-after", type=float, metavar="SECONDS",
                        help="stop the worker after SECONDS")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="exit after SECONDS (default: run until "
                        "stopped)")
    args = parser.parse_args(argv)

    worker = Worker(args.stall_after)
    worker.start()
    stopping = []
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM end the loop, so that we unregister: a
        # planned stop must not count against the guest's health
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.append(True))
    end = None if args.duration is None else time.monotonic() + args.duration
    try:
        with GuestHAClient(args.socket,
                           health_callback=worker.health) as ha:
            ha.register(args.name, args.deadline_ms,
                        critical=not args.not_critical)
            print("registered as %s" % args.name, flush=True)
            ha.subscribe("broadcast", "notification", "status")
            if args.broadcast is not None:
                try:
                    ha.broadcast(args.broadcast.encode("utf-8"))
                    print("broadcast sent", flush=True)
                except GuestHAError as exc:
                    # e.g. no host yet: best effort, like broadcasts are
                    print("broadcast refused: %s" % exc, flush=True)
            while not stopping:
                wait = 0.5 if end is None else min(0.5,
                                                   end - time.monotonic())
                if wait <= 0:
                    break
                event = ha.next_event(timeout=wait)
                if event is not None:
                    _show(event)
            ha.unregister()
            print("unregistered", flush=True)
    except GuestHAConnectionClosed:
        print("the daemon closed the connection", file=sys.stderr)
        return 1
    except (GuestHAError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
