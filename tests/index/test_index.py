"""RvqIndex search against brute force over the decoded vectors (float64, elementwise)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import RvqIndex, _rerank, _scan

M, K, D = 4, 32, 8
CASES = [
    (metric, norm)
    for metric in ("l2", "ip", "cosine")
    for norm in ("float", "qint8", "cqint8", "lut", "none")
    if norm != "none" or metric == "ip"
]


def make_encoder(seed: int = 0, m: int = M, k: int = K, d: int = D) -> RvqEncoder:
    rng = np.random.default_rng(seed)
    return RvqEncoder([Codebook(rng.standard_normal((k, d)) * 0.6**s) for s in range(m)])


@pytest.fixture(scope="module")
def enc() -> RvqEncoder:
    return make_encoder()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (
        rng.standard_normal((2000, D)).astype(np.float32),
        rng.standard_normal((40, D)).astype(np.float32),
    )


def brute(metric: str, q: np.ndarray, v: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Scores (smaller is better) of every (query, vector) pair, float64, by broadcasting.

    ``norms`` replaces ||v||^2 (quantized norms); None uses the exact one.
    """
    q = q.astype(np.float64)
    v = v.astype(np.float64)
    ip = (q[:, None, :] * v[None, :, :]).sum(-1)
    sq = (v * v).sum(-1) if norms is None else norms
    if metric == "l2":
        return (q * q).sum(-1)[:, None] + sq[None, :] - 2 * ip
    if metric == "ip":
        return -ip
    return -ip / (np.linalg.norm(q, axis=1)[:, None] * np.sqrt(sq)[None, :])


def as_score(metric: str, d: np.ndarray) -> np.ndarray:
    return d.astype(np.float64) if metric == "l2" else -d.astype(np.float64)


def stored_cross(index: RvqIndex) -> np.ndarray:
    """The cross terms X as the index's bytes decode them (bin centre or level),
    decoded independently of the library's decoder."""
    st_ = index.store
    first = np.asarray(st_.codes)[:, 0]
    b = np.asarray(st_.norms).astype(np.intp)
    p = st_.norm_params
    if index.norm == "qint8":
        return p[first, 0] + p[first, 1] * (b + 0.5)
    return p[first, b, 0]


def stated_bound(index: RvqIndex) -> np.ndarray:
    """The error bound the index states for each stored byte."""
    st_ = index.store
    first = np.asarray(st_.codes)[:, 0]
    if index.norm == "qint8":
        return st_.norm_params[first, 2]
    return st_.norm_params[first, np.asarray(st_.norms).astype(np.intp), 1]


def check_topk(metric: str, got_d, got_i, scores: np.ndarray, ids: np.ndarray, k: int) -> None:
    """Returned distances equal the reference scores of the returned ids, and those ids
    are a true top-k: their reference scores equal the k smallest (to float32 rounding)."""
    tol = 1e-5 * (1 + np.abs(scores).max())
    pos = {int(v): j for j, v in enumerate(ids)}
    for r in range(scores.shape[0]):
        cols = [pos[int(v)] for v in got_i[r]]
        ref = scores[r, cols]
        np.testing.assert_allclose(as_score(metric, got_d[r]), ref, atol=tol, rtol=0)
        best = np.sort(scores[r])[:k]
        np.testing.assert_allclose(np.sort(ref), best, atol=2 * tol, rtol=0)
        assert len(set(cols)) == k


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("metric", "norm"), CASES)
def test_flat_equals_brute_force(enc, data, metric, norm, backend, monkeypatch) -> None:
    if backend == "numpy":
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    X, Q = data
    index = RvqIndex(enc, metric=metric, norm=norm)
    index.add(X)
    d, i = index.search(Q, 10)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (40, 10)
    decoded = enc.codebook_array.astype(np.float64)[np.arange(M), enc.encode(X)].sum(1)
    exact = brute(metric, Q, decoded)
    if norm in ("qint8", "cqint8") and metric != "ip":  # the stated error of the bytes
        codes = np.asarray(index.store.codes)
        sq = np.einsum("mkd,mkd->mk", enc.codebook_array, enc.codebook_array, dtype=np.float64)
        true = (decoded * decoded).sum(1) - sq[np.arange(M), codes].sum(1)
        err = np.abs(stored_cross(index) - true)
        assert (err <= stated_bound(index) * (1 + 1e-9) + 1e-9).all()
        if norm == "qint8":  # the bound never passes half a step (no vector outside the grid)
            half = index.store.norm_params[codes[:, 0], 1] / 2
            assert (stated_bound(index) <= half * (1 + 1e-9) + 1e-9).all()
    # every norm mode searches to the exact (decoded) neighbours
    check_topk(metric, d, i, exact, np.arange(len(X)), 10)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_single_query_splits_codes_over_threads(enc, threads, monkeypatch) -> None:
    monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
    monkeypatch.setattr(_scan, "PARALLEL_WORK", 0)  # small as it is, use the threads
    rng = np.random.default_rng(5)
    n = 2 * _scan.CODE_BLOCK + 123
    codes = rng.integers(0, K, size=(n, M))
    index = RvqIndex(enc)
    index.add_codes(codes, ids=np.arange(n) * 3 + 7)
    q = rng.standard_normal((2, D))
    d, i = index.search(q[:1], 5)  # one query: code blocks on threads, merged
    decoded = enc.codebook_array.astype(np.float64)[np.arange(M), codes].sum(1)
    check_topk("l2", d, i, brute("l2", q[:1], decoded), np.arange(n) * 3 + 7, 5)
    d2, i2 = index.search(q, 5)  # two queries: query blocks (tables of another GEMM shape)
    check_topk("l2", d2, i2, brute("l2", q, decoded), np.arange(n) * 3 + 7, 5)


