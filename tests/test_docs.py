"""The docs site is tested as the README is: every ```python block of every page under
docs/ runs (one namespace per section), every shell block runs as a CLI test, except
blocks marked ``<!-- no-test: reason -->``. Rules and machinery: ``tests/docblocks.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docblocks import ROOT, Block, Page, run_python_section, run_shell_block, sample_folder

PAGES = [Page.read(p) for p in sorted((ROOT / "docs").rglob("*.md"))]
SECTIONS = [(page, s) for page in PAGES for s in page.sections()]
SHELL_BLOCKS = [(page, b) for page in PAGES for b in page.shell_blocks()]


def _short(page: Page) -> str:
    return page.name.removeprefix("docs/")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return sample_folder(tmp_path, monkeypatch)


@pytest.mark.parametrize("page", PAGES, ids=_short)
def test_every_block_is_labelled_and_every_skip_says_why(page: Page) -> None:
    page.check_labels()


def test_the_site_has_runnable_code() -> None:
    # the guides hold code of both kinds, and most of it runs
    assert len(PAGES) >= 20
    code = [b for page in PAGES for b in page.blocks if b.lang in {"python", "bash"}]
    ran = [b for b in code if b.skip is None]
    assert {b.lang for b in ran} == {"python", "bash"} and len(ran) > len(code) // 2


@pytest.mark.parametrize(
    ("page", "section"), SECTIONS, ids=[f"{_short(p)}::{s}" for p, s in SECTIONS]
)
def test_python_blocks_run(page: Page, section: str, folder: Path) -> None:
    run_python_section(page, section)


@pytest.mark.parametrize(
    ("page", "block"), SHELL_BLOCKS, ids=[f"{_short(p)}:{b.line}" for p, b in SHELL_BLOCKS]
)
def test_shell_blocks_run(page: Page, block: Block, folder: Path) -> None:
    run_shell_block(page, block, folder)
