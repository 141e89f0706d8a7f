"""Per-level codebook sizes (e.g. 16, 256, 256) through the core: config, encoder,
greedy and beam encoding, decoding, glyph ids, fit. References are float64 brute force."""

from __future__ import annotations

import itertools
import json
import math
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_stagewise_nearest, brute_force_encode, engine
from hypothesis import given
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import glyph
from viva_glyph.core import io as vio
from viva_glyph.core.beam import check_beam_size, use_lut
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.io import ModelFormatError


def mixed_encoder(sizes: list[int], d: int, seed: int, dtype: type = np.float32) -> vg.RvqEncoder:
    rng = np.random.default_rng(seed)
    books = [rng.standard_normal((k, d)) * 0.6**s for s, k in enumerate(sizes)]
    return vg.from_codebooks([vg.Codebook(b, dtype=dtype) for b in books])


def recon64(enc: vg.RvqEncoder, codes: np.ndarray) -> np.ndarray:
    return sum(enc.codebooks[s].vectors64[codes[:, s]] for s in range(codes.shape[1]))


# -- config ---------------------------------------------------------------------------
def test_config_per_stage_sizes() -> None:
    cfg = RvqConfig.of_sizes(8, [16, 256, 256])
    assert (cfg.num_stages, cfg.dimension, cfg.codebook_size) == (3, 8, 256)
    assert cfg.stage_sizes == (16, 256, 256) and cfg.codebook_sizes == (16, 256, 256)
    assert not cfg.uniform and cfg.vocabulary == 16 * 256 * 256
    assert cfg == RvqConfig(3, 8, 256, codebook_sizes=[16, 256, 256])
    assert "codebook_sizes=(16, 256, 256)" in repr(cfg)
    # equal sizes are the spec's plain config, whichever way they are given
    plain = RvqConfig(3, 8, 256)
    assert RvqConfig.of_sizes(8, [256] * 3) == plain
    assert plain == RvqConfig(3, 8, 256, codebook_sizes=(256,) * 3)
    assert plain.codebook_sizes is None and plain.uniform and plain.stage_sizes == (256,) * 3
    assert repr(plain) == "RvqConfig(num_stages=3, dimension=8, codebook_size=256)"
    assert hash(plain) == hash(RvqConfig.of_sizes(8, (256, 256, 256)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"codebook_sizes": (16, 256)}, ValueError, "num_stages = 3 sizes, got 2"),
        ({"codebook_sizes": (16, 128, 128)}, ValueError, "largest of codebook_sizes"),
        ({"codebook_sizes": (16, 0, 256)}, ValueError, r"codebook_sizes\[1\]"),
        ({"codebook_sizes": (16, 2.5, 256)}, TypeError, r"codebook_sizes\[1\]"),
        ({"codebook_sizes": "abc"}, TypeError, "sequence of ints"),
    ],
)
def test_config_rejects_bad_sizes(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RvqConfig(3, 8, 256, **kwargs)


# -- encoding ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[16, 256, 256], [5, 1, 300], [300, 7]])
def test_greedy_is_stagewise_nearest(dtype: type, sizes: list[int]) -> None:
    d = 6
    enc = mixed_encoder(sizes, d, seed=sum(sizes), dtype=dtype)
    assert enc.config.stage_sizes == tuple(sizes)
    assert enc.code_dtype == (np.uint8 if max(sizes) <= 256 else np.uint16)
    x = np.random.default_rng(1).standard_normal((700, d)).astype(dtype)
    codes = enc.encode(x)
    assert codes.shape == (700, len(sizes)) and codes.dtype == enc.code_dtype
    assert_stagewise_nearest([cb.vectors for cb in enc.codebooks], x, codes)
    for row in range(0, 700, 97):  # the independent per-vector reference
        ref, _ = brute_force_encode([cb.vectors for cb in enc.codebooks], x[row])
        assert list(codes[row]) == ref or dtype == np.float32
    # fewer stages: the leading columns; one vector: one row
    np.testing.assert_array_equal(enc.encode(x, num_stages=1), codes[:, :1])
    np.testing.assert_array_equal(enc.encode(x[3]), codes[3])
    # errors are those of decode(codes), in float64
    c2, err = enc.encode_with_errors(x)
    np.testing.assert_array_equal(c2, codes)
    np.testing.assert_allclose(err, np.linalg.norm(x - recon64(enc, codes), axis=1), rtol=1e-12)


@pytest.mark.parametrize("sizes", [[3, 5, 4], [6, 2, 3], [2, 9]])
def test_exhaustive_beam_with_mixed_sizes(sizes: list[int]) -> None:
    d = 3
    enc = mixed_encoder(sizes, d, seed=11)
    x = np.random.default_rng(2).standard_normal((300, d)).astype(np.float32)
    allc = np.array(list(itertools.product(*[range(k) for k in sizes])))
    recon = recon64(enc, allc)
    dist = ((x.astype(np.float64)[:, None, :] - recon[None]) ** 2).sum(-1)
    exhaustive = math.prod(sizes[:-1])
    assert check_beam_size(enc.config, 10**6, len(sizes), np.float32) == exhaustive
    codes = enc.encode(x, beam_size=exhaustive)
    got = ((x - recon64(enc, codes)) ** 2).sum(axis=1)
    np.testing.assert_allclose(got, dist.min(axis=1), rtol=1e-5, atol=1e-6)
    srt = np.sort(dist, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-3
    np.testing.assert_array_equal(codes[clear], allc[dist.argmin(axis=1)][clear])
    assert np.all(codes < np.array(sizes))
    # a beam that is not exhaustive is still valid and never worse than greedy on average
    mid = enc.encode(x, beam_size=2)
    greedy = ((x - recon64(enc, enc.encode(x))) ** 2).sum(axis=1)
    assert ((x - recon64(enc, mid)) ** 2).sum(axis=1).mean() <= greedy.mean() + 1e-9


def test_mixed_sizes_take_the_residual_path() -> None:
    enc = mixed_encoder([16, 256, 256], 4, seed=0)
    assert not use_lut(enc.config, 8)
    x = np.random.default_rng(3).standard_normal((200, 4)).astype(np.float32)
    forced = engine(enc, x, 3, 8, lut=True)  # asking for tables is ignored
    np.testing.assert_array_equal(forced, engine(enc, x, 3, 8, lut=False))


@pytest.mark.parametrize("beam", [1, 4])
def test_numpy_and_numba_backends_agree_with_mixed_sizes(beam: int) -> None:
    enc = mixed_encoder([16, 256, 8], 5, seed=6)
    x = np.random.default_rng(8).standard_normal((900, 5)).astype(np.float32)
    ref = engine(enc, x, 3, beam, backend="numpy")
    np.testing.assert_array_equal(engine(enc, x, 3, beam, backend="auto"), ref)
    if beam == 1:
        np.testing.assert_array_equal(enc.encode(x), ref)


def test_decode_round_trip_and_code_ranges() -> None:
    enc = mixed_encoder([4, 32, 8], 5, seed=4)
    x = np.random.default_rng(5).standard_normal((100, 5)).astype(np.float32)
    codes = enc.encode(x)
    out = enc.decode(codes)
    np.testing.assert_allclose(out, recon64(enc, codes), rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(enc.decode(codes[:, :2]), recon64(enc, codes[:, :2]), rtol=1e-5)
    bad = codes.copy()
    bad[7, 0] = 4  # valid for stages 1 and 2, not for stage 0 (4 codes)
    with pytest.raises(ValueError, match=r"expected \[0, 4\) at stage 0, codes row 7 holds 4"):
        enc.decode(bad)
    bad = codes.copy()
    bad[2, 2] = 8
    with pytest.raises(ValueError, match=r"\[0, 8\) at stage 2, codes row 2"):
        enc.decode(bad)


def test_encoder_with_mixed_sizes_has_no_stacked_array() -> None:
    enc = mixed_encoder([4, 8], 3, seed=0)
    with pytest.raises(ValueError, match=r"sizes \(4, 8\) do not stack"):
        _ = enc.codebook_array
    assert "codebook_sizes=(4, 8)" in repr(enc)
    with pytest.raises(ValueError, match="all must match in dimension and dtype"):
        vg.from_codebooks([vg.Codebook(np.zeros((4, 3))), vg.Codebook(np.zeros((4, 2)))])
    with pytest.raises(ValueError, match="does not match the codebooks"):
        vg.RvqEncoder(list(enc.codebooks), RvqConfig(2, 3, 8))
    assert vg.total_vocabulary(enc) == 32


def test_new_with_mixed_sizes_keeps_the_origin_rule() -> None:
    cfg = RvqConfig.of_sizes(3, [8, 64, 4])
    enc = vg.new(cfg, seed=1)
    assert [cb.size for cb in enc.codebooks] == [8, 64, 4]
    assert all(np.all(cb.vectors[0] == 0) for cb in enc.codebooks)
    # the uniform config still gives the spec's codebooks, bit for bit
    a, b = vg.new(RvqConfig(3, 3, 16), seed=2), vg.new(RvqConfig.of_sizes(3, [16] * 3), seed=2)
    assert a == b


# -- glyph ids ------------------------------------------------------------------------
sizes_st = st.lists(st.integers(1, 300), min_size=1, max_size=5)


@given(sizes_st, st.data())
def test_glyph_ids_mixed_radix_round_trip(sizes: list[int], data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 20))
    rows = [[data.draw(st.integers(0, k - 1)) for k in sizes] for _ in range(n)]
    codes = np.array(rows, dtype=np.int64).reshape(n, len(sizes))
    ids = glyph.codes_to_glyph_ids(codes, sizes)
    for row, gid in zip(rows, ids, strict=True):  # mixed radix, stage 1 most significant
        ref = 0
        for digit, k in zip(row, sizes, strict=True):
            ref = ref * k + digit
        assert int(gid) == ref == glyph.glyph_id(row, sizes)
        assert glyph.indices_from_glyph_id(ref, sizes) == tuple(row)
    np.testing.assert_array_equal(glyph.glyph_ids_to_codes(ids, sizes), codes)
    # sorting ids sorts the glyphs lexicographically
    order = np.argsort(ids, kind="stable")
    assert [tuple(r) for r in codes[order]] == sorted(tuple(r) for r in codes)
    packed = glyph.pack_codes(codes, sizes)
    assert packed.shape == (n, glyph.packed_size(sizes))
    assert glyph.packed_size(sizes) == math.ceil(sum((k - 1).bit_length() for k in sizes) / 8)
    np.testing.assert_array_equal(glyph.unpack_codes(packed, sizes), codes)
    for row in rows[:3]:
        assert glyph.from_bytes(glyph.to_bytes(row, sizes), sizes) == tuple(row)


def test_glyph_ids_equal_sizes_match_the_int_form() -> None:
    codes = np.random.default_rng(0).integers(0, 256, (50, 3))
    np.testing.assert_array_equal(
        glyph.codes_to_glyph_ids(codes, [256] * 3), glyph.codes_to_glyph_ids(codes, 256)
    )
    np.testing.assert_array_equal(glyph.pack_codes(codes, [256] * 3), glyph.pack_codes(codes, 256))


def test_glyph_id_checks() -> None:
    big = [1 << 20, 1 << 20, 1 << 20, 1 << 5]  # 2**65 glyphs
    with pytest.raises(ValueError, match=r"1048576 \* 1048576 \* 1048576 \* 32 glyphs do not fit"):
        glyph.codes_to_glyph_ids(np.zeros((1, 4), dtype=np.int64), big)
    with pytest.raises(ValueError, match="do not fit in uint64"):
        glyph.glyph_ids_to_codes(np.zeros(1, dtype=np.uint64), big)
    exact = [1 << 32, 1 << 32]  # exactly 2**64 glyphs fit
    top = np.array([[(1 << 32) - 1] * 2])
    ids = glyph.codes_to_glyph_ids(top, exact)
    assert int(ids[0]) == (1 << 64) - 1
    np.testing.assert_array_equal(glyph.glyph_ids_to_codes(ids, exact), top)
    with pytest.raises(ValueError, match=r"\[0, 16\) at stage 0"):
        glyph.codes_to_glyph_ids(np.array([[16, 0]]), [16, 256])
    with pytest.raises(ValueError, match="one column per codebook size"):
        glyph.codes_to_glyph_ids(np.array([[1, 0]]), [16, 256, 4])
    with pytest.raises(ValueError, match=r"glyph ids must be in \[0, 16 \* 4\)"):
        glyph.glyph_ids_to_codes(np.array([64]), [16, 4])
    with pytest.raises(ValueError, match="disagrees with the 2 codebook sizes"):
        glyph.indices_from_glyph_id(3, [16, 4], 3)
    with pytest.raises(TypeError, match="num_stages is required"):
        glyph.indices_from_glyph_id(3, 16)
    with pytest.raises(ValueError, match="index >= codebook_size 5"):
        glyph.unpack_codes(np.array([[0xFF]], dtype=np.uint8), [5, 2])


# -- fit --------------------------------------------------------------------------------
def test_fit_per_stage_sizes() -> None:
    x = np.random.default_rng(0).standard_normal((2000, 6)).astype(np.float32)
    enc = vg.fit(x, codebook_size=[4, 32, 16], seed=1)
    assert enc.config == RvqConfig.of_sizes(6, [4, 32, 16])
    assert [cb.size for cb in enc.codebooks] == [4, 32, 16]
    assert enc.training is not None and enc.training.params["codebook_size"] == [4, 32, 16]
    mse = enc.training.stage_mse
    assert all(b < a for a, b in itertools.pairwise(mse))
    codes = enc.encode(x)
    assert_stagewise_nearest([cb.vectors for cb in enc.codebooks], x, codes)
    # the recorded training MSE after each stage is that of decoding its first stages
    for m in range(1, 4):
        err = ((x - recon64(enc, codes[:, :m])) ** 2).mean()
        np.testing.assert_allclose(mse[m - 1], err, rtol=1e-4)
    assert len(np.unique(codes[:, 0])) == 4  # every code of the small first level is used
    beam = vg.fit(x, codebook_size=(4, 32, 16), beam_size=4, seed=1)
    assert [cb.size for cb in beam.codebooks] == [4, 32, 16]
    # the same config given as one
    again = vg.fit(x, RvqConfig.of_sizes(6, [4, 32, 16]), seed=1)
    assert again == enc


def test_fit_equal_sizes_given_as_a_list_is_the_plain_fit() -> None:
    x = np.random.default_rng(1).standard_normal((1500, 5)).astype(np.float32)
    assert vg.fit(x, codebook_size=[8, 8, 8]) == vg.fit(x, num_stages=3, codebook_size=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"codebook_size": [4, 8], "num_stages": 3}, "num_stages=3 contradicts the 2 sizes"),
        ({"codebook_size": [4, 8], "refine": 1}, "refine needs equal codebook sizes"),
        ({"codebook_size": [4, 600]}, "at least codebook_size = 600 rows"),
        ({"codebook_size": [4, 8], "config": RvqConfig(2, 3, 8)}, "contradicts config.stage_sizes"),
    ],
)
def test_fit_rejects_bad_sizes(kwargs: dict, match: str) -> None:
    x = np.random.default_rng(0).standard_normal((500, 3))
    with pytest.raises(ValueError, match=match):
        vg.fit(x, **kwargs)