def test_ids_fewer_than_k_and_remove(enc, data) -> None:
    X, Q = data
    index = RvqIndex(enc)
    index.add(X[:3], ids=[10, 20, 30])
    index.add(X[3:5])  # continues after the largest id
    np.testing.assert_array_equal(np.sort(index.ids), [10, 20, 30, 31, 32])
    d, i = index.search(Q[:2], 8)
    assert (i[:, 5:] == -1).all() and np.isinf(d[:, 5:]).all()
    assert set(i[0, :5].tolist()) == {10, 20, 30, 31, 32}
    assert index.remove([20, 31]) == 2
    assert len(index) == 3
    _, i = index.search(Q[:2], 8)
    assert set(i[0, :3].tolist()) == {10, 30, 32} and (i[:, 3:] == -1).all()
    empty = RvqIndex(enc, metric="ip", norm="none")
    d, i = empty.search(Q[:1], 2)
    assert (i == -1).all() and (d == -np.inf).all()


@pytest.mark.parametrize("block", [None, 1000])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_rerank_everything_is_exact_knn(enc, data, metric, block, tmp_path, monkeypatch) -> None:
    if block is not None:  # re-score a few queries at a time
        monkeypatch.setattr(_rerank, "BLOCK_ELEMENTS", block)
    X, Q = data
    index = RvqIndex(enc, metric=metric, norm="qint8" if metric != "ip" else "none")
    ids = np.arange(len(X))[::-1].copy()
    index.add(X, ids=ids)
    path = tmp_path / "x.npy"
    originals = np.empty_like(X)
    originals[ids] = X  # addressed by id
    np.save(path, originals)
    ref = brute(metric, Q, X)
    for vectors in (originals, path):
        d, i = index.search(Q, 5, rerank=len(X), vectors=vectors)
        check_topk(metric, d, i, ref, ids, 5)
    decoded = enc.decode(enc.encode(X)).astype(np.float64)
    d, i = index.search(Q, 5, rerank=len(X))  # from decoded codes, exact norms
    check_topk(metric, d, i, brute(metric, Q, decoded), ids, 5)


