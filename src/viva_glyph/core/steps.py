"""The engine's stage steps: beam search residual encoding (FAISS ResidualQuantizer;
Liu et al., "Improved RVQ"), greedy at B = 1.

Greedy RVQ picks the nearest code at every stage; beam search keeps, for every
vector, the B best partial reconstructions after each stage and extends each of
them by every code of the next stage, keeping again the B best of the B * K
candidates. With B >= K^(M-1) it is exhaustive.

This is the one encoding engine: the greedy encoder of
:class:`~viva_glyph.core.encoder.RvqEncoder` and training both run :func:`beam_step`
at B = 1, whose stage decision is the exact float64 nearest code (ties to the
lowest index): the float32 argmin stands where a rigorous bound on the GEMM's
rounding and on the running residual's drift proves it
(:func:`~viva_glyph.core.nearest.running_candidates`), and the rows left in doubt
are decided in float64. So greedy codes and the B = 1 engine's are the same
computation, not two that agree.

A candidate's score is ``||r_b - c||^2 = ||r_b||^2 + (||c||^2 - 2 r_b.c)``; the
bracket comes for all (row, beam, code) triples from one GEMM per stage with the
shared augmented table (:func:`viva_glyph.core.nearest.nearest_into`). While a row
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

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.nearest import (
    float64_choice,
    numba_kernels,
    rounding_factor,
    running_candidates,
    running_update,
)

__all__ = [
    "BeamState",
    "beam_start",
    "beam_step",
    "cross_tables",
    "exact_sq_errors",
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
    norm2 : ndarray, shape (n,), float64, or None
        Greedy states (b = 1, after a B = 1 step) only: ``||r~||^2`` of the
        running residual r~ (the rows of ``residual``, in the compute dtype).
    drift : ndarray, shape (n,), float64, or None
        Beside it: a bound on ``||r~ - r||``, r the exact residual.
    source : ndarray, shape (n, D), or None
        The rows as given to :func:`beam_start` (any real dtype), from which the
        first B = 1 step and the float64 decisions take the exact residual.
    books : tuple of Codebook
        Greedy states only: the codebooks of the stages done.
    """

    residual: NDArray[Any] | None
    dist: NDArray[Any]
    codes: NDArray[np.intp]
    norm2: NDArray[np.float64] | None = None
    drift: NDArray[np.float64] | None = None
    source: NDArray[Any] | None = None
    books: tuple[Codebook, ...] = ()

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
    exact nearest code and the state carries the running residual with a bound
    on its drift; the encoder's greedy path is this very step.
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
        Implementation of the B = 1 decision (both exact; see :mod:`viva_glyph.core._numba`).

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
    """The B = 1 step: GEMM, exact choice, the running residual as next GEMM's rows.

    The first step scores ``x - mu`` against the codebook shifted to its mean
    (:attr:`~viva_glyph.core.codebook.Codebook.centered`), so a large common offset of
    data and codes costs no float32 accuracy. Every step keeps the residual in
    the compute dtype (the next GEMM's rows, updated in place) with a bound on its
    drift from the exact one (:func:`~viva_glyph.core.nearest.running_candidates`);
    the few rows where the bounds leave a doubt are decided in float64 on the
    exact residual, rebuilt from the source rows and the codes. Keeping float64
    residuals instead doubled the memory traffic of a step (bench_engine.py).
    """
    assert state.residual is not None
    n, _, d1 = state.residual.shape
    dtype = state.residual.dtype
    kernels = numba_kernels(backend)
    gamma = rounding_factor(d1 - 1, dtype)
    grow = float(np.finfo(dtype).eps) / 2 * (1 + 1e-6)  # unit roundoff, with a margin
    if work is None or work.size < n * book.size:
        work = np.empty(n * book.size, dtype=dtype)
    scores = work[: n * book.size].reshape(n, book.size)
    source = state.source if state.source is not None else state.residual[:, 0, :-1]
    if not state.books:  # first step: x - mu against the codes - mu, both rounded once
        mu, table, norms, vectors = book.centered
        rows = np.ones((n, d1), dtype=dtype)
        np.subtract(source, mu, out=rows[:, :-1], casting="same_kind")
        norm2 = np.einsum("nd,nd->n", rows[:, :-1], rows[:, :-1], dtype=np.float64)
        drift = grow * np.sqrt(norm2)
        vec_err = grow * norms  # the rounding of the shifted codes
    else:
        rows, norm2, drift = state.residual.reshape(n, d1), state.norm2, state.drift
        assert norm2 is not None and drift is not None
        table, norms, vectors = book.table, book.norms, book.vectors
        vec_err = np.zeros(book.size)  # the codes themselves: no rounding
    np.matmul(rows, table, out=scores)  # ||c||^2 - 2 r.c, as in nearest_into
    if kernels is not None:  # rows proven unambiguous are updated already
        q, doubt = kernels.greedy_running_kernel(
            scores, rows, norm2, drift, vectors, norms, gamma, grow, vec_err
        )
        if doubt.size:
            near = running_candidates(
                scores[doubt], norm2[doubt], drift[doubt], norms, gamma, d1 - 1
            )[1]
            q[doubt] = _float64_decision(state, source, doubt, near, book)
            sub, n2, dr = rows[doubt, :-1], norm2[doubt], drift[doubt]
            running_update(sub, q[doubt], vectors, n2, dr, grow, vec_err)
            rows[doubt, :-1], norm2[doubt], drift[doubt] = sub, n2, dr
    else:
        q, near = running_candidates(scores, norm2, drift, norms, gamma, d1 - 1)
        doubt = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
        if doubt.size:
            q[doubt] = _float64_decision(state, source, doubt, near[doubt], book)
        running_update(rows[:, :-1], q, vectors, norm2, drift, grow, vec_err)
    codes = np.concatenate([state.codes, q[:, None, None]], axis=2)
    dist = norm2.astype(dtype)[:, None]
    return BeamState(
        rows.reshape(n, 1, d1), dist, codes, norm2, drift, source, (*state.books, book)
    )


def _float64_decision(
    state: BeamState,
    source: NDArray[Any],
    doubt: NDArray[np.intp],
    near: NDArray[np.bool_],
    book: Codebook,
) -> NDArray[np.intp]:
    """The float64 nearest code among ``near`` for rows ``doubt`` of a greedy state,
    from their exact residual (source rows minus the codes chosen so far)."""
    exact = np.array(source[doubt], dtype=np.float64)
    for j, done in enumerate(state.books):
        exact -= done.vectors64[state.codes[doubt, 0, j]]
    return float64_choice(near, exact, book.vectors64)


def exact_sq_errors(state: BeamState) -> NDArray[np.float64]:
    """``||x - decode(codes)||^2`` of a greedy state's rows, shape (n,), float64."""
    assert state.source is not None
    diff = np.array(state.source, dtype=np.float64)
    for j, done in enumerate(state.books):
        diff -= done.vectors64[state.codes[:, 0, j]]
    out: NDArray[np.float64] = np.einsum("nd,nd->n", diff, diff)
    return out


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