# -- model files --------------------------------------------------------------------------
def sized_file(
    sizes: list[int],
    shape: list[int],
    *,
    k: int | None = None,
    m: int | None = None,
    d: int = 3,
    data: bytes | None = None,
) -> bytes:
    """A model file whose config lists ``sizes`` and whose tensor has ``shape``."""
    nbytes = math.prod(shape) * 4
    config = {"num_stages": len(sizes) if m is None else m, "dimension": d,
              "codebook_size": max(sizes) if k is None else k, "codebook_sizes": sizes}  # fmt: skip
    header = {
        "__metadata__": {
            "format": "viva-glyph-rvq", "format_version": "1", "config": json.dumps(config),
            "dtype": "float32", "library_version": "0.1.0",
        },
        "codebooks": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]},
    }  # fmt: skip
    text = json.dumps(header).encode()
    body = bytes(nbytes) if data is None else data
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_file_round_trip_with_mixed_sizes(tmp_path: Path, dtype: type) -> None:
    x = np.random.default_rng(0).standard_normal((600, 3))
    enc = vg.fit(x, codebook_size=[4, 32, 8], seed=2)
    if dtype == np.float64:
        enc = vg.from_codebooks([vg.Codebook(cb.vectors, dtype=np.float64) for cb in enc.codebooks])
    path = tmp_path / "m.safetensors"
    enc.save(path)
    back = vg.load(path)
    assert back == enc and back.config.stage_sizes == (4, 32, 8) and back.dtype == dtype
    np.testing.assert_array_equal(back.encode(x), enc.encode(x))
    if dtype == np.float32:
        assert back.training == enc.training
    # a plain safetensors file: one (K_1 + ... + K_M, D) tensor, the sizes in the config
    from safetensors.numpy import load_file

    raw = load_file(str(path))["codebooks"]
    np.testing.assert_array_equal(raw, np.concatenate([cb.vectors for cb in enc.codebooks]))
    assert json.loads(vio.read_metadata(path)["config"])["codebook_sizes"] == [4, 32, 8]


