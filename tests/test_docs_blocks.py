"""The fenced python blocks of the documentation pages run as written.

Each page's blocks run in order in one namespace (a later block may use an earlier one's
names), in a temporary working directory. A block right after a line
``<!-- fragment: why -->`` is a deliberate fragment and is skipped (it says why).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/distributed.md", "docs/sgld.md", "docs/memorization.md", "docs/two_phase.md"]
BLOCK = re.compile(r"(<!-- fragment:[^>]*-->\s*\n)?```python\n(.*?)```", flags=re.DOTALL)


def blocks(page: str) -> list[str]:
    """The page's python blocks that are not marked as fragments."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [code for mark, code in BLOCK.findall(text) if not mark]


@pytest.mark.parametrize("page", PAGES)
def test_the_python_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    found = blocks(page)
    assert found, f"{page} has no python block to run"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(found):
        exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs


def test_fragments_are_marked_with_a_reason():
    text = (ROOT / "docs/distributed.md").read_text(encoding="utf-8")
    assert len(BLOCK.findall(text)) == len(blocks("docs/distributed.md")) + 1
