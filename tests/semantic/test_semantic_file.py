"""Semantic-ID files are refused from their header, before their data is read."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, tracemalloc
    from viva_glyph import semantic
    from viva_glyph.core.io import ModelFormatError
    tracemalloc.start()
    try:
        semantic.load(sys.argv[1])
    except ModelFormatError as exc:
        print("refused:", exc)
    print("peak", tracemalloc.get_traced_memory()[1])
    """
)


def run_load(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_large_garbage_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A 256 MiB file whose header is garbage costs well under 8 MiB to refuse."""
    path = tmp_path / "ids.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 40) + b"{" + b"x" * 39)  # a header that is no JSON
        fh.truncate(256 << 20)  # sparse: cheap on disk, 256 MiB if read whole
    res = run_load(path)
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "semantic-ID file" in res.stdout, res.stdout
    peak = int(res.stdout.split()[-1])
    assert peak < 8 << 20, f"refusing a 256 MiB garbage file allocated {peak} bytes"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ids.safetensors"
    os.mkfifo(fifo)
    try:
        res = run_load(fifo)
    except subprocess.TimeoutExpired:
        pytest.fail("semantic.load blocked on a named pipe")
    assert "is a named pipe (FIFO), not a semantic-ID file" in res.stdout, res.stdout + res.stderr
