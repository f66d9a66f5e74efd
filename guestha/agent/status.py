# SPDX-License-Identifier: Apache-2.0
"""``guestha-agent --status``: ask a running agent and print a table."""

import json
import socket
import sys


def fetch(path, timeout=10.0):
    """The agent's status document, from its status socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    return json.loads(b"".join(chunks).decode("utf-8"))


def _last(inst):
    last = inst.get("last_answer")
    if not last:
        return "-"
    word = "healthy" if last["healthy"] else "UNHEALTHY"
    text = "%s %.1fs ago" % (word, last["ago_s"])
    if last.get("reason"):
        text += " (%s)" % last["reason"]
    return text


def _rtt(inst):
    rtt = inst.get("rtt_ms")
    if not rtt:
        return "-"
    return "%.1f/%.1f ms" % (rtt["mean"], rtt["max"])


def _note(inst):
    # the instance's note says back-offs and held recoveries; say also
    # when its round trips are left out of the host's figures
    note = inst.get("note") or ""
    if inst.get("standing") == "misbehaving":
        note = "MISBEHAVING (round trips not in the host figures)" + (
            "; " + note if note else "")
    return note


def render(status):
    """The status document as the text an operator reads."""
    rep = status.get("reporter") or {}
    lines = ["host %s  up %.0fs  libvirt %s  outbox %s pending, %s "
             "delivered%s" % (
                 status["host"], status["uptime_s"],
                 {True: "connected", False: "DISCONNECTED",
                  None: "unknown"}[status.get("libvirt_connected")],
                 rep.get("pending", "?"), rep.get("delivered", "?"),
                 ", last error: %s" % rep["last_error"]
                 if rep.get("last_error") else "")]
    rtt = status.get("rtt_ms")
    if rtt:
        lines.append("round trips p50 %.1f ms, p99 %.1f ms, max %.1f ms "
                     "(%d samples, channels in good standing)" % (
                         rtt["p50"], rtt["p99"], rtt["max"],
                         rtt["samples"]))
    rows = [("INSTANCE", "NAME", "STATE", "INTERVAL", "LAST ANSWER",
             "RTT MEAN/MAX", "FAULTS", "NOTE")]
    for inst in status["instances"]:
        fault = inst.get("fault")
        rows.append((
            inst["instance"], inst.get("name") or "-",
            inst["state"] + ("/FAULT:" + fault["kind"] if fault else ""),
            "%d ms" % inst["interval_ms"] if inst.get("interval_ms")
            else "-",
            _last(inst), _rtt(inst), str(inst["counters"]["faults"]),
            _note(inst)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths))
                     + "  " + r[-1])
    lines.append("%d instance(s)" % len(status["instances"]))
    return "\n".join(lines)


def main(path, as_json=False, out=sys.stdout):
    try:
        status = fetch(path)
    except OSError as exc:
        print("guestha-agent: cannot reach the agent at %s: %s (is "
              "guestha-agent running? see [agent] status_socket)"
              % (path, exc), file=sys.stderr)
        return 1
    out.write((json.dumps(status, indent=2) if as_json
               else render(status)) + "\n")
    return 0
