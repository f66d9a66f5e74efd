# SPDX-License-Identifier: Apache-2.0
"""Health-check hooks: executables in a directory, run as child processes.

Theory of operation
-------------------
The daemon answers every challenge at once from a cached result, so a hook
that hangs makes the guest *unhealthy*, never *late*.  The cache is filled
by rounds.  A round starts every period (by default the granted heartbeat
interval) unless the previous one is still running; it starts every hook
(each executable regular file in the hook directory, in name order) as a
child process, and completes when each hook has exited or been killed for
running past the timeout.  Hooks of a round run side by side, so a round
takes as long as its slowest hook, not the sum of them.

There are no threads and no blocking waits: the daemon's loop calls
:meth:`HookRunner.tick` at :meth:`HookRunner.next_deadline`, and tick
starts rounds, reaps hooks with ``poll()`` and kills those past their
timeout.  Without a descriptor that reports a child's exit (``pidfd`` needs
Python 3.9), running hooks are polled, first after 10 ms and then less
often, so a quick hook is noticed quickly and a slow one costs few
wake-ups.

Each hook runs in a session of its own, so a timeout kills the hook and
everything it started (SIGKILL to the process group); its output goes to
an unnamed temporary file, not a pipe, so a chatty hook (or a background
process it left behind) can never block on a full pipe that nobody reads.
A killed hook that does not die (stuck in the kernel) is not started again
until it has been reaped, so a hung check cannot pile up processes.

:meth:`HookRunner.result` says what the last completed round found, or
that the result is stale when rounds stopped completing.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import tempfile

LOG = logging.getLogger(__name__)

#: Longest reason taken from a hook's output, in characters.
MAX_OUTPUT_LINE = 120
#: Bytes of a hook's output read to find its first line.
_OUTPUT_READ = 4096
#: Polling of running hooks: the first look after POLL_MIN seconds, then
#: doubling up to POLL_MAX.
POLL_MIN = 0.01
POLL_MAX = 0.1
#: Seconds a killed hook is given to die before the next round starts
#: without it (reported as stuck).  SIGKILL takes effect within
#: milliseconds unless the process is blocked in the kernel.
KILL_GRACE = 1.0


def is_hook_name(name):
    """Whether a file name may be a hook: not a dotfile, an editor backup
    (``~``) or a file left by dpkg (``.dpkg-old``, ``.dpkg-dist``...)."""
    return not (name.startswith(".") or name.endswith("~")
                or ".dpkg-" in name)


def first_line(data, max_len=MAX_OUTPUT_LINE):
    """The first non-blank line of a hook's output, as printable text."""
    text = data.decode("utf-8", "replace")
    for line in text.splitlines():
        line = "".join(c if c.isprintable() else " " for c in line).strip()
        if line:
            return line[:max_len]
    return ""


class HealthState(object):
    """What one completed round of hooks found.

    ``healthy``; ``reason``, the failures joined by ``"; "`` (``None`` when
    healthy); ``started`` and ``finished``, monotonic times; ``hooks``, the
    names of the hooks of the round in the order they ran.
    """

    def __init__(self, healthy, reason, started, finished, hooks):
        self.healthy = healthy
        self.reason = reason
        self.started = started
        self.finished = finished
        self.hooks = hooks

    def __repr__(self):
        return "HealthState(healthy=%r, reason=%r, hooks=%r)" % (
            self.healthy, self.reason, self.hooks)


class _Hook(object):
    """One hook process of a round."""

    def __init__(self, name, proc, output, started):
        self.name = name
        self.proc = proc
        self.output = output  # the temporary file, or None
        self.started = started
        self.done = False
        self.killed_at = None


class _Round(object):
    def __init__(self, started, names):
        self.started = started
        self.names = names
        self.hooks = []
        self.failures = {}  # name -> reason


