# SPDX-License-Identifier: Apache-2.0
"""Guest launcher and test control server of guestha's test VM.

Runs INSIDE the test guest (guestha/testing/guest_vms.py,
tools/build-vm-assets.sh), in the chroot onto the host's root file system, with
the host's python3. Python standard library only, Python 3.8 and newer.

It does two things:

* **Launches the guest daemon** (``python3 -m guestha_guest --config
  /run/vm/guestha-guest.ini``, the repository on ``PYTHONPATH``), logging
  to ``/run/vm/guest.log``, and starts it again one second after it exits
  unless it was stopped on purpose.  On SIGTERM (a clean reboot: busybox
  init's shutdown) it stops the daemon with SIGTERM, so that the daemon
  says ``exit`` to the host first.
* **Runs the host's qemu-ga** when the domain has the qemu guest agent
  channel ``org.qemu.guest_agent.0`` (see :class:`QemuGA`).
* **Serves the test control channel**, the virtio-serial port
  ``org.guestha.test.control.0``: one JSON object per line in, one per line
  out.  A request is ``{"id": ID, "cmd": NAME, ...}``; the answer is
  ``{"id": ID, "ok": true, ...}`` or ``{"id": ID, "ok": false, "error":
  TEXT}``.  A request may carry ``"expires"`` (host wall-clock time, epoch
  seconds): one that arrives later than that (plus a few seconds of clock
  skew) is dropped unanswered, so a line QEMU buffered while nobody read
  the port is never executed late.

Commands:

``ping``
    ``{"boot_id", "uptime"}``.
``sh`` ``args`` [``timeout``]
    Runs ``/bin/sh -c args``: ``{"rc", "out"}`` (stdout and stderr).
``daemon_pid``
    ``{"pid"}``: the guest daemon's, or null.
``signal`` ``sig`` (``"STOP"``, ``"CONT"``, ``"KILL"``, ``"TERM"``...)
    Sends it to the guest daemon.  After KILL or TERM the daemon is
    started again (as a service manager would).  The answer carries the
    guest's wall-clock times (``time.time()``) at which the request was
    read, ``t_rx``, and right after the signal was sent, ``t_sig``: with
    the host's send and receive times they place the signal on the host's
    clock (NTP's four timestamps), whatever the guest clock's offset.
``qga_pid`` / ``qga_signal`` ``sig``
    The same for the qemu guest agent (when the domain has its channel):
    ``{"pid"}`` (null if it does not run); ``{"pid", "t_rx", "t_sig"}``.
``daemon_stop`` / ``daemon_start``
    Stop the daemon with SIGTERM (it says exit) and keep it stopped; start
    it again.
``unhealthy`` [``reason``] / ``healthy``
    Make the test health hook (``/run/vm/hooks``, written by
    guestha/testing/guest_vms.py) fail with that reason, or pass: it tests
    ``/run/ghtest/unhealthy``.
``reboot`` [``force``]
    Reboot the guest.  Clean (default): busybox init's reboot, which stops
    the daemon with SIGTERM first.  ``force``: at once, through
    ``/proc/sysrq-trigger`` (the daemon just vanishes).  Answered before
    it happens.
``app`` ``op`` [``socket``] [``wait``]
    Play an application of the guest on the guest daemon's application
    API (``socket``, default ``/run/guestha/app.sock``), through
    ``guestha_guest.client`` of the repository (imported only here; the
    rest of this program needs nothing but the standard library).  ``op``:

    ``subscribe`` [``events``]
        Start the test's listener: a connection of its own, subscribed to
        ``events`` (default broadcast and notification), read by a thread
        that keeps every event in arrival order (a new subscribe replaces
        the listener and what it kept).  ``{}``.
    ``events`` [``clear``]
        ``{"events": [...], "listening": bool, "error": str or null}``:
        what the listener received so far (then forgotten, with
        ``clear``).
    ``unsubscribe``
        Stop the listener: ``{"events": [...]}``, what it had kept.
    ``broadcast`` ``payload`` (text, sent as UTF-8)
        One connection, one broadcast: ``{"reply": the daemon's reply}``.
    ``status``
        One connection, one status query, waiting up to ``wait`` seconds
        (default 10): ``{"members": [...]}``.

    A refusal of the daemon (or of the host) fails the command with the
    client's ``GuestHAError`` (``code: message``).  ``broadcast`` and
    ``status`` block this program for as long as they wait: give the
    host's ``control()`` a longer timeout than ``wait``.
"""

