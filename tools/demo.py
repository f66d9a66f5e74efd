# SPDX-License-Identifier: Apache-2.0
"""guestha on one node, on real parts: the README's run command.

    bash tools/demo.sh                 # = tools/setup.sh, then "run"
    .venv/bin/python tools/demo.py run [--vms 2] [--interval-ms 1000]
    .venv/bin/python tools/demo.py inject freeze vm1   # from another shell
    .venv/bin/python tools/demo.py stop
    .venv/bin/python tools/demo.py run --cloud [--vms 1] [--script ...]

``run`` brings up, in this order, and shows what it is doing:

1. RabbitMQ at 127.0.0.1:5672 (``rabbitmq-server -detached`` if it is not
   running; stopped again at the end only if the demo started it);
2. libvirtd (tools/libvirt-setup.sh, which tools/setup.sh already ran);
3. ``guestha-server`` with the log sink (its default), writing fault
   records as JSON lines to ``<dir>/faults.jsonl``; no Nova is needed:
   corrective actions are limited to ``log``;
4. ``guestha-agent`` on ``qemu:///system`` (no hot-plug: the demo's
   domains have the channel in their XML);
5. one or two tiny VMs (guestha/testing/guest_vms.py: a Debian kernel, a
   busybox initramfs, the host's root shared read-only) running the real guest
   daemon of this checkout.

Then it refreshes, every second: the agent's view (``guestha-agent
--status``: each instance, its state, interval, last answer and fault
count), the alarms open at the controller (faults without a recovery)
and the latest records of the log sink.  Keys (in a terminal):

    f  freeze / thaw the guest daemon (SIGSTOP / SIGCONT inside the VM)
    h  make the guest's health hook fail / pass
    p  pause / resume the VM (virsh suspend / resume: no fault expected)
    1, 2  choose the VM the keys act on
    q  quit (as Ctrl-C)

The same actions are ``inject ACTION [VM]`` from another shell (ACTION is
freeze, thaw, unhealthy, healthy, pause or resume), sent to the running
demo over ``<dir>/demo.sock``.  ``--script 20:freeze,30:thaw`` runs
actions at given seconds after the VMs are up, and ``--duration S``
stops the demo after S seconds: with both, the demo runs unattended.

Ctrl-C, SIGTERM, ``q`` or ``stop`` tear everything down: the VMs are
destroyed and undefined, the agent and the server stopped (SIGTERM, then
SIGKILL after 10 s), RabbitMQ stopped if the demo started it; nothing is
left behind but ``<dir>`` with the logs (``--dir``, default
``/tmp/guestha-demo``).  An error tears down the same way.  Should the
demo itself be killed (SIGKILL), the agent and the server die with it and
its watchdog destroys the VMs (``guestha/testing/processes.py``); RabbitMQ, a
system service, is then left running.  The checkout may be anywhere (``/tmp``,
a path with spaces): the VMs get it over a 9p share of its own.
"""

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from guestha.agent import status as agent_status  # noqa: E402
from guestha.testing import guest_vms as vmlib  # noqa: E402
from guestha.testing import processes as proc  # noqa: E402

DEFAULT_DIR = os.environ.get("GUESTHA_DEMO_DIR", "/tmp/guestha-demo")
BROKER = ("127.0.0.1", 5672)
ACTIONS = ("freeze", "thaw", "unhealthy", "healthy", "pause", "resume")
#: what each key does: (action when "off", action when "on")
KEYS = {"f": ("freeze", "thaw"), "h": ("unhealthy", "healthy"),
        "p": ("pause", "resume")}

SERVER_CONF = """\
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:5672/
log_file = {dir}/guestha-server.log
use_stderr = false

[server]
server_id = demo-controller
ledger_path = {dir}/ledger.sqlite

[sinks]
enabled = log
log_path = {dir}/faults.jsonl

[actions]
# no Nova in the demo: the controller logs what it would do
allowed_max = log
"""

AGENT_CONF = """\
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:5672/
log_file = {dir}/guestha-agent.log
use_stderr = false

[agent]
host = {host}
state_dir = {dir}/agent-state
socket_dir = {dir}/channels
status_socket = {dir}/agent.sock
hotplug = false

[libvirt]
connection_uri = qemu:///system
"""


class DemoError(Exception):
    pass


def say(fmt, *args):
    print("demo: " + (fmt % args if args else fmt), flush=True)


