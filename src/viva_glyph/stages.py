"""The engine's stage steps: beam search residual encoding (FAISS ResidualQuantizer;
Liu et al., "Improved RVQ"), greedy at B = 1.

Greedy RVQ picks the nearest code at every stage; beam search keeps, for every
vector, the B best partial reconstructions after each stage and extends each of
them by every code of the next stage, keeping again the B best of the B * K
candidates. With B >= K^(M-1) it is exhaustive.

This is the one encoding engine: the greedy encoder of
:class:`~viva_glyph.encoder.RvqEncoder` and training both run :func:`beam_step`
at B = 1, whose stage decision (:func:`~viva_glyph._kernels.greedy_pick`) is the
exact float64 nearest code (ties to the lowest index) wherever a rigorous bound
on the float32 GEMM's rounding leaves any doubt. So greedy codes and the B = 1
engine's are the same computation, not two that agree.

A candidate's score is ``||r_b - c||^2 = ||r_b||^2 + (||c||^2 - 2 r_b.c)``; the
bracket comes for all (row, beam, code) triples from one GEMM per stage with the
shared augmented table (:func:`viva_glyph._kernels.nearest_into`). While a row
has a single parent (the first stage) the constant ``||r_b||^2`` is left out.
For B > 1 ties are broken deterministically: the B kept candidates are the B
smallest float scores by (score, parent rank, code index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._kernels import greedy_pick, numba_kernels, rounding_factor
from viva_glyph.codebook import Codebook

__all__ = [
    "BeamState",
    "beam_start",
    "beam_step",
    "cross_tables",
    "lut_step",
    "numba_kernel",
    "top_b",
]


@dataclass
class BeamState:
    """The B best partial encodings of n rows after some stages.

    Attributes
    ----------
    residual : ndarray, shape (n, b, D + 1), or None
        ``x - reconstruction`` of each beam, with a last column of ones (None
        after a :func:`lut_step`, which does not need it).
    dist : ndarray, shape (n, b)
        ``||residual||^2`` of each beam, compute dtype; beams sorted ascending.
    codes : ndarray, shape (n, b, m), intp
        Codes of each beam for the m stages done.
    exact : ndarray, shape (n, D), float64, or None
        Greedy states (b = 1, after a B = 1 step) only: the exact residual.
    norm2 : ndarray, shape (n,), float64, or None
        ``||exact||^2`` beside it.
    source : ndarray, shape (n, D), or None
        The rows as given to :func:`beam_start` (any real dtype), from which the
        first B = 1 step takes the exact residual.
    """

    residual: NDArray[Any] | None
    dist: NDArray[Any]
    codes: NDArray[np.intp]
    exact: NDArray[np.float64] | None = None
    norm2: NDArray[np.float64] | None = None
    source: NDArray[Any] | None = None

    @property
    def best_codes(self) -> NDArray[np.intp]:
        """Codes of the best beam, shape (n, m)."""
        return self.codes[:, 0, :]

    @property
    def best_residual(self) -> NDArray[Any]:
        """Residual of the best beam, shape (n, D)."""
        assert self.residual is not None, "a table-path state keeps no residuals"
        return self.residual[:, 0, :-1]


def beam_start(x: NDArray[Any], dtype: Any) -> BeamState:
    """Initial state: one beam per row, the row itself as residual, no codes.

    Parameters
    ----------
    x : ndarray, shape (n, D), any real dtype
    dtype : float32 or float64
        Compute dtype of the search.
    """
    n, d = x.shape
    residual = np.ones((n, 1, d + 1), dtype=dtype)
    residual[:, 0, :d] = x
    r = residual[:, :, :d]
    dist = np.einsum("nbd,nbd->nb", r, r)
    return BeamState(residual, dist, np.empty((n, 1, 0), dtype=np.intp), source=x)


def top_b(scores: NDArray[Any], beam: int) -> NDArray[np.intp]:
    """Column indices of the ``beam`` smallest entries of each row, sorted.

    Order is by (value, column index), so equal values go to the lowest column:
    the result equals the first ``beam`` columns of a stable argsort. Instead of
    sorting whole rows, a threshold is taken first: the row is cut into
    ``beam`` blocks and the largest of the block minima bounds the beam-th
    smallest value from above (it is one of ``beam`` distinct entries), so only
    the few entries at or below it are sorted.

    Parameters
    ----------
    scores : ndarray, shape (n, L)
    beam : int

    Returns
    -------
    ndarray, shape (n, min(beam, L)), intp
    """
    n, width = scores.shape
    if beam >= width:
        full: NDArray[np.intp] = np.argsort(scores, axis=1, kind="stable")
        return full
    if beam == 1:
        best: NDArray[np.intp] = scores.argmin(axis=1)[:, None]
        return best
    starts = np.linspace(0, width, beam, endpoint=False).astype(np.intp)
    thr = np.minimum.reduceat(scores, starts, axis=1).max(axis=1)
    flat = np.flatnonzero(scores <= thr[:, None])  # row-major: columns ascending per row
    rows = flat // width
    cols = flat - rows * width
    order = _sort_by_row_then_value(scores[rows, cols], rows)
    first = np.zeros(n, dtype=np.intp)
    np.cumsum(np.bincount(rows, minlength=n)[:-1], out=first[1:])
    pick = order[(first[:, None] + np.arange(beam)).ravel()]
    out: NDArray[np.intp] = cols[pick].reshape(n, beam)
    return out


def _sort_by_row_then_value(vals: NDArray[Any], rows: NDArray[np.intp]) -> NDArray[np.intp]:
    """Stable order by (row, value): equal values keep their input order."""
    if vals.dtype == np.float32:
        # One int64 key: row in the high 32 bits, the float's order-preserving
        # integer image in the low 32 (+0.0 added first so -0.0 equals 0.0).
        u = (vals + np.float32(0.0)).view(np.int32)
        key = (u ^ ((u >> 31) & 0x7FFFFFFF)).astype(np.int64) + (1 << 31)
        key += rows.astype(np.int64) << 32
        return np.argsort(key, kind="stable")
    return np.lexsort((vals, rows))


def beam_step(
    state: BeamState,
    book: Codebook,
    beam: int,
    work: NDArray[Any] | None = None,
    *,
    backend: str = "auto",
) -> BeamState:
    """Extend every beam by every code of ``book`` and keep the ``beam`` best.

    At B = 1 (one beam in, one out) this is the greedy stage: each row takes its
    exact nearest code (:func:`~viva_glyph._kernels.greedy_pick`) and the state
    carries the float64 residual; the encoder's greedy path is this very step.
    A B = 1 step updates the residual buffers of a state made by an earlier B = 1
    step in place: pass the returned state on and do not reuse the input one.

    Parameters
    ----------
    state : BeamState
        n rows with b beams each, compute dtype equal to ``book.dtype``.
    book : Codebook
        Next stage's codebook (K, D).
    beam : int
        Beams to keep (at most b * K are available).
    work : ndarray, optional
        Scratch of at least n * b * K entries of the compute dtype.
    backend : {"auto", "numpy", "numba"}
        Implementation of the B = 1 decision (both exact; see :mod:`viva_glyph._numba`).

    Returns
    -------
    BeamState
        With ``min(beam, b * K)`` beams and one more stage of codes.
    """
    assert state.residual is not None, "beam_step needs a state with residuals"
    if state.residual.shape[1] == 1 and beam == 1:
        return _greedy_step(state, book, work, backend)
    n, b, d1 = state.residual.shape
    d, k = d1 - 1, book.size
    rows = state.residual.reshape(n * b, d1)
    if work is None or work.size < n * b * k:
        work = np.empty(n * b * k, dtype=rows.dtype)
    scores = work[: n * b * k].reshape(n * b, k)
    np.matmul(rows, book.table, out=scores)  # ||c||^2 - 2 r.c, as in nearest_into
    if b == 1:
        flat = scores
    else:
        scores.reshape(n, b, k)[...] += state.dist[:, :, None]
        flat = scores.reshape(n, b * k)
    sel = top_b(flat, beam)
    parent, code = np.divmod(sel, k)
    row_idx = np.arange(n)[:, None]
    residual = state.residual[row_idx, parent]  # (n, B, D + 1), a copy
    residual[:, :, :d] -= book.vectors[code]
    r = residual[:, :, :d]
    dist = np.einsum("nbd,nbd->nb", r, r)
    codes = np.concatenate([state.codes[row_idx, parent], code[:, :, None]], axis=2)
    return BeamState(residual, dist, codes)


def _greedy_step(
    state: BeamState, book: Codebook, work: NDArray[Any] | None, backend: str
) -> BeamState:
    """The B = 1 step: GEMM, exact choice, float64 residual, the next GEMM's rows.

    The first step scores ``x - mu`` against the codebook shifted to its mean
    (:attr:`~viva_glyph.codebook.Codebook.centered`), so a large common offset of
    data and codes costs no float32 accuracy; later residuals are centred already.
    """
    assert state.residual is not None
    n, _, d1 = state.residual.shape
    dtype = state.residual.dtype
    exact, norm2 = state.exact, state.norm2
    if exact is None or norm2 is None:  # first greedy step: the rows as given
        src = state.source if state.source is not None else state.residual[:, 0, :-1]
        exact = np.array(src, dtype=np.float64)  # a copy: updated in place below
        mu, table, norms = book.centered
        rows = np.ones((n, d1), dtype=dtype)
        np.subtract(exact, mu, out=rows[:, :-1], casting="same_kind")
        shifted = exact - mu
        bound2 = np.einsum("nd,nd->n", shifted, shifted)
    else:
        rows, table, norms, bound2 = state.residual.reshape(n, d1), book.table, book.norms, norm2
    if work is None or work.size < n * book.size:
        work = np.empty(n * book.size, dtype=dtype)
    scores = work[: n * book.size].reshape(n, book.size)
    np.matmul(rows, table, out=scores)  # ||c||^2 - 2 r.c, as in nearest_into
    # the residual, its norm and the next GEMM's rows are updated in place
    out_norm2 = np.empty(n, dtype=np.float64)
    gamma = rounding_factor(d1 - 1, dtype)
    kernels = numba_kernels(backend)
    args = (scores, exact, bound2, book.vectors64, norms, gamma, exact, out_norm2)
    if kernels is not None:
        q = kernels.greedy_pick_kernel(*args, rows)
    else:
        q = greedy_pick(*args)
        rows[:, :-1] = exact
    residual = rows.reshape(n, 1, d1)
    out_exact = exact
    codes = np.concatenate([state.codes, q[:, None, None]], axis=2)
    dist = out_norm2.astype(dtype)[:, None]
    return BeamState(residual, dist, codes, exact=out_exact, norm2=out_norm2)


def cross_tables(previous: Sequence[Codebook], book: Codebook) -> NDArray[Any]:
    """``2 C_j C_m^T`` for every earlier codebook ``C_j``: shape (m, K, K), book's dtype.

    With them a candidate's score needs no D-dimensional product:
    ``||x - r_b - c||^2 = ||x - r_b||^2 + ||c||^2 - 2 x.c + sum_j 2 c_j(b).c``
    (FAISS's ``use_beam_LUT``).
    """
    v = book.vectors.astype(np.float64)
    out = np.empty((len(previous), book.size, book.size), dtype=book.dtype)
    for j, p in enumerate(previous):
        out[j] = 2.0 * (p.vectors.astype(np.float64) @ v.T)
    return out


def lut_step(
    state: BeamState,
    base: NDArray[Any],
    cross: NDArray[Any],
    beam: int,
    work: NDArray[Any] | None = None,
    *,
    backend: str = "auto",
) -> BeamState:
    """:func:`beam_step` through look-up tables: additions instead of a GEMM per beam.

    Parameters
    ----------
    state : BeamState
        n rows with b beams after m stages (``state.residual`` is not used and
        not maintained: the result's ``residual`` is None).
    base : ndarray, shape (n, K)
        ``||c||^2 - 2 x.c`` of the rows against the next codebook.
    cross : ndarray, shape (m, K, K)
        :func:`cross_tables` of the m earlier codebooks against the next one.
    beam : int
    work : ndarray, optional
        Scratch of at least 2 * n * b * K entries of ``base.dtype`` (numpy path).
    backend : {"auto", "numpy", "numba"}
        "auto" takes the numba kernel when numba is installed; both give
        identical results.
    """
    kernel = numba_kernel(backend)
    if kernel is not None:
        dist, codes = kernel(base, state.dist, state.codes, cross, beam)
        return BeamState(None, dist, codes)
    n, b, m = state.codes.shape
    k = base.shape[1]
    if work is None or work.size < 2 * n * b * k:
        work = np.empty(2 * n * b * k, dtype=base.dtype)
    scores = work[: n * b * k].reshape(n, b, k)
    tmp = work[n * b * k : 2 * n * b * k].reshape(n, b, k)
    if m == 0:  # one parent: select on the bare distances, as the greedy search does
        flat = base
    else:
        np.add(base[:, None, :], state.dist[:, :, None], out=scores)
        for j in range(m):
            np.take(cross[j], state.codes[:, :, j], axis=0, out=tmp)
            scores += tmp
        flat = scores.reshape(n, b * k)
    sel = top_b(flat, beam)
    dist = np.take_along_axis(flat, sel, axis=1)
    if m == 0:
        dist = dist + state.dist
    parent, code = np.divmod(sel, k)
    row_idx = np.arange(n)[:, None]
    codes = np.concatenate([state.codes[row_idx, parent], code[:, :, None]], axis=2)
    return BeamState(None, dist, codes)


def numba_kernel(backend: str = "auto") -> Any:
    """The numba stage kernel, or None for the numpy path.

    ``backend`` "auto" uses numba when it imports (set the environment variable
    ``VIVA_GLYPH_NUMBA=0`` to turn it off), "numpy" never, "numba" always.
    """
    kernels = numba_kernels(backend)
    return None if kernels is None else kernels.lut_step_kernel