class HookRunner(object):
    """Runs the hooks in ``hook_dir``, each for at most ``timeout_s``.

    :param period_s: seconds between the starts of two rounds; the daemon
        sets it with :meth:`set_period` once the host grants an interval.
    :param max_age_s: a result older than this is reported as stale;
        ``None`` or 0 means the longer of three periods and one period plus
        the timeout (so that a round still running within its timeout never
        makes the last result stale).
    """

    def __init__(self, hook_dir, timeout_s, period_s=1.0, max_age_s=None):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.hook_dir = hook_dir
        self.timeout_s = timeout_s
        self.period_s = period_s
        self._max_age_s = max_age_s or None
        #: the last completed round, a :class:`HealthState` (or None)
        self.state = None
        self._round = None
        self._last_start = None
        self._next_round = None  # None: due at the first tick
        self._poll_at = None
        self._poll_delay = POLL_MIN
        self._killed = []  # killed hooks not yet reaped
        self._killed_poll_at = 0.0
        self._dir_missing_logged = False
        self._skipped_logged = set()

    # -- configuration --------------------------------------------------------

    @property
    def max_age_s(self):
        if self._max_age_s:
            return self._max_age_s
        return max(3 * self.period_s, self.period_s + self.timeout_s)

    def set_period(self, seconds):
        """Run a round every ``seconds`` from now on."""
        if seconds <= 0:
            raise ValueError("the period must be > 0")
        self.period_s = seconds
        if self._last_start is not None:
            self._next_round = self._last_start + seconds

    # -- the loop's interface -------------------------------------------------

    @property
    def running(self):
        """Whether a round is in progress."""
        return self._round is not None

    def next_deadline(self):
        """The monotonic time at which :meth:`tick` should run next (a time
        in the past means at once)."""
        times = []
        if self._round is None:
            due = 0.0 if self._next_round is None else self._next_round
            grace = self._grace_until()
            times.append(due if grace is None else max(due, grace))
        else:
            times.append(self._poll_at)
            times.extend(h.started + self.timeout_s
                         for h in self._round.hooks if not h.done)
        if self._killed:
            times.append(self._killed_poll_at)
        return min(times)

    def tick(self, now):
        """Reap, kill and start hooks as due at monotonic time ``now``."""
        if self._killed:
            self._reap_killed(now)
        if self._round is not None:
            self._check_round(now)
        if self._round is None and (self._next_round is None
                                    or now >= self._next_round):
            grace = self._grace_until()
            if grace is None or now >= grace:
                self._start_round(now)

    def result(self, now):
        """``(healthy, reason)`` from the last completed round."""
        state = self.state
        if state is None:
            # A daemon that has just started must not report a fault just
            # because its first round has not finished yet; only a first
            # round that overran its timeout counts.
            if (self._round is not None
                    and now - self._round.started > self.timeout_s):
                return False, "no health result yet"
            return True, None
        age = now - state.finished
        if age > self.max_age_s:
            return False, "health result stale (%d ms old)" % (age * 1000)
        return state.healthy, state.reason

    def close(self):
        """Kill every hook still running (the daemon is stopping)."""
        hooks = list(self._killed)
        if self._round is not None:
            hooks.extend(h for h in self._round.hooks if not h.done)
        for hook in hooks:
            self._kill(hook)
            hook.proc.poll()
            self._close_output(hook)
        self._round = None
        self._killed = []

    # -- rounds ---------------------------------------------------------------

    def _list_hooks(self):
        """Names of the hooks in name order; raises OSError if the
        directory cannot be read (a missing one has no hooks)."""
        try:
            names = os.listdir(self.hook_dir)
        except FileNotFoundError:
            if not self._dir_missing_logged:
                LOG.info("hook directory %s does not exist: no health "
                         "hooks", self.hook_dir)
                self._dir_missing_logged = True
            return []
        self._dir_missing_logged = False
        hooks = []
        for name in sorted(names):
            if not is_hook_name(name):
                continue
            path = os.path.join(self.hook_dir, name)
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue  # removed meanwhile, or a dangling link
            if not stat.S_ISREG(mode):
                continue
            if not os.access(path, os.X_OK):
                if name not in self._skipped_logged:
                    # the usual mistake is a forgotten chmod +x: say so once
                    LOG.info("health hook %s is not executable: skipped",
                             path)
                    self._skipped_logged.add(name)
                continue
            hooks.append(name)
        return hooks

    def _start_round(self, now):
        self._last_start = now
        self._next_round = now + self.period_s
        try:
            names = self._list_hooks()
        except OSError as exc:
            rnd = _Round(now, [])
            rnd.failures[""] = ("cannot read hook directory %s: %s"
                                % (self.hook_dir, exc.strerror or exc))
            self._round = rnd
            self._complete(now)
            return
        rnd = _Round(now, names)
        self._round = rnd
        stuck = {h.name for h in self._killed}
        for name in names:
            if name in stuck:
                rnd.failures[name] = ("hook %s did not exit after being "
                                      "killed" % name)
                continue
            hook = self._spawn(name, now)
            if hook is not None:
                rnd.hooks.append(hook)
        if not rnd.hooks:
            self._complete(now)
            return
        self._poll_delay = POLL_MIN
        self._poll_at = now + self._poll_delay

    def _spawn(self, name, now):
        path = os.path.join(self.hook_dir, name)
        try:
            output = tempfile.TemporaryFile()
        except OSError as exc:
            # Run the hook anyway: its exit code matters more than its
            # output.
            LOG.warning("no temporary file for the output of hook %s: %s",
                        name, exc)
            output = None
        try:
            proc = subprocess.Popen(
                [path], stdin=subprocess.DEVNULL,
                stdout=output if output is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT, close_fds=True,
                start_new_session=True)
        except OSError as exc:
            if output is not None:
                output.close()
            self._round.failures[name] = "hook %s could not start: %s" % (
                name, exc.strerror or exc)
            return None
        LOG.debug("started hook %s (pid %d)", name, proc.pid)
        return _Hook(name, proc, output, now)

    def _check_round(self, now):
        rnd = self._round
        for hook in rnd.hooks:
            if hook.done:
                continue
            code = hook.proc.poll()
            if code is not None:
                hook.done = True
                self._finished(rnd, hook, code)
            elif now - hook.started >= self.timeout_s:
                hook.done = True
                hook.killed_at = now
                self._kill(hook)
                rnd.failures[hook.name] = "hook %s timed out after %d ms" % (
                    hook.name, round(self.timeout_s * 1000))
                self._close_output(hook)
                if hook.proc.poll() is None:
                    # SIGKILL is not instant; reap it later, never wait
                    if not self._killed:
                        self._killed_poll_at = now + POLL_MAX
                    self._killed.append(hook)
        if all(h.done for h in rnd.hooks):
            self._complete(now)
        else:
            self._poll_delay = min(self._poll_delay * 2, POLL_MAX)
            self._poll_at = now + self._poll_delay

    def _finished(self, rnd, hook, code):
        if code == 0:
            LOG.debug("hook %s passed", hook.name)
            self._close_output(hook)
            return
        line = ""
        if hook.output is not None:
            try:
                hook.output.seek(0)
                line = first_line(hook.output.read(_OUTPUT_READ))
            except OSError:
                pass
        self._close_output(hook)
        if code < 0:
            try:
                what = "killed by %s" % signal.Signals(-code).name
            except ValueError:
                what = "killed by signal %d" % -code
        else:
            what = "exited %d" % code
        reason = "hook %s %s" % (hook.name, what)
        if line:
            reason += ": " + line
        rnd.failures[hook.name] = reason

    def _complete(self, now):
        rnd = self._round
        self._round = None
        self._poll_at = None
        # failures in hook name order, whatever order they happened in
        order = {name: i for i, name in enumerate(rnd.names)}
        reasons = [rnd.failures[n] for n in
                   sorted(rnd.failures, key=lambda n: order.get(n, -1))]
        state = HealthState(not reasons, "; ".join(reasons) or None,
                            rnd.started, now, list(rnd.names))
        previous = self.state
        self.state = state
        if not state.healthy and (previous is None or previous.healthy
                                  or previous.reason != state.reason):
            LOG.warning("health hooks report unhealthy: %s", state.reason)
        elif state.healthy and previous is not None and not previous.healthy:
            LOG.info("health hooks report healthy again")

    # -- processes ------------------------------------------------------------

    def _kill(self, hook):
        try:
            # the hook is the leader of its own session and process group
            os.killpg(hook.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group has exited meanwhile
        except PermissionError as exc:
            LOG.error("cannot kill hook %s (pid %d): %s", hook.name,
                      hook.proc.pid, exc)
        LOG.debug("killed hook %s (pid %d)", hook.name, hook.proc.pid)

    def _grace_until(self):
        """Until when the next round waits for killed hooks to die (None:
        it need not wait)."""
        if not self._killed:
            return None
        return max(h.killed_at for h in self._killed) + KILL_GRACE

    def _reap_killed(self, now):
        if now < self._killed_poll_at:
            return
        self._killed = [h for h in self._killed if h.proc.poll() is None]
        if self._killed:
            self._killed_poll_at = now + POLL_MAX

    @staticmethod
    def _close_output(hook):
        if hook.output is not None:
            hook.output.close()
            hook.output = None
