#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Lint and test guestha: what CI runs (.ci/run) and what developers run.
#
#   bash tools/run-tests.sh [pytest arguments]
#
# 1. tools/setup.sh (quick when nothing changed).
# 2. Lint: ruff check and flake8 with OpenStack's hacking checks on the
#    whole tree (ruff.toml, tox.ini [flake8]), doc8 on the documentation
#    (tox.ini [doc8]), reno lint on the release notes.
# 3. pytest on tests/ (or on the given arguments) in .venv.
# 4. The documentation, built with sphinx-build -W.
# 5. The protocol and guest tests again under Python 3.8, the oldest Python
#    the guest daemon supports, in .venv38 with only pytest and hypothesis
#    installed (so they also prove the guest needs nothing else).  Skipped,
#    with a message, when no Python 3.8 is found or GUESTHA_SKIP_PY38=1.
#    PYTHON38=/path/to/python3.8 chooses the interpreter.
# 6. The scenarios against a real single-node OpenStack (tests/cloud,
#    brought up and down by tools/cloud.sh), when no pytest arguments are
#    given; GUESTHA_SKIP_CLOUD=1 skips them.
#
# Every step runs even when an earlier one failed; the exit status is
# non-zero if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV38="$ROOT/.venv38"
STAMP38="$VENV38/.guestha-stamp"
GUEST_REQUIREMENTS=(pytest hypothesis)
GUEST_TEST_DIRS=(tests/unit/protocol tests/unit/guest)
PYTEST_FLAGS=(-q -ra -p no:cacheprovider)
# What doc8 checks (as tox -e pep8 does; doc8 takes no paths from tox.ini).
DOC8_PATHS=(doc/source releasenotes/source README.rst devstack/README.rst
            etc/guest-image/elements/guestha-guest/README.rst)
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "run-tests: $*"; }
failed=()

bash tools/setup.sh

say "ruff check guestha guestha_guest tests tools benchmarks"
if .venv/bin/ruff check guestha guestha_guest tests tools benchmarks; then
    say "lint passed"
else
    failed+=(lint)
fi

say "flake8 with hacking (tox.ini [flake8])"
if .venv/bin/flake8; then
    say "hacking passed"
else
    failed+=(hacking)
fi

say "doc8 ${DOC8_PATHS[*]}"
if .venv/bin/doc8 -q "${DOC8_PATHS[@]}"; then
    say "doc8 passed"
else
    failed+=(doc8)
fi

# A malformed note (bad YAML, an unknown section) would only show when the
# release notes are built; reno lint finds it in a second.
say "reno lint (releasenotes/notes)"
if .venv/bin/reno -q lint; then
    say "release notes passed"
else
    failed+=(reno)
fi

say "pytest under $(.venv/bin/python -V 2>&1)"
if .venv/bin/python -m pytest "${PYTEST_FLAGS[@]}" "$@"; then
    :
else
    failed+=(pytest)
fi

say "documentation (sphinx-build -W)"
if .venv/bin/sphinx-build -W -q -b html doc/source doc/build/html; then
    say "documentation built"
else
    failed+=(docs)
fi

