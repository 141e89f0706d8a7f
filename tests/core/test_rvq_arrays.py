"""Batched numpy encoding: exactness, dtypes, progressive decoding, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_stagewise_nearest
from hypothesis import given
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import RvqConfig


@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([1, 2, 6, 17, 64]),
    size=st.sampled_from([1, 2, 16, 256]),
    stages=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_every_stage_picks_the_true_minimum(
    seed: int, dim: int, size: int, stages: int, dtype: type
) -> None:
    rng = np.random.default_rng(seed)
    scale = 0.6 ** np.arange(stages)[:, None, None]
    books = (rng.standard_normal((stages, size, dim)) * scale).astype(dtype)
    x = rng.standard_normal((300, dim)).astype(dtype)
    enc = vg.from_codebooks(books)
    codes = enc.encode(x)
    assert_stagewise_nearest(books, x, codes)


def test_ties_go_to_the_lowest_index() -> None:
    base = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    books = np.stack([np.concatenate([base, base]), np.concatenate([base[::-1], base])])
    enc = vg.from_codebooks(books)
    codes = enc.encode(np.random.default_rng(2).standard_normal((500, 3)))
    assert codes.max() < 4  # the duplicate entries 4..7 are never chosen


@pytest.mark.parametrize(
    ("size", "dtype"), [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65537, np.int32)]
)
def test_code_dtype_follows_codebook_size(size: int, dtype: type) -> None:
    enc = vg.new(RvqConfig(2, 2, size))
    codes = enc.encode(np.zeros((3, 2)))
    assert codes.dtype == dtype
    assert enc.code_dtype == dtype


@given(seed=st.integers(0, 2**32 - 1))
def test_arrays_equal_single_vector_functions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    enc = vg.new(vg.default_config(), seed=seed % 13)
    x = rng.uniform(-1, 1, (40, 6))
    codes, errors = enc.encode_with_errors(x)
    for row, code, err in zip(x, codes, errors, strict=False):
        tokens = vg.encode(enc, row)
        assert tokens.indices == tuple(int(c) for c in code)
        assert tokens.total_error == err
    assert np.array_equal(enc.encode(x[0]), codes[0])
    assert enc.decode(codes[0]).shape == (6,)


def test_progressive_decoding_sums_the_first_stages() -> None:
    enc = vg.new(RvqConfig(5, 4, 32), seed=3)
    x = np.random.default_rng(0).uniform(-1, 1, (100, 4))
    codes = enc.encode(x)
    books = enc.codebook_array
    for m in range(1, 6):
        expected = sum(books[s][codes[:, s]] for s in range(m))
        np.testing.assert_allclose(enc.decode(codes[:, :m]), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(enc.encode(x, num_stages=2), codes[:, :2])


def test_errors_equal_distance_to_decoded() -> None:
    enc = vg.new(RvqConfig(3, 8, 64))
    x = np.random.default_rng(5).uniform(-1, 1, (1000, 8))
    codes, errors = enc.encode_with_errors(x)
    dec = np.array([vg.decode(enc, vg.RvqTokens(tuple(c), 0.0)) for c in codes[:50]])
    np.testing.assert_allclose(errors[:50], np.linalg.norm(x[:50] - dec, axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        errors, np.linalg.norm(x - enc.decode(codes).astype(np.float64), axis=1), rtol=1e-5
    )


def test_memmap_input_streams_across_chunks(tmp_path: Path) -> None:
    enc = vg.new(RvqConfig(2, 16, 256), seed=1)
    rows = 3 * 1000 + 17  # several chunks and a partial one
    path = tmp_path / "x.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 16))
    data[:] = np.random.default_rng(0).uniform(-1, 1, (rows, 16))
    data.flush()
    mm = np.load(path, mmap_mode="r")
    expected = np.concatenate([enc.encode(np.array(mm[i : i + 500])) for i in range(0, rows, 500)])
    np.testing.assert_array_equal(enc.encode(mm), expected)


def test_integer_and_float64_inputs_are_accepted() -> None:
    enc = vg.new(RvqConfig(2, 3, 16))
    ints = np.array([[1, 0, -1], [0, 0, 0]])
    np.testing.assert_array_equal(enc.encode(ints), enc.encode(ints.astype(np.float32)))


@given(
    exponent=st.integers(-1000, 0),
    float32=st.booleans(),
    beam=st.sampled_from([1, 3]),
    seed=st.integers(0, 3),
)
def test_codes_do_not_depend_on_a_power_of_two_scale(exponent, float32, beam, seed) -> None:
    """Codebooks and vectors scaled by 2^e (exact in floating point while nothing underflows)
    get the same codes, and errors scaled by 2^e. A float64 model at 1e-200 gave every row
    code 0 (wrong from about 1e-181): the squared distances underflowed."""
    dtype = np.float32 if float32 else np.float64
    if float32:
        exponent = max(exponent, -100)  # float32 values ~2^-10 stay normal down to 2^-116
    rng = np.random.default_rng(seed)
    books = rng.standard_normal((3, 16, 6)) * 0.5 ** np.arange(3)[:, None, None]
    x = rng.standard_normal((300, 6))
    ref_codes, ref_err = vg.from_codebooks(books.astype(dtype)).encode_with_errors(
        x.astype(dtype), beam_size=beam
    )
    small = vg.from_codebooks(np.ldexp(books, exponent).astype(dtype))
    codes, err = small.encode_with_errors(np.ldexp(x, exponent).astype(dtype), beam_size=beam)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(err, np.ldexp(ref_err, exponent), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(
        small.encode(np.ldexp(x[:5], exponent).astype(dtype), beam_size=beam), ref_codes[:5]
    )
    one = np.ldexp(x[3], exponent).astype(dtype)  # one vector: the lean one-row path
    np.testing.assert_array_equal(small.encode(one, beam_size=beam), ref_codes[3])
    if beam == 1:
        codes3, err3 = small.encode_vector(one)
        assert list(codes3) == ref_codes[3].tolist()
        np.testing.assert_allclose(err3, np.ldexp(ref_err[3], exponent), rtol=1e-12)


def test_vectors_far_above_a_tiny_model_are_refused_naming_the_limit() -> None:
    tiny = vg.from_codebooks(np.random.default_rng(0).standard_normal((2, 8, 3)) * 1e-200)
    with pytest.raises(ValueError, match=r"X row 1 has norm .* above the limit"):
        tiny.encode(np.array([[0.0, 0.0, 0.0], [1e120, 0.0, 0.0]]))
