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

With one-byte norms (``norm="qint8"``/``"cqint8"``, :class:`BoundInput`) the L2 tables
also hold ``||C_m[k]||^2`` (and an IVF list's constant ``||centroid||^2``), and the
per-vector term is the cross-term table entry of (first code, byte). Each scanned
score then lies within a bound of the exact one (the byte's stated error plus a
float32 rounding margin); a row is re-scored exactly, its norm rebuilt from the codes
in float64, only when its lower bound can beat the k-th best exact score so far, and
the heaps keep exact float64 scores: the k best exact scores whatever the order or
the split of the scan (ties to the lower position).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import numba_module
from viva_glyph.threads import default_threads, parallel_map, single_blas_thread

__all__ = [
    "MODE_ADD",
    "MODE_BOUND",
    "MODE_PLAIN",
    "MODE_SCALE",
    "BoundInput",
    "ScanInput",
    "lookup_tables",
    "scan",
]

#: How the per-vector term enters the score: ``s + add[i]``, ``s * scale[i]``, ``s``.
MODE_ADD, MODE_SCALE, MODE_PLAIN = 0, 1, 2
#: One-byte cross terms with error bounds and exact re-scoring (:class:`BoundInput`).
MODE_BOUND = 3
#: Rows re-scored at once by the numpy path (bounds its float64 temporaries).
EXACT_ROWS = 1 << 14
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


class BoundInput(NamedTuple):
    """What the one-byte-norm scan reads besides :class:`ScanInput`.

    ``qbytes`` (N,) uint8; ``val``/``err`` (K, 256) float32 the cross term and its
    error bound of each (first code, byte), ``gmax`` (K,) the largest bound of each
    first code; ``lin`` (qint8 with L2): the scan uses instead ``fold`` (K,)
    ``lo + step / 2`` (added to the first stage's table), ``step`` and ``half`` (K,) the
    bound; ``sq32``/``sq64`` (M, K) ``||C_m[k]||^2``; ``stack`` (M, K, D) the codebooks
    (float32 when they are float32: exact, and half the bytes); ``cent`` (L, D) float64
    centroids (one zero row for a flat index) and ``cc32``/``cc64`` (L,) their squared
    norms; ``cos`` cosine (else L2); ``cmax`` (M,) the largest codeword norm of each
    stage, ``sqmax`` the sum of the largest squared ones, ``fmax`` the largest ``|fold|``
    (bounds of the tables' magnitudes); ``vmax`` bounds the magnitude of the cross-term
    values and bounds, ``nscale`` that of the scanned norm's terms (cosine) and ``r2``
    the squared norms (float64
    rounding), for the rounding margins;
    ``counts`` (nq,) int64 receives the rows re-scored per query.
    """

    qbytes: NDArray[np.uint8]
    lin: bool
    fold: NDArray[np.float32]
    step: NDArray[np.float32]
    half: NDArray[np.float32]
    val: NDArray[np.float32]
    err: NDArray[np.float32]
    gmax: NDArray[np.float32]
    sq32: NDArray[np.float32]
    sq64: NDArray[np.float64]
    stack: NDArray[Any]
    cent: NDArray[np.float64]
    cc32: NDArray[np.float32]
    cc64: NDArray[np.float64]
    cos: bool
    cmax: NDArray[np.float64]
    sqmax: float
    fmax: float
    vmax: float
    nscale: float
    r2: float
    counts: NDArray[np.int64]


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
    bound: BoundInput | None = None


def _empty_heaps(
    nq: int, k: int, dtype: Any = np.float32
) -> tuple[NDArray[Any], NDArray[np.int64]]:
    return np.full((nq, k), np.inf, dtype=dtype), np.full((nq, k), -1, dtype=np.int64)


#: Relative float32 rounding per added term of the scan's sums, with a factor 2 to spare.
_ULP = 2.0**-23


def _tables(
    s: ScanInput, rows: slice
) -> tuple[
    NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.float64], float
]:
    """The lookup tables of queries ``rows`` (scanned and, one-byte norms, exact), their
    constants and (one-byte norms) each query's rounding margin of the scanned score
    and the margin of the scanned norm (cosine)."""
    lut = lookup_tables(s.queries[rows], s.stack, s.factor)
    consts = np.ascontiguousarray(s.consts[rows])
    b = s.bound
    if b is None:
        return lut, lut, consts, np.empty(0), 0.0
    m = lut.shape[1]
    if not b.cos:  # fold ||C_m[k]||^2 into the tables (the IVF lists' ||c||^2 is in consts)
        lut += b.sq32[None]
    exact = lut
    if b.lin:  # qint8: lo + step / 2 of the first code in the first table
        lut = lut.copy()
        lut[:, 0, :] += b.fold[None, :]
    # A float32 sum of terms t_1..t_n is within (n - 1) u max_j |partial sum_j| of the
    # exact sum of the same float32 terms, u = 2^-24 (_ULP is 2u: a factor 2 to spare);
    # every partial sum is at most the sum of each table's largest magnitude, the
    # constant's and the cross term's. The exact score (float64, the same float32 table
    # terms, the norm from the codes) is within the byte's bound of that exact sum, up to
    # float64 rounding of the squared norms (2^-40 r2 is far above it).
    # Each table's largest magnitude is at most |factor| ||q|| max ||C_m[k]|| (+ the folded
    # max ||C_m[k]||^2 and lo + step / 2), with the GEMM's float32 rounding (O(M) a query,
    # not a pass over the tables; each row is checked again with its own terms)
    qn = np.sqrt(np.einsum("qd,qd->q", s.queries[rows], s.queries[rows], dtype=np.float64))
    d = s.queries.shape[1]
    per = abs(s.factor) * b.cmax.sum() * qn * (1.0 + (d + 4) * _ULP)
    big = per + (0.0 if b.cos else b.sqmax + b.fmax)
    big += np.abs(consts).max(axis=1, initial=0.0) + b.vmax
    margin = (m + 8) * _ULP * big + 2.0**-40 * b.r2
    nmargin = (m + 8) * _ULP * b.nscale + 2.0**-40 * b.r2
    return lut, exact, consts, margin, nmargin


