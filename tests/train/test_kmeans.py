"""k-means steps against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viva_glyph.train import kmeans


def brute_labels(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(axis=1), d.min(axis=1)


def test_assign_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 5))
    c = rng.standard_normal((13, 5))
    labels, sq = kmeans.assign(x, c)
    ref_l, ref_d = brute_labels(x, c)
    assert labels.dtype == np.intp and sq.dtype == np.float64
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_allclose(sq, ref_d, rtol=1e-12, atol=1e-12)


def test_assign_float32_and_ties_to_lowest_index() -> None:
    c = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    x = np.array([[0.0, 0.0], [0.9, 0.1], [-2.0, 0.0]], dtype=np.float32)
    labels, sq = kmeans.assign(x, c)
    np.testing.assert_array_equal(labels, [0, 0, 1])  # (0,0) is equidistant: lowest wins
    np.testing.assert_allclose(sq, [1.0, 0.02, 1.0], rtol=1e-6)


def test_assign_shape_error() -> None:
    with pytest.raises(ValueError, match="equal D"):
        kmeans.assign(np.zeros((3, 2)), np.zeros((4, 3)))


def test_accumulate_and_combine_match_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 3)).astype(np.float32)
    lab = rng.integers(0, 7, 500)
    sq = rng.random(500)
    sums, counts, inertia = kmeans.accumulate(x, lab, 7, sq)
    ref = np.zeros((7, 3))
    np.add.at(ref, lab, x.astype(np.float64))
    np.testing.assert_allclose(sums, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(counts, np.bincount(lab, minlength=7))
    assert counts.dtype == np.int64
    assert inertia == pytest.approx(sq.sum())
    a = kmeans.accumulate(x[:123], lab[:123], 7, sq[:123])
    b = kmeans.accumulate(x[123:], lab[123:], 7, sq[123:])
    s2, c2, i2 = kmeans.combine(a, b)
    np.testing.assert_allclose(s2, sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(c2, counts)
    assert i2 == pytest.approx(inertia)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_accumulate_numba_and_numpy_bit_identical(
    dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3000, 37)) * 1e3).astype(dtype)
    lab = rng.integers(0, 50, 3000)
    lab[:7] = 49  # a cluster whose rows are far apart in the input
    strided = x[::2]  # not contiguous
    fast = [kmeans.accumulate(v, lab[: len(v)], 50) for v in (x, strided)]
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    slow = [kmeans.accumulate(v, lab[: len(v)], 50) for v in (x, strided)]
    for f, s in zip(fast, slow, strict=True):
        assert f[0].tobytes() == s[0].tobytes()
        np.testing.assert_array_equal(f[1], s[1])


def test_accumulate_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        kmeans.accumulate(np.zeros((2, 2)), np.array([0, 5]), 3)


def test_update_means_and_empty_split() -> None:
    sums = np.array([[2.0, 4.0], [0.0, 0.0], [9.0, 3.0]])
    counts = np.array([2, 0, 3], dtype=np.int64)
    old = np.array([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    new, n_empty = kmeans.update(sums, counts, old, np.random.default_rng(0))
    assert n_empty == 1
    np.testing.assert_allclose(new[0], [1.0, 2.0])
    # cluster 2 (largest) is split: both halves sit symmetrically around its mean
    np.testing.assert_allclose((new[1] + new[2]) / 2, [3.0, 1.0])
    assert not np.array_equal(new[1], new[2])
    assert np.linalg.norm(new[1] - new[2]) < 0.05


def test_one_lloyd_iteration_equals_brute_force_step() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 4))
    init = x[:9].copy()
    cent, n_iter, inertia = kmeans.lloyd(
        x, 9, iterations=1, rng=np.random.default_rng(0), init=init, dtype=np.float64
    )
    lab, d = brute_labels(x, init)
    ref = np.stack([x[lab == k].mean(axis=0) for k in range(9)])
    assert n_iter == 1
    np.testing.assert_allclose(cent, ref, rtol=1e-10, atol=1e-12)
    assert inertia == pytest.approx(d.sum(), rel=1e-10)


def test_kmeans_plus_plus_picks_distinct_rows_deterministically() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 3))
    c1 = kmeans.kmeans_plus_plus(x, 20, np.random.default_rng(5))
    c2 = kmeans.kmeans_plus_plus(x, 20, np.random.default_rng(5))
    np.testing.assert_array_equal(c1, c2)
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in c1)
    assert len({tuple(r) for r in c1}) == 20
    with pytest.raises(ValueError, match="at least K"):
        kmeans.kmeans_plus_plus(x[:5], 6, np.random.default_rng(0))


def plus_plus_reference(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ by explicit pairwise distances, drawing as kmeans_plus_plus does."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    picks = [int(rng.integers(n))]
    draws = rng.random((k - 1, trials))
    closest = dist[picks[0]].copy()
    for u in draws:
        cum = np.cumsum(closest)
        cand = np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), n - 1)
        pots = [np.minimum(closest, dist[c]).sum() for c in cand]
        best = cand[int(np.argmin(pots))]
        picks.append(int(best))
        closest = np.minimum(closest, dist[best])
    return x[picks]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("d", [3, 40])  # numba: products in the kernel (D <= 8), Gram matrix
def test_kmeans_plus_plus_matches_a_brute_force_reference(
    backend: str, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "1" if backend == "numba" else "0")
    x = np.random.default_rng(7).standard_normal((400, d))
    got = kmeans.kmeans_plus_plus(x, 25, np.random.default_rng(11))
    np.testing.assert_array_equal(got, plus_plus_reference(x, 25, np.random.default_rng(11)))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_kmeans_plus_plus_with_fewer_distinct_points_than_k(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "1" if backend == "numba" else "0")
    x = np.repeat(np.eye(3), 10, axis=0)  # 3 distinct points, K = 8
    c = kmeans.kmeans_plus_plus(x, 8, np.random.default_rng(0))
    assert {tuple(r) for r in c} == {tuple(r) for r in np.eye(3)}


def test_lloyd_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(4)
    centers = rng.uniform(-100, 100, (6, 3))
    x = np.repeat(centers, 50, axis=0) + rng.standard_normal((300, 3)) * 0.1
    cent, _, _ = kmeans.lloyd(x, 6, iterations=20, rng=np.random.default_rng(0))
    dist = np.linalg.norm(cent[:, None] - centers[None], axis=-1)
    assert sorted(dist.argmin(axis=1).tolist()) == list(range(6))
    assert dist.min(axis=1).max() < 0.1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_lloyd_inertia_never_increases(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((60, 3))
    seen: list[float] = []
    kmeans.lloyd(
        x,
        k,
        iterations=8,
        tol=0.0,
        rng=np.random.default_rng(seed),
        dtype=np.float64,
        callback=lambda i, e: seen.append(e),
    )
    assert all(b <= a * (1 + 1e-12) + 1e-12 for a, b in itertools.pairwise(seen))


def test_lloyd_needs_k_rows() -> None:
    with pytest.raises(ValueError, match="at least 5 rows"):
        kmeans.lloyd(np.zeros((4, 2)), 5, rng=np.random.default_rng(0))


def test_progressive_dims_are_rounded_powers() -> None:
    # d ** (i / S), rounded, distinct and increasing, ending at d
    assert kmeans.progressive_dims(384, 10) == [2, 3, 6, 11, 20, 36, 64, 117, 212, 384]
    assert kmeans.progressive_dims(6, 10) == [1, 2, 3, 4, 5, 6]
    assert kmeans.progressive_dims(7, 1) == [7]


@pytest.mark.parametrize(("d", "steps"), [(16, 10), (16, 1), (1, 10)])
def test_progressive_kmeans_recovers_separated_clusters(d: int, steps: int) -> None:
    """The last step runs in the rows' own coordinates: the centroids land on the
    true centres (a wrong back-rotation or a lost mean would miss them)."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(-40, 40, (10, d)) + 500.0  # far from the origin: the mean matters
    x = (np.repeat(centres, 60, axis=0) + 0.01 * rng.standard_normal((600, d))).astype(np.float32)
    rows = kmeans.ArrayRows.of(x[rng.permutation(600)], kmeans.leaf_rows(10, d))
    cent, n_iter = kmeans.progressive_kmeans(rows, 10, 2, np.random.default_rng(0), steps=steps)
    dist = np.linalg.norm(cent[:, None] - centres[None], axis=-1)
    assert sorted(dist.argmin(axis=1).tolist()) == list(range(10))
    assert dist.min(axis=1).max() < 0.01
    assert n_iter >= len(kmeans.progressive_dims(d, steps))


