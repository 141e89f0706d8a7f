"""Quantized norms of the index: optimal 1-D k-means (cqint8) against a brute-force dynamic
programme; one-byte cross terms (qint8, cqint8) that search to the exact-norm neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import RvqIndex, load
from viva_glyph.index._kmeans1d import GROUPS, kmeans_1d, squared_error


def brute_optimum(x: np.ndarray, k: int) -> float:
    """Least squared error of x in k clusters: the O(k n^2) programme over sorted x."""
    x = np.sort(x.astype(np.float64))
    n = x.shape[0]

    def cost(a: int, b: int) -> float:
        part = x[a:b]
        return float(((part - part.mean()) ** 2).sum())

    best = [cost(0, b) if b else 0.0 for b in range(n + 1)]
    for j in range(1, k):
        best = [
            min(best[a] + cost(a, b) for a in range(j, b)) if b > j else 0.0 for b in range(n + 1)
        ]
    return best[n]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(0, 100, allow_nan=False, allow_infinity=False) | st.integers(0, 5).map(float),
        min_size=1,
        max_size=30,
    ),
    k=st.integers(1, 7),
)
def test_kmeans_1d_is_the_optimum(values, k) -> None:
    x = np.array(values)
    levels = kmeans_1d(x, k)
    assert levels.shape == (k,) and (np.diff(levels) >= 0).all()
    got = squared_error(x, levels)
    if np.unique(x).shape[0] <= k:
        assert got == 0.0
    else:
        ref = brute_optimum(x, k)
        assert got <= ref + 1e-9 * (1 + ref) + 1e-9 * float((x * x).sum())


def test_kmeans_1d_grouped_is_near_the_optimum() -> None:
    """Above GROUPS distinct values (runs merged, then Lloyd on all): a hand-checkable case,
    k well-separated clumps, is found exactly."""
    rng = np.random.default_rng(0)
    centres = np.arange(8) * 100.0
    x = (centres[:, None] + rng.standard_normal((8, GROUPS // 4))).ravel()
    levels = kmeans_1d(x, 8)
    means = x.reshape(8, -1).mean(1)
    np.testing.assert_allclose(levels, means, rtol=0, atol=1e-9)


def test_qint8_of_one_norm_is_exact() -> None:
    """First batch of one vector (min = max): the stated error (max - min) / 512 is 0.
    A unit step put every norm half a unit off (FAISS decodes min there)."""
    rng = np.random.default_rng(4)
    enc = RvqEncoder([Codebook(rng.standard_normal((8, 3))) for _ in range(2)])
    index = RvqIndex(enc, norm="qint8")
    index.add_codes(np.array([[1, 2]]))
    decoded = enc.codebook_array.astype(np.float64)[np.arange(2), [1, 2]].sum(0)
    q = rng.standard_normal((1, 3))
    d, i = index.search(q, 1)
    assert i[0, 0] == 0
    np.testing.assert_allclose(d[0, 0], ((q[0] - decoded) ** 2).sum(), rtol=1e-5)


def _norm_index(seed: int = 0, nlist: int | None = None):
    rng = np.random.default_rng(seed)
    enc = RvqEncoder([Codebook(rng.standard_normal((16, 8)) * 0.6**s) for s in range(3)])
    X = rng.standard_normal((3000, 8)).astype(np.float32)
    cent = rng.standard_normal((4, 8)) if nlist else None
    return enc, X, cent


@pytest.mark.parametrize("nlist", [None, 4])
@pytest.mark.parametrize("norm", ["qint8", "cqint8"])
def test_a_tiny_first_batch_does_not_freeze_the_norm_quantizer(norm, nlist, tmp_path) -> None:
    # add(X[:1]) then add(X[1:]) kept a grid trained on one norm: recall@10 0.006 against
    # float norms (0.968 all at once), with no warning.
    enc, X, cent = _norm_index(nlist=nlist)
    Q = np.random.default_rng(5).standard_normal((50, 8))
    whole = RvqIndex(enc, norm=norm, centroids=cent)
    whole.add(X)
    parts = RvqIndex(enc, norm=norm, centroids=cent)
    parts.add(X[:1])
    parts.save(tmp_path / "one.vgindex")  # the grid's training also survives a file
    parts = load(tmp_path / "one.vgindex")
    parts.add(X[1:40])
    if cent is None:  # codes made elsewhere: their norms come from the codes
        parts.add_codes(enc.encode(X[40:100]), ids=np.arange(40, 100))
    else:
        parts.add(X[40:100])
    parts.add(X[100:])
    # the same grid as one batch of the same norms, so the same stored norms and results
    np.testing.assert_array_equal(parts.store.norm_params, whole.store.norm_params)
    order = np.argsort(parts.ids)
    np.testing.assert_array_equal(
        np.asarray(parts.store.norms)[order], np.asarray(whole.store.norms)[np.argsort(whole.ids)]
    )
    np.testing.assert_array_equal(parts.search(Q, 10, nprobe=4 if nlist else 1)[1],
                                  whole.search(Q, 10, nprobe=4 if nlist else 1)[1])  # fmt: skip


def test_the_norm_grid_stays_once_it_has_seen_enough_norms(monkeypatch) -> None:
    from viva_glyph.index import _store

    monkeypatch.setattr(_store, "NORM_TRAIN", 200)  # 65,536 in use
    enc, X, _ = _norm_index()
    first = RvqIndex(enc, norm="qint8")
    first.add(X[:250])
    grid = first.store.norm_params.copy()
    first.add(X[250:])  # the grid has seen 250 >= 200 norms: kept, the new ones quantized on it
    np.testing.assert_array_equal(first.store.norm_params[:, :2], grid[:, :2])
    # values outside the grid only widen its bounds: the search stays exact
    assert (first.store.norm_params[:, 2] >= grid[:, 2]).all()
    exact = RvqIndex(enc, norm="float")
    exact.add(X)
    Q = np.random.default_rng(8).standard_normal((30, 8))
    np.testing.assert_array_equal(first.search(Q, 10)[1], exact.search(Q, 10)[1])
    small = RvqIndex(enc, norm="qint8")
    small.add(X[:150])
    small.add(X[150:])  # 150 < 200: trained again on all 3,000
    alone = RvqIndex(enc, norm="qint8")
    alone.add(X)
    np.testing.assert_array_equal(small.store.norm_params, alone.store.norm_params)