# -- the parts ----------------------------------------------------------------

def broker_up(timeout=1.0):
    try:
        socket.create_connection(BROKER, timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_rabbitmq():
    """Start RabbitMQ if nothing listens on 5672; True if we started it."""
    if broker_up():
        say("RabbitMQ is running at %s:%d", *BROKER)
        return False
    if shutil.which("rabbitmq-server") is None:
        raise DemoError("RabbitMQ is not running and rabbitmq-server is not "
                        "installed (apt-get install rabbitmq-server)")
    say("starting RabbitMQ (rabbitmq-server -detached) ...")
    subprocess.run(["rabbitmq-server", "-detached"], check=True)
    deadline = time.monotonic() + 60
    while not broker_up():
        if time.monotonic() > deadline:
            raise DemoError("RabbitMQ did not listen on 5672 within 60 s")
        time.sleep(0.5)
    # the port opens a little before the app accepts logins
    subprocess.run(["rabbitmqctl", "await_startup"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    say("RabbitMQ started")
    return True


def ensure_libvirtd():
    import libvirt
    try:
        libvirt.open(vmlib.URI).close()
        say("libvirtd serves %s", vmlib.URI)
        return
    except libvirt.libvirtError:
        pass
    say("starting libvirtd (tools/libvirt-setup.sh) ...")
    subprocess.run(["bash", os.path.join(ROOT, "tools", "libvirt-setup.sh")],
                   check=True)


class Service(object):
    """guestha-server or guestha-agent in a child process."""

    def __init__(self, name, module, conf, log):
        self.name = name
        self.module = module
        self.conf = conf
        self.log = log
        self.proc = None

    def start(self, stderr_path):
        env = dict(os.environ, PYTHONPATH=ROOT)
        with open(stderr_path, "ab") as err:
            # a session of its own (a Ctrl-C is the demo's to handle), and
            # killed with the demo however it ends
            # (guestha/testing/processes.py)
            self.proc = proc.spawn(
                [sys.executable, "-W", "ignore", "-m", self.module,
                 "--config-file", self.conf],
                stdout=err, stderr=err, cwd=ROOT, env=env)
        say("%s started (pid %d, log %s)", self.name, self.proc.pid,
            self.log)

    def check(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError("%s exited (%s): see %s" % (
                self.name, self.proc.returncode, self.log))

    def stop(self, timeout=10.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        proc.signal_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say("%s did not stop in %.0f s: killed", self.name, timeout)
        proc.kill(self.proc)
        say("%s stopped", self.name)


def sink_records(path):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def open_alarms(records):
    """Faults with no recovery yet, by fault id."""
    alarms = {}
    for r in records:
        if r.get("type") == "fault":
            alarms[r.get("id")] = r
        elif r.get("type") == "recovery":
            alarms.pop(r.get("fault_id"), None)
    return alarms


def describe(record, names):
    who = names.get(record.get("instance"), record.get("instance", "?"))
    when = (record.get("logged_at") or "")[11:19]
    kind = record.get("type", "?").upper()
    if kind == "FAULT":
        return "%s %-8s %-5s %s: %s" % (when, kind, who, record.get("kind"),
                                        record.get("reason") or "")
    if kind == "RECOVERY":
        return "%s %-8s %-5s fault %s cleared" % (
            when, kind, who, (record.get("fault_id") or "")[:8])
    if kind == "STATE":  # the agent's report of the instance's state
        return "%s %-8s %-5s %s%s" % (
            when, kind, who, record.get("state"),
            ": %s" % record["reason"] if record.get("reason") else "")
    return "%s %-8s %-5s %s" % (when, kind, who, json.dumps(
        {k: v for k, v in record.items()
         if k not in ("logged_at", "type", "instance")})[:90])


# -- the demo -----------------------------------------------------------------

class Demo(object):
    def __init__(self, args):
        self.args = args
        self.dir = args.dir
        self.vms = []
        self.selected = 0
        self.frozen = {}
        self.sick = {}
        self.paused = {}
        self.started_rabbit = False
        self.server = None
        self.agent = None
        self.ctl = None
        self.up_at = None
        self.notes = []

    # -- life cycle -----------------------------------------------------------

    def setup(self):
        if os.path.exists(os.path.join(self.dir, "demo.pid")):
            other = _read_pid(os.path.join(self.dir, "demo.pid"))
            if other and _alive(other):
                raise DemoError("a demo already runs (pid %d): `tools/"
                                "demo.py stop` first" % other)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "agent-state"))
        os.makedirs(os.path.join(self.dir, "channels"))
        with open(os.path.join(self.dir, "demo.pid"), "w") as f:
            f.write("%d\n" % os.getpid())
        say("working directory %s", self.dir)
        # what an earlier run that was killed may have left
        removed = proc.reap_orphans() + vmlib.cleanup_leftovers()
        if removed:
            say("removed leftovers of earlier runs: %s", ", ".join(removed))

        self.started_rabbit = ensure_rabbitmq()
        ensure_libvirtd()
        say("VM kernel and initramfs (tools/build-vm-assets.sh, cached) ...")
        vmlib.build_assets(quiet=False)

        for name, text in (("server.conf", SERVER_CONF),
                           ("agent.conf", AGENT_CONF)):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text.format(dir=self.dir, host=socket.gethostname()))
        self.server = Service(
            "guestha-server", "guestha.cmd.server",
            os.path.join(self.dir, "server.conf"),
            os.path.join(self.dir, "guestha-server.log"))
        self.server.start(os.path.join(self.dir, "guestha-server.stderr"))
        self.agent = Service(
            "guestha-agent", "guestha.cmd.agent",
            os.path.join(self.dir, "agent.conf"),
            os.path.join(self.dir, "guestha-agent.log"))
        self.agent.start(os.path.join(self.dir, "guestha-agent.stderr"))

        for i in range(self.args.vms):
            vm = vmlib.GuestVM("vm%d" % (i + 1),
                               workdir=None,
                               interval_ms=self.args.interval_ms)
            self.vms.append(vm)
            vm.start()
            say("%s (%s) defined and started; booting under TCG takes "
                "about 10 s ...", vm.label, vm.uuid)
        for vm in self.vms:
            started = time.monotonic()
            vm.wait_booted(timeout=180)
            say("%s booted in %.0f s", vm.label, time.monotonic() - started)
        self._open_control_socket()
        self.up_at = time.monotonic()
        say("up: the agent is registering the guests")

    def teardown(self):
        say("tearing down ...")
        if self.ctl is not None:
            self.ctl.close()
        for vm in self.vms:
            try:
                vm.close()
                say("%s destroyed and undefined", vm.label)
            except Exception as exc:  # keep tearing down the rest
                say("%s: %s", vm.label, exc)
        for service in (self.agent, self.server):
            if service is not None:
                try:
                    service.stop()
                except Exception as exc:  # keep tearing down the rest
                    say("%s: %s", service.name, exc)
        if self.started_rabbit:
            subprocess.run(["rabbitmqctl", "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            say("RabbitMQ stopped (the demo had started it)")
        for name in ("demo.pid", "demo.sock"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except OSError:
                pass
        say("done; logs and fault records are in %s", self.dir)

    # -- actions --------------------------------------------------------------

    def vm(self, label):
        if label is None:
            return self.vms[self.selected]
        for vm in self.vms:
            if vm.label == label:
                return vm
        raise DemoError("no VM %r (there are %s)" % (
            label, ", ".join(v.label for v in self.vms)))

    def act(self, action, label=None):
        vm = self.vm(label)
        if action == "freeze":
            vm.control("signal", sig="STOP")
            self.frozen[vm.label] = True
        elif action == "thaw":
            vm.control("signal", sig="CONT")
            self.frozen[vm.label] = False
        elif action == "unhealthy":
            vm.control("unhealthy", reason="demo: health hook failing")
            self.sick[vm.label] = True
        elif action == "healthy":
            vm.control("healthy")
            self.sick[vm.label] = False
        elif action == "pause":
            vm.suspend()
            self.paused[vm.label] = True
        elif action == "resume":
            vm.resume()
            self.paused[vm.label] = False
        else:
            raise DemoError("unknown action %r (one of %s)"
                            % (action, ", ".join(ACTIONS)))
        self.note("%s: %s" % (vm.label, action))
        return vm.label

    def note(self, text):
        self.notes.append("%s %s" % (time.strftime("%H:%M:%S"), text))
        del self.notes[:-5]

    def key(self, ch):
        if ch in ("1", "2", "3", "4") and int(ch) <= len(self.vms):
            self.selected = int(ch) - 1
            return
        if ch in KEYS:
            label = self.vms[self.selected].label
            state = {"f": self.frozen, "h": self.sick,
                     "p": self.paused}[ch].get(label, False)
            self.act(KEYS[ch][1 if state else 0])

    # -- inject from another shell --------------------------------------------

    def _open_control_socket(self):
        path = os.path.join(self.dir, "demo.sock")
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(path)
        self.ctl.listen(4)
        self.ctl.setblocking(False)

    def _serve_control(self):
        try:
            conn, _ = self.ctl.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                request = json.loads(conn.makefile().readline())
                label = self.act(request["action"], request.get("vm"))
                reply = {"ok": True, "vm": label}
            except (DemoError, vmlib.VMError, KeyError, ValueError) as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    # -- the screen -----------------------------------------------------------

    def screen(self):
        names = {vm.uuid: vm.label for vm in self.vms}
        out = ["guestha demo: %d VM(s) at %d ms, up %.0f s   (dir %s)" % (
            len(self.vms), self.args.interval_ms,
            time.monotonic() - self.up_at, self.dir), ""]
        try:
            status = agent_status.fetch(os.path.join(self.dir, "agent.sock"),
                                        timeout=2.0)
            for inst in status["instances"]:
                inst["name"] = names.get(inst["instance"], inst.get("name"))
            out.append("the agent (guestha-agent --status):")
            out.extend("  " + line for line in
                       agent_status.render(status).splitlines())
        except (OSError, ValueError) as exc:
            out.append("the agent: not answering yet (%s)" % exc)
        records = sink_records(os.path.join(self.dir, "faults.jsonl"))
        alarms = open_alarms(records)
        out.append("")
        out.append("open alarms at the controller: %s" % (
            ", ".join("%s %s" % (names.get(a.get("instance"), "?"),
                                 a.get("kind"))
                      for a in alarms.values()) or "none"))
        out.append("latest records of the log sink (%s):"
                   % os.path.join(self.dir, "faults.jsonl"))
        out.extend("  " + describe(r, names) for r in records[-6:])
        if not records:
            out.append("  (none yet)")
        out.append("")
        if self.notes:
            out.append("injected: " + "; ".join(self.notes))
        vm = self.vms[self.selected].label
        out.append("keys (acting on %s): f freeze/thaw daemon, h fail/pass "
                   "health hook, p pause/resume VM, 1-%d choose VM, q quit"
                   % (vm, len(self.vms)))
        return "\n".join(out)

    def run(self):
        script = sorted(parse_script(self.args.script))
        tty = sys.stdin.isatty() and not self.args.no_tty
        old = None
        if tty:
            import termios
            import tty as ttymod
            old = termios.tcgetattr(sys.stdin)
            ttymod.setcbreak(sys.stdin.fileno())
        try:
            next_draw = 0.0
            while True:
                now = time.monotonic()
                elapsed = now - self.up_at
                if self.args.duration and elapsed >= self.args.duration:
                    say("--duration %g s reached", self.args.duration)
                    return
                while script and script[0][0] <= elapsed:
                    _, action, label = script.pop(0)
                    self.act(action, label)
                self.server.check()
                self.agent.check()
                if now >= next_draw:
                    text = self.screen()
                    if tty:
                        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
                    else:
                        sys.stdout.write("---\n" + text + "\n")
                    sys.stdout.flush()
                    next_draw = now + (1.0 if tty else
                                       self.args.refresh)
                waits = [self.ctl] + ([sys.stdin] if tty else [])
                ready, _, _ = select.select(waits, [], [], 0.2)
                if self.ctl in ready:
                    self._serve_control()
                    next_draw = 0.0
                if tty and sys.stdin in ready:
                    ch = os.read(sys.stdin.fileno(), 1).decode(
                        errors="replace").lower()
                    if ch == "q":
                        return
                    try:
                        self.key(ch)
                    except (DemoError, vmlib.VMError) as exc:
                        self.note("error: %s" % exc)
                    next_draw = 0.0
        finally:
            if old is not None:
                import termios
                termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)


def parse_script(text):
    """``"20:freeze,30:thaw:vm2"`` -> ``[(20.0, "freeze", None), (30.0,
    "thaw", "vm2")]``."""
    steps = []
    for part in filter(None, (text or "").split(",")):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3) or fields[1] not in ACTIONS:
            raise DemoError("bad --script step %r: SECONDS:ACTION[:VM], "
                            "ACTION one of %s" % (part, ", ".join(ACTIONS)))
        try:
            at = float(fields[0])
        except ValueError:
            raise DemoError("bad --script step %r: %r is not a number of "
                            "seconds" % (part, fields[0]))
        steps.append((at, fields[1], fields[2] if len(fields) == 3
                      else None))
    return steps


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    """Whether ``pid`` runs (a zombie its parent has not reaped does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def cmd_run(args):
    if not 1 <= args.vms <= 4:
        raise DemoError("--vms must be 1 to 4")
    if os.geteuid() != 0:
        raise DemoError("the demo needs root (libvirtd's QEMU runs as root "
                        "here; see tools/libvirt-setup.sh)")
    script = parse_script(args.script)  # bad input: an error first
    if args.cloud:
        from tools import demo_cloud
        bad = [a for _, a, _ in script if a not in demo_cloud.CLOUD_ACTIONS]
        if bad:
            raise DemoError("on the cloud --script knows %s, not %s" % (
                ", ".join(demo_cloud.CLOUD_ACTIONS), ", ".join(bad)))
        try:
            return demo_cloud.run(args, say, script)
        except KeyboardInterrupt:
            say("Ctrl-C")
            return 0
    demo = Demo(args)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        demo.setup()
        demo.run()
    except KeyboardInterrupt:
        print()
        say("Ctrl-C")
    except _Stop as exc:
        say("%s received", exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        demo.teardown()
    return 0


def cmd_inject(args):
    path = os.path.join(args.dir, "demo.sock")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(15)
        sock.connect(path)
        sock.sendall(json.dumps({"action": args.action,
                                 "vm": args.vm}).encode() + b"\n")
        reply = json.loads(sock.makefile().readline())
    except (OSError, ValueError) as exc:
        raise DemoError("no running demo answers at %s (%s)" % (path, exc))
    if not reply.get("ok"):
        raise DemoError(reply.get("error"))
    say("%s: %s", reply["vm"], args.action)
    return 0


def cmd_stop(args):
    pid = _read_pid(os.path.join(args.dir, "demo.pid"))
    if pid is None or not _alive(pid):
        say("no demo is running; removing leftovers, if any")
        removed = proc.reap_orphans() + vmlib.cleanup_leftovers()
        say("removed: %s", ", ".join(removed) or "nothing")
        return 0
    say("stopping the demo (pid %d) ...", pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(pid):
        if time.monotonic() > deadline:
            raise DemoError("the demo (pid %d) did not stop within 60 s"
                            % pid)
        time.sleep(0.2)
    say("stopped")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="tools/demo.py", description="guestha on one node: RabbitMQ, "
        "guestha-server, guestha-agent, libvirtd and tiny VMs running the "
        "guest daemon.", epilog="See the module docstring for details.")
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help="working directory (default %(default)s)")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="bring everything up and show it "
                         "(the default)")
    run.add_argument("--vms", type=int, default=2,
                     help="how many VMs, 1 to 4 (default %(default)s)")
    run.add_argument("--interval-ms", type=int, default=1000,
                     help="heartbeat interval the guests ask for "
                          "(default %(default)s)")
    run.add_argument("--duration", type=float, default=0,
                     help="stop after this many seconds (default: run "
                          "until Ctrl-C)")
    run.add_argument("--script", default="",
                     help="actions at seconds after start-up, e.g. "
                          "'20:freeze,30:thaw:vm1'")
    run.add_argument("--cloud", action="store_true",
                     help="run on the real cloud of tools/cloud.sh: Nova "
                          "servers, guestha's reboots through Nova "
                          "(tools/demo_cloud.py)")
    run.add_argument("--no-tty", action="store_true",
                     help="print a new screen instead of redrawing")
    run.add_argument("--refresh", type=float, default=5.0,
                     help="seconds between screens without a terminal "
                          "(default %(default)s)")
    inject = sub.add_parser("inject", help="inject a fault into the "
                            "running demo")
    inject.add_argument("action", choices=ACTIONS)
    inject.add_argument("vm", nargs="?", help="vm1, vm2... (default vm1)")
    sub.add_parser("stop", help="stop the running demo")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["--dir", args.dir, "run"]
                                 + (argv if argv is not None
                                    else sys.argv[1:]))
    try:
        return {"run": cmd_run, "inject": cmd_inject,
                "stop": cmd_stop}[args.command](args)
    except (DemoError, vmlib.VMError) as exc:
        print("demo: error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
