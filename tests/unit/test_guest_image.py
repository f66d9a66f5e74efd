# SPDX-License-Identifier: Apache-2.0
"""Installing the guest daemon in an image: cloud-init and the DIB element.

* tools/make-cloud-init.py writes cloud-config user data whose files,
  decoded as cloud-init would, are a runnable bundle (``--version``,
  ``--check-config`` with the embedded ini), the ini and the unit of the
  repository; gzipped, it stays within 75% of Nova's user-data limit.
* The diskimage-builder element's extra-data.d script stages the files and
  its install.d script installs them under a fake root (DESTDIR) with the
  right modes, and enables the unit; the installed bundle runs.
"""

import base64
import gzip
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MAKE = os.path.join(ROOT, "tools", "make-cloud-init.py")
ELEMENT = os.path.join(ROOT, "etc", "guest-image", "elements",
                       "guestha-guest")
INI = os.path.join(ROOT, "etc", "guestha-guest.ini")
UNIT = os.path.join(ROOT, "etc", "systemd", "guestha-guest.service")
NOVA_USER_DATA_MAX = 65535
NOVA_USER_DATA_HEADROOM = 0.25

try:
    import yaml
except ImportError:  # pragma: no cover - yaml is in the test venv
    yaml = None


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def run_bundle(path, *args):
    # the guest runs it with python3; any python3 >= 3.8 will do here
    return subprocess.run([sys.executable, str(path), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cloud-init")
    plain = out / "user-data.yaml"
    packed = out / "user-data.yaml.gz"
    for path, extra in ((plain, []), (packed, ["--gzip"])):
        result = subprocess.run(
            [sys.executable, MAKE, "-o", str(path), *extra],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert str(path) in result.stdout
    return plain, packed


def parse_cloud_config(text):
    assert text.startswith("#cloud-config\n")
    if yaml is not None:
        return yaml.safe_load(text)
    pytest.skip("PyYAML is not installed")


def write_files(config):
    return {entry["path"]: entry for entry in config["write_files"]}


def decode(entry):
    content = entry["content"]
    encoding = entry.get("encoding", "text/plain")
    if encoding == "gz+b64":
        return gzip.decompress(base64.b64decode(content))
    if encoding == "b64":
        return base64.b64decode(content)
    return content.encode("utf-8")


def test_cloud_config_files(user_data):
    plain, _ = user_data
    config = parse_cloud_config(read(plain))
    files = write_files(config)
    assert set(files) == {"/usr/local/bin/guestha-guest",
                          "/etc/guestha/guestha-guest.ini",
                          "/etc/systemd/system/guestha-guest.service"}
    assert files["/usr/local/bin/guestha-guest"]["permissions"] == "0755"
    assert files["/usr/local/bin/guestha-guest"]["encoding"] == "gz+b64"
    for path in ("/etc/guestha/guestha-guest.ini",
                 "/etc/systemd/system/guestha-guest.service"):
        assert files[path]["permissions"] == "0644"
    # the ini and the unit are the repository's, byte for byte
    assert decode(files["/etc/guestha/guestha-guest.ini"]).decode() == \
        read(INI)
    assert decode(files["/etc/systemd/system/guestha-guest.service"]
                  ).decode() == read(UNIT)
    assert ["systemctl", "enable", "--now", "guestha-guest.service"] in \
        config["runcmd"]
    assert "@GUESTHA_" not in read(plain)


def test_cloud_config_bundle_runs(user_data, tmp_path):
    plain, _ = user_data
    files = write_files(parse_cloud_config(read(plain)))
    bundle = tmp_path / "guestha-guest"
    bundle.write_bytes(decode(files["/usr/local/bin/guestha-guest"]))
    assert bundle.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    ini = tmp_path / "guestha-guest.ini"
    ini.write_bytes(decode(files["/etc/guestha/guestha-guest.ini"]))

    result = run_bundle(bundle, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("guestha-guest ")

    result = run_bundle(bundle, "--config", str(ini), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "org.openstack.guestha.0" in result.stdout


def test_gzipped_user_data_fits_nova(user_data):
    plain, packed = user_data
    data = packed.read_bytes()
    assert gzip.decompress(data) == plain.read_bytes()
    # Not just under Nova's limit: with a quarter of it to spare, for the
    # guest daemon's growth and for the user's own cloud-config beside it.
    # Over this, shrink the bundle (tools/build_guest_bundle.py) before
    # anything else.
    encoded = len(base64.b64encode(data))
    assert encoded <= (1 - NOVA_USER_DATA_HEADROOM) * NOVA_USER_DATA_MAX, (
        "user data is %d bytes base64-encoded, %.0f%% of Nova's %d"
        % (encoded, 100.0 * encoded / NOVA_USER_DATA_MAX, NOVA_USER_DATA_MAX))


# --- the diskimage-builder element ----------------------------------------

def run_hook(script, env):
    full = dict(os.environ)
    full.update(env)
    return subprocess.run(["bash", os.path.join(ELEMENT, script)],
                          env=full, capture_output=True, text=True,
                          timeout=120)


def test_element_layout():
    assert read(os.path.join(ELEMENT, "element-deps")).split() == \
        ["package-installs"]
    assert "python3" in read(os.path.join(ELEMENT, "package-installs.yaml"))
    assert os.path.exists(os.path.join(ELEMENT, "README.rst"))
    for script in ("extra-data.d/50-guestha-guest",
                   "install.d/60-guestha-guest"):
        mode = os.stat(os.path.join(ELEMENT, script)).st_mode
        assert mode & stat.S_IXUSR, script


@pytest.mark.parametrize("systemctl", ["as installed", "failing"])
def test_element_installs_into_root(tmp_path, systemctl):
    """Enabled with systemctl --root, or by hand when that fails (a
    chroot without a usable systemctl)."""
    path = os.environ["PATH"]
    if systemctl == "failing":
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        (fake_bin / "systemctl").write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / "systemctl").chmod(0o755)
        path = "%s:%s" % (fake_bin, path)
    hooks = tmp_path / "hooks"
    result = run_hook("extra-data.d/50-guestha-guest",
                      {"TMP_HOOKS_PATH": str(hooks),
                       "DIB_GUESTHA_REPO": ROOT})
    assert result.returncode == 0, result.stdout + result.stderr
    staging = hooks / "guestha-guest"
    assert sorted(os.listdir(staging)) == [
        "guestha-guest.ini", "guestha-guest.pyz", "guestha-guest.service"]

    root = tmp_path / "root"
    result = run_hook("install.d/60-guestha-guest",
                      {"DESTDIR": str(root), "PATH": path,
                       "GUESTHA_GUEST_STAGING": str(staging)})
    assert result.returncode == 0, result.stdout + result.stderr

    expected = {
        "usr/local/bin/guestha-guest": 0o755,
        "etc/guestha/guestha-guest.ini": 0o644,
        "etc/systemd/system/guestha-guest.service": 0o644,
    }
    for path, mode in expected.items():
        st = os.stat(root / path)
        assert stat.S_ISREG(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
    assert (root / "etc/guestha/health.d").is_dir()
    assert read(root / "etc/guestha/guestha-guest.ini") == read(INI)
    assert read(root / "etc/systemd/system/guestha-guest.service") == \
        read(UNIT)

    # enabled: linked from the target of its WantedBy=
    link = root / "etc/systemd/system/sysinit.target.wants" / \
        "guestha-guest.service"
    assert link.is_symlink()
    assert os.readlink(link) == "/etc/systemd/system/guestha-guest.service"

    bundle = root / "usr/local/bin/guestha-guest"
    result = run_bundle(bundle, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("guestha-guest ")
    result = run_bundle(bundle, "--config",
                        str(root / "etc/guestha/guestha-guest.ini"),
                        "--check-config")
    assert result.returncode == 0, result.stderr


def test_element_uses_a_given_bundle(tmp_path):
    bundle = tmp_path / "prebuilt.pyz"
    bundle.write_bytes(b"not really a bundle")
    hooks = tmp_path / "hooks"
    result = run_hook("extra-data.d/50-guestha-guest",
                      {"TMP_HOOKS_PATH": str(hooks),
                       "DIB_GUESTHA_REPO": ROOT,
                       "DIB_GUESTHA_GUEST_BUNDLE": str(bundle)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (hooks / "guestha-guest" / "guestha-guest.pyz").read_bytes() == \
        b"not really a bundle"


def test_element_needs_the_repo(tmp_path):
    env = {"TMP_HOOKS_PATH": str(tmp_path)}
    full = {k: v for k, v in os.environ.items() if k != "DIB_GUESTHA_REPO"}
    full.update(env)
    result = subprocess.run(
        ["bash", os.path.join(ELEMENT, "extra-data.d/50-guestha-guest")],
        env=full, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DIB_GUESTHA_REPO" in result.stderr
