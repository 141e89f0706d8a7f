"""Vectors in and codes out: file formats, streamed by row blocks.

Readers (:func:`open_vectors`) know ``.npy`` (read block by block with plain
file reads, so neither memory nor the resident set grows with the file),
``.npz`` (one named array), ``.fvecs`` / ``.bvecs`` (the ANN-benchmark
formats: per row an int32 dimension then D float32 / uint8 values), ``.csv`` /
``.tsv`` (the numeric columns; a header line is skipped) and ``.parquet``
(one fixed-size list column or the numeric columns; needs ``pyarrow``).

Writers (:class:`NpyWriter`, :func:`open_writer`) append row blocks to a
temporary file next to the destination and rename it when complete.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from viva_glyph.io import atomic_output

__all__ = [
    "BLOCK_ROWS",
    "NpyWriter",
    "ParquetWriter",
    "VectorFile",
    "open_vectors",
    "open_writer",
    "save_array",
]

#: Default rows per streamed block.
BLOCK_ROWS = 1 << 16
READ_FORMATS = (".npy", ".npz", ".fvecs", ".bvecs", ".csv", ".tsv", ".parquet")
PathLike = str | os.PathLike[str]


@dataclass
class VectorFile:
    """A matrix in a file, read whole or in row blocks.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        (N, D).
    dtype : numpy dtype
        dtype of the rows :meth:`blocks` yields.
    """

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype[Any]
    _read: Callable[[int, int], NDArray[Any]] = field(repr=False)
    _whole: Callable[[], NDArray[Any]] = field(repr=False)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> NDArray[Any]:
        """Rows ``start:stop`` as a fresh in-memory array, shape (stop - start, D)."""
        start, stop = max(start, 0), min(stop, self.shape[0])
        return self._read(start, max(start, stop))

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(start_row, block)`` pairs covering every row in order."""
        if rows < 1:
            raise ValueError(f"rows per block must be >= 1, got {rows}")
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, start + rows)

    def array(self) -> NDArray[Any]:
        """The whole matrix: a read-only memory map for binary formats, else in memory."""
        return self._whole()


