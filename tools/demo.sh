#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# guestha on one node (README's run command): set up what is missing
# (tools/setup.sh: apt packages, libvirtd, the virtualenv, the VM kernel
# and initramfs), then run tools/demo.py: RabbitMQ, guestha-server,
# guestha-agent and tiny VMs running the guest daemon, shown live.
#
#   bash tools/demo.sh                  # run until Ctrl-C (or q)
#   bash tools/demo.sh run --vms 1 --duration 60 --script 20:freeze,35:thaw
#   bash tools/demo.sh inject freeze vm1   # from another shell
#   bash tools/demo.sh stop
#   bash tools/demo.sh run --cloud --vms 1 --duration 90 --script 30:freeze
#                                       # on the real cloud (tools/cloud.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "${1:-run}" in
    inject|stop) ;;
    *) bash tools/setup.sh ;;
esac
exec "$ROOT/.venv/bin/python" tools/demo.py "$@"