find_python38() {
    local candidate
    # A pyenv shim named python3.8 exists even when 3.8 is not selected and
    # then fails, so each candidate has to prove it runs and is 3.8.
    for candidate in "${PYTHON38:-}" "$(command -v python3.8 || true)" \
            /root/.pyenv/versions/3.8*/bin/python3.8 \
            "$HOME"/.pyenv/versions/3.8*/bin/python3.8; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        if "$candidate" -c \
                'import sys; sys.exit(sys.version_info[:2] != (3, 8))' \
                >/dev/null 2>&1 </dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

run_py38() {
    local python38 want dirs=() dir rc=0
    # Only directories with test modules: a pytest run that collects
    # nothing would close on "no tests ran".
    for dir in "${GUEST_TEST_DIRS[@]}"; do
        if [[ -d "$dir" ]] && [[ -n "$(find "$dir" -name 'test_*.py' \
                -print -quit)" ]]; then
            dirs+=("$dir")
        fi
    done
    if (( ${#dirs[@]} == 0 )); then
        say "SKIPPED the Python 3.8 run: no test modules in" \
            "${GUEST_TEST_DIRS[*]} yet"
        return 0
    fi
    if ! python38="$(find_python38)"; then
        say "SKIPPED the Python 3.8 run: no working python3.8 found" \
            "(PATH, ~/.pyenv/versions/3.8*; set PYTHON38=...)"
        return 0
    fi
    if [[ -x "$VENV38/bin/python" ]] && ! "$VENV38/bin/python" -c '' \
            2>/dev/null; then
        rm -rf "$VENV38"
    fi
    if [[ ! -x "$VENV38/bin/python" ]]; then
        say "creating $VENV38 with $python38"
        "$python38" -m venv "$VENV38"
    fi
    want="$(echo "$("$VENV38/bin/python" -V 2>&1) ${GUEST_REQUIREMENTS[*]}" |
            sha256sum | cut -d' ' -f1)"
    if [[ "$want" != "$(cat "$STAMP38" 2>/dev/null || true)" ]]; then
        say "installing ${GUEST_REQUIREMENTS[*]} into $VENV38 ..."
        rm -f "$STAMP38"
        "$VENV38/bin/python" -m pip install -qq --upgrade pip </dev/null
        "$VENV38/bin/python" -m pip install -qq "${GUEST_REQUIREMENTS[@]}" \
            </dev/null
        echo "$want" > "$STAMP38"
    fi
    say "pytest under $("$VENV38/bin/python" -V 2>&1): ${dirs[*]}"
    PYTHONPATH="$ROOT" "$VENV38/bin/python" -m pytest "${PYTEST_FLAGS[@]}" \
        "${dirs[@]}" || rc=$?
    if (( rc == 5 )); then
        # pytest's "no tests collected": the guest tests are not written yet.
        say "no tests collected under Python 3.8 in ${dirs[*]}"
        return 0
    fi
    return "$rc"
}

if [[ "${GUESTHA_SKIP_PY38:-}" == 1 ]]; then
    say "SKIPPED the Python 3.8 run: GUESTHA_SKIP_PY38=1"
elif ! run_py38; then
    failed+=(pytest-py38)
fi

# The scenarios against a real OpenStack (tests/cloud, marker openstack;
# doc/source/testing.rst): last, in a pytest session of their own, so that
# the cloud's nova-compute and the real-VM tests' agents never share
# libvirtd.  They need root (libvirtd, MariaDB, RabbitMQ); the first run on
# a machine installs the cloud's virtualenv (about a minute and a half).
# Only with no pytest arguments; GUESTHA_SKIP_CLOUD=1 skips them.
run_cloud() {
    local rc=0 was_up=0
    bash tools/cloud.sh status >/dev/null 2>&1 && was_up=1
    say "pytest against the real cloud (tests/cloud, GUESTHA_CLOUD_TESTS=1)"
    GUESTHA_CLOUD_TESTS=1 .venv/bin/python -m pytest "${PYTEST_FLAGS[@]}" \
        -m openstack tests/cloud || rc=$?
    if (( ! was_up )); then
        # the fixture takes down what it brought up; this also covers a
        # session that ended before its fixture could
        bash tools/cloud.sh down >/dev/null 2>&1 || true
    fi
    return "$rc"
}

if (( $# )); then
    say "SKIPPED the cloud scenarios: pytest arguments were given"
elif [[ "${GUESTHA_SKIP_CLOUD:-}" == 1 ]]; then
    say "SKIPPED the cloud scenarios: GUESTHA_SKIP_CLOUD=1"
elif [[ "$(id -u)" -ne 0 ]]; then
    say "SKIPPED the cloud scenarios: they need root (libvirtd, services)"
elif ! run_cloud; then
    failed+=(pytest-cloud)
fi

if (( ${#failed[@]} )); then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "all passed"
