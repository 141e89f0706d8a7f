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


# -- one byte of cross terms: the exact-norm neighbours -------------------------------------


def _wide_digits(nlist: int | None = None):
    """sklearn digits, each row scaled by a log-uniform factor (norms over 4 decades), an
    encoder fitted to them (to their residuals with IVF) and held-out queries."""
    datasets = pytest.importorskip("sklearn.datasets")
    import viva_glyph as vg

    rng = np.random.default_rng(0)
    X = datasets.load_digits().data.astype(np.float64)
    X *= np.exp(rng.uniform(-4.6, 4.6, size=(X.shape[0], 1)))
    order = rng.permutation(X.shape[0])
    X, Q = X[order[:1600]], X[order[1600:1660]]
    cent = None
    fit_on = X
    if nlist:
        cent = X[rng.choice(X.shape[0], nlist, replace=False)]
        near = np.argmin(((X[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
        fit_on = X - cent[near]
    enc = vg.fit(fit_on, num_stages=4, codebook_size=32, iterations=4, seed=0)
    return enc, X, Q, cent


def _decoded(index: RvqIndex) -> tuple[np.ndarray, np.ndarray]:
    """(ids, decoded vectors in float64) of every stored row, by brute force."""
    s = index.store
    codes = np.asarray(s.codes)
    books = index.encoder.codebook_array.astype(np.float64)
    dec = books[np.arange(codes.shape[1]), codes].sum(1)
    if s.centroids is not None:
        dec += s.centroids.astype(np.float64)[s.list_of(np.arange(len(index)))]
    return np.asarray(s.ids), dec


def _brute(metric: str, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - v[None]) ** 2).sum(-1)
    ip = (q[:, None, :] * v[None]).sum(-1)
    nv = np.sqrt((v * v).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(nv > 0, ip / (np.linalg.norm(q, axis=1)[:, None] * nv), 0.0)
    return -cos


def _assert_exact_topk(index: RvqIndex, metric: str, Q, d, i, k: int, probed=None) -> None:
    """The ids are a top k of the brute-force scores of the decoded vectors (ties to float
    rounding aside) and the distances are those scores."""
    ids, dec = _decoded(index)
    ref = _brute(metric, Q, dec)
    if probed is not None:
        ref = np.where(probed, ref, np.inf)
    got = d.astype(np.float64) if metric == "l2" else -d.astype(np.float64)
    tol = 1e-5 * (1 + np.abs(ref[np.isfinite(ref)]).max())
    where = {int(v): j for j, v in enumerate(ids)}
    for r in range(Q.shape[0]):
        cols = [where[int(v)] for v in i[r]]
        assert len(set(cols)) == k
        np.testing.assert_allclose(got[r], ref[r, cols], rtol=0, atol=tol)
        np.testing.assert_allclose(np.sort(ref[r, cols]), np.sort(ref[r])[:k], rtol=0, atol=tol)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("nlist", [None, 6])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("norm", ["qint8", "cqint8"])
def test_one_byte_norms_of_widely_varying_norms_give_the_exact_neighbours(
    norm, metric, nlist, backend, monkeypatch
) -> None:
    # One byte of the whole norm on one grid (FAISS ST_norm_qint8's scheme) kept 0.38x of
    # the float-norm recall@10 on image patches: norms over 4 decades, the grid 10^4 times
    # too coarse for the gaps between neighbours.
    if backend == "numpy":
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    enc, X, Q, cent = _wide_digits(nlist)
    index = RvqIndex(enc, metric=metric, norm=norm, centroids=cent)
    index.add(X)
    exact = RvqIndex(enc, metric=metric, norm="float", centroids=cent)
    exact.add(X)
    probe = 6 if nlist else 1
    d, i = index.search(Q, 10, nprobe=probe)
    _assert_exact_topk(index, metric, Q, d, i, 10)
    d0, i0 = exact.search(Q, 10, nprobe=probe)
    if backend == "numba":  # (numpy's float-norm scan breaks exact ties in any order)
        assert (i == i0).mean() > 0.98  # the float-norm index's own top 10, float ties aside
    np.testing.assert_allclose(d, d0, rtol=1e-4, atol=1e-4 * np.abs(d0).max())
    if backend == "numba" and metric == "l2":  # the bounds leave rows out of the re-scoring
        assert np.median(index._last_rescored) < len(X) * 0.6
    if nlist:  # one list probed: the float-norm index's scores of the rows of that list
        d1, _ = index.search(Q, 5, nprobe=1)
        d0, _ = exact.search(Q, 5, nprobe=1)
        np.testing.assert_allclose(d1, d0, rtol=1e-4, atol=1e-4 * np.abs(d0).max())


def test_numba_and_numpy_give_identical_one_byte_norm_results(monkeypatch) -> None:
    enc, X, Q, cent = _wide_digits(4)
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", flag)
        for metric in ("l2", "cosine"):
            for norm in ("qint8", "cqint8"):
                index = RvqIndex(enc, metric=metric, norm=norm, centroids=cent)
                index.add(X)
                out.append(index.search(Q, 10, nprobe=3))
    half = len(out) // 2
    for (da_, ia), (db, ib) in zip(out[:half], out[half:], strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(da_, db)


@pytest.mark.parametrize("norm", ["float", "lut", "none"])
def test_numpy_scan_keeps_the_lowest_positions_of_tied_scores(norm, monkeypatch) -> None:
    # The numpy scan kept any of the rows tied at the k-th score (argpartition's pick);
    # the kernel keeps the lowest positions: the two paths returned different ids.
    rng = np.random.default_rng(5)
    enc = RvqEncoder([Codebook(rng.standard_normal((16, 4)) * 0.7**s) for s in range(3)])
    codes = rng.integers(0, 16, size=(9000, 3))
    codes[::7] = codes[3]  # 1,286 rows with the same code, so the same score
    metric = "ip" if norm == "none" else "l2"
    q = enc.decode(codes[3:4]) + 1e-3 * rng.standard_normal((3, 4))  # nearest: the tied rows
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", flag)
        index = RvqIndex(enc, norm=norm, metric=metric)
        index.add_codes(codes)
        out.append(index.search(q, 20))
    np.testing.assert_array_equal(out[0][1], out[1][1])
    np.testing.assert_array_equal(out[0][0], out[1][0])


@pytest.mark.parametrize("threads", ["1", "2"])
def test_one_byte_norms_split_over_threads_give_the_same_results(threads, monkeypatch) -> None:
    from viva_glyph.index import _scan

    monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
    monkeypatch.setattr(_scan, "PARALLEL_WORK", 0)
    rng = np.random.default_rng(3)
    enc = RvqEncoder([Codebook(rng.standard_normal((16, 4)) * 0.7**s) for s in range(3)])
    n = 2 * _scan.CODE_BLOCK + 77
    codes = rng.integers(0, 16, size=(n, 3))
    codes[5000:5040] = codes[100]  # exact score ties: the lower position first, always
    index = RvqIndex(enc, norm="qint8")
    index.add_codes(codes)
    q = rng.standard_normal((2, 4))
    for rows in (q[:1], q):  # one query: code blocks on threads; two: query blocks
        d, i = index.search(rows, 20)
        _assert_exact_topk(index, "l2", rows, d, i, 20)
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", "1")
        np.testing.assert_array_equal(index.search(rows, 20)[1], i)  # as on one thread
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
    q100 = enc.decode(codes[100:101]).astype(np.float64)
    _, i = index.search(q100, 20)
    same = np.flatnonzero((codes == codes[100]).all(axis=1))  # one exact score: by position
    assert same.shape[0] >= 41
    np.testing.assert_array_equal(i[0], same[:20])


def test_a_first_batch_of_one_gives_the_exact_neighbours() -> None:
    enc, X, Q, _ = _wide_digits()
    for norm in ("qint8", "cqint8"):
        index = RvqIndex(enc, norm=norm)
        index.add(X[:1])
        index.add(X[1:])
        d, i = index.search(Q, 10)
        _assert_exact_topk(index, "l2", Q, d, i, 10)
        assert index.store.norm_seen == len(X)  # trained again on every row


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 80),
    k=st.integers(1, 12),
    metric=st.sampled_from(["l2", "cosine"]),
    norm=st.sampled_from(["qint8", "cqint8"]),
    nlist=st.sampled_from([None, 3]),
    spread=st.floats(0.0, 8.0),
)
def test_reported_scores_are_brute_force_scores_of_the_decoded_vectors(
    seed, n, k, metric, norm, nlist, spread
) -> None:
    rng = np.random.default_rng(seed)
    m, kk, d = 3, 8, 4
    enc = RvqEncoder(
        [
            Codebook(rng.standard_normal((kk, d)) * np.exp(rng.uniform(-spread, spread)))
            for _ in range(m)
        ]
    )
    codes = rng.integers(0, kk, size=(n, m))
    cent = rng.standard_normal((nlist, d)) * 3 if nlist else None
    index = RvqIndex(enc, metric=metric, norm=norm, centroids=cent)
    lists = rng.integers(0, nlist, size=n) if nlist else None
    half = n // 2  # two batches: the grid trained again, the bytes quantized again
    index.add_codes(codes[:half], lists=None if lists is None else lists[:half])
    index.add_codes(
        codes[half:], ids=np.arange(half, n), lists=None if lists is None else lists[half:]
    )
    q = rng.standard_normal((3, d)) * np.exp(rng.uniform(-spread, spread))
    dist, ids = index.search(q, k, nprobe=nlist or 1)
    kk_ = min(k, n)
    assert (ids[:, kk_:] == -1).all() and (ids[:, :kk_] >= 0).all()
    _assert_exact_topk(index, metric, q, dist[:, :kk_], ids[:, :kk_], kk_)
