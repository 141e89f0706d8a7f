"""Training the level codebooks of a semantic-ID model.

Level 0 (the first token: the coarse partition that embedding neighbours
should share) is a k-means run to convergence in all dimensions
(:func:`viva_glyph.train.kmeans.lloyd`: greedy k-means++ seeding on at most
``SEED_SAMPLES_PER_CODE * K`` rows, one BLAS thread: its products are small,
and Lloyd's iterations on all rows) until one lowers
the inertia by at most :data:`TOL` relative (at most :data:`ITERATIONS`), as
``semantic-id``'s RQ-KMeans does with scikit-learn. Every later level is
trained twice, by that (on :data:`COMPARE_SAMPLES_PER_CODE` rows per code)
and by the core's progressive-dimension k-means
(:func:`viva_glyph.train.kmeans.progressive_kmeans`, as :func:`viva_glyph.fit`
trains a stage), keeps the centroids with the lower squared error on all the
level's residuals and polishes them by Lloyd's iterations on all of them to
:data:`POLISH_TOL` (the progressive k-means stops at the core's 1e-3, short
of a converged k-means' error). Why both (``benchmarks/bench_semantic_ids.py``
measures them): at level 0 the progressive k-means splits dense topic clusters
between codes, so embedding neighbours share fewer first tokens, while at later
levels, whose residuals are Gaussian-like, full-dimension k-means++ seeds on
outliers and can put nearly every row on one code (one ID for all); on real
data the converged k-means is the lower at the first levels.
``beam_size > 1`` keeps the core fit (beam-aware training).

With ``balance``, a few Lloyd rounds whose assignment step is
capacity-constrained (:func:`viva_glyph.semantic._balance.balanced_assign`)
follow each level's k-means, so every level's clusters on the training rows
hold at most ``capacity(N, K, balance)`` rows. With ``normalize`` (GRID's
``normalize_residuals``), every level after the first clusters unit-length
residuals (see :mod:`viva_glyph.semantic._levels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.codebook import Codebook
from viva_glyph.semantic._balance import balanced_assign, capacity
from viva_glyph.semantic._levels import unit_rows
from viva_glyph.threads import single_blas_thread
from viva_glyph.train import ITERATIONS as PROGRESSIVE_ITERATIONS
from viva_glyph.train.kmeans import inertia, leaf_rows, lloyd, lloyd_rows, progressive_kmeans
from viva_glyph.train.rows import ArrayRows

__all__ = ["BALANCED_ROUNDS", "ITERATIONS", "SAMPLES_PER_CODE", "TOL", "train_levels"]

#: Lloyd rounds with the capacity-constrained assignment after the k-means of a level.
BALANCED_ROUNDS = 4
#: Training rows per code (as :func:`viva_glyph.fit`).
SAMPLES_PER_CODE = 256
#: Most Lloyd iterations of level 0's k-means (semantic-id's max_iter).
ITERATIONS = 100
#: Relative inertia change that ends a level's k-means.
TOL = 1e-4
#: Rows per code of the converged k-means that competes with the progressive one
#: at levels after the first (both are then scored on all rows).
COMPARE_SAMPLES_PER_CODE = 16
#: Relative inertia change that ends the Lloyd iterations on all rows after a later
#: level's choice (the progressive k-means stops at the core's 1e-3).
POLISH_TOL = 5e-5
_TINY = float(np.finfo(np.float64).tiny)


def level_kmeans(
    x: NDArray[np.float32], k: int, rng: np.random.Generator, level: int
) -> NDArray[np.float64]:
    """Centroids (k, D) of one level.

    Level 0: k-means++ and Lloyd to convergence in all dimensions. Later
    levels: that (on at most :data:`COMPARE_SAMPLES_PER_CODE` rows per code)
    and the core's progressive k-means, keeping the one with the lower squared
    error on all of ``x``.
    """
    if level == 0:
        return _converged(x, k, rng)
    rows = ArrayRows.of(x, leaf_rows(k, x.shape[1]))
    full = _converged(_sample(x, COMPARE_SAMPLES_PER_CODE * k, rng), k, rng)
    prog, _ = progressive_kmeans(rows, k, PROGRESSIVE_ITERATIONS, rng)
    best = prog if inertia(rows, prog) < inertia(rows, full) else full
    cent, _, _ = lloyd_rows(rows, best, iterations=ITERATIONS, tol=POLISH_TOL, rng=rng)
    return cent


def _sample(x: NDArray[np.float32], m: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """At most m rows of x drawn without replacement, in row order."""
    n = x.shape[0]
    return x[np.sort(rng.choice(n, m, replace=False))] if m < n else x


def _converged(x: NDArray[np.float32], k: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """:func:`viva_glyph.train.kmeans.lloyd` to convergence (k-means++ on a sample, then Lloyd
    on all of x) on one BLAS thread (the seeding's products are small; Lloyd's leaf
    steps hold BLAS to one thread anyway): centroids (k, D)."""
    with single_blas_thread():
        cent, _, _ = lloyd(x, k, iterations=ITERATIONS, tol=TOL, rng=rng)
    return cent


def train_levels(
    x: NDArray[np.float32],
    sizes: tuple[int, ...],
    balance: float | None,
    rng: np.random.Generator,
    bar: Any = None,
    *,
    normalize: bool = False,
) -> tuple[list[Codebook], list[float], list[int], list[float]]:
    """Level-by-level residual k-means (balanced when ``balance`` is set).

    Parameters
    ----------
    x : ndarray, shape (N, D), float32
        Training rows (already sampled and, for cosine, unit-normalised).
    sizes : tuple of int
        Codebook size of each level.
    balance : float or None
    rng : numpy Generator
    bar : tqdm bar or None
    normalize : bool
        Scale every level's input residuals (after the first level) to unit length.

    Returns
    -------
    books : list of Codebook (float32)
    errors : list of float
        Training MSE per component after each level (of the level's own
        residuals: with ``normalize``, relative to the unit-length input).
    largest : list of int
        Largest cluster of each level on the training rows.
    scales : list of float
        Mean norm of each level's input residuals before normalising (1.0 for
        level 0, and for every level without ``normalize``; at least the
        smallest positive normal float, where every residual is zero).
    """
    residual = x.astype(np.float64)
    books: list[Codebook] = []
    errors: list[float] = []
    largest: list[int] = []
    scales: list[float] = []
    n = x.shape[0]
    for level, k in enumerate(sizes):
        if normalize and level > 0:
            residual, norms = unit_rows(residual)
            # where every residual is zero, the smallest positive normal float (the model
            # holds positive scales): the later levels then add nothing, as measured
            scales.append(max(float(norms.mean()), _TINY))
        else:
            scales.append(1.0)
        cent = level_kmeans(residual.astype(np.float32), k, rng, level)
        if balance is None:
            book = Codebook(cent, dtype=np.float32)
            labels, _ = book.nearest_batch(residual)
        else:
            cap = capacity(n, k, balance)
            for _ in range(BALANCED_ROUNDS):
                labels = balanced_assign(residual, cent, cap)
                cent = _means(residual, labels, cent)
            book = Codebook(cent, dtype=np.float32)
            labels = balanced_assign(residual, book.vectors64, cap)
        residual -= book.vectors64[labels]
        books.append(book)
        errors.append(float(np.einsum("nd,nd->n", residual, residual).mean()) / x.shape[1])
        largest.append(int(np.bincount(labels, minlength=k).max()))
        if bar is not None:
            bar.update(1)
    return books, errors, largest, scales


def _means(
    x: NDArray[np.float64], labels: NDArray[np.intp], old: NDArray[Any]
) -> NDArray[np.float64]:
    """Cluster means; an empty cluster keeps its old centroid."""
    k = old.shape[0]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    _add(sums, labels, x)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    out = np.array(old, dtype=np.float64, copy=True)
    full = counts > 0
    out[full] = sums[full] / counts[full, None]
    return out


def _add(sums: NDArray[np.float64], labels: NDArray[np.intp], x: NDArray[np.float64]) -> None:
    """``sums[labels] += x`` by one sort and a segment sum (faster than ``np.add.at``)."""
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    bounds = np.flatnonzero(np.diff(lab)) + 1
    starts = np.concatenate(([0], bounds))
    sums[lab[starts]] += np.add.reduceat(x[order], starts, axis=0)
