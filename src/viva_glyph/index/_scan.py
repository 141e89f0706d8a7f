"""The scan under every index search: lookup tables, table sums, top-k.

For additive codes the score of a stored vector ``x' = sum_m C_m[c_m]`` against
a query is a sum of table entries plus a per-vector term::

    L2:      ||q - x'||^2 - ||q||^2 = ||x'||^2 - 2 sum_m <q, C_m[c_m]>
    ip:      -<q, x'>                =        -  sum_m <q, C_m[c_m]>
    cosine:  -<q, x'> / ||x'||       (q normalised beforehand)

The tables ``<q, C_m[k]>`` of a block of queries come from one GEMM
(:func:`lookup_tables`; one block per thread); :func:`scan` sums them over the codes with the numba
kernel of :mod:`viva_glyph.index._kernels_numba` (or blocked numpy when numba is
absent) and keeps, per query, the k smallest scores in a heap (partial
selection: a full sort never happens). Work is split over threads by query
blocks, or by code blocks when there are fewer queries than threads.

An IVF index adds a constant per (query, probed list), ``-2 <q, centroid>``
(L2) or ``-<q, centroid>``; the flat index is the case of one list.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import numba_module
from viva_glyph.threads import default_threads, parallel_map, single_blas_thread

__all__ = ["MODE_ADD", "MODE_PLAIN", "MODE_SCALE", "ScanInput", "lookup_tables", "scan"]

#: How the per-vector term enters the score: ``s + add[i]``, ``s * scale[i]``, ``s``.
MODE_ADD, MODE_SCALE, MODE_PLAIN = 0, 1, 2
#: Codes scanned per kernel call in a flat index (a block stays in L2 cache).
CODE_BLOCK = 1 << 15
#: Table lookups (queries x codes scanned x stages) below which a search runs on
#: the calling thread: starting a pool costs more than a few milliseconds of scan.
PARALLEL_WORK = 1 << 22


def scan_kernels() -> ModuleType | None:
    """The numba scan kernels, or None (numpy) when numba is missing or ``VIVA_GLYPH_NUMBA=0``."""
    return numba_module("viva_glyph.index._kernels_numba")


def lookup_tables(
    queries: NDArray[np.float32], stack: NDArray[np.float32], factor: float
) -> NDArray[np.float32]:
    """``factor * <q, C_m[k]>`` for every query, stage and code: one GEMM.

    Parameters
    ----------
    queries : ndarray, shape (nq, D), float32
    stack : ndarray, shape (M, K, D), float32
    factor : float
        -2 for L2, -1 for ip and cosine.

    Returns
    -------
    ndarray, shape (nq, M, K), float32
    """
    m, k, d = stack.shape
    lut: NDArray[np.float32] = queries @ stack.reshape(m * k, d).T
    lut *= np.float32(factor)
    return lut.reshape(queries.shape[0], m, k)


class ScanInput(NamedTuple):
    """Everything the scan reads; arrays are C-contiguous.

    ``queries`` (nq, D) float32 and ``stack`` (M, K, D) float32 give the
    tables ``factor * <q, C_m[k]>`` (computed per query block, in the worker
    thread, one GEMM each); ``offsets`` (L + 1,) int64 bound the L lists of ``codes`` (N, M);
    ``probes`` (nq, P) int64 lists to scan per query (-1: none) with
    ``consts`` (nq, P) float32 added to their scores; ``add`` / ``scale`` (N,)
    float32 per-vector terms used as ``mode`` says.
    """

    queries: NDArray[np.float32]
    stack: NDArray[np.float32]
    factor: float
    codes: NDArray[Any]
    add: NDArray[np.float32]
    scale: NDArray[np.float32]
    mode: int
    offsets: NDArray[np.int64]
    probes: NDArray[np.int64]
    consts: NDArray[np.float32]


def _empty_heaps(nq: int, k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    return np.full((nq, k), np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _kernel_pass(
    kern: ModuleType, s: ScanInput, rows: slice, lo: int, hi: int, k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Queries ``rows`` against codes [lo, hi) (flat) or their probed lists (IVF)."""
    lut = lookup_tables(s.queries[rows], s.stack, s.factor)
    heap_d, heap_i = _empty_heaps(lut.shape[0], k)
    if s.offsets.shape[0] == 2:  # flat: blocks of codes, each kept in cache by all queries
        probes = np.zeros((lut.shape[0], 1), dtype=np.int64)
        consts = np.ascontiguousarray(s.consts[rows, :1])
        for b0 in range(lo, hi, CODE_BLOCK):
            b1 = min(b0 + CODE_BLOCK, hi)
            off = np.array([0, b1 - b0], dtype=np.int64)
            kern.scan(
                lut, s.codes[b0:b1], s.add[b0:b1], s.scale[b0:b1], s.mode,
                off, probes, consts, b0, heap_d, heap_i,
            )  # fmt: skip
    else:
        kern.scan(
            lut, s.codes, s.add, s.scale, s.mode, s.offsets,
            np.ascontiguousarray(s.probes[rows]), np.ascontiguousarray(s.consts[rows]),
            0, heap_d, heap_i,
        )  # fmt: skip
    return heap_d, heap_i


