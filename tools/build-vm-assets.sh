#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Build (or reuse) the kernel and initramfs of guestha's test guest.
#
#   bash tools/build-vm-assets.sh [--quiet]
#
# The test guest (guestha/testing/guest_vms.py) is a tiny Linux VM booted
# directly from a Debian kernel and a busybox initramfs, under QEMU/TCG.
# It has no disk: its /init mounts the HOST's root file system read-only
# over 9p and runs the host's own python3 in a chroot, with this
# repository on PYTHONPATH.
# So the guest always runs the guest daemon of the checkout under test.
#
# Output, in a cache outside the repository (so a fresh clone reuses it):
#
#   ${GUESTHA_VM_CACHE:-$HOME/.cache/guestha/vm}/
#       <kernel version>/vmlinuz          the kernel
#       <kernel version>/initramfs-<hash>.img    busybox, the modules, /init
#       <kernel version>/initramfs-<hash>.stamp  what it was built from
#       <kernel version>/initramfs.img -> the latest initramfs-<hash>.img
#       current -> <kernel version>       what guest_vms.py boots
#
# Idempotent: with the kernel and an up-to-date initramfs in the cache it
# only checks and prints (a second or two).  It installs, when missing and
# run as root, with apt-get --no-install-recommends: busybox-static and
# cpio (to build the initramfs) and qemu-guest-agent (on the HOST: the guest
# can run the host's qemu-ga from the 9p root).  The kernel comes from
# `apt-get download linux-image-amd64`'s versioned package, extracted with
# dpkg-deb (nothing is installed on the host).  GUESTHA_VM_KERNEL_PKG names
# another kernel package.
#
# The guest's /init (busybox sh), in short:
#   * mounts proc, sysfs, devtmpfs; loads virtio_pci, virtio_console,
#     9pnet_virtio, 9p, virtio_rng and their dependencies;
#   * keeps /dev/virtio-ports/<name> links up to date (a loop, every 0.2 s:
#     there is no udev, and a channel may be hot-plugged later);
#   * mounts the 9p share "hostroot" (the host's /) read-only on /newroot,
#     tmpfs on its /run, /tmp, /var/tmp, /dev/shm, the read-only 9p share
#     "guestha_src" (the checkout under test) on /newroot/run/guestha-src,
#     and the read-write 9p share "vmdir" (a per-VM host directory) on
#     /newroot/run/vm;
#   * execs busybox init, which runs (and respawns) the guest launcher in
#     the chroot: <python> /run/guestha-src/tools/vm_guest_control.py,
#     which starts the guest daemon and serves the test control channel.
#     A busybox "reboot" (SIGTERM to PID 1) stops the daemon cleanly first.
# The checkout has a share of its own, mounted at a fixed guest path, and
# is never looked up at its host path: a clone under /tmp or /var/tmp (a
# tmpfs in the guest), or in a directory whose name has a space (the
# kernel command line splits on spaces), works like any other (issue 8).
# Kernel command line parameters read by /init: guestha.python=PATH
# (default /usr/bin/python3), guestha.hostname=NAME; guestha.repo=DIR (a
# path on the host's root) only when the domain has no guestha_src share
# (a test harness older than this initramfs).
#
# The initramfs is cached under a name with a hash of this script and
# tools/guest/virtio-ports.sh, initramfs-<hash>.img
# (guestha/testing/guest_vms.py looks for the one of its checkout), so
# checkouts at different versions sharing the cache do not rebuild it in
# turn under each other's running tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GUESTHA_VM_CACHE:-$HOME/.cache/guestha/vm}"
KERNEL_META="${GUESTHA_VM_KERNEL_PKG:-linux-image-amd64}"
HOST_PACKAGES=(busybox-static cpio qemu-guest-agent)
# modules the guest needs (their dependencies are added)
MODULES=(virtio_pci virtio_console 9pnet_virtio 9p virtio_rng)
QUIET=0
[[ "${1:-}" == "--quiet" ]] && QUIET=1

say() { (( QUIET )) || echo "build-vm-assets: $*"; }
die() { echo "build-vm-assets: ERROR: $*" >&2; exit 1; }
started=$SECONDS

mkdir -p "$CACHE"
# one builder at a time (parallel test runs share the cache)
exec 9>"$CACHE/.lock"
flock 9

