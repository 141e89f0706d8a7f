# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Lazy encode and decode of dask arrays, one block per task.

The encoder enters the graph once, as a single key made with
:func:`dask.delayed`; every block task depends on that key, so the scheduler
ships the encoder to each worker once and the tasks share it.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_code_shape, check_matrix, positive_int
from viva_glyph.checks import num_stages as stage_count
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.nearest import chunk_rows

if TYPE_CHECKING:
    import dask.array as da
    from dask.delayed import Delayed

__all__ = ["aligned_rows", "as_dask_matrix", "decode", "encode", "encoder_key", "rows_per_chunk"]

logger = logging.getLogger(__name__)


def _check_encoder(encoder: object) -> RvqEncoder:
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    return encoder


def rows_per_chunk(encoder: RvqEncoder) -> int:
    """Rows of one in-memory encoding chunk of ``encoder`` (see :meth:`RvqEncoder.encode`).

    Dask blocks whose boundaries are multiples of this row count run exactly
    the same matrix products as the in-memory encoder, so their codes are
    bit-identical to it.
    """
    c = encoder.config
    return chunk_rows(c.codebook_size, c.dimension, encoder.dtype.itemsize)


def aligned_rows(chunks: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Row chunks close to ``chunks`` whose boundaries are multiples of ``multiple``.

    Parameters
    ----------
    chunks : tuple of int
        Row counts of the blocks, summing to N.
    multiple : int
        Row alignment.

    Returns
    -------
    tuple of int
        Row counts summing to N; all boundaries but the last are multiples of
        ``multiple``; no empty blocks.
    """
    n = sum(chunks)
    bounds: list[int] = [0]
    stop = 0
    for size in chunks[:-1]:
        stop += size
        b = round(stop / multiple) * multiple
        if bounds[-1] < b < n:
            bounds.append(b)
    bounds.append(n)
    return tuple(b - a for a, b in itertools.pairwise(bounds))


def as_dask_matrix(X: object, dimension: int | None, name: str = "X") -> da.Array:
    """Return ``X`` as a 2-D real dask array with one block across the columns.

    Parameters
    ----------
    X : dask.array.Array, shape (N, D)
    dimension : int or None
        Required D, or None to accept any.

    Raises
    ------
    TypeError
        If ``X`` is not a dask array of real numbers.
    ValueError
        If it is not 2-D, is empty, or has the wrong D.
    """
    import dask.array as da

    if not isinstance(X, da.Array):
        raise TypeError(
            f"{name} must be a dask array of shape (N, D), got {type(X).__name__}; "
            "wrap arrays with dask.array.from_array or use viva_glyph.dask.from_npy / from_zarr"
        )
    if any(np.isnan(s) for s in X.shape):
        raise ValueError(f"{name} has unknown chunk sizes; call X.compute_chunk_sizes() first")
    check_matrix(X, dimension, name)
    out: da.Array = X.rechunk({1: -1}) if len(X.chunks[1]) > 1 else X
    return out


def encoder_key(encoder: RvqEncoder) -> Delayed:
    """The encoder as one graph key, sent to each worker once (:func:`shared`)."""
    from viva_glyph.dask._compute import shared

    key: Delayed = shared(_check_encoder(encoder))
    return key


def _row_offset(block_info: dict[Any, Any] | None) -> int:
    if not block_info or None not in block_info:
        return 0
    return int(block_info[None]["array-location"][0][0])


def _encode_block(
    block: NDArray[Any],
    encoder: RvqEncoder,
    num_stages: int,
    beam_size: int,
    block_info: dict[Any, Any] | None = None,
) -> NDArray[Any]:
    try:
        return encoder.encode(block, num_stages, beam_size=beam_size)
    except ValueError as exc:  # name the global row, not the row inside the block
        raise ValueError(f"block starting at row {_row_offset(block_info)}: {exc}") from exc


def _decode_block(codes: NDArray[Any], encoder: RvqEncoder) -> NDArray[Any]:
    return encoder.decode(codes)


def encode(
    encoder: RvqEncoder,
    X: da.Array,
    *,
    beam_size: int | None = None,
    num_stages: int | None = None,
) -> da.Array:
    """Lazy residual codes of a dask array, block by block.

    Row blocks are re-aligned to the encoder's in-memory chunk rows
    (:func:`rows_per_chunk`) when needed, so the result equals
    ``encoder.encode(X.compute(), ...)`` bit for bit.

    Parameters
    ----------
    encoder : RvqEncoder
    X : dask.array.Array, shape (N, D), real dtype
    beam_size : int, optional
        1 for greedy encoding, B > 1 for beam search; default: the model's encoding.
    num_stages : int, optional
        Encode only the first m <= M stages.

    Returns
    -------
    dask.array.Array, shape (N, m), dtype ``encoder.code_dtype``, chunked by rows
    """
    enc = _check_encoder(encoder)
    m = stage_count(num_stages, enc.config.num_stages)
    beam = enc.encoding.beam_size if beam_size is None else positive_int(beam_size, "beam_size")
    x = as_dask_matrix(X, enc.config.dimension)
    rows = aligned_rows(x.chunks[0], rows_per_chunk(enc))
    if rows != x.chunks[0]:
        logger.debug(
            "re-aligning %d row blocks to multiples of %d rows", len(rows), rows_per_chunk(enc)
        )
        x = x.rechunk({0: rows})
    meta = np.empty((0, m), dtype=enc.code_dtype)
    import dask.array as da

    return da.map_blocks(
        _encode_block,
        x,
        encoder_key(enc),
        m,
        beam,
        dtype=enc.code_dtype,
        chunks=(x.chunks[0], (m,)),
        meta=meta,
        token="viva-glyph-encode",
    )


def decode(encoder: RvqEncoder, codes: da.Array) -> da.Array:
    """Lazy vectors from a dask array of codes (progressive when m < M).

    Parameters
    ----------
    encoder : RvqEncoder
    codes : dask.array.Array, shape (N, m), integer dtype, 1 <= m <= M

    Returns
    -------
    dask.array.Array, shape (N, D), dtype ``encoder.dtype``, chunked by rows
    """
    import dask.array as da

    enc = _check_encoder(encoder)
    if not isinstance(codes, da.Array):
        raise TypeError(f"codes must be a dask array of shape (N, m), got {type(codes).__name__}")
    check_code_shape(codes, enc.config.num_stages, "codes")
    if len(codes.chunks[1]) > 1:
        codes = codes.rechunk({1: -1})
    d = enc.config.dimension
    return da.map_blocks(
        _decode_block,
        codes,
        encoder_key(enc),
        dtype=enc.dtype,
        chunks=(codes.chunks[0], (d,)),
        meta=np.empty((0, d), dtype=enc.dtype),
        token="viva-glyph-decode",
    )
