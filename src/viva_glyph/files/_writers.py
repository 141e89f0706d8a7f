"""Block writers: ``.npy``, ``.parquet`` and ``.zarr`` outputs filled row block by row block.

Every writer works on a temporary file or store of :mod:`viva_glyph.files._atomic`
and moves it into place only when all announced rows were written.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import optional_import
from viva_glyph.files._atomic import atomic_folder, atomic_output, check_output

__all__ = [
    "WRITE_FORMATS",
    "NpyWriter",
    "ParquetWriter",
    "ZarrWriter",
    "create_zarr",
    "open_writer",
    "save_array",
]

PathLike = str | os.PathLike[str]
WRITE_FORMATS = (".npy", ".parquet", ".zarr")


class _BlockWriter:
    """Shared life cycle: temporary opened on enter, moved into place on a clean exit."""

    suffix = ""

    def __init__(self, path: PathLike, shape: tuple[int, int], dtype: Any) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.rows = 0

    def _atomic(self) -> contextlib.AbstractContextManager[Path]:
        return atomic_output(self.path, self.suffix)

    def __enter__(self) -> _BlockWriter:
        self._cm = self._atomic()
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
        pa = optional_import("pyarrow", "writing Parquet")
        pq = optional_import("pyarrow.parquet", "writing Parquet")

        pa_type = pa.from_numpy_dtype(self.dtype)
        self._schema = pa.schema([(f"stage_{i + 1}", pa_type) for i in range(self.shape[1])])
        self._pq = pq.ParquetWriter(tmp, self._schema)

    def _write(self, block: NDArray[Any]) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]

        arrays = [pa.array(block[:, i]) for i in range(block.shape[1])]
        self._pq.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def _close(self) -> None:
        self._pq.close()


def create_zarr(path: PathLike, shape: tuple[int, int], dtype: Any, chunk_rows: int) -> Any:
    """New zarr v3 array at ``path``: chunks of ``chunk_rows`` full rows, compressed."""
    zarr = optional_import("zarr", "writing a zarr store")
    rows = max(1, min(int(chunk_rows), int(shape[0])))
    return zarr.create_array(
        os.fspath(path), shape=shape, chunks=(rows, max(1, int(shape[1]))), dtype=dtype
    )


class ZarrWriter(_BlockWriter):
    """Write an (N, D) array into a ``.zarr`` store, one chunk per ``chunk_rows`` rows."""

    def __init__(
        self, path: PathLike, shape: tuple[int, int], dtype: Any, chunk_rows: int = 1 << 16
    ) -> None:
        super().__init__(path, shape, dtype)
        self.chunk_rows = chunk_rows

    def _atomic(self) -> contextlib.AbstractContextManager[Path]:
        return atomic_folder(self.path)

    def _open(self, tmp: Path) -> None:
        self._arr = create_zarr(tmp, self.shape, self.dtype, self.chunk_rows)

    def _write(self, block: NDArray[Any]) -> None:
        self._arr[self.rows : self.rows + block.shape[0]] = block

    def _close(self) -> None:
        pass


def open_writer(
    path: PathLike, shape: tuple[int, int], dtype: Any, *, chunk_rows: int = 1 << 16
) -> _BlockWriter:
    """Block writer for ``path``: ``.npy`` (any dtype), ``.parquet`` (codes) or ``.zarr``.

    ``chunk_rows`` sets the rows per chunk of a zarr store (best: the rows per
    written block).
    """
    suffix = check_output(path, WRITE_FORMATS).suffix.lower()
    if suffix == ".npy":
        return NpyWriter(path, shape, dtype)
    if suffix == ".parquet":
        return ParquetWriter(path, shape, dtype)
    return ZarrWriter(path, shape, dtype, chunk_rows)


def save_array(path: PathLike, array: NDArray[Any]) -> None:
    """Write a whole (N, D) array to ``.npy``, ``.parquet`` or ``.zarr``, atomically."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {arr.shape}")
    with open_writer(path, (arr.shape[0], arr.shape[1]), arr.dtype) as out:
        out.write(arr)
