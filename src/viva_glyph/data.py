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
  (see :func:`viva_glyph._tables.read_text` for the header rule), ``.parquet``
  or a folder of ``*.parquet`` (one list column or the numeric columns, see
  :class:`viva_glyph._tables.ParquetRows`) and ``.zarr`` (an array, or the
  array ``key`` inside a group).

Writers (:func:`open_writer`, :func:`save_array`) append row blocks to a
temporary file next to the destination and rename it when complete.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from numpy.typing import NDArray

from viva_glyph._tables import ParquetRows, read_text
from viva_glyph._validate import check_matrix
from viva_glyph._writers import NpyWriter, ParquetWriter, ZarrWriter, open_writer, save_array

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
        return VectorFile(text, _open_npy(p))
    if suffix in (".fvecs", ".bvecs"):
        return VectorFile(text, _open_vecs(p, np.dtype("<f4" if suffix == ".fvecs" else "u1")))
    if suffix == ".npz":
        return VectorFile(text, _InMemory(_load_npz(p, key), text))
    if suffix in (".csv", ".tsv"):
        arr = read_text(p, "\t" if suffix == ".tsv" else ",", header)
        return VectorFile(text, _InMemory(arr, text))
    raise ValueError(
        f"{p}: unknown data format {suffix!r}; expected one of {', '.join(READ_FORMATS)}"
    )


def open_parquet(path: PathLike, *, columns: Sequence[str] | None = None) -> VectorFile:
    """Parquet data: a file, or a folder of ``*.parquet`` files read in name order.

    ``columns``: one list column or numeric columns (see
    :class:`viva_glyph._tables.ParquetRows`); default: the only list column,
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


# -- .npy headers (also inside .npz) ----------------------------------------------------
def _npy_header(fh: BinaryIO, what: str) -> tuple[tuple[int, int], bool, np.dtype[Any]]:
    """Read and check a .npy header: ((N, D), fortran order, dtype); 1-D is (N, 1)."""
    with warnings.catch_warnings():  # a header numpy must repair (Python 2) is just read
        warnings.simplefilter("ignore")
        return _checked_header(fh, what)


def _checked_header(fh: BinaryIO, what: str) -> tuple[tuple[int, int], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy's parser of untrusted text: also TokenError, SyntaxError
        raise ValueError(f"{what}: not a valid .npy file ({' '.join(str(exc).split())})") from None
    if dtype.hasobject:
        raise ValueError(f"{what}: holds Python objects; only numeric arrays are read")
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: header declares shape {shape}, with a negative size")
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) != 2:
        raise ValueError(f"{what} must hold a matrix (N, D), got shape {shape}")
    check_matrix(np.empty((1, 1), dtype), None, what)  # the dtype only
    return (int(shape[0]), int(shape[1])), bool(fortran), dtype


def _open_npy(p: Path) -> _FixedRows:
    with open(p, "rb") as fh:
        (n, d), fortran, dtype = _npy_header(fh, str(p))
        offset = fh.tell()
    if fortran and d > 1:
        raise ValueError(f"{p}: Fortran-ordered arrays are not streamed; save it C-ordered")
    if os.path.getsize(p) < offset + n * d * dtype.itemsize:
        raise ValueError(f"{p}: truncated, shorter than its header's shape {(n, d)} says")
    return _FixedRows(str(p), offset, n, d, dtype, prefix=0)


def _open_vecs(p: Path, dtype: np.dtype[Any]) -> _FixedRows:
    size = os.path.getsize(p)
    if size < 4:
        raise ValueError(f"{p}: too short for a {p.suffix} file")
    d = int(np.fromfile(p, dtype="<i4", count=1)[0])
    row_bytes = 4 + d * dtype.itemsize
    if d < 1 or size % row_bytes:
        raise ValueError(
            f"{p}: not a {p.suffix} file: first row has dimension {d}, but the file size "
            f"{size} is not a multiple of the row size {row_bytes}"
        )
    return _FixedRows(str(p), 0, size // row_bytes, d, dtype, prefix=4)


class _FixedRows:
    """Rows of ``prefix`` bytes (an int32 D when 4) then D values, read with plain reads."""

    def __init__(
        self, path: str, offset: int, n: int, d: int, dtype: np.dtype[Any], prefix: int
    ) -> None:
        self.path, self.offset, self.prefix = path, offset, prefix
        self.shape = (n, d)
        self.dtype = dtype
        self.row_bytes = prefix + d * dtype.itemsize

    def _check_dims(self, raw: NDArray[np.uint8], start: int) -> None:
        dims = np.ascontiguousarray(raw[:, : self.prefix]).view("<i4")[:, 0]
        if (wrong := dims != self.shape[1]).any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ValueError(
                f"{self.path}: row {start + bad} declares dimension {int(dims[bad])}, "
                f"but the first row has dimension {self.shape[1]}"
            )

    def read(self, a: int, b: int) -> NDArray[Any]:
        count = (b - a) * self.row_bytes
        raw = np.fromfile(
            self.path, dtype=np.uint8, count=count, offset=self.offset + a * self.row_bytes
        )
        if raw.size != count:
            raise ValueError(f"{self.path}: file shrank while it was read")
        raw = raw.reshape(b - a, self.row_bytes)
        if self.prefix:
            self._check_dims(raw, a)
            raw = raw[:, self.prefix :].copy()
        out: NDArray[Any] = raw.view(self.dtype)
        return out

    def array(self) -> NDArray[Any]:
        raw = np.memmap(
            self.path,
            dtype=np.uint8,
            mode="r",
            offset=self.offset,
            shape=(self.shape[0], self.row_bytes),
        )
        if self.prefix:  # every row's dimension, checked in bounded pieces
            step = max(1, (16 << 20) // self.row_bytes)
            for start in range(0, self.shape[0], step):
                self._check_dims(raw[start : start + step], start)
        out: NDArray[Any] = raw[:, self.prefix :].view(self.dtype)
        return out


# -- .npz ---------------------------------------------------------------------------------
def _load_npz(p: Path, key: str | None) -> NDArray[Any]:
    """One array of a .npz archive, its header checked before its data is read."""
    try:
        archive = zipfile.ZipFile(p)
    except Exception as exc:  # zipfile on untrusted bytes: BadZipFile, NotImplementedError, ...
        raise ValueError(f"{p}: not a valid .npz file ({exc})") from None
    with archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            if len(names) != 1:
                raise ValueError(f"{p} holds arrays {names}: name one with --key")
            key = names[0]
        if key not in names:
            raise ValueError(f"{p} has no array {key!r}; it holds {names}")
        what = f"{p} array {key!r}"
        try:
            with archive.open(key + ".npy") as fh:
                (n, d), fortran, dtype = _npy_header(fh, what)  # type: ignore[arg-type]
                arr = np.empty(n * d, dtype)
                raw = arr.view(np.uint8)
                got = 0
                while got < raw.size and (piece := fh.read(min(raw.size - got, 1 << 24))):
                    raw[got : got + len(piece)] = np.frombuffer(piece, np.uint8)
                    got += len(piece)
        except ValueError:
            raise
        except MemoryError:
            raise ValueError(f"{what} of shape {(n, d)} does not fit in memory") from None
        except Exception as exc:  # BadZipFile, NotImplementedError (a method), EOFError, ...
            raise ValueError(f"{what} cannot be read ({exc})") from None
    if got != arr.nbytes:
        raise ValueError(f"{what}: truncated, shorter than its header's shape {(n, d)} says")
    return arr.reshape((n, d), order="F" if fortran else "C")


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
        import zarr

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
