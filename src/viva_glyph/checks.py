"""Input validation shared by every public entry point.

Arrays are checked for shape and dtype here without being copied or read, so a
memory-mapped input stays on disk; finiteness is checked chunk by chunk by the
callers that stream (:func:`require_finite`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import operator
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAX_MAGNITUDE",
    "MIN_MAGNITUDE",
    "as_matrix",
    "as_vector",
    "check_code_shape",
    "check_codes",
    "check_magnitude",
    "check_matrix",
    "check_norms",
    "check_scale",
    "checked_rows",
    "has_package",
    "install_hint",
    "memory_available",
    "missing_package",
    "non_negative_int",
    "norm_limit",
    "num_stages",
    "optional_import",
    "positive_int",
    "require_finite",
    "require_package",
]


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return operator.index(value)


def num_stages(value: object, most: int) -> int:
    """How many stages to use: ``value`` (a positive int at most ``most``), or ``most``
    when it is None."""
    if value is None:
        return most
    m = positive_int(value, "num_stages")
    if m > most:
        raise ValueError(f"num_stages must be <= {most}, got {m}")
    return m


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
        if arr.shape[0] == 0:  # name the shape given, not the (1, 0) made of it
            _check_dtype(arr, name)
            want = "a vector (D,)" if dim is None else f"{dim} values"
            raise ValueError(f"{name} is empty: got shape (0,), expected {want}")
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


#: Largest magnitude a training value may have: squared distances of D such
#: values stay far inside float32's range (3.4e38) for any practical D.
MAX_MAGNITUDE = 1e15
#: Smallest largest-magnitude of the data: below it float32 squared distances
#: between nearby vectors underflow (float32's smallest normal is 1.2e-38).
MIN_MAGNITUDE = 1e-15


def check_magnitude(chunk: NDArray[Any], start: int, name: str = "X") -> None:
    """Raise ``ValueError`` naming the first row of ``chunk`` holding NaN, inf or a value
    beyond :data:`MAX_MAGNITUDE` (``start`` is the row number of ``chunk[0]``)."""
    require_finite(chunk, start, name)
    if chunk.dtype.kind == "f" and float(np.finfo(chunk.dtype).max) <= MAX_MAGNITUDE:
        return  # float16 holds nothing that large (and 1e15 as float16 would overflow)
    big = np.abs(chunk) > MAX_MAGNITUDE
    if big.any():
        bad = int(np.flatnonzero(big.any(axis=1))[0])
        worst = float(np.abs(chunk[bad]).max())
        raise ValueError(
            f"{name} row {start + bad} holds a value of magnitude {worst:.3g}, beyond what "
            f"float32 training handles (|x| <= {MAX_MAGNITUDE:.0e}): scale the data down"
        )


def check_scale(largest: float, name: str = "X") -> None:
    """Raise ``ValueError`` when the data's largest magnitude is too small for float32."""
    if 0.0 < largest < MIN_MAGNITUDE:
        raise ValueError(
            f"{name}'s largest magnitude is {largest:.3g}: float32 squared distances of such "
            f"data underflow (training needs max |x| >= {MIN_MAGNITUDE:.0e}); multiply the data "
            "by a constant (e.g. 1 / max |x|) and divide the reconstructions by it"
        )


