# SPDX-License-Identifier: Apache-2.0
"""tools/build_guest_bundle.py: the bundle goes in without docstrings and
comments, and still is the same program.

* strip_source drops docstrings (``pass`` where one was a body's only
  statement), comments and blank lines, keeps the SPDX line and every
  string literal as it was, and refuses a result that is not the original
  program.
* The bundle, built and run with a real Python 3.8 when there is one
  (``~/.pyenv/versions/3.8*``, or PYTHON38=...), answers --version and
  --check-config.
"""

import ast
import glob
import io
import os
import subprocess
import sys
import tokenize
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILDER = os.path.join(ROOT, "tools", "build_guest_bundle.py")
INI = os.path.join(ROOT, "etc", "guestha-guest.ini")

sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import build_guest_bundle
finally:
    sys.path.pop(0)

SOURCE = '''\
#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Module docstring.

Over several lines.
"""

from __future__ import annotations

import os  # why os


class Empty:
    """Only a docstring."""


def f(x):
    """Doc."""
    # a comment
    text = """keep # this

and the blank line above"""
    return x + "#not a comment" + text   # trailing
'''


def test_strip_source():
    stripped = build_guest_bundle.strip_source(SOURCE)
    assert stripped == (
        "# SPDX-License-Identifier: Apache-2.0\n"
        "from __future__ import annotations\n"
        "import os\n"
        "class Empty:\n"
        "    pass\n"
        "def f(x):\n"
        "    text = \"\"\"keep # this\n"
        "\n"
        "and the blank line above\"\"\"\n"
        "    return x + \"#not a comment\" + text\n")
    namespace = {}
    exec(compile(stripped, "<stripped>", "exec"), namespace)
    assert namespace["f"]("a").startswith("a#not a comment")
    assert namespace["f"]("")[len("#not a comment"):] == (
        "keep # this\n\nand the blank line above")


def test_strip_source_refuses_a_changed_program(monkeypatch):
    # a stripper that lost a line: the check must notice
    real_dump = ast.dump
    calls = []

    def dump(tree, *args, **kwargs):
        calls.append(tree)
        text = real_dump(tree, *args, **kwargs)
        return text + "x" if len(calls) == 2 else text

    monkeypatch.setattr(build_guest_bundle.ast, "dump", dump)
    with pytest.raises(ValueError, match="changed the program"):
        build_guest_bundle.strip_source("x = 1\n")


@pytest.mark.parametrize("path", sorted(glob.glob(
    os.path.join(ROOT, "guestha_guest", "**", "*.py"), recursive=True)),
    ids=lambda p: os.path.relpath(p, ROOT))
def test_every_guest_module_strips_to_python38(path):
    with open(path, encoding="utf-8") as f:
        source = f.read()
    stripped = build_guest_bundle.strip_source(source, path)
    ast.parse(stripped, path, feature_version=(3, 8))
    assert '"""' not in stripped.split("\n", 3)[0]


def test_bundle_is_stripped(tmp_path):
    small = build_guest_bundle.build(str(tmp_path / "small.pyz"))
    full = build_guest_bundle.build(str(tmp_path / "full.pyz"),
                                    strip=False)
    with zipfile.ZipFile(small) as z:
        daemon = z.read("guestha_guest/daemon.py").decode()
    comments = [t.string for t in tokenize.generate_tokens(
        io.StringIO(daemon).readline) if t.type == tokenize.COMMENT]
    assert all(c.startswith("# SPDX-License-Identifier:") for c in comments)
    assert ast.get_docstring(ast.parse(daemon)) is None
    assert os.path.getsize(small) < 0.8 * os.path.getsize(full)


def find_python38():
    candidates = [os.environ.get("PYTHON38", "")]
    candidates += sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8"))
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        check = subprocess.run(
            [candidate, "-c",
             "import sys; sys.exit(sys.version_info[:2] != (3, 8))"],
            capture_output=True)
        if check.returncode == 0:
            return candidate
    return None


def test_bundle_builds_and_runs_on_python38(tmp_path):
    python38 = find_python38()
    if python38 is None:
        pytest.skip("no Python 3.8 (set PYTHON38=/path/to/python3.8)")
    bundle = str(tmp_path / "guestha-guest.pyz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the builder itself runs on 3.8 too (guest image builds)
    result = subprocess.run([python38, BUILDER, "-o", bundle], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([python38, bundle, "--version"], env=env,
                            cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("guestha-guest ")
    result = subprocess.run([python38, bundle, "--config", INI,
                             "--check-config"], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "org.openstack.guestha.0" in result.stdout
