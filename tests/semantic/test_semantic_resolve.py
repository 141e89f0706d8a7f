"""Semantic IDs: "reassign" against a brute-force reference, residual normalisation,
and hostile input (keys, per-level sizes, stores and files of another model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_streams_equal

from viva_glyph import semantic
from viva_glyph.core.io import ModelFormatError
from viva_glyph.semantic._balance import sq_distances


def blobs(n: int, d: int = 6, centers: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = 4.0 * rng.normal(size=(centers, d))
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def reassign_reference(
    ids: semantic.SemanticIds, x: np.ndarray, candidates: int
) -> tuple[np.ndarray, list[int]]:
    """The rule, item by item: rank each glyph's items by error (ties by row); items of rank
    1, then rank 2, ... (ties by row) take the nearest of their `candidates` nearest last-level
    codes that no item holds under their prefix, else stay."""
    codes = ids.codes(x).astype(np.int64)
    n, L = codes.shape
    x64 = x.astype(np.float64)
    err = ((x64 - ids.decode(codes)) ** 2).sum(axis=1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(codes[i]), []).append(i)
    rank = np.zeros(n, dtype=np.int64)
    for members in groups.values():
        for r, i in enumerate(sorted(members, key=lambda i: (err[i], i))):
            rank[i] = r
    held = {tuple(codes[i]) for i in range(n) if rank[i] == 0}
    last = ids.codebooks[-1].vectors64
    out = codes.copy()
    moved = []
    for i in sorted(np.flatnonzero(rank > 0).tolist(), key=lambda i: (rank[i], i)):
        r = x64[i : i + 1].copy()
        for level in range(L - 1):  # the same subtractions, in the same order, as the model
            r -= ids.codebooks[level].vectors64[codes[i, level]]
        d = sq_distances(r, last)[0]
        for c in np.argsort(d, kind="stable")[:candidates]:
            glyph = (*codes[i, : L - 1], int(c))
            if glyph not in held:
                held.add(glyph)
                out[i, L - 1] = c
                moved.append(i)
                break
    return out, moved


@pytest.mark.parametrize("candidates", [1, 2, 5, 16])
def test_reassign_takes_the_nearest_free_code_among_the_beam_candidates(candidates):
    x = blobs(1500, seed=1)
    ids = semantic.fit(x, levels=2, codebook_size=16, suffix_size=1500)
    expect, moved = reassign_reference(ids, x, candidates)
    u, rep = ids.unique(x, resolve="reassign", candidates=candidates, report=True)
    np.testing.assert_array_equal(u[:, :2], expect)
    assert rep.moved == len(moved)
    assert np.unique(u, axis=0).shape[0] == x.shape[0]
    raw = ids.codes(x)
    np.testing.assert_array_equal(u[:, 0], raw[:, 0])  # the prefix is kept
    if candidates == 1:  # an item's nearest code is its own glyph's, which is held
        assert rep.moved == 0
        np.testing.assert_array_equal(u, ids.unique(x))
    else:
        assert rep.moved > 0
        assert 1 <= rep.mean_rank <= candidates - 1
    assert rep.suffixed == int((u[:, 2] > 0).sum())


def test_reassign_computes_distances_in_bounded_blocks(monkeypatch):
    """Blocks of REASSIGN_ROWS overflowing items (10,000,000 copies of one vector held
    20 GB of distances at once): the same IDs as the item-by-item reference, and no call
    for more rows than a block."""
    from viva_glyph.semantic import _model, _unique

    monkeypatch.setattr(_unique, "REASSIGN_ROWS", 7)
    calls: list[int] = []
    real = _model.SemanticIds._last_distances

    def spy(self, x, final, rows):  # type: ignore[no-untyped-def]
        calls.append(len(rows))
        return real(self, x, final, rows)

    monkeypatch.setattr(_model.SemanticIds, "_last_distances", spy)
    x = blobs(1500, seed=1)
    ids = semantic.fit(x, levels=2, codebook_size=16, suffix_size=1500)
    expect, _ = reassign_reference(ids, x, 5)
    u = ids.unique(x, resolve="reassign", candidates=5)
    np.testing.assert_array_equal(u[:, :2], expect)
    assert len(calls) > 1 and max(calls) <= 7


def test_reassign_with_fewer_candidates_leaves_more_suffixes():
    x = blobs(800, seed=2)
    ids = semantic.fit(x, levels=2, codebook_size=32, suffix_size=800)
    reps = [ids.unique(x, resolve="reassign", candidates=c, report=True)[1] for c in (2, 32)]
    assert reps[0].moved < reps[1].moved
    assert reps[0].suffixed > reps[1].suffixed


def normalized_reference(ids: semantic.SemanticIds, x: np.ndarray) -> np.ndarray:
    """Codes by the definition: unit input, unit residual before every later level."""
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out = np.empty((x.shape[0], ids.levels), dtype=np.int64)
    r = u
    for level, book in enumerate(ids.codebooks):
        if level:
            r = r / np.linalg.norm(r, axis=1, keepdims=True)
        d = ((r[:, None, :] - book.vectors64[None]) ** 2).sum(axis=2)
        out[:, level] = d.argmin(axis=1)
        # ties or near-ties would make the reference's choice a matter of rounding
        top2 = np.sort(d, axis=1)[:, :2]
        assert (top2[:, 1] - top2[:, 0] > 1e-9).all()
        r = r - book.vectors64[out[:, level]]
    return out


def test_normalize_residuals_codes_decode_and_file(tmp_path):
    x = blobs(2000, d=8, seed=3)
    ids = semantic.fit(
        x, levels=3, codebook_size=8, metric="cosine", normalize_residuals=True, suffix_size=2000
    )
    assert ids.normalize_residuals and ids.residual_scales is not None
    codes = ids.codes(x)
    np.testing.assert_array_equal(codes, normalized_reference(ids, x))
    plain = semantic.fit(x, levels=3, codebook_size=8, metric="cosine")
    assert not plain.normalize_residuals and plain.residual_scales is None
    # scales: 1 for level 0, then the mean norm of each later level's training residuals
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = u - ids.codebooks[0].vectors64[codes[:, 0]]
    assert ids.residual_scales[0] == 1.0
    assert ids.residual_scales[1] == pytest.approx(np.linalg.norm(r, axis=1).mean(), rel=1e-5)
    f = np.cumprod(ids.residual_scales)
    expect = sum(f[j] * ids.codebooks[j].vectors64[codes[:, j]] for j in range(3))
    np.testing.assert_allclose(ids.decode(codes), expect, rtol=0, atol=1e-12)
    _, err = ids.codes_and_errors(x)
    np.testing.assert_allclose(err, ((u - expect) ** 2).sum(axis=1), rtol=1e-9, atol=1e-12)
    uids = ids.unique(x)
    assert np.unique(uids, axis=0).shape[0] == x.shape[0]
    moved = ids.unique(x, resolve="reassign")
    assert np.unique(moved, axis=0).shape[0] == x.shape[0]
    path = tmp_path / "n.safetensors"
    ids.save(path)
    back = semantic.load(path)
    assert back.normalize_residuals and back.residual_scales == ids.residual_scales
    np.testing.assert_array_equal(back.unique(x), uids)
    np.testing.assert_array_equal(back.decode(codes), ids.decode(codes))


def test_normalize_residuals_needs_cosine_and_greedy():
    x = blobs(500)
    with pytest.raises(ValueError, match="normalize_residuals=True needs metric='cosine'"):
        semantic.fit(x, levels=2, codebook_size=8, normalize_residuals=True)
    with pytest.raises(ValueError, match="beam_size=1"):
        semantic.fit(
            x, levels=2, codebook_size=8, metric="cosine", beam_size=2, normalize_residuals=True
        )
    with pytest.raises(TypeError, match="bool"):
        semantic.fit(x, levels=2, codebook_size=8, metric="cosine", normalize_residuals="yes")


def _rewrite_config(path, tmp_path, change):
    """The model file at path with its JSON settings changed (same tensors)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), "np") as fh:
        meta = dict(fh.metadata())
    cfg = json.loads(meta["semantic"])
    change(cfg)
    meta["semantic"] = json.dumps(cfg)
    out = tmp_path / "changed.safetensors"
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


