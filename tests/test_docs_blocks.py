"""The fenced python blocks of the README and of every page under docs/ run as written.

Pages are found by glob (``README.md`` and ``docs/*.md``). Each page's blocks run in order in
one namespace (a later block uses an earlier one's names), in a temporary working directory,
with one torch thread and matplotlib's file backend. Two marks, each an HTML comment on the
line right before a block, change what runs:

- ``<!-- fragment: why -->``: the block is a deliberate fragment and is skipped; the reason is
  required.
- ``<!-- preamble: code -->``: the code runs, unseen by the reader, before the page's blocks
  (at most one per page, anywhere on the page); for placeholders a page cannot show in full.

A page with python blocks must have at least one that runs, and every ```python fence must be
closed. A page's blocks take seconds at the sizes shown: the examples state the sizes a real
run would use in their comments.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
FENCE = re.compile(r"^```python[ \t]*$", flags=re.MULTILINE)
BLOCK = re.compile(r"(?:<!--\s*fragment:(?P<why>[^>]*?)-->[ \t]*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                   flags=re.DOTALL | re.MULTILINE)
PREAMBLE = re.compile(r"<!--\s*preamble:(?P<code>.*?)-->", flags=re.DOTALL)


def parse(page: str) -> dict:
    """The page's python blocks: runnable code, fragment reasons, preamble, fence count."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = list(BLOCK.finditer(text))
    preambles = [m.group("code") for m in PREAMBLE.finditer(text)]
    return {
        "fences": len(FENCE.findall(text)),
        "blocks": len(found),
        "runnable": [m.group("code") for m in found if m.group("why") is None],
        "fragments": [m.group("why").strip() for m in found if m.group("why") is not None],
        "preambles": preambles,
    }


@pytest.mark.parametrize("page", PAGES)
def test_the_python_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    info = parse(page)
    if info["fences"] == 0:
        pytest.skip(f"{page} has no python block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for code in info["preambles"]:
            exec(compile(code, f"{page} preamble", "exec"), namespace)  # noqa: S102 - our own docs
        for i, code in enumerate(info["runnable"]):
            exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        torch.set_num_threads(threads)
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            pass
        else:
            plt.close("all")


@pytest.mark.parametrize("page", PAGES)
def test_a_page_has_closed_blocks_reasoned_fragments_and_something_to_run(page):
    info = parse(page)
    assert info["blocks"] == info["fences"], (
        f"{page}: {info['fences']} ```python fences but {info['blocks']} closed blocks: close every block with ```")
    for why in info["fragments"]:
        assert len(why.split()) >= 2, f"{page}: a fragment mark without a reason ({why!r}): write <!-- fragment: why -->"
    assert len(info["preambles"]) <= 1, f"{page}: {len(info['preambles'])} preambles; merge them into one"
    if info["fences"]:
        assert info["runnable"], f"{page}: every python block is a fragment; make at least one run as written"


def test_the_parser_reads_marks_and_blocks(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("<!-- preamble: x = 1 -->\n```python\ny = x + 1\n```\n\n<!-- fragment: needs a GPU -->\n"
                    "```python\nz = cuda_only()\n```\n<!-- fragment: -->\n```python\nw = 0\n```\n"
                    "```python\nunclosed = True\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    info = parse("page.md")
    assert info["runnable"] == ["y = x + 1\n"]
    assert info["fragments"] == ["needs a GPU", ""]
    assert info["preambles"] == [" x = 1 "]
    assert (info["fences"], info["blocks"]) == (4, 3)


def test_pages_are_found_by_glob():
    assert "README.md" in PAGES and "docs/capacity.md" in PAGES
    assert set(PAGES) >= {p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md")}
