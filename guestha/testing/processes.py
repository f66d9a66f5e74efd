# SPDX-License-Identifier: Apache-2.0
"""Child processes of the test harnesses, the demo and the benchmarks that
end with their parent, whatever way the parent ends (issue 8).

Every long-running process the real-VM harness
(``guestha/testing/guest_vms.py``, ``tests/functional``), the demo
(``tools/demo.py``) or a benchmark starts goes through :func:`spawn`, which
gives it four guarantees, one per way its parent can end:

* **the parent stops it** (a fixture's teardown, the demo's ``stop``):
  :func:`stop` and :func:`kill` signal its whole *process group*
  (``start_new_session``), so what it started goes with it;
* **the parent exits** (a test failed, an exception, ``sys.exit``): an
  ``atexit`` hook kills the groups of the children still running;
* **the parent is killed** (SIGKILL, the OOM killer, a CI timeout): the
  kernel SIGKILLs the child (``PR_SET_PDEATHSIG``, set between fork and
  exec; from the main thread only: the kernel sends it when the *thread*
  that forked ends), and a :func:`watchdog`, a small process of its own
  that notices the parent's end as the end of a pipe, kills what is left
  of the parent's descendants and removes the libvirt domains it was told
  about (:func:`guard_domains`, used by ``guestha/testing/guest_vms.py``);
* **a run was interrupted before all this existed, or the watchdog
  itself was killed**: each child carries its owner in its environment
  (:data:`OWNER_ENV`: the owner's pid and start time, so that a reused
  pid does not count, and the child's session), and :func:`reap_orphans`,
  called when a session starts, kills every harness process whose owner
  is gone.

What a child started is its owner's as long as it stays in the child's
session: a daemon it started (``rabbitmq-server -detached``, ``libvirtd
-d``), which made a session of its own, inherits the mark but is never
killed for it.

Standard library only, Linux only (``/proc``, ``prctl``).
"""

import atexit
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
#: Environment variable naming the process that spawned a harness process
#: and the session it gave it: ``<pid>:<start time in clock ticks>/<sid>``.
OWNER_ENV = "GUESTHA_HARNESS_OWNER"
_PR_SET_PDEATHSIG = 1

_lock = threading.Lock()
_children = []
_watchdog = None
_guarded_prefixes = []

try:
    _prctl = ctypes.CDLL(ctypes.util.find_library("c") or None,
                         use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong, ctypes.c_ulong]
except (OSError, AttributeError):  # not Linux: no death signal
    _prctl = None


# -- who owns what ----------------------------------------------------------

def start_time(pid):
    """The start time of ``pid`` (clock ticks after boot), or None if it
    does not run (a zombie does not)."""
    fields = _stat(pid)
    # fields[0] is the state (field 3), fields[19] the start time (22)
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


_own_token = {}


def owner_token(pid=None):
    """``<pid>:<start time>`` of ``pid`` (default: this process)."""
    if pid is None:
        pid = os.getpid()
        if pid not in _own_token:  # keyed by pid: a fork gets its own
            _own_token[pid] = "%d:%s" % (pid, start_time(pid))
        return _own_token[pid]
    return "%d:%s" % (pid, start_time(pid))


def token_alive(token):
    """Whether the process a token names still runs (not a reuse of its
    pid)."""
    pid, _, started = token.partition(":")
    try:
        return start_time(int(pid)) == started
    except ValueError:
        return False


