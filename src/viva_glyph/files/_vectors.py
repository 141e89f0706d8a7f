"""Vectors in and codes out: one reader per file format, streamed by row blocks.

:func:`open_vectors` is the only way the command line, :func:`viva_glyph.metrics.evaluate`
and :mod:`viva_glyph.dask` read data files; every format follows the same rules:

- the result is an (N, D) matrix of real numbers with N, D >= 1; a 1-D array
  is one column; every shape a file declares is checked against its size
  before anything is allocated;
- a missing value (a Parquet null, an empty CSV field) or a non-number is an
  error naming the row and the column, never skipped or guessed;
- ``.npy`` (read block by block with plain file reads), ``.npz`` (one named
  array, ``key``), ``.fvecs`` / ``.bvecs`` (per row an int32 dimension then D
  float32 / uint8 values; every row's dimension is checked), ``.csv`` / ``.tsv``
  (see :func:`viva_glyph.files._tables.read_text` for the header rule), ``.parquet``
  or a folder of ``*.parquet`` (one list column or the numeric columns, see
  :class:`viva_glyph.files._tables.ParquetRows`) and ``.zarr`` (an array, or the
  array ``key`` inside a group).

Writers (:func:`open_writer`, :func:`save_array`) append row blocks to a
temporary file next to the destination and rename it when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_matrix, optional_import
from viva_glyph.files._binary import load_npz, open_npy, open_vecs
from viva_glyph.files._safetensors import not_regular
from viva_glyph.files._tables import ParquetRows, read_text
from viva_glyph.files._writers import NpyWriter, ParquetWriter, ZarrWriter, open_writer, save_array

__all__ = [
    "BLOCK_ROWS",
    "NpyWriter",
    "ParquetWriter",
    "VectorFile",
    "ZarrWriter",
    "open_parquet",
    "open_vectors",
    "open_writer",
    "open_zarr",
    "save_array",
]

#: Default rows per streamed block.
BLOCK_ROWS = 1 << 16
READ_FORMATS = (".npy", ".npz", ".fvecs", ".bvecs", ".csv", ".tsv", ".parquet", ".zarr")
PathLike = str | os.PathLike[str]


class _Source(Protocol):
    shape: tuple[int, int]
    dtype: np.dtype[Any]

    def read(self, start: int, stop: int) -> NDArray[Any]: ...

    def array(self) -> NDArray[Any]: ...


class VectorFile:
    """A matrix in a file, read whole or in row blocks; picklable (it holds paths only).

    It is also a minimal array-like (``shape``, ``dtype``, ``ndim``, row and
    column slicing) so :func:`dask.array.from_array` can read it block by block.

    Attributes
    ----------
    path : str
    shape : tuple of int
        (N, D).
    dtype : numpy dtype
        dtype of the rows :meth:`blocks` yields.
    natural_rows : int, tuple of int or None
        The file's own row blocks: rows per zarr chunk, rows of each Parquet
        row group; None for formats read by any row range.
    """

    ndim = 2

    def __init__(self, path: str, source: _Source) -> None:
        self.path = path
        self.shape = source.shape
        self.dtype = source.dtype
        self._source = source
        self.natural_rows: int | tuple[int, ...] | None = getattr(source, "natural_rows", None)
        check_matrix(self, None, path)

    def __repr__(self) -> str:
        return f"VectorFile({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> NDArray[Any]:
        """Rows ``start:stop`` as a fresh in-memory array, shape (stop - start, D)."""
        start, stop = max(start, 0), min(stop, self.shape[0])
        return self._source.read(start, max(start, stop))

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(start_row, block)`` pairs covering every row in order."""
        if rows < 1:
            raise ValueError(f"rows per block must be >= 1, got {rows}")
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, start + rows)

    def array(self) -> NDArray[Any]:
        """The whole matrix: a read-only memory map for binary formats, else in memory."""
        return self._source.array()

    def __getitem__(self, key: Any) -> NDArray[Any]:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"a VectorFile is indexed by contiguous row slices, got {key!r}")
        start, stop, _ = rows.indices(self.shape[0])
        return self.read(start, stop)[:, cols]


