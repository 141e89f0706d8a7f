"""Thread control: the row-piece pool, the BLAS limit, and results independent of threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import engine

import viva_glyph as vg
from viva_glyph.core.search import PIECE_ROWS
from viva_glyph.threads import default_threads, parallel_map, single_blas_thread
from viva_glyph.train import kmeans


def test_parallel_map_keeps_order_and_raises() -> None:
    items = list(range(50))
    assert parallel_map(lambda i: i * i, items, 4) == [i * i for i in items]
    assert parallel_map(lambda i: -i, items, 1) == [-i for i in items]
    assert parallel_map(lambda i: i, [], 3) == []

    def boom(i: int) -> int:
        if i == 7:
            raise ZeroDivisionError("piece 7")
        return i

    with pytest.raises(ZeroDivisionError, match="piece 7"):
        parallel_map(boom, items, 3)


def test_default_threads_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIVA_GLYPH_NUM_THREADS", raising=False)
    assert default_threads() >= 1
    monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", "3")
    assert default_threads() == 3
    for bad in ("0", "two", "-1", ""):
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="VIVA_GLYPH_NUM_THREADS must be a positive integer"):
            default_threads()


def _blas_threads() -> list[int]:
    """Threads of each loaded BLAS that keeps one count per process. An OpenMP-threaded
    OpenBLAS (FAISS bundles one) keeps a count per OS thread, so a limit set in one
    thread is not seen from another; viva-glyph's own products run on numpy's BLAS.
    Which libraries are loaded depends on what ran before in the process."""
    from threadpoolctl import threadpool_info

    return [
        p["num_threads"]
        for p in threadpool_info()
        if p["user_api"] == "blas" and p.get("threading_layer") != "openmp"
    ]


def test_single_blas_thread_nests_and_restores_across_threads() -> None:
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS library visible to threadpoolctl")
    entered, release = threading.Barrier(3), threading.Event()
    seen: list[list[int]] = []

    def hold() -> None:
        with single_blas_thread():
            entered.wait()
            release.wait()

    workers = [threading.Thread(target=hold) for _ in range(2)]
    for w in workers:
        w.start()
    entered.wait()
    with single_blas_thread():  # a third, nested block
        seen.append(_blas_threads())
    seen.append(_blas_threads())  # the two workers still hold the limit
    release.set()
    for w in workers:
        w.join()
    assert seen == [[1] * len(before), [1] * len(before)]
    assert _blas_threads() == before
    # the user's own limits still work afterwards, from any thread
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_beam_search_codes_do_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(21)
    books = [rng.standard_normal((32, 6)) * 0.6**s for s in range(4)]
    enc = vg.from_codebooks([vg.Codebook(b) for b in books])
    x = rng.standard_normal((3 * PIECE_ROWS + 17, 6)).astype(np.float32)  # several pieces
    got = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
        got[threads] = engine(enc, x, 4, 6, lut=True, backend="numba")
    np.testing.assert_array_equal(got["1"], got["3"])
    np.testing.assert_array_equal(got["1"], engine(enc, x, 4, 6, lut=True, backend="numpy"))
    assert engine(enc, x[:0], 4, 6, lut=True, backend="numba").shape == (0, 4)


def test_lloyd_and_fit_do_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmeans, "ASSIGN_BYTES", 1 << 12)  # many chunks per Lloyd iteration
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((3000, 5)) @ rng.standard_normal((5, 5))).astype(np.float32)
    runs = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("VIVA_GLYPH_NUM_THREADS", threads)
        cent, it, inertia = kmeans.lloyd(x, 12, iterations=8, rng=np.random.default_rng(1))
        enc = vg.fit(x, num_stages=3, codebook_size=16, beam_size=3, iterations=5, seed=4)
        runs.append((cent.tobytes(), it, inertia, enc.codebook_array.tobytes()))
    assert runs[0] == runs[1] == runs[2]


def test_parallel_map_keeps_its_workers_nests_inline_and_survives_fork() -> None:
    import multiprocessing
    import time

    def who(_: int) -> int:
        time.sleep(0.01)  # both workers take items
        return threading.get_ident()

    first = set(parallel_map(who, range(8), 2))
    second = set(parallel_map(who, range(8), 2))
    assert len(first) == 2 and first == second  # the same two threads, not new ones
    assert threading.get_ident() not in first

    def nested(i: int) -> list[int]:  # inside a worker: inline, on that worker
        return parallel_map(lambda j: threading.get_ident(), range(4), 2)

    for idents in parallel_map(nested, range(4), 2):
        assert len(set(idents)) == 1 and idents[0] in first

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # a forked child has no worker threads: it starts its own
        assert pool.apply(_child_map) == [0, 2, 4, 6]


def _child_map() -> list[int]:
    return parallel_map(lambda i: 2 * i, list(range(4)), 2)
