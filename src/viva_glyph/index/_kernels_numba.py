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


@compiled()
def _exact(lutx, codes, i, q, c0, lst, stack, sq64, cent, cc64, cos, v):  # type: ignore[no-untyped-def]
    """The exact score of row i (float64): its table sum and its norm rebuilt from the
    codes (the same operations in the same order as ``_scan._exact_scores``)."""
    m = codes.shape[1]
    d = stack.shape[2]
    acc = np.float64(c0)
    for j in range(m):
        acc += np.float64(lutx[q, j, codes[i, j]])
    for t in range(d):  # the centroid's coordinates, then each stage's (as numpy sums them)
        v[t] = cent[lst, t]
    for j in range(m):
        c = codes[i, j]
        for t in range(d):
            v[t] += stack[j, c, t]
    a0 = a1 = a2 = a3 = 0.0  # four sums of squares (coordinates t mod 4): a shorter chain
    t = 0
    while t + 3 < d:
        a0 += v[t] * v[t]
        a1 += v[t + 1] * v[t + 1]
        a2 += v[t + 2] * v[t + 2]
        a3 += v[t + 3] * v[t + 3]
        t += 4
    if t < d:
        a0 += v[t] * v[t]
    if t + 1 < d:
        a1 += v[t + 1] * v[t + 1]
    if t + 2 < d:
        a2 += v[t + 2] * v[t + 2]
    nrm = (a0 + a1) + (a2 + a3)
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


@compiled(inline="always")
def _up32(x):  # type: ignore[no-untyped-def]
    """The smallest float32 >= x (float64)."""
    y = np.float32(x)
    if np.float64(y) < x:
        y = np.nextafter(y, np.float32(np.inf))
    return y


@compiled(inline="always")
def _rescore(  # type: ignore[no-untyped-def]
    lutx, codes, i, q, c0, lst, stack, sq64, cent, cc64, cos, v, base, heap_d, heap_i, counts
):
    """Push row i's exact score into query q's heap; the heap's new bound, in float32."""
    counts[q] += 1
    ex = _exact(lutx, codes, i, q, c0, lst, stack, sq64, cent, cc64, cos, v)
    pos = base + i
    if ex < heap_d[q, 0] or (ex == heap_d[q, 0] and pos < heap_i[q, 0]):
        _push(heap_d, heap_i, q, ex, pos)
    return _up32(heap_d[q, 0])


@compiled(inline="always")
def _row_margin(lut, codes, i, q, c0, t, ceff, tiny):  # type: ignore[no-untyped-def]
    """Rounding margin of row i's scanned score: a float32 sum is within (terms) u times
    the sum of its terms' magnitudes of the exact sum (``ceff`` holds (M + 8) 2u)."""
    a = abs(c0) + abs(t)
    for j in range(codes.shape[1]):
        a += abs(lut[q, j, codes[i, j]])
    return ceff * a + tiny


