"""Beam-search encoding: greedy equivalence, exhaustive optimality, ties, chunking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import engine
from hypothesis import given, settings
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph.core.beam import top_b


def random_encoder(m: int, k: int, d: int, seed: int, dtype: type = np.float32) -> vg.RvqEncoder:
    rng = np.random.default_rng(seed)
    books = [rng.standard_normal((k, d)) * 0.6**s for s in range(m)]
    return vg.from_codebooks([vg.Codebook(b, dtype=dtype) for b in books])


def sq_errors(enc: vg.RvqEncoder, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    recon = sum(
        enc.codebook_array[s].astype(np.float64)[codes[:, s]] for s in range(codes.shape[1])
    )
    return ((x.astype(np.float64) - recon) ** 2).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "d", "n"), [(4, 256, 6, 3000), (3, 16, 9, 257), (1, 5, 2, 1)])
def test_beam_one_is_greedy_bit_for_bit(dtype: type, m: int, k: int, d: int, n: int) -> None:
    enc = random_encoder(m, k, d, seed=m + k, dtype=dtype)
    x = np.random.default_rng(1).standard_normal((n, d)).astype(dtype)
    greedy = enc.encode(x)
    for rows in enc._row_chunks(n):  # the chunks encode() hands to the engine
        np.testing.assert_array_equal(engine(enc, x[rows], m, 1), greedy[rows])
    assert engine(enc, x, m, 1).dtype == enc.code_dtype


@pytest.mark.parametrize(("m", "k", "d"), [(3, 4, 2), (2, 7, 3), (4, 3, 2)])
def test_exhaustive_beam_finds_brute_force_optimum(m: int, k: int, d: int) -> None:
    enc = random_encoder(m, k, d, seed=7)
    x = np.random.default_rng(2).standard_normal((400, d)).astype(np.float32)
    allc = np.array(list(itertools.product(range(k), repeat=m)))
    books = enc.codebook_array.astype(np.float64)
    recon = sum(books[s][allc[:, s]] for s in range(m))
    dist = ((x.astype(np.float64)[:, None, :] - recon[None]) ** 2).sum(-1)
    codes = enc.encode(x, beam_size=k ** (m - 1))
    got = sq_errors(enc, x, codes)
    np.testing.assert_allclose(got, dist.min(axis=1), rtol=1e-5, atol=1e-6)
    # where the optimum is clearly unique, the codes are the brute-force ones
    srt = np.sort(dist, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-3
    np.testing.assert_array_equal(codes[clear], allc[dist.argmin(axis=1)][clear])
    # a greedy encode is never better than the exhaustive one
    assert np.all(sq_errors(enc, x, enc.encode(x)) >= got - 1e-5)


def test_beam_improves_on_greedy_on_average_and_is_deterministic() -> None:
    enc = random_encoder(4, 32, 8, seed=3)
    x = np.random.default_rng(4).standard_normal((2000, 8)).astype(np.float32)
    e1 = sq_errors(enc, x, enc.encode(x)).mean()
    c5 = enc.encode(x, beam_size=5)
    assert sq_errors(enc, x, c5).mean() < e1
    np.testing.assert_array_equal(c5, enc.encode(x, beam_size=5))
    codes, errs = enc.encode_with_errors(x, beam_size=5)
    np.testing.assert_array_equal(codes, c5)
    np.testing.assert_allclose(errs**2, sq_errors(enc, x, c5), rtol=1e-6, atol=1e-9)


def test_beam_rows_are_independent_of_chunking() -> None:
    enc = random_encoder(3, 64, 5, seed=5)
    x = np.random.default_rng(6).standard_normal((3000, 5)).astype(np.float32)
    whole = engine(enc, x, 3, 7)  # several internal sub-chunks
    parts = np.concatenate([engine(enc, x[i : i + 37], 3, 7) for i in range(0, 3000, 37)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(enc.encode(x, num_stages=2, beam_size=7), engine(enc, x, 2, 7))


def test_ties_go_to_lowest_codes() -> None:
    # every codebook holds each vector twice: the lower copy must always win
    rng = np.random.default_rng(8)
    books = []
    for s in range(3):
        b = rng.standard_normal((4, 3)) * 0.5**s
        books.append(np.concatenate([b, b]))
    enc = vg.from_codebooks(np.stack(books).astype(np.float32))
    x = rng.standard_normal((500, 3)).astype(np.float32)
    for beam in (1, 3, 8):
        codes = enc.encode(x, beam_size=beam)
        assert codes.max() < 4


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30),
    width=st.integers(1, 60),
    beam=st.integers(1, 70),
    levels=st.integers(1, 6),
    f64=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_top_b_is_stable_argsort_prefix(
    n: int, width: int, beam: int, levels: int, f64: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vals = rng.integers(-levels, levels, (n, width)).astype(np.float64 if f64 else np.float32)
    vals[(vals == 0) & (rng.random(vals.shape) < 0.5)] = -0.0  # signed zeros tie with zeros
    ref = np.argsort(vals, axis=1, kind="stable")[:, :beam]
    np.testing.assert_array_equal(top_b(vals, beam), ref)


@pytest.mark.parametrize(("beam", "dtype"), [(2, np.float32), (5, np.float32), (17, np.float64)])
def test_table_paths_numpy_and_numba_identical(beam: int, dtype: type) -> None:
    pytest.importorskip("numba")
    enc = random_encoder(5, 32, 7, seed=11, dtype=dtype)
    x = np.random.default_rng(12).standard_normal((1500, 7)).astype(dtype)
    a = engine(enc, x, 5, beam, lut=True, backend="numpy")
    b = engine(enc, x, 5, beam, lut=True, backend="numba")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(enc.encode(x, beam_size=beam), b)  # auto picks the table path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_path_agrees_with_residual_path(dtype: type) -> None:
    enc = random_encoder(4, 64, 6, seed=13, dtype=dtype)
    x = np.random.default_rng(14).standard_normal((2000, 6)).astype(dtype)
    lut = engine(enc, x, 4, 6, lut=True, backend="numpy")
    res = engine(enc, x, 4, 6, lut=False)
    # same search, different rounding: errors equal to rounding, codes equal but for near-ties
    np.testing.assert_allclose(sq_errors(enc, x, lut), sq_errors(enc, x, res), rtol=1e-4, atol=1e-5)
    assert (lut == res).all(axis=1).mean() > 0.99


def test_exhaustive_by_residual_path_too() -> None:
    enc = random_encoder(3, 5, 2, seed=15)
    x = np.random.default_rng(16).standard_normal((300, 2)).astype(np.float32)
    allc = np.array(list(itertools.product(range(5), repeat=3)))
    books = enc.codebook_array.astype(np.float64)
    recon = sum(books[s][allc[:, s]] for s in range(3))
    best = ((x.astype(np.float64)[:, None, :] - recon[None]) ** 2).sum(-1).min(axis=1)
    for lut in (False, True):
        got = sq_errors(enc, x, engine(enc, x, 3, 25, lut=lut))
        np.testing.assert_allclose(got, best, rtol=1e-5, atol=1e-6)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from viva_glyph.core.beam import lut_kernel as numba_kernel

    with pytest.raises(ValueError, match="backend"):
        numba_kernel("fortran")
    assert numba_kernel("numpy") is None
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    assert numba_kernel() is None