def _mark(pid):
    """``(owner token, session)`` of :data:`OWNER_ENV` in ``pid``'s
    environment, or None."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            environ = f.read()
    except OSError:
        return None
    key = OWNER_ENV.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(key):
            token, _, sid = item[len(key):].decode(
                "ascii", "replace").partition("/")
            return token, sid
    return None


def owner_of(pid):
    """The owner token of harness process ``pid``, or None: the process
    carries the mark and is still in the session its owner gave the
    child it descends from (a daemon that made a session of its own is
    nobody's)."""
    mark = _mark(pid)
    if mark is None:
        return None
    fields = _stat(pid)
    # fields[3]: the session id (field 6)
    if not fields or fields[3] != mark[1]:
        return None
    return mark[0]


def _pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(
                "utf-8", "replace").strip()
    except OSError:
        return ""


def owned_by(token):
    """Pids of the running processes whose owner is ``token``."""
    me = os.getpid()
    return [pid for pid in _pids()
            if pid != me and owner_of(pid) == token
            and start_time(pid) is not None]


def orphans():
    """``[(pid, owner token)]`` of harness processes whose owner is gone."""
    found = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        token = owner_of(pid)
        if token and not token_alive(token) and start_time(pid):
            found.append((pid, token))
    return found


def _kill_pids(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap_orphans():
    """SIGKILL every harness process whose owner is gone (a run that was
    interrupted); returns ``["<pid> <command line>", ...]`` of those."""
    found = orphans()
    described = ["%d %s" % (pid, cmdline(pid)[:200]) for pid, _ in found]
    _kill_pids(pid for pid, _ in found)
    return described


# -- spawning -----------------------------------------------------------------

def _child_setup(parent, token, setenv, unsetenv, die_with_parent):
    def preexec():
        # the environment the child execs with (Popen's env=None: the C
        # environ), marked with its session, which only the child knows
        for key in unsetenv:
            os.unsetenv(key)
        for key, value in setenv:
            os.putenv(key, value)
        os.putenv(OWNER_ENV, "%s/%d" % (token, os.getsid(0)))
        if die_with_parent and _prctl is not None:
            # SIGKILL when the parent (the thread that forked) ends
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            # it ended before the line above: nobody would send it
            os._exit(125)
    return preexec


def spawn(argv, env=None, die_with_parent=True, **kwargs):
    """``subprocess.Popen(argv, ...)`` with the guarantees of this module:
    a session (and process group) of its own, :data:`OWNER_ENV` in its
    environment, killed with this process.  ``env``: the whole
    environment (default: this process's).  Also starts the
    :func:`watchdog` if it does not run yet.  The death signal is set
    only from the main thread (the kernel sends it when the thread that
    forked ends); the watchdog covers the others."""
    target = dict(os.environ if env is None else env)
    target.pop(OWNER_ENV, None)
    setenv = [(k, v) for k, v in target.items() if os.environ.get(k) != v]
    unsetenv = [k for k in os.environ if k not in target] + [OWNER_ENV]
    kwargs["preexec_fn"] = _child_setup(
        os.getpid(), owner_token(), setenv, unsetenv,
        die_with_parent and threading.current_thread() is
        threading.main_thread())
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    ensure_watchdog()
    proc = subprocess.Popen(argv, env=None, start_new_session=True,
                            **kwargs)
    with _lock:
        _children[:] = [p for p in _children if p.poll() is None]
        _children.append(proc)
    return proc


def _stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid, token=None):
    """Pids in process group ``pgid`` whose owner is ``token`` (default:
    this process)."""
    token = owner_token() if token is None else token
    found = []
    for pid in _pids():
        fields = _stat(pid)
        if fields and fields[2] == str(pgid) and owner_of(pid) == token:
            found.append(pid)
    return found


def signal_group(proc, sig):
    """Send ``sig`` to ``proc``'s process group (the child and what it
    started); no error if nothing is left of it."""
    if proc.returncode is None:
        # not reaped yet: the pid, and so the group id, are still ours
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        return
    # reaped: the group id may have been reused by now, so only members
    # that carry our mark
    _kill_pids(group_members(proc.pid), sig)


def stop(proc, timeout=10.0, sig=signal.SIGTERM):
    """The clean stop: ``sig`` (SIGCONT first, should it be stopped) to the
    group, then SIGKILL to the group after ``timeout`` seconds; what is
    left of the group is killed in any case.  Returns the exit code."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGCONT)
        signal_group(proc, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    return kill(proc)


def kill(proc, timeout=10.0):
    """SIGKILL to the group; returns the exit code (None if the child
    did not go within ``timeout``, which only a D-state child does)."""
    signal_group(proc, signal.SIGKILL)
    try:
        code = proc.wait(timeout)
        # what the group's leader left behind, now that it is reaped
        signal_group(proc, signal.SIGKILL)
        return code
    except subprocess.TimeoutExpired:
        return None
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def stop_all(procs, timeout=10.0, sig=signal.SIGTERM):
    """:func:`stop` several at once (each clean stop can take seconds);
    returns their exit codes."""
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGCONT)
            signal_group(proc, sig)
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        codes.append(kill(proc))
    return codes


def kill_all():
    """SIGKILL every child :func:`spawn` made that still runs, with its
    group (at exit; also usable by a teardown)."""
    with _lock:
        procs, _children[:] = list(_children), []
    for proc in procs:
        signal_group(proc, signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


atexit.register(kill_all)


def teardown(*steps):
    """Call every step (a callable, or None to skip), even when one
    raises; then raise the first exception.  So that one failing step of
    a teardown (libvirtd gone, a process that would not stop) does not
    leave the others undone."""
    first = None
    for step in steps:
        if step is None:
            continue
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            if first is None:
                first = exc
    if first is not None:
        raise first


# -- the watchdog -------------------------------------------------------------

def ensure_watchdog():
    """Start this process's watchdog unless it runs: a child in a session
    of its own, not killed with us, that waits for the end of a pipe
    only we hold, then kills what is left of our harness processes and
    removes the domains of :func:`guard_domains`.  Returns its pid."""
    global _watchdog
    with _lock:
        if _watchdog is not None and _watchdog[0].poll() is None:
            return _watchdog[0].pid
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        env["PYTHONPATH"] = ROOT
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "guestha.testing.processes", "watch",
                 owner_token()] + _guarded_prefixes,
                stdin=read_end, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, cwd=ROOT, env=env,
                start_new_session=True)
        finally:
            os.close(read_end)
        # only this process may hold the write end: not inherited
        os.set_inheritable(write_end, False)
        if _watchdog is not None:
            os.close(_watchdog[1])
        _watchdog = (child, write_end)
        return child.pid


def guard_domains(prefix):
    """Have the watchdog destroy and undefine the libvirt domains whose
    names start with ``prefix`` (and remove ``/tmp/<prefix>*``) when this
    process is gone.  Restarts the watchdog with the new list."""
    global _watchdog
    with _lock:
        if prefix in _guarded_prefixes:
            return
        _guarded_prefixes.append(prefix)
        old, _watchdog = _watchdog, None
    if old is not None:
        # its pipe closes: it sees the end, finds us alive and leaves
        os.close(old[1])
    ensure_watchdog()


def _remove_domains(prefixes, uri="qemu:///system"):
    import shutil

    import libvirt
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            if any(dom.name().startswith(p) for p in prefixes):
                for call in (dom.destroy, dom.undefine):
                    try:
                        call()
                    except libvirt.libvirtError:
                        pass
    finally:
        conn.close()
    for entry in os.listdir("/tmp"):
        if any(entry.startswith(p) for p in prefixes):
            shutil.rmtree(os.path.join("/tmp", entry), ignore_errors=True)


def watch(token, prefixes, stdin=None):
    """The watchdog's body: wait for the end of ``stdin``, then, if the
    owner ``token`` is gone, clean up after it."""
    stdin = sys.stdin.buffer if stdin is None else stdin
    while stdin.read(65536):
        pass
    deadline = time.monotonic() + 5.0
    # the pipe ends when the owner's last fd closes, a moment before it
    # is gone from /proc; a watchdog replaced by guard_domains sees its
    # owner alive and leaves
    while token_alive(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    if token_alive(token):
        return 0
    signal.alarm(120)  # never a leftover itself
    # twice: a child may start a process while it is being killed
    for _ in range(2):
        _kill_pids(owned_by(token))
    if prefixes:
        try:
            _remove_domains(prefixes)
        except Exception:  # noqa: BLE001 - libvirt gone too: nothing to do
            pass
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "watch":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return watch(argv[1], argv[2:])
    if argv == ["reap"]:
        for line in reap_orphans():
            print("killed %s" % line)
        return 0
    print("usage: python -m guestha.testing.processes reap | watch TOKEN "
          "[PREFIX...]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
