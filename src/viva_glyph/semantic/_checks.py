"""Argument checks of the semantic-ID model (validated once, at the public entry points)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import positive_int

__all__ = [
    "MAX_LEVELS",
    "MAX_SUFFIX_SIZE",
    "check_balance",
    "check_codes",
    "check_flag",
    "check_keys",
    "check_levels",
    "check_normalize",
    "check_suffix_size",
    "str_keys",
    "tie_order",
]

#: Most levels: the levels and the suffix are named by the letters a..z in token strings.
MAX_LEVELS = 25
#: Characters of a numpy str array of keys (N x longest key) allowed beyond 8x their text;
#: past that, keys are ranked in Python instead.
KEY_CHARS = 1 << 26
#: Largest suffix range: suffixes 0..999,999,999 (at most nine digits in a token string).
MAX_SUFFIX_SIZE = 10**9


def check_levels(levels: object) -> int:
    """A positive int of at most :data:`MAX_LEVELS`."""
    value = positive_int(levels, "levels")
    if value > MAX_LEVELS:
        raise ValueError(
            f"levels must be at most {MAX_LEVELS}, got {value}: token strings name the "
            "levels and the suffix by the letters a..z"
        )
    return value


def check_suffix_size(suffix_size: object) -> int:
    """A positive int of at most :data:`MAX_SUFFIX_SIZE`."""
    value = positive_int(suffix_size, "suffix_size")
    if value > MAX_SUFFIX_SIZE:
        raise ValueError(
            f"suffix_size must be at most {MAX_SUFFIX_SIZE} (nine-digit suffix tokens), got {value}"
        )
    return value


def check_flag(value: object, name: str) -> bool:
    """A bool (numpy's too); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_balance(balance: object) -> float | None:
    """``None`` or a finite float >= 0."""
    if balance is None:
        return None
    if isinstance(balance, bool) or not isinstance(balance, (int, float, np.floating, np.integer)):
        raise TypeError(f"balance must be None or a float >= 0, got {type(balance).__name__}")
    value = float(balance)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"balance must be None or a finite float >= 0, got {balance!r}")
    return value


def check_codes(codes: Any, radices: Sequence[int]) -> NDArray[np.int64]:
    """Codes (N, P) as int64 (one row may come as (P,)), each column within its radix,
    P <= len(radices); an error names the first bad row and its value."""
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] > len(radices):
        raise ValueError(f"codes must have shape (N, P) with P <= {len(radices)}, got {arr.shape}")
    for j in range(arr.shape[1]):
        col = arr[:, j]  # the input's dtype: uint64 beyond int64 is not wrapped
        if col.size and (col.min() < 0 or col.max() >= radices[j]):
            row = int(np.flatnonzero((col < 0) | (col >= radices[j]))[0])
            raise ValueError(
                f"codes column {j} must be in [0, {radices[j]}), got {col[row]} at row {row}"
            )
    return arr.astype(np.int64, copy=False)


def check_keys(keys: Sequence[Any] | NDArray[Any] | None, n: int) -> NDArray[Any] | None:
    """``None``, or n distinct keys, all str or all int (bool, float, bytes refused)."""
    if keys is None:
        return None
    kinds: set[str] = set()
    if not isinstance(keys, np.ndarray):
        kinds = {_key_kind(k) for k in keys} if isinstance(keys, Sequence) else {"other"}
        if "nul" in kinds:  # numpy's str arrays drop trailing NULs: "a\x00" would equal "a"
            i = next(i for i, k in enumerate(keys) if _key_kind(k) == "nul")
            raise ValueError(f"key {i} ends in a NUL character ({keys[i][:40]!r}): drop it")
        if not kinds <= {"str"} and not kinds <= {"int"}:
            got = sorted({type(k).__name__ for k in keys}) if isinstance(keys, Sequence) else []
            raise TypeError(
                f"keys must all be str or all be int, got {', '.join(got) or type(keys).__name__}"
            )
    if kinds == {"str"} and not isinstance(keys, np.ndarray) and len(keys) == n:
        arr = str_keys(keys)
    else:
        arr = np.asarray(keys)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"keys must be a sequence of {n} keys (one per row), got shape {arr.shape}"
        )
    if kinds == {"int"} and arr.dtype.kind not in "iu":
        raise ValueError("int keys must fit in 64-bit integers; give larger ones as str")
    if arr.dtype.kind not in "iuU":
        raise TypeError(f"keys must all be str or all be int, got dtype {arr.dtype}")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.shape[0] != n:
        dup = counts > 1
        raise ValueError(
            f"keys must be distinct: {uniq[dup][0].item()!r} appears {counts[dup][0]} times"
        )
    return arr


def str_keys(keys: Sequence[str]) -> NDArray[Any]:
    """Str keys as an array that sorts as they do: a numpy str array, or (when one key is
    far longer than the rest, so that array would pad every key to it) their ranks."""
    lengths = [len(k) for k in keys]
    if len(keys) * max(lengths, default=0) > max(KEY_CHARS, 8 * sum(lengths)):
        return _key_ranks(keys)
    return np.asarray(keys)


def tie_order(keys: Sequence[Any], names: Sequence[str]) -> NDArray[Any]:
    """What orders items of equal error by key, as :meth:`SemanticIds.unique` orders them:
    int keys by value (ranks, so ints past 64 bits work too), any others by their text
    (``names``, the keys as the ID store keeps them)."""
    ints = all(
        isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in keys
    )
    if ints and len(keys):
        values = [int(k) for k in keys]
        order = sorted(range(len(values)), key=values.__getitem__)
        ranks = np.empty(len(values), dtype=np.int64)
        ranks[order] = np.arange(len(values))
        return ranks
    return str_keys(list(names))


def _key_ranks(keys: Sequence[Any]) -> NDArray[np.int64]:
    """Rank of each distinct str key in code-point order (the order of numpy's str arrays)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    for a, b in itertools.pairwise(order):
        if keys[a] == keys[b]:
            raise ValueError(f"keys must be distinct: {str(keys[a])[:80]!r} appears more than once")
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys))
    return ranks


def _key_kind(key: object) -> str:
    if isinstance(key, (str, np.str_)):
        return "nul" if key.endswith("\x00") else "str"
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return "int"
    return "other"


def check_normalize(
    normalize: object, scales: Sequence[float] | None, metric: str, beam: int, levels: int
) -> tuple[bool, tuple[float, ...] | None]:
    if not check_flag(normalize, "normalize_residuals"):
        return False, None
    if metric != "cosine":
        raise ValueError(f"normalize_residuals=True needs metric='cosine', got {metric!r}")
    if beam > 1:
        raise ValueError("normalize_residuals=True needs beam_size=1")
    if scales is None:
        raise ValueError("normalize_residuals=True needs residual_scales (one per level)")
    vals = tuple(float(v) for v in scales)
    if len(vals) != levels or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(
            f"residual_scales must be {levels} finite positive floats, got {list(scales)!r}"
        )
    return True, vals
