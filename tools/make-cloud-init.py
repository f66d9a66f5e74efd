#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write cloud-init user data that installs the guestha guest daemon.

Fills the template etc/guest-image/cloud-init.yaml: the guest bundle
(built from this checkout with tools/build_guest_bundle.py unless --bundle
names one), its configuration and its systemd unit.  With --gzip the
whole user data is gzipped, which cloud-init accepts and which Nova's
limit (65535 bytes of base64-encoded user data) needs::

    python3 tools/make-cloud-init.py --gzip -o guestha-user-data.gz
    openstack server create ... --user-data guestha-user-data.gz my-vm

Standard library only.
"""

import argparse
import base64
import gzip
import io
import os
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "etc", "guest-image", "cloud-init.yaml")
INI = os.path.join(ROOT, "etc", "guestha-guest.ini")
UNIT = os.path.join(ROOT, "etc", "systemd", "guestha-guest.service")

BUNDLE_MARK = "@GUESTHA_GUEST_BUNDLE@"
INI_MARK = "@GUESTHA_GUEST_INI@"
UNIT_MARK = "@GUESTHA_GUEST_UNIT@"
#: Nova's API takes at most this many bytes of base64-encoded user_data.
NOVA_USER_DATA_MAX = 65535
HEADER = ("#cloud-config\n"
          "# Installs and starts the guestha guest daemon (guestha-guest):\n"
          "# written by tools/make-cloud-init.py from\n"
          "# etc/guest-image/cloud-init.yaml.\n")


def build_bundle(directory):
    """Build the bundle from this checkout into ``directory``."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import build_guest_bundle
    finally:
        sys.path.pop(0)
    return build_guest_bundle.build(
        os.path.join(directory, "guestha-guest.pyz"))


def pack_bundle(data):
    """The bundle's bytes for write_files' gz+b64 encoding.

    The zip's entries are rewritten uncompressed (with the interpreter
    line kept), then the whole file is gzipped: one stream over all the
    sources compresses better than each file deflated on its own.
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    if data.startswith(b"#!"):
        out.write(data[:data.index(b"\n") + 1])
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr = info.external_attr
            target.writestr(copy, source.read(info.filename))
    packed = gzip.compress(out.getvalue(), 9, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def _indent_block(text, indent):
    lines = text.rstrip("\n").split("\n")
    return "\n".join(indent + line if line.strip() else ""
                     for line in lines)


def render(template, bundle_b64, ini, unit):
    """The user data: ``template`` with its placeholders filled in.

    The template's leading comments (which describe the placeholders)
    become a short header.
    """
    lines = template.split("\n")
    if not lines or lines[0].strip() != "#cloud-config":
        raise ValueError("the template must start with #cloud-config")
    body = 1
    while body < len(lines) and lines[body].lstrip().startswith("#"):
        body += 1
    out = []
    for line in lines[body:]:
        stripped = line.strip()
        if stripped in (INI_MARK, UNIT_MARK):
            indent = line[:len(line) - len(line.lstrip())]
            text = ini if stripped == INI_MARK else unit
            out.append(_indent_block(text, indent))
        elif BUNDLE_MARK in line and not stripped.startswith("#"):
            out.append(line.replace(BUNDLE_MARK, bundle_b64))
        else:
            out.append(line)
    result = HEADER + "\n".join(out)
    for mark in (BUNDLE_MARK, INI_MARK, UNIT_MARK):
        if mark in result:
            raise ValueError("placeholder %s left in the template" % mark)
    return result


def make(output, bundle=None, ini=INI, unit=UNIT, template=TEMPLATE,
         compress=False):
    """Write the user data to ``output``; returns its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = bundle or build_bundle(tmp)
        with open(bundle, "rb") as f:
            bundle_b64 = pack_bundle(f.read())
    with open(template, encoding="utf-8") as f:
        template_text = f.read()
    with open(ini, encoding="utf-8") as f:
        ini_text = f.read()
    with open(unit, encoding="utf-8") as f:
        unit_text = f.read()
    data = render(template_text, bundle_b64, ini_text,
                  unit_text).encode("utf-8")
    if compress:
        data = gzip.compress(data, 9, mtime=0)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f:
        f.write(data)
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output",
        help="file to write (default dist/guestha-guest-cloud-init.yaml, "
             "with --gzip dist/guestha-guest-cloud-init.yaml.gz)")
    parser.add_argument("--bundle", help="a built bundle (default: build "
                        "one from this checkout)")
    parser.add_argument("--ini", default=INI,
                        help="the daemon's configuration (default "
                             "%(default)s)")
    parser.add_argument("--unit", default=UNIT,
                        help="its systemd unit (default %(default)s)")
    parser.add_argument("--template", default=TEMPLATE,
                        help="the cloud-config template (default "
                             "%(default)s)")
    parser.add_argument("--gzip", action="store_true",
                        help="gzip the user data (needed to stay within "
                             "Nova's user data limit)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(
        ROOT, "dist", "guestha-guest-cloud-init.yaml"
        + (".gz" if args.gzip else ""))
    try:
        data = make(output, bundle=args.bundle, ini=args.ini,
                    unit=args.unit, template=args.template,
                    compress=args.gzip)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        print("make-cloud-init: %s" % exc, file=sys.stderr)
        return 1
    encoded = len(base64.b64encode(data))
    fits = encoded <= NOVA_USER_DATA_MAX
    print("wrote %s (%d bytes, %d base64-encoded: %s Nova's limit of %d%s)"
          % (output, len(data), encoded, "within" if fits else "over",
             NOVA_USER_DATA_MAX,
             "" if fits or args.gzip else "; use --gzip"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
