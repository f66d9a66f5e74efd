#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# /dev/virtio-ports/<name> -> ../vportNpM, kept up to date in a guest with
# no udev (the test guest of tools/build-vm-assets.sh and the cloud image of
# tools/cloud/image.py): the host hot-plugs a channel after boot too.
mkdir -p /dev/virtio-ports
while :; do
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "$f" ] || continue
        read -r name < "$f" || continue
        [ -n "$name" ] || continue
        d="${f%/name}"
        link="/dev/virtio-ports/$name"
        [ -e "$link" ] && [ "$(readlink "$link")" = "../${d##*/}" ] ||
            ln -sfn "../${d##*/}" "$link"
    done
    for link in /dev/virtio-ports/*; do
        [ -L "$link" ] && [ ! -e "$link" ] && rm -f "$link"
    done
    sleep 0.2
done