def test_equal_sizes_write_the_old_layout(tmp_path: Path) -> None:
    enc = vg.from_codebooks(np.random.default_rng(0).standard_normal((3, 5, 4)))
    path = tmp_path / "u.safetensors"
    enc.save(path)
    config = json.loads(vio.read_metadata(path)["config"])
    assert config == {"num_stages": 3, "dimension": 4, "codebook_size": 5}
    assert vg.load(path) == enc
    # a file that lists equal sizes (not what save writes) reads as the plain model
    stack = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    path.write_bytes(sized_file([3, 3], [6, 3], data=stack.tobytes()))
    back = vg.load(path)
    assert back.config == RvqConfig(2, 3, 3)
    np.testing.assert_array_equal(back.codebook_array.reshape(6, 3), stack)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (sized_file([4, 9], [12, 3]), r"shape \[12, 3\], expected \[13, 3\]"),
        (sized_file([4, 9], [2, 9, 3]), r"expected \[13, 3\]"),
        (sized_file([4, 9], [13, 3], m=3), "not a valid RVQ config"),
        (sized_file([4, 9], [13, 3], k=4), "not a valid RVQ config"),
        (sized_file([4, 0], [4, 3]), "not a valid RVQ config"),
        (sized_file([4, True], [5, 3]), "not a valid RVQ config"),  # type: ignore[list-item]
        (sized_file(["4", 9], [13, 3], k=9), "not a valid RVQ config"),  # type: ignore[list-item]
        (sized_file([4, 1 << 40], [4 + (1 << 40), 3], data=bytes(156)), "run past the 156 bytes"),
        (sized_file([4, 9], [13, 3], data=bytes(10)), "truncated"),
    ],
    ids=["rows", "3-d", "stages", "largest", "zero", "bool", "string", "huge", "short"],
)
def test_hostile_sized_model_files(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError, match=match):
            vg.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


