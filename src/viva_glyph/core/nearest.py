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
:func:`greedy_pick` decides one stage exactly for rows given in float64: the
float32 argmin is kept where a rigorous bound on the GEMM's rounding (valid for
any summation order, so for any BLAS kernel) shows no other code can be as
near, and re-decided in float64 otherwise. The engine's greedy step (the beam
engine at B = 1) keeps its residual in the compute dtype instead and widens the
bound by how far that residual may have drifted from the exact one
(:func:`running_candidates`, :func:`running_update`, numba twin
:func:`viva_glyph.core._numba.greedy_running_kernel`); the rows left in doubt are
decided in float64 (:func:`float64_choice`) on the exact residual.

:func:`numba_kernels` hands out the optional numba kernels (:mod:`viva_glyph.core._numba`).
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
    "float64_choice",
    "float64_tie_slack",
    "greedy_pick",
    "nearest_into",
    "norm_limit",
    "numba_kernels",
    "rounding_factor",
    "running_candidates",
    "running_update",
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
    """The numba kernels module (:mod:`viva_glyph.core._numba`), or None for numpy.

    ``backend`` "auto" uses numba when it imports (set the environment variable
    ``VIVA_GLYPH_NUMBA=0`` to turn it off), "numpy" never, "numba" always
    (ImportError without numba).
    """
    if backend not in ("auto", "numpy", "numba"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', got {backend!r}")
    if backend == "numpy" or (backend == "auto" and os.environ.get("VIVA_GLYPH_NUMBA") == "0"):
        return None
    try:
        from viva_glyph.core import _numba
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


def float64_tie_slack(dimension: int) -> float:
    """Relative gap below which two float64 squared distances ``sum (r - c)^2`` of
    ``dimension`` terms may round to the same value or swap: 3 (D + 3) u, u = 2^-53
    (every summand is positive, so each sum is within (D + 2) u of its true value)."""
    return 3.0 * (dimension + 3) * float(np.finfo(np.float64).eps) / 2


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
    the exact ``||c_j||^2 - 2 r_i.c_j``, so a code can be truly as near as the float
    argmin q only if ``scores[i, j] - e_j <= scores[i, q] + e_q`` (each code's own
    bound, from its own norm). Rows where q is the only such code keep q (it is the
    exact nearest); in the others every such code is compared in float64, ties to
    the lowest index. The bounds are computed in float64 (their own rounding is
    covered by the spare unit in ``gamma``). Codes whose float64 distance could tie
    with q's (true distances within :func:`float64_tie_slack` of each other, which
    only matters for residuals some 1e9 times longer than the codes) are compared
    too, so ties go to the lowest index as a float64 brute force finds them.

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
    drift = np.zeros_like(norm2)  # exact rows: the bounds of running_candidates, no drift
    q, near = running_candidates(scores, norm2, drift, norms, gamma, exact.shape[1])
    rows = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
    if rows.size:
        q[rows] = float64_choice(near[rows], exact[rows], vectors)
    np.subtract(exact, vectors[q], out=out_exact)
    np.einsum("nd,nd->n", out_exact, out_exact, out=out_norm2)
    return q


def running_candidates(
    scores: NDArray[np.floating[Any]],
    norm2: NDArray[np.float64],
    drift: NDArray[np.float64],
    norms: NDArray[np.float64],
    gamma: float,
    dimension: int,
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """The float argmin of each row and the codes that may be as near, for a
    residual kept in the compute dtype (the greedy engine after its first stage).

    The scores come from the rounded running residual r~, within ``drift`` of the
    exact residual r (``||r~ - r|| <= drift``), so each code's bound is
    ``e_j = gamma ||c_j|| (||c_j|| + 2 R) + 2 drift ||c_j||`` with
    ``R = sqrt(norm2) + drift >= ||r~||, ||r||`` (see :func:`greedy_pick`), plus the
    float64 tie slack. A row whose argmin is its only candidate has it as exact
    nearest code. The numba twin computes the same floats in the same order.

    Parameters
    ----------
    scores : ndarray, shape (n, K)
        ``||c||^2 - 2 r~.c`` from the GEMM.
    norm2 : ndarray, shape (n,), float64
        ``||r~||^2`` (or ``||r||^2``).
    drift : ndarray, shape (n,), float64
    norms : ndarray, shape (K,), float64
    gamma : float
        :func:`rounding_factor` of D and the scores' dtype.
    dimension : int

    Returns
    -------
    q : ndarray, shape (n,), intp
    near : ndarray, shape (n, K), bool
    """
    n = scores.shape[0]
    q: NDArray[np.intp] = scores.argmin(axis=1)
    slack_a, slack_b = gamma * norms * norms, 2.0 * gamma * norms
    r_bound = np.sqrt(norm2) + drift
    shift = r_bound + drift / gamma
    upper = scores[np.arange(n), q].astype(np.float64) + (slack_a[q] + shift * slack_b[q])
    upper += float64_tie_slack(dimension) * np.maximum(upper + r_bound * r_bound, 0.0)
    lower = scores.astype(np.float64)
    lower -= slack_a + shift[:, None] * slack_b
    near: NDArray[np.bool_] = lower <= upper[:, None]
    return q, near


def float64_choice(
    near: NDArray[np.bool_], exact: NDArray[np.float64], vectors: NDArray[np.float64]
) -> NDArray[np.intp]:
    """Per row, the code among ``near`` (n, K) nearest to ``exact`` (n, D) in float64,
    ties to the lowest index (``vectors`` (K, D) float64)."""
    pair_row, pair_code = np.nonzero(near)
    diff = exact[pair_row] - vectors[pair_code]
    dist = np.einsum("pd,pd->p", diff, diff)
    order = np.lexsort((pair_code, dist, pair_row))
    first = np.ones(order.size, dtype=bool)
    first[1:] = pair_row[order][1:] != pair_row[order][:-1]
    out: NDArray[np.intp] = np.empty(near.shape[0], dtype=np.intp)
    out[pair_row[order][first]] = pair_code[order][first]
    return out


def running_update(
    rows: NDArray[Any],
    q: NDArray[np.intp],
    vectors: NDArray[Any],
    norm2: NDArray[np.float64],
    drift: NDArray[np.float64],
    grow: float,
    vec_err: NDArray[np.float64],
) -> None:
    """Subtract the chosen codes from the running residual rows (n, D) in their own
    dtype, in place; ``norm2`` receives the new ``||r~||^2`` and ``drift`` grows by
    ``vec_err[q]`` (how far the stored code may be from the exact one) plus
    ``grow ||r~||`` (the subtraction's rounding, ``grow`` = unit roundoff with a
    margin)."""
    drift += vec_err[q]
    rows -= vectors[q]
    np.einsum("nd,nd->n", rows, rows, out=norm2, dtype=np.float64, casting="unsafe")
    drift += grow * np.sqrt(norm2)
