"""Training the level codebooks of a semantic-ID model.

Equal codebook sizes without balance use :func:`viva_glyph.fit` (residual
k-means, beam-aware when ``beam_size > 1``). Per-level sizes or a ``balance``
bound train level after level here: the k-means of each level's residuals is
a one-stage :func:`viva_glyph.fit`, then, with ``balance``, a few
Lloyd rounds whose assignment step is capacity-constrained
(:func:`viva_glyph.semantic._balance.balanced_assign`), so every level's
clusters on the training rows hold at most ``capacity(N, K, balance)`` rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.codebook import Codebook
from viva_glyph.semantic._balance import balanced_assign, capacity
from viva_glyph.training import fit as rvq_fit

__all__ = ["BALANCED_ROUNDS", "SAMPLES_PER_CODE", "train_levels"]

#: Lloyd rounds with the capacity-constrained assignment after the k-means of a level.
BALANCED_ROUNDS = 4
#: Training rows per code (as :func:`viva_glyph.fit`).
SAMPLES_PER_CODE = 256


def train_levels(
    x: NDArray[np.float32],
    sizes: tuple[int, ...],
    balance: float | None,
    rng: np.random.Generator,
    bar: Any = None,
) -> tuple[list[Codebook], list[float], list[int]]:
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

    Returns
    -------
    books : list of Codebook (float32)
    errors : list of float
        Training MSE per component (mean ``(x - x')**2``) after each level.
    largest : list of int
        Largest cluster of each level on the training rows.
    """
    residual = x.astype(np.float64)
    books: list[Codebook] = []
    errors: list[float] = []
    largest: list[int] = []
    n = x.shape[0]
    for k in sizes:
        seed = int(rng.integers(1 << 31))
        first = rvq_fit(residual.astype(np.float32), num_stages=1, codebook_size=k, seed=seed)
        cent = first.codebooks[0].vectors64
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
    return books, errors, largest


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
