"""Codebook refinement: joint least squares of all codebooks given the codes.

After stage-wise training each codebook was fitted to the residual of the
stages before it only. Refinement alternates (beam) encoding with the joint
least-squares update of all codebooks at once for fixed codes, and keeps the
iterate with the lowest error on held-out rows, so it never makes that error
worse (FAISS's ``Train_refine_codebook`` without selection overfits).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core import Codebook
from viva_glyph.train._rounds import beam_codes
from viva_glyph.train.kmeans import accumulate

__all__ = ["REFINE_RIDGE", "lsq_codebooks", "refine_codebooks"]

_log = logging.getLogger(__name__)

#: Ridge weight pulling each refined codeword towards its previous value.
REFINE_RIDGE = 1.0


def _mse(books: list[Codebook], x: NDArray[Any], codes: NDArray[Any]) -> float:
    """Mean squared error per component of ``x`` coded as ``codes`` with ``books``."""
    diff = x.astype(np.float64)
    for m, book in enumerate(books):
        diff -= book.vectors[codes[:, m]]
    return float(np.einsum("nd,nd->", diff, diff) / diff.size)


def lsq_codebooks(
    x: NDArray[Any], codes: NDArray[Any], previous: NDArray[Any], ridge: float = REFINE_RIDGE
) -> NDArray[np.float64]:
    """Joint least-squares codebooks for fixed codes.

    Minimizes ``sum_i ||x_i - sum_m C_m[codes[i, m]]||^2 + ridge ||C - previous||^2``
    over all codebooks at once (normal equations of the one-hot design, solved
    in float64). The ridge term fixes the directions the data leave free (an
    offset moved between stages, unused codes), which keep their old values.

    Parameters
    ----------
    x : ndarray, shape (n, D)
    codes : ndarray of int, shape (n, M)
    previous : ndarray, shape (M, K, D)
    ridge : float, > 0

    Returns
    -------
    ndarray, shape (M, K, D), float64
    """
    m, k, d = previous.shape
    gram = np.zeros((m * k, m * k), dtype=np.float64)
    rhs = np.empty((m * k, d), dtype=np.float64)
    lab = codes.astype(np.int64)
    for a in range(m):
        sums, counts, _ = accumulate(x, lab[:, a], k)
        rhs[a * k : (a + 1) * k] = sums
        gram[a * k : (a + 1) * k, a * k : (a + 1) * k] = np.diag(counts.astype(np.float64))
        for b in range(a + 1, m):
            co = np.bincount(lab[:, a] * k + lab[:, b], minlength=k * k).reshape(k, k)
            gram[a * k : (a + 1) * k, b * k : (b + 1) * k] = co
            gram[b * k : (b + 1) * k, a * k : (a + 1) * k] = co.T
    gram[np.diag_indices_from(gram)] += ridge
    rhs += ridge * previous.reshape(m * k, d)
    sol: NDArray[np.float64] = np.linalg.solve(gram, rhs).reshape(m, k, d)
    return sol


def refine_codebooks(
    books: list[Codebook],
    xt: NDArray[np.float32],
    codes_t: NDArray[Any],
    xh: NDArray[np.float32],
    beam: int,
    rounds: int,
    bar: Any,
) -> tuple[list[Codebook], list[float], int]:
    """Alternate LSQ codebook updates on ``xt`` and beam encoding; keep the best on ``xh``.

    Parameters
    ----------
    books : list of Codebook
        Stage-wise codebooks (iterate 0).
    xt : ndarray, shape (n, D), float32
        Training rows, with ``codes_t`` (n, M) their codes under ``books``.
    xh : ndarray, shape (h, D), float32
        Held-out rows, for the selection only.
    beam : int
        Beam of the encodings.
    rounds : int
        LSQ updates.
    bar : tqdm bar or None

    Returns
    -------
    books : list of Codebook
        The iterate with the lowest held-out MSE.
    errors : list of float
        Held-out MSE per component of iterate 0, 1, ..., rounds.
    selected : int
        Index of the kept iterate.
    """
    errors = [_mse(books, xh, beam_codes(books, xh, beam))]
    best, best_books = 0, books
    current = books
    for r in range(1, rounds + 1):
        stack = np.stack([b.vectors for b in current]).astype(np.float64)
        new = lsq_codebooks(xt, codes_t, stack)
        current = [Codebook(v, dtype=np.float32) for v in new]
        err = _mse(current, xh, beam_codes(current, xh, beam))
        errors.append(err)
        _log.info(
            "refinement %d/%d: held-out MSE %.6g per component (before: %.6g)",
            r,
            rounds,
            err,
            errors[0],
        )
        if err < errors[best]:
            best, best_books = r, current
        if bar is not None:
            bar.update(1)
        if r < rounds:
            codes_t = beam_codes(current, xt, beam)
    return best_books, errors, best
