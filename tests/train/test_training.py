"""viva_glyph.fit: cluster recovery, determinism, refinement, errors, summary."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import viva_glyph as vg
from viva_glyph.core import TrainingSummary
from viva_glyph.train import _params
from viva_glyph.train._refine import lsq_codebooks


def clustered(
    n_per: int = 40, k: int = 8, d: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-50, 50, (k, d))
    x = np.repeat(centers, n_per, axis=0) + 0.05 * rng.standard_normal((k * n_per, d))
    return x[rng.permutation(len(x))].astype(np.float32), centers


def gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ a).astype(np.float32)


def mse(enc: vg.RvqEncoder, x: np.ndarray, beam: int = 1) -> float:
    """Mean squared error per component (sklearn.metrics.mean_squared_error's figure)."""
    diff = x.astype(np.float64) - enc.decode(enc.encode(x, beam_size=beam))
    return float((diff**2).mean())


def test_fit_recovers_well_separated_clusters() -> None:
    x, centers = clustered()
    enc = vg.fit(x, num_stages=1, codebook_size=8)
    book = enc.codebook_array[0].astype(np.float64)
    dist = np.linalg.norm(book[:, None] - centers[None], axis=-1)
    assert sorted(dist.argmin(axis=1).tolist()) == list(range(8))
    assert dist.min(axis=1).max() < 0.05
    assert enc.dtype == np.float32
    assert isinstance(enc.training, TrainingSummary)
    assert enc.training.stage_mse[0] == pytest.approx(mse(enc, x), rel=1e-4)


@pytest.mark.parametrize(("beam", "refine"), [(1, 0), (3, 2)])
def test_fit_is_deterministic(beam: int, refine: int) -> None:
    x = gaussian(1500, 6)
    kw = dict(num_stages=3, codebook_size=16, beam_size=beam, refine=refine, iterations=8)
    a = vg.fit(x, seed=3, **kw)
    b = vg.fit(x, seed=3, **kw)
    assert a.codebook_array.tobytes() == b.codebook_array.tobytes()
    assert a.training is not None and b.training is not None
    assert a.training.stage_mse == b.training.stage_mse
    c = vg.fit(x, seed=4, **kw)
    assert c.codebook_array.tobytes() != a.codebook_array.tobytes()


def test_stage_mse_decrease_and_match_encoding() -> None:
    x = gaussian(2000, 6, seed=1)
    for beam in (1, 4):
        enc = vg.fit(x, num_stages=4, codebook_size=16, beam_size=beam, iterations=10)
        errs = enc.training.stage_mse  # type: ignore[union-attr]
        assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(errs))
        assert errs[-1] < errs[0] < float((x.astype(np.float64) ** 2).mean())
        assert errs[-1] == pytest.approx(mse(enc, x, beam), rel=1e-4)


def test_refinement_never_worse_on_held_out_and_lsq_matches_lstsq() -> None:
    x = gaussian(3000, 8, seed=2)
    enc = vg.fit(x, num_stages=3, codebook_size=16, beam_size=2, refine=3, iterations=10)
    s = enc.training
    assert s is not None and len(s.refine_mse) == 4
    assert s.refine_mse[s.refine_selected] == min(s.refine_mse) <= s.refine_mse[0]
    # the joint update against an explicit ridge least-squares solve
    rng = np.random.default_rng(0)
    m, k, d, n = 2, 4, 3, 60
    codes = rng.integers(0, k, (n, m))
    xs = rng.standard_normal((n, d))
    prev = rng.standard_normal((m, k, d))
    design = np.zeros((n, m * k))
    design[np.arange(n)[:, None], codes + np.arange(m) * k] = 1.0
    lhs = np.vstack([design, np.eye(m * k)])
    rhs = np.vstack([xs, prev.reshape(m * k, d)])
    ref = np.linalg.lstsq(lhs, rhs, rcond=None)[0].reshape(m, k, d)
    np.testing.assert_allclose(lsq_codebooks(xs, codes, prev, ridge=1.0), ref, atol=1e-10)


def test_memmap_sample_matches_in_memory(tmp_path: Path) -> None:
    x = gaussian(3000, 5, seed=3).astype(np.float64)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    kw = dict(num_stages=2, codebook_size=16, max_samples=1000, iterations=5, seed=1)
    a = vg.fit(mm, **kw)
    b = vg.fit(x, **kw)
    assert a.codebook_array.tobytes() == b.codebook_array.tobytes()
    assert a.training.params["samples_used"] == 1000  # type: ignore[union-attr]
    x[2000] = np.nan  # a bad row outside the sample is never read...
    vg.fit(x, **kw)
    rows = np.flatnonzero(np.isin(np.arange(3000), _sampled_rows(3000, 1000, 1)))
    x[rows[5]] = np.inf  # ...a bad row in the sample is named by its row number
    with pytest.raises(ValueError, match=f"row {rows[5]} "):
        vg.fit(x, **kw)


