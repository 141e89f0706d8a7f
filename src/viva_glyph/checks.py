"""Input validation shared by every public entry point.

Arrays are checked for shape and dtype here without being copied or read, so a
memory-mapped input stays on disk; finiteness is checked chunk by chunk by the
callers that stream (:func:`require_finite`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "as_matrix",
    "as_vector",
    "check_code_shape",
    "check_codes",
    "check_matrix",
    "non_negative_int",
    "positive_int",
    "require_finite",
]


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return operator.index(value)


def non_negative_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 0 (a seed, a count), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return operator.index(value)


def _to_array(data: object, name: str) -> NDArray[Any]:
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (str, bytes)):
        raise TypeError(f"{name} must be numeric vectors, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # numpy >= 1.24 raises for ragged nested sequences
        raise ValueError(f"{name} is ragged: all vectors must have the same length") from exc
    if arr.dtype == object:
        raise ValueError(f"{name} is ragged or holds non-numbers: got {_describe(data)}")
    return arr


def _describe(data: object) -> str:
    if isinstance(data, Sequence) and len(data) > 0:
        return f"a {type(data).__name__} of {type(data[0]).__name__}"
    return type(data).__name__


def _check_dtype(arr: NDArray[Any], name: str) -> None:
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers (float or int), got dtype {arr.dtype}; "
            "convert it with np.asarray(..., dtype=np.float32)"
        )


def as_matrix(data: object, dim: int | None, name: str = "X") -> NDArray[Any]:
    """View ``data`` as an (N, D) numeric array without copying ndarrays.

    Parameters
    ----------
    data : array_like, shape (N, D) or (D,)
        Vectors; a 1-D input is one vector. ndarrays (memory maps included) are
        returned as views, never copied or read.
    dim : int or None
        Required dimension D, or None to accept any.
    name : str
        Name used in error messages.

    Returns
    -------
    ndarray, shape (N, D), the input's numeric dtype

    Raises
    ------
    TypeError
        For non-numeric input.
    ValueError
        For ragged, empty, wrongly shaped input.
    """
    arr = _to_array(data, name)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    check_matrix(arr, dim, name, shapes="a vector (D,) or a matrix (N, D)")
    return arr


def check_matrix(
    arr: Any, dim: int | None, name: str = "X", *, shapes: str = "a matrix (N, D)"
) -> None:
    """Check dtype and shape of any array-like with ``.dtype``, ``.ndim`` and ``.shape``
    (numpy or dask) as an (N, D) matrix of reals, without reading its data.

    Raises
    ------
    TypeError
        For a non-numeric dtype.
    ValueError
        For a shape other than (N, D) with N, D >= 1 and D equal to ``dim``.
    """
    _check_dtype(arr, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be {shapes}, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        what = "is empty" if 0 in arr.shape else "has a negative size"
        raise ValueError(f"{name} {what}: got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]}, but the encoder expects dimension {dim}"
        )


def check_code_shape(
    arr: Any, num_stages: int | None, name: str = "codes", *, vector: bool = False
) -> None:
    """Check dtype and shape of code arrays (numpy or dask) without reading their values.

    Parameters
    ----------
    arr : array-like with ``.dtype``, ``.ndim``, ``.shape``
        Codes, shape (N, m); also (m,) when ``vector``.
    num_stages : int or None
        Largest m allowed (the model's M), or None for any m >= 1.

    Raises
    ------
    TypeError
        For a non-integer dtype.
    ValueError
        For another shape.
    """
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    m = arr.shape[-1] if arr.ndim in ((1, 2) if vector else (2,)) else 0
    if m < 1 or (num_stages is not None and m > num_stages):
        bound = f"1 <= m <= {num_stages}" if num_stages is not None else "m >= 1"
        shapes = "(N, m) or (m,)" if vector else "(N, m)"
        raise ValueError(f"{name} must have shape {shapes} with {bound}, got {arr.shape}")


def check_codes(
    codes: Any,
    num_stages: int | None,
    codebook_size: int | Sequence[int],
    name: str = "codes",
    *,
    vector: bool = False,
    start_row: int = 0,
) -> NDArray[Any]:
    """Return codes as an (N, m) integer array after checking dtype, shape and range.

    Parameters
    ----------
    codes : array_like of int, shape (N, m) (or (m,) when ``vector``: one row)
    num_stages : int or None
        Largest m allowed, or None for any m >= 1.
    codebook_size : int or sequence of int
        Codes must lie in ``[0, codebook_size)``; with one size per stage
        ``(K_1, ..., K_M)``, column j in ``[0, K_j)`` (and m <= M).
    name : str
        What messages call the input.
    start_row : int
        Row number of the first row, for messages about a block of a larger input.

    Returns
    -------
    ndarray, shape (N, m), the input's integer dtype (a view where possible)

    Raises
    ------
    TypeError
        For a non-integer dtype.
    ValueError
        For another shape, or a code outside ``[0, codebook_size)`` (naming its row).
    """
    arr = np.asarray(codes)
    check_code_shape(arr, num_stages, name, vector=vector)
    arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
    if not isinstance(codebook_size, Sequence):
        sizes = [int(codebook_size)] * arr.shape[1]
    elif arr.shape[1] > len(codebook_size):
        raise ValueError(
            f"{name} must have at most {len(codebook_size)} columns (one per stage), "
            f"got {arr.shape}"
        )
    else:
        sizes = [int(k) for k in codebook_size[: arr.shape[1]]]
    top = np.asarray(sizes, dtype=np.int64)
    if arr.size and (arr.min() < 0 or (arr.max(axis=0) >= top).any()):
        bad = int(np.flatnonzero(((arr < 0) | (arr >= top)).any(axis=1))[0])
        stage, value = next((j, int(v)) for j, v in enumerate(arr[bad]) if not 0 <= v < sizes[j])
        where = "" if len(set(sizes)) == 1 else f" at stage {stage}"
        raise ValueError(
            f"token index out of range: expected [0, {sizes[stage]}){where}, "
            f"{name} row {start_row + bad} holds {value}"
        )
    return arr


def as_vector(data: object, dim: int | None, name: str = "input") -> NDArray[np.float64]:
    """Return one vector as a finite float64 array of shape (D,)."""
    arr = _to_array(data, name)
    _check_dtype(arr, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one vector of shape (D,), got shape {arr.shape}")
    out: NDArray[np.float64] = as_matrix(arr, dim, name)[0].astype(np.float64)
    require_finite(out[None, :], 0, name)
    return out


def require_finite(chunk: NDArray[Any], start_row: int, name: str = "X") -> None:
    """Raise ``ValueError`` naming the first row of ``chunk`` holding NaN or inf.

    Parameters
    ----------
    chunk : ndarray, shape (n, D)
        Rows ``start_row .. start_row + n - 1`` of the caller's input.
    start_row : int
        Row number of ``chunk[0]`` in the caller's input, for the message.
    """
    if chunk.dtype.kind != "f":
        return
    finite = np.isfinite(chunk)
    if finite.all():
        return
    bad = int(np.flatnonzero(~finite.all(axis=1))[0])
    row = start_row + bad
    raise ValueError(f"{name} row {row} holds NaN or inf: {chunk[bad].tolist()[:8]}")
