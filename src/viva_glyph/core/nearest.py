"""Exact nearest codes: the decision every encoding stage makes, and its bounds.

The squared distance ``||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2`` is found for a
whole chunk of rows with one GEMM: residual rows carry an extra column of ones
and the codebook is stored as the augmented matrix ``[-2 C^T ; ||c||^2]`` of
shape (D + 1, K), so ``R_aug @ T`` gives ``||c||^2 - 2 r.c`` directly (the
row-constant ``||r||^2`` cannot change the argmin). ``np.argmin`` keeps the
first of equal values, so ties go to the lowest index.

In float32 that expansion can misorder codes whose distances differ by less
than its rounding error, which matters when the residual is small next to the
code norms. :class:`Residuals` therefore decides each stage exactly: it keeps
the residual in the compute dtype (the next GEMM's rows) with a rigorous bound
on how far it may have drifted from the exact one; the float argmin stands
where a bound on the GEMM's rounding (valid for any summation order, so for any
BLAS kernel) and on that drift proves no other code can be as near
(:func:`running_candidates`), and the few rows left in doubt are decided in
float64 on the exact residual (:func:`float64_choice`). Every choice is thus
the float64 nearest code, ties to the lowest index, whatever the BLAS.

With numba (extra ``fast``) the decision and the residual update are one
compiled pass per row (:mod:`viva_glyph.core._numba`): the same bounds in the
same float order, so the same codes.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BRUTE_FORCE_WORK",
    "CHUNK_BYTES",
    "NUMBA_IMPORT_WORK",
    "Residuals",
    "VectorStage",
    "augmented_table",
    "chunk_rows",
    "code_dtype",
    "compiled",
    "float64_choice",
    "float64_tie_slack",
    "nearest_into",
    "numba_module",
    "rounding_factor",
    "running_candidates",
    "running_update",
    "sq_distances",
]

#: Working-set size a chunk of distance computations aims for (fits in L2/L3).
CHUNK_BYTES = 4 << 20
#: Rows x codes x dimensions of a stage up to which :class:`Residuals` decides by
#: computing every float64 distance (a handful of numpy calls, the fastest exact path
#: for a row or a few) rather than by a GEMM and its bounds.
BRUTE_FORCE_WORK = 1 << 16


def code_dtype(codebook_size: int) -> np.dtype[Any]:
    """Smallest code dtype for K codes: uint8 up to 256, uint16 up to 65536, else int32."""
    if codebook_size <= 1 << 8:
        return np.dtype(np.uint8)
    if codebook_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


#: Work (multiply-adds) of one call from which "auto" imports numba and its kernels
#: when they are not loaded yet: importing them takes a sizeable fraction of a second,
#: which smaller calls would not win back; once loaded, every call uses them.
NUMBA_IMPORT_WORK = 1 << 28


def numba_module(name: str, backend: str = "auto", work: float | None = None) -> ModuleType | None:
    """The numba kernels module ``name`` (e.g. ``"viva_glyph.core._numba"``), or None
    for the numpy path.

    ``backend`` "auto" uses numba when it imports (set the environment variable
    ``VIVA_GLYPH_NUMBA=0`` to turn it off), but while numba is not imported yet, a
    call of ``work`` multiply-adds below :data:`NUMBA_IMPORT_WORK` takes the numpy
    path instead of importing it; "numpy" never uses numba,
    "numba" always (ImportError without numba). Both paths give identical results.
    """
    if backend not in ("auto", "numpy", "numba"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', got {backend!r}")
    if backend == "numpy" or (backend == "auto" and os.environ.get("VIVA_GLYPH_NUMBA") == "0"):
        return None
    small = work is not None and work < NUMBA_IMPORT_WORK
    if backend == "auto" and small and "numba" not in sys.modules and name not in sys.modules:
        return None
    try:  # an import, not a look into sys.modules: it waits for another thread's import
        return importlib.import_module(name)
    except ImportError:
        if backend == "numba":
            raise
        return None


def compiled(**options: Any) -> Any:
    """Decorator of a numba kernel: ``numba.njit(nogil=True, cache=True, **options)``,
    without the on-disk cache where numba has nowhere to write it (a read-only
    install and no writable user cache folder: numba raises RuntimeError when
    decorating). Imports numba: for the kernels modules only."""
    import numba

    def wrap(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(fn)

    return wrap


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
    """Index of the nearest code for each row by the float argmin (ties to the lowest
    index), for callers that need no exactness (k-means' assignment step).

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


def running_candidates(
    scores: NDArray[np.floating[Any]],
    norm2: NDArray[np.float64],
    drift: NDArray[np.float64],
    norms: NDArray[np.float64],
    gamma: float,
    dimension: int,
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """The float argmin of each row and the codes that may be as near.

    The scores come from the rounded running residual r~, within ``drift`` of the
    exact residual r (``||r~ - r|| <= drift``). Each ``scores[i, j]`` lies within
    ``e_j = gamma ||c_j|| (||c_j|| + 2 R) + 2 drift ||c_j||`` of the exact
    ``||c_j||^2 - 2 r.c_j``, with ``R = sqrt(norm2) + drift >= ||r~||, ||r||``, so a
    code can be truly as near as the float argmin q only if ``scores[i, j] - e_j <=
    scores[i, q] + e_q`` (each code's own bound, from its own norm); the bounds are
    computed in float64 (their own rounding is covered by the spare unit in
    ``gamma``). Codes whose float64 distance could tie with q's (true distances
    within :func:`float64_tie_slack` of each other, which only matters for
    residuals some 1e9 times longer than the codes) count too, so ties go to the
    lowest index as a float64 brute force finds them. A row whose argmin is its
    only candidate has it as exact nearest code. The numba twin computes the same
    floats in the same order.

    Parameters
    ----------
    scores : ndarray, shape (n, K)
        ``||c||^2 - 2 r~.c`` from the GEMM.
    norm2 : ndarray, shape (n,), float64
        ``||r~||^2``.
    drift : ndarray, shape (n,), float64
    norms : ndarray, shape (K,), float64
        ``||c||``.
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


def sq_distances(diff: NDArray[np.float64]) -> NDArray[np.float64]:
    """``sum_d diff[..., d]^2`` in float64, shape ``diff.shape[:-1]``: the one formula of an
    exact squared distance, so every exact decision rounds alike."""
    flat = diff.reshape(-1, diff.shape[-1])
    out: NDArray[np.float64] = np.einsum("pd,pd->p", flat, flat).reshape(diff.shape[:-1])
    return out


def float64_choice(
    near: NDArray[np.bool_], exact: NDArray[np.float64], vectors: NDArray[np.float64]
) -> NDArray[np.intp]:
    """Per row, the code among ``near`` (n, K) nearest to ``exact`` (n, D) in float64,
    ties to the lowest index (``vectors`` (K, D) float64)."""
    pair_row, pair_code = np.nonzero(near)
    dist = sq_distances(exact[pair_row] - vectors[pair_code])
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


class CodebookLike(Protocol):
    """What a decision needs of a codebook (:class:`viva_glyph.core.codebook.Codebook`)."""

    @property
    def size(self) -> int: ...
    @property
    def vectors(self) -> NDArray[Any]: ...
    @property
    def vectors64(self) -> NDArray[np.float64]: ...
    @property
    def norms(self) -> NDArray[np.float64]: ...
    @property
    def table(self) -> NDArray[Any]: ...
    @property
    def centered(
        self,
    ) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[np.float64], NDArray[Any]]: ...


class VectorStage:
    """One stage's exact greedy decision for one vector at a time, from one
    matrix-vector product: the decision :class:`Residuals` makes by brute force for a
    single row (the first of the codes at the least float64 distance ``sum (r - c)^2``),
    in a few numpy calls.

    The scores ``||c||^2 - 2 r.c`` of every code come from ``[r, 1] @ [-2 C^T ; ||c||^2]``
    in float64, each within ``gamma (||c||^2 + 2 ||r|| ||c||)`` of its true value
    (:func:`rounding_factor`; bounded here by the largest ``||c||``). A code whose score is
    within twice that bound, plus the float64 tie slack of the distances, of the least
    score may be the float64 nearest; when the least is the only such code it is the
    answer, otherwise the float64 distances of those codes decide (as brute force would).

    Parameters
    ----------
    book : CodebookLike
        The stage's codebook (K, D).
    """

    __slots__ = ("_bound_a", "_bound_b", "_table", "_tie", "sq_grow", "vectors64")

    def __init__(self, book: CodebookLike) -> None:
        self.vectors64 = book.vectors64
        self._table = augmented_table(book.vectors64)
        k, d = book.vectors64.shape
        gamma = rounding_factor(d, np.float64)
        top = float(book.norms.max()) if k else 0.0
        self._bound_a = 2.0 * gamma * top * top  # twice the bound at ||r|| = 0
        self._bound_b = 4.0 * gamma * top  # ... and its growth with ||r||
        self._tie = 2.0 * float64_tie_slack(d)
        #: What ``||x||^2`` as float64 rounds it is multiplied by to bound the true value.
        self.sq_grow = 1.0 + 2.0 * gamma

    def take_nearest(
        self, r_aug: NDArray[np.float64], r: NDArray[np.float64], sq_norm: float
    ) -> tuple[int, float]:
        """The exact nearest code ``c`` of the residual ``r``, subtracted from it.

        Parameters
        ----------
        r_aug : ndarray, shape (D + 1,), float64
            The residual followed by a 1.
        r : ndarray, shape (D,), float64
            ``r_aug[:-1]``: updated in place to ``r - c``.
        sq_norm : float
            An upper bound of ``||r||^2``.

        Returns
        -------
        code : int
        sq_norm : float
            An upper bound of ``||r - c||^2`` as float64 rounds ``r - c`` (the next
            stage's ``sq_norm``).
        """
        scores = r_aug.dot(self._table)
        code = int(scores.argmin())
        best = scores.item(code)
        slack = self._bound_a + self._bound_b * math.sqrt(sq_norm)
        limit = best + slack + self._tie * max(sq_norm + best + slack, 0.0)
        scores[code] = np.inf
        if scores.item(scores.argmin()) <= limit:  # another code may be as near
            scores[code] = best
            near = np.flatnonzero(scores <= limit)  # the float64 distances decide
            code = int(near[sq_distances(r - self.vectors64[near]).argmin()])
            best = scores.item(code)
        r -= self.vectors64[code]
        return code, max(sq_norm + best + slack, 0.0) * (1.0 + self._tie)


class Residuals:
    """What the codes chosen so far leave of n rows: ``r = x - sum_m C_m[q_m]``.

    The residual is kept in the compute dtype, beside a column of ones, as the
    rows of the next stage's GEMM, with ``||r~||^2`` and a bound on its drift
    from the exact residual; :meth:`take_nearest` chooses one more stage's codes
    exactly and subtracts them. The first stage scores ``x - mu`` against the
    codebook shifted to its mean (:attr:`~viva_glyph.core.codebook.Codebook.centered`),
    so a large common offset of data and codes costs no float32 accuracy; that
    subtraction is the only copy of the rows.

    Parameters
    ----------
    x : ndarray, shape (n, D), any real dtype
        Finite rows within :func:`viva_glyph.checks.norm_limit` (checked by the caller); kept by
        reference as the source of the exact residual.
    dtype : float32 or float64
        Compute dtype (the codebooks').
    backend : {"auto", "numpy", "numba"}
        The numba kernel or its numpy twin (identical codes).
    brute : bool
        Decide by computing every float64 distance when a stage's work is at most
        :data:`BRUTE_FORCE_WORK` (the same codes; the running residual is then
        exact). Training, which reads the running residual, passes False.

    Attributes
    ----------
    codes : list of ndarray, shape (n,), intp
        The codes chosen so far, one array per stage.
    books : list of CodebookLike
        The codebooks they came from.
    """

    def __init__(
        self, x: NDArray[Any], dtype: Any, backend: str = "auto", *, brute: bool = True
    ) -> None:
        self.source = x
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.brute = brute
        self.exact_rows: NDArray[np.float64] | None = None  # brute force: r, exact
        self.rows: NDArray[Any] | None = None  # (n, D + 1) after the first stage
        self.norm2: NDArray[np.float64] | None = None
        self.drift: NDArray[np.float64] | None = None
        self.codes: list[NDArray[np.intp]] = []
        self.books: list[CodebookLike] = []

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def take_nearest(
        self, book: CodebookLike, work: NDArray[Any] | None = None
    ) -> NDArray[np.intp]:
        """The exact nearest code of every residual row, subtracted from the residual.

        Parameters
        ----------
        book : CodebookLike
            The next stage's codebook (K, D), of the compute dtype.
        work : ndarray, optional
            Scratch of at least n * K entries of the compute dtype.

        Returns
        -------
        ndarray, shape (n,), intp
            The float64 nearest code of each row (ties to the lowest index).
        """
        n, d = self.source.shape
        if self.exact_rows is not None or (
            self.brute and self.rows is None and n * book.size * d <= BRUTE_FORCE_WORK
        ):
            return self._brute_force(book)
        dtype = self.dtype
        kernels = numba_module("viva_glyph.core._numba", self.backend, n * book.size * d)
        gamma = rounding_factor(d, dtype)
        grow = float(np.finfo(dtype).eps) / 2 * (1 + 1e-6)  # unit roundoff, with a margin
        if work is None or work.size < n * book.size:
            work = np.empty(n * book.size, dtype=dtype)
        scores = work[: n * book.size].reshape(n, book.size)
        if self.rows is None:  # first stage: x - mu against the codes - mu, both rounded once
            mu, table, norms, vectors = book.centered
            rows = np.ones((n, d + 1), dtype=dtype)
            np.subtract(self.source, mu, out=rows[:, :-1], casting="same_kind")
            norm2 = np.einsum("nd,nd->n", rows[:, :-1], rows[:, :-1], dtype=np.float64)
            drift = grow * np.sqrt(norm2)
            vec_err = grow * norms  # the rounding of the shifted codes
            self.rows, self.norm2, self.drift = rows, norm2, drift
        else:
            rows, norm2, drift = self.rows, self.norm2, self.drift
            assert norm2 is not None and drift is not None
            table, norms, vectors = book.table, book.norms, book.vectors
            vec_err = np.zeros(book.size)  # the codes themselves: no rounding
        np.matmul(rows, table, out=scores)  # ||c||^2 - 2 r.c for every (row, code)
        if kernels is not None:  # rows proven unambiguous are updated already
            tie64 = float64_tie_slack(d)
            q: NDArray[np.intp]
            q, doubt = kernels.greedy_running_kernel(
                scores, rows, norm2, drift, vectors, norms, gamma, tie64, grow, vec_err
            )
            if doubt.size:
                _, near = running_candidates(
                    scores[doubt], norm2[doubt], drift[doubt], norms, gamma, d
                )
                q[doubt] = float64_choice(near, self.exact(doubt), book.vectors64)
                sub, n2, dr = rows[doubt, :-1], norm2[doubt], drift[doubt]
                running_update(sub, q[doubt], vectors, n2, dr, grow, vec_err)
                rows[doubt, :-1], norm2[doubt], drift[doubt] = sub, n2, dr
        else:
            q, near = running_candidates(scores, norm2, drift, norms, gamma, d)
            doubt = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
            if doubt.size:
                q[doubt] = float64_choice(near[doubt], self.exact(doubt), book.vectors64)
            running_update(rows[:, :-1], q, vectors, norm2, drift, grow, vec_err)
        self.codes.append(q)
        self.books.append(book)
        return q

    def _brute_force(self, book: CodebookLike) -> NDArray[np.intp]:
        """:meth:`take_nearest` by every float64 distance: the exact nearest by definition."""
        if self.exact_rows is None:
            self.exact_rows = np.array(self.source, dtype=np.float64)
        r, v = self.exact_rows, book.vectors64
        if len(r) == 1:  # one row (the spec API's case): fewest numpy calls
            code = int(sq_distances(r[0] - v).argmin())  # the first of equal distances
            r[0] -= v[code]
            q: NDArray[np.intp] = np.array([code], dtype=np.intp)
        else:
            q = sq_distances(r[:, None, :] - v[None, :, :]).argmin(axis=1)
            r -= v[q]
        self.codes.append(q)
        self.books.append(book)
        return q

    def exact(self, rows: NDArray[np.intp] | slice = slice(None)) -> NDArray[np.float64]:
        """The exact residual ``x - sum_m C_m[q_m]`` of ``rows``, float64 (n, D)."""
        if self.exact_rows is not None:
            return np.array(self.exact_rows[rows], dtype=np.float64)
        out = np.array(self.source[rows], dtype=np.float64)
        for book, q in zip(self.books, self.codes, strict=True):
            out -= book.vectors64[q[rows]]
        return out

    def sq_errors(self) -> NDArray[np.float64]:
        """``||x - sum_m C_m[q_m]||^2`` of every row, float64 (n,)."""
        diff = self.exact()
        out: NDArray[np.float64] = np.einsum("nd,nd->n", diff, diff)
        return out

    # The one beam of a greedy encoding, as training reads a beam state
    # (:class:`viva_glyph.core.beam.BeamState`):
    @property
    def best_codes(self) -> NDArray[np.intp]:
        """The codes chosen so far, shape (n, m), intp."""
        if not self.codes:
            return np.empty((len(self), 0), dtype=np.intp)
        return np.stack(self.codes, axis=1)

    @property
    def best_residual(self) -> NDArray[Any]:
        """The running residual r~ in the compute dtype, shape (n, D) (the rows
        themselves before the first stage)."""
        if self.exact_rows is not None:
            return self.exact_rows.astype(self.dtype)
        if self.rows is None:
            return np.asarray(self.source, dtype=self.dtype)
        return self.rows[:, :-1]

    @property
    def best_dist(self) -> NDArray[Any]:
        """``||r~||^2`` in the compute dtype, shape (n,)."""
        if self.norm2 is None:
            r = self.best_residual
            dist: NDArray[Any] = np.einsum("nd,nd->n", r, r)
            return dist
        return self.norm2.astype(self.dtype)
