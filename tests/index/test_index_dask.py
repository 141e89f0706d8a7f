"""Sharded search on Dask: equal to one index over the same vectors; a killed worker is retried."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from viva_glyph.core.codebook import Codebook  # noqa: E402
from viva_glyph.core.encoder import RvqEncoder  # noqa: E402
from viva_glyph.index import RvqIndex, merge_results, search_shards  # noqa: E402

D = 16


def make_shards(
    folder, n: int, shards: int, metric: str = "l2", nlist: int | None = None, norm: str = "float"
):
    """One index over n vectors and the same vectors split in consecutive shard files."""
    rng = np.random.default_rng(0)
    enc = RvqEncoder([Codebook(rng.standard_normal((256, D)) * 0.6**s) for s in range(6)])
    X = rng.standard_normal((n, D)).astype(np.float32)
    cent = rng.standard_normal((nlist, D)) if nlist else None
    whole = RvqIndex(enc, metric=metric, centroids=cent)
    whole.add(X)
    paths = []
    for s, rows in enumerate(np.array_split(np.arange(n), shards)):
        part = RvqIndex(enc, metric=metric, centroids=cent, norm=norm)
        part.add(X[rows], ids=rows)
        paths.append(folder / f"shard{s}.vgindex")
        part.save(paths[-1])
    np.save(folder / "x.npy", X)
    return whole, paths, X


def assert_same(a, b, metric: str) -> None:
    """Same neighbours; an id may differ only where two scores tie to float32 rounding."""
    (da_, ia), (db, ib) = a, b
    tol = 1e-5 * (1 + np.abs(da_).max())
    np.testing.assert_allclose(da_, db, rtol=0, atol=tol)
    diff = ia != ib
    assert diff.mean() < 0.01, diff.mean()
    for r, c in zip(*np.nonzero(diff), strict=True):  # a swap of near-equal scores only
        row = da_[r]
        assert np.sum(np.abs(row - row[c]) <= tol) >= 2


@pytest.mark.parametrize(("metric", "nlist"), [("l2", None), ("cosine", None), ("ip", 8)])
def test_shards_equal_one_index_local_scheduler(tmp_path, metric, nlist) -> None:
    whole, paths, X = make_shards(tmp_path, 3000, 4, metric, nlist)
    Q = np.random.default_rng(1).standard_normal((50, D))
    extra = {"nprobe": 3} if nlist else {}
    assert_same(search_shards(paths, Q, 10, **extra), whole.search(Q, 10, **extra), metric)
    ranked = search_shards(paths, Q, 5, rerank=40, vectors=tmp_path / "x.npy", **extra)
    assert_same(ranked, whole.search(Q, 5, rerank=40, vectors=X, **extra), metric)


@pytest.mark.parametrize(
    ("metric", "nlist", "norm"), [("l2", None, "qint8"), ("cosine", 4, "cqint8")]
)
def test_one_byte_norm_shards_equal_one_float_norm_index(tmp_path, metric, nlist, norm) -> None:
    # each shard has its own grids of cross terms; every shard returns its exact-norm top k
    whole, paths, _ = make_shards(tmp_path, 3000, 3, metric, nlist, norm)
    Q = np.random.default_rng(3).standard_normal((40, D))
    extra = {"nprobe": 4} if nlist else {}
    assert_same(search_shards(paths, Q, 10, **extra), whole.search(Q, 10, **extra), metric)


def test_merge_keeps_shard_order_for_ties_and_puts_empty_last() -> None:
    a = ("l2", 2, np.array([[1.0, 2.0, np.inf]], np.float32), np.array([[5, 6, -1]]))
    b = ("l2", 2, np.array([[1.0, 1.5, 3.0]], np.float32), np.array([[9, 8, 7]]))
    d, i = merge_results([a, b], 5)
    np.testing.assert_array_equal(i, [[5, 9, 8, 6, 7]])
    np.testing.assert_array_equal(d, [[1.0, 1.0, 1.5, 2.0, 3.0]])
    c = ("ip", 2, np.array([[1.0]], np.float32), np.array([[1]]))
    with pytest.raises(ValueError, match="shards disagree"):
        merge_results([a, c], 1)
    with pytest.raises(ValueError, match="at least one shard"):
        search_shards([], np.zeros((1, 2)), 1)


@pytest.mark.slow
def test_killed_worker_is_retried(client, tmp_path) -> None:
    whole, paths, _ = make_shards(tmp_path, 40_000, 4)
    Q = np.random.default_rng(2).standard_normal((4000, D))  # about a second per shard task
    expected = whole.search(Q, 10)
    pids = client.run(os.getpid)
    killed: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for addr, keys in client.processing().items():
                if any("_search_one" in str(key) for key in keys) and addr in pids:
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)
                    break
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    got = search_shards(paths, Q, 10)
    thread.join()
    assert killed, "no shard task was seen running: nothing was killed"
    assert_same(got, expected, "l2")
    assert (got[1] >= 0).all()


def test_overlapping_shards_are_refused(tmp_path) -> None:
    # The same shard twice returned each neighbour twice.
    whole, paths, X = make_shards(tmp_path, 600, 3)
    Q = np.random.default_rng(1).standard_normal((4, D))
    with pytest.raises(ValueError, match=r"shard0\.vgindex.*shard0\.vgindex.*both hold id 0"):
        search_shards([paths[0], paths[1], paths[0]], Q, 5)
    enc = whole.encoder
    extra = RvqIndex(enc)  # one id (450) of shard 2 among new ones, far from every query
    extra.add(X[:3] + 100, ids=[1000, 450, 1001])
    extra.save(tmp_path / "extra.vgindex")
    with pytest.raises(ValueError, match=r"both hold id 450"):
        search_shards([*paths, tmp_path / "extra.vgindex"], Q, 5)
    for parity in (0, 1):  # even and odd ids: overlapping ranges, disjoint ids
        part = RvqIndex(enc)
        part.add(X[parity::2], ids=np.arange(parity, len(X), 2))
        part.save(tmp_path / f"parity{parity}.vgindex")
    halves = [tmp_path / "parity0.vgindex", tmp_path / "parity1.vgindex"]
    assert_same(search_shards(halves, Q, 5), whole.search(Q, 5), "l2")


def test_sharded_search_deeper_than_the_shards(tmp_path) -> None:
    # Each shard returned (queries, depth) lists padded to the depth asked: 240 MB a shard
    # for 200 queries at rerank=100,000 over 150 vectors.
    import tracemalloc

    whole, paths, X = make_shards(tmp_path, 600, 4)
    Q = np.random.default_rng(1).standard_normal((200, D))
    tracemalloc.start()
    try:
        got = search_shards(paths, Q, 5, rerank=100_000, vectors=tmp_path / "x.npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak >> 20
    assert_same(got, whole.search(Q, 5, rerank=100_000, vectors=X), "l2")
    d, i = search_shards(paths, Q[:3], 700)  # more than the 600 vectors: empty slots last
    assert i.shape == (3, 700) and (i[:, 600:] == -1).all() and np.isinf(d[:, 600:]).all()
    assert_same((d[:, :600], i[:, :600]), whole.search(Q[:3], 600), "l2")


def test_one_shard_given_as_a_path_is_one_shard(tmp_path) -> None:
    # search_shards("a.vgindex", ...) split the string into characters: "No such file: 'd'".
    whole, paths, _ = make_shards(tmp_path, 300, 1)
    Q = np.random.default_rng(1).standard_normal((5, D))
    for one in (paths[0], str(paths[0])):
        assert_same(search_shards(one, Q, 4), whole.search(Q, 4), "l2")
    with pytest.raises(TypeError, match="paths must be"):
        search_shards(b"a.vgindex", Q, 4)
