# SPDX-License-Identifier: Apache-2.0
"""The one-file guest bundle: built, then run as a guest image would."""

import os
import subprocess
import sys

from guestha_guest.protocol import heartbeat as hb
from guestha_guest.testing.simhost import SimHost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))


def _build(tmp_path):
    out = str(tmp_path / "guestha-guest.pyz")
    # the builder is standard library only, like the guest
    subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                 "build_guest_bundle.py"),
                    "-o", out], check=True, capture_output=True)
    return out


def test_bundle_runs_alone_and_answers_a_host(tmp_path):
    bundle = _build(tmp_path)
    # run from an empty directory with no PYTHONPATH: only the bundle
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, bundle, "--version"], env=env,
                         cwd=str(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("guestha-guest ")
    sock = str(tmp_path / "port.sock")
    cfg = tmp_path / "g.ini"
    cfg.write_text("[guestha]\ninterval_ms = 100\nname = bundled\n"
                   "[health]\nhook_dir = %s\n[app_api]\nsocket = %s\n"
                   % (tmp_path / "hooks", tmp_path / "app.sock"))
    proc = subprocess.Popen([sys.executable, "-S", bundle, "--config",
                             str(cfg), "--port", "unix-listen:" + sock],
                            env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        host = SimHost.connect_unix(sock, timeout=10, seed=21)
        host.run(10, until=lambda: len(host.of(hb.Answered)) >= 3)
        assert host.of(hb.Registered)[0].init.name == "bundled"
        assert all(a.healthy for a in host.of(hb.Answered))
        assert len(host.of(hb.Answered)) >= 3
        proc.terminate()
        host.run(5, until=lambda: bool(host.of(hb.Exited)))
        assert host.of(hb.Exited)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_bundle_bytes_do_not_depend_on_when_it_was_built(tmp_path):
    # the cloud-init user data embeds the bundle: two builds of one
    # checkout (a second apart or a year) must give the same bytes
    import time
    import zipfile
    epoch = 1577836800  # tools/build_guest_bundle.py BUNDLE_EPOCH
    bundle = _build(tmp_path)
    with zipfile.ZipFile(bundle) as z:
        times = set(info.date_time for info in z.infolist())
        names = z.namelist()
    assert times == {time.localtime(epoch)[:6]}
    assert "__main__.py" in names and "guestha_guest/daemon.py" in names