def _sampled_rows(n: int, m: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


def test_errors() -> None:
    x = gaussian(100, 4)
    with pytest.raises(ValueError, match="at least codebook_size = 256 rows, got N = 100"):
        vg.fit(x)
    with pytest.raises(ValueError, match=r"dimension 4.*config.dimension is 6"):
        vg.fit(x, vg.RvqConfig(2, 6, 8))
    with pytest.raises(ValueError, match="num_stages=3 contradicts"):
        vg.fit(x, vg.RvqConfig(2, 4, 8), num_stages=3)
    bad = x.copy()
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="row 17 "):
        vg.fit(bad, num_stages=1, codebook_size=8)
    for kw, err in [
        ({"beam_size": 0}, ValueError),
        ({"iterations": 0}, ValueError),
        ({"refine": -1}, ValueError),
        ({"seed": -2}, ValueError),
        ({"max_samples": 4}, ValueError),
        ({"beam_size": 1.5}, TypeError),
        ({"codebook_size": 0}, ValueError),
    ]:
        with pytest.raises(err):
            vg.fit(x, **{"num_stages": 1, "codebook_size": 8, **kw})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RvqConfig"):
        vg.fit(x, config=(1, 4, 8))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vg.fit(np.array([["a", "b"]] * 20))
    with pytest.raises(ValueError, match="refine"):
        vg.fit(x[:9], num_stages=1, codebook_size=9, refine=1)


def test_summary_round_trip_and_bad_input() -> None:
    x = gaussian(500, 3)
    s = vg.fit(x, num_stages=2, codebook_size=8, refine=1, iterations=4).training
    assert s is not None
    d = json.loads(json.dumps(s.to_dict()))
    assert TrainingSummary.from_dict(d) == s
    assert d["params"]["codebook_size"] == 8 and len(d["iterations"]) == 2
    for bad in [
        None,
        {},
        {**d, "stage_mse": "x"},
        {**d, "iterations": [1.5, 2]},
        {**d, "params": 3},
    ]:
        with pytest.raises(ValueError):
            TrainingSummary.from_dict(bad)


