"""The marked sections of docs/benchmarks.md that benchmark scripts rewrite (docs_section.write_section)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.docs_section import write_section

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
MARKER = re.compile(r"<!-- ([\w-]+):(begin|end) -->")


def _sections(text: str) -> list[tuple[str, str]]:
    """(name, body) of each marked section, in order; fails on a section left open or nested."""
    found, open_name, start = [], None, 0
    for match in MARKER.finditer(text):
        name, edge = match.groups()
        if edge == "begin":
            assert open_name is None, f"section {name!r} begins inside {open_name!r}"
            open_name, start = name, match.end()
        else:
            assert open_name == name, f"section {name!r} ends where {open_name!r} is open"
            found.append((name, text[start : match.start()]))
            open_name = None
    assert open_name is None, f"section {open_name!r} never ends"
    return found


def test_a_rewritten_section_holds_no_other_section_of_the_page():
    # A script that refreshes its section replaces everything between the markers: a heading of
    # another section in there would be lost with it.
    sections = _sections(BENCHMARKS_MD.read_text())
    assert sections
    for name, body in sections:
        headings = [line for line in body.strip().splitlines() if line.startswith("## ")]
        assert len(headings) <= 1, f"section {name!r} spans {headings}"
        if headings:
            assert body.strip().startswith(headings[0]), f"section {name!r} has text above its heading"


def test_write_section_replaces_only_its_own_text(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nbefore\n<!-- a:begin -->\nold\n<!-- a:end -->\nafter\n")
    write_section(page, "a", "new")
    write_section(page, "b", "added")
    text = page.read_text()
    assert "old" not in text and "before" in text and "after" in text
    assert _sections(text) == [("a", "\nnew\n"), ("b", "\nadded\n")]


def test_a_section_left_open_is_caught():
    with pytest.raises(AssertionError, match="begins inside"):
        _sections("<!-- a:begin -->\n<!-- b:begin -->\n<!-- b:end -->\n<!-- a:end -->")