def open_vectors(path: PathLike, *, key: str | None = None) -> VectorFile:
    """Open a vector file for reading, choosing the format by the suffix.

    Parameters
    ----------
    path : str or PathLike
        ``.npy``, ``.npz``, ``.fvecs``, ``.bvecs``, ``.csv``, ``.tsv`` or ``.parquet``.
    key : str, optional
        Array name in a ``.npz``, column name in a ``.parquet``.

    Returns
    -------
    VectorFile

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For an unknown suffix, a malformed file or one that holds no (N, D) matrix.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _open_npy(p)
    if suffix in (".fvecs", ".bvecs"):
        return _open_vecs(p, np.dtype("<f4") if suffix == ".fvecs" else np.dtype(np.uint8))
    if suffix == ".npz":
        return _in_memory(p, _load_npz(p, key))
    if suffix in (".csv", ".tsv"):
        return _in_memory(p, _load_text(p, "\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        return _open_parquet(p, key)
    raise ValueError(
        f"{p}: unknown data format {suffix!r}; expected one of {', '.join(READ_FORMATS)}"
    )


def _matrix(arr: NDArray[Any], p: Path) -> NDArray[Any]:
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{p}: expected a non-empty (N, D) matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{p}: expected numbers, got dtype {arr.dtype}")
    return arr


def _in_memory(p: Path, arr: NDArray[Any]) -> VectorFile:
    arr = _matrix(arr, p)
    return VectorFile(
        p,
        (int(arr.shape[0]), int(arr.shape[1])),
        arr.dtype,
        lambda a, b: np.array(arr[a:b]),
        lambda: arr,
    )


# -- binary formats read by offset ------------------------------------------------------
def _open_npy(p: Path) -> VectorFile:
    with open(p, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{p}: not a valid .npy file ({exc})") from None
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{p}: holds Python objects; only numeric arrays are read")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{p}: expected a non-empty (N, D) matrix, got shape {shape}")
    if fortran:
        raise ValueError(f"{p}: Fortran-ordered arrays are not streamed; save it C-ordered")
    n, d = shape
    if os.path.getsize(p) < offset + n * d * dtype.itemsize:
        raise ValueError(f"{p}: truncated, shorter than its header's shape {shape} says")
    _matrix(np.empty((1, 1), dtype=dtype), p)
    return _fixed_rows(p, offset, n, d, dtype, prefix=0)


def _open_vecs(p: Path, dtype: np.dtype[Any]) -> VectorFile:
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
    return _fixed_rows(p, 0, size // row_bytes, d, dtype, prefix=4)


def _fixed_rows(
    p: Path, offset: int, n: int, d: int, dtype: np.dtype[Any], prefix: int
) -> VectorFile:
    """Rows of ``prefix`` bytes (an int32 D when 4) then D values, read with plain reads."""
    row_bytes = prefix + d * dtype.itemsize

    def read(a: int, b: int) -> NDArray[Any]:
        count = (b - a) * row_bytes
        raw = np.fromfile(p, dtype=np.uint8, count=count, offset=offset + a * row_bytes)
        raw = raw.reshape(b - a, row_bytes)
        if prefix and (dims := raw[:, :prefix].copy().view("<i4")[:, 0] != d).any():
            bad = a + int(np.flatnonzero(dims)[0])
            raise ValueError(f"{p}: row {bad} declares another dimension than {d}")
        return raw[:, prefix:].copy().view(dtype) if prefix else raw.view(dtype)

    def whole() -> NDArray[Any]:
        raw = np.memmap(p, dtype=np.uint8, mode="r", offset=offset, shape=(n, row_bytes))
        return raw[:, prefix:].view(dtype)

    return VectorFile(p, (n, d), dtype, read, whole)


# -- formats read whole -----------------------------------------------------------------
def _load_npz(p: Path, key: str | None) -> NDArray[Any]:
    try:
        archive = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{p}: not a valid .npz file ({exc})") from None
    with archive:
        names = list(archive.files)
        if key is None:
            if len(names) != 1:
                raise ValueError(f"{p} holds arrays {names}: name one with --key")
            key = names[0]
        if key not in names:
            raise ValueError(f"{p} has no array {key!r}; it holds {names}")
        try:
            return np.asarray(archive[key])
        except ValueError as exc:
            raise ValueError(f"{p}: array {key!r} cannot be read ({exc})") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_text(p: Path, delimiter: str) -> NDArray[Any]:
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        first = next(reader, None)
        second = next(reader, None)
    if first is None:
        raise ValueError(f"{p} is empty")
    header = not all(_is_number(v) for v in first if v.strip())
    sample = second if header else first
    if sample is None:
        raise ValueError(f"{p} holds a header line but no rows")
    columns = [i for i, v in enumerate(sample) if _is_number(v)]
    if not columns:
        raise ValueError(f"{p}: no numeric column in row {sample[:6]}")
    try:
        arr = np.loadtxt(
            p, delimiter=delimiter, skiprows=int(header), usecols=columns, ndmin=2, encoding="utf-8"
        )
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    return arr


def _open_parquet(p: Path, column: str | None) -> VectorFile:
    """Parquet read one row group at a time (the last one cached)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{p}: cannot read it as parquet ({exc})") from None
    meta = pf.metadata
    bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    names = _parquet_columns(pf.schema_arrow, column, p)
    cache: dict[int, NDArray[Any]] = {}

    def group(g: int) -> NDArray[Any]:
        if g not in cache:
            cache.clear()
            cache[g] = _table_matrix(pf.read_row_group(g, columns=names), p)
        return cache[g]

    n = int(bounds[-1])
    if n == 0:
        raise ValueError(f"{p}: no rows")
    g0 = int(np.flatnonzero(np.diff(bounds))[0])
    first = group(g0)

    def read(a: int, b: int) -> NDArray[Any]:
        parts, g = [], int(np.searchsorted(bounds, a, side="right")) - 1
        while a < b:
            rows = group(g)[a - bounds[g] : b - bounds[g]]
            if rows.shape[1:] != first.shape[1:]:
                raise ValueError(f"{p}: row group {g} has {rows.shape[1]} values per row")
            parts.append(rows)
            a, g = a + rows.shape[0], g + 1
        return np.concatenate(parts) if parts else first[:0].copy()

    return VectorFile(p, (n, first.shape[1]), first.dtype, read, lambda: read(0, n))


def _parquet_columns(schema: Any, column: str | None, p: Path) -> list[str]:
    import pyarrow as pa

    kinds = (pa.types.is_list, pa.types.is_fixed_size_list, pa.types.is_large_list)
    lists = [f.name for f in schema if any(k(f.type) for k in kinds)]
    numeric = [
        f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    ]
    if column is not None:
        if column not in lists + numeric:
            raise ValueError(f"{p} has no list or numeric column {column!r}: {schema.names}")
        return [column]
    if len(lists) > 1:
        raise ValueError(f"{p} has list columns {lists}: name one with --key")
    if not (lists or numeric):
        raise ValueError(f"{p}: no numeric or list column")
    return lists or numeric


