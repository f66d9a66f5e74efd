#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up a development environment for guestha in .venv (idempotent).
#
#   bash tools/setup.sh
#
# 1. As root, installs the Debian packages that libvirt-python builds
#    against, if they are missing (one apt-get update, then install);
#    then sets up libvirtd (tools/libvirt-setup.sh) and the test VM's
#    kernel and initramfs (tools/build-vm-assets.sh).
# 2. Creates .venv with python3 (>= 3.11; set PYTHON to choose another).
# 3. Installs requirements.txt, test-requirements.txt, doc/requirements.txt
#    and guestha itself with its extras (compute, vitrage, and cli: the
#    tests run the real `openstack` command with the guestha plugin)
#    (editable) under upper-constraints.txt.  A stamp file remembers a hash
#    of those inputs, so a second run with nothing changed skips pip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.guestha-stamp"
# libvirt-python builds against the first three; tests/unit/test_devstack.py
# runs shellcheck; tests/functional/test_prometheus.py runs prometheus and
# alertmanager (and checks etc/prometheus with promtool).
APT_PACKAGES=(libvirt-dev pkg-config gcc shellcheck
              prometheus prometheus-alertmanager)
# What the pip step depends on: change any of these and it runs again.
PIP_INPUTS=(requirements.txt test-requirements.txt doc/requirements.txt
            upper-constraints.txt setup.cfg setup.py pyproject.toml)

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# --- 1. Debian packages --------------------------------------------------
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
else
    say "no dpkg here; make sure these are installed: ${APT_PACKAGES[*]}"
fi
if (( ${#missing[@]} )); then
    if [[ "$(id -u)" -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]}; run as root or:" \
            "sudo apt-get install ${missing[*]}"
    fi
    say "installing apt packages: ${missing[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        </dev/null >/dev/null
    say "apt packages installed"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi
# As root, also libvirtd and QEMU for the real-libvirt tests, and the
# kernel and initramfs of the real-VM tests (cached outside the tree, in
# ${GUESTHA_VM_CACHE:-~/.cache/guestha/vm}; both idempotent and quick
# when done).
if [[ "$(id -u)" -eq 0 ]]; then
    bash "$ROOT/tools/libvirt-setup.sh"
    bash "$ROOT/tools/build-vm-assets.sh"
else
    say "not root: skipping libvirtd and the test VM's assets" \
        "(the libvirt and real-VM tests will be skipped)"
fi

# --- 2. virtualenv -------------------------------------------------------
if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "$VENV is broken (its interpreter does not run); recreating it"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null || die "$PYTHON is $("$PYTHON" -V 2>&1);" \
        "the host side needs Python >= 3.11 (set PYTHON=/path/to/python3.11)"
    say "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
else
    say "using existing $VENV ($("$VENV/bin/python" -V 2>&1))"
fi

# --- 3. pip --------------------------------------------------------------
want="$( { "$VENV/bin/python" -V 2>&1; cat "${PIP_INPUTS[@]}" 2>/dev/null; } |
         sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" == "$have" ]]; then
    say "python packages up to date (stamp matches), skipping pip"
else
    # pbr takes the version from git; a tree without commits (a fresh
    # `git init`, an export) has none, so give it one.
    if ! git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
        export PBR_VERSION="${PBR_VERSION:-0.0.1.dev0}"
        say "no git history here; building with PBR_VERSION=$PBR_VERSION"
    fi
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    say "upgrading pip ..."
    "$VENV/bin/python" -m pip install -qq --upgrade pip </dev/null
    say "installing requirements and guestha (editable) ..."
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -qq \
        -c upper-constraints.txt \
        -r requirements.txt -r test-requirements.txt \
        -r doc/requirements.txt -e ".[vitrage,compute,cli]" </dev/null
    echo "$want" > "$STAMP"
    say "python packages installed"
fi
say "done: $VENV is ready"
