"""The README is tested: every ```python block runs, every shell block runs as a CLI test.

Rules (for whoever edits the README):

- Every fenced block names its language: ``python``, ``bash`` (or ``sh``/``shell``), or
  ``text`` for anything that is not code.
- Python blocks run in order, one namespace per ``##`` section (so a block may use
  the names of the blocks before it in its section), in a fresh temporary folder
  holding the sample files of :data:`SAMPLE_FILES`.
- Shell blocks run each in a fresh temporary folder with the same files, under
  ``bash -euo pipefail`` with ``viva-glyph`` meaning ``python -m viva_glyph``.
- A block that truly cannot run on a laptop (it installs packages, needs a cluster,
  or is a benchmark of minutes) carries ``<!-- no-test: reason -->`` on the line
  right before its fence.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
#: Labels of blocks that are not code to run (anything else is refused: label it).
NOT_CODE = {"text", "json", "toml", "yaml", "csv"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
NO_TEST = re.compile(r"^\s*<!--\s*no-test:(.*?)-->\s*$")
#: Optional packages: a block that needs one that is missing is skipped, not failed.
OPTIONAL = {"torch", "dask", "distributed", "safetensors", "matplotlib", "pyarrow", "zarr"}


def _vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    """Correlated Gaussian vectors, float32: a small stand-in for a user's embeddings."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(rows, dim)) @ mix).astype(np.float32)


#: The files the README's examples read, as small as the examples allow.
SAMPLE_FILES: dict[str, Callable[[Path], None]] = {
    "vectors.npy": lambda p: np.save(p, _vectors(1_000, 8, 0)),
    "embeddings.npy": lambda p: np.save(p, _vectors(1_000, 8, 1)),
    "queries.npy": lambda p: np.save(p, _vectors(100, 8, 2)),
}


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    section: str
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    skip: str | None  # the no-test reason, if any


def parse(text: str) -> tuple[list[Block], int]:
    """The fenced blocks of ``text`` and the number of no-test markers in it."""
    blocks: list[Block] = []
    section, previous, markers = "(top)", "", 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if NO_TEST.match(line):
            markers += 1
        fence = FENCE.match(line)
        if fence is None:
            if line.startswith("# ") or line.startswith("## "):
                section = line.lstrip("#").strip()
            if line.strip():
                previous = line
            i += 1
            continue
        indent, lang = fence.group(1), fence.group(2).lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"README.md:{i + 1}: the block never closes")
        code = "\n".join(
            ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]
        )
        marker = NO_TEST.match(previous)
        skip = marker.group(1).strip() if marker else None
        blocks.append(Block(section, i + 2, lang, code + "\n", skip))
        previous = ""
        i = end + 1
    return blocks, markers


BLOCKS, MARKERS = parse(README.read_text(encoding="utf-8"))
SECTIONS = sorted(
    {b.section for b in BLOCKS if b.lang in PYTHON and b.skip is None},
    key=lambda s: next(b.line for b in BLOCKS if b.section == s),
)
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL and b.skip is None]


def test_every_block_is_labelled_and_every_skip_says_why() -> None:
    unlabelled = [b.line - 1 for b in BLOCKS if b.lang not in PYTHON | SHELL | NOT_CODE]
    assert not unlabelled, f"README.md lines {unlabelled}: label the block python, bash or text"
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert all(b.skip for b in skipped), "a no-test marker must give its reason"
    assert all(b.lang in PYTHON | SHELL for b in skipped), "no-test only marks code blocks"
    assert len(skipped) == MARKERS, "a no-test marker must sit right before a block's fence"
    code = [b for b in BLOCKS if b.lang in PYTHON | SHELL]
    ran = [b for b in code if b.skip is None]
    # every code block runs in a test below or says why not: the README has both kinds
    assert len(ran) + len(skipped) == len(code)
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


@pytest.fixture
def sample_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, make in SAMPLE_FILES.items():
        make(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


@pytest.mark.parametrize("section", SECTIONS)
def test_python_blocks_run(section: str, sample_folder: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in BLOCKS:
        if block.section != section or block.lang not in PYTHON or block.skip is not None:
            continue
        code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
        try:
            exec(code, namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                pytest.skip(f"README.md:{block.line} needs {exc.name}")
            raise


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[f"line{b.line}" for b in SHELL_BLOCKS])
def test_shell_blocks_run(block: Block, sample_folder: Path) -> None:
    script = f'viva-glyph() {{ "{sys.executable}" -m viva_glyph "$@"; }}\n{block.code}'
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=sample_folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, (
        f"README.md:{block.line}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    )
