"""Every kind of bad input gets a clear ValueError or TypeError."""

from __future__ import annotations

import math

import numpy as np
import pytest

import viva_glyph as vg
from viva_glyph import Codebook, RvqTokens


@pytest.fixture
def enc() -> vg.RvqEncoder:
    return vg.new(vg.default_config())


def test_wrong_dimension(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="dimension 5, but the encoder expects dimension 6"):
        vg.encode(enc, [0.0] * 5)
    with pytest.raises(ValueError, match="expects dimension 6"):
        enc.encode(np.zeros((3, 7)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_name_the_row(enc: vg.RvqEncoder, bad: float) -> None:
    x = np.zeros((10, 6))
    x[7, 2] = bad
    with pytest.raises(ValueError, match="row 7 holds NaN or inf"):
        enc.encode(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        vg.encode(enc, [0, 0, bad, 0, 0, 0])


def test_empty_input(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="empty"):
        enc.encode(np.zeros((0, 6)))
    with pytest.raises(ValueError, match="empty"):
        vg.encode(enc, [])


def test_ragged_lists(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="ragged"):
        enc.encode([[0.0] * 6, [0.0] * 5])


@pytest.mark.parametrize("bad", [["a"] * 6, "abcdef", [None] * 6, [True] * 6])
def test_non_numeric_values(enc: vg.RvqEncoder, bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match=r"numer|ragged|real"):
        vg.encode(enc, bad)  # type: ignore[arg-type]


def test_wrong_rank(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="one vector of shape"):
        vg.encode(enc, np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"vector .D,. or a matrix"):
        enc.encode(np.zeros((2, 3, 6)))


def test_token_count_and_index_out_of_range(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="1 <= m <= 4"):
        vg.decode(enc, RvqTokens((1, 2, 3, 4, 5), 0.0))
    with pytest.raises(ValueError, match="1 <= m <= 4"):
        vg.decode(enc, RvqTokens((), 0.0))
    with pytest.raises(ValueError, match=r"out of range: expected \[0, 256\)"):
        vg.decode(enc, RvqTokens((1, 256), 0.0))
    with pytest.raises(ValueError, match="out of range"):
        enc.decode(np.array([[0, -1]]))
    with pytest.raises(TypeError, match="integers"):
        enc.decode(np.array([[0.5]]))
    with pytest.raises(TypeError, match="RvqTokens"):
        vg.decode(enc, [1, 2])  # type: ignore[arg-type]


def test_num_stages_out_of_range(enc: vg.RvqEncoder) -> None:
    with pytest.raises(ValueError, match="num_stages must be <= 4"):
        enc.encode(np.zeros(6), num_stages=5)
    with pytest.raises(ValueError, match="positive int"):
        enc.encode(np.zeros(6), num_stages=0)


def test_mismatched_codebooks() -> None:
    # sizes may differ per stage (issue 12); dimension and dtype may not
    assert vg.from_codebooks([np.zeros((4, 2)), np.zeros((5, 2))]).config.stage_sizes == (4, 5)
    with pytest.raises(ValueError, match="all must match"):
        vg.from_codebooks([np.zeros((4, 2)), np.zeros((4, 3))])
    with pytest.raises(ValueError, match="at least one codebook"):
        vg.from_codebooks([])
    with pytest.raises(ValueError, match="NaN or inf"):
        vg.from_codebooks([np.array([[0.0, math.nan]])])
    with pytest.raises(ValueError, match=r"\(M, K, D\)"):
        vg.from_codebooks(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="Codebook"):
        vg.RvqEncoder(["not a codebook"])  # type: ignore[list-item]


def test_bad_codebook_arguments() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        Codebook(np.zeros((2, 2)), dtype=np.int64)
    with pytest.raises(ValueError, match="seed"):
        Codebook.random(4, 2, seed=-1)
    with pytest.raises(ValueError, match="out of range"):
        Codebook(np.zeros((2, 2))).lookup([2])
    with pytest.raises(TypeError, match="RvqConfig"):
        vg.new((4, 6, 256))  # type: ignore[arg-type]


def _seeded_calls() -> list:
    from viva_glyph import semantic

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    ids = semantic.fit(x, levels=1, codebook_size=4)
    return [
        lambda s: vg.fit(x, num_stages=1, codebook_size=4, seed=s),
        lambda s: semantic.fit(x, levels=1, codebook_size=4, seed=s),
        lambda s: Codebook.random(4, 3, seed=s),
        lambda s: semantic.evaluate(x, ids.codes(x), ids, seed=s),
    ]


@pytest.mark.parametrize("call", range(4))
def test_every_seed_is_checked_alike(call: int) -> None:
    # one check (non_negative_int) for every seed: a non-int is a TypeError, a negative
    # int a ValueError (fit raised ValueError for both, evaluate a TypeError for 1.5)
    fn = _seeded_calls()[call]
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="seed must be a non-negative int"):
            fn(bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        fn(-1)


@pytest.mark.parametrize("empty", [[], np.zeros(0), np.zeros(0, np.float32)])
def test_an_empty_vector_is_reported_with_the_shape_given(empty) -> None:
    # vg.encode(enc, []) said "got shape (1, 0)": the shape it made of the input.
    enc = vg.new(vg.default_config())
    for call in (
        lambda: vg.encode(enc, empty),
        lambda: vg.reconstruct(enc, empty),
        lambda: enc.encode(empty),
    ):
        with pytest.raises(ValueError, match=r"is empty: got shape \(0,\)") as info:
            call()
        assert "(1, 0)" not in str(info.value)
