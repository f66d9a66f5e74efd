# SPDX-License-Identifier: Apache-2.0
"""The cloud harness's guest image: the guest daemon installed, no 9p.

Nova gives a guest no 9p share of the host, so the test initramfs of
tools/build-vm-assets.sh (which runs the host's python over 9p) cannot
serve.  This builds a guest that carries what it runs:

* the Debian kernel and virtio modules that tools/build-vm-assets.sh caches
  (it is run when its cache is empty);
* an initramfs holding busybox, the host's Debian python3 with its
  standard library (compiled, sources dropped) and the guest daemon
  INSTALLED the way an operator's image build installs it: the bundle of
  tools/build_guest_bundle.py, etc/guestha-guest.ini and
  etc/systemd/guestha-guest.service put in place by the diskimage-builder
  element's own install script (etc/guest-image/elements/guestha-guest/
  install.d/60-guestha-guest, with DESTDIR);
* an /init that starts busybox init, which runs the unit's ExecStart=
  line and restarts it when it exits (there is no systemd in this guest:
  the same command, the same RuntimeDirectory, Restart=always);
* Debian's qemu-ga on the org.qemu.guest_agent.0 port, through which the
  tests act inside the guest (``guest-exec``: hang the daemon with
  SIGSTOP, play an application with ``guestha-app``), the way an
  operator's tooling reaches a guest without a network.

Uploaded to Glance as three images: ``guestha-guest-kernel`` (aki),
``guestha-guest-ramdisk`` (ari) and ``guestha-guest`` (raw, a 1 MiB disk
the guest does not use) with kernel_id, ramdisk_id, os_command_line and
hw_qemu_guest_agent=yes (which gives the domain the virtio-serial
controller the compute agent hot-plugs its channel into).

Built into ~/.cache/guestha/cloud-image (GUESTHA_CLOUD_IMAGE_CACHE), rebuilt
when an input changes; ``python -m tools.cloud.image`` only builds.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CACHE = os.environ.get("GUESTHA_CLOUD_IMAGE_CACHE", os.path.join(
    os.path.expanduser("~"), ".cache", "guestha", "cloud-image"))
VM_CACHE = os.environ.get("GUESTHA_VM_CACHE", os.path.join(
    os.path.expanduser("~"), ".cache", "guestha", "vm"))
PYTHON = "/usr/bin/python3"  # Debian's: what a Debian image would carry
QEMU_GA = "/usr/sbin/qemu-ga"  # Debian's qemu-guest-agent
ELEMENT = os.path.join(ROOT, "etc", "guest-image", "elements",
                       "guestha-guest")
IMAGE = "guestha-guest"
COMMAND_LINE = "console=ttyS0 panic=-1"
# standard library parts the daemon never imports (a third of the size)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3",
               "ensurepip", "pydoc_data", "distutils", "site-packages",
               "dist-packages", "venv", "sqlite3", "curses", "dbm"}

INIT = r"""#!/bin/busybox sh
# guestha cloud image (tools/cloud/image.py): set up, then busybox init
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log
ln -sfn /run /var/run
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
log() { echo "guestha-image: $*" > /dev/console; }
log "up $(cut -d' ' -f1 /proc/uptime) s after boot"
while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null
done < /lib/modules/load.list
# the instance uuid (SMBIOS) as host name: Nova gives no metadata here
uuid=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null || true)
hostname "guestha-${uuid%%-*}"
cat > /etc/inittab <<'EOF'
::sysinit:/bin/sh -c '/sbin/guestha-ports &'
::respawn:/sbin/guestha-unit
::respawn:/sbin/guestha-qga
::shutdown:/sbin/guestha-stop
EOF
log "starting init at $(cut -d' ' -f1 /proc/uptime) s"
exec /bin/busybox init
"""

#: /dev/virtio-ports/<name> links (no udev here), kept up to date: the host
#: hot-plugs the guestha channel after boot and after every new QEMU.  The
#: same script as the test guest's (tools/build-vm-assets.sh).
PORTS_SCRIPT = os.path.join(ROOT, "tools", "guest", "virtio-ports.sh")

# What systemd does with the installed unit, for busybox init's respawn:
# ExecStart=, RuntimeDirectory=guestha (0755), RestartSec=1.
UNIT = r"""#!/bin/sh
unit=/etc/systemd/system/guestha-guest.service
cmd=$(sed -n 's/^ExecStart=//p' "$unit")
dir=$(sed -n 's/^RuntimeDirectory=//p' "$unit")
[ -n "$dir" ] && mkdir -p -m 0755 "/run/$dir"
[ -e /run/guestha-unit.started ] && sleep 1
touch /run/guestha-unit.started
echo "guestha-image: starting $cmd" > /dev/console
exec $cmd >> /dev/console 2>&1
"""

# qemu-ga on the port hw_qemu_guest_agent=yes gives: the tests drive the
# guest through it (guest-exec), as an operator's tooling would
QGA = r"""#!/bin/sh
port=/dev/virtio-ports/org.qemu.guest_agent.0
while [ ! -e "$port" ]; do sleep 0.2; done
exec /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run \
    -f /run/qemu-ga.pid >> /dev/console 2>&1