def test_model_file_with_bad_normalisation_settings(tmp_path):
    x = blobs(800, d=8)
    ids = semantic.fit(x, levels=2, codebook_size=8, metric="cosine", normalize_residuals=True)
    path = tmp_path / "n.safetensors"
    ids.save(path)
    bad = [
        lambda c: c.update(residual_scales=[1.0]),  # wrong length
        lambda c: c.update(residual_scales=[1.0, -2.0]),
        lambda c: c.update(residual_scales="1,1"),
        lambda c: c.update(residual_scales=None),
        lambda c: c.update(normalize_residuals="true"),
        lambda c: c.update(metric="l2"),
    ]
    for change in bad:
        with pytest.raises(ModelFormatError):
            semantic.load(_rewrite_config(path, tmp_path, change))
    # a file written before the option existed loads as not normalised
    old = _rewrite_config(
        path,
        tmp_path,
        lambda c: (c.pop("normalize_residuals"), c.pop("residual_scales"), c.update(metric="l2")),
    )
    assert not semantic.load(old).normalize_residuals


def test_store_refuses_a_model_that_differs_only_in_normalisation(tmp_path):
    x = blobs(800, d=8)
    ids = semantic.fit(x, levels=2, codebook_size=8, metric="cosine", normalize_residuals=True)
    same_books = semantic.SemanticIds(ids.codebooks, metric="cosine")
    keys = [f"k{i}" for i in range(100)]
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        store.assign(same_books, x[:100], keys)
        with pytest.raises(ValueError, match="another model"):
            store.assign(ids, x[:100], keys)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (["a", 1, "c"], TypeError),  # mixed: 1 would silently become "1"
        ([1.0, 2.0, 3.0], TypeError),
        ([b"a", b"b", b"c"], TypeError),
        ([True, False, True], TypeError),
        (np.array([0.5, 1.5, 2.5]), TypeError),
        (["a", "1", 1], TypeError),
    ],
)
def test_keys_of_another_type_are_refused(keys, error):
    x = blobs(300)
    ids = semantic.fit(x[:300], levels=2, codebook_size=4)
    with pytest.raises(error, match="keys must"):
        ids.unique(x[:3], keys=keys)


