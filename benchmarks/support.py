# SPDX-License-Identifier: Apache-2.0
"""What every benchmark in ``benchmarks/`` needs and none should write
again: percentiles, progress lines, the machine's description,
a process's CPU time and memory from ``/proc``, ``rabbitmqctl``, an
argument parser that shows the module's documentation, and the two ways a
benchmark reports (a table of labelled rows, one line of JSON).

Standard library only, Python 3.8+: ``guest_daemon.py`` runs under the
guest's interpreter.  Linux only (``/proc``).  Waiting for what another
process does is :func:`guestha.testing.wait.wait_until`, shared with the
tests; the real processes a benchmark starts come from
:mod:`guestha.testing`.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics ---------------------------------------------------------------

def percentile(values, pct):
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``, which
    need not be sorted; None if there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, int(math.ceil(pct / 100.0 * len(ordered))))
    return ordered[rank - 1]


# -- progress -----------------------------------------------------------------

def log(fmt, *args, stream=None, stamp=False):
    """One progress line: ``fmt % args``, on ``stream`` (stderr unless
    given), after the wall-clock time if ``stamp``."""
    text = fmt % args if args else fmt
    if stamp:
        text = "%s %s" % (time.strftime("%H:%M:%S"), text)
    print(text, file=stream or sys.stderr, flush=True)


# -- the machine and its processes --------------------------------------------

def machine():
    """Core count, CPU model, Python and kernel versions, for a report."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model,
            "python": platform.python_version(),
            "kernel": platform.release()}


def cpu_seconds(pid, children=False):
    """User + system CPU seconds of ``pid`` (all its threads); with
    ``children``, ``(its own, its reaped children's)``."""
    with open("/proc/%d/stat" % pid) as f:
        # the command name may hold spaces: fields count from its ")"
        fields = f.read().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / float(CLK_TCK)
    if not children:
        return own
    return own, (int(fields[13]) + int(fields[14])) / float(CLK_TCK)


def memory_kib(pid, field="VmRSS"):
    """One ``kB`` field of ``/proc/<pid>/status`` (0 if missing)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rabbitmqctl(*args, check=True, timeout=120):
    """``rabbitmqctl -q ARGS``; its output (stdout and stderr).

    :raises RuntimeError: if it fails and ``check``.
    """
    result = subprocess.run(["rabbitmqctl", "-q"] + list(args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError("rabbitmqctl %s failed: %s"
                           % (" ".join(args), result.stdout.strip()))
    return result.stdout


# -- command line and report --------------------------------------------------

def argument_parser(doc):
    """A parser whose ``--help`` shows ``doc`` (a module docstring): its
    first paragraph as the description, the rest as it is written."""
    first, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(
        description=first, epilog=rest or None,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def print_rows(rows):
    """A report table: ``(label, value)`` rows, labels aligned, between
    blank lines."""
    width = max(len(label) for label, _ in rows)
    print()
    for label, value in rows:
        print("  %s  %s" % (label.ljust(width), value))
    print()


def print_json(document, sort_keys=False):
    """The report for machines: one line of JSON."""
    print(json.dumps(document, sort_keys=sort_keys), flush=True)
