"""Evaluation numbers against brute-force float64 references and hand-computed cases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import files, metrics


def reference(books: np.ndarray, x: np.ndarray, codes: np.ndarray) -> list[tuple[float, ...]]:
    """(mse, relative error, snr dB) per m from explicit float64 sums of codebook entries."""
    x64 = x.astype(np.float64)
    energy = (x64**2).sum()
    out, recon = [], np.zeros_like(x64)
    for m in range(books.shape[0]):
        recon = recon + books[m].astype(np.float64)[codes[:, m]]
        err = ((x64 - recon) ** 2).sum()
        out.append((err / x.size, err / energy, 10 * math.log10(energy / err)))
    return out


@pytest.fixture
def setup() -> tuple[vg.RvqEncoder, np.ndarray]:
    rng = np.random.default_rng(0)
    enc = vg.from_codebooks(
        rng.normal(size=(3, 16, 4)).astype(np.float32) * [[[1.0]], [[0.5]], [[0.2]]]
    )
    return enc, rng.normal(size=(700, 4)).astype(np.float32)


def test_rate_distortion_matches_brute_force(setup: tuple[vg.RvqEncoder, np.ndarray]) -> None:
    enc, x = setup
    report = metrics.evaluate(enc, x, block_rows=128)
    codes = enc.encode(x)
    for row, (mse, rel, snr) in zip(
        report.rows, reference(enc.codebook_array, x, codes), strict=True
    ):
        assert row.mse == pytest.approx(mse, rel=1e-6)
        assert row.relative_error == pytest.approx(rel, rel=1e-6)
        assert row.snr_db == pytest.approx(snr, rel=1e-6)
        assert row.bits == pytest.approx(row.stages * 4.0)
    assert [r.stages for r in report.rows] == [1, 2, 3]
    counts = np.stack([np.bincount(codes[:, s], minlength=16) for s in range(3)])
    np.testing.assert_array_equal(report.code_counts, counts)
    assert report.num_vectors == 700 and report.dimension == 4 and report.codebook_size == 16


@given(block=st.integers(1, 800))
def test_block_size_does_not_change_the_result(block: int) -> None:
    rng = np.random.default_rng(5)
    enc = vg.from_codebooks(rng.normal(size=(2, 8, 3)))
    x = np.round(rng.normal(size=(300, 3)), 1)  # rounding makes repeated glyphs likely
    a = metrics.evaluate(enc, x, block_rows=block)
    b = metrics.evaluate(enc, x, block_rows=300)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra.mse == pytest.approx(rb.mse, rel=1e-9)
        assert ra.relative_error == pytest.approx(rb.relative_error, rel=1e-9)
    np.testing.assert_array_equal(a.code_counts, b.code_counts)
    assert (a.distinct_glyphs, a.shared_vectors) == (b.distinct_glyphs, b.shared_vectors)


def test_vector_file_input_equals_array_input(
    tmp_path: Path, setup: tuple[vg.RvqEncoder, np.ndarray]
) -> None:
    enc, x = setup
    np.save(tmp_path / "x.npy", x)
    a = metrics.evaluate(enc, files.open_vectors(tmp_path / "x.npy"), block_rows=100)
    b = metrics.evaluate(enc, x)
    assert a.table() == b.table()


def test_hand_computed_usage_and_perplexity() -> None:
    # One stage, K = 4 codes at 0, 1, 2, 3 on a line; inputs pick codes 0, 0, 1, 3.
    enc = vg.from_codebooks(np.array([[[0.0], [1.0], [2.0], [3.0]]]))
    report = metrics.evaluate(enc, np.array([[0.0], [0.1], [1.0], [3.2]]))
    np.testing.assert_array_equal(report.code_counts, [[2, 1, 0, 1]])
    assert report.utilization == (0.75,)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity 2**1.5
    assert report.perplexity[0] == pytest.approx(2**1.5)
    assert report.distinct_glyphs == 3
    assert report.shared_vectors == 2
    assert report.distinct_share == pytest.approx(0.75)
    err = 0.1**2 + 0.2**2
    energy = 0.1**2 + 1.0 + 3.2**2
    assert report.rows[0].mse == pytest.approx(err / 4)
    assert report.rows[0].relative_error == pytest.approx(err / energy)


def test_distinct_glyphs_with_merges(monkeypatch: Any) -> None:
    monkeypatch.setattr(metrics._evaluate, "_MERGE_AT", 7)  # force many partial merges
    rng = np.random.default_rng(1)
    enc = vg.from_codebooks(rng.normal(size=(2, 4, 2)))
    x = rng.normal(size=(500, 2))
    report = metrics.evaluate(enc, x, block_rows=13)
    rows = [tuple(c) for c in enc.encode(x).tolist()]
    counts: dict[tuple[int, ...], int] = {}
    for r in rows:
        counts[r] = counts.get(r, 0) + 1
    assert report.distinct_glyphs == len(counts)
    assert report.shared_vectors == sum(c for c in counts.values() if c > 1)


def test_distinct_glyphs_beyond_uint64_ids() -> None:
    # 65536**5 = 2**80 glyphs: counted by raw code bytes instead of uint64 ids.
    rng = np.random.default_rng(2)
    enc = vg.from_codebooks(rng.normal(size=(5, 1 << 16, 1)))
    x = np.repeat(rng.normal(size=(40, 1)), [1, 2, 3, 4] * 10, axis=0)
    report = metrics.evaluate(enc, x, block_rows=7)
    rows = [tuple(c) for c in enc.encode(x).tolist()]
    counts = {r: rows.count(r) for r in set(rows)}
    assert report.distinct_glyphs == len(counts)
    assert report.shared_vectors == sum(c for c in counts.values() if c > 1)


def test_exact_reconstruction_gives_infinite_snr_as_null_json() -> None:
    enc = vg.from_codebooks(np.array([[[0.0, 0.0], [1.0, 2.0]]]))
    report = metrics.evaluate(enc, np.array([[1.0, 2.0], [0.0, 0.0]]))
    assert report.rows[0].mse == 0 and report.rows[0].snr_db == math.inf
    parsed = json.loads(report.to_json())
    assert parsed["stages"][0]["snr_db"] is None
    assert parsed["per_stage"][0] == {
        "stage": 1,
        "utilization": 1.0,
        "perplexity": pytest.approx(2.0),
        "codes_used": 2,
    }


def test_beam_is_passed_on(setup: tuple[vg.RvqEncoder, np.ndarray]) -> None:
    pytest.importorskip("viva_glyph.core")
    enc, x = setup
    x = x[:200]
    greedy = metrics.evaluate(enc, x)
    beam = metrics.evaluate(enc, x, beam_size=4)
    assert beam.beam_size == 4
    codes = enc.encode(x, beam_size=4)
    ref = reference(enc.codebook_array, x, codes)
    assert beam.rows[-1].mse == pytest.approx(ref[-1][0], rel=1e-6)
    assert beam.rows[-1].mse <= greedy.rows[-1].mse * (1 + 1e-9)


def test_nan_row_is_named_with_its_global_index(setup: tuple[vg.RvqEncoder, np.ndarray]) -> None:
    enc, x = setup
    x = x.copy()
    x[333, 1] = np.nan
    with pytest.raises(ValueError, match="row 333 holds NaN"):
        metrics.evaluate(enc, x, block_rows=100)
    with pytest.raises(ValueError, match="expects dimension 4"):
        metrics.evaluate(enc, np.zeros((3, 5)))


def test_table_lists_every_stage(setup: tuple[vg.RvqEncoder, np.ndarray]) -> None:
    enc, x = setup
    report = metrics.evaluate(enc, x)
    text = report.table()
    for r in report.rows:
        assert f"{r.relative_error:.4g}" in text
    assert "distinct glyphs:" in text and "perplexity" in text


def test_plot_writes_a_png(tmp_path: Path, setup: tuple[vg.RvqEncoder, np.ndarray]) -> None:
    pytest.importorskip("matplotlib")
    enc, x = setup
    path = tmp_path / "r.png"
    metrics.evaluate(enc, x).plot(path)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = np.frombuffer(raw[16:24], dtype=">u4")
    assert width > 600 and height > 400
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]