"""

# the pid of the guest daemon (the unit's ExecStart), for the tests' hang
DAEMON_PID = r"""#!/bin/sh
found=1
for d in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$d/cmdline" |
        grep -q '^[^ ]*python[^ ]* /usr/local/bin/guestha-guest ' &&
        echo "${d#/proc/}" && found=0
done
exit $found
"""

# An application of the guest on the daemon's application API (the
# installed bundle's guestha_guest.client), for the server-group tests:
#   guestha-app listen FILE   subscribe; one JSON line per event to FILE
#   guestha-app broadcast TEXT
#   guestha-app status        the group's members and their Nova states
APP = r"""#!/usr/bin/python3
import json
import sys
sys.path.insert(0, "/usr/local/bin/guestha-guest")
from guestha_guest import client  # noqa: E402

cmd = sys.argv[1]
if cmd == "listen":
    with open(sys.argv[2], "a") as out:
        c = client.GuestHAClient(timeout=10).connect()
        c.subscribe("broadcast", "notification")
        out.write(json.dumps({"listening": True}) + "\n")
        out.flush()
        for event in c.events():
            out.write(json.dumps(event) + "\n")
            out.flush()
elif cmd == "broadcast":
    with client.GuestHAClient(timeout=10) as c:
        print(json.dumps(c.broadcast(sys.argv[2].encode())))
elif cmd == "status":
    with client.GuestHAClient(timeout=15) as c:
        print(json.dumps(c.status(timeout=10)))
else:
    sys.exit("unknown command %s" % cmd)
"""

# busybox reboot/poweroff: SIGTERM first, so the daemon tells the host
# "exit" (stopping on purpose is no fault), as systemd's KillSignal would
STOP = r"""#!/bin/sh
pids=$(pidof python3 python3.11 2>/dev/null)
[ -n "$pids" ] && kill -TERM $pids
i=0
while [ $i -lt 50 ] && [ -n "$pids" ] && kill -0 $pids 2>/dev/null; do
    sleep 0.1; i=$((i + 1))