def _kernel_pass(
    kern: ModuleType, s: ScanInput, rows: slice, lo: int, hi: int, k: int
) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[np.int64]]:
    """Queries ``rows`` against codes [lo, hi) (flat) or their probed lists (IVF); with the
    rows re-scored per query (one-byte norms)."""
    lut, lutx, consts, margin, nmargin = _tables(s, rows)
    nq = lut.shape[0]
    b = s.bound
    heap_d, heap_i = _empty_heaps(nq, k, np.float32 if b is None else np.float64)
    counts = np.zeros(nq, dtype=np.int64)
    ubs = np.full((nq, k), np.inf, dtype=np.float32)

    def call(codes: Any, sl: slice, off: Any, probes: Any, cst: Any, base: int) -> None:
        if b is None:
            kern.scan(
                lut, codes, s.add[sl], s.scale[sl], s.mode, off, probes, cst, base,
                heap_d, heap_i,
            )  # fmt: skip
        else:
            kern.scan_bound(
                lut, lutx, codes, b.qbytes[sl], b.lin, b.step, b.half, b.val, b.err, b.gmax,
                b.sq32, b.cc32,
                b.stack, b.sq64, b.cent, b.cc64, b.cos, margin, nmargin, off, probes, cst,
                base, heap_d, heap_i, counts, ubs, b.r2,
            )  # fmt: skip

    if s.offsets.shape[0] == 2:  # flat: blocks of codes, each kept in cache by all queries
        probes = np.zeros((nq, 1), dtype=np.int64)
        cst = np.ascontiguousarray(consts[:, :1])
        for b0 in range(lo, hi, CODE_BLOCK):
            b1 = min(b0 + CODE_BLOCK, hi)
            off = np.array([0, b1 - b0], dtype=np.int64)
            call(s.codes[b0:b1], slice(b0, b1), off, probes, cst, b0)
    else:
        every = slice(0, s.codes.shape[0])
        call(s.codes, every, s.offsets, np.ascontiguousarray(s.probes[rows]), consts, 0)
    return heap_d, heap_i, counts


