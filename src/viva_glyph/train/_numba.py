"""numba kernels of k-means (optional accelerated path, extra ``fast``).

Loaded through :func:`viva_glyph.core.nearest.numba_module`; when numba is
missing (or ``VIVA_GLYPH_NUMBA=0``) the numpy code they replace runs instead:

- :func:`accumulate_sums`, the per-cluster float64 sums of k-means, replaces
  the ``bincount`` of :func:`viva_glyph.train.kmeans.accumulate` (both add the rows
  of each cluster in row order, in the same pieces, so the sums are bit-identical);
- :func:`plus_plus_kernel`, the whole greedy k-means++ loop, replaces
  :func:`viva_glyph.train.kmeans.kmeans_plus_plus`'s loop of one GEMM per pick (the
  same draws and rules; the products come from a Gram matrix or scalar loops,
  so a near-tie between two candidates may break the other way: seeds, not
  codes, and never compared between the paths).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import compiled

__all__ = ["accumulate_sums", "plus_plus_kernel"]


@compiled()
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


@compiled()
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


@compiled()
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
