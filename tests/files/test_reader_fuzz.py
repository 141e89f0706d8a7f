"""Fuzzed CSV, fvecs, .npy and .npz files: a bounded, seeded loop of random bytes and
mutations of valid files. Every file either reads as a finite-shaped (N, D) matrix or
fails with a clean ValueError / TypeError (which the command line reports with exit 2)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from viva_glyph import files

pytestmark = pytest.mark.slow  # fuzz loops

SECONDS = 1.0  # per format: a few seconds in CI in all


def valid_csv(rng: np.random.Generator) -> bytes:
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    rows = [",".join(repr(float(v)) for v in rng.normal(size=d)) for _ in range(n)]
    if rng.random() < 0.5:
        rows.insert(0, ",".join(f"c{i}" for i in range(d)))
    return ("\n".join(rows) + "\n").encode()


def valid_npy(rng: np.random.Generator) -> bytes:
    shape = (int(rng.integers(1, 6)), int(rng.integers(1, 5)))
    buf = io.BytesIO()
    np.save(buf, rng.normal(size=shape).astype(rng.choice(["<f4", ">f8", "<i2", "u1"])))
    return buf.getvalue()


def valid_npz(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=rng.normal(size=(int(rng.integers(1, 6)), int(rng.integers(1, 5)))))
    return buf.getvalue()


def valid_fvecs(rng: np.random.Generator) -> bytes:
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    dims = np.full((n, 1), d, "<i4").view("<f4")
    return np.hstack([dims, rng.normal(size=(n, d)).astype("<f4")]).tobytes()


SPECIAL = [b"", b",", b"\n", b"\r", b'"', b"\x00", b"\xef\xbb\xbf", b"\xff", b"nan", b"-", b"e9"]


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 5)
        at = int(rng.integers(0, len(buf) + 1))
        if kind == 0 and buf:  # flip a bit
            i = min(at, len(buf) - 1)
            buf[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncate
            del buf[at:]
        elif kind == 2:  # insert a special token
            buf[at:at] = SPECIAL[int(rng.integers(0, len(SPECIAL)))]
        elif kind == 3 and buf:  # overwrite 4 bytes with a random int32 (a row dimension)
            buf[at : at + 4] = np.int32(rng.integers(-(2**31), 2**31)).tobytes()
        else:  # random bytes
            buf[at:at] = rng.bytes(int(rng.integers(1, 16)))
    return bytes(buf)


def read_everything(path: Path) -> None:
    vf = files.open_vectors(path)
    n, d = vf.shape
    assert n >= 1 and d >= 1
    whole = vf.array()
    assert whole.shape == (n, d)
    if path.suffix == ".fvecs":  # independent reference: the layout parsed from the raw bytes
        raw = np.frombuffer(path.read_bytes(), "<i4").reshape(n, 1 + d)
        assert (raw[:, 0] == d).all(), "a row declaring another dimension was accepted"
        np.testing.assert_array_equal(whole.view("<i4"), raw[:, 1:])
    for start, block in vf.blocks(3):
        assert block.shape == (min(3, n - start), d)
    np.testing.assert_array_equal(np.concatenate([b for _, b in vf.blocks(2)]), whole)


#: Files every fuzz run reads whatever the clock says, so the asserted outcome counts hold
#: on a loaded machine too (with the seeds below, each format reads at least 17 and
#: rejects at least 270 of its first 300 files).
MIN_FILES = 300


def fuzz(tmp_path: Path, suffix: str, make: object, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    ok = rejected = 0
    path = tmp_path / f"f{suffix}"
    stop = time.monotonic() + SECONDS
    while ok + rejected < MIN_FILES or time.monotonic() < stop:  # a fixed start, then the clock
        raw = make(rng) if rng.random() < 0.8 else b""  # type: ignore[operator]
        raw = mutate(raw, rng) if raw else rng.bytes(int(rng.integers(0, 64)))
        path.write_bytes(raw)
        try:
            read_everything(path)
            ok += 1
        except (ValueError, TypeError):
            rejected += 1
        except BaseException as exc:  # anything else is a bug: show the input
            raise AssertionError(f"{type(exc).__name__}: {exc} for {raw!r}") from exc
    return ok, rejected


def test_fuzz_csv(tmp_path: Path) -> None:
    ok, rejected = fuzz(tmp_path, ".csv", valid_csv, 11)
    assert ok > 5 and rejected > 5  # both outcomes were exercised


def test_fuzz_fvecs(tmp_path: Path) -> None:
    ok, rejected = fuzz(tmp_path, ".fvecs", valid_fvecs, 12)
    assert ok > 5 and rejected > 5


def test_fuzz_npy_and_npz(tmp_path: Path) -> None:
    for suffix, make, seed in ((".npy", valid_npy, 13), (".npz", valid_npz, 14)):
        ok, rejected = fuzz(tmp_path, suffix, make, seed)
        assert ok > 5 and rejected > 5


def valid_parquet(rng: np.random.Generator) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = rng.normal(size=(int(rng.integers(1, 40)), 3))
    table = (
        pa.table({"emb": pa.array(list(x))})
        if rng.random() < 0.5
        else pa.table({f"c{i}": x[:, i] for i in range(3)})
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=7)
    return buf.getvalue()


def test_fuzz_parquet(tmp_path: Path) -> None:
    """A fixed list of mutated files (pyarrow itself aborts the process on a few corrupt
    files when their column statistics are read, so the inputs are not left to the clock;
    the reader does not read statistics)."""
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(21)
    path = tmp_path / "f.parquet"
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(150):
        raw = mutate(valid_parquet(rng), rng)
        path.write_bytes(raw)
        try:
            read_everything(path)
            outcomes["ok"] += 1
        except (ValueError, TypeError):
            outcomes["rejected"] += 1
    assert outcomes["ok"] > 10 and outcomes["rejected"] > 10