def open_vectors(
    path: PathLike, *, key: str | None = None, header: bool | None = None
) -> VectorFile:
    """Open a vector file for reading, choosing the format by the suffix.

    Parameters
    ----------
    path : str or PathLike
        ``.npy``, ``.npz``, ``.fvecs``, ``.bvecs``, ``.csv``, ``.tsv``,
        ``.parquet`` (or a folder of ``*.parquet`` files) or ``.zarr`` (a local
        store or an fsspec URL).
    key : str, optional
        Array name in a ``.npz``, column in Parquet data, array in a zarr group.
    header : bool, optional
        CSV/TSV only: whether the first row is a header; by default it is one
        exactly when none of its fields is a number.

    Returns
    -------
    VectorFile

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For an unknown suffix, a malformed file or one that holds no (N, D)
        matrix of numbers (naming the row and column where that is the cause).
    """
    text = os.fspath(path)
    p = Path(text)
    suffix = p.suffix.lower()
    if suffix == ".zarr":
        return open_zarr(text, component=key)
    if suffix in (".parquet", ".pq") or (p.is_dir() and any(p.glob("*.parquet"))):
        return open_parquet(text, columns=None if key is None else [key])
    if not p.exists():
        raise FileNotFoundError(2, "no such file", text)
    if not p.is_file():
        kind = "a folder" if p.is_dir() else "not a regular file"
        raise ValueError(f"{p} is {kind}; expected a data file ({', '.join(READ_FORMATS)})")
    if suffix == ".npy":
        return VectorFile(text, open_npy(p))
    if suffix in (".fvecs", ".bvecs"):
        return VectorFile(text, open_vecs(p, np.dtype("<f4" if suffix == ".fvecs" else "u1")))
    if suffix == ".npz":
        return VectorFile(text, _InMemory(load_npz(p, key), text))
    if suffix in (".csv", ".tsv"):
        arr = read_text(p, "\t" if suffix == ".tsv" else ",", header)
        return VectorFile(text, _InMemory(arr, text))
    raise ValueError(
        f"{p}: unknown data format {suffix!r}; expected one of {', '.join(READ_FORMATS)}"
    )


def open_parquet(path: PathLike, *, columns: Sequence[str] | None = None) -> VectorFile:
    """Parquet data: a file, or a folder of ``*.parquet`` files read in name order.

    ``columns``: one list column or numeric columns (see
    :class:`viva_glyph.files._tables.ParquetRows`); default: the only list column,
    else every numeric column.
    """
    text = os.fspath(path)
    p = Path(text)
    if p.is_dir():
        files = sorted(str(f) for f in p.glob("*.parquet"))
        if not files:
            raise ValueError(f"{p}: a folder without *.parquet files")
    elif p.is_file():
        files = [text]
    elif p.exists():  # a named pipe or a device: it exists, but is no data file
        what = not_regular(p.stat().st_mode)
        raise ValueError(f"{p} is {what}; expected a data file ({', '.join(READ_FORMATS)})")
    else:
        raise FileNotFoundError(2, "no such file", text)
    return VectorFile(text, ParquetRows(files, columns, text))


def open_zarr(path: PathLike, *, component: str | None = None) -> VectorFile:
    """A zarr array (a local store or an fsspec URL), or the array ``component`` of a group."""
    text = os.fspath(path)
    return VectorFile(text, _ZarrRows(text, component))


class _InMemory:
    def __init__(self, arr: NDArray[Any], what: str) -> None:
        self._arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
        if self._arr.ndim != 2:
            raise ValueError(f"{what} must hold a matrix (N, D), got shape {arr.shape}")
        self.shape = (int(self._arr.shape[0]), int(self._arr.shape[1]))
        self.dtype = self._arr.dtype

    def read(self, start: int, stop: int) -> NDArray[Any]:
        return np.array(self._arr[start:stop])

    def array(self) -> NDArray[Any]:
        return self._arr


# -- zarr ---------------------------------------------------------------------------------
class _ZarrRows:
    """A 2-D (or 1-D: one column) zarr array; opened afresh in every process that reads."""

    def __init__(self, url: str, component: str | None) -> None:
        self.url, self.component = url, component
        arr = self._open()
        shape = tuple(int(s) for s in arr.shape)
        if len(shape) not in (1, 2):
            raise ValueError(f"zarr array {url!r} must hold a matrix (N, D), got shape {shape}")
        self.shape = (shape[0], shape[1] if len(shape) == 2 else 1)
        self.dtype = np.dtype(arr.dtype)
        self.natural_rows = int(arr.chunks[0])
        self._arr: Any = arr

    def _open(self) -> Any:
        zarr = optional_import("zarr", "reading a zarr store")

        if "://" not in self.url and not Path(self.url).exists():
            raise FileNotFoundError(2, "no such zarr store", self.url)
        try:
            node = zarr.open(self.url, mode="r", path=self.component)
        except (FileNotFoundError, KeyError) as exc:
            raise ValueError(f"{self.url}: no zarr array {self.component or ''} ({exc})") from None
        except Exception as exc:  # zarr's own errors for a malformed store
            raise ValueError(f"{self.url}: not a readable zarr store ({exc})") from None
        if not hasattr(node, "dtype"):
            names = sorted(node.array_keys())
            raise ValueError(f"{self.url} is a zarr group: name an array with --key ({names})")
        return node

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}

    def read(self, a: int, b: int) -> NDArray[Any]:
        if self._arr is None:
            self._arr = self._open()
        try:
            block = np.asarray(self._arr[a:b])
        except Exception as exc:  # a corrupt chunk: zarr's and the codecs' errors
            raise ValueError(f"{self.url}: rows {a}:{b} cannot be read ({exc})") from None
        return block.reshape(b - a, self.shape[1])

    def array(self) -> NDArray[Any]:
        return self.read(0, self.shape[0])
