"""k-means: small pure steps and one Lloyd loop for every executor.

The steps: :func:`assign` (nearest centroid, one GEMM per cache-sized chunk
against the augmented table ``[-2 C^T; ||c||^2]`` of :mod:`viva_glyph.core.nearest`),
:func:`accumulate` (per-cluster float64 sums in row order), :func:`combine`
and :func:`update` (means; an empty cluster re-seeded by splitting the largest).

They compose into ONE Lloyd loop (:func:`lloyd_rows`) and one progressive
k-means (:func:`progressive_kmeans`), written against
:class:`viva_glyph.train.rows.Rows`: a matrix held as *leaves* of a fixed number of
rows (:func:`leaf_rows`, a function of K and D only), with a map over leaves
and a fixed reduction tree. Executors plug in the map and the reduction
(the in-process thread pool, ``viva_glyph.dask``). Every GEMM therefore has the same
shape and every sum the same order whichever executor runs, so the results
are identical (given the same BLAS library and settings) and do not depend
on the thread count.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.nearest import chunk_rows, numba_module
from viva_glyph.threads import single_blas_thread
from viva_glyph.train._kmeans_steps import (
    ASSIGN_BYTES,
    Accumulation,
    accumulate,
    assign,
    combine,
    combine_all,
    partial_step,
    update,
)
from viva_glyph.train.rows import ArrayRows, Rows, add_all

__all__ = [
    "accumulate",
    "assign",
    "combine",
    "combine_all",
    "inertia",
    "kmeans_plus_plus",
    "leaf_rows",
    "lloyd",
    "lloyd_rows",
    "partial_step",
    "progressive_kmeans",
    "update",
]

_log = logging.getLogger(__name__)


#: Relative inertia change under which Lloyd's iterations stop (chosen by
#: ``benchmarks/bench_fit.py --sweep``; see the README's training section).
TOL = 1e-3


#: Most rows of one leaf (see :func:`leaf_rows`).
LEAF_MAX = 4096

#: Rows per centroid drawn for k-means++ seeding and :func:`progressive_kmeans`'s
#: principal axes (Lloyd's iterations then use all rows). Fewer cost held-out
#: error at small D, where the first step is 1-D (``bench_fit.py`` measures it).
SEED_SAMPLES_PER_CODE = 16


def leaf_rows(k: int, d: int) -> int:
    """Rows per leaf for K centroids in D dimensions: one cache-sized distance GEMM."""
    return min(chunk_rows(k, d, 4, ASSIGN_BYTES), LEAF_MAX)


#: Largest Gram matrix (bytes, float64) the numba k-means++ precomputes; above it
#: each pick computes its own products (at most ``DIRECT_DIMS`` dimensions: scalar
#: loops in the kernel; more: one GEMM per pick in numpy).
GRAM_BYTES = 32 << 20
DIRECT_DIMS = 8


def kmeans_plus_plus(sample: NDArray[Any], K: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; ``2 + log K`` trials per pick).

    Each pick draws ``2 + log K`` candidates with probability proportional to
    their squared distance to the nearest pick so far and keeps the one that
    lowers the sum of those distances most (scikit-learn's rule). All random
    draws are made up front (the first pick, then ``(K - 1, trials)`` uniforms),
    so both paths consume the generator alike. With numba (extra ``fast``) the
    whole loop is one compiled call (:func:`viva_glyph.train._numba.plus_plus_kernel`)
    on a Gram matrix of the sample (at most :data:`GRAM_BYTES`) or, in at most
    :data:`DIRECT_DIMS` dimensions, on products it computes itself: a Python
    loop of one small GEMM per pick is mostly call overhead. Else each pick's
    products are one float32 GEMM (half the memory traffic of float64).

    Parameters
    ----------
    sample : ndarray, shape (n, D), n >= K
    K : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (K, D), float64
        Rows of ``sample``; once every point is covered (fewer than K distinct
        points) the remaining picks are uniform, so duplicates can occur.
    """
    x = np.ascontiguousarray(sample, dtype=np.float64)
    n = x.shape[0]
    if n < K:
        raise ValueError(f"k-means++ needs at least K = {K} points, got {n}")
    trials = 2 + int(math.log(K))
    sq = np.einsum("nd,nd->n", x, x)
    first = int(rng.integers(n))
    draws = rng.random((K - 1, trials))
    kernels = numba_module("viva_glyph.train._numba")
    if kernels is not None and (n * n * 8 <= GRAM_BYTES or x.shape[1] <= DIRECT_DIMS):
        gram = x @ x.T if x.shape[1] > DIRECT_DIMS else None
        seeds: NDArray[np.float64] = x[kernels.plus_plus_kernel(x, sq, gram, first, draws)]
        return seeds
    # Products in float32 (half the memory traffic of each pick's GEMM; seeds only need
    # the distances to a few digits), distances and sums in float64; in few dimensions
    # float64, as the kernel (in one dimension both then pick the same seeds). Beyond
    # max |x| in [2^-40, 2^40) the float32 rows are scaled by a power of two to [0.5, 1)
    # and ``two`` scales the products back (exact): |x| ~ 1e20 overflowed float32 (every
    # distance 0) and |x| ~ 1e-30 underflowed (distances ||a||^2 + ||b||^2).
    x32, two = x, 2.0
    if x.shape[1] > DIRECT_DIMS:
        exp = math.frexp(max(float(x.max()), -float(x.min())))[1]  # 0 for 0, inf or NaN
        exp = exp if abs(exp) > 40 else 0
        # (written as float32 directly: no float64 temporary of the sample's size)
        x32 = np.ldexp(x, -exp, out=np.empty(x.shape, np.float32), casting="same_kind")
        two = float(np.ldexp(2.0, 2 * exp))
    picks = np.empty(K, dtype=np.intp)
    picks[0] = first
    products = (x32 @ x32[first]).astype(np.float64)
    closest = np.maximum((sq + sq[first]) - two * products, 0.0)  # the kernel's order
    for c in range(1, K):
        cum = np.cumsum(closest)
        pot = float(cum[-1])
        if pot <= 0.0:  # every point covered: a uniform pick
            picks[c] = min(int(draws[c - 1, 0] * n), n - 1)
            continue
        cand = np.minimum(np.searchsorted(cum, draws[c - 1] * pot, side="right"), n - 1)
        products = (x32 @ x32[cand].T).astype(np.float64)
        d = np.maximum((sq[:, None] + sq[cand]) - two * products, 0.0)
        np.minimum(d, closest[:, None], out=d)
        best = int(np.argmin(np.cumsum(d, axis=0)[-1]))  # summed in row order, as the kernel
        picks[c] = cand[best]
        closest = d[:, best].copy()
    return x[picks]