import argparse
import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

CONTROL_PORT = "org.guestha.test.control.0"
STATE_DIR = "/run/ghtest"
UNHEALTHY_FLAG = os.path.join(STATE_DIR, "unhealthy")
APP_SOCKET = "/run/guestha/app.sock"
#: Events the app listener keeps at most (the oldest go first).
MAX_APP_EVENTS = 1000
#: Clock skew tolerated on "expires".
SKEW_S = 5.0
MAX_LINE = 65536


def log(msg, *args):
    sys.stderr.write("%s vm_guest_control: %s\n" % (
        time.strftime("%H:%M:%S"), msg % args if args else msg))
    sys.stderr.flush()


def find_port(name):
    """``/dev/vportNpM`` of the virtio-serial port ``name``, or None."""
    base = "/sys/class/virtio-ports"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "name")) as f:
                if f.read().strip() == name:
                    return "/dev/" + entry
        except OSError:
            continue
    return None


class Daemon(object):
    """The guest daemon, as a supervised child process."""

    def __init__(self, python, repo, vm_dir):
        self.python = python
        self.repo = repo
        self.vm_dir = vm_dir
        self.proc = None
        self.wanted = True
        self.exited_at = None
        self.lock = threading.Lock()

    def argv(self):
        argv = [self.python, "-m", "guestha_guest"]
        config = os.path.join(self.vm_dir, "guestha-guest.ini")
        if os.path.exists(config):
            argv += ["--config", config]
        return argv

    def start(self):
        with self.lock:
            self.wanted = True
            if self.proc is not None and self.proc.poll() is None:
                return self.proc.pid
            env = dict(os.environ, PYTHONPATH=self.repo)
            logf = open(os.path.join(self.vm_dir, "guest.log"), "ab")
            try:
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                    stderr=logf, env=env, cwd="/")
            finally:
                logf.close()
            log("guest daemon started, pid %d", self.proc.pid)
            return self.proc.pid

    def pid(self):
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return self.proc.pid
            return None

    def signal(self, sig):
        pid = self.pid()
        if pid is None:
            raise RuntimeError("the guest daemon is not running")
        os.kill(pid, sig)
        return pid

    def stop(self, timeout=10.0):
        with self.lock:
            self.wanted = False
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
        except OSError:
            return None

    def supervise(self):
        """Start the daemon again a second after it ended, if wanted."""
        with self.lock:
            proc = self.proc
            wanted = self.wanted
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if self.exited_at is None:
            self.exited_at = now
            log("guest daemon exited with %s", proc.returncode)
        if wanted and now - self.exited_at >= 1.0:
            self.exited_at = None
            self.start()