def test_rerank_improves_recall(enc, data) -> None:
    X, Q = data
    index = RvqIndex(enc)
    index.add(X)
    truth = np.argsort(brute("l2", Q, X), axis=1)[:, :10]
    recall = [
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, truth, strict=True)])
        for i in (index.search(Q, 10)[1], index.search(Q, 10, rerank=200, vectors=X)[1])
    ]
    assert recall[1] > recall[0] and recall[1] >= 0.95


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("metric", "norm"), [("l2", "float"), ("l2", "lut"), ("cosine", "float")])
def test_ivf_all_lists_equals_brute_force(enc, data, metric, norm, backend, monkeypatch) -> None:
    if backend == "numpy":
        monkeypatch.setenv("VIVA_GLYPH_NUMBA", "0")
    X, Q = data
    index = RvqIndex(enc, metric=metric, norm=norm, nlist=8)
    index.add(X)
    cent = index.store.centroids.astype(np.float64)
    lists = np.argmin(((X[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    resid = X - cent[lists]
    decoded = cent[lists] + enc.codebook_array.astype(np.float64)[
        np.arange(M), enc.encode(resid)
    ].sum(1)
    d, i = index.search(Q, 10, nprobe=8)
    check_topk(metric, d, i, brute(metric, Q, decoded), np.arange(len(X)), 10)
    _d1, i1 = index.search(Q, 10, nprobe=1)  # nearest list only: a subset of the vectors
    probe = np.argmin(((Q[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    if metric == "l2":
        for r in range(len(Q)):
            assert set(i1[r][i1[r] >= 0]) <= set(np.flatnonzero(lists == probe[r]))
    index.remove(np.arange(0, len(X), 2))
    d, i = index.search(Q, 10, nprobe=8)
    keep = np.arange(1, len(X), 2)
    check_topk(metric, d, i, brute(metric, Q, decoded[keep]), keep, 10)


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    k=st.integers(1, 8),
    metric=st.sampled_from(["l2", "ip", "cosine"]),
)
def test_top1_is_brute_force_argmin(seed, n, k, metric) -> None:
    enc = make_encoder(seed % 7, m=2, k=8, d=4)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 8, size=(n, 2))
    index = RvqIndex(enc, metric=metric, norm="lut")
    index.add_codes(codes)
    q = rng.standard_normal((3, 4))
    d, i = index.search(q, k)
    decoded = enc.codebook_array.astype(np.float64)[np.arange(2), codes].sum(1)
    ref = brute(metric, q, decoded)
    kk = min(k, n)
    assert (i[:, kk:] == -1).all() and (i[:, :kk] >= 0).all()
    tol = 1e-5 * (1 + np.abs(ref).max())
    got = as_score(metric, d[:, :kk])
    np.testing.assert_allclose(got, np.take_along_axis(ref, i[:, :kk], 1), atol=tol)
    np.testing.assert_allclose(got, np.sort(ref, axis=1)[:, :kk], atol=2 * tol)


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["chi2", "narrow", "exponential"])
def test_cqint8_levels_not_worse_than_faiss_1d_kmeans(dist) -> None:
    """Our optimal 1-D k-means against FAISS's (exact on a sample of 65,536, in float32):
    20,000 values, so both solve the whole problem exactly (ours in float64)."""
    faiss = pytest.importorskip("faiss")
    from viva_glyph.index._kmeans1d import kmeans_1d

    rng = np.random.default_rng(0)
    x = {
        "chi2": rng.standard_normal(20_000) ** 2 * 3 + 10,
        "narrow": rng.standard_normal(20_000) * 0.1 + 5,
        "exponential": rng.exponential(size=20_000),
    }[dist]
    ours = kmeans_1d(x, 256)
    assert np.unique(ours).shape[0] == 256
    clus = faiss.Clustering1D(256)
    clus.train_exact(x.astype(np.float32).reshape(-1, 1))
    theirs = faiss.vector_to_array(clus.centroids).astype(np.float64)

    def mse(levels: np.ndarray) -> float:
        return float((np.abs(x[:, None] - levels[None, :]).min(1) ** 2).mean())

    assert mse(ours) <= mse(theirs) * (1 + 1e-6)


def _peak_bytes(fn) -> tuple[object, int]:
    """``fn()`` and the peak of memory traced while it ran (numpy's arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rerank_deeper_than_the_index_is_exact_and_bounded() -> None:
    # 600 vectors, 1,000 queries, rerank=100,000 took 42 s and 5.5 GB for a 120 kB result.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, D)).astype(np.float32)
    Q = rng.standard_normal((1000, D)).astype(np.float32)
    index = RvqIndex(make_encoder())
    index.add(X)
    (d, i), peak = _peak_bytes(lambda: index.search(Q, 10, rerank=100_000, vectors=X))
    assert peak < 64 << 20, peak >> 20
    check_topk("l2", d, i, brute("l2", Q, X), np.arange(600), 10)  # every vector re-scored
    d, i = index.search(Q[:3], 700, rerank=100_000, vectors=X)  # k past the index: -1 slots
    assert d.shape == (3, 700) and (i[:, 600:] == -1).all() and np.isinf(d[:, 600:]).all()
    assert sorted(i[0, :600].tolist()) == list(range(600))


def test_deep_rerank_memory_is_bounded_by_blocks() -> None:
    # Not capped by the index size: the queries are scanned and re-scored in blocks of
    # bounded bytes (the (queries, depth) heaps and the (rows, depth, D) candidates).
    rng = np.random.default_rng(4)
    n, d = 20_000, 512
    enc = make_encoder(m=2, k=16, d=d)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Q = rng.standard_normal((20, d)).astype(np.float32)
    index = RvqIndex(enc)
    index.add(X)
    (dist, ids), peak = _peak_bytes(lambda: index.search(Q, 5, rerank=n, vectors=X))
    assert peak < 96 << 20, peak >> 20  # the candidates alone were 80 MB a query
    for r in (0, 9, 19):  # brute force, elementwise float64, for a few of the queries
        diff = X.astype(np.float64) - Q[r].astype(np.float64)
        scores = np.einsum("nd,nd->n", diff, diff)[None, :]
        check_topk("l2", dist[r : r + 1], ids[r : r + 1], scores, np.arange(n), 5)
