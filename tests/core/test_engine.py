"""One encoding engine: greedy encoding is the beam engine at B = 1, exact on hard data.

References are independent: float64 brute force (``conftest.brute_force_encode``
and an all-rows version of it here), and the training loop's own calls
(``beam_start`` / ``beam_step``) for the "same engine" checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import assert_stagewise_nearest, brute_force_encode, engine

import viva_glyph as vg
from viva_glyph.core import beam
from viva_glyph.core.nearest import Residuals

Maker = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _trained_like_books(x: np.ndarray, m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    residual = x.astype(np.float64)
    books = []
    for _ in range(m):
        book = residual[rng.choice(len(residual), k, replace=len(residual) < k)]
        books.append(book)
        idx, _ = vg.Codebook(book).nearest_batch(residual)
        residual = residual - book[idx]
    return np.stack(books).astype(np.float32)


def _gauss(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((1500, 16)).astype(np.float32)
    return x, _trained_like_books(x, 4, 64, rng)


def _offset(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # a large common offset: float32 expansions ||c||^2 - 2 x.c lose the differences
    x = (rng.standard_normal((1500, 24)) * 0.05 + 300.0).astype(np.float32)
    return x, _trained_like_books(x, 4, 64, rng)


def _offset_random_books(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.standard_normal((1000, 8)) + 1000.0).astype(np.float32)
    books = rng.standard_normal((3, 32, 8)) * 0.5 ** np.arange(3)[:, None, None]
    books[0] += 1000.0
    return x, books.astype(np.float32)


def _near_duplicates(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    base = rng.standard_normal((3, 16, 6))
    nudge = rng.standard_normal((3, 16, 6)) * 1e-6
    books = np.concatenate([base, base + nudge, base], axis=1)  # exact and near copies
    x = rng.standard_normal((1200, 6))
    return x.astype(np.float32), books.astype(np.float32)


def _duplicate_heavy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # rows repeat a few prototypes and sit on codes exactly: many exact ties
    proto = rng.standard_normal((5, 5)).astype(np.float32)
    x = proto[rng.integers(0, 5, 1000)]
    books = np.stack([np.concatenate([proto, proto, rng.standard_normal((6, 5))])] * 3)
    return x, books.astype(np.float32)


def _power_law(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = 96
    x = rng.standard_normal((1200, d)) * np.arange(1, d + 1) ** -0.7 + 2.0
    return x.astype(np.float32), _trained_like_books(x, 4, 128, rng)


def _clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.standard_normal((20, 32)) * 5
    x = centers[rng.integers(0, 20, 1500)] + rng.standard_normal((1500, 32)) * 0.1
    return x.astype(np.float32), _trained_like_books(x, 5, 32, rng)


def _tiny_scale(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.standard_normal((800, 7)) * 1e-12).astype(np.float32)
    return x, _trained_like_books(x, 3, 16, rng)


def _integer_grid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # integer data and codes: many distances are exactly equal
    x = rng.integers(-3, 4, (1000, 4)).astype(np.float32)
    books = rng.integers(-2, 3, (3, 40, 4)).astype(np.float32)
    return x, books


def _wide(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((600, 384)).astype(np.float32) + 0.5
    return x, _trained_like_books(x, 3, 64, rng)


def _float64_model(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((900, 10)) + 50.0
    return x, _trained_like_books(x, 3, 32, rng).astype(np.float64)


def _cancelling_stages(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # stage 2 adds a huge vector B (||B|| ~ 3e5) that stage 3 takes away again, then
    # small codes follow: a float32 running residual drifts by ~0.05 while the late
    # residuals and codes are ~1, so the engine must bound that drift
    b = rng.standard_normal(8) * 1e5
    books = rng.standard_normal((8, 32, 8))
    books[1] -= b
    books[2] += b
    x = rng.standard_normal((3000, 8)) * 3.0
    return x.astype(np.float32), books.astype(np.float32)


DATA: dict[str, Maker] = {
    "cancelling_stages": _cancelling_stages,
    "gauss": _gauss,
    "offset": _offset,
    "offset_random_books": _offset_random_books,
    "near_duplicates": _near_duplicates,
    "duplicate_heavy": _duplicate_heavy,
    "power_law": _power_law,
    "clusters": _clusters,
    "tiny_scale": _tiny_scale,
    "integer_grid": _integer_grid,
    "wide": _wide,
    "float64_model": _float64_model,
}


def _training_loop_codes(enc: vg.RvqEncoder, x: np.ndarray, backend: str) -> np.ndarray:
    """Greedy codes the way training gets them: one Residuals per chunk, a stage at a time."""
    out = []
    for rows in enc._row_chunks(len(x)):
        residual = Residuals(x[rows], enc.dtype, backend)
        for book in enc.codebooks:
            residual.take_nearest(book)
        out.append(residual.best_codes)
    return np.concatenate(out)


@pytest.mark.parametrize("name", sorted(DATA))
def test_greedy_is_the_beam_engine_at_one_and_exact(name: str) -> None:
    x, books = DATA[name](np.random.default_rng(len(name)))
    enc = vg.from_codebooks(books)
    greedy = enc.encode(x)
    assert_stagewise_nearest(books, x, greedy)
    for backend in ("numpy", "numba"):
        if backend == "numba":
            pytest.importorskip("numba")
        np.testing.assert_array_equal(_training_loop_codes(enc, x, backend), greedy)
    np.testing.assert_array_equal(engine(enc, x, len(books), 1), greedy)
    codes, errors = enc.encode_with_errors(x)
    np.testing.assert_array_equal(codes, greedy)
    left = x.astype(np.float64)
    for stage, book in enumerate(books.astype(np.float64)):
        left = left - book[codes[:, stage]]
    ref = np.sqrt((left**2).sum(axis=1))
    np.testing.assert_allclose(errors, ref, rtol=1e-6, atol=1e-300)


@pytest.mark.parametrize("name", ["offset", "near_duplicates", "integer_grid"])
def test_single_rows_match_conftest_brute_force(name: str) -> None:
    x, books = DATA[name](np.random.default_rng(99))
    enc = vg.from_codebooks(books)
    codes = enc.encode(x[:60])
    for row, code in zip(x[:60], codes, strict=True):
        ref, dists = brute_force_encode(books, row)
        for stage, (got, want) in enumerate(zip(code, ref, strict=True)):
            d = dists[stage]
            assert d[got] <= d[want] * (1 + 1e-5), (stage, got, want)
            if d[got] == d[want]:
                assert got == want  # exact ties: lowest index


def test_codebook_values_that_overflow_float32_distances_are_refused() -> None:
    books = np.random.default_rng(0).standard_normal((4, 256, 6)).astype(np.float32)
    books[2, 7, 3] = 3e38  # finite, but its squared norm is not
    with pytest.raises(ValueError, match=r"stage 2.*code 7.*limit"):
        vg.from_codebooks(books)
    with pytest.raises(ValueError, match=r"code 7.*limit"):
        vg.Codebook(books[2])
    ok = books.copy()
    ok[2, 7, 3] = 1e18  # inside the bound: accepted, and exact
    enc = vg.from_codebooks(ok)
    x = np.random.default_rng(1).standard_normal((500, 6)).astype(np.float32)
    x[:5] = 1e18
    assert_stagewise_nearest(ok, x, enc.encode(x))


def test_inputs_beyond_the_float32_bound_are_refused() -> None:
    enc = vg.new(vg.default_config())
    x = np.zeros((10, 6), dtype=np.float32)
    x[4, 1] = 3e38
    with pytest.raises(ValueError, match=r"row 4.*limit"):
        enc.encode(x)


@pytest.mark.parametrize("huge", [1_000_000_000, 99999999999999999999999])
def test_beam_size_is_bounded_by_memory(huge: int) -> None:
    enc = vg.new(vg.default_config())  # 4 x 256 on 6-D
    largest = beam.max_beam_size(enc.config, enc.dtype)
    assert 1000 < largest < 1_000_000_000
    x = np.zeros((3, 6), dtype=np.float32)
    with pytest.raises(ValueError, match=rf"largest beam_size that fits .* is {largest:,}"):
        enc.encode(x, beam_size=huge)
    # the largest that fits is accepted (one row, so it runs quickly)
    assert enc.encode(x[:1], beam_size=min(largest, 300)).shape == (1, 4)


def test_beam_larger_than_exhaustive_is_exhaustive() -> None:
    books = np.random.default_rng(3).standard_normal((2, 4, 2)).astype(np.float32)
    enc = vg.from_codebooks(books)
    x = np.random.default_rng(4).standard_normal((50, 2)).astype(np.float32)
    np.testing.assert_array_equal(enc.encode(x, beam_size=10**30), enc.encode(x, beam_size=4))


def test_path_choice_follows_the_cost_model() -> None:
    cfg = vg.RvqConfig(8, 128, 256)
    assert not beam.use_lut(cfg, 1)  # B = 1: the exact residual step, always
    residual, table = beam.path_costs(cfg, 5)
    assert table < residual and beam.use_lut(cfg, 5)
    # many stages of few dimensions: table additions outgrow the small GEMMs
    deep = vg.RvqConfig(100, 2, 16)
    residual, table = beam.path_costs(deep, 2)
    assert residual < table and not beam.use_lut(deep, 2)
    # tables beyond LUT_BYTES are never built
    big = vg.RvqConfig(64, 512, 1024)
    assert beam.LUT_BYTES < 64 * 63 // 2 * 1024 * 1024 * 4 and not beam.use_lut(big, 50)


def test_greedy_codes_do_not_depend_on_threads_or_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces differ in size with the thread count, so BLAS may round differently;
    the exact decision makes the codes the same (float64 ties aside)."""
    x, books = DATA["offset"](np.random.default_rng(5))
    enc = vg.from_codebooks(books)
    got = {}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
        got[threads] = enc.encode(x)
    np.testing.assert_array_equal(got["1"], got["2"])
    np.testing.assert_array_equal(got["1"], got["3"])
    whole = engine(enc, x, 4, 1)
    parts = np.concatenate([engine(enc, x[i : i + 37], 4, 1) for i in range(0, 1500, 37)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole, got["1"])
