"""numba kernels (optional accelerated path, extra ``fast``).

Imported only through :func:`viva_glyph.core.nearest.numba_kernels`; when numba is
missing (or ``VIVA_GLYPH_NUMBA=0``) the numpy code they replace runs instead,
with identical results:

- :func:`lut_step_kernel`, one table-driven beam-search stage, replaces
  :func:`viva_glyph.core.search.lut_step`'s numpy path;
- :func:`greedy_running_kernel`, one greedy stage's decision and residual update,
  replaces :func:`viva_glyph.core.nearest.running_candidates` and
  :func:`viva_glyph.core.nearest.running_update` (the same bounds in the same float
  order, so the same rows are left to the float64 decision; the residual norm is
  summed in its own order, which moves only the bounds, never a decision);
- :func:`accumulate_sums`, the per-cluster float64 sums of k-means, replaces
  the ``bincount`` of :func:`viva_glyph.train.kmeans.accumulate` (both add the rows
  of each cluster in row order, in the same pieces, so the sums are bit-identical);
- :func:`plus_plus_kernel`, the whole greedy k-means++ loop, replaces
  :func:`viva_glyph.train.kmeans.kmeans_plus_plus`'s loop of one GEMM per pick (the
  same draws and rules; the products come from a Gram matrix or scalar loops,
  so a near-tie between two candidates may break the other way: seeds, not
  codes, and never compared between the paths).

The beam kernel does the same float operations in the same order as the numpy path (scores
``(base + dist) + cross_0 + cross_1 + ...`` in the compute dtype, no fastmath)
and keeps the same B smallest candidates by (score, parent rank, code), so both
paths give identical codes; fused per row, it needs no (n, B, K) temporaries.
The kernel is serial and releases the GIL: callers run row pieces on several
threads (:func:`viva_glyph.threads.parallel_map`), each with its own GEMM.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import float64_tie_slack

__all__ = ["accumulate_sums", "greedy_running_kernel", "lut_step_kernel", "plus_plus_kernel"]


def _njit(**options: Any) -> Any:
    """``numba.njit(nogil=True, cache=True)``; without the on-disk cache where numba has
    nowhere to write it (a read-only install and no writable user cache folder: numba
    raises RuntimeError when decorating, which made every k-means call fail)."""

    def wrap(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(fn)

    return wrap


@_njit()
def _kernel(base, dist, codes, cross, beam, out_dist, out_codes):  # type: ignore[no-untyped-def]
    n, b, m = codes.shape
    k = base.shape[1]
    keep = out_dist.shape[1]
    tmp = np.empty(k, dtype=base.dtype)
    best_s = np.empty(keep, dtype=base.dtype)
    best_i = np.empty(keep, dtype=np.int64)
    for i in range(n):
        best_s[:] = np.inf  # every real score enters before an empty slot could
        worst = best_s[keep - 1]
        for p in range(b):
            if m == 0:
                for c in range(k):
                    tmp[c] = base[i, c]
            else:
                dp = dist[i, p]
                for c in range(k):
                    tmp[c] = base[i, c] + dp
                for j in range(m):
                    row = codes[i, p, j]
                    for c in range(k):
                        tmp[c] += cross[j, row, c]
            for c in range(k):
                s = tmp[c]
                if s < worst:
                    pos = keep - 1
                    while pos > 0 and best_s[pos - 1] > s:
                        best_s[pos] = best_s[pos - 1]
                        best_i[pos] = best_i[pos - 1]
                        pos -= 1
                    best_s[pos] = s
                    best_i[pos] = p * k + c
                    worst = best_s[keep - 1]
        for q in range(keep):
            p = best_i[q] // k
            c = best_i[q] - p * k
            out_dist[i, q] = best_s[q] + dist[i, 0] if m == 0 else best_s[q]
            for j in range(m):
                out_codes[i, q, j] = codes[i, p, j]
            out_codes[i, q, m] = c


def lut_step_kernel(
    base: NDArray[Any], dist: NDArray[Any], codes: NDArray[np.intp], cross: NDArray[Any], beam: int
) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """One beam stage; arguments and results as :func:`viva_glyph.core.search.lut_step`.

    ``cross`` is the (m, K, K) stack of the cross tables (a (0, K, K) array at stage 1).
    """
    n, b, m = codes.shape
    keep = min(beam, b * base.shape[1])
    out_dist = np.empty((n, keep), dtype=base.dtype)
    out_codes = np.empty((n, keep, m + 1), dtype=np.intp)
    _kernel(
        np.ascontiguousarray(base),
        np.ascontiguousarray(dist, dtype=base.dtype),
        np.ascontiguousarray(codes),
        np.ascontiguousarray(cross, dtype=base.dtype),
        beam,
        out_dist,
        out_codes,
    )
    return out_dist, out_codes


@_njit()
def _accumulate(x, labels, sums):  # type: ignore[no-untyped-def]
    n, d = x.shape
    for i in range(n):
        row = labels[i]
        for j in range(d):
            sums[row, j] += x[i, j]


def accumulate_sums(x: NDArray[Any], labels: NDArray[np.int64], sums: NDArray[np.float64]) -> None:
    """Add every row of ``x`` (n, D) to ``sums[labels[i]]`` (K, D) float64, in row order.

    ``labels`` must already be checked to lie in [0, K).
    """
    _accumulate(np.ascontiguousarray(x), np.ascontiguousarray(labels), sums)


@_njit(fastmath={"reassoc", "contract"})
def _sum_squares(v):  # type: ignore[no-untyped-def]
    s = 0.0
    for t in range(v.shape[0]):
        s += v[t] * v[t]
    return s


@_njit(fastmath={"reassoc", "contract"})
def _subtract_row(row, v):  # type: ignore[no-untyped-def]
    s = 0.0
    for t in range(v.shape[0]):
        left = row[t] - v[t]  # one IEEE subtraction in the row's dtype
        row[t] = left
        s += np.float64(left) * np.float64(left)
    return s


@_njit()
def _greedy_running(  # type: ignore[no-untyped-def]
    scores, rows, norm2, drift, vectors, norms, gamma, tie64, grow, vec_err, codes, ambiguous
):
    n, k = scores.shape
    slack_a = gamma * norms * norms  # a code's bound: slack_a + shift slack_b
    slack_b = 2.0 * gamma * norms
    count = 0
    for i in range(n):
        row = scores[i]
        q = 0
        best = row[0]
        for c in range(1, k):
            if row[c] < best:
                best = row[c]
                q = c
        codes[i] = q
        r_bound = np.sqrt(norm2[i]) + drift[i]
        shift = r_bound + drift[i] / gamma
        upper = np.float64(best) + (slack_a[q] + shift * slack_b[q])
        upper += tie64 * max(upper + r_bound * r_bound, 0.0)
        near = 0
        for c in range(k):
            near += np.float64(row[c]) - (slack_a[c] + shift * slack_b[c]) <= upper
        if near > 1:  # left to the float64 decision of the caller
            ambiguous[count] = i
            count += 1
            continue
        s = _subtract_row(rows[i], vectors[q])
        norm2[i] = s
        drift[i] += vec_err[q] + grow * np.sqrt(s)
    return count


def greedy_running_kernel(
    scores: NDArray[Any],
    rows: NDArray[Any],
    norm2: NDArray[np.float64],
    drift: NDArray[np.float64],
    vectors: NDArray[Any],
    norms: NDArray[np.float64],
    gamma: float,
    grow: float,
    vec_err: NDArray[np.float64],
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """:func:`viva_glyph.core.nearest.running_candidates` and, where the float argmin is
    proven nearest, :func:`viva_glyph.core.nearest.running_update`, fused per row.

    Returns the codes (provisional in ambiguous rows) and the ambiguous rows, whose
    ``rows``, ``norm2`` and ``drift`` are left untouched for the caller's float64
    decision.
    """
    n = scores.shape[0]
    codes = np.empty(n, dtype=np.intp)
    ambiguous = np.empty(n, dtype=np.intp)
    tie64 = float64_tie_slack(vectors.shape[1])
    count = _greedy_running(
        scores, rows, norm2, drift, vectors, norms, gamma, tie64, grow, vec_err, codes, ambiguous
    )
    return codes, ambiguous[:count]


@_njit()
def _distances_to(x, sq, gram, a, out):  # type: ignore[no-untyped-def]
    """``out[j] = max((sq_j + sq_a) - 2 <x_a, x_j>, 0)``: squared distances to row a."""
    n, d = x.shape
    if gram.shape[0] == n:
        g = gram[a]
        for j in range(n):
            out[j] = max((sq[j] + sq[a]) - 2.0 * g[j], 0.0)
    else:
        xa = x[a]
        for j in range(n):
            dot = 0.0
            for e in range(d):
                dot += xa[e] * x[j, e]
            out[j] = max((sq[j] + sq[a]) - 2.0 * dot, 0.0)


@_njit()
def _plus_plus(x, sq, gram, first, draws, picks):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    trials = draws.shape[1]
    closest = np.empty(n, dtype=np.float64)
    cum = np.empty(n, dtype=np.float64)
    trial = np.empty((trials, n), dtype=np.float64)
    cand = np.empty(trials, dtype=np.int64)
    picks[0] = first
    _distances_to(x, sq, gram, first, closest)
    for c in range(1, draws.shape[0] + 1):
        pot = 0.0
        for j in range(n):
            pot += closest[j]
            cum[j] = pot
        u = draws[c - 1]
        if not pot > 0.0:  # every point covered: a uniform pick
            picks[c] = min(int(u[0] * n), n - 1)
            continue
        for t in range(trials):  # searchsorted(cum, u * pot, side="right")
            target = u[t] * pot
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) // 2
                if cum[mid] <= target:
                    lo = mid + 1
                else:
                    hi = mid
            cand[t] = min(lo, n - 1)
        best, best_pot = 0, np.inf
        for t in range(trials):
            row = trial[t]
            _distances_to(x, sq, gram, cand[t], row)
            total = 0.0
            for j in range(n):
                v = min(row[j], closest[j])
                row[j] = v
                total += v
            if total < best_pot:
                best, best_pot = t, total
        picks[c] = cand[best]
        closest[:] = trial[best]


def plus_plus_kernel(
    x: NDArray[np.float64],
    sq: NDArray[np.float64],
    gram: NDArray[np.float64] | None,
    first: int,
    draws: NDArray[np.float64],
) -> NDArray[np.int64]:
    """Rows (K,) picked by greedy k-means++ (see :func:`viva_glyph.train.kmeans.kmeans_plus_plus`).

    ``x`` (n, D) and ``sq`` (n,) its squared row norms, float64; ``gram`` the
    (n, n) products ``x @ x.T`` or None (products by scalar loops, for few
    dimensions); ``draws`` (K - 1, trials) uniform in [0, 1).
    """
    picks = np.empty(draws.shape[0] + 1, dtype=np.int64)
    g = np.empty((0, 0), dtype=np.float64) if gram is None else gram
    _plus_plus(np.ascontiguousarray(x), sq, g, first, draws, picks)
    return picks