class QemuGA(object):
    """The host's qemu-ga (from the 9p root), started once the port
    ``org.qemu.guest_agent.0`` exists (the domain has the channel) and
    restarted if it ends; it logs to ``/run/vm/qemu-ga.log``."""

    PORT = "org.qemu.guest_agent.0"
    BINARY = "/usr/sbin/qemu-ga"

    def __init__(self, vm_dir):
        self.vm_dir = vm_dir
        self.proc = None
        self.next_check = 0.0

    def supervise(self):
        now = time.monotonic()
        if now < self.next_check or (self.proc is not None
                                     and self.proc.poll() is None):
            return
        self.next_check = now + 1.0
        path = find_port(self.PORT)
        if path is None or not os.path.exists(self.BINARY):
            return
        logf = open(os.path.join(self.vm_dir, "qemu-ga.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [self.BINARY, "-m", "virtio-serial", "-p", path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/")
        finally:
            logf.close()
        log("qemu-ga started on %s, pid %d", path, self.proc.pid)

    def pid(self):
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return None

    def signal(self, sig):
        pid = self.pid()
        if pid is None:
            raise RuntimeError("qemu-ga is not running")
        os.kill(pid, sig)
        return pid

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class AppListener(object):
    """A test application on the guest daemon's application API: one
    connection, subscribed to ``events``, read by a thread that keeps what
    arrives (see the ``app`` command)."""

    def __init__(self, client_class, path, events):
        self.client = client_class(path, timeout=10.0)
        self.client.connect()
        self.client.subscribe(*events)
        self.events = []
        self.error = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read,
                                       name="app-listener", daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stopping.is_set():
            try:
                event = self.client.next_event(timeout=0.2)
            except Exception as exc:  # noqa: BLE001 - reported to the host
                self.error = "%s: %s" % (type(exc).__name__, exc)
                log("app listener ended: %s", self.error)
                return
            if event is not None:
                with self.lock:
                    self.events.append(event)
                    del self.events[:-MAX_APP_EVENTS]

    def listening(self):
        return self.thread.is_alive()

    def take(self, clear=False):
        with self.lock:
            events = list(self.events)
            if clear:
                self.events = []
        return events

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.client.close()


class Control(object):
    """The control channel and its commands."""

    def __init__(self, daemon, qga=None):
        self.daemon = daemon
        self.qga = qga
        #: guest wall-clock time the request being served was read
        self.t_rx = None
        self.app_listener = None
        self.fd = None
        self.buf = b""
        self.out = b""

    # -- the port ------------------------------------------------------------

    def open(self):
        path = find_port(CONTROL_PORT)
        if path is None:
            return False
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY
                              | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENXIO, errno.ENODEV,
                                 errno.EBUSY):
                log("cannot open %s: %s", path, exc)
            return False
        self.buf = b""
        self.out = b""
        log("control port %s open", path)
        return True

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def poll_once(self, timeout):
        """Wait up to ``timeout`` s for requests and serve them."""
        if self.fd is None and not self.open():
            time.sleep(timeout)
            return
        events = select.POLLIN
        if self.out:
            events |= select.POLLOUT
        poller = select.poll()
        poller.register(self.fd, events)
        ready = poller.poll(timeout * 1000)
        if not ready:
            return
        revents = ready[0][1]
        if revents & select.POLLOUT:
            self._flush()
        if revents & select.POLLIN:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                log("control port failed (%s): reopening", exc)
                self.close()
                return
            if not data:  # no host connected now: not an end of file
                time.sleep(0.2)
                return
            self._received(data)
        elif revents & (select.POLLHUP | select.POLLERR):
            time.sleep(0.2)  # no host: do not spin on the hang-up

    def _received(self, data):
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if line:
                self._serve(line)
        if len(self.buf) > MAX_LINE:
            self.buf = b""

    def _serve(self, line):
        self.t_rx = time.time()
        try:
            req = json.loads(line.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return  # a fragment of a stale line: ignore
        expires = req.get("expires")
        if isinstance(expires, (int, float)) and time.time() > (
                expires + SKEW_S):
            log("dropped an expired %r request", req.get("cmd"))
            return
        reply = {"id": req.get("id")}
        after = None
        try:
            handler = getattr(self, "cmd_" + str(req.get("cmd")), None)
            if handler is None:
                raise ValueError("unknown command %r" % req.get("cmd"))
            result = handler(req)
            if isinstance(result, tuple):
                result, after = result
            reply.update(result or {})
            reply["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported to the host
            reply.update(ok=False, error="%s: %s" % (
                type(exc).__name__, exc))
        self._send(reply)
        if after is not None:
            deadline = time.monotonic() + 2.0
            while self.out and time.monotonic() < deadline:
                self.poll_once(0.05)
            after()

    def _send(self, obj):
        self.out += json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self):
        while self.out and self.fd is not None:
            try:
                n = os.write(self.fd, self.out)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    log("write failed: %s", exc)
                    self.out = b""
                return
            self.out = self.out[n:]
        if len(self.out) > MAX_LINE:
            self.out = b""  # nobody reads: drop, never grow without bound

    # -- commands -------------------------------------------------------------

    def cmd_ping(self, req):
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return {"boot_id": boot_id, "uptime": uptime}

    def cmd_sh(self, req):
        result = subprocess.run(
            ["/bin/sh", "-c", str(req["args"])], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=float(req.get("timeout", 30)))
        return {"rc": result.returncode,
                "out": result.stdout.decode("utf-8", "replace")}

    def cmd_daemon_pid(self, req):
        return {"pid": self.daemon.pid()}

    def cmd_signal(self, req):
        pid = self.daemon.signal(_signum(req["sig"]))
        return {"pid": pid, "t_rx": self.t_rx, "t_sig": time.time()}

    def cmd_qga_pid(self, req):
        return {"pid": self.qga.pid() if self.qga is not None else None}

    def cmd_qga_signal(self, req):
        if self.qga is None:
            raise RuntimeError("qemu-ga is not supervised here")
        pid = self.qga.signal(_signum(req["sig"]))
        return {"pid": pid, "t_rx": self.t_rx, "t_sig": time.time()}

    def cmd_daemon_stop(self, req):
        return {"rc": self.daemon.stop()}

    def cmd_daemon_start(self, req):
        return {"pid": self.daemon.start()}

    def cmd_unhealthy(self, req):
        reason = str(req.get("reason") or "unhealthy on request")
        with open(UNHEALTHY_FLAG + ".new", "w") as f:
            f.write(reason + "\n")
        os.rename(UNHEALTHY_FLAG + ".new", UNHEALTHY_FLAG)
        return {}

    def cmd_healthy(self, req):
        try:
            os.unlink(UNHEALTHY_FLAG)
        except FileNotFoundError:
            pass
        return {}

    def cmd_app(self, req):
        # the repository's client, imported here only: this program runs
        # without it (and before the repository is known to be usable)
        from guestha_guest.client import GuestHAClient

        op = str(req.get("op"))
        path = str(req.get("socket") or APP_SOCKET)
        wait = float(req.get("wait", 10.0))
        if op == "subscribe":
            self._stop_app_listener()
            events = req.get("events") or ["broadcast", "notification"]
            self.app_listener = AppListener(GuestHAClient, path,
                                            [str(e) for e in events])
            return {}
        if op == "events":
            listener = self.app_listener
            if listener is None:
                raise RuntimeError("no app listener: subscribe first")
            return {"events": listener.take(bool(req.get("clear"))),
                    "listening": listener.listening(),
                    "error": listener.error}
        if op == "unsubscribe":
            return {"events": self._stop_app_listener()}
        with GuestHAClient(path, timeout=wait) as client:
            if op == "broadcast":
                payload = str(req["payload"]).encode("utf-8")
                return {"reply": client.broadcast(payload)}
            if op == "status":
                return {"members": client.status(timeout=wait)}
        raise ValueError("unknown app op %r" % op)

    def _stop_app_listener(self):
        listener, self.app_listener = self.app_listener, None
        if listener is None:
            return []
        listener.stop()
        return listener.take()

    def cmd_reboot(self, req):
        if req.get("force"):
            def after():
                with open("/proc/sysrq-trigger", "w") as f:
                    f.write("b")
        else:
            def after():
                os.kill(1, signal.SIGTERM)  # busybox init: reboot
        return {}, after


def _signum(name):
    name = str(name).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return getattr(signal, name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vm-dir", default="/run/vm")
    # the checkout's 9p share (guestha/testing/guest_vms.py GUEST_REPO), not a
    # host path
    parser.add_argument("--repo", default="/run/guestha-src")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-daemon", action="store_true",
                        help="serve the control channel only")
    args = parser.parse_args(argv)
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(os.path.join(STATE_DIR, "control.pid"), "w") as f:
        f.write("%d\n" % os.getpid())

    daemon = Daemon(args.python, args.repo, args.vm_dir)
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if not args.no_daemon:
        daemon.start()
    else:
        daemon.wanted = False
    qga = QemuGA(args.vm_dir)
    control = Control(daemon, qga)
    log("serving %s", CONTROL_PORT)
    while not stopping:
        try:
            control.poll_once(0.25)
        except InterruptedError:
            pass
        daemon.supervise()
        qga.supervise()
    log("stopping (signal %d): stopping the guest daemon", stopping[0])
    daemon.stop()
    qga.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
