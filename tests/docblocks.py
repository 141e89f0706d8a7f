"""The code blocks of the markdown pages (README.md, docs/**/*.md) run as tests.

Rules (for whoever edits a page):

- Every fenced block names its language: ``python``, ``bash`` (or ``sh``/``shell``), or
  ``text`` (``json``, ``toml``, ``yaml``, ``csv``) for anything that is not code to run.
- Python blocks run in order, one namespace per ``#``/``##`` section of their page (so a
  block may use the names of the blocks before it in its section), in a fresh temporary
  folder holding the sample files of :data:`SAMPLE_FILES`.
- Shell blocks run each in a fresh temporary folder with the same files, under
  ``bash -euo pipefail`` with ``viva-glyph`` meaning ``python -m viva_glyph``.
- A block that truly cannot run on a laptop (it installs packages, needs a cluster,
  or is a benchmark of minutes) carries ``<!-- no-test: reason -->`` on the line
  right before its fence.

``tests/test_readme.py`` runs the README's blocks, ``tests/test_docs.py`` those of the
docs site; both use the parser and runners here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell"}
#: Labels of blocks that are not code to run (anything else is refused: label it).
NOT_CODE = {"text", "json", "toml", "yaml", "csv"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
NO_TEST = re.compile(r"^\s*<!--\s*no-test:(.*?)-->\s*$")
#: Optional packages: a block that needs one that is missing is skipped, not failed.
OPTIONAL = {
    "torch",
    "dask",
    "distributed",
    "safetensors",
    "matplotlib",
    "pyarrow",
    "zarr",
    "sklearn",
}


def _vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    """Correlated Gaussian vectors, float32: a small stand-in for a user's embeddings."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(rows, dim)) @ mix).astype(np.float32)


#: The files the pages' examples read, as small as the examples allow.
SAMPLE_FILES: dict[str, Callable[[Path], None]] = {
    "vectors.npy": lambda p: np.save(p, _vectors(1_000, 8, 0)),
    "embeddings.npy": lambda p: np.save(p, _vectors(1_000, 8, 1)),
    "queries.npy": lambda p: np.save(p, _vectors(100, 8, 2)),
}


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    section: str
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    skip: str | None  # the no-test reason, if any


def parse(text: str, name: str = "README.md") -> tuple[list[Block], int]:
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
            raise AssertionError(f"{name}:{i + 1}: the block never closes")
        code = "\n".join(
            ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]
        )
        marker = NO_TEST.match(previous)
        skip = marker.group(1).strip() if marker else None
        blocks.append(Block(section, i + 2, lang, code + "\n", skip))
        previous = ""
        i = end + 1
    return blocks, markers


@dataclass(frozen=True)
class Page:
    """A markdown page and its blocks."""

    path: Path
    blocks: tuple[Block, ...]
    markers: int

    @classmethod
    def read(cls, path: Path) -> Page:
        name = path.relative_to(ROOT).as_posix()
        blocks, markers = parse(path.read_text(encoding="utf-8"), name)
        return cls(path, tuple(blocks), markers)

    @property
    def name(self) -> str:
        """The page's path from the repository root (``docs/guide/training.md``)."""
        return self.path.relative_to(ROOT).as_posix()

    def sections(self) -> list[str]:
        """Sections holding Python blocks that run, in page order."""
        run = [b for b in self.blocks if b.lang in PYTHON and b.skip is None]
        return list(dict.fromkeys(b.section for b in run))

    def shell_blocks(self) -> list[Block]:
        """Shell blocks that run."""
        return [b for b in self.blocks if b.lang in SHELL and b.skip is None]

    def check_labels(self) -> None:
        """Every block is labelled, every skip says why and sits right before a fence."""
        known = PYTHON | SHELL | NOT_CODE
        unlabelled = [b.line - 1 for b in self.blocks if b.lang not in known]
        assert not unlabelled, (
            f"{self.name} lines {unlabelled}: label the block python, bash or text"
        )
        skipped = [b for b in self.blocks if b.skip is not None]
        assert all(b.skip for b in skipped), f"{self.name}: a no-test marker must give its reason"
        assert all(b.lang in PYTHON | SHELL for b in skipped), (
            f"{self.name}: no-test only marks code blocks"
        )
        assert len(skipped) == self.markers, (
            f"{self.name}: a no-test marker must sit right before a block's fence"
        )


def sample_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fill ``folder`` with :data:`SAMPLE_FILES` and make it the working directory."""
    for name, make in SAMPLE_FILES.items():
        make(folder / name)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return folder


def run_python_section(page: Page, section: str) -> None:
    """Run the Python blocks of one section of ``page`` in one namespace, in order."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in page.blocks:
        if block.section != section or block.lang not in PYTHON or block.skip is not None:
            continue
        code = compile("\n" * (block.line - 1) + block.code, str(page.path), "exec")
        try:
            exec(code, namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                pytest.skip(f"{page.name}:{block.line} needs {exc.name}")
            raise


def run_shell_block(page: Page, block: Block, folder: Path) -> None:
    """Run one shell block in ``folder``, ``viva-glyph`` being this Python's package."""
    script = f'viva-glyph() {{ "{sys.executable}" -m viva_glyph "$@"; }}\n{block.code}'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, (
        f"{page.name}:{block.line}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    )
