"""Optimal k-means in one dimension: the levels of the ``"cqint8"`` norm code.

In one dimension the clusters of an optimal k-means are runs of the sorted
values, so dynamic programming over the sorted values finds the global optimum
(Wang & Song 2011, Ckmeans.1d.dp; Gronlund et al. 2017):

``F_j(b) = min_{a < b} F_{j-1}(a) + cost(a, b)``

is the least squared error of the first b values in j + 1 clusters, with
``cost(a, b)`` the squared error of values a..b-1 around their mean (O(1) from
prefix sums). The best split a is non-decreasing in b, so each layer is solved
by divide and conquer (the middle row first, then each half within its bounds,
which the previous layer's split also bounds from below), here one recursion
depth at a time, all segments of a depth in one numpy pass: O(k G log G) work,
G = the number of (weighted) points.

FAISS (``Clustering1D::train_exact``, behind ``ST_norm_cqint8``) solves the same
problem exactly on a random sample of at most ``256 * k`` values, in float32.
Here the DP runs in float64 on all distinct values when there are at most
``GROUPS`` of them, else on at most ``GROUPS`` runs of the sorted values (cut
at equal counts and at the widest gaps; each run weighted by its count, sum and
sum of squares), and Lloyd iterations on all values then polish the result
(each one never increases the squared error).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["GROUPS", "kmeans_1d", "squared_error"]

#: Most weighted points of the DP (above it, runs of the sorted values are merged).
GROUPS = 1 << 16
#: Lloyd iterations that polish the DP result on all values.
POLISH = 100


def squared_error(values: NDArray[np.float64], levels: NDArray[np.float64]) -> float:
    """Sum of squared distances of values (n,) to their nearest level (L,), float64."""
    lv = np.sort(np.asarray(levels, dtype=np.float64))
    mid = (lv[1:] + lv[:-1]) / 2
    near = lv[np.searchsorted(mid, values, side="left")]
    return float(np.sum((values - near) ** 2))


def kmeans_1d(values: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """k sorted levels minimising the squared error of ``values`` to the nearest level.

    Parameters
    ----------
    values : ndarray, shape (n,), float64, n >= 1, finite
    k : int >= 1

    Returns
    -------
    ndarray, shape (k,), float64, sorted; when there are at most k distinct
    values, those values padded with the largest (error 0).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    uniq, counts = np.unique(v, return_counts=True)
    if uniq.shape[0] <= k:
        return np.concatenate([uniq, np.full(k - uniq.shape[0], uniq[-1])])
    shift = float(v.mean())  # centred: prefix sums of squares lose less to rounding
    if uniq.shape[0] <= GROUPS:
        w = counts.astype(np.float64)
        s = (uniq - shift) * w
        q = (uniq - shift) ** 2 * w
    else:
        c = v - shift
        starts = _group_starts(v, GROUPS)
        w = np.diff(np.append(starts, v.shape[0])).astype(np.float64)
        s = np.add.reduceat(c, starts)
        q = np.add.reduceat(c * c, starts)
    bounds = _optimal_bounds(w, s, q, k)
    total = np.concatenate([[0.0], np.cumsum(w)])
    first = total[bounds[:-1]].astype(np.int64)
    last = total[bounds[1:]].astype(np.int64)
    cs = np.concatenate([[0.0], np.cumsum(v - shift)])
    levels = (cs[last] - cs[first]) / (last - first) + shift
    return _polish(v, levels)


def _group_starts(v: NDArray[np.float64], groups: int) -> NDArray[np.int64]:
    """First index of each of <= ``groups`` runs of the sorted values v.

    Half the cuts split v into runs of equal count (no run is large), half go
    to the largest gaps between neighbours (isolated values of a sparse tail
    stay alone, as an optimal clustering often keeps them).
    """
    n = v.shape[0]
    half = groups // 2
    even = (np.arange(half, dtype=np.int64) * n) // half
    gaps = np.diff(v)
    widest = np.argpartition(gaps, gaps.shape[0] - half)[-half:] + 1
    starts: NDArray[np.int64] = np.unique(np.concatenate([even, widest]))
    return starts


def _optimal_bounds(
    w: NDArray[np.float64], s: NDArray[np.float64], q: NDArray[np.float64], k: int
) -> NDArray[np.int64]:
    """Cluster bounds (k + 1,) over G weighted points: cluster j is points [b_j, b_{j+1})."""
    g = w.shape[0]
    W = np.concatenate([[0.0], np.cumsum(w)])  # prefix sums: bound b = first b points
    S = np.concatenate([[0.0], np.cumsum(s)])
    Q = np.concatenate([[0.0], np.cumsum(q)])
    prev = np.full(g + 1, np.inf)
    prev[1:] = Q[1:] - S[1:] * S[1:] / W[1:]
    split = np.zeros((k, g + 1), dtype=np.int32)
    for j in range(1, k):
        # rows b in [j + 1, g - (k - 1 - j)]: later layers never need more
        top = g - (k - 1 - j)
        cur = np.full(g + 1, np.inf)
        blo = np.array([j + 1], dtype=np.int64)
        bhi = np.array([top], dtype=np.int64)
        olo = np.array([j], dtype=np.int64)
        ohi = np.array([top - 1], dtype=np.int64)
        while blo.shape[0]:
            mid = (blo + bhi) // 2
            hi = np.minimum(ohi, mid - 1)
            # the split with j + 1 clusters is never before the one with j (ties aside)
            lo = np.minimum(np.maximum(olo, split[j - 1, mid]), hi)
            length = hi - lo + 1
            start = np.cumsum(length) - length
            seg = np.repeat(np.arange(mid.shape[0]), length)
            a = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(start - lo, length)
            # cost of points [a, b): squared error around their mean
            ds = np.repeat(S[mid], length) - S[a]
            val = (
                prev[a]
                + (np.repeat(Q[mid], length) - Q[a])
                - ds * ds / (np.repeat(W[mid], length) - W[a])
            )
            best = np.minimum.reduceat(val, start)
            hit = np.flatnonzero(val == best[seg])  # leftmost minimum of each segment
            hs = seg[hit]
            first = hit[np.concatenate([[True], hs[1:] != hs[:-1]])]
            arg = a[first]
            cur[mid] = best
            split[j, mid] = arg
            left = blo <= mid - 1
            right = mid + 1 <= bhi
            blo = np.concatenate([blo[left], mid[right] + 1])
            bhi = np.concatenate([mid[left] - 1, bhi[right]])
            olo = np.concatenate([olo[left], arg[right]])
            ohi = np.concatenate([arg[left], ohi[right]])
        prev = cur
    bounds = np.empty(k + 1, dtype=np.int64)
    bounds[k] = g
    for j in range(k - 1, 0, -1):
        bounds[j] = split[j, bounds[j + 1]]
    bounds[0] = 0
    return bounds


def _polish(v: NDArray[np.float64], levels: NDArray[np.float64]) -> NDArray[np.float64]:
    """Lloyd iterations on the sorted values v (prefix sums: O(k log n) each)."""
    n = v.shape[0]
    shift = float(v.mean())
    cs = np.concatenate([[0.0], np.cumsum(v - shift)])
    cent = levels
    for _ in range(POLISH):
        cut = np.searchsorted(v, (cent[1:] + cent[:-1]) / 2, side="right")
        lo = np.concatenate([[0], cut])
        hi = np.concatenate([cut, [n]])
        if (hi <= lo).any():  # a level lost its values: keep the last full solution
            break
        new = (cs[hi] - cs[lo]) / (hi - lo) + shift
        if np.array_equal(new, cent):
            break
        cent = new
    return np.sort(cent)
