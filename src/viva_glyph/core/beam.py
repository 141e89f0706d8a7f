"""Beam search: the B best partial encodings of every row, stage by stage
(FAISS ResidualQuantizer; Liu et al., "Improved RVQ").

Beam search keeps, for every vector, the B best partial reconstructions after
each stage and extends each of them by every code of the next stage, keeping
again the B best of the B * K candidates (:func:`beam_step`). With
B >= K^(M-1) it is exhaustive; B = 1 is the greedy loop of
:mod:`viva_glyph.core.search`, whose decisions are exact.

A candidate's score is ``||r_b - c||^2 = ||r_b||^2 + (||c||^2 - 2 r_b.c)``; the
bracket comes for all (row, beam, code) triples from one GEMM per stage with the
codebook's augmented table (:mod:`viva_glyph.core.nearest`). While a row has a
single parent (the first stage) the constant ``||r_b||^2`` is left out. Ties are
broken deterministically: the B kept candidates are the B smallest float scores
by (score, parent rank, code index).

:func:`lut_step` scores the same candidates from one GEMM of the row against
every stage and cross tables between stages (FAISS's ``use_beam_LUT``); a cost
model (:func:`path_costs`) picks, per shape, the cheaper path. Memory is bounded:
a beam whose search of one row would take more than :data:`BEAM_SCRATCH_BYTES`
is refused (:func:`check_beam_size`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.nearest import numba_module

__all__ = [
    "BEAM_SCRATCH_BYTES",
    "LUT_BYTES",
    "BeamState",
    "EncoderTables",
    "beam_start",
    "beam_step",
    "check_beam_size",
    "cross_tables",
    "lut_kernel",
    "lut_step",
    "max_beam_size",
    "path_costs",
    "top_b",
    "use_lut",
]

#: Largest total size (bytes) of the cross tables for which the table path may be used.
LUT_BYTES = 64 << 20

#: Scratch the search of one row may take (bytes): :func:`max_beam_size` derives the
#: largest beam from it. A row's search holds B * K candidate scores (twice on the
#: numpy paths) beside B residuals and B code lists.
BEAM_SCRATCH_BYTES = 512 << 20

#: Cost model of the two paths (nanoseconds; only their ratios matter), measured
#: with ``benchmarks/bench_engine.py --calibrate`` (2 threads, float32, D = 128,
#: M = 8, K = 256, B = 5; mean of two runs): a multiply-add of the GEMM; a score
#: of the numba table kernel per table added (one addition plus its share of the
#: selection); a candidate of the residual path (its share of the top-B
#: selection among B K scores and of the residual update).
GEMM_NS_PER_MAC = 0.074
TABLE_NS_PER_ADD = 0.96
RESIDUAL_NS_PER_CANDIDATE = 25.8


@dataclass
class BeamState:
    """The b best partial encodings of n rows after some stages.

    Attributes
    ----------
    residual : ndarray, shape (n, b, D + 1), or None
        ``x - reconstruction`` of each beam, with a last column of ones (None
        after a :func:`lut_step`, which does not need it).
    dist : ndarray, shape (n, b)
        ``||residual||^2`` of each beam, compute dtype; beams sorted ascending.
    codes : ndarray, shape (n, b, m), intp
        Codes of each beam for the m stages done.
    """

    residual: NDArray[Any] | None
    dist: NDArray[Any]
    codes: NDArray[np.intp]

    @property
    def best_codes(self) -> NDArray[np.intp]:
        """Codes of the best beam, shape (n, m)."""
        return self.codes[:, 0, :]

    @property
    def best_residual(self) -> NDArray[Any]:
        """Residual of the best beam, shape (n, D)."""
        assert self.residual is not None, "a table-path state keeps no residuals"
        return self.residual[:, 0, :-1]

    @property
    def best_dist(self) -> NDArray[Any]:
        """``||residual||^2`` of the best beam, shape (n,), compute dtype."""
        return self.dist[:, 0]


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
    return BeamState(residual, dist, np.empty((n, 1, 0), dtype=np.intp))


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
) -> BeamState:
    """Extend every beam by every code of ``book`` and keep the ``beam`` best.

    The greedy stage (B = 1 from one beam) is
    :meth:`viva_glyph.core.nearest.Residuals.take_nearest`, whose choice is exact;
    here the kept candidates are the B smallest float scores.

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

    Returns
    -------
    BeamState
        With ``min(beam, b * K)`` beams and one more stage of codes.
    """
    assert state.residual is not None, "beam_step needs a state with residuals"
    n, b, d1 = state.residual.shape
    d, k = d1 - 1, book.size
    rows = state.residual.reshape(n * b, d1)
    if work is None or work.size < n * b * k:
        work = np.empty(n * b * k, dtype=rows.dtype)
    scores = work[: n * b * k].reshape(n * b, k)
    np.matmul(rows, book.table, out=scores)  # ||c||^2 - 2 r.c for every (row, beam, code)
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
    kernel = lut_kernel(backend)
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


def lut_kernel(backend: str = "auto") -> Any:
    """The numba kernel of :func:`lut_step`, or None for the numpy path
    (see :func:`~viva_glyph.core.nearest.numba_module`)."""
    kernels = numba_module("viva_glyph.core._numba", backend)
    return None if kernels is None else kernels.lut_step_kernel


class EncoderTables:
    """What the table path needs of a stack of codebooks, built once per encoder.

    Attributes
    ----------
    cross : list of ndarray
        ``cross[m]``: :func:`cross_tables` of stage m against the stages before it, (m, K, K).
    table : ndarray, shape (D + 1, M K)
        The stages' augmented tables side by side.
    """

    def __init__(self, books: Sequence[Codebook]) -> None:
        self.cross = [cross_tables(books[:m], books[m]) for m in range(len(books))]
        self.table = np.ascontiguousarray(np.concatenate([b.table for b in books], axis=1))
        self.k = books[0].size

    def base(self, state: BeamState, num_stages: int) -> list[NDArray[Any]]:
        """``||c||^2 - 2 x.c`` of the rows of a fresh state against each of the first
        ``num_stages`` stages, from one GEMM: a list of (n, K) views."""
        assert state.residual is not None
        rows = state.residual.reshape(-1, state.residual.shape[2])
        full = rows @ self.table[:, : num_stages * self.k]
        return [full[:, s * self.k : (s + 1) * self.k] for s in range(num_stages)]


def path_costs(config: RvqConfig, beam_size: int) -> tuple[float, float]:
    """Modelled time (ns per row) of the residual path and of the table path.

    Residual path: every stage a GEMM of all B beams, (D + 1) K B multiply-adds,
    and the selection among B K candidates. Table path: one GEMM of the row,
    (D + 1) K multiply-adds per stage, and B K scores built from the m earlier
    stages' cross tables (``m (m - 1) / 2`` additions over the M stages).
    """
    m, d, k, b = config.num_stages, config.dimension, config.codebook_size, beam_size
    gemm = m * (d + 1) * k * GEMM_NS_PER_MAC
    residual = b * gemm + m * b * k * RESIDUAL_NS_PER_CANDIDATE
    table = gemm + b * k * (m + m * (m - 1) / 2) * TABLE_NS_PER_ADD
    return residual, table


def use_lut(config: RvqConfig, beam_size: int, itemsize: int = 4) -> bool:
    """Whether the table path is taken: the cost model's choice (:func:`path_costs`).

    B = 1 always takes the residual path: its GEMMs are the table path's (the
    same M K (D + 1) products), it carries the running residual the greedy
    decision's bounds need, and its residual update (O(D) per stage) is cheaper
    than the table path's additions (O(K m)) whenever D is small next to K m.
    B > 1 takes the tables when :func:`path_costs` says they are cheaper and
    they fit in :data:`LUT_BYTES`. Stages of different sizes always take the
    residual path (the cross tables and their kernels are square, K x K).
    """
    m, k = config.num_stages, config.codebook_size
    if beam_size <= 1 or not config.uniform or m * (m - 1) // 2 * k * k * itemsize > LUT_BYTES:
        return False
    residual, table = path_costs(config, beam_size)
    return table < residual


def _beam_bytes(config: RvqConfig, itemsize: int) -> int:
    """Scratch bytes one beam of one row takes in the search (the largest path)."""
    d, k, m = config.dimension, config.codebook_size, config.num_stages
    return 3 * k * itemsize + 2 * (d + 1) * itemsize + 2 * (m + 1) * 8


def max_beam_size(config: RvqConfig, dtype: Any = np.float32) -> int:
    """Largest beam whose search of one row fits in :data:`BEAM_SCRATCH_BYTES`."""
    return max(1, BEAM_SCRATCH_BYTES // _beam_bytes(config, np.dtype(dtype).itemsize))


def check_beam_size(config: RvqConfig, beam_size: int, num_stages: int, dtype: Any) -> int:
    """The beam to search with: ``beam_size`` capped at ``K_1 ... K_(m-1)``
    (exhaustive already), after checking that it fits in memory.

    Raises
    ------
    ValueError
        If the beam needs more than :data:`BEAM_SCRATCH_BYTES` per row; the
        message gives the largest that fits.
    """
    beam = min(int(beam_size), math.prod(config.stage_sizes[: num_stages - 1]))
    largest = max_beam_size(config, dtype)
    if beam > largest:
        need = beam * _beam_bytes(config, np.dtype(dtype).itemsize)
        capped = f" (searched as {beam:,}, exhaustive already)" if beam < beam_size else ""
        raise ValueError(
            f"beam_size {int(beam_size):,}{capped} needs about {need / 2**30:,.1f} GiB of scratch "
            f"per row (B x K scores); the largest beam_size that fits in "
            f"BEAM_SCRATCH_BYTES ({BEAM_SCRATCH_BYTES >> 20} MiB) is {largest:,}"
        )
    return beam
