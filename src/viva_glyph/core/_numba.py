"""numba kernels of the engine (optional accelerated path, extra ``fast``).

Loaded through :func:`viva_glyph.core.nearest.numba_module`; when numba is
missing (or ``VIVA_GLYPH_NUMBA=0``) the numpy code they replace runs instead,
with identical results:

- :func:`lut_step_kernel`, one table-driven beam-search stage, replaces
  :func:`viva_glyph.core.beam.lut_step`'s numpy path;
- :func:`greedy_running_kernel`, one greedy stage's decision and residual update,
  replaces :func:`viva_glyph.core.nearest.running_candidates` and
  :func:`viva_glyph.core.nearest.running_update` (the same bounds in the same float
  order, so the same rows are left to the float64 decision; the residual norm is
  summed in its own order, which moves only the bounds, never a decision).

The beam kernel does the same float operations in the same order as the numpy path (scores
``(base + dist) + cross_0 + cross_1 + ...`` in the compute dtype, no fastmath)
and keeps the same B smallest candidates by (score, parent rank, code), so both
paths give identical codes; fused per row, it needs no (n, B, K) temporaries.
The kernels are serial and release the GIL: callers run row pieces on several
threads (:func:`viva_glyph.threads.parallel_map`), each with its own GEMM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import compiled

__all__ = ["greedy_running_kernel", "lut_step_kernel"]


@compiled()
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


@compiled(fastmath={"reassoc", "contract"})
def _sum_squares(v):  # type: ignore[no-untyped-def]
    s = 0.0
    for t in range(v.shape[0]):
        s += v[t] * v[t]
    return s


@compiled(fastmath={"reassoc", "contract"})
def _subtract_row(row, v):  # type: ignore[no-untyped-def]
    s = 0.0
    for t in range(v.shape[0]):
        left = row[t] - v[t]  # one IEEE subtraction in the row's dtype
        row[t] = left
        s += np.float64(left) * np.float64(left)
    return s


@compiled()
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
    tie64: float,
    grow: float,
    vec_err: NDArray[np.float64],
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """:func:`viva_glyph.core.nearest.running_candidates` and, where the float argmin is
    proven nearest, :func:`viva_glyph.core.nearest.running_update`, fused per row
    (``tie64``: :func:`viva_glyph.core.nearest.float64_tie_slack` of D).

    Returns the codes (provisional in ambiguous rows) and the ambiguous rows, whose
    ``rows``, ``norm2`` and ``drift`` are left untouched for the caller's float64
    decision.
    """
    n = scores.shape[0]
    codes = np.empty(n, dtype=np.intp)
    ambiguous = np.empty(n, dtype=np.intp)
    count = _greedy_running(
        scores, rows, norm2, drift, vectors, norms, gamma, tie64, grow, vec_err, codes, ambiguous
    )
    return codes, ambiguous[:count]
