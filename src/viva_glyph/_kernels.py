"""Nearest-code search kernels shared by the codebook, the encoders and training.

The squared distance ``||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2`` is found for a
whole chunk of rows with one GEMM: residual rows carry an extra column of ones
and the codebook is stored as the augmented matrix ``[-2 C^T ; ||c||^2]`` of
shape (D + 1, K), so ``R_aug @ T`` gives ``||c||^2 - 2 r.c`` directly (the
row-constant ``||r||^2`` cannot change the argmin). ``np.argmin`` keeps the
first of equal values, so ties go to the lowest index.

In float32 that expansion can misorder codes whose distances differ by less
than its rounding error, which matters when the residual is small next to the
code norms.
:func:`greedy_pick` is the decision of one greedy stage (the beam engine at
B = 1): the float32 argmin is kept where a rigorous bound on the GEMM's
rounding (valid for any summation order, so for any BLAS kernel) shows no
other code can be as near, and re-decided in float64 otherwise. Its numba
twin is :func:`viva_glyph._numba.greedy_pick_kernel`.

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
    "greedy_pick",
    "nearest_into",
    "norm_limit",
    "numba_kernels",
    "rounding_factor",
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


def norm_limit(dtype: Any) -> float:
    """Largest vector norm the compute dtype accepts: ``sqrt(finfo.max) / 4``.

    With ``||r||, ||c||`` at most this, every term of ``||c||^2 - 2 r.c`` and of
    ``||r - c||^2`` stays below ``finfo.max / 4``, so no distance overflows.
    About 4.6e18 for float32 and 3.4e153 for float64.
    """
    return float(np.sqrt(np.finfo(np.dtype(dtype)).max)) / 4.0


def over_norm_limit(rows64: NDArray[np.float64], dtype: Any) -> tuple[int, float, float] | None:
    """The first row of ``rows64`` (N, D) whose norm exceeds :func:`norm_limit` of
    ``dtype`` (NaN counts), as ``(row, norm, limit)``, or None."""
    limit = norm_limit(dtype)
    norms = np.sqrt(np.einsum("nd,nd->n", rows64, rows64))
    bad = np.flatnonzero(~(norms <= limit))
    return (int(bad[0]), float(norms[bad[0]]), limit) if bad.size else None


def rounding_factor(dimension: int, dtype: Any) -> float:
    """``gamma = n u / (1 - n u)`` with ``n = D + 5``: the worst-case relative error of
    ``||c||^2 - 2 r.c`` in ``dtype`` (D + 1 products in any order, plus the rounding
    of r, of c when shifted and of ``||c||^2``, and a unit to spare), in units of
    ``||c||^2 + 2 ||r|| ||c||`` (Higham, "Accuracy and Stability", section 3.1)."""
    nu = (dimension + 5) * float(np.finfo(np.dtype(dtype)).eps) / 2
    return nu / (1.0 - nu)


def greedy_pick(
    scores: NDArray[np.floating[Any]],
    exact: NDArray[np.float64],
    norm2: NDArray[np.float64],
    vectors: NDArray[np.float64],
    norms: NDArray[np.float64],
    gamma: float,
    out_exact: NDArray[np.float64],
    out_norm2: NDArray[np.float64],
) -> NDArray[np.intp]:
    """One greedy stage's choices and the residuals they leave (numpy path).

    Each ``scores[i, j]`` lies within ``e_j = gamma ||c_j|| (||c_j|| + 2 ||r_i||)`` of
    the exact ``||c_j||^2 - 2 r_i.c_j``. A code truly as near as the float argmin q
    has ``||c_j|| <= ||r|| + sqrt(d_q)`` (triangle inequality), hence
    ``scores[i, j] <= thr = scores[i, q] + e_q + e(||r|| + sqrt(d_q))``. Rows where q
    is the only code under ``thr`` keep q (it is the exact nearest); in the others
    every code under ``thr`` is compared in float64, ties to the lowest index.

    Parameters
    ----------
    scores : ndarray, shape (n, K), float32 or float64
        ``||c||^2 - 2 r.c`` from the GEMM of the rounded residuals.
    exact : ndarray, shape (n, D), float64
        The residuals r.
    norm2 : ndarray, shape (n,), float64
        ``||r||^2``.
    vectors : ndarray, shape (K, D), float64
    norms : ndarray, shape (K,), float64
        ``||c||``.
    gamma : float
        :func:`rounding_factor` of D and the scores' dtype.
    out_exact : ndarray, shape (n, D), float64
        Receives ``r - c_q``.
    out_norm2 : ndarray, shape (n,), float64
        Receives ``||r - c_q||^2``.

    Returns
    -------
    ndarray, shape (n,), intp
        The chosen codes.
    """
    n = scores.shape[0]
    q: NDArray[np.intp] = scores.argmin(axis=1)
    best = scores[np.arange(n), q].astype(np.float64)
    r_norm = np.sqrt(norm2)
    c_norm = norms[q]
    chosen = gamma * c_norm * (c_norm + 2.0 * r_norm)
    c_bound = r_norm + np.sqrt(np.maximum(best + norm2 + chosen, 0.0))
    thr = best + chosen + gamma * c_bound * (c_bound + 2.0 * r_norm)
    if scores.dtype != np.float64:  # the smallest value of the scores' dtype >= thr
        low = thr.astype(scores.dtype)
        thr = np.where(low < thr, np.nextafter(low, np.inf), low)
    near = scores <= thr[:, None]
    rows = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
    if rows.size:
        pair_row, pair_code = np.nonzero(near[rows])
        diff = exact[rows[pair_row]] - vectors[pair_code]
        dist = np.einsum("pd,pd->p", diff, diff)
        order = np.lexsort((pair_code, dist, pair_row))
        first = np.ones(order.size, dtype=bool)
        first[1:] = pair_row[order][1:] != pair_row[order][:-1]
        q[rows[pair_row[order][first]]] = pair_code[order][first]
    np.subtract(exact, vectors[q], out=out_exact)
    np.einsum("nd,nd->n", out_exact, out_exact, out=out_norm2)
    return q