def test_keys_of_one_kind_are_accepted():
    x = blobs(300)
    ids = semantic.fit(x, levels=2, codebook_size=4)
    for keys in (["a", "b", "c"], [3, 1, 2], np.array([7, 8, 9], dtype=np.uint32)):
        assert ids.unique(x[:3], keys=keys).shape == (3, 3)


def test_per_level_sizes_as_an_array_and_wrong_lengths():
    x = blobs(600)
    ids = semantic.fit(x, levels=2, codebook_size=np.array([8, 4]))
    assert ids.codebook_sizes == (8, 4)
    with pytest.raises(ValueError, match="lists 2 sizes, but levels is 3"):
        semantic.fit(x, levels=3, codebook_size=np.array([8, 4]))
    with pytest.raises(TypeError, match="one int per level"):
        semantic.fit(x, levels=2, codebook_size=np.array([[8, 4]]))


def test_normalized_model_streams_memmap_and_dask_to_the_same_ids(tmp_path, monkeypatch):
    import viva_glyph.semantic._model as m

    da = pytest.importorskip("dask.array")
    x = blobs(3000, d=8, seed=5)
    ids = semantic.fit(
        x, levels=2, codebook_size=16, metric="cosine", normalize_residuals=True, suffix_size=3000
    )
    monkeypatch.setattr(m, "BLOCK_ROWS", 700)  # several blocks
    assert_streams_equal(ids, x, tmp_path, da)
