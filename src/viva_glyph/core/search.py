"""The residual loop: every stage encodes what the stages before it left over.

:func:`greedy` is RVQ as written (EnCodec, Défossez et al. 2022; SoundStream,
Zeghidour et al. 2021)::

    q1 = argmin_c ||x - c||,   r1 = x - codebook1[q1]
    q2 = argmin_c ||r1 - c||,  r2 = r1 - codebook2[q2]   ...

each choice the exact float64 nearest code (:class:`~viva_glyph.core.nearest.Residuals`
keeps the bounds). :func:`beam` keeps the B best partial encodings of every row
instead (:mod:`viva_glyph.core.beam`). :func:`encode` runs either on a chunk of
rows, in cache-sized pieces on the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.beam import EncoderTables, beam_start, beam_step, lut_kernel, lut_step
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.nearest import (
    CHUNK_BYTES,
    Residuals,
    VectorStage,
    chunk_rows,
    numba_module,
)
from viva_glyph.threads import default_threads, parallel_map

__all__ = ["PIECE_ROWS", "beam", "encode", "greedy", "greedy_vector"]

#: Rows per piece of the fused table path (at most; capped by 2 CHUNK_BYTES of scores
#: per piece): pieces this long keep the kernel's per-row work in cache at every width.
PIECE_ROWS = 1024


def greedy(
    x: NDArray[Any],
    books: Sequence[Codebook],
    *,
    rescale: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
    backend: str = "auto",
) -> tuple[NDArray[np.intp], Residuals]:
    """Greedy residual quantization of rows ``x`` (n, D) with ``books``.

    Every stage takes the exact nearest code of what the stages before it left
    and subtracts it. ``rescale``, when given, maps the exact residual before
    every stage after the first (semantic IDs scale it to unit length), and the
    stage encodes that instead.

    Returns
    -------
    codes : ndarray, shape (n, m), intp
    residual : Residuals
        What the stages leave over (since the last ``rescale``).
    """
    codes = np.empty((len(x), len(books)), dtype=np.intp)
    residual = Residuals(x, books[0].dtype, backend)
    for stage, book in enumerate(books):
        if rescale is not None and stage > 0:
            residual = Residuals(rescale(residual.exact()), book.dtype, backend)
        codes[:, stage] = residual.take_nearest(book)  # the nearest code of r; r <- r - c
    return codes, residual


def greedy_vector(
    x_aug: NDArray[np.float64], sq_norm: float, stages: Sequence[VectorStage]
) -> tuple[list[int], float]:
    """:func:`greedy` of one vector in as few numpy calls as a stage allows (the spec
    API's and ``encode_vector``'s path): the same codes, the same float64 residual.

    Parameters
    ----------
    x_aug : ndarray, shape (D + 1,), float64
        The vector, finite and within the norm limit, followed by a 1; overwritten by
        the residual.
    sq_norm : float
        ``||x||^2`` as float64 rounds it.
    stages : sequence of VectorStage
        One per codebook.

    Returns
    -------
    codes : list of int
    sq_error : float
        ``||x - sum_m C_m[q_m]||^2``, as :meth:`Residuals.sq_errors` computes it.
    """
    r = x_aug[:-1]  # the residual, updated in place
    sq = sq_norm * stages[0].sq_grow  # an upper bound of ||x||^2
    codes = []
    for stage in stages:
        code, sq = stage.take_nearest(x_aug, r, sq)  # the nearest code of r; r <- r - c
        codes.append(code)
    sq_error = float(np.einsum("nd,nd->n", r[None, :], r[None, :])[0])
    return codes, sq_error


def beam(
    x: NDArray[Any],
    books: Sequence[Codebook],
    beam_size: int,
    tables: EncoderTables | None = None,
    *,
    backend: str = "auto",
) -> NDArray[np.intp]:
    """Beam search: the B best partial encodings of each row, extended stage by stage.

    Every stage extends each kept encoding by every code and keeps the B best
    (:func:`~viva_glyph.core.beam.beam_step`); with ``tables`` the candidates are
    scored from one GEMM of the row and cross tables between stages instead
    (:func:`~viva_glyph.core.beam.lut_step`, FAISS's ``use_beam_LUT``). Returns the
    best encoding's codes, shape (n, m).
    """
    state = beam_start(x, books[0].dtype)
    fused = tables is not None and lut_kernel(backend) is not None
    k = max(book.size for book in books)
    work = None if fused else np.empty(2 * len(x) * beam_size * k, books[0].dtype)
    if tables is not None:  # ||c||^2 - 2 x.c of every stage from one GEMM
        base = tables.base(state, len(books))
    for stage, book in enumerate(books):
        if tables is None:
            state = beam_step(state, book, beam_size, work)
        else:
            cross = tables.cross[stage]
            state = lut_step(state, base[stage], cross, beam_size, work, backend=backend)
    return state.best_codes


def encode(
    books: Sequence[Codebook],
    x: NDArray[Any],
    beam_size: int = 1,
    *,
    lut: bool = False,
    backend: str = "auto",
    sq_errors: NDArray[np.float64] | None = None,
    tables: EncoderTables | None = None,
) -> NDArray[np.intp]:
    """Codes of rows ``x`` (n, D) with ``books`` (the first m stages), greedy or beam.

    Rows are processed in pieces (about ``chunk_rows / beam_size`` rows, or
    :data:`PIECE_ROWS` with the fused table kernel) so the working set stays
    cache-sized whatever the beam; with numba the pieces run on
    :func:`~viva_glyph.threads.default_threads` threads, each with one BLAS thread.

    Parameters
    ----------
    books : sequence of Codebook
        The stages to encode, of one dtype (the compute dtype).
    x : ndarray, shape (n, D), any real dtype
        Finite rows within the norm limit (checked by the caller).
    beam_size : int
        B >= 1 (1: :func:`greedy`), checked by the caller against the memory bound.
    lut : bool
        B > 1: take the table path (the caller's choice, see
        :func:`~viva_glyph.core.beam.use_lut`); stages of different sizes always
        take the residual path.
    backend : {"auto", "numpy", "numba"}
        numba kernels or their numpy twins (identical codes).
    sq_errors : ndarray, shape (n,), float64, optional
        B = 1 only: receives ``||x - decode(codes)||^2`` of every row.
    tables : EncoderTables, optional
        The cross tables of ``books`` (built when needed and not given).

    Returns
    -------
    ndarray, shape (n, m), intp
    """
    n, d = x.shape
    k, item = max(b.size for b in books), books[0].dtype.itemsize
    uniform = len({b.size for b in books}) == 1
    with_tables = lut and beam_size > 1 and uniform
    work = n * k * d * len(books) * beam_size
    fast = numba_module("viva_glyph.core._numba", backend, work) is not None
    backend = backend if fast else "numpy"  # a small first call does not import numba
    threads = default_threads() if fast and (with_tables or beam_size == 1) else 1
    if with_tables and fast:  # per row: every stage's base scores and the B kept beams
        per_row = len(books) * k * item + beam_size * (len(books) + 2) * 16
        cap = min(PIECE_ROWS, max(1, 2 * CHUNK_BYTES // per_row))
        per = max(1, -(-n // max(1, -(-n // cap))))  # equal pieces, not tied to the threads
    elif beam_size == 1:
        per = max(1, min(chunk_rows(k, d, item), -(-n // threads)))
    else:
        per = max(1, chunk_rows(k, d, item) // beam_size)
    if with_tables and tables is None:
        tables = EncoderTables(books)
    codes = np.empty((n, len(books)), dtype=np.intp)

    def piece(start: int) -> None:
        rows = x[start : start + per]
        if beam_size == 1:
            codes[start : start + per], residual = greedy(rows, books, backend=backend)
            if sq_errors is not None:
                sq_errors[start : start + per] = residual.sq_errors()
        else:
            used = tables if with_tables else None
            codes[start : start + per] = beam(rows, books, beam_size, used, backend=backend)

    parallel_map(piece, range(0, n, per), threads)
    return codes