@compiled(inline="always")
def _push_bound(ubs, q, u):  # type: ignore[no-untyped-def]
    """Replace the root of query q's max-heap of upper bounds by u and sift it down."""
    kk = ubs.shape[1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= kk:
            break
        big = left
        if left + 1 < kk and ubs[q, left + 1] > ubs[q, left]:
            big = left + 1
        if ubs[q, big] > u:
            ubs[q, i] = ubs[q, big]
            i = big
        else:
            break
    ubs[q, i] = u


@compiled(inline="always")
def _flush(  # type: ignore[no-untyped-def]
    buf,
    blb,
    nb,
    lutx,
    codes,
    q,
    c0s,
    lsts,
    stack,
    sq64,
    cent,
    cc64,
    v,
    base,
    heap_d,
    heap_i,
    counts,
    ubs,
):
    """Re-score the buffered rows whose lower bound still reaches the top k."""
    top32 = min(_up32(heap_d[q, 0]), ubs[q, 0])
    for t in range(nb):
        if blb[t] <= top32:
            i = buf[t]
            top32 = min(
                _rescore(
                    lutx, codes, i, q, c0s[t], lsts[t], stack, sq64, cent, cc64, False, v,
                    base, heap_d, heap_i, counts,
                ),
                ubs[q, 0],
            )  # fmt: skip


@compiled()
def _scan_bytes(  # type: ignore[no-untyped-def]
    lut,
    lutx,
    codes,
    qbytes,
    lin,
    step,
    half,
    val,
    err,
    hm,
    ceff,
    tiny,
    stack,
    sq64,
    cent,
    cc64,
    margin,
    offsets,
    probes,
    consts,
    base,
    heap_d,
    heap_i,
    counts,
    ubs,
):
    """L2, one-byte cross terms. ``lin`` (qint8): the first table holds lo + step / 2, the
    byte adds step * byte, and ``half`` is each first code's bound. Otherwise (cqint8): the
    byte's level comes from the (first code, byte) table ``val``, with its own bound
    ``err``. ``hm`` (nq, K) is each first code's (largest) bound plus the query's margin: a
    row passes it first, then its own bound (one table in the loop, not two: they would not
    stay in the cache).

    A row whose lower bound reaches the threshold (the k-th best exact score so far, or
    the k-th smallest upper bound ``ubs``) is buffered; the buffer is re-scored when it
    is full and at the end, against the threshold of then: far fewer rows than
    re-scoring each at once against the threshold of its time."""
    nq, m, _ = lut.shape
    v = np.empty(stack.shape[2], dtype=np.float64)
    cap = 256
    buf = np.empty(cap, dtype=np.int64)
    blb = np.empty(cap, dtype=np.float32)
    c0s = np.empty(cap, dtype=np.float32)
    lsts = np.empty(cap, dtype=np.int64)
    for q in range(nq):
        top32 = min(_up32(heap_d[q, 0]), ubs[q, 0])
        nb = 0
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
                t = step[g] * np.float32(b) if lin else val[g, b]
                s += t
                if s - hm[q, g] > top32:  # the query's margin: the largest terms of its tables
                    continue
                e = half[g] if lin else err[g, b]
                e += _row_margin(lut, codes, i, q, c0, t, ceff, tiny)
                lb = s - e
                if lb > top32:
                    continue
                ub = s + e
                if ub < ubs[q, 0]:
                    _push_bound(ubs, q, ub)
                    top32 = min(top32, ubs[q, 0])
                buf[nb] = i
                blb[nb] = lb
                c0s[nb] = c0
                lsts[nb] = lst
                nb += 1
                if nb == cap:
                    _flush(
                        buf, blb, nb, lutx, codes, q, c0s, lsts, stack, sq64, cent, cc64, v,
                        base, heap_d, heap_i, counts, ubs,
                    )  # fmt: skip
                    nb = 0
                    top32 = min(_up32(heap_d[q, 0]), ubs[q, 0])
        _flush(
            buf, blb, nb, lutx, codes, q, c0s, lsts, stack, sq64, cent, cc64, v, base,
            heap_d, heap_i, counts, ubs,
        )  # fmt: skip


@compiled()
def _scan_cos(  # type: ignore[no-untyped-def]
    lut,
    codes,
    qbytes,
    val,
    err,
    sq32,
    cc32,
    stack,
    sq64,
    cent,
    cc64,
    margin,
    nmargin,
    offsets,
    probes,
    consts,
    base,
    heap_d,
    heap_i,
    counts,
):
    """Cosine: bounds of the inner product and of the norm, then of their ratio."""
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
                sn = cc32[lst] + val[g, b]
                for j in range(m):
                    sn += sq32[j, codes[i, j]]
                e = np.float64(err[g, b]) + nmargin
                lb = _cos_lower(np.float64(s) - mq, np.float64(sn) - e, np.float64(sn) + e)
                if lb - 1e-6 * abs(lb) > heap_d[q, 0]:
                    continue
                _rescore(
                    lut, codes, i, q, c0, lst, stack, sq64, cent, cc64, True, v, base,
                    heap_d, heap_i, counts,
                )  # fmt: skip


def scan_bound(
    lut: NDArray[np.float32],
    lutx: NDArray[np.float32],
    codes: NDArray[Any],
    qbytes: NDArray[np.uint8],
    lin: bool,
    step: NDArray[np.float32],
    half: NDArray[np.float32],
    val: NDArray[np.float32],
    err: NDArray[np.float32],
    gmax: NDArray[np.float32],
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
    ubs: NDArray[np.float32],
    r2: float,
) -> None:
    """Scan with one-byte cross terms, re-scoring exactly every row whose score bound can
    reach the top k (see ``_scan.BoundInput``); heaps hold exact float64 scores, ``ubs``
    (nq, k) float32 the k smallest upper bounds of scanned scores (L2; kept across calls)."""
    if cos:
        _scan_cos(
            lut, codes, qbytes, val, err, sq32, cc32, stack, sq64, cent, cc64, margin, nmargin,
            offsets, probes, consts, base, heap_d, heap_i, counts,
        )  # fmt: skip
    else:
        # each first code's bound (qint8) or largest bound (cqint8) plus each query's margin
        hm = np.ascontiguousarray((half if lin else gmax)[None, :] + margin[:, None], np.float32)
        # each row passing its query's margin is checked again with its own (the sizes of
        # its terms): rows far smaller than the largest keep tight bounds
        ceff = np.float32((lut.shape[1] + 8) * 2.0**-23)
        tiny = np.float32(2.0**-40 * r2)
        _scan_bytes(
            lut, lutx, codes, qbytes, lin, step, half, val, err, hm, ceff, tiny, stack, sq64,
            cent, cc64, margin, offsets, probes, consts, base, heap_d, heap_i, counts, ubs,
        )  # fmt: skip
