"""Nearest-code search kernels shared by the codebook, the encoders and training.

The squared distance ``||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2`` is found for a
whole chunk of rows with one GEMM: residual rows carry an extra column of ones
and the codebook is stored as the augmented matrix ``[-2 C^T ; ||c||^2]`` of
shape (D + 1, K), so ``R_aug @ T`` gives ``||c||^2 - 2 r.c`` directly (the
row-constant ``||r||^2`` cannot change the argmin). ``np.argmin`` keeps the
first of equal values, so ties go to the lowest index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["CHUNK_BYTES", "augmented_table", "chunk_rows", "code_dtype", "nearest_into"]

#: Working-set size a chunk of distance computations aims for (fits in L2/L3).
CHUNK_BYTES = 4 << 20


def code_dtype(codebook_size: int) -> np.dtype[Any]:
    """Smallest code dtype for K codes: uint8 up to 256, uint16 up to 65536, else int32."""
    if codebook_size <= 1 << 8:
        return np.dtype(np.uint8)
    if codebook_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


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
    return work.argmin(axis=1)
