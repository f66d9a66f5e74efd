# SPDX-License-Identifier: Apache-2.0
"""guestha_guest uses the Python standard library only.

The guest daemon is installed into tenant images on its own, with nothing
but a python3; and the host imports guestha_guest.protocol, so the
dependency must never point back from guest to host.  This walks every
module of guestha_guest and checks each absolute import.
"""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUEST_PACKAGE = 'guestha_guest'
HOST_PACKAGE = 'guestha'


def guest_sources():
    """Yield (path relative to the repository, source) of every .py file."""
    top = os.path.join(ROOT, GUEST_PACKAGE)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
        for filename in sorted(filenames):
            if filename.endswith('.py'):
                path = os.path.join(dirpath, filename)
                with open(path, encoding='utf-8') as f:
                    yield os.path.relpath(path, ROOT), f.read()


def imported_modules(source, filename='<source>'):
    """Return [(line, top-level module)] of every absolute import.

    Relative imports stay inside the package and are skipped.  Literal
    ``importlib.import_module('x')`` and ``__import__('x')`` calls count
    too, so a dynamic import cannot slip a dependency past this check.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.partition('.')[0])
                         for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module.partition('.')[0]))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and _is_import_call(node.func)):
            found.append((node.lineno, node.args[0].value.partition('.')[0]))
    return found


def _is_import_call(func):
    if isinstance(func, ast.Name):
        return func.id in ('__import__', 'import_module')
    return isinstance(func, ast.Attribute) and func.attr == 'import_module'


def non_stdlib_imports(source, filename='<source>'):
    """Return ['file:line: module'] for each import outside the stdlib."""
    allowed = set(sys.stdlib_module_names) | {GUEST_PACKAGE}
    return ['%s:%d: %s' % (filename, line, module)
            for line, module in imported_modules(source, filename)
            if module not in allowed]


def test_guest_package_has_modules():
    assert list(guest_sources()), 'no .py file found under guestha_guest/'


def test_guest_imports_only_the_standard_library():
    problems = []
    for filename, source in guest_sources():
        problems.extend(non_stdlib_imports(source, filename))
    assert not problems, (
        'guestha_guest must use the Python standard library only; these '
        'imports are not in it:\n  ' + '\n  '.join(problems))


def test_guest_never_imports_the_host_package():
    problems = ['%s:%d: %s' % (filename, line, module)
                for filename, source in guest_sources()
                for line, module in imported_modules(source, filename)
                if module == HOST_PACKAGE]
    assert not problems, (
        'guestha_guest must not import the host package guestha (the '
        'dependency points from host to guest):\n  ' + '\n  '.join(problems))


def test_checker_reports_a_third_party_import():
    source = '\n'.join([
        'import json',
        'import os.path',
        'from . import messages',
        'from guestha_guest.protocol import errors',
        'from oslo_config import cfg',
        'import guestha.conf',
        'import importlib',
        'yaml = importlib.import_module("yaml")',
    ])

    assert non_stdlib_imports(source, 'x.py') == [
        'x.py:5: oslo_config',
        'x.py:6: guestha',
        'x.py:8: yaml',
    ]
