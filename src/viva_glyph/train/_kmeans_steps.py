"""k-means' small pure steps, shared by every executor of the Lloyd loop.

:func:`assign` (nearest centroid, one GEMM per cache-sized chunk against the
augmented table ``[-2 C^T; ||c||^2]`` of :mod:`viva_glyph.core.nearest`),
:func:`accumulate` (per-cluster float64 sums in row order), :func:`combine`
and :func:`update` (means; an empty cluster re-seeded by splitting the
largest). :mod:`viva_glyph.train.kmeans` composes them into the Lloyd loop and the
progressive k-means, and re-exports them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import augmented_table, chunk_rows, nearest_into, numba_module

__all__ = [
    "ASSIGN_BYTES",
    "SPLIT_EPS",
    "Accumulation",
    "accumulate",
    "assign",
    "combine",
    "combine_all",
    "partial_step",
    "update",
]

Accumulation = tuple[NDArray[np.float64], NDArray[np.int64], float]

#: Working-set budget of one distance GEMM in :func:`assign` (few large BLAS calls).
ASSIGN_BYTES = 4 << 20

#: Entries (rows x D) that :func:`accumulate` sums at once, from zero, before adding them
#: to its total (a leaf of :func:`viva_glyph.train.kmeans.leaf_rows` rows is at most one piece).
ACCUMULATE_ENTRIES = 1 << 20

#: Relative size of the perturbation that splits a cluster to re-seed an empty one.
SPLIT_EPS = 1.0 / 1024.0


def _compute_dtype(centroids: NDArray[Any]) -> np.dtype[Any]:
    return np.dtype(np.float32) if centroids.dtype == np.float32 else np.dtype(np.float64)


def assign(
    X_chunk: NDArray[Any], centroids: NDArray[Any]
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Nearest centroid of each row.

    Parameters
    ----------
    X_chunk : ndarray, shape (n, D), float32 or float64 (any real dtype)
        Rows; processed in cache-sized sub-chunks, never copied whole.
    centroids : ndarray, shape (K, D), float32 or float64
        The search runs in this dtype (float32 is about twice as fast).

    Returns
    -------
    labels : ndarray, shape (n,), intp
        Index of the nearest centroid (ties to the lowest index).
    sqdist : ndarray, shape (n,), float64
        Squared distance to it, ``||x||^2 + (||c||^2 - 2 x.c)`` from the
        distance GEMM (precision of the compute dtype; clipped at 0).
    """
    if X_chunk.ndim != 2 or centroids.ndim != 2 or X_chunk.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"assign needs X_chunk (n, D) and centroids (K, D) of equal D, "
            f"got {X_chunk.shape} and {centroids.shape}"
        )
    dtype = _compute_dtype(centroids)
    cent = np.ascontiguousarray(centroids, dtype=dtype)
    table = augmented_table(cent)
    n, d = X_chunk.shape
    k = cent.shape[0]
    rows = min(chunk_rows(k, d, dtype.itemsize, ASSIGN_BYTES), n)
    labels = np.empty(n, dtype=np.intp)
    sqdist = np.empty(n, dtype=np.float64)
    buf = np.ones((rows, d + 1), dtype=dtype)
    work = np.empty((rows, k), dtype=dtype)
    for start in range(0, n, rows):
        chunk = X_chunk[start : start + rows]
        m = chunk.shape[0]
        buf[:m, :d] = chunk
        idx = nearest_into(buf[:m], table, work[:m])
        labels[start : start + m] = idx
        out = sqdist[start : start + m]
        out[:] = np.take_along_axis(work[:m], idx[:, None], axis=1)[:, 0]
        x = buf[:m, :d]
        out += np.einsum("nd,nd->n", x, x)
        np.maximum(out, 0.0, out=out)
    return labels, sqdist