def test_silent_by_default_progress_and_logging(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    x = gaussian(400, 3)
    vg.fit(x, num_stages=2, codebook_size=8, iterations=3)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    with caplog.at_level(logging.INFO, logger="viva_glyph"):
        vg.fit(x, num_stages=2, codebook_size=8, iterations=3, progress=True)
    assert "stage 2/2" in caplog.text
    assert "viva_glyph.fit" in capsys.readouterr().err


def test_beam_training_numba_and_numpy_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    x = gaussian(1200, 5, seed=9)
    kw = dict(num_stages=3, codebook_size=16, beam_size=4, iterations=6, seed=2)
    a = vg.fit(x, **kw)
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    b = vg.fit(x, **kw)
    assert a.codebook_array.tobytes() == b.codebook_array.tobytes()
    np.testing.assert_array_equal(a.encode(x, beam_size=4), b.encode(x, beam_size=4))


DATA = Path(__file__).parents[1] / "data"


def test_model_file_of_version_0_1_reads_per_component_mse() -> None:
    """A file written by viva-glyph 0.1 holds per-vector errors under the old keys."""
    enc = vg.load(DATA / "fit_v0_1.safetensors")
    s = enc.training
    assert s is not None and s.params["dimension"] == 3
    # the figures as 0.1 wrote them (mean ||x - x'||^2), read back divided by D = 3
    assert s.stage_mse == pytest.approx((1.022667483650148 / 3, 0.346308823832466 / 3))
    # and that is the per-component MSE of the stored codebooks on the data they were fitted to
    x = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    assert s.stage_mse[-1] == pytest.approx(mse(enc, x), rel=1e-5)
    # a 0.1 summary with refinement (as its to_dict wrote it)
    old = {
        "stage_errors": [0.9723142611069812, 0.35633415310057226], "iterations": [9, 9],
        "seconds": 1.1, "params": {"dimension": 3, "refine": 1},
        "refine_errors": [0.6062556378829107, 0.7285232624776055], "refine_selected": 0,
    }  # fmt: skip
    got = TrainingSummary.from_dict(old)
    assert got.refine_mse == pytest.approx((0.6062556378829107 / 3, 0.7285232624776055 / 3))
    assert TrainingSummary.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    with pytest.raises(ValueError, match="dimension"):  # no D: per-vector figures unreadable
        TrainingSummary.from_dict({**old, "params": {}})


def test_cli_fit_prints_per_component_mse(tmp_path: Path) -> None:
    x = gaussian(1000, 6, seed=4)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-m", "viva_glyph", "fit", str(tmp_path / "x.npy"), "-o",
         str(tmp_path / "m.safetensors"), "--stages", "2", "--codebook-size", "16"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(t for t in out.splitlines() if "MSE" in t)
    assert "per component" in line
    printed = [float(v) for v in line.split(":")[-1].split(",")]
    enc = vg.load(tmp_path / "m.safetensors")
    assert printed[-1] == pytest.approx(mse(enc, x), rel=1e-3)


def test_beam_size_bounded_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: fit --beam 100000 on 5,000 x 8 never finished; now it says what fits."""
    x = gaussian(5000, 8, seed=5)
    with pytest.raises(ValueError, match=r"largest beam_size that fits .* is \d+"):
        vg.fit(x, beam_size=100_000)
    monkeypatch.setattr(_params, "memory_available", lambda: 2 << 30)  # half of it: 1 GiB
    # B * K * rows * 4 bytes: 2**30 // (256 * 5000 * 4) = 209
    with pytest.raises(ValueError, match=r"beam_size 210 needs .* is 209:"):
        vg.fit(x, beam_size=210)
    with pytest.raises(ValueError, match=r"is 419:"):  # fewer rows, larger beams
        vg.fit(x, beam_size=420, max_samples=2500)


def test_data_too_small_for_float32() -> None:
    """Issue 11: data of magnitude 1e-25 trained to a relative error of 8e43 silently."""
    x = gaussian(2000, 4, seed=6).astype(np.float64) * 1e-25
    with pytest.raises(ValueError, match=r"largest magnitude is [0-9.]+e-25.*multiply the data"):
        vg.fit(x, num_stages=2, codebook_size=16)
    enc = vg.fit(x * 1e25, num_stages=2, codebook_size=16)  # scaled as the message says
    assert enc.training is not None and enc.training.stage_mse[-1] < 0.5 * float(np.var(x * 1e25))
    vg.fit(np.zeros((100, 3)), num_stages=1, codebook_size=4)  # all zero: degenerate, allowed


@pytest.mark.parametrize("value", [1e39, -3e20])
def test_values_beyond_float32_training_range_name_the_row(value: float) -> None:
    """Issue 11: float64 input beyond float32's range gave 'Eigenvalues did not converge'."""
    x = gaussian(2000, 4, seed=7).astype(np.float64)
    x[1234, 2] = value
    with pytest.raises(ValueError, match=r"X row 1234 holds a value of magnitude [0-9.]+e\+\d+"):
        vg.fit(x, num_stages=2, codebook_size=16)


def test_float16_input_fits_without_a_warning_as_its_float32_copy() -> None:
    # vg.fit on float16 input printed "RuntimeWarning: overflow encountered in cast" (the
    # magnitude limit 1e15, cast to float16, is inf).
    import warnings

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = vg.fit(x, codebook_size=16, seed=3)
    ref = vg.fit(x.astype(np.float32), codebook_size=16, seed=3)  # float16 -> float32 is exact
    np.testing.assert_array_equal(got.codebook_array, ref.codebook_array)


def test_num_stages_bounded_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break-it: fit(num_stages=10**9) built a tuple of 10**9 sizes (minutes, gigabytes)
    before any check; now the codebooks' float64 memory (M * K * D * 8 bytes) must fit in
    half the memory available, and the message names the largest M that fits."""
    x = gaussian(300, 8, seed=5)
    for m in (10**9, 2**62):
        with pytest.raises(ValueError, match=r"largest num_stages that fits .* is \d+"):
            vg.fit(x, num_stages=m, codebook_size=4)
    monkeypatch.setattr(_params, "memory_available", lambda: 2 << 20)  # half of it: 1 MiB
    # M * K * D * 8 bytes: 2**20 // (4 * 8 * 8) = 4096
    with pytest.raises(ValueError, match=r"num_stages 4097 needs .* is 4096:"):
        vg.fit(x, num_stages=4097, codebook_size=4)
    with pytest.raises(ValueError, match=r"is 4096:"):  # sizes per stage, as a list
        vg.fit(x, codebook_size=[4] * 4097)
