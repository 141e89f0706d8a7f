"""Greedy level-by-level encoding and decoding, with optional residual normalisation.

Plain residual quantization: level l's code is the nearest entry of codebook l
to what levels 0..l-1 leave over, and the reconstruction is the sum of the
chosen entries.

With ``normalize`` (GRID's ``normalize_residuals``), the residual is scaled to
unit length before every level after the first, so every level clusters
directions: ``r_0 = x``, ``c_l = nearest(C_l, u_l)`` with ``u_0 = r_0`` and
``u_l = r_l / ||r_l||`` (a zero residual stays zero), ``r_{l+1} = u_l -
C_l[c_l]``. The codes do not keep the norms, so the reconstruction uses the
mean norm ``s_l`` of each level's input residuals measured in training:
``x' = sum_l F_l C_l[c_l]`` with ``F_0 = 1`` and ``F_l = F_{l-1} s_l``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.search import greedy

__all__ = [
    "decode_levels",
    "encode_levels",
    "last_input",
    "level_factors",
    "row_norms",
    "unit_rows",
]


def row_norms(r: NDArray[np.float64]) -> NDArray[np.float64]:
    """Euclidean norms (N,) of rows (N, D) float64, without overflow or underflow.

    A row whose largest entry is beyond 2^+-500 is scaled by a power of two for its
    sum of squares (exact): squared, 1e200 overflows and 1e-200 underflows to 0.
    """
    exp = np.frexp(np.abs(r).max(axis=1, initial=0.0))[1]
    far = np.abs(exp) > 500
    if not far.any():
        norms: NDArray[np.float64] = np.sqrt(np.einsum("nd,nd->n", r, r))
        return norms
    shift = np.where(far, exp, 0)
    scaled = np.ldexp(r, -shift[:, None])
    out: NDArray[np.float64] = np.ldexp(np.sqrt(np.einsum("nd,nd->n", scaled, scaled)), shift)
    return out


def unit_rows(r: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Rows scaled to unit length (zero rows stay zero) and the norms (float64)."""
    norms = row_norms(r)
    safe = np.where(norms > 0, norms, 1.0)
    out: NDArray[np.float64] = r / safe[:, None]
    return out, norms


def level_factors(scales: Sequence[float] | None, levels: int) -> NDArray[np.float64]:
    """``F_l``: 1 for every level without normalisation, else the running product of scales."""
    if scales is None:
        ones: NDArray[np.float64] = np.ones(levels, dtype=np.float64)
        return ones
    out: NDArray[np.float64] = np.cumprod(np.asarray(scales, dtype=np.float64), dtype=np.float64)
    return out


def encode_levels(
    x: NDArray[Any], books: Sequence[Codebook], scales: Sequence[float] | None
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Greedy codes of rows x: the core's residual loop (:func:`viva_glyph.core.search.greedy`),
    with the residual scaled to unit length before every level after the first when
    ``scales`` is given.

    Parameters
    ----------
    x : ndarray, shape (n, D)
    books : sequence of Codebook
    scales : sequence of float, or None
        Mean residual norms per level when residuals are normalised, else None.

    Returns
    -------
    codes : ndarray, shape (n, L), intp
    sqerr : ndarray, shape (n,), float64
        Squared distance of x to :func:`decode_levels` of the codes.
    """
    rescale = None if scales is None else (lambda r: unit_rows(r)[0])
    codes, residual = greedy(x, books, rescale=rescale)
    if scales is None:
        return codes, residual.sq_errors()
    diff = np.asarray(x, dtype=np.float64) - decode_levels(codes, books, scales)
    return codes, np.einsum("nd,nd->n", diff, diff)


def last_input(
    x: NDArray[Any], prefix: NDArray[Any], books: Sequence[Codebook], scales: Sequence[float] | None
) -> NDArray[np.float64]:
    """What the last level encodes for rows x whose first L-1 codes are ``prefix`` (n, L-1).

    The residual after those codes, scaled to unit length with ``scales``.
    """
    residual = np.array(x, dtype=np.float64)
    for level in range(len(books)):
        if scales is not None and level > 0:
            residual, _ = unit_rows(residual)
        if level == len(books) - 1:
            break
        residual -= books[level].vectors64[np.asarray(prefix[:, level], dtype=np.intp)]
    return residual


def decode_levels(
    codes: NDArray[np.intp], books: Sequence[Codebook], scales: Sequence[float] | None
) -> NDArray[np.float64]:
    """Reconstructions (n, D) float64 of codes (n, m), m <= L: the first m levels."""
    factors = level_factors(scales, len(books))
    out = np.zeros((codes.shape[0], books[0].dimension), dtype=np.float64)
    for level in range(codes.shape[1]):
        out += factors[level] * books[level].vectors64[codes[:, level]]
    return out
