# SPDX-License-Identifier: Apache-2.0
"""The release notes (releasenotes/): every note is one reno can build.

``reno lint`` (tools/run-tests.sh) checks the YAML and the section names;
this also checks what it does not: the file name reno would give the note,
and that every entry is valid reStructuredText, which otherwise only the
release notes build (``tox -e releasenotes``, after the note is committed)
would find.
"""

import glob
import io
import os
import re

import docutils.core
import docutils.utils
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
NOTES = os.path.join(ROOT, "releasenotes", "notes")
SOURCE = os.path.join(ROOT, "releasenotes", "source")
# reno's default sections, and the prelude (one string, not a list)
SECTIONS = {"features", "issues", "upgrade", "deprecations", "critical",
            "security", "fixes", "other"}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9a-f]{16}\.yaml$")


def notes():
    return sorted(glob.glob(os.path.join(NOTES, "*")))


def rst_problems(text):
    """docutils' warnings and errors for ``text``, as reno's build sees
    them (sphinx-build -W turns warnings into errors)."""
    stream = io.StringIO()
    docutils.core.publish_doctree(
        text, settings_overrides={"warning_stream": stream,
                                  "report_level": docutils.utils.Reporter
                                  .WARNING_LEVEL,
                                  "halt_level": docutils.utils.Reporter
                                  .SEVERE_LEVEL + 1})
    return stream.getvalue()


def test_release_notes_sphinx_tree():
    with open(os.path.join(SOURCE, "conf.py")) as f:
        assert "reno.sphinxext" in f.read()
    with open(os.path.join(SOURCE, "unreleased.rst")) as f:
        assert ".. release-notes::" in f.read()


def test_there_are_notes():
    assert notes()


@pytest.mark.parametrize("path", notes(), ids=os.path.basename)
def test_note(path):
    assert NAME.match(os.path.basename(path)), (
        "name it <slug>-<16 hex digits>.yaml, as `reno new <slug>` does")
    with open(path, encoding="utf-8") as f:
        content = yaml.safe_load(f)
    assert isinstance(content, dict) and content, "an empty note"
    unknown = set(content) - SECTIONS - {"prelude"}
    assert not unknown, "sections reno does not know: %s" % sorted(unknown)
    for section, value in content.items():
        entries = [value] if section == "prelude" else value
        assert isinstance(entries, list), "%s: a list of strings" % section
        for entry in entries:
            assert isinstance(entry, str) and entry.strip(), section
            assert rst_problems(entry) == "", (section, entry)


def test_rst_problems_finds_broken_markup():
    # the check above can fail
    assert rst_problems("an ``unclosed literal") != ""
    assert rst_problems("a ``closed`` literal") == ""