# --- 1. host packages -----------------------------------------------------
missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
apt_updated=0
apt_update() {
    (( apt_updated )) && return 0
    say "apt-get update ..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    apt_updated=1
}
if (( ${#missing[@]} )); then
    [[ "$(id -u)" -eq 0 ]] || die "missing packages: ${missing[*]}; run as" \
        "root or: sudo apt-get install --no-install-recommends ${missing[*]}"
    say "installing ${missing[*]} ..."
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi
BUSYBOX="$(command -v busybox || true)"
[[ -x /bin/busybox ]] && BUSYBOX=/bin/busybox
[[ -n "$BUSYBOX" ]] || die "busybox not found"
file_of_busybox="$(readlink -f "$BUSYBOX")"
if ldd "$file_of_busybox" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; the initramfs needs busybox-static"
fi

# --- 2. which kernel ------------------------------------------------------
kernel_pkg() {  # the versioned package the meta-package depends on
    apt-cache depends "$KERNEL_META" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg="$(kernel_pkg)"
if [[ -z "$pkg" && ! -e "$CACHE/current/vmlinuz" ]]; then
    apt_update
    pkg="$(kernel_pkg)"
fi
if [[ -z "$pkg" ]]; then
    [[ -e "$CACHE/current/vmlinuz" ]] || die "cannot resolve $KERNEL_META" \
        "to a kernel package (apt-cache depends $KERNEL_META)"
    kver="$(basename "$(readlink -f "$CACHE/current")")"
    say "no kernel package known to apt; reusing the cached $kver"
else
    kver="${pkg#linux-image-}"
fi
KDIR="$CACHE/$kver"

# --- 3. kernel and modules ------------------------------------------------
if [[ ! -s "$KDIR/vmlinuz" || ! -s "$KDIR/modules/load.list" ]]; then
    [[ -n "$pkg" ]] || die "no kernel package to download"
    work="$(mktemp -d "$CACHE/.work.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    say "downloading $pkg (about 70 MB) ..."
    if ! (cd "$work" && apt-get download "$pkg" >/dev/null 2>"$work/err"); then
        apt_update
        (cd "$work" && apt-get download "$pkg" >/dev/null 2>"$work/err") ||
            die "apt-get download $pkg failed: $(cat "$work/err")"
    fi
    say "extracting $pkg ..."
    dpkg-deb -x "$work"/*.deb "$work/x"
    vmlinuz="$(ls "$work"/x/boot/vmlinuz-* | head -1)"
    [[ -f "$vmlinuz" ]] || die "no vmlinuz in $pkg"
    moddir="$(ls -d "$work"/x/lib/modules/* | head -1)"
    mkdir -p "$work/out/modules"
    # Resolve the dependencies from modules.dep when the package has one,
    # else from each module's "depends=" (.modinfo); decompress .ko.xz /
    # .ko.zst / .ko.gz, which busybox insmod may not load.
    loaded="$(/usr/bin/python3 - "$moddir" "$work/out/modules" \
        "${MODULES[@]}" <<'PY'
import gzip, lzma, os, re, shutil, subprocess, sys

moddir, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
files = {}
for dirpath, _, names in os.walk(os.path.join(moddir, "kernel")):
    for name in names:
        m = re.match(r"(.+)\.ko(\.xz|\.zst|\.gz)?$", name)
        if m:
            files[m.group(1).replace("-", "_")] = os.path.join(dirpath, name)
builtin = set()
try:
    with open(os.path.join(moddir, "modules.builtin")) as f:
        for line in f:
            base = os.path.basename(line.strip())
            builtin.add(re.sub(r"\.ko.*$", "", base).replace("-", "_"))
except OSError:
    pass


def read(path):
    if path.endswith(".xz"):
        return lzma.open(path).read()
    if path.endswith(".gz"):
        return gzip.open(path).read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True,
                              stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


def depends(data):
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    deps = m.group(1).decode() if m else ""
    return [d.replace("-", "_") for d in deps.split(",") if d]


order, seen = [], set()


def add(name):
    if name in seen:
        return
    seen.add(name)
    if name not in files:
        if name in builtin:
            return
        sys.exit("module %s not found" % name)
    data = read(files[name])
    for dep in depends(data):
        add(dep)
    target = os.path.join(out, name + ".ko")
    with open(target, "wb") as f:
        f.write(data)
    order.append(name)


for name in wanted:
    add(name)
with open(os.path.join(out, "load.list"), "w") as f:
    f.write("".join(n + ".ko\n" for n in order))
print(" ".join(order))
PY
)" || die "cannot collect the modules from $pkg"
    say "modules (in load order): $loaded"
    cp "$vmlinuz" "$work/out/vmlinuz"
    rm -rf "$KDIR.new"
    mv "$work/out" "$KDIR.new"
    rm -rf "$KDIR"
    mv "$KDIR.new" "$KDIR"
    rm -rf "$work"
    trap - EXIT
    say "kernel $kver cached in $KDIR"
else
    say "kernel $kver: cached"
fi

# --- 4. initramfs ---------------------------------------------------------
# One per version of this script and of the ports script, the same as the
# cloud image's (tools/cloud/image.py); guestha/testing/guest_vms.py
# computes the same hash.  Rebuilt when busybox or the module set changes too.
PORTS_SCRIPT="$ROOT/tools/guest/virtio-ports.sh"
tag="$(cat "${BASH_SOURCE[0]}" "$PORTS_SCRIPT" | sha256sum | cut -c1-16)"
INITRD="$KDIR/initramfs-$tag.img"
STAMP="$KDIR/initramfs-$tag.stamp"
stamp="$( { cat "${BASH_SOURCE[0]}" "$PORTS_SCRIPT";
            sha256sum "$file_of_busybox";
            cat "$KDIR/modules/load.list"; } | sha256sum | cut -d' ' -f1)"
if [[ -s "$INITRD" && "$(cat "$STAMP" 2>/dev/null)" == "$stamp" ]]; then
    say "initramfs: cached"
    touch "$INITRD"
else
    say "building the initramfs ..."
    work="$(mktemp -d "$CACHE/.initramfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    r="$work/root"
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,newroot,tmp} \
        "$r/lib/modules"
    cp "$file_of_busybox" "$r/bin/busybox"
    cp "$KDIR"/modules/*.ko "$KDIR/modules/load.list" "$r/lib/modules/"
    install -m 755 "$PORTS_SCRIPT" "$r/bin/ghvm-ports"

    cat > "$r/init" <<'INIT'
#!/bin/busybox sh
# guestha test guest: set up, then exec busybox init (tools/build-vm-assets.sh)
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "ghvm-init: $*" > /dev/console; }
log "up $(cut -d' ' -f1 /proc/uptime) s after boot"

# the checkout under test: share "guestha_src", at a fixed path (never its
# host path: the tmpfs below hides the host's /tmp and /var/tmp)
SRC=/run/guestha-src
HOST_REPO=/work/main
PY=/usr/bin/python3
NAME=ghtest
for word in $(cat /proc/cmdline); do
    case "$word" in
        guestha.repo=*) HOST_REPO="${word#*=}" ;;
        guestha.python=*) PY="${word#*=}" ;;
        guestha.hostname=*) NAME="${word#*=}" ;;
    esac
done
hostname "$NAME"

while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null || log "insmod $mod failed"
done < /lib/modules/load.list

# /bin/ghvm-ports (tools/guest/virtio-ports.sh) keeps
# /dev/virtio-ports/<name> -> ../vportNpM up to date (no udev here)

N=/newroot
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose \
        hostroot "$N"; then
    log "cannot mount the 9p share hostroot; dropping to a shell"
    exec sh
fi
mount -t proc proc "$N/proc"
mount -t sysfs sysfs "$N/sys"
mount -t devtmpfs devtmpfs "$N/dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts "$N/dev/pts" 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs "$N/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$N/run"
mount -t tmpfs -o mode=1777 tmpfs "$N/tmp"
mount -t tmpfs -o mode=1777 tmpfs "$N/var/tmp"
mkdir -p "$N/run/vm" "$N/run/lock" "$N$SRC"
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose \
        guestha_src "$N$SRC" 2>/dev/null; then
    REPO=$SRC
else
    REPO=$HOST_REPO
    log "no guestha_src share: running $REPO of the host's root"
fi
if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=none \
        vmdir "$N/run/vm" 2>/dev/null; then
    log "no vmdir share: /run/vm is a tmpfs directory"
fi
echo "$REPO" > /run-repo
echo "$PY" > /run-python

cat > /bin/ghvm-launch <<EOF
#!/bin/sh
# the guest launcher, in the chroot; busybox init respawns it
exec chroot $N /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PYTHONPATH=$REPO PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    $PY $REPO/tools/vm_guest_control.py --vm-dir /run/vm --repo $REPO \
    --python $PY >> $N/run/vm/control.log 2>&1
EOF
# a clean stop (busybox reboot/poweroff): the daemon says exit first
cat > /bin/ghvm-shutdown <<EOF
#!/bin/sh
echo "ghvm-init: shutting down" > /dev/console
pid=\$(cat $N/run/ghtest/control.pid 2>/dev/null)
[ -n "\$pid" ] && kill -TERM "\$pid" 2>/dev/null
i=0
while [ \$i -lt 50 ] && [ -n "\$pid" ] && kill -0 "\$pid" 2>/dev/null; do
    sleep 0.1; i=\$((i + 1))
done
EOF
chmod 755 /bin/ghvm-launch /bin/ghvm-shutdown
cat > /etc/inittab <<'EOF'
::sysinit:/bin/sh -c '/bin/ghvm-ports &'
::respawn:/bin/ghvm-launch
::shutdown:/bin/ghvm-shutdown
EOF
log "starting the guest launcher ($PY, $REPO) at $(cut -d' ' -f1 /proc/uptime) s"
exec /bin/busybox init
INIT
    chmod 755 "$r/init"
    (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) |
        gzip -1 > "$work/initramfs.img"
    mv "$work/initramfs.img" "$INITRD"
    echo "$stamp" > "$STAMP"
    rm -rf "$work"
    trap - EXIT
    say "initramfs built ($(du -k "$INITRD" | cut -f1) KiB)"
fi
# initramfs.img: the latest, for an older harness that knows no hash names;
# versions unused for 30 days go
rm -f "$KDIR/initramfs.stamp"  # of the layout before the hash names
ln -sfn "$(basename "$INITRD")" "$KDIR/initramfs.img.new"
mv -T "$KDIR/initramfs.img.new" "$KDIR/initramfs.img"
find "$KDIR" -maxdepth 1 -name 'initramfs-*.img' -mtime +30 \
    -exec sh -c 'rm -f "$1" "${1%.img}.stamp"' sh {} \;

ln -sfn "$kver" "$CACHE/current.new"
mv -T "$CACHE/current.new" "$CACHE/current"
say "ready in $(( SECONDS - started )) s: $KDIR/vmlinuz, $INITRD"
