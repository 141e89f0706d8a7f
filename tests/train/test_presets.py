"""Presets: what each trains for, the block-coordinate rounds against independent
references, files, determinism across threads and kernels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import viva_glyph as vg
from viva_glyph.core import Codebook, EncodeSettings
from viva_glyph.train import PRESETS, FitParams
from viva_glyph.train._rounds import _round, stage_rounds


def _data(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)) * 2.0
    x = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, d)) * 0.8 ** np.arange(d)
    return x.astype(np.float32)


SMALL = dict(num_stages=3, codebook_size=16, seed=3)


def _mse(enc: vg.RvqEncoder, x: np.ndarray, beam: int) -> float:
    return float(((x.astype(np.float64) - enc.decode(enc.encode(x, beam_size=beam))) ** 2).mean())


@pytest.fixture(scope="module")
def quality() -> vg.RvqEncoder:
    return vg.fit(_data(4_000), preset="quality", **SMALL)


def test_fast_is_the_default_fit_bit_for_bit() -> None:
    x = _data(2_000, seed=1)
    assert vg.fit(x, preset="fast", **SMALL) == vg.fit(x, **SMALL)
    assert vg.fit(x, **SMALL).encoding == EncodeSettings(beam_size=1)


def test_quality_records_its_preset_and_beam(quality: vg.RvqEncoder, tmp_path: Path) -> None:
    p = PRESETS["quality"]
    summary = quality.training
    assert summary is not None
    assert quality.encoding == EncodeSettings(beam_size=p.encode_beam)
    assert summary.params["preset"] == "quality" and summary.params["beam_size"] == p.beam_size
    assert 1 <= len(summary.rounds_mse) <= p.rounds + 1
    quality.save(tmp_path / "q.safetensors")  # presets round-trip through model files
    back = vg.load(tmp_path / "q.safetensors")
    assert back == quality and back.training == summary
    res = run_cli("info", str(tmp_path / "q.safetensors"), "--json")
    assert json.loads(res.stdout)["encoding"] == {"beam_size": p.encode_beam}


def test_the_accepted_rounds_lower_the_held_out_error(quality: vg.RvqEncoder) -> None:
    summary = quality.training
    assert summary is not None
    trace, kept = summary.rounds_mse, summary.rounds_kept
    assert all(trace[r] < trace[r - 1] for r in range(1, kept + 1))  # every kept round gained
    assert len(trace) == kept + 1 or not trace[kept + 1] < trace[kept]  # the first loss stops


def test_stage_rounds_never_raise_the_held_out_error() -> None:
    x, held = _data(3_000, seed=4), _data(800, seed=5)
    stagewise = vg.fit(x, beam_size=2, max_samples=3_000, **SMALL)
    books = list(stagewise.codebooks)
    before = _mse(stagewise, held, 4)
    out, trace, kept = stage_rounds(books, x, held, 4, 5)
    after = _mse(vg.RvqEncoder(out), held, 4)  # measured independently, by the encoder
    assert after == pytest.approx(trace[kept], rel=1e-6) and trace[0] == pytest.approx(before)
    assert after <= before
    if kept == 0:
        assert [b.vectors.tobytes() for b in out] == [b.vectors.tobytes() for b in books]


def test_a_round_refits_each_stage_by_least_squares() -> None:
    """Reference: with the round's codes, entry k of stage m is the mean of x minus the
    other stages' entries (earlier stages already refitted) over the rows that chose k."""
    x = _data(1_500, seed=6)
    enc = vg.fit(x, **SMALL)
    books = list(enc.codebooks)
    codes = enc.encode(x, beam_size=3).astype(np.intp)
    got = _round(books, x, 3)
    current = [b.vectors64.copy() for b in books]
    for m in range(len(books)):
        other = sum(current[j][codes[:, j]] for j in range(len(books)) if j != m)
        target = x.astype(np.float64) - other
        for k in range(books[m].size):
            rows = codes[:, m] == k
            if rows.any():
                current[m][k] = target[rows].mean(axis=0)
        np.testing.assert_allclose(got[m].vectors64, current[m], rtol=1e-5, atol=1e-5)
        current[m] = got[m].vectors64.copy()  # the next stage sees the stored entries

    # for those codes, the round never raises the training error
    def err(bs: list[Codebook]) -> float:
        rec = sum(b.vectors64[codes[:, j]] for j, b in enumerate(bs))
        return float(((x - rec) ** 2).mean())

    assert err(got) <= err(books) * (1 + 1e-6)


def test_explicit_parameters_override_the_preset() -> None:
    p = FitParams(preset="quality", beam_size=2)
    assert (p.train_beam, p.encode_beam, p.rounds) == (2, 32, PRESETS["quality"].rounds)
    p = FitParams(beam_size=6)  # no preset: the model encodes as it was trained
    assert (p.train_beam, p.encode_beam, p.rounds) == (6, 6, 0)
    assert FitParams(preset="balanced").resolve(1_000_000, 8)[1] == 1024 * 256
    assert FitParams(preset="balanced", max_samples=5_000).resolve(1_000_000, 8)[1] == 5_000
    with pytest.raises(ValueError, match="preset must be one of"):
        FitParams(preset="best")
    with pytest.raises(ValueError, match="preset must be one of"):
        vg.fit(_data(300), preset="Quality", num_stages=2, codebook_size=8)


@pytest.mark.parametrize("preset", ["balanced", "quality"])
def test_codebooks_do_not_depend_on_threads_or_numba(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numba")
    x = _data(2_500, seed=7)
    runs = []
    for threads, numba in (("1", "1"), ("2", "1"), ("2", "0")):
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", numba)
        runs.append(vg.fit(x, preset=preset, **SMALL))
    assert runs[0] == runs[1] == runs[2]
    assert runs[0].training is not None and runs[1].training is not None
    assert runs[0].training.rounds_mse == runs[1].training.rounds_mse


def test_quality_codes_beat_fast_codes_on_held_out_rows(quality: vg.RvqEncoder) -> None:
    held = _data(2_000, seed=9)
    fast = vg.fit(_data(4_000), **SMALL)
    assert quality.encode(held).shape == (2_000, 3)
    assert _mse(quality, held, 32) < _mse(fast, held, 1)
