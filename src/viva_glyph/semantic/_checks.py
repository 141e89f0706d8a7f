"""Argument checks of the semantic-ID model (validated once, at the public entry points)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["check_balance", "check_codes", "check_keys", "check_normalize"]


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


def check_codes(arr: NDArray[Any], sizes: tuple[int, ...]) -> NDArray[np.intp]:
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
    for j in range(arr.shape[1]):
        if arr.size and (arr[:, j].min() < 0 or arr[:, j].max() >= sizes[j]):
            raise ValueError(f"codes column {j} must be in [0, {sizes[j]})")
    return arr.astype(np.intp)


def check_keys(keys: Sequence[Any] | NDArray[Any] | None, n: int) -> NDArray[Any] | None:
    """``None``, or n distinct keys, all str or all int (bool, float, bytes refused)."""
    if keys is None:
        return None
    if not isinstance(keys, np.ndarray):
        kinds = {_key_kind(k) for k in keys} if isinstance(keys, Sequence) else {"other"}
        if not kinds <= {"str"} and not kinds <= {"int"}:
            got = sorted({type(k).__name__ for k in keys}) if isinstance(keys, Sequence) else []
            raise TypeError(
                f"keys must all be str or all be int, got {', '.join(got) or type(keys).__name__}"
            )
    arr = np.asarray(keys)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"keys must be a sequence of {n} keys (one per row), got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iuU":
        raise TypeError(f"keys must all be str or all be int, got dtype {arr.dtype}")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.shape[0] != n:
        raise ValueError(
            f"keys must be distinct: {uniq[counts > 1][0]!r} appears {counts.max()} times"
        )
    return arr


def _key_kind(key: object) -> str:
    if isinstance(key, (str, np.str_)):
        return "str"
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return "int"
    return "other"


def check_normalize(
    normalize: object, scales: Sequence[float] | None, metric: str, beam: int, levels: int
) -> tuple[bool, tuple[float, ...] | None]:
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize_residuals must be a bool, got {type(normalize).__name__}")
    if not normalize:
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
