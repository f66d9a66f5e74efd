#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up libvirtd and QEMU for guestha's real-libvirt tests (idempotent;
# run as root).
#
#   bash tools/libvirt-setup.sh
#
# 1. Installs QEMU and the libvirt daemon from Debian if they are missing.
# 2. Writes a marked block into /etc/libvirt/qemu.conf so QEMU runs as root
#    with no cgroups, namespaces or security driver.  Why: on this kind of
#    machine (a container, no usable KVM) QEMU as the default user makes
#    every domain start take ~52 s (libvirt re-probes QEMU because that
#    user cannot open /dev/kvm); as root a start takes ~0.4 s.  cgroups
#    are read-only in containers, hence no controllers and no namespaces.
#    Not a production setting: test hosts only.
# 3. Starts virtlogd and libvirtd (daemonised by hand; no systemd here) if
#    they are not running, and waits (<= 60 s) until libvirtd answers.
set -euo pipefail

PACKAGES=(qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu
          libvirt-clients)
QEMU_CONF=/etc/libvirt/qemu.conf
MARK_BEGIN="# BEGIN guestha test settings (tools/libvirt-setup.sh)"
MARK_END="# END guestha test settings"
URI=qemu:///system
WAIT_S=60

say() { echo "libvirt-setup: $*"; }
die() { echo "libvirt-setup: ERROR: $*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (it installs packages and" \
    "starts libvirtd)"

# --- 1. packages ----------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    say "installing ${missing[*]} (about 10-60 s) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        </dev/null >/dev/null
    say "packages installed"
else
    say "packages present: ${PACKAGES[*]}"
fi

# libvirtd looks up its built-in default QEMU user before it reads
# qemu.conf and refuses to start without it; libvirt-daemon-system would
# have created it.
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --user-group --no-create-home \
        --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
    say "created the system user libvirt-qemu"
fi

# --- 2. qemu.conf ---------------------------------------------------------
block="$MARK_BEGIN
user = \"root\"
group = \"root\"
cgroup_controllers = [ ]
namespaces = [ ]
security_driver = \"none\"
$MARK_END"
if [[ ! -f "$QEMU_CONF" ]]; then
    # The commented default file comes with libvirt-daemon-system, which we
    # do not install (it pulls in systemd units and more); libvirtd uses its
    # built-in defaults for whatever the file does not set.
    mkdir -p "$(dirname "$QEMU_CONF")"
    printf '# libvirtd QEMU driver settings\n' > "$QEMU_CONF"
    say "created $QEMU_CONF"
fi
# awk with exact line comparison: the markers hold '/' and parentheses
block_lines() {  # print (keep=1) or drop (keep=0) our block of a file
    awk -v b="$MARK_BEGIN" -v e="$MARK_END" -v keep="$1" '
        $0 == b { inside = 1 }
        (inside && keep) || (!inside && !keep) { print }
        $0 == e { inside = 0 }' "$QEMU_CONF"
}
current="$(block_lines 1)"
conf_changed=0
if [[ "$current" != "$block" ]]; then
    # drop an older version of our block, then append the current one
    rest="$(block_lines 0)"
    printf '%s\n%s\n' "$rest" "$block" > "$QEMU_CONF"
    conf_changed=1
    say "wrote the guestha block into $QEMU_CONF"
else
    say "$QEMU_CONF already has the guestha block"
fi

# --- 3. daemons -----------------------------------------------------------
running() { pgrep -x "$1" >/dev/null 2>&1; }

# Log directories that libvirt-daemon-system would otherwise create.
mkdir -p /var/log/libvirt/qemu
if ! running virtlogd; then
    say "starting virtlogd"
    virtlogd -d
fi
if running libvirtd && (( conf_changed )); then
    # qemu.conf is read at start only
    say "restarting libvirtd to read the new $QEMU_CONF"
    kill "$(pgrep -x libvirtd)"
    for _ in $(seq 1 50); do running libvirtd || break; sleep 0.1; done
fi
if ! running libvirtd; then
    say "starting libvirtd"
    libvirtd -d
fi

say "waiting for libvirtd on $URI (<= ${WAIT_S} s; ~8 s after a cold" \
    "start) ..."
start=$SECONDS
until timeout 10 virsh -c "$URI" version >/dev/null 2>&1; do
    elapsed=$(( SECONDS - start ))
    running libvirtd || die "libvirtd exited; run 'libvirtd' in the" \
        "foreground to see why"
    (( elapsed < WAIT_S )) || die "libvirtd did not answer on $URI within" \
        "${WAIT_S} s"
    say "still waiting for libvirtd (${elapsed} s) ..."
    sleep 1
done
say "libvirtd ready on $URI after $(( SECONDS - start )) s:" \
    "$(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' ||
       true)"