done
"""


def _sha_of_files(paths):
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def vm_assets():
    """(kernel, modules dir), building them with build-vm-assets.sh."""
    current = os.path.join(VM_CACHE, "current")
    if not os.path.exists(os.path.join(current, "modules", "load.list")):
        subprocess.run(["bash", os.path.join(ROOT, "tools",
                                             "build-vm-assets.sh"),
                        "--quiet"], check=True)
    return (os.path.realpath(os.path.join(current, "vmlinuz")),
            os.path.realpath(os.path.join(current, "modules")))


def inputs_hash(kernel, modules):
    files = [os.path.abspath(__file__), PORTS_SCRIPT,
             os.path.join(ROOT, "tools", "build_guest_bundle.py"),
             os.path.join(ROOT, "etc", "guestha-guest.ini"),
             os.path.join(ROOT, "etc", "systemd", "guestha-guest.service"),
             os.path.join(ELEMENT, "install.d", "60-guestha-guest"),
             os.path.join(modules, "load.list"),
             os.path.realpath(PYTHON), QEMU_GA]
    files += glob.glob(os.path.join(ROOT, "guestha_guest", "**", "*.py"),
                       recursive=True)
    return _sha_of_files(files)[:16] + "-" + os.path.basename(
        os.path.dirname(kernel))


def _libs_of(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _copy_into(root, path):
    dest = root + path
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy2(os.path.realpath(path), dest)


def build(say=print):
    """Build (or reuse) the kernel, initramfs and disk: their paths."""
    kernel, modules = vm_assets()
    key = inputs_hash(kernel, modules)
    out = os.path.join(CACHE, key)
    paths = {"kernel": os.path.join(out, "vmlinuz"),
             "ramdisk": os.path.join(out, "initramfs.img"),
             "disk": os.path.join(out, "disk.raw"), "key": key}
    if all(os.path.exists(paths[k]) for k in ("kernel", "ramdisk", "disk")):
        return paths
    say("guest image: building %s ..." % key)
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        root = os.path.join(work, "root")
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin",
                  "etc", "proc", "sys", "dev", "run", "tmp", "root",
                  "lib/modules", "var/log"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
        for ko in glob.glob(os.path.join(modules, "*.ko")) + [
                os.path.join(modules, "load.list")]:
            shutil.copy2(ko, os.path.join(root, "lib", "modules"))
        # python: the interpreter, its standard library, the libraries
        # both link against
        python = os.path.realpath(PYTHON)
        version = os.path.basename(python)  # python3.11
        _copy_into(root, python)
        os.symlink(version, os.path.join(root, "usr", "bin", "python3"))
        stdlib = os.path.join("/usr/lib", version)
        for name in os.listdir(stdlib):
            if name in STDLIB_SKIP or name.startswith("config-"):
                continue
            src = os.path.join(stdlib, name)
            dst = root + src
            if os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=False, ignore=(
                    shutil.ignore_patterns("__pycache__", "test", "tests")))
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst)
        libs = set(_libs_of(python))
        for so in glob.glob(root + stdlib + "/lib-dynload/*.so"):
            libs.update(_libs_of(so))
        for lib in libs:
            _copy_into(root, lib)
        # compiled in place (sourceless .pyc), sources dropped: half the
        # size and no compile on the guest's first import under TCG
        subprocess.run([python, "-m", "compileall", "-q", "-b", "-j", "2",
                        root + stdlib], check=True)
        for dirpath, _, names in os.walk(root + stdlib):
            for name in names:
                if name.endswith(".py"):
                    os.unlink(os.path.join(dirpath, name))
        # the guest daemon, installed by the image element's script
        staging = os.path.join(work, "staging")
        os.makedirs(staging)
        subprocess.run([sys.executable, os.path.join(
            ROOT, "tools", "build_guest_bundle.py"), "--output",
            os.path.join(staging, "guestha-guest.pyz")], check=True,
            stdout=subprocess.DEVNULL)
        # the operator's one setting: the guest recommends a reboot when
        # it is unhealthy or hung (the host's policy still decides)
        with open(os.path.join(ROOT, "etc", "guestha-guest.ini")) as f:
            ini = f.read()
        assert "#corrective_action = none\n" in ini
        with open(os.path.join(staging, "guestha-guest.ini"), "w") as f:
            f.write(ini.replace("#corrective_action = none\n",
                                "corrective_action = reboot\n"))
        shutil.copy2(os.path.join(ROOT, "etc", "systemd",
                                  "guestha-guest.service"),
                     os.path.join(staging, "guestha-guest.service"))
        env = dict(os.environ, DESTDIR=root, GUESTHA_GUEST_STAGING=staging)
        # not systemctl --root: the element's fallback makes the same link
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        subprocess.run(["bash", os.path.join(ELEMENT, "install.d",
                                             "60-guestha-guest")],
                       check=True, env=env)
        # qemu-ga, the host's (Debian's), with its libraries
        _copy_into(root, QEMU_GA)
        for lib in _libs_of(QEMU_GA):
            _copy_into(root, lib)
        with open(PORTS_SCRIPT) as f:
            ports = f.read()
        for path, text in (("init", INIT), ("sbin/guestha-ports", ports),
                           ("sbin/guestha-unit", UNIT),
                           ("sbin/guestha-stop", STOP),
                           ("sbin/guestha-qga", QGA),
                           ("sbin/guestha-daemon-pid", DAEMON_PID),
                           ("usr/bin/guestha-app", APP)):
            with open(os.path.join(root, path), "w") as f:
                f.write(text)
            os.chmod(os.path.join(root, path), 0o755)
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/sh\n")
        with open(os.path.join(root, "etc", "group"), "w") as f:
            f.write("root:x:0:\n")
        target = os.path.join(work, "out")
        os.makedirs(target)
        files = subprocess.run(
            "cd %s && find . | LC_ALL=C sort" % root, shell=True,
            check=True, capture_output=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"],
                              input=files, cwd=root, check=True,
                              capture_output=True).stdout
        with open(os.path.join(target, "initramfs.img"), "wb") as f:
            f.write(subprocess.run(["gzip", "-6"], input=cpio, check=True,
                                   capture_output=True).stdout)
        shutil.copy2(kernel, os.path.join(target, "vmlinuz"))
        with open(os.path.join(target, "disk.raw"), "wb") as f:
            f.truncate(1024 * 1024)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(target, out)
    say("guest image: built (initramfs %d KiB)"
        % (os.path.getsize(paths["ramdisk"]) // 1024))
    return paths


def ensure_images(conn, say=print):
    """Upload the three images unless Glance has this build already."""
    paths = build(say)
    image = conn.image.find_image(IMAGE)
    if image is not None and image.properties.get(
            "guestha_build") == paths["key"]:
        say("guest image: %s in Glance (%s)" % (IMAGE, image.id))
        return image
    for name in (IMAGE, IMAGE + "-kernel", IMAGE + "-ramdisk"):
        for old in list(conn.image.images(name=name)):
            conn.image.delete_image(old)
    common = {"visibility": "public", "disable_vendor_agent": False,
              "guestha_build": paths["key"]}
    kernel = conn.image.create_image(
        name=IMAGE + "-kernel", filename=paths["kernel"], disk_format="aki",
        container_format="aki", wait=True, **common)
    ramdisk = conn.image.create_image(
        name=IMAGE + "-ramdisk", filename=paths["ramdisk"],
        disk_format="ari", container_format="ari", wait=True, **common)
    image = conn.image.create_image(
        name=IMAGE, filename=paths["disk"], disk_format="raw",
        container_format="bare", wait=True, kernel_id=kernel.id,
        ramdisk_id=ramdisk.id, os_command_line=COMMAND_LINE,
        hw_qemu_guest_agent="yes", **common)
    say("guest image: %s uploaded (%s)" % (IMAGE, image.id))
    return image


if __name__ == "__main__":
    print(build())
