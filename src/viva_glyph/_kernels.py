"""Nearest-code search kernels shared by the codebook, the encoders and training.

The squared distance ``||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2`` is found for a
whole chunk of rows with one GEMM: residual rows carry an extra column of ones
and the codebook is stored as the augmented matrix ``[-2 C^T ; ||c||^2]`` of
shape (D + 1, K), so ``R_aug @ T`` gives ``||c||^2 - 2 r.c`` directly (the
row-constant ``||r||^2`` cannot change the argmin). ``np.argmin`` keeps the
first of equal values, so ties go to the lowest index.

In float32 that expansion can misorder codes whose distances differ by less
than its rounding error, which matters when the residual is small next to the
code norms. :func:`refine_near_ties` re-decides exactly those rows in float64,
so every choice is the true minimum up to a relative 1e-5.

:func:`numba_kernels` hands out the optional numba kernels (:mod:`viva_glyph._numba`).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CHUNK_BYTES",
    "augmented_table",
    "chunk_rows",
    "code_dtype",
    "nearest_into",
    "numba_kernels",
    "refine_near_ties",
]

#: Working-set size a chunk of distance computations aims for (fits in L2/L3).
CHUNK_BYTES = 4 << 20


def code_dtype(codebook_size: int) -> np.dtype[Any]:
    """Smallest code dtype for K codes: uint8 up to 256, uint16 up to 65536, else int32."""
    if codebook_size <= 1 << 8:
        return np.dtype(np.uint8)
    if codebook_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def numba_kernels(backend: str = "auto") -> ModuleType | None:
    """The numba kernels module (:mod:`viva_glyph._numba`), or None for numpy.

    ``backend`` "auto" uses numba when it imports (set the environment variable
    ``VIVA_GLYPH_NUMBA=0`` to turn it off), "numpy" never, "numba" always
    (ImportError without numba).
    """
    if backend not in ("auto", "numpy", "numba"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', got {backend!r}")
    if backend == "numpy" or (backend == "auto" and os.environ.get("VIVA_GLYPH_NUMBA") == "0"):
        return None
    try:
        from viva_glyph import _numba
    except ImportError:
        if backend == "numba":
            raise
        return None
    return _numba


def chunk_rows(codebook_size: int, dimension: int, itemsize: int, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that distances and residuals of a chunk take about ``budget`` bytes."""
    per_row = (codebook_size + dimension + 1) * itemsize
    return int(min(max(budget // per_row, 64), 1 << 16))


def augmented_table(vectors: NDArray[np.floating[Any]]) -> NDArray[np.floating[Any]]:
    """Return ``[-2 C^T ; ||c||^2]`` of shape (D + 1, K) in the codebook's dtype.

    Parameters
    ----------
    vectors : ndarray, shape (K, D), float32 or float64
    """
    k, d = vectors.shape
    table = np.empty((d + 1, k), dtype=vectors.dtype)
    np.multiply(vectors.T, -2, out=table[:d])
    table[d] = np.einsum("kd,kd->k", vectors.astype(np.float64), vectors.astype(np.float64))
    return table


def nearest_into(
    rows_aug: NDArray[np.floating[Any]],
    table: NDArray[np.floating[Any]],
    work: NDArray[np.floating[Any]],
) -> NDArray[np.intp]:
    """Index of the nearest code for each row (ties to the lowest index).

    Parameters
    ----------
    rows_aug : ndarray, shape (n, D + 1)
        Rows with a last column of ones.
    table : ndarray, shape (D + 1, K)
        From :func:`augmented_table`, same dtype as ``rows_aug``.
    work : ndarray, shape (n, K)
        Scratch buffer; on return holds ``||c||^2 - 2 r.c`` for every pair.

    Returns
    -------
    ndarray, shape (n,), intp
    """
    np.matmul(rows_aug, table, out=work)
    idx: NDArray[np.intp] = work.argmin(axis=1)
    return idx


#: Relative accuracy every float32 choice is held to before it is re-decided in float64.
RELATIVE_ACCURACY = 1e-5


def refine_near_ties(
    work: NDArray[np.floating[Any]],
    idx: NDArray[np.intp],
    residual: NDArray[np.float64],
    vectors: NDArray[np.float64],
    code_norms: NDArray[np.float64],
) -> None:
    """Re-decide in float64 the rows whose float32 minimum is within rounding error.

    With unit roundoff u, each ``work[i, j]`` is typically within
    ``b_j = sqrt(D + 2) u (||c_j||^2 + 2 ||r|| ||c_j||)`` of its exact value (the
    float32 rounding of the residual included; rounding errors of a dot product
    grow like sqrt(D), the worst case like D, which would send nearly every
    128-D row to float64 for no change). Any code truly nearer than the
    chosen q satisfies ``||c_j|| <= ||r|| + sqrt(d_q)``, which bounds ``b_j``;
    so a code can beat q only if ``work[i, j] <= work[i, q] + b_q + b_j``. Rows
    where ``b_q + b_j`` is below ``RELATIVE_ACCURACY`` times the distance keep q;
    in the others every code under that bound is compared exactly in float64,
    ties to the lowest index.

    Parameters
    ----------
    work : ndarray, shape (n, K), float32
        ``||c||^2 - 2 r.c`` as left by :func:`nearest_into`.
    idx : ndarray, shape (n,), intp
        Its argmin; corrected in place.
    residual : ndarray, shape (n, D), float64
        The exact rows.
    vectors : ndarray, shape (K, D), float64
        The codebook.
    code_norms : ndarray, shape (K,), float64
        ``||c||`` of every entry.
    """
    n, dim = residual.shape
    gamma = np.sqrt(dim + 2) * float(np.finfo(np.float32).eps) / 2
    r_norm = np.sqrt(np.einsum("nd,nd->n", residual, residual))
    c_norm = code_norms[idx]
    chosen_slack = gamma * c_norm * (c_norm + 2.0 * r_norm)
    best = work[np.arange(n), idx].astype(np.float64)
    dist_hi = np.maximum(best + r_norm**2 + chosen_slack, 0.0)
    c_bound = r_norm + np.sqrt(dist_hi)
    slack = chosen_slack + gamma * c_bound * (c_bound + 2.0 * r_norm)
    loose = slack > RELATIVE_ACCURACY * dist_hi
    if not loose.any():
        return
    bound = np.where(loose, best + slack, -np.inf).astype(work.dtype)
    near = work <= bound[:, None]
    rows = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
    if rows.size == 0:
        return
    pair_row, pair_code = np.nonzero(near[rows])
    diff = residual[rows[pair_row]] - vectors[pair_code]
    dist = np.einsum("pd,pd->p", diff, diff)
    order = np.lexsort((pair_code, dist, pair_row))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_row[order][1:] != pair_row[order][:-1]
    idx[rows[pair_row[order][first]]] = pair_code[order][first]
