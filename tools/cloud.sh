#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A real single-node OpenStack for guestha's tests (issue 9).
#
#   bash tools/cloud.sh up [--no-compute] [--no-image]
#   bash tools/cloud.sh status [--json]
#   bash tools/cloud.sh down
#
# Keystone, Placement, Glance, Nova (api, conductor, scheduler, compute with
# the libvirt driver, QEMU/TCG) and Masakari (api, engine), the releases
# pinned in tools/cloud/requirements.txt (every package frozen in
# tools/cloud/constraints.txt), installed from PyPI into their own
# virtualenv, on this machine's MariaDB and RabbitMQ (started if they are
# not running).  "up" is idempotent; "down" leaves no process, domain,
# database or vhost behind.  doc/source/testing.rst ("The real OpenStack
# cloud harness") says what is where.
#
#   GUESTHA_CLOUD_VENV  the virtualenv (default ~/.cache/guestha/cloud-venv,
#                       outside the work tree so every clone shares it;
#                       rebuilt when requirements or constraints change)
#   GUESTHA_CLOUD_DIR   configuration, logs, images, instances, pid files
#                       (default /tmp/guestha-cloud)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GUESTHA_CLOUD_VENV:-$HOME/.cache/guestha/cloud-venv}"
export GUESTHA_CLOUD_VENV="$VENV"
REQS="$ROOT/tools/cloud/requirements.txt"
CONSTRAINTS="$ROOT/tools/cloud/constraints.txt"
PYTHON="${GUESTHA_CLOUD_PYTHON:-python3}"
APT_PACKAGES=(qemu-utils libvirt-dev pkg-config gcc)

say() { echo "cloud: $*"; }
die() { echo "cloud: ERROR: $*" >&2; exit 1; }

command="${1:-}"
case "$command" in
    up|down|status) ;;
    *) die "usage: bash tools/cloud.sh up [--no-compute] [--no-image] |" \
           "down | status [--json]" ;;
esac

if [[ "$command" == up ]]; then
    # qemu-img for nova-compute; libvirt-python builds against libvirt-dev
    missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$st" == "install ok installed" ]] || missing+=("$pkg")
    done
    if (( ${#missing[@]} )); then
        [[ "$(id -u)" -eq 0 ]] || die "missing ${missing[*]}: run as root" \
            "or apt-get install --no-install-recommends ${missing[*]}"
        say "installing ${missing[*]} ..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq </dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            </dev/null >/dev/null
    fi

    # The venv, rebuilt when the pins change (a stamp of their hash).
    want="$(cat "$REQS" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$VENV/.guestha-stamp" 2>/dev/null)" != "$want" ]]; then
        started=$SECONDS
        say "installing the OpenStack services into $VENV (about 1-2 min) ..."
        mkdir -p "$(dirname "$VENV")"
        exec 9>"$VENV.lock"
        flock 9
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        # (this machine's pip.conf names local indexes that may be absent:
        # drop pip's warnings about them)
        "$VENV/bin/pip" install -q -U pip 2>&1 |
            grep -v "is ignored: it is neither" || true
        "$VENV/bin/pip" install -q -r "$REQS" -c "$CONSTRAINTS" 2>&1 |
            grep -v "is ignored: it is neither" || true
        "$VENV/bin/python" -c "import nova, keystone, glance, placement, \
masakari, openstack, libvirt, pymysql, gunicorn" ||
            die "the install into $VENV is incomplete"
        echo "$want" > "$VENV/.guestha-stamp"
        say "installed in $(( SECONDS - started )) s"
    fi
elif [[ ! -x "$VENV/bin/python" ]]; then
    # nothing installed: nothing can be running either, but down/status
    # still look (for processes, databases, the vhost) with python3
    VENV_PY="$PYTHON"
fi

cd "$ROOT"
exec "${VENV_PY:-$VENV/bin/python}" -m tools.cloud.harness "$@"
