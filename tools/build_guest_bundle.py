#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Build the guest daemon as one file: a zipapp of guestha_guest.

The result runs with any python3 >= 3.8 in the guest and needs nothing
else: ``python3 guestha-guest.pyz --config /etc/guestha/guestha-guest.ini``
(or make it executable and run it directly).  Standard library only, so
this script can run in the guest image build too (Python >= 3.8).

The sources go in without their docstrings and comments (the SPDX licence
line excepted): the bundle travels in cloud-init user data, which Nova
caps at 65535 bytes, and nobody reads the source inside a zipapp.  Only
the text goes: the code, and so its line numbers in tracebacks, differ
from the repository's, but the builder checks that each stripped module
parses to the same syntax tree as the original without its docstrings.
--keep-source builds the bundle from the sources as they are.  What has
no use in a guest stays out (NOT_BUNDLED).
"""

import argparse
import ast
import io
import os
import shutil
import sys
import tempfile
import tokenize
import zipapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LICENCE_PREFIX = "# SPDX-License-Identifier:"
#: Modules of guestha_guest (paths relative to it) that have no use in a
#: guest, left out of the bundle: the guest farm simulates many guests for
#: the agent's tests and benchmarks on a host.
NOT_BUNDLED = ("testing/guestfarm.py",)


def _docstrings(tree):
    """``(body, node)`` for each docstring expression in ``tree``."""
    for owner in ast.walk(tree):
        if not isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                  ast.AsyncFunctionDef)):
            continue
        body = owner.body
        if (body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            yield body, body[0]


def _without_docstrings(tree):
    """``tree`` as :func:`strip_source` leaves it: each docstring gone, or
    ``pass`` where it was its body's only statement."""
    for body, _node in list(_docstrings(tree)):
        body[0:1] = [] if len(body) > 1 else [ast.Pass()]
    return tree


#: The time of every entry of the bundle (2020-01-01), unless
#: SOURCE_DATE_EPOCH says otherwise.
BUNDLE_EPOCH = 1577836800


def strip_source(source, filename="<source>"):
    """``source`` without docstrings, comments and blank lines.

    Docstrings are found with ``ast`` (a docstring that is its body's only
    statement becomes ``pass``), comments with ``tokenize``, so that a
    ``#`` or a blank line inside a string literal stays.  The result must
    parse to the same syntax tree as ``source`` without its docstrings, or
    this raises ValueError: a bundle is never built from a changed program.
    """
    lines = source.splitlines(True)
    # (start, end, replacement), positions as (row from 1, column)
    edits = []
    for body, node in _docstrings(ast.parse(source, filename)):
        edits.append(((node.lineno, node.col_offset),
                      (node.end_lineno, node.end_col_offset),
                      "pass" if len(body) == 1 else ""))
    in_string = set()   # rows inside a multi-line string: kept as they are
    fstring_starts = []  # Python >= 3.12 splits f-strings into tokens
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        first = last = token.start[0]
        if token.type == tokenize.COMMENT:
            if not token.string.startswith(LICENCE_PREFIX):
                edits.append((token.start, token.end, ""))
        elif token.type == tokenize.STRING:
            last = token.end[0]
        elif token.type == fstring_start:
            fstring_starts.append(first)
        elif token.type == fstring_end:
            first, last = fstring_starts.pop(), token.end[0]
        in_string.update(range(first + 1, last + 1))
    # back to front, so that the positions still to apply stay valid
    edits.sort(reverse=True)
    for (srow, scol), (erow, ecol), replacement in edits:
        head = lines[srow - 1][:scol]
        tail = lines[erow - 1][ecol:]
        lines[srow - 1:erow] = [head + replacement + tail]
        in_string = {row if row <= srow else row - (erow - srow)
                     for row in in_string if not srow < row <= erow}
    out = []
    for row, line in enumerate(lines, 1):
        if row in in_string:
            out.append(line)
        elif line.strip():
            out.append(line.rstrip() + "\n")
    stripped = "".join(out)
    want = ast.dump(_without_docstrings(ast.parse(source, filename)))
    try:
        have = ast.dump(ast.parse(stripped, filename))
    except SyntaxError as exc:
        raise ValueError("%s: stripping broke the syntax: %s"
                         % (filename, exc))
    if have != want:
        raise ValueError("%s: stripping changed the program" % filename)
    return stripped


def _not_bundled(src_dir, dirpath, name):
    path = os.path.relpath(os.path.join(dirpath, name), src_dir)
    return path.replace(os.sep, "/") in NOT_BUNDLED


def _copy_stripped(src_dir, dst_dir):
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        target = os.path.join(dst_dir, os.path.relpath(dirpath, src_dir))
        os.makedirs(target, exist_ok=True)
        for name in sorted(filenames):
            if not name.endswith(".py") or _not_bundled(src_dir, dirpath,
                                                        name):
                continue
            src = os.path.join(dirpath, name)
            dst = os.path.join(target, name)
            with open(src, encoding="utf-8") as f:
                source = f.read()
            with open(dst, "w", encoding="utf-8") as f:
                f.write(strip_source(source, name))


def _fix_times(staging):
    # The zip records every entry's time: one fixed time makes two builds
    # of one checkout the same bytes (the cloud-init user data, a test,
    # an image build's cache).  Nothing reads it: the bundle carries no
    # bytecode to compare with.
    when = int(os.environ.get("SOURCE_DATE_EPOCH", BUNDLE_EPOCH))
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when))


def build(output, interpreter="/usr/bin/env python3", strip=True):
    with tempfile.TemporaryDirectory() as staging:
        source = os.path.join(ROOT, "guestha_guest")
        target = os.path.join(staging, "guestha_guest")
        if strip:
            _copy_stripped(source, target)
        else:
            def ignore(directory, names):
                return {n for n in names if n == "__pycache__"
                        or n.endswith(".pyc")
                        or _not_bundled(source, directory, n)}
            shutil.copytree(source, target, ignore=ignore)
        with open(os.path.join(staging, "__main__.py"), "w") as f:
            f.write("import guestha_guest.cmd\n"
                    "guestha_guest.cmd.main()\n")
        _fix_times(staging)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        zipapp.create_archive(staging, output, interpreter=interpreter,
                              compressed=True)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-o", "--output",
        default=os.path.join(ROOT, "dist", "guestha-guest.pyz"))
    parser.add_argument("--interpreter", default="/usr/bin/env python3")
    parser.add_argument("--keep-source", action="store_true",
                        help="keep docstrings and comments")
    args = parser.parse_args(argv)
    out = build(args.output, args.interpreter, strip=not args.keep_source)
    print("built %s (%d bytes)" % (out, os.path.getsize(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