def _leaf_step(centroids: NDArray[Any], leaf: NDArray[Any]) -> Accumulation:
    """:func:`partial_step` on the leading ``centroids.shape[1]`` columns of a leaf."""
    d = centroids.shape[1]
    return partial_step(leaf if leaf.shape[1] == d else leaf[:, :d], centroids)


def inertia(rows: Rows, centroids: NDArray[Any], dtype: Any = np.float32) -> float:
    """Sum of squared distances of the rows to their nearest centroid (one assignment pass).

    Parameters
    ----------
    rows : Rows, shape (n, w), w >= D
    centroids : ndarray, shape (K, D)
    dtype : float32 or float64
        Distance-search dtype (as :func:`lloyd_rows`).
    """
    step = functools.partial(_leaf_step, np.asarray(centroids).astype(dtype))
    return float(rows.reduce(step, combine_all)[2])


def lloyd_rows(
    rows: Rows,
    init: NDArray[Any],
    *,
    iterations: int,
    tol: float,
    rng: np.random.Generator,
    dtype: Any = np.float32,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[NDArray[np.float64], int, float]:
    """Lloyd's iterations on any executor: the one loop every caller runs.

    Each iteration is one reduction over the leaves (:func:`partial_step`,
    :func:`combine_all`) and one :func:`update`. It stops after ``iterations``
    or when an iteration without empty clusters lowers the inertia by at most
    ``tol`` relative to the iteration before, or when a re-seed gained no
    cluster and no error (its splits held identical rows, which move together).

    Parameters
    ----------
    rows : Rows, shape (n, w), w >= D
        Only the first D = ``init.shape[1]`` columns are used.
    init : ndarray, shape (K, D)
    iterations : int
    tol : float
    rng : numpy.random.Generator
        For the splits of empty clusters.
    dtype : float32 or float64
        Distance-search dtype.
    callback : callable(iteration, inertia), optional

    Returns
    -------
    centroids : ndarray, shape (K, D), float64
        Means of the last assignment's clusters; a cluster it left empty is
        returned where :func:`update` re-seeded it (its split partner stays at
        its mean: rows are never left off their cluster's mean by a split).
    n_iter : int
    inertia : float
        Sum of squared distances of the last assignment.
    """
    cent = np.array(init, dtype=np.float64, copy=True)
    prev = inertia = math.inf
    n_iter = n_empty = 0
    held = -1  # clusters holding rows before the last re-seed (-1: none then)
    for it in range(iterations):
        step = functools.partial(_leaf_step, cent.astype(dtype))
        sums, counts, inertia = rows.reduce(step, combine_all)
        occupied = int(np.count_nonzero(counts))
        # a re-seed that gained no cluster and no error split clusters of identical rows
        futile = held >= 0 and occupied <= held and inertia >= prev
        cent, n_empty = update(sums, counts, cent, rng)
        n_iter = it + 1
        if n_empty:
            _log.debug("k-means iteration %d: re-seeded %d empty clusters", n_iter, n_empty)
        if callback is not None:
            callback(n_iter, inertia)
        if futile or (n_empty == 0 and math.isfinite(prev) and prev - inertia <= tol * prev):
            break
        prev = inertia
        held = occupied if n_empty else -1
    if n_empty:  # the last split moved clusters that hold rows off their means: undo that
        full = counts > 0
        cent[full] = sums[full] / counts[full, None]
    return cent, n_iter, inertia


def lloyd(
    X: NDArray[Any],
    K: int,
    *,
    iterations: int = 25,
    tol: float = TOL,
    rng: np.random.Generator,
    init: NDArray[Any] | None = None,
    seed_samples: int | None = None,
    dtype: Any = np.float32,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[NDArray[np.float64], int, float]:
    """Lloyd's k-means of an in-memory matrix (:func:`lloyd_rows` on :class:`ArrayRows`).

    Parameters
    ----------
    X : ndarray, shape (N, D), N >= K
        A memory map is read leaf by leaf, never loaded whole.
    K : int
    iterations, tol, rng, dtype, callback
        As in :func:`lloyd_rows`.
    init : ndarray, shape (K, D), optional
        Initial centroids; default k-means++ on ``seed_samples`` rows.
    seed_samples : int, optional
        Rows drawn for k-means++ (default ``min(N, SEED_SAMPLES_PER_CODE * K)``).

    Returns
    -------
    centroids : ndarray, shape (K, D), float64
    n_iter : int
    inertia : float
    """
    n, d = X.shape
    if n < K:
        raise ValueError(f"k-means with K = {K} needs at least {K} rows, got {n}")
    if init is None:
        m = min(n, seed_samples if seed_samples is not None else SEED_SAMPLES_PER_CODE * K)
        idx = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
        init = kmeans_plus_plus(np.asarray(X[idx]), K, rng)
    rows = ArrayRows.of(X, leaf_rows(K, d))
    return lloyd_rows(
        rows, init, iterations=iterations, tol=tol, rng=rng, dtype=dtype, callback=callback
    )


#: Number of dimension steps of :func:`progressive_kmeans`.
PROGRESSIVE_STEPS = 10


def _col_sums(leaf: NDArray[Any]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = leaf.sum(axis=0, dtype=np.float64)
    return out


def _rotate(
    mean: NDArray[np.float32], axes: NDArray[np.float32], leaf: NDArray[Any]
) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (leaf - mean) @ axes
    return out


def _random_rows(x: NDArray[Any], k: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """K distinct rows of ``x`` drawn uniformly, in row order, float64."""
    return np.array(x[np.sort(rng.choice(x.shape[0], k, replace=False))], dtype=np.float64)


def progressive_dims(d: int, steps: int) -> list[int]:
    """Widths of the dimension steps: ``round(d**(i/steps))`` for i = 1..steps, distinct."""
    return sorted({max(1, min(d, round(d ** ((i + 1) / steps)))) for i in range(steps)})


def progressive_kmeans(
    rows: Rows,
    k: int,
    iterations: int,
    rng: np.random.Generator,
    *,
    tol: float | None = None,
    steps: int | None = None,
    plus_plus: bool = True,
) -> tuple[NDArray[np.float64], int]:
    """k-means in the principal axes of the rows, on growing leading dimensions.

    FAISS's ``ProgressiveDimClustering``: the rows are rotated to their
    principal axes and clustered on the first ``D**(i/S)`` of them for i = 1..S
    (:func:`progressive_dims`), each step starting from the previous step's
    centroids (new coordinates 0), the first from k-means++ on the first
    step's few axes (k-means++ in all D dimensions favours outliers of the
    Gaussian-like residuals of later stages, whose tiny clusters fit the
    training rows but not new data). Coarse structure is settled on the
    high-variance axes first, which finds better optima than one full-D run.

    The axes and the seeds come from one sample of
    :data:`SEED_SAMPLES_PER_CODE` rows per centroid (the mean from all rows);
    only the axes of the steps before the last are computed for all rows, and
    the last step (all D dimensions, where a rotation changes no distance)
    runs on the rows as they are. Every pass over the data is a map or a
    reduction of ``rows`` and the sample is read by ``rows.take``, so any
    executor runs the same arithmetic.

    Parameters
    ----------
    rows : Rows, shape (n, D), float32, n >= k
    k : int
    iterations : int
        Most Lloyd iterations per dimension step.
    rng : numpy.random.Generator
    tol : float, optional
        Relative inertia change that ends a step early (default :data:`TOL`).
    steps : int, optional
        Dimension steps (default :data:`PROGRESSIVE_STEPS`).
    plus_plus : bool
        Seed by k-means++ (default) or, when False, by K distinct random rows
        of the sample (FAISS's seeding; better for beam-aware training, where
        k-means++ spreads the seeds over outliers; ``bench_fit.py`` measures it).
        A first step in one dimension (D < 58 at 10 steps) is always seeded
        by k-means++: there Lloyd cannot move centroids past each other, and
        random seeds cost held-out error.

    Returns
    -------
    centroids : ndarray, shape (K, D), float64
    iterations : int
        Lloyd iterations run in all steps together.
    """
    n, d = rows.shape
    tol = TOL if tol is None else tol
    dims = progressive_dims(d, PROGRESSIVE_STEPS if steps is None else steps)
    mean = rows.reduce(_col_sums, add_all) / n
    mean32 = mean.astype(np.float32)
    m = min(n, SEED_SAMPLES_PER_CODE * k)
    pick = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
    sample = np.asarray(rows.take(pick), dtype=np.float32) - mean32
    if plus_plus or dims[0] == 1:  # in 1-D Lloyd cannot move centroids past each other
        seed = functools.partial(kmeans_plus_plus, K=k, rng=rng)
    else:
        seed = functools.partial(_random_rows, k=k, rng=rng)
    total = 0
    if len(dims) == 1:
        with single_blas_thread():
            cent = seed(sample) + mean
    else:
        with single_blas_thread():
            gram = (sample.T @ sample).astype(np.float64)  # the axes only: float32 is plenty
            _, vecs = np.linalg.eigh(gram / m)
            rot = np.ascontiguousarray(vecs[:, ::-1][:, : dims[-2]])  # largest variance first
            rot32 = rot.astype(np.float32)
            cent = seed(sample @ rot32[:, : dims[0]])
        xr = rows.map(functools.partial(_rotate, mean32, rot32), dims[-2])
        for di in dims[:-1]:
            init = np.zeros((k, di))
            init[:, : cent.shape[1]] = cent
            cent, it, _ = lloyd_rows(xr, init, iterations=iterations, tol=tol, rng=rng)
            total += it
        cent = cent @ rot.T + mean  # back to the rows' coordinates
    cent, it, _ = lloyd_rows(rows, cent, iterations=iterations, tol=tol, rng=rng)
    return cent, total + it
