"""Codebook search and glyph ids against brute force and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import Codebook, RvqTokens, glyph


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 300), dim=st.integers(1, 20))
def test_nearest_batch_matches_brute_force(seed: int, size: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    cb = Codebook(rng.standard_normal((size, dim)))
    x = rng.standard_normal((50, dim))
    idx, dist = cb.nearest_batch(x)
    brute = ((x[:, None, :] - cb.vectors[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist, brute.min(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(brute[np.arange(50), idx], brute.min(axis=1), rtol=1e-12)
    assert cb.nearest(x[0]) == (int(idx[0]), pytest.approx(float(dist[0])))


def test_codebook_is_immutable_and_random_is_deterministic() -> None:
    cb = Codebook.random(16, 3, seed=7, scale=2.0)
    assert cb == Codebook.random(16, 3, seed=7, scale=2.0)
    assert cb != Codebook.random(16, 3, seed=8, scale=2.0)
    assert np.abs(cb.vectors).max() <= 2.0
    assert cb.dtype == np.float32 and len(cb) == 16 and cb.dimension == 3
    with pytest.raises(ValueError):
        cb.vectors[0, 0] = 1.0
    np.testing.assert_array_equal(cb.lookup([3, 1]), cb.vectors[[3, 1]])


def test_glyph_id_hand_computed() -> None:
    assert glyph.glyph_id([1, 2], 256) == 258
    assert glyph.glyph_id([255, 255, 255, 255], 256) == 256**4 - 1
    assert RvqTokens((0, 0, 1, 0), 0.0).to_glyph_id(256) == 256
    assert glyph.to_bytes([1, 2, 3], 16) == bytes([0x12, 0x30])
    assert glyph.packed_size(256, 4) == 4 and glyph.packed_size(1000, 3) == 4


@given(
    size=st.integers(1, 5000),
    data=st.data(),
)
def test_glyph_round_trips_and_order(size: int, data: st.DataObject) -> None:
    stages = data.draw(st.integers(1, 6))
    seqs = data.draw(
        st.lists(
            st.lists(st.integers(0, size - 1), min_size=stages, max_size=stages),
            min_size=1,
            max_size=20,
        )
    )
    ids = [glyph.glyph_id(s, size) for s in seqs]
    packed = [glyph.to_bytes(s, size) for s in seqs]
    for s, gid, raw in zip(seqs, ids, packed, strict=False):
        assert glyph.indices_from_glyph_id(gid, size, stages) == tuple(s)
        assert glyph.from_bytes(raw, size, stages) == tuple(s)
        assert len(raw) == glyph.packed_size(size, stages)
        tokens = RvqTokens.from_glyph_id(gid, size, stages)
        assert tokens.indices == tuple(s) and tokens.to_bytes(size) == raw
    # ids and bytes both sort coarse to fine, like the token tuples
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    assert sorted(ids) == [ids[i] for i in order]
    assert sorted(packed) == [packed[i] for i in order]
    codes = np.array(seqs)
    if size**stages <= 2**64:
        bulk = glyph.codes_to_glyph_ids(codes, size)
        assert bulk.tolist() == ids
        np.testing.assert_array_equal(glyph.glyph_ids_to_codes(bulk, size, stages), codes)
    bulk_packed = glyph.pack_codes(codes, size)
    assert [bytes(row) for row in bulk_packed] == packed
    np.testing.assert_array_equal(glyph.unpack_codes(bulk_packed, size, stages), codes)


def test_glyph_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        glyph.glyph_id([256], 256)
    with pytest.raises(ValueError, match=r"\[0, 256\*\*2\)"):
        glyph.indices_from_glyph_id(256**2, 256, 2)
    with pytest.raises(ValueError, match="uint64"):
        glyph.codes_to_glyph_ids(np.zeros((1, 9), dtype=np.int64), 65536)
    with pytest.raises(ValueError, match="packed codes must be uint8"):
        glyph.unpack_codes(np.zeros((1, 3), dtype=np.uint8), 256, 4)


def test_encoder_codes_to_glyphs() -> None:
    enc = vg.new(vg.default_config())
    codes = enc.encode(np.random.default_rng(0).uniform(-1, 1, (100, 6)))
    ids = glyph.codes_to_glyph_ids(codes, 256)
    assert ids.dtype == np.uint64 and ids.max() < vg.total_vocabulary(enc)
    np.testing.assert_array_equal(
        enc.decode(glyph.glyph_ids_to_codes(ids, 256, 4)), enc.decode(codes)
    )


def test_encoder_glyph_ids_take_the_sizes_from_the_encoder() -> None:
    """Per-stage sizes (3, 5, 2): id of (i1, i2, i3) is (i1 * 5 + i2) * 2 + i3 by hand; a
    prefix of m stages uses the first m sizes."""
    rng = np.random.default_rng(0)
    enc = vg.from_codebooks([rng.normal(size=(k, 4)) for k in (3, 5, 2)])
    tokens = RvqTokens((2, 4, 1), 0.0)
    assert enc.glyph_id(tokens) == 29 == tokens.to_glyph_id([3, 5, 2])
    assert enc.glyph_id([2, 4]) == 14 and enc.glyph_id(np.array([1], dtype=np.uint8)) == 1
    codes = np.array([[2, 4, 1], [0, 0, 0], [1, 2, 0], [2, 4, 0]], dtype=np.uint8)
    ids = enc.glyph_ids(codes)
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, [29, 0, 14, 28])
    np.testing.assert_array_equal(enc.glyph_ids(codes[:, :2]), [14, 0, 7, 14])
    back = enc.codes_from_glyph_ids(ids)
    assert back.dtype == enc.code_dtype
    np.testing.assert_array_equal(back, codes)
    np.testing.assert_array_equal(enc.codes_from_glyph_ids([14, 7], num_stages=2), [[2, 4], [1, 2]])


def test_encoder_glyph_ids_match_the_spec_api() -> None:
    enc = vg.new(vg.default_config())
    x = np.random.default_rng(1).uniform(-1, 1, (50, 6))
    codes = enc.encode(x)
    ids = enc.glyph_ids(codes)
    np.testing.assert_array_equal(ids, glyph.codes_to_glyph_ids(codes, 256))
    for row, gid in zip(x[:5], ids[:5], strict=True):
        tokens = vg.encode(enc, row)
        assert enc.glyph_id(tokens) == tokens.to_glyph_id(256) == int(gid)
    np.testing.assert_array_equal(enc.codes_from_glyph_ids(ids), codes)


def test_encoder_glyph_id_beyond_uint64() -> None:
    """5 stages of 65536 codes: 2**80 glyphs. One id stays an exact int (checked against
    the digits by hand); the uint64 array form refuses, naming pack_codes."""
    enc = vg.from_codebooks(np.zeros((5, 65536, 1), dtype=np.float32))
    top = [65535, 1, 0, 2, 65534]
    expect = sum(d * 65536 ** (4 - j) for j, d in enumerate(top))
    assert expect > 2**64 and enc.glyph_id(top) == expect
    assert RvqTokens.from_glyph_id(expect, 65536, 5).indices == tuple(top)
    with pytest.raises(ValueError, match="pack_codes"):
        enc.glyph_ids(np.array([top]))
    np.testing.assert_array_equal(enc.glyph_ids(np.array([top[:4]])), [expect // 65536])


def test_encoder_glyph_id_errors() -> None:
    enc = vg.from_codebooks([np.eye(3), np.eye(3)[:2]])  # sizes (3, 2)
    with pytest.raises(ValueError, match=r"expected \[0, 2\) at stage 1, tokens row 0 holds 2"):
        enc.glyph_id([0, 2])
    with pytest.raises(ValueError, match=r"1 <= m <= 2, got \(3,\)"):
        enc.glyph_id([0, 0, 0])
    with pytest.raises(ValueError, match=r"shape \(m,\), got shape \(2, 2\)"):
        enc.glyph_id([[0, 0], [1, 1]])
    with pytest.raises(TypeError, match="integers"):
        enc.glyph_id([0.0, 1.0])
    with pytest.raises(ValueError, match="row 1"):
        enc.glyph_ids(np.array([[0, 0], [3, 0]]))
    with pytest.raises(ValueError, match=r"\[0, 3 \* 2\)"):
        enc.codes_from_glyph_ids([6])
    with pytest.raises(ValueError, match="num_stages must be <= 2"):
        enc.codes_from_glyph_ids([0], num_stages=3)
