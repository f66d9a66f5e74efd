# SPDX-License-Identifier: Apache-2.0
"""guestha_guest runs on Python 3.8.

Guest images carry whatever python3 their distribution has, back to 3.8.
Two checks, because neither is enough alone: the 3.8 grammar (ast with
feature_version catches syntax such as ``match`` or parenthesised context
managers) and vermin (catches 3.9+ library use such as str.removeprefix or
``list[int]`` annotations evaluated at run time).  The protocol and guest
tests also run under a real Python 3.8 when tools/run-tests.sh finds one.
"""

import ast
import os
import shutil
import subprocess
import sys

from tests.unit import test_guest_stdlib_only

ROOT = test_guest_stdlib_only.ROOT
GUEST_PACKAGE = test_guest_stdlib_only.GUEST_PACKAGE
TARGET = (3, 8)


def py38_syntax_errors(source, filename='<source>'):
    """Return ['file:line: message'] if source is not Python 3.8 grammar."""
    try:
        ast.parse(source, filename, feature_version=TARGET)
    except SyntaxError as exc:
        return ['%s:%s: %s' % (filename, exc.lineno, exc.msg)]
    return []


def vermin(*paths):
    """Run vermin against the 3.8 target; return (returncode, output)."""
    executable = shutil.which(
        'vermin', path=os.path.dirname(sys.executable)) or 'vermin'
    result = subprocess.run(
        [executable, '--no-config-file', '--no-tips', '--violations',
         '-t=3.8-'] + list(paths),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True)
    return result.returncode, result.stdout


def test_guest_parses_as_python38():
    problems = []
    for filename, source in test_guest_stdlib_only.guest_sources():
        problems.extend(py38_syntax_errors(source, filename))
    assert not problems, (
        'guestha_guest must parse as Python 3.8:\n  ' + '\n  '.join(problems))


def test_guest_passes_vermin_for_python38():
    rc, output = vermin(GUEST_PACKAGE)
    assert rc == 0, (
        'vermin finds code in guestha_guest that needs a Python newer '
        'than 3.8:\n%s' % output)


MATCH_SOURCE = '''\
def kind(message):
    match message:
        case {"type": "init"}:
            return "init"
    return None
'''


def test_syntax_checker_rejects_a_match_statement():
    assert py38_syntax_errors(MATCH_SOURCE, 'x.py')


def test_vermin_rejects_python39_and_310_code(tmp_path):
    (tmp_path / 'match.py').write_text(MATCH_SOURCE)
    (tmp_path / 'prefix.py').write_text('NAME = "gh-x".removeprefix("gh-")\n')

    for name in ('match.py', 'prefix.py'):
        rc, output = vermin(str(tmp_path / name))
        assert rc != 0, 'vermin accepted %s:\n%s' % (name, output)