# -- evaluation -----------------------------------------------------------------------------
def test_evaluate_reports_each_stage_against_its_own_size() -> None:
    from viva_glyph.metrics._evaluate import evaluate

    x = np.random.default_rng(0).standard_normal((1200, 4)).astype(np.float32)
    enc = vg.fit(x, codebook_size=[4, 64, 8], seed=0)
    report = evaluate(enc, x, block_rows=500)
    codes = enc.encode(x)
    assert report.codebook_sizes == (4, 64, 8) and report.code_counts.shape == (3, 64)
    for s, k in enumerate((4, 64, 8)):
        used = len(np.unique(codes[:, s]))
        assert report.utilization[s] == pytest.approx(used / k)
        np.testing.assert_array_equal(
            report.code_counts[s, :k], np.bincount(codes[:, s], minlength=k)
        )
    assert [r.bits for r in report.rows] == pytest.approx([2, 8, 11])
    for m, row in enumerate(report.rows, start=1):
        assert row.mse == pytest.approx(((x - recon64(enc, codes[:, :m])) ** 2).mean(), rel=1e-5)
    assert report.distinct_glyphs == len(np.unique(codes, axis=0))
    assert report.to_dict()["codebook_size"] == [4, 64, 8]
    assert "/4 " in report.table() and "/8 " in report.table()