def _numpy_pass(
    s: ScanInput, rows: slice, lo: int, hi: int, k: int
) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[np.int64]]:
    """The same as :func:`_kernel_pass` in blocked numpy."""
    if s.bound is not None:
        return _numpy_bound_pass(s, rows, lo, hi, k)
    lut = lookup_tables(s.queries[rows], s.stack, s.factor)
    nq, m, _ = lut.shape
    best_d, best_i = _empty_heaps(nq, k)
    counts = np.zeros(nq, dtype=np.int64)
    for qs, pos, _, const in _probed_rows(s, rows, lo, hi):
        block = s.codes[pos]
        sc = np.repeat(const, pos.size, axis=1) if const.shape[1] == 1 else const.copy()
        for j in range(m):
            sc += lut[qs, j, block[:, j]]
        sc = _apply(sc, s, pos)
        best_d[qs], best_i[qs] = _keep(
            best_d[qs], best_i[qs], sc, np.broadcast_to(pos, sc.shape), k
        )
    return best_d, best_i, counts


def _probed_rows(s: ScanInput, rows: slice, lo: int, hi: int) -> Any:
    """(query, positions, lists, constants) of every block the numpy scan reads: blocks
    of 4,096 codes for all queries (flat), or each query's probed lists (IVF)."""
    nq = s.queries[rows].shape[0]
    consts = s.consts[rows]
    if s.offsets.shape[0] == 2:
        for b0 in range(lo, hi, 4096):
            b1 = min(b0 + 4096, hi)
            pos = np.arange(b0, b1, dtype=np.int64)
            yield slice(0, nq), pos, np.zeros(b1 - b0, dtype=np.int64), consts[:, :1]
        return
    probes = s.probes[rows]
    for q in range(nq):
        lists = [(int(lst), c) for lst, c in zip(probes[q], consts[q], strict=True) if lst >= 0]
        if not lists:
            continue
        pos = np.concatenate([np.arange(s.offsets[i], s.offsets[i + 1]) for i, _ in lists])
        lst = np.concatenate(
            [np.full(s.offsets[i + 1] - s.offsets[i], i, np.int64) for i, _ in lists]
        )
        const = np.concatenate(
            [np.full(s.offsets[i + 1] - s.offsets[i], c, np.float32) for i, c in lists]
        )
        yield slice(q, q + 1), pos.astype(np.int64), lst, const[None, :]


