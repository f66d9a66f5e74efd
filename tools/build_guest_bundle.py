#!/usr/bin/env python3
"""Build the guest daemon as one file: a zipapp of guestha_guest.

The result runs with any python3 >= 3.8 in the guest and needs nothing
else: ``python3 guestha-guest.pyz --config /etc/guestha/guestha-guest.ini``
(or make it executable and run it directly).  Standard library only, so
this script can run in the guest image build too.
"""

import argparse
import os
import shutil
import sys
import tempfile
import zipapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(output, interpreter="/usr/bin/env python3"):
    with tempfile.TemporaryDirectory() as staging:
        shutil.copytree(
            os.path.join(ROOT, "guestha_guest"),
            os.path.join(staging, "guestha_guest"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        zipapp.create_archive(staging, output, interpreter=interpreter,
                              main="guestha_guest.cmd:main", compressed=True)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output",
        default=os.path.join(ROOT, "dist", "guestha-guest.pyz"))
    parser.add_argument("--interpreter", default="/usr/bin/env python3")
    args = parser.parse_args(argv)
    out = build(args.output, args.interpreter)
    print("built %s (%d bytes)" % (out, os.path.getsize(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
