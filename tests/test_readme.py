"""The README is tested: every ```python block runs, every shell block runs as a CLI test.

The rules for its blocks, and the machinery, are in ``tests/docblocks.py`` (shared with
``tests/test_docs.py``, which runs the docs site's pages the same way).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docblocks import ROOT, Block, Page, parse, run_python_section, run_shell_block, sample_folder

README = Page.read(ROOT / "README.md")
SECTIONS = README.sections()
SHELL_BLOCKS = README.shell_blocks()


def test_every_block_is_labelled_and_every_skip_says_why() -> None:
    README.check_labels()
    code = [b for b in README.blocks if b.lang in {"python", "py", "bash", "sh", "shell"}]
    ran = [b for b in code if b.skip is None]
    # the README has both kinds, in several sections
    assert {b.lang for b in ran} >= {"python", "bash"} and len(SECTIONS) >= 3


def test_parser_finds_blocks_sections_and_markers() -> None:
    text = (
        "# T\n```python\nx = 1\n```\n## A\n<!-- no-test: needs a cluster -->\n\n"
        "```bash\nviva-glyph --help\n```\n```text\nq1 = ...\n```\n"
        "- item\n  ```python\n  y = x\n  ```\n"
    )
    blocks, markers = parse(text)
    assert [(b.section, b.line, b.lang, b.skip) for b in blocks] == [
        ("T", 3, "python", None),
        ("A", 9, "bash", "needs a cluster"),
        ("A", 12, "text", None),
        ("A", 16, "python", None),
    ]
    assert blocks[3].code == "y = x\n" and markers == 1


def test_relative_links_reach_files() -> None:
    # the README links into docs/ by relative paths, which work on GitHub and in a checkout
    text = README.path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#", 1)[0] for link in links if "://" not in link]
    assert len(local) >= 10
    missing = [link for link in local if not (ROOT / link).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert len(text.splitlines()) <= 250, "the README is a landing page: details go to docs/"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return sample_folder(tmp_path, monkeypatch)


@pytest.mark.parametrize("section", SECTIONS)
def test_python_blocks_run(section: str, folder: Path) -> None:
    run_python_section(README, section)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[f"line{b.line}" for b in SHELL_BLOCKS])
def test_shell_blocks_run(block: Block, folder: Path) -> None:
    run_shell_block(README, block, folder)