def _numpy_bound_pass(
    s: ScanInput, rows: slice, lo: int, hi: int, k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """:func:`_kernel_pass` of one-byte norms in blocked numpy: the same bounds, the same
    exact scores (the same float64 operations in the same order), the same top k."""
    b = s.bound
    assert b is not None
    lut, lutx, _, margin, nmargin = _tables(s, rows)
    nq, m, _ = lut.shape
    best_d, best_i = _empty_heaps(nq, k, np.float64)
    counts = np.zeros(nq, dtype=np.int64)
    # (L2) the smallest k-th upper bound of a block so far: no exact score above it is kept
    ubk = np.full(nq, np.inf, dtype=np.float64)
    for qs, pos, lst, const in _probed_rows(s, rows, lo, hi):
        codes = s.codes[pos]
        qn = np.arange(nq)[qs]
        sc = np.broadcast_to(const, (qn.shape[0], pos.shape[0])).astype(np.float32)
        for j in range(m):
            sc += lut[qs, j][:, codes[:, j]]
        g, byte = codes[:, 0].astype(np.intp), b.qbytes[pos].astype(np.intp)
        if b.cos:
            sn = b.cc32[lst] + b.val[g, byte]
            for j in range(m):
                sn += b.sq32[j, codes[:, j]]
            e = b.err[g, byte].astype(np.float64) + nmargin
            lb = _cos_lower(sc.astype(np.float64) - margin[qs, None], sn - e, sn + e)
            lb -= 1e-6 * np.abs(lb)
        else:
            if b.lin:
                sc += b.step[g] * byte.astype(np.float32)
                e = b.half[g] + margin[qs, None].astype(np.float32)
            else:
                sc += b.val[g, byte]
                e = b.err[g, byte] + margin[qs, None].astype(np.float32)
            lb = sc - e
            if pos.shape[0] >= k:  # the k-th smallest upper bound of the block
                kth = np.partition(sc + e, k - 1, axis=1)[:, k - 1].astype(np.float64)
                ubk[qs] = np.minimum(ubk[qs], kth)
        top = np.minimum(best_d[qs].max(axis=1), ubk[qs])
        qq, cc = np.nonzero(lb <= top[:, None])
        if not qq.size:
            continue
        np.add.at(counts, qn[qq], 1)
        ex = np.empty(qq.shape[0], dtype=np.float64)
        full = const.shape[0] == qn.shape[0] and const.shape[1] == 1
        for a in range(0, qq.shape[0], EXACT_ROWS):
            part = slice(a, a + EXACT_ROWS)
            cst = const[qq[part], 0] if full else const[0, cc[part]]
            ex[part] = _exact_scores(lutx, b, qn[qq[part]], codes[cc[part]], lst[cc[part]], cst)
        best_d, best_i = _keep_exact(best_d, best_i, qn[qq], ex, pos[cc], k)
    return best_d, best_i, counts


def _cos_lower(p: NDArray[np.float64], nlo: NDArray[Any], nhi: NDArray[Any]) -> NDArray[Any]:
    """Smallest p' / sqrt(n) over p' >= p, n in [nlo, nhi] (see the numba kernel)."""
    nlo, nhi = np.asarray(nlo, np.float64), np.asarray(nhi, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = np.where(nhi > 0, p / np.sqrt(np.where(nhi > 0, nhi, 1.0)), 0.0)
        neg = np.where(nlo > 0, p / np.sqrt(np.where(nlo > 0, nlo, 1.0)), -np.inf)
    out: NDArray[Any] = np.where(p >= 0, pos, neg)
    return out


def _exact_scores(
    lut: NDArray[np.float32],
    b: BoundInput,
    q: NDArray[Any],
    codes: NDArray[Any],
    lst: NDArray[Any],
    const: NDArray[np.float32],
) -> NDArray[np.float64]:
    """Exact scores (float64) of rows ``codes`` for queries ``q``: their table sums and
    norms rebuilt from the codes, in the order of the numba kernel's ``_exact``."""
    m = codes.shape[1]
    acc = const.astype(np.float64)
    for j in range(m):
        acc += lut[q, j, codes[:, j]].astype(np.float64)
    v = b.cent[lst].copy()
    for j in range(m):
        v += b.stack[j][codes[:, j]]
    part = np.zeros((4, codes.shape[0]), dtype=np.float64)  # columns t mod 4, as the kernel
    for t in range(v.shape[1]):
        part[t & 3] += v[:, t] * v[:, t]
    nrm = (part[0] + part[1]) + (part[2] + part[3])
    if b.cos:
        with np.errstate(divide="ignore", invalid="ignore"):
            out: NDArray[np.float64] = np.where(
                nrm > 0, acc / np.sqrt(np.where(nrm > 0, nrm, 1.0)), 0.0
            )
        return out
    sq = np.zeros(codes.shape[0], dtype=np.float64)
    for j in range(m):
        sq += b.sq64[j, codes[:, j]]
    res: NDArray[np.float64] = acc + ((nrm - b.cc64[lst]) - sq)
    return res


def _keep_exact(
    best_d: NDArray[np.float64],
    best_i: NDArray[np.int64],
    q: NDArray[Any],
    d: NDArray[np.float64],
    pos: NDArray[np.int64],
    k: int,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Merge candidates (query q, score d, position pos) into per-query top-k lists, by
    (score, position): the same k as the kernel's heaps, ties included."""
    nq = best_d.shape[0]
    rows = np.concatenate([np.repeat(np.arange(nq), k), q])
    dd = np.concatenate([best_d.ravel(), d])
    pp = np.concatenate([best_i.ravel(), pos])
    key = np.where(pp < 0, np.iinfo(np.int64).max, pp)
    order = np.lexsort((key, dd, rows))
    rows, dd, pp = rows[order], dd[order], pp[order]
    start = np.searchsorted(rows, np.arange(nq))
    rank = np.arange(rows.shape[0]) - start[rows]
    keep = rank < k
    out_d, out_i = _empty_heaps(nq, k, np.float64)
    out_d[rows[keep], rank[keep]] = dd[keep]
    out_i[rows[keep], rank[keep]] = pp[keep]
    return out_d, out_i


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
    """The k smallest (score, position) of each row of two candidate sets (partial selection;
    of equal scores at the k-th, the lowest positions, as the kernel's heaps keep)."""
    d = np.concatenate([d0, d1.astype(np.float32, copy=False)], axis=1)
    i = np.concatenate([i0, i1], axis=1)
    if d.shape[1] > k:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        dk, ik = np.take_along_axis(d, part, axis=1), np.take_along_axis(i, part, axis=1)
        kth = dk.max(axis=1, keepdims=True)
        tied = np.flatnonzero((d == kth).sum(axis=1) > (dk == kth).sum(axis=1))
        if tied.size:  # a score equal to the k-th was left out: decide those rows in full
            key = np.where(i[tied] < 0, np.iinfo(np.int64).max, i[tied])
            order = _row_lexsort(d[tied], key)[:, :k]
            dk[tied] = np.take_along_axis(d[tied], order, axis=1)
            ik[tied] = np.take_along_axis(i[tied], order, axis=1)
        d, i = dk, ik
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
) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """The k best (smallest) scores of every query and their positions.

    Parameters
    ----------
    s : ScanInput
    k : int
    threads : int, optional
        Default :func:`viva_glyph.threads.default_threads`.

    Returns
    -------
    scores : ndarray, shape (nq, k), float32 (float64 exact scores with one-byte
        norms), ascending (inf where fewer than k)
    positions : ndarray, shape (nq, k), int64, rows of ``codes`` (-1 where none)

    With one-byte norms, ``s.bound.counts`` receives the rows re-scored per query.
    """
    nq = s.queries.shape[0]
    n = s.codes.shape[0]
    threads = default_threads() if threads is None else threads
    if threads > 1 and _lookups(s) < PARALLEL_WORK:
        threads = 1
    kern = scan_kernels()

    def run(task: tuple[slice, int, int]) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[Any]]:
        rows, lo, hi = task
        if kern is not None:
            return _kernel_pass(kern, s, rows, lo, hi, k)
        return _numpy_pass(s, rows, lo, hi, k)

    def count(tasks: list[tuple[slice, int, int]], parts: list[Any]) -> None:
        if s.bound is not None:
            for (rows, _, _), part in zip(tasks, parts, strict=True):
                s.bound.counts[rows] += part[2]

    dtype = np.float32 if s.bound is None else np.float64
    flat = s.offsets.shape[0] == 2
    # BLAS on one thread: the GEMMs are per block, and many small multi-threaded
    # BLAS calls are far slower than one-threaded ones on a busy machine.
    with single_blas_thread():
        if nq >= threads or not flat or n < 2 * CODE_BLOCK:
            step = -(-nq // max(1, min(threads, nq)))
            tasks = [(slice(a, min(a + step, nq)), 0, n) for a in range(0, nq, step)]
            parts = parallel_map(run, tasks, threads)
            count(tasks, parts)
            d = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, k), dtype)
            i = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, k), np.int64)
            return finish(d, i)
        step = -(-n // threads)
        tasks = [(slice(0, nq), a, min(a + step, n)) for a in range(0, n, step)]
        parts = parallel_map(run, tasks, threads)
        count(tasks, parts)
        return merge([(p[0], p[1]) for p in parts], k)
