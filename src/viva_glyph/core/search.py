"""The encoding engine: beam search over the stage steps of :mod:`viva_glyph.core.steps`.

:func:`beam_search` encodes a chunk of rows at any beam size B, greedy being
B = 1; training runs the same steps (:func:`beam_step`, :func:`lut_step`). For
B > 1 a cost model measured on this hardware (:func:`path_costs`) picks, per
shape, between per-stage GEMMs on the B residuals of every row (the residual
path) and one GEMM of the row against each stage's codebook plus additions of
cross tables between stages (the table path, FAISS's ``use_beam_LUT``). B = 1
runs the residual step, whose decision is exact (see :func:`use_lut`).

Memory is bounded: a beam whose search of one row would take more than
:data:`BEAM_SCRATCH_BYTES` is refused (:func:`check_beam_size`).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.nearest import CHUNK_BYTES, chunk_rows, numba_kernels
from viva_glyph.core.steps import (
    BeamState,
    beam_start,
    beam_step,
    cross_tables,
    exact_sq_errors,
    lut_step,
    numba_kernel,
    top_b,
)
from viva_glyph.threads import default_threads, parallel_map

__all__ = [
    "BEAM_SCRATCH_BYTES",
    "LUT_BYTES",
    "PIECE_ROWS",
    "BeamState",
    "EncoderLike",
    "beam_search",
    "beam_start",
    "beam_step",
    "check_beam_size",
    "cross_tables",
    "lut_step",
    "max_beam_size",
    "numba_kernel",
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


class EncoderLike(Protocol):
    """What the engine needs of an encoder (:class:`viva_glyph.core.encoder.RvqEncoder`)."""

    @property
    def config(self) -> RvqConfig: ...
    @property
    def codebooks(self) -> tuple[Codebook, ...]: ...
    @property
    def codebook_array(self) -> NDArray[Any]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def code_dtype(self) -> np.dtype[Any]: ...


_cache: tuple[Any, list[NDArray[Any]], NDArray[Any] | None] = (None, [], None)


def _encoder_tables(encoder: EncoderLike) -> tuple[list[NDArray[Any]], NDArray[Any]]:
    """Cross tables of an encoder and its stages' augmented tables side by side,
    shape (D + 1, M K); cached for the most recent codebook stack.

    The cache is one tuple replaced whole, so concurrent threads never pair one
    encoder's stack with another's tables.
    """
    global _cache
    stack = encoder.codebook_array
    cached_stack, tables, table = _cache
    if cached_stack is not stack or table is None:
        books = encoder.codebooks
        tables = [cross_tables(books[:m], books[m]) for m in range(len(books))]
        table = np.ascontiguousarray(np.concatenate([b.table for b in books], axis=1))
        _cache = (stack, tables, table)
    return tables, table


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
    decision's bounds need, and its residual update (O(D) per stage) measured cheaper
    than the table path's additions (O(K m)) at every width measured (D <= 768).
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


#: Rows per piece of the fused table path (at most; capped by 2 CHUNK_BYTES of scores
#: per piece). 1024 measured 3-7% faster than 512 and 256 at D = 384 and 768 (B = 5).
PIECE_ROWS = 1024


def beam_search(
    encoder: EncoderLike,
    x_chunk: NDArray[Any],
    num_stages: int,
    beam_size: int,
    *,
    lut: bool | None = None,
    backend: str = "auto",
    sq_errors: NDArray[np.float64] | None = None,
) -> NDArray[Any]:
    """Codes of the first ``num_stages`` stages: greedy (B = 1) or beam search.

    Called by :meth:`viva_glyph.core.encoder.RvqEncoder.encode` for every beam size.
    Rows are processed in pieces (about ``chunk_rows / beam_size`` rows, or
    :data:`PIECE_ROWS` with the fused table kernel) so the working set stays
    cache-sized whatever the beam; with numba the pieces run on
    :func:`~viva_glyph.threads.default_threads` threads, each with one BLAS
    thread.

    Parameters
    ----------
    encoder : EncoderLike
    x_chunk : ndarray, shape (n, D), any real dtype
        Finite rows within the norm limit (checked by the caller).
    num_stages : int
        1 <= m <= M.
    beam_size : int
        B >= 1, at most :func:`max_beam_size` (the caller checks).
    lut : bool, optional
        Force the table path (True) or the residual path (False) for B > 1;
        default :func:`use_lut`. B = 1, and stages of different sizes, always
        run :func:`beam_step`.
    backend : {"auto", "numpy", "numba"}
        numba kernels or their numpy twins.
    sq_errors : ndarray, shape (n,), float64, optional
        B = 1 only: receives ``||x - decode(codes)||^2`` of every row.

    Returns
    -------
    ndarray, shape (n, num_stages), ``encoder.code_dtype``
    """
    cfg = encoder.config
    n, d = x_chunk.shape
    k = cfg.codebook_size
    tables = lut if lut is not None else use_lut(cfg, beam_size, encoder.dtype.itemsize)
    tables = tables and beam_size > 1 and cfg.uniform
    fast = numba_kernels(backend) is not None
    threads = default_threads() if fast and (tables or beam_size == 1) else 1
    item = encoder.dtype.itemsize
    if tables and fast:  # per row: every stage's base scores and the B kept beams
        per_row = num_stages * k * item + beam_size * (num_stages + 2) * 16
        cap = min(PIECE_ROWS, max(1, 2 * CHUNK_BYTES // per_row))
        per = max(1, -(-n // max(1, -(-n // cap))))  # equal pieces, not tied to the threads
    elif beam_size == 1:
        per = max(1, min(chunk_rows(k, d, item), -(-n // threads)))
    else:
        per = max(1, chunk_rows(k, d, item) // beam_size)
    cross, table = _encoder_tables(encoder) if tables else ([], None)
    books = encoder.codebooks[:num_stages]
    codes = np.empty((n, num_stages), dtype=encoder.code_dtype)

    def search(start: int) -> None:
        state = beam_start(x_chunk[start : start + per], encoder.dtype)
        assert state.residual is not None
        rows = state.residual.reshape(-1, d + 1)  # the rows beside a column of ones
        work = None if tables and fast else np.empty(2 * len(rows) * beam_size * k, encoder.dtype)
        if tables:  # base = ||c||^2 - 2 x.c of every stage from one GEMM
            assert table is not None
            base = rows @ table[:, : num_stages * k]
        for stage, book in enumerate(books):
            if tables:  # then table additions
                part = base[:, stage * k : (stage + 1) * k]
                state = lut_step(state, part, cross[stage], beam_size, work, backend=backend)
            else:
                state = beam_step(state, book, beam_size, work, backend=backend)
        codes[start : start + per] = state.best_codes
        if sq_errors is not None:
            sq_errors[start : start + per] = exact_sq_errors(state)

    parallel_map(search, range(0, n, per), threads)
    return codes
