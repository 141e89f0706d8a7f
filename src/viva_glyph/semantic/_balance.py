"""Capacity-constrained assignment: every cluster gets at most ``cap`` points.

The problem is a transportation problem (min sum of squared distances subject
to cluster sizes <= cap). We solve it with an auction on cluster prices, the
zero-temperature limit of Sinkhorn's scaling: every point takes its cheapest
cluster under ``distance + price``; an over-full cluster raises its price just
enough for its surplus (the points that lose least by moving) to leave. A
greedy repair then makes the bound hold exactly. On the candidate lists of each
point (its ``CANDIDATES`` nearest clusters) this costs O(N T) per round; the
tests compare the total cost with the exact optimum (min-cost flow through
:func:`scipy.optimize.linear_sum_assignment` on replicated clusters).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["balanced_assign", "capacity"]

#: Nearest clusters per point that the auction considers.
CANDIDATES = 32
#: Auction rounds before the greedy repair.
ROUNDS = 60
_CHUNK = 8192


def capacity(n: int, k: int, balance: float) -> int:
    """Largest cluster size allowed: ``max(ceil(N/K), floor((1 + balance) N / K))``."""
    return max(math.ceil(n / k), math.floor((1.0 + balance) * n / k + 1e-9))


def sq_distances(x: NDArray[Any], centroids: NDArray[Any]) -> NDArray[np.float64]:
    """Squared distances (n, K), float64 (clipped at 0)."""
    x64 = np.asarray(x, dtype=np.float64)
    c64 = np.asarray(centroids, dtype=np.float64)
    d = np.einsum("nd,nd->n", x64, x64)[:, None] - 2.0 * (x64 @ c64.T)
    d += np.einsum("kd,kd->k", c64, c64)[None, :]
    out: NDArray[np.float64] = np.maximum(d, 0.0, out=d)
    return out


def _candidates(
    x: NDArray[Any], centroids: NDArray[Any], t: int
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """The t nearest clusters of each point, nearest first: distances and indices (n, t)."""
    n = x.shape[0]
    k = centroids.shape[0]
    dist = np.empty((n, t), dtype=np.float64)
    idx = np.empty((n, t), dtype=np.intp)
    for s in range(0, n, _CHUNK):
        d = sq_distances(x[s : s + _CHUNK], centroids)
        part = np.argpartition(d, t - 1, axis=1)[:, :t] if t < k else np.argsort(d, axis=1)
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        idx[s : s + _CHUNK] = np.take_along_axis(part, order, axis=1)
        dist[s : s + _CHUNK] = np.take_along_axis(pd, order, axis=1)
    return dist, idx


def balanced_assign(
    x: NDArray[Any], centroids: NDArray[Any], cap: int, *, rounds: int = ROUNDS
) -> NDArray[np.intp]:
    """Nearest-centroid labels with every cluster holding at most ``cap`` points.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    centroids : ndarray, shape (K, D)
    cap : int
        Capacity; ``cap * K >= N`` (the caller guarantees it).
    rounds : int
        Auction rounds before the repair.

    Returns
    -------
    ndarray, shape (N,), intp
        Labels; ``np.bincount(labels, minlength=K).max() <= cap``.
    """
    n = x.shape[0]
    k = centroids.shape[0]
    if cap * k < n:
        raise ValueError(f"capacity {cap} x {k} clusters cannot hold {n} points")
    t = min(k, CANDIDATES)
    dist, cidx = _candidates(x, centroids, t)
    rows = np.arange(n)
    labels = cidx[:, 0].copy()
    if np.bincount(labels, minlength=k).max() <= cap:
        return labels
    prices = np.zeros(k, dtype=np.float64)
    scale = float(np.median(dist[:, -1] - dist[:, 0])) if t > 1 else 1.0
    eps = 1e-9 * max(scale, 1e-30)
    for _ in range(rounds):
        cost = dist + prices[cidx]
        j = np.argmin(cost, axis=1)
        labels = cidx[rows, j]
        counts = np.bincount(labels, minlength=k)
        over = counts > cap
        if not over.any():
            return labels  # type: ignore[no-any-return]
        best = cost[rows, j]
        cost[rows, j] = np.inf
        margin = cost.min(axis=1) - best  # what moving to the next choice costs
        # raise each over-full cluster's price by its surplus-th smallest margin
        sel = np.flatnonzero(over[labels])
        order = sel[np.lexsort((margin[sel], labels[sel]))]
        lab_sorted = labels[order]
        starts = np.searchsorted(lab_sorted, np.flatnonzero(over))
        surplus = counts[over] - cap
        raise_by = margin[order[starts + surplus - 1]]
        finite = np.isfinite(raise_by)
        prices[np.flatnonzero(over)[finite]] += raise_by[finite] + eps
    return _repair(x, centroids, dist + prices[cidx], cidx, cap)


def _repair(
    x: NDArray[Any],
    centroids: NDArray[Any],
    cost: NDArray[np.float64],
    cidx: NDArray[np.intp],
    cap: int,
) -> NDArray[np.intp]:
    """Greedy fix: over-full clusters keep the points that would lose most by moving."""
    n, _ = cost.shape
    k = centroids.shape[0]
    rows = np.arange(n)
    j = np.argmin(cost, axis=1)
    labels = cidx[rows, j]
    best = cost[rows, j]
    masked = cost.copy()
    masked[rows, j] = np.inf
    margin = masked.min(axis=1) - best
    counts = np.bincount(labels, minlength=k)
    # within each cluster, largest margin first; the points past `cap` move
    order = np.lexsort((-margin, labels))
    lab_sorted = labels[order]
    starts = np.searchsorted(lab_sorted, np.arange(k))
    rank = np.arange(n) - starts[lab_sorted]
    movers = order[rank >= cap]
    counts -= np.bincount(labels[movers], minlength=k)
    movers = movers[np.argsort(margin[movers], kind="stable")]  # cheapest moves first
    full_scan: list[int] = []
    for i in movers:
        choice = -1
        for c in cidx[i][np.argsort(cost[i], kind="stable")]:
            if counts[c] < cap:
                choice = int(c)
                break
        if choice < 0:
            full_scan.append(int(i))
            continue
        labels[i] = choice
        counts[choice] += 1
    for i in full_scan:  # no candidate has room: nearest cluster with room
        d = sq_distances(x[i : i + 1], centroids)[0]
        d[counts >= cap] = np.inf
        c = int(np.argmin(d))
        labels[i] = c
        counts[c] += 1
    return labels  # type: ignore[no-any-return]