def accumulate(
    X_chunk: NDArray[Any],
    labels: NDArray[np.integer[Any]],
    K: int,
    sqdist: NDArray[np.floating[Any]] | None = None,
) -> Accumulation:
    """Per-cluster sums and counts of one chunk, in float64.

    The rows of each cluster are added in row order, in pieces of
    :data:`ACCUMULATE_ENTRIES` entries, by numba or by ``bincount`` alike, so
    both give the same bits.

    Parameters
    ----------
    X_chunk : ndarray, shape (n, D)
    labels : ndarray of int, shape (n,), values in [0, K)
    K : int
    sqdist : ndarray, shape (n,), optional
        Squared distances from :func:`assign`; their sum is the chunk's inertia.
        Without them the inertia returned is 0.0 (use :func:`partial_step`,
        which passes them).

    Returns
    -------
    sums : ndarray, shape (K, D), float64
    counts : ndarray, shape (K,), int64
    inertia : float
        Sum of ``sqdist`` (0.0 when not given).
    """
    n, d = X_chunk.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    lab = labels.astype(np.int64, copy=False)
    counts = np.bincount(lab, minlength=K).astype(np.int64, copy=False)
    if counts.shape[0] != K:
        raise ValueError(f"labels must be in [0, {K}), got max {int(lab.max())}")
    fast = numba_module("viva_glyph.train._numba")
    # Pieces of ACCUMULATE_ENTRIES entries (a leaf is one piece), each summed in row order
    # from zero and added to the total: the same additions in the same order either way.
    step = max(1, ACCUMULATE_ENTRIES // d)
    sums = np.zeros((K, d), dtype=np.float64)
    cols = np.arange(d, dtype=np.int64)
    for start in range(0, n, step):
        part, part_lab = X_chunk[start : start + step], lab[start : start + step]
        piece: NDArray[Any]
        if fast is not None:  # without the bins and weights temporaries
            piece = np.zeros((K, d), dtype=np.float64)
            fast.accumulate_sums(part, part_lab, piece)
        else:  # one bincount over the piece's entries: entry (i, j) to bin labels[i]*D + j
            bins = (part_lab[:, None] * d + cols).ravel()
            weights = part.astype(np.float64).ravel()
            piece = np.bincount(bins, weights=weights, minlength=K * d).reshape(K, d)
        sums += piece
    inertia = float(np.sum(sqdist, dtype=np.float64)) if sqdist is not None else 0.0
    return sums, counts, inertia


def partial_step(X_chunk: NDArray[Any], centroids: NDArray[Any]) -> Accumulation:
    """:func:`assign` then :func:`accumulate` with the inertia: one worker's Lloyd share."""
    labels, sqdist = assign(X_chunk, centroids)
    return accumulate(X_chunk, labels, centroids.shape[0], sqdist)


def combine(a: Accumulation, b: Accumulation) -> Accumulation:
    """Sum of two partial accumulations (same shapes in, same out)."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def combine_all(*parts: Accumulation) -> Accumulation:
    """:func:`combine` of ``parts`` from left to right (a node of the reduction tree)."""
    return functools.reduce(combine, parts)


def update(
    sums: NDArray[np.float64],
    counts: NDArray[np.int64],
    centroids: NDArray[Any],
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], int]:
    """New centroids: cluster means; empty clusters re-seeded by splitting.

    Each empty cluster takes a copy of the currently largest cluster's mean
    (ties to the lowest index), and the two are pushed apart by a small random
    perturbation (``SPLIT_EPS`` times the centroids' RMS spread); the largest
    cluster's count is halved for the next choice, as FAISS does.

    Parameters
    ----------
    sums : ndarray, shape (K, D), float64
    counts : ndarray, shape (K,), int
    centroids : ndarray, shape (K, D)
        Previous centroids (not modified).
    rng : numpy.random.Generator
        Source of the split perturbations (used only when a cluster is empty).

    Returns
    -------
    new_centroids : ndarray, shape (K, D), float64
    n_empty : int
    """
    new = np.array(centroids, dtype=np.float64, copy=True)
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    empty = np.flatnonzero(~full)
    if empty.size:
        sizes = counts.astype(np.float64)
        spread = float(np.sqrt(np.mean((new[full] - new[full].mean(axis=0)) ** 2)))
        scale = SPLIT_EPS * (spread if spread > 0 else 1.0)
        for e in empty:
            big = int(np.argmax(sizes))
            delta = scale * rng.standard_normal(new.shape[1])
            new[e] = new[big] + delta
            new[big] = new[big] - delta
            sizes[big] /= 2.0
            sizes[e] = sizes[big]
    return new, int(empty.size)