def _numpy_pass(
    s: ScanInput, rows: slice, lo: int, hi: int, k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The same as :func:`_kernel_pass` in blocked numpy."""
    lut = lookup_tables(s.queries[rows], s.stack, s.factor)
    nq, m, _ = lut.shape
    best_d, best_i = _empty_heaps(nq, k)
    flat = s.offsets.shape[0] == 2
    if flat:
        for b0 in range(lo, hi, 4096):
            b1 = min(b0 + 4096, hi)
            block = s.codes[b0:b1]
            sc = np.repeat(s.consts[rows, :1], b1 - b0, axis=1)
            for j in range(m):
                sc += lut[:, j, block[:, j]]
            pos = np.broadcast_to(np.arange(b0, b1, dtype=np.int64), sc.shape)
            sc = _apply(sc, s, slice(b0, b1))
            best_d, best_i = _keep(best_d, best_i, sc, pos, k)
        return best_d, best_i
    probes, consts = s.probes[rows], s.consts[rows]
    for q in range(nq):
        lists = [(int(lst), c) for lst, c in zip(probes[q], consts[q], strict=True) if lst >= 0]
        if not lists:
            continue
        pos = np.concatenate([np.arange(s.offsets[i], s.offsets[i + 1]) for i, _ in lists])
        const = np.concatenate(
            [np.full(s.offsets[i + 1] - s.offsets[i], c, np.float32) for i, c in lists]
        )
        sc = const
        for j in range(m):
            sc = sc + lut[q, j, s.codes[pos, j]]
        sc = _apply(sc[None, :], s, pos)
        d, i = _keep(best_d[q : q + 1], best_i[q : q + 1], sc, pos[None, :].astype(np.int64), k)
        best_d[q], best_i[q] = d[0], i[0]
    return best_d, best_i


def _apply(sc: NDArray[np.float32], s: ScanInput, at: Any) -> NDArray[np.float32]:
    out: NDArray[np.float32] = sc
    if s.mode == MODE_ADD:
        out = sc + s.add[at]
    elif s.mode == MODE_SCALE:
        out = sc * s.scale[at]
    return out


def _keep(
    d0: NDArray[np.float32], i0: NDArray[np.int64], d1: NDArray[Any], i1: NDArray[Any], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The k smallest (score, position) of each row of two candidate sets (partial selection)."""
    d = np.concatenate([d0, d1.astype(np.float32, copy=False)], axis=1)
    i = np.concatenate([i0, i1], axis=1)
    if d.shape[1] > k:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        d, i = np.take_along_axis(d, part, axis=1), np.take_along_axis(i, part, axis=1)
    return d, i


def finish(
    d: NDArray[np.float32], i: NDArray[np.int64]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Sort each row by (score, position); empty slots (-1) go last."""
    key_i = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = _row_lexsort(d, key_i)
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _row_lexsort(d: NDArray[np.float32], i: NDArray[np.int64]) -> NDArray[np.intp]:
    order = np.argsort(i, axis=1, kind="stable")
    by_d = np.argsort(np.take_along_axis(d, order, axis=1), axis=1, kind="stable")
    return np.take_along_axis(order, by_d, axis=1)


def merge(
    parts: list[tuple[NDArray[np.float32], NDArray[np.int64]]], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Merge per-block top-k lists (nq, k_i) of the same queries into one sorted top-k."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    d, i = finish(d, i)
    return d[:, :k], i[:, :k]


def _lookups(s: ScanInput) -> int:
    """Table lookups of a scan: queries x codes scanned x stages."""
    m = s.codes.shape[1] if s.codes.ndim == 2 else 1
    if s.offsets.shape[0] == 2:
        return int(s.queries.shape[0]) * int(s.codes.shape[0]) * m
    sizes = np.diff(s.offsets)
    probed = s.probes[s.probes >= 0]
    return int(sizes[probed].sum()) * m


def scan(
    s: ScanInput, k: int, *, threads: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The k best (smallest) scores of every query and their positions.

    Parameters
    ----------
    s : ScanInput
    k : int
    threads : int, optional
        Default :func:`viva_glyph.threads.default_threads`.

    Returns
    -------
    scores : ndarray, shape (nq, k), float32, ascending (inf where fewer than k)
    positions : ndarray, shape (nq, k), int64, rows of ``codes`` (-1 where none)
    """
    nq = s.queries.shape[0]
    n = s.codes.shape[0]
    threads = default_threads() if threads is None else threads
    if threads > 1 and _lookups(s) < PARALLEL_WORK:
        threads = 1
    kern = scan_kernels()

    def run(task: tuple[slice, int, int]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        rows, lo, hi = task
        if kern is not None:
            return _kernel_pass(kern, s, rows, lo, hi, k)
        return _numpy_pass(s, rows, lo, hi, k)

    flat = s.offsets.shape[0] == 2
    # BLAS on one thread: the GEMMs are per block, and many small multi-threaded
    # BLAS calls are far slower than one-threaded ones on a busy machine.
    with single_blas_thread():
        if nq >= threads or not flat or n < 2 * CODE_BLOCK:
            step = -(-nq // max(1, min(threads, nq)))
            tasks = [(slice(a, min(a + step, nq)), 0, n) for a in range(0, nq, step)]
            parts = parallel_map(run, tasks, threads)
            d = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, k), np.float32)
            i = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, k), np.int64)
            return finish(d, i)
        step = -(-n // threads)
        tasks = [(slice(0, nq), a, min(a + step, n)) for a in range(0, n, step)]
        return merge(parallel_map(run, tasks, threads), k)
