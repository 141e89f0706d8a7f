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


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import numpy as np

    from viva_glyph import semantic

    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    ids = semantic.fit(x, levels=2, codebook_size=(4, 8), balance=0.5, suffix_size=40)
    ids.build_trie(ids.unique(x))
    path = tmp_path_factory.mktemp("good") / "ids.safetensors"
    ids.save(path)
    return path.read_bytes()


def _with_settings(good: bytes, edit: object) -> bytes:
    """The file with its 'semantic' settings JSON changed by ``edit(dict)``."""
    import json

    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    cfg = json.loads(header["__metadata__"]["semantic"])
    edit(cfg)  # type: ignore[operator]
    header["__metadata__"]["semantic"] = json.dumps(cfg)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + good[8 + n :]


FIELDS = [
    "levels",
    "codebook_sizes",
    "dimension",
    "metric",
    "balance",
    "beam_size",
    "suffix_size",
    "normalize_residuals",
    "residual_scales",
    "training",
]


@pytest.mark.parametrize("wrong", ["missing", "a string", "a list", "null"])
@pytest.mark.parametrize("field", FIELDS)
def test_every_missing_or_mistyped_setting_is_a_format_error_naming_it(
    tmp_path: Path, good_file: bytes, field: str, wrong: str
) -> None:
    # A header without "balance" raised a bare KeyError (CLI: exit 1, "unexpected error").
    from viva_glyph import semantic
    from viva_glyph.core.io import ModelFormatError

    value = {"a string": "x", "a list": [1], "null": None}.get(wrong)

    def edit(cfg: dict[str, object]) -> None:
        if wrong == "missing":
            del cfg[field]
        else:
            cfg[field] = value

    path = tmp_path / "ids.safetensors"
    path.write_bytes(_with_settings(good_file, edit))
    optional = {"normalize_residuals", "residual_scales", "training"}  # older files lack them
    if (wrong == "missing" and field in optional) or (
        wrong == "null" and field in ("balance", "residual_scales")
    ):
        semantic.load(path)  # what a valid file may hold
        return
    with pytest.raises(ModelFormatError, match=field) as info:
        semantic.load(path)
    assert "is not a valid viva-glyph semantic-ID file" in str(info.value)


def test_fuzz_semantic_loader(tmp_path: Path, good_file: bytes) -> None:
    """3,000 mutated files (bit flips, byte splices and truncations, in the header most):
    each loads as a sound model or raises ModelFormatError."""
    import numpy as np

    from viva_glyph import semantic
    from viva_glyph.core.io import ModelFormatError

    rng = np.random.default_rng(2027)
    (n,) = struct.unpack("<Q", good_file[:8])
    path = tmp_path / "fuzz.safetensors"
    loaded = 0
    for case in range(3000):
        data = bytearray(good_file)
        kind = case % 4
        if kind < 2:  # bit flips inside the header (kind 0) or anywhere (kind 1)
            top = 8 + n if kind == 0 else len(data)
            for pos in rng.integers(0, top, size=int(rng.integers(1, 5))):
                data[pos] ^= 1 << int(rng.integers(8))
        elif kind == 2:  # random bytes spliced into the header
            pos = int(rng.integers(8, 8 + n))
            data[pos : pos + int(rng.integers(1, 8))] = rng.bytes(int(rng.integers(1, 8)))
        else:
            data = data[: int(rng.integers(0, len(data)))]
        path.write_bytes(bytes(data))
        try:
            ids = semantic.load(path)
        except ModelFormatError:
            continue
        except Exception as exc:  # pragma: no cover - the failure report
            raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}") from exc
        loaded += 1
        assert ids.levels == 2 and ids.dimension == 4
        assert all(np.isfinite(b.vectors).all() for b in ids.codebooks)
    assert 0 < loaded < 3000
