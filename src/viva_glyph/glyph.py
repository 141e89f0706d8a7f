"""Glyph ids and compact bytes: one integer or a few bytes per token sequence.

A glyph id reads the token indices as the digits of a mixed-radix number with
base K, stage 1 most significant, so sorting ids sorts glyphs coarse to fine.
Packed bytes hold ``ceil(log2 K)`` bits per stage, stage 1 first, big-endian
bit order, zero-padded to whole bytes: the same coarse-to-fine order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph._kernels import code_dtype
from viva_glyph._validate import check_codes, positive_int

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


def bits_per_stage(codebook_size: int) -> int:
    """``ceil(log2 K)``: bits one stage's index needs (0 when K = 1)."""
    return (positive_int(codebook_size, "codebook_size") - 1).bit_length()


def packed_size(codebook_size: int, num_stages: int) -> int:
    """Bytes of one packed token sequence: ``ceil(M * ceil(log2 K) / 8)``."""
    return math.ceil(positive_int(num_stages, "num_stages") * bits_per_stage(codebook_size) / 8)


def _as_codes(codes: ArrayLike, codebook_size: int) -> NDArray[np.int64]:
    return check_codes(codes, None, codebook_size).astype(np.int64, copy=False)


def glyph_id(indices: Sequence[int], codebook_size: int) -> int:
    """The exact glyph id (a Python int) of one token sequence.

    >>> glyph_id([1, 2], 256)
    258
    """
    k = positive_int(codebook_size, "codebook_size")
    _as_codes(np.asarray([list(indices)], dtype=np.int64), k)
    value = 0
    for index in indices:
        value = value * k + int(index)
    return value


def indices_from_glyph_id(gid: int, codebook_size: int, num_stages: int) -> tuple[int, ...]:
    """Token indices of a glyph id; the inverse of :func:`glyph_id`."""
    k = positive_int(codebook_size, "codebook_size")
    m = positive_int(num_stages, "num_stages")
    if isinstance(gid, bool) or not isinstance(gid, (int, np.integer)):
        raise TypeError(f"glyph id must be an int, got {type(gid).__name__}")
    gid = int(gid)
    if not 0 <= gid < k**m:
        raise ValueError(f"glyph id must be in [0, {k}**{m}), got {gid}")
    digits = []
    for _ in range(m):
        gid, digit = divmod(gid, k)
        digits.append(digit)
    return tuple(reversed(digits))


def codes_to_glyph_ids(codes: ArrayLike, codebook_size: int) -> NDArray[np.uint64]:
    """Glyph ids of many token sequences.

    Parameters
    ----------
    codes : array_like of int, shape (N, M)
    codebook_size : int

    Returns
    -------
    ndarray, shape (N,), uint64

    Raises
    ------
    ValueError
        When ``K ** M`` exceeds 2**64; use :func:`pack_codes` instead.
    """
    k = positive_int(codebook_size, "codebook_size")
    arr = _as_codes(codes, k)
    if k ** arr.shape[1] > 1 << 64:
        raise ValueError(
            f"{k}**{arr.shape[1]} glyphs do not fit in uint64; use pack_codes() for bytes"
        )
    ids = np.zeros(arr.shape[0], dtype=np.uint64)
    for column in arr.T:
        ids = ids * np.uint64(k) + column.astype(np.uint64)
    return ids


def glyph_ids_to_codes(ids: ArrayLike, codebook_size: int, num_stages: int) -> NDArray[Any]:
    """Token sequences of glyph ids: (N,) ids to (N, M) codes in the core code dtype."""
    k = positive_int(codebook_size, "codebook_size")
    m = positive_int(num_stages, "num_stages")
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"glyph ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if k**m > 1 << 64:
        raise ValueError(f"{k}**{m} glyphs do not fit in uint64; use unpack_codes()")
    if arr.size and (arr.min() < 0 or (k**m < 1 << 64 and int(arr.max()) >= k**m)):
        raise ValueError(f"glyph ids must be in [0, {k}**{m})")
    rest = arr.astype(np.uint64)
    codes = np.empty((arr.shape[0], m), dtype=code_dtype(k))
    for stage in range(m - 1, -1, -1):
        codes[:, stage] = rest % np.uint64(k)
        rest = rest // np.uint64(k)
    return codes


def pack_codes(codes: ArrayLike, codebook_size: int) -> NDArray[np.uint8]:
    """Pack (N, M) codes into (N, packed_size(K, M)) bytes, coarse to fine."""
    k = positive_int(codebook_size, "codebook_size")
    arr = _as_codes(codes, k)
    bits = bits_per_stage(k)
    n, m = arr.shape
    if bits == 0:
        return np.zeros((n, 0), dtype=np.uint8)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bitmap = ((arr[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(n, m * bits)
    return np.packbits(bitmap, axis=1)


def unpack_codes(packed: ArrayLike, codebook_size: int, num_stages: int) -> NDArray[Any]:
    """Inverse of :func:`pack_codes`: (N, B) uint8 to (N, M) codes."""
    k = positive_int(codebook_size, "codebook_size")
    m = positive_int(num_stages, "num_stages")
    arr = np.asarray(packed)
    size = packed_size(k, m)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != size:
        raise ValueError(
            f"packed codes must be uint8 of shape (N, {size}), got {arr.dtype} {arr.shape}"
        )
    bits = bits_per_stage(k)
    if bits == 0:
        return np.zeros((arr.shape[0], m), dtype=code_dtype(k))
    bitmap = np.unpackbits(arr, axis=1, count=m * bits).reshape(-1, m, bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64)).astype(np.int64)
    codes = bitmap.astype(np.int64) @ weights
    if codes.size and codes.max() >= k:
        raise ValueError(f"packed codes hold an index >= codebook_size {k}")
    return codes.astype(code_dtype(k))


def to_bytes(indices: Sequence[int], codebook_size: int) -> bytes:
    """Pack one token sequence into ``packed_size(K, M)`` bytes."""
    packed = pack_codes(np.asarray([list(indices)], dtype=np.int64), codebook_size)
    return bytes(packed[0])


def from_bytes(data: bytes, codebook_size: int, num_stages: int) -> tuple[int, ...]:
    """Unpack one token sequence written by :func:`to_bytes`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    row = np.frombuffer(bytes(data), dtype=np.uint8)[None, :]
    return tuple(int(v) for v in unpack_codes(row, codebook_size, num_stages)[0])