def checked_rows(x: NDArray[Any], rows: NDArray[np.intp] | None) -> NDArray[np.float32]:
    """Rows ``rows`` of x (all when None) as float32, read in chunks and checked: finite,
    of magnitude at most :data:`MAX_MAGNITUDE` (the error names the row of x), and not
    all too small for float32 (:func:`check_scale`). Memory maps stay on disk but for
    the rows read."""
    n = x.shape[0] if rows is None else rows.shape[0]
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    step = max(1, (8 << 20) // (x.shape[1] * max(x.dtype.itemsize, 4)))
    for start in range(0, n, step):
        stop = min(start + step, n)
        chunk = x[start:stop] if rows is None else x[rows[start:stop]]
        try:
            check_magnitude(chunk, 0)
        except ValueError:
            bad = int(np.flatnonzero(~(np.abs(chunk) <= MAX_MAGNITUDE).all(axis=1))[0])
            row = start + bad if rows is None else int(rows[start + bad])
            check_magnitude(chunk[bad : bad + 1], row)
        out[start:stop] = chunk
    check_scale(float(np.abs(out).max()))
    return out


def norm_limit(dtype: Any) -> float:
    """Largest vector norm a compute dtype accepts: ``sqrt(finfo.max) / 4``.

    With ``||r||, ||c||`` at most this, every term of ``||c||^2 - 2 r.c`` and of
    ``||r - c||^2`` stays below ``finfo.max / 4``, so no distance overflows.
    About 4.6e18 for float32 and 3.4e153 for float64.
    """
    return float(np.sqrt(np.finfo(np.dtype(dtype)).max)) / 4.0


def check_norms(
    chunk: NDArray[Any], start: int, dtype: Any, name: str = "X", *, what: str = "row"
) -> None:
    """Raise ``ValueError`` for the first row of ``chunk`` (n, D) holding NaN or inf, or
    whose norm exceeds :func:`norm_limit` of ``dtype``, beyond which squared
    distances overflow (one pass over the chunk when every row is fine)."""
    limit = norm_limit(dtype)
    top = float(np.max(np.abs(chunk))) if chunk.size else 0.0
    if top * math.sqrt(chunk.shape[1]) <= limit:  # False for NaN; inf near float64's max
        return
    require_finite(chunk, start, name)
    rows64 = np.asarray(chunk, dtype=np.float64)
    scale = np.abs(rows64).max(axis=1, keepdims=True)  # no overflow in the squares
    unit = np.divide(rows64, scale, out=np.zeros_like(rows64), where=scale > 0)
    with np.errstate(over="ignore"):  # a norm beyond float64's maximum: inf, refused below
        norms = scale[:, 0] * np.sqrt(np.einsum("nd,nd->n", unit, unit))
    bad = np.flatnonzero(~(norms <= limit))
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{name} {what} {start + row} has norm {norms[row]:.4g}, above the limit "
            f"{limit:.4g} of {np.dtype(dtype)} (sqrt of its maximum / 4) beyond which "
            "squared distances overflow"
        )


def memory_available() -> int:
    """Bytes of memory available now (Linux: MemAvailable, which counts the page cache
    the kernel can reclaim; elsewhere free pages, or 8 GiB when neither is known)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # neither Linux nor POSIX sysconf
        return 8 << 30


# -- optional dependencies ----------------------------------------------------------------
#: The extra of viva-glyph that installs each optional package (by its top-level name).
EXTRAS = {
    "safetensors": "cli",
    "tqdm": "cli",
    "matplotlib": "cli",
    "pyarrow": "parquet",
    "numba": "fast",
    "threadpoolctl": "fast",
    "torch": "torch",
    "dask": "dask",
    "distributed": "dask",
    "zarr": "dask",
    "sklearn": "sklearn",
}


def install_hint(package: str) -> str:
    """``pip install 'viva-glyph[EXTRA]'``: what installs an optional package."""
    return f"pip install 'viva-glyph[{EXTRAS.get(package.split('.')[0], 'all')}]'"


def missing_package(package: str, what: str) -> ModuleNotFoundError:
    """The error for an optional package that is not installed: ``WHAT needs PACKAGE: pip
    install 'viva-glyph[EXTRA]'`` (a ModuleNotFoundError, so an ImportError, naming it)."""
    top = package.split(".")[0]
    return ModuleNotFoundError(f"{what} needs {top}: {install_hint(top)}", name=top)


def optional_import(module: str, what: str) -> ModuleType:
    """Import ``module`` of an optional package, or raise :func:`missing_package`'s error
    (``what`` says what needs it). A module missing inside the package is not hidden."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != top:
            raise
        raise missing_package(top, what) from None


def has_package(package: str) -> bool:
    """Whether an optional package is installed (checked without importing it)."""
    top = package.split(".")[0]
    if top in sys.modules:
        return sys.modules[top] is not None
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require_package(package: str, what: str) -> None:
    """Check, without importing it, that an optional package is installed (before any
    work that needs it at its end); raise :func:`missing_package`'s error if not."""
    if not has_package(package):
        raise missing_package(package, what)
