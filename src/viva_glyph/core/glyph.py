"""Glyph ids and compact bytes: one integer or a few bytes per token sequence.

A glyph id reads the token indices as the digits of a mixed-radix number,
stage 1 most significant, so sorting ids sorts glyphs coarse to fine. The
radix of stage m is its codebook size K_m: one K for every stage, or one size
per stage (``codebook_size=(16, 256, 256)``: id ``(i_1 * 256 + i_2) * 256 + i_3``).
Packed bytes hold ``ceil(log2 K_m)`` bits for stage m, stage 1 first,
big-endian bit order, zero-padded to whole bytes: the same coarse-to-fine order.

Every function takes ``codebook_size`` as an int (all stages alike; then
``num_stages`` says how many) or as a sequence of per-stage sizes (then
``num_stages`` may be omitted, and must equal its length when given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import check_codes, positive_int
from viva_glyph.core.config import stage_sizes
from viva_glyph.core.nearest import code_dtype

__all__ = [
    "bits_per_stage",
    "codes_to_glyph_ids",
    "from_bytes",
    "glyph_id",
    "glyph_ids_to_codes",
    "indices_from_glyph_id",
    "pack_codes",
    "packed_size",
    "to_bytes",
    "unpack_codes",
]

#: Per-stage codebook sizes, or one size for every stage.
Sizes = int | Sequence[int]


def _sizes(codebook_size: Sizes, num_stages: int | None) -> tuple[int, ...]:
    """The M per-stage sizes of ``codebook_size`` (an int needs ``num_stages``)."""
    if isinstance(codebook_size, Sequence):
        sizes = stage_sizes(codebook_size)
        if num_stages is not None and positive_int(num_stages, "num_stages") != len(sizes):
            raise ValueError(
                f"num_stages = {num_stages} disagrees with the {len(sizes)} codebook sizes {sizes}"
            )
        return sizes
    k = positive_int(codebook_size, "codebook_size")
    if num_stages is None:
        raise TypeError("num_stages is required when codebook_size is one int")
    return (k,) * positive_int(num_stages, "num_stages")


def _radix_text(sizes: tuple[int, ...]) -> str:
    k = sizes[0]
    return f"{k}**{len(sizes)}" if all(s == k for s in sizes) else " * ".join(map(str, sizes))


def _code_dtype(sizes: tuple[int, ...]) -> np.dtype[Any]:
    """The core code dtype of the largest size (int64 beyond int32's range)."""
    k = max(sizes)
    return code_dtype(k) if k <= 1 << 31 else np.dtype(np.int64)


def bits_per_stage(codebook_size: int) -> int:
    """``ceil(log2 K)``: bits one stage's index needs (0 when K = 1)."""
    return (positive_int(codebook_size, "codebook_size") - 1).bit_length()


def packed_size(codebook_size: Sizes, num_stages: int | None = None) -> int:
    """Bytes of one packed token sequence: ``ceil(sum_m ceil(log2 K_m) / 8)``."""
    sizes = _sizes(codebook_size, num_stages)
    return math.ceil(sum(bits_per_stage(k) for k in sizes) / 8)


def _as_codes(codes: ArrayLike, codebook_size: Sizes) -> tuple[NDArray[np.int64], tuple[int, ...]]:
    """(N, M) codes as int64 and the M per-stage sizes, checked against each other."""
    if isinstance(codebook_size, Sequence):
        sizes = stage_sizes(codebook_size)
        arr = check_codes(codes, None, sizes).astype(np.int64, copy=False)
        if arr.shape[1] != len(sizes):
            raise ValueError(
                f"codes must have one column per codebook size ({len(sizes)}), got {arr.shape}"
            )
        return arr, sizes
    k = positive_int(codebook_size, "codebook_size")
    arr = check_codes(codes, None, k).astype(np.int64, copy=False)
    return arr, (k,) * arr.shape[1]


def glyph_id(indices: Sequence[int], codebook_size: Sizes) -> int:
    """The exact glyph id (a Python int) of one token sequence.

    >>> glyph_id([1, 2], 256)
    258
    >>> glyph_id([1, 2, 3], [16, 256, 4])
    1035
    """
    _, sizes = _as_codes(np.asarray([list(indices)], dtype=np.int64), codebook_size)
    value = 0
    for index, k in zip(indices, sizes, strict=True):
        value = value * k + int(index)
    return value


def indices_from_glyph_id(
    gid: int, codebook_size: Sizes, num_stages: int | None = None
) -> tuple[int, ...]:
    """Token indices of a glyph id; the inverse of :func:`glyph_id`."""
    sizes = _sizes(codebook_size, num_stages)
    if isinstance(gid, bool) or not isinstance(gid, (int, np.integer)):
        raise TypeError(f"glyph id must be an int, got {type(gid).__name__}")
    gid = int(gid)
    if not 0 <= gid < math.prod(sizes):
        raise ValueError(f"glyph id must be in [0, {_radix_text(sizes)}), got {gid}")
    digits = []
    for k in reversed(sizes):
        gid, digit = divmod(gid, k)
        digits.append(digit)
    return tuple(reversed(digits))


def codes_to_glyph_ids(codes: ArrayLike, codebook_size: Sizes) -> NDArray[np.uint64]:
    """Glyph ids of many token sequences.

    Parameters
    ----------
    codes : array_like of int, shape (N, M)
    codebook_size : int or sequence of M ints

    Returns
    -------
    ndarray, shape (N,), uint64

    Raises
    ------
    ValueError
        When the product of the sizes exceeds 2**64; use :func:`pack_codes` instead.
    """
    arr, sizes = _as_codes(codes, codebook_size)
    if math.prod(sizes) > 1 << 64:
        raise ValueError(
            f"{_radix_text(sizes)} glyphs do not fit in uint64; use pack_codes() for bytes"
        )
    ids = np.zeros(arr.shape[0], dtype=np.uint64)
    for column, k in zip(arr.T, sizes, strict=True):
        ids = ids * np.uint64(k) + column.astype(np.uint64)
    return ids


def glyph_ids_to_codes(
    ids: ArrayLike, codebook_size: Sizes, num_stages: int | None = None
) -> NDArray[Any]:
    """Token sequences of glyph ids: (N,) ids to (N, M) codes in the core code dtype
    (that of the largest size)."""
    sizes = _sizes(codebook_size, num_stages)
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"glyph ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    total = math.prod(sizes)
    if total > 1 << 64:
        raise ValueError(f"{_radix_text(sizes)} glyphs do not fit in uint64; use unpack_codes()")
    if arr.size and (arr.min() < 0 or (total < 1 << 64 and int(arr.max()) >= total)):
        raise ValueError(f"glyph ids must be in [0, {_radix_text(sizes)})")
    rest = arr.astype(np.uint64)
    codes = np.empty((arr.shape[0], len(sizes)), dtype=_code_dtype(sizes))
    for stage in range(len(sizes) - 1, -1, -1):
        k = np.uint64(sizes[stage])
        codes[:, stage] = rest % k
        rest = rest // k
    return codes


def pack_codes(codes: ArrayLike, codebook_size: Sizes) -> NDArray[np.uint8]:
    """Pack (N, M) codes into (N, packed_size) bytes, coarse to fine."""
    arr, sizes = _as_codes(codes, codebook_size)
    n = arr.shape[0]
    bits = [bits_per_stage(k) for k in sizes]
    if sum(bits) == 0:
        return np.zeros((n, 0), dtype=np.uint8)
    columns = []
    for stage, width in enumerate(bits):
        shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
        columns.append(((arr[:, stage, None] >> shifts) & 1).astype(np.uint8))
    return np.packbits(np.concatenate(columns, axis=1), axis=1)


def unpack_codes(
    packed: ArrayLike, codebook_size: Sizes, num_stages: int | None = None
) -> NDArray[Any]:
    """Inverse of :func:`pack_codes`: (N, B) uint8 to (N, M) codes."""
    sizes = _sizes(codebook_size, num_stages)
    arr = np.asarray(packed)
    size = packed_size(sizes)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != size:
        raise ValueError(
            f"packed codes must be uint8 of shape (N, {size}), got {arr.dtype} {arr.shape}"
        )
    bits = [bits_per_stage(k) for k in sizes]
    dtype = _code_dtype(sizes)
    codes = np.zeros((arr.shape[0], len(sizes)), dtype=np.int64)
    if sum(bits) == 0:
        return codes.astype(dtype)
    bitmap = np.unpackbits(arr, axis=1, count=sum(bits)).astype(np.int64)
    start = 0
    for stage, width in enumerate(bits):
        weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
        codes[:, stage] = bitmap[:, start : start + width] @ weights
        start += width
    over = codes >= np.asarray(sizes, dtype=np.int64)
    if over.any():
        stage = int(np.flatnonzero(over.any(axis=0))[0])
        raise ValueError(f"packed codes hold an index >= codebook_size {sizes[stage]}")
    return codes.astype(dtype)


def to_bytes(indices: Sequence[int], codebook_size: Sizes) -> bytes:
    """Pack one token sequence into ``packed_size`` bytes."""
    packed = pack_codes(np.asarray([list(indices)], dtype=np.int64), codebook_size)
    return bytes(packed[0])


def from_bytes(data: bytes, codebook_size: Sizes, num_stages: int | None = None) -> tuple[int, ...]:
    """Unpack one token sequence written by :func:`to_bytes`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    row = np.frombuffer(bytes(data), dtype=np.uint8)[None, :]
    return tuple(int(v) for v in unpack_codes(row, codebook_size, num_stages)[0])
