"""The lean path of one vector (``vg.encode``, ``encode_vector``, ``encode`` of one row,
``vg.decode``) takes the decisions and sums of the batch path, and its checks refuse
what the batch path refuses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph.core.nearest import VectorStage
from viva_glyph.core.search import greedy_vector


def _reference(x: np.ndarray, books: np.ndarray) -> tuple[list[int], float]:
    """Greedy RVQ by every float64 distance, ties to the lowest index (exact here: the
    tests that use it take small integers, whose float64 sums are exact)."""
    r = x.astype(np.float64).copy()
    codes = []
    for book in books.astype(np.float64):
        dist = ((r[None, :] - book) ** 2).sum(axis=1)
        code = int(np.flatnonzero(dist == dist.min())[0])
        codes.append(code)
        r = r - book[code]
    return codes, float((r**2).sum())


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(1, 9),
    stages=st.integers(1, 4),
    size=st.integers(1, 12),
    span=st.integers(1, 3),
)
def test_ties_on_an_integer_grid_go_to_the_lowest_index(
    seed: int, dim: int, stages: int, size: int, span: int
) -> None:
    # Small integer codes and inputs: many exact ties, every float64 distance exact.
    rng = np.random.default_rng(seed)
    books = rng.integers(-span, span + 1, (stages, size, dim)).astype(np.float64)
    enc = vg.from_codebooks(books)
    for x in rng.integers(-2 * span, 2 * span + 1, (8, dim)).astype(np.float64):
        codes, sq = _reference(x, books)
        got, err = enc.encode_vector(x.tolist())
        assert list(got) == codes
        assert err == pytest.approx(np.sqrt(sq), abs=0)
        batch = enc.encode(np.vstack([x, x]))  # the batch path: the same codes
        assert batch[0].tolist() == codes


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([1, 2, 6, 17, 64, 300]),
    exponent=st.integers(-40, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_one_vector_equals_the_batch_path(
    seed: int, dim: int, exponent: int, dtype: type[np.floating]
) -> None:
    if dtype is np.float32:
        exponent //= 2  # float32 holds norms up to about 2^62
    rng = np.random.default_rng(seed)
    scale = 0.7 ** np.arange(4)[:, None, None]
    books = np.ldexp(rng.standard_normal((4, 32, dim)) * scale, exponent).astype(dtype)
    enc = vg.from_codebooks(books)
    X = np.ldexp(rng.standard_normal((20, dim)), exponent).astype(dtype)
    X[3] = books[0, 5] + books[1, 7]  # on a sum of codes: distance 0 at two stages
    X[4] = (books[0, 1] + books[0, 2]) / 2  # halfway between two codes
    codes, errors = enc.encode_with_errors(X)
    for row, code, err in zip(X, codes, errors, strict=True):
        got, got_err = enc.encode_vector(row)
        assert list(got) == code.tolist()
        assert got_err == err  # the same float64 residual, summed the same way
        assert enc.encode(row).tolist() == code.tolist()
        assert enc.encode(row[None, :]).tolist() == [code.tolist()]
        tokens = vg.encode(enc, row.tolist())
        assert tokens.indices == tuple(code.tolist())
        assert vg.decode(enc, tokens) == enc.decode(code, dtype=np.float64).tolist()


def test_a_code_one_ulp_farther_is_not_taken() -> None:
    # Two codes whose scores round alike: the float64 distances decide.
    near = np.array([1.0, 0.0])
    far = np.array([0.0, np.nextafter(1.0, 2.0)])
    for book in (np.stack([far, near]), np.stack([near, far])):
        stage = VectorStage(vg.Codebook(book))
        x = np.array([0.0, 0.0, 1.0])
        code, _ = stage.take_nearest(x, x[:-1], 0.0)
        assert book[code].tolist() == near.tolist()
    twins = vg.from_codebooks(np.array([[[3.0, 4.0], [4.0, 3.0], [0.0, 5.0]]]))
    assert twins.encode_vector([0.0, 0.0])[0] == (0,)  # three codes at distance 5


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([1e6, 1e8, -3e9]))
def test_far_from_the_origin_distances_decide_not_scores(seed: int, offset: float) -> None:
    # ||c||^2 - 2 r.c of codes near a large offset loses the unit distances between them
    # to rounding: the bound sends the decision to the float64 distances.
    rng = np.random.default_rng(seed)
    book = offset + rng.uniform(-1, 1, (64, 3))
    enc = vg.from_codebooks(book[None])
    for x in offset + rng.uniform(-1, 1, (10, 3)):
        assert list(enc.encode_vector(x)[0]) == _reference(x, book[None])[0]


def test_greedy_vector_leaves_the_residual() -> None:
    enc = vg.from_codebooks(np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.0], [0.0, 0.25]]]))
    x_aug = np.array([1.25, 0.5, 1.0])
    codes, sq = greedy_vector(x_aug, 1.25**2 + 0.5**2, enc._vector_plan())
    assert codes == [0, 1]
    assert x_aug.tolist() == [0.25, 0.25, 1.0]
    assert sq == 0.125


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ([0.0, float("nan"), 0, 0, 0, 0], ValueError, "NaN or inf"),
        ([0.0, float("inf"), 0, 0, 0, 0], ValueError, "NaN or inf"),
        ([1e30, 0, 0, 0, 0, 0], ValueError, "above the limit"),
        ([True] * 6, TypeError, "real numbers"),
        (["1"] * 6, TypeError, "real numbers"),
        ([0.0] * 5, ValueError, "6"),
        ([[0.0] * 6], ValueError, "one vector"),
    ],
)
def test_the_lean_path_refuses_what_the_checks_refuse(
    bad: list[object], error: type[Exception], match: str
) -> None:
    enc = vg.new(vg.default_config())
    with pytest.raises(error, match=match):
        vg.encode(enc, bad)  # type: ignore[arg-type]


def test_near_the_norm_limit_the_full_checks_decide() -> None:
    enc = vg.from_codebooks(np.eye(3, dtype=np.float32)[None] * 1e18)
    limit = vg.checks.norm_limit(np.float32)
    inside = np.array([limit * (1 - 1e-12), 0.0, 0.0])  # the lean check leaves it to them
    assert list(enc.encode_vector(inside)[0]) == enc.encode(inside[None, :])[0].tolist()
    with pytest.raises(ValueError, match="above the limit"):
        enc.encode_vector([limit * 1.001, 0.0, 0.0])


def test_decode_of_tokens_checks_them() -> None:
    enc = vg.new(vg.default_config())
    assert (
        vg.decode(enc, vg.RvqTokens((5,), float("nan")))
        == enc.decode(np.array([5]), dtype=np.float64).tolist()
    )
    with pytest.raises(ValueError, match="out of range"):
        vg.decode(enc, vg.RvqTokens((1, 256), 0.0))
    with pytest.raises(ValueError, match="1 <= m <= 4"):
        vg.decode(enc, vg.RvqTokens((1, 2, 3, 4, 5), 0.0))
    with pytest.raises(ValueError, match="one row"):
        enc.decode_vector([[1, 2]])  # type: ignore[list-item]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("big", [1e200, -1e300, 1.7e308])
def test_a_huge_vector_is_refused_without_an_overflow_warning(big: float) -> None:
    """Break-it: the lean check's ||x||^2 of a float64 vector of 1e200 overflowed, and a
    RuntimeWarning ("overflow encountered in dot") came before the clear ValueError."""
    enc = vg.new(vg.default_config())
    x = np.zeros(enc.config.dimension)
    x[1] = big
    for call in (enc.encode_vector, lambda v: vg.encode(enc, v)):
        with pytest.raises(ValueError, match="above the limit"):
            call(x)
