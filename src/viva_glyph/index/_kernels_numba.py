"""numba kernels of the index scan (optional, extra ``fast``).

Imported only through :func:`viva_glyph.index._scan.scan_kernels`; without
numba (or with ``VIVA_GLYPH_NUMBA=0``) the blocked numpy code of
:mod:`viva_glyph.index._scan` runs instead. Both keep, per query, the k
smallest scores with ties to the lower position, so both give the same
neighbours when no two scores are within float32 rounding of each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import compiled

__all__ = ["lut_norms", "scan", "scan_bound"]


@compiled(inline="always")
def _push(heap_d, heap_i, q, s, pos):  # type: ignore[no-untyped-def]
    """Replace the root of query q's max-heap by (s, pos) and sift it down."""
    kk = heap_d.shape[1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= kk:
            break
        right = left + 1
        big = left
        if right < kk and (
            heap_d[q, right] > heap_d[q, left]
            or (heap_d[q, right] == heap_d[q, left] and heap_i[q, right] > heap_i[q, left])
        ):
            big = right
        if heap_d[q, big] > s or (heap_d[q, big] == s and heap_i[q, big] > pos):
            heap_d[q, i] = heap_d[q, big]
            heap_i[q, i] = heap_i[q, big]
            i = big
        else:
            break
    heap_d[q, i] = s
    heap_i[q, i] = pos


@compiled()
def _scan(lut, codes, add, scale, mode, offsets, probes, consts, base, heap_d, heap_i):  # type: ignore[no-untyped-def]
    nq, m, _ = lut.shape
    for q in range(nq):
        for p in range(probes.shape[1]):
            lst = probes[q, p]
            if lst < 0:
                continue
            c0 = consts[q, p]
            for i in range(offsets[lst], offsets[lst + 1]):
                s = c0
                for j in range(m):
                    s += lut[q, j, codes[i, j]]
                if mode == 0:
                    s += add[i]
                elif mode == 1:
                    s *= scale[i]
                pos = base + i
                if s < heap_d[q, 0] or (s == heap_d[q, 0] and pos < heap_i[q, 0]):
                    _push(heap_d, heap_i, q, s, pos)


def scan(
    lut: NDArray[np.float32],
    codes: NDArray[Any],
    add: NDArray[np.float32],
    scale: NDArray[np.float32],
    mode: int,
    offsets: NDArray[np.int64],
    probes: NDArray[np.int64],
    consts: NDArray[np.float32],
    base: int,
    heap_d: NDArray[np.float32],
    heap_i: NDArray[np.int64],
) -> None:
    """Push every probed code's score into the per-query heaps (see ``_scan.scan_block``)."""
    _scan(lut, codes, add, scale, mode, offsets, probes, consts, base, heap_d, heap_i)


@compiled()
def _lut_norms(codes, sq, cross, out):  # type: ignore[no-untyped-def]
    n, m = codes.shape
    for i in range(n):
        s = 0.0
        pair = 0
        for a in range(m):
            ca = codes[i, a]
            s += sq[a, ca]
            for b in range(a + 1, m):
                s += 2.0 * cross[pair, ca, codes[i, b]]
                pair += 1
        out[i] = s


def lut_norms(
    codes: NDArray[Any], sq: NDArray[np.float64], cross: NDArray[np.float64], out: NDArray[Any]
) -> None:
    """``out[i] = ||decode(codes[i])||^2`` from the stage tables (see ``_norms.NormTables``)."""
    _lut_norms(codes, sq, cross, out)


@compiled(inline="always")
def _exact(lut, codes, i, q, c0, lst, stack, sq64, cent, cc64, cos, v):  # type: ignore[no-untyped-def]
    """The exact score of row i (float64): its table sum and its norm rebuilt from the
    codes (the same operations in the same order as ``_scan._exact_scores``)."""
    m = codes.shape[1]
    d = stack.shape[2]
    acc = np.float64(c0)
    for j in range(m):
        acc += np.float64(lut[q, j, codes[i, j]])
    for t in range(d):
        v[t] = cent[lst, t]
    for j in range(m):
        c = codes[i, j]
        for t in range(d):
            v[t] += stack[j, c, t]
    nrm = 0.0
    for t in range(d):
        nrm += v[t] * v[t]
    if cos:
        return acc / math.sqrt(nrm) if nrm > 0.0 else 0.0
    s = 0.0
    for j in range(m):
        s += sq64[j, codes[i, j]]
    return acc + ((nrm - cc64[lst]) - s)


@compiled(inline="always")
def _cos_lower(p, nlo, nhi):  # type: ignore[no-untyped-def]
    """Smallest p' / sqrt(n) over p' >= p, n in [nlo, nhi] (float64); -inf when unbounded."""
    if p >= 0.0:
        return p / math.sqrt(nhi) if nhi > 0.0 else 0.0
    if nlo <= 0.0:
        return -np.inf
    return p / math.sqrt(nlo)


@compiled()
def _scan_bound(lut, codes, qbytes, val, err, sq32, cc32, stack, sq64, cent, cc64, cos, margin, nmargin, offsets, probes, consts, base, heap_d, heap_i, counts):  # type: ignore[no-untyped-def]  # noqa: E501
    nq, m, _ = lut.shape
    v = np.empty(stack.shape[2], dtype=np.float64)
    for q in range(nq):
        mq = margin[q]
        for p in range(probes.shape[1]):
            lst = probes[q, p]
            if lst < 0:
                continue
            c0 = consts[q, p]
            for i in range(offsets[lst], offsets[lst + 1]):
                s = c0
                for j in range(m):
                    s += lut[q, j, codes[i, j]]
                g = codes[i, 0]
                b = qbytes[i]
                if cos:
                    sn = cc32[lst] + val[g, b]
                    for j in range(m):
                        sn += sq32[j, codes[i, j]]
                    e = np.float64(err[g, b]) + nmargin
                    lb = _cos_lower(np.float64(s) - mq, np.float64(sn) - e, np.float64(sn) + e)
                    lb -= 1e-6 * abs(lb)
                else:
                    s += val[g, b]
                    lb = np.float64(s) - np.float64(err[g, b]) - mq
                top = heap_d[q, 0]
                if lb > top:
                    continue
                counts[q] += 1
                ex = _exact(lut, codes, i, q, c0, lst, stack, sq64, cent, cc64, cos, v)
                pos = base + i
                if ex < top or (ex == top and pos < heap_i[q, 0]):
                    _push(heap_d, heap_i, q, ex, pos)


def scan_bound(
    lut: NDArray[np.float32],
    codes: NDArray[Any],
    qbytes: NDArray[np.uint8],
    val: NDArray[np.float32],
    err: NDArray[np.float32],
    sq32: NDArray[np.float32],
    cc32: NDArray[np.float32],
    stack: NDArray[np.float64],
    sq64: NDArray[np.float64],
    cent: NDArray[np.float64],
    cc64: NDArray[np.float64],
    cos: bool,
    margin: NDArray[np.float64],
    nmargin: float,
    offsets: NDArray[np.int64],
    probes: NDArray[np.int64],
    consts: NDArray[np.float32],
    base: int,
    heap_d: NDArray[np.float64],
    heap_i: NDArray[np.int64],
    counts: NDArray[np.int64],
) -> None:
    """Scan with one-byte cross terms, re-scoring exactly every row whose score bound can
    reach the heap (see ``_scan.BoundInput``); heaps hold exact float64 scores."""
    _scan_bound(
        lut, codes, qbytes, val, err, sq32, cc32, stack, sq64, cent, cc64, cos, margin,
        nmargin, offsets, probes, consts, base, heap_d, heap_i, counts,
    )  # fmt: skip