def _table_matrix(table: Any, p: Path) -> NDArray[Any]:
    import pyarrow as pa

    if table.num_columns == 1 and not (
        pa.types.is_integer(table.schema[0].type) or pa.types.is_floating(table.schema[0].type)
    ):
        col = table.column(0).combine_chunks()
        lengths = np.unique(col.value_lengths().to_numpy(zero_copy_only=False))
        if lengths.size > 1 or col.null_count or col.flatten().null_count:
            raise ValueError(f"{p}: column {table.schema[0].name!r} is ragged or has nulls")
        width = int(lengths[0]) if lengths.size else 0
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False))
        return _matrix(flat.reshape(len(col), width), p) if len(col) else flat.reshape(0, width)
    if any(c.null_count for c in table.columns):
        raise ValueError(f"{p}: numeric columns hold nulls")
    return np.column_stack([c.to_numpy() for c in table.columns])


# -- writers ----------------------------------------------------------------------------
class _BlockWriter:
    """Shared life cycle: temp file opened on enter, renamed on a clean exit."""

    suffix = ""

    def __init__(self, path: PathLike, shape: tuple[int, int], dtype: Any) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.rows = 0

    def __enter__(self) -> _BlockWriter:
        self._cm = atomic_output(self.path, self.suffix)
        tmp = self._cm.__enter__()
        try:
            self._open(tmp)
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._close()
            if ev is None and self.rows != self.shape[0]:
                raise ValueError(f"{self.path}: wrote {self.rows} rows, expected {self.shape[0]}")
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._cm.__exit__(et, ev, tb)

    def write(self, block: NDArray[Any]) -> None:
        """Append rows, shape (n, D); they are cast to the writer's dtype."""
        if block.ndim != 2 or block.shape[1] != self.shape[1]:
            raise ValueError(f"block must have shape (n, {self.shape[1]}), got {block.shape}")
        if self.rows + block.shape[0] > self.shape[0]:
            raise ValueError(f"more than the {self.shape[0]} rows announced")
        self._write(np.ascontiguousarray(block, dtype=self.dtype))
        self.rows += block.shape[0]

    def _open(self, tmp: Path) -> None:
        raise NotImplementedError

    def _write(self, block: NDArray[Any]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class NpyWriter(_BlockWriter):
    """Write an (N, D) ``.npy`` block by block with plain appends (no memory map).

    Use as a context manager; the file appears at ``path`` only when all N rows
    were written and the block exits cleanly.
    """

    def _open(self, tmp: Path) -> None:
        self._fh: BinaryIO = open(tmp, "wb")  # noqa: SIM115 - closed in _close
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_1_0(self._fh, header)

    def _write(self, block: NDArray[Any]) -> None:
        self._fh.write(block.data)

    def _close(self) -> None:
        self._fh.close()


class ParquetWriter(_BlockWriter):
    """Write integer codes as a parquet table, one column ``stage_1 .. stage_m`` per stage."""

    suffix = ".parquet"

    def _open(self, tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pa_type = pa.from_numpy_dtype(self.dtype)
        self._schema = pa.schema([(f"stage_{i + 1}", pa_type) for i in range(self.shape[1])])
        self._pq = pq.ParquetWriter(tmp, self._schema)

    def _write(self, block: NDArray[Any]) -> None:
        import pyarrow as pa

        arrays = [pa.array(block[:, i]) for i in range(block.shape[1])]
        self._pq.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def _close(self) -> None:
        self._pq.close()


def open_writer(path: PathLike, shape: tuple[int, int], dtype: Any) -> _BlockWriter:
    """Block writer for ``path``: ``.npy`` (any dtype) or ``.parquet`` (codes)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return NpyWriter(path, shape, dtype)
    if suffix == ".parquet":
        return ParquetWriter(path, shape, dtype)
    raise ValueError(f"{path}: output must end in .npy or .parquet, got {suffix or 'no suffix'!r}")


def save_array(path: PathLike, array: NDArray[Any]) -> None:
    """Write a whole (N, D) array to ``.npy`` or ``.parquet``, atomically."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {arr.shape}")
    with open_writer(path, (arr.shape[0], arr.shape[1]), arr.dtype) as out:
        out.write(arr)
