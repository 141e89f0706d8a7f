"""Beam-search residual encoding (FAISS ResidualQuantizer; Liu et al., "Improved RVQ").

Greedy RVQ picks the nearest code at every stage; beam search keeps, for every
vector, the B best partial reconstructions after each stage and extends each of
them by every code of the next stage, keeping again the B best of the B * K
candidates. With B = 1 it is the greedy encoder, bit for bit (same kernel, same
arithmetic); with B >= K^(M-1) it is exhaustive.

A candidate's score is ``||r_b - c||^2 = ||r_b||^2 + (||c||^2 - 2 r_b.c)``; the
bracket comes for all (row, beam, code) triples from one GEMM per stage with the
shared augmented table (:func:`viva_glyph._kernels.nearest_into`). While a row
has a single parent (stage 1, or B = 1) the constant ``||r_b||^2`` is left out,
so selection is exactly the greedy argmin. Ties are broken deterministically:
the B kept candidates are the B smallest by (score, parent rank, code index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._kernels import chunk_rows, numba_kernels
from viva_glyph._threads import default_threads, parallel_map
from viva_glyph.codebook import Codebook

if TYPE_CHECKING:
    from viva_glyph.rvq import RvqConfig, RvqEncoder

__all__ = [
    "BeamState",
    "beam_search",
    "beam_start",
    "beam_step",
    "cross_tables",
    "lut_step",
    "numba_kernel",
    "top_b",
    "use_lut",
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
    state: BeamState, book: Codebook, beam: int, work: NDArray[Any] | None = None
) -> BeamState:
    """Extend every beam by every code of ``book`` and keep the ``beam`` best.

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


#: Largest total size (bytes) of the cross tables for which the LUT search is used.
LUT_BYTES = 64 << 20

_cache: tuple[Any, list[NDArray[Any]]] = (None, [])


def _encoder_tables(encoder: RvqEncoder) -> list[NDArray[Any]]:
    """Cross tables of an encoder, cached for the most recent codebook stack.

    The cache is one tuple replaced whole, so concurrent threads never pair one
    encoder's stack with another's tables.
    """
    global _cache
    stack = encoder.codebook_array
    cached_stack, tables = _cache
    if cached_stack is not stack:
        books = encoder.codebooks
        tables = [cross_tables(books[:m], books[m]) for m in range(len(books))]
        _cache = (stack, tables)
    return tables


def use_lut(config: RvqConfig, beam_size: int, itemsize: int = 4) -> bool:
    """Whether the table path is taken: B > 1 and all cross tables within ``LUT_BYTES``."""
    m, k = config.num_stages, config.codebook_size
    return beam_size > 1 and m * (m - 1) // 2 * k * k * itemsize <= LUT_BYTES


#: Rows per piece of the fused table path (all its per-piece data stay in L2).
PIECE_ROWS = 512


def beam_search(
    encoder: RvqEncoder,
    x_chunk: NDArray[Any],
    num_stages: int,
    beam_size: int,
    *,
    lut: bool | None = None,
    backend: str = "auto",
) -> NDArray[Any]:
    """Beam-search codes of the first ``num_stages`` stages.

    Called by :meth:`viva_glyph.rvq.RvqEncoder.encode` for ``beam_size > 1``.
    Rows are processed in pieces (about ``chunk_rows / beam_size`` rows, or
    :data:`PIECE_ROWS` with the fused kernel) so the working set stays
    cache-sized whatever the beam; with the numba kernel the pieces run on
    :func:`~viva_glyph._threads.default_threads` threads.

    Parameters
    ----------
    encoder : RvqEncoder
    x_chunk : ndarray, shape (n, D), ``encoder.dtype``
        Finite rows.
    num_stages : int
        1 <= m <= M.
    beam_size : int
        B >= 1; B = 1 gives the greedy codes (always by the residual path).
    lut : bool, optional
        Force the table path (True) or the residual-GEMM path (False); default
        :func:`use_lut`.
    backend : {"auto", "numpy", "numba"}
        Implementation of the table path (see :func:`numba_kernel`).

    Returns
    -------
    ndarray, shape (n, num_stages), ``encoder.code_dtype``
    """
    cfg = encoder.config
    n, d = x_chunk.shape
    k = cfg.codebook_size
    tables = lut if lut is not None else use_lut(cfg, beam_size, encoder.dtype.itemsize)
    tables = tables and beam_size > 1
    fused = tables and numba_kernel(backend) is not None
    threads = default_threads() if fused else 1
    if fused:  # equal pieces of at most PIECE_ROWS rows (not tied to the thread count)
        per = max(1, -(-n // max(1, -(-n // PIECE_ROWS))))
    else:
        per = max(1, chunk_rows(k, d, encoder.dtype.itemsize) // beam_size)
    cross = _encoder_tables(encoder) if tables else []
    books = encoder.codebooks[:num_stages]
    codes = np.empty((n, num_stages), dtype=encoder.code_dtype)

    def search(start: int) -> None:
        state = beam_start(x_chunk[start : start + per], encoder.dtype)
        assert state.residual is not None
        rows = state.residual.reshape(-1, d + 1)  # the rows beside a column of ones
        work = None if fused else np.empty(2 * len(rows) * beam_size * k, encoder.dtype)
        for stage, book in enumerate(books):
            if tables:  # base = ||c||^2 - 2 x.c from one GEMM, then table additions
                state = lut_step(
                    state, rows @ book.table, cross[stage], beam_size, work, backend=backend
                )
            else:
                state = beam_step(state, book, beam_size, work)
        codes[start : start + per] = state.best_codes

    parallel_map(search, range(0, n, per), threads)
    return codes