def test_progressive_kmeans_random_seeds_are_distinct_rows() -> None:
    """plus_plus=False, one step: one Lloyd iteration from K distinct random rows
    (the draw after the sample's, which takes all rows here), in the rows' coordinates."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((150, 5)) * 3 + 100).astype(np.float32)  # <= 16 K: all rows
    rows = kmeans.ArrayRows.of(x, kmeans.leaf_rows(12, 5))
    cent, n_iter = kmeans.progressive_kmeans(
        rows, 12, 1, np.random.default_rng(9), steps=1, plus_plus=False
    )
    idx = np.sort(np.random.default_rng(9).choice(150, 12, replace=False))
    ref, _, _ = kmeans.lloyd(x, 12, iterations=1, rng=np.random.default_rng(0), init=x[idx])
    assert n_iter == 1
    np.testing.assert_allclose(cent, ref, rtol=1e-5)


def test_progressive_kmeans_one_dimensional_first_step_uses_kmeans_plus_plus() -> None:
    """plus_plus=False is overridden when the first step is 1-D (D = 6: dims 1..6)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    rows = kmeans.ArrayRows.of(x, kmeans.leaf_rows(8, 6))
    runs = [
        kmeans.progressive_kmeans(rows, 8, 3, np.random.default_rng(2), plus_plus=p)[0]
        for p in (True, False)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    wide = rng.standard_normal((400, 64)).astype(np.float32)  # first step 2-D: seeds differ
    rows = kmeans.ArrayRows.of(wide, kmeans.leaf_rows(8, 64))
    runs = [
        kmeans.progressive_kmeans(rows, 8, 3, np.random.default_rng(2), plus_plus=p)[0]
        for p in (True, False)
    ]
    assert not np.array_equal(runs[0], runs[1])
