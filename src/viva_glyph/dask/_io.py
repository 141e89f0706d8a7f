# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Sources (``.npy`` memory maps, zarr, Parquet) and sinks (zarr, ``.npy``) for dask arrays.

Sources are small picklable array-likes that open the file inside the task
that reads a block, so a graph never carries data and workers read straight
from (shared) storage. Sinks write each block into its own row range of a
temporary file or store next to the destination, then move it into place with
:func:`os.replace`; writing a block twice (a task re-run after a worker loss)
writes the same bytes to the same place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._validate import positive_int

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["from_npy", "from_parquet", "from_zarr", "open_array", "write_codes"]

#: Default bytes per block of a source.
BLOCK_BYTES = 64 << 20


def _rows_per_block(row_bytes: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return positive_int(chunk_rows, "chunk_rows")
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


def _check_matrix(shape: tuple[int, ...], dtype: np.dtype[Any], what: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"{what} must hold a matrix (N, D), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{what} is empty: got shape {shape}")
    if dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers, got dtype {dtype}")


# -- sources ----------------------------------------------------------------------------
class _NpyRows:
    """Array-like view of a ``.npy`` file; every read memory-maps the file afresh."""

    def __init__(self, path: str) -> None:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        _check_matrix(arr.shape, arr.dtype, f"{path!r}")
        self.path = path
        self.shape: tuple[int, ...] = tuple(arr.shape)
        self.dtype = arr.dtype
        self.ndim = 2

    def __getitem__(self, key: Any) -> NDArray[Any]:
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.array(mm[key])


def from_npy(path: str | os.PathLike[str], *, chunk_rows: int | None = None) -> da.Array:
    """Dask array over a 2-D ``.npy`` file, read block by block through memory maps.

    Parameters
    ----------
    path : path-like
        A ``.npy`` file of shape (N, D), real dtype; must be readable by every worker.
    chunk_rows : int, optional
        Rows per block; default about 64 MiB per block.

    Returns
    -------
    dask.array.Array, shape (N, D), the file's dtype
    """
    import dask.array as da
    from dask.base import tokenize

    src = _NpyRows(os.fspath(path))
    rows = _rows_per_block(src.shape[1] * src.dtype.itemsize, chunk_rows)
    st = os.stat(src.path)
    name = f"npy-{tokenize(os.path.abspath(src.path), st.st_size, st.st_mtime_ns, rows)}"
    return da.from_array(src, chunks=(rows, -1), name=name, asarray=False, lock=False)


def from_zarr(
    path: str | os.PathLike[str], *, component: str | None = None, chunk_rows: int | None = None
) -> da.Array:
    """Dask array over a 2-D zarr array (a store path, optionally a component inside it).

    Parameters
    ----------
    path : path-like
    component : str, optional
        Array inside a zarr group.
    chunk_rows : int, optional
        Rows per block; default: the zarr chunks' rows.

    Returns
    -------
    dask.array.Array, shape (N, D), the store's dtype
    """
    import dask.array as da

    arr = da.from_zarr(os.fspath(path), component=component)
    _check_matrix(arr.shape, arr.dtype, f"zarr array {os.fspath(path)!r}")
    if chunk_rows is not None:
        arr = arr.rechunk((positive_int(chunk_rows, "chunk_rows"), -1))
    elif len(arr.chunks[1]) > 1:
        arr = arr.rechunk({1: -1})
    return arr


class _ParquetRows:
    """Array-like view of Parquet row groups: one list column or several scalar columns."""

    def __init__(self, files: Sequence[str], columns: Sequence[str] | None) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if not files:
            raise ValueError("no Parquet files found")
        schema = pq.read_schema(files[0])
        names = list(columns) if columns is not None else list(schema.names)
        missing = [c for c in names if c not in schema.names]
        if missing or not names:
            raise ValueError(f"Parquet columns {missing or names} not in {schema.names}")
        types = [schema.field(c).type for c in names]
        self.files = list(files)
        self.columns = names
        self.listed = len(names) == 1 and (
            pa.types.is_list(types[0])
            or pa.types.is_large_list(types[0])
            or pa.types.is_fixed_size_list(types[0])
        )
        value_types = [types[0].value_type] if self.listed else types
        for c, t in zip(names, value_types, strict=True):
            if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                raise TypeError(f"Parquet column {c!r} must hold numbers, got {t}")
        self.dtype = np.result_type(*[t.to_pandas_dtype() for t in value_types])
        self.groups: list[tuple[str, int]] = []
        sizes: list[int] = []
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                if meta.row_group(g).num_rows:
                    self.groups.append((f, g))
                    sizes.append(meta.row_group(g).num_rows)
        self.sizes = tuple(sizes)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        dim = self._read(0).shape[1] if self.groups else 0
        self.shape: tuple[int, ...] = (int(self.starts[-1]), dim)
        self.ndim = 2
        _check_matrix(self.shape, self.dtype, f"Parquet data {self.files[0]!r}")

    def _read(self, group: int) -> NDArray[Any]:
        import pyarrow.parquet as pq

        f, g = self.groups[group]
        table = pq.ParquetFile(f).read_row_group(g, columns=self.columns)
        n = table.num_rows
        if not self.listed:
            cols = [table.column(c).to_numpy() for c in self.columns]
            return np.stack(cols, axis=1).astype(self.dtype, copy=False)
        col = table.column(0).combine_chunks()
        values = col.flatten().to_numpy(zero_copy_only=False)
        if n and values.size % n:
            raise ValueError(f"Parquet column {self.columns[0]!r} holds vectors of unequal length")
        return values.reshape(n, -1).astype(self.dtype, copy=False)

    def __getitem__(self, key: Any) -> NDArray[Any]:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, _ = rows.indices(self.shape[0])
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        g = first
        while g < len(self.groups) and self.starts[g] < stop:
            block = self._read(g)
            lo = max(start - int(self.starts[g]), 0)
            hi = min(stop - int(self.starts[g]), block.shape[0])
            parts.append(block[lo:hi])
            g += 1
        out = np.concatenate(parts) if parts else np.empty((0, self.shape[1]), self.dtype)
        if out.shape[1] != self.shape[1]:
            raise ValueError(
                f"Parquet rows have dimension {out.shape[1]}, expected {self.shape[1]}"
            )
        return out[:, cols]


def from_parquet(path: str | os.PathLike[str], *, columns: Sequence[str] | None = None) -> da.Array:
    """Dask array over Parquet data, one block per row group.

    Parameters
    ----------
    path : path-like
        A Parquet file, or a folder of ``*.parquet`` files (read in name order).
    columns : sequence of str, optional
        Either one list column holding the vectors, or D numeric columns (one
        per dimension). Default: all columns.

    Returns
    -------
    dask.array.Array, shape (N, D), the columns' common dtype
    """
    import dask.array as da
    from dask.base import tokenize

    p = Path(path)
    files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)]
    src = _ParquetRows(files, columns)
    stamps = [(os.path.abspath(f), os.stat(f).st_mtime_ns) for f in files]
    return da.from_array(
        src,
        chunks=(src.sizes, (src.shape[1],)),
        name=f"parquet-{tokenize(stamps, src.columns)}",
        asarray=False,
        lock=False,
    )


def open_array(path: str | os.PathLike[str], *, chunk_rows: int | None = None) -> da.Array:
    """Dask array over a data file chosen by suffix: ``.npy``, ``.zarr`` or ``.parquet``.

    A folder without a ``.zarr`` suffix holding ``*.parquet`` files is read as Parquet.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return from_npy(p, chunk_rows=chunk_rows)
    if suffix == ".zarr":
        return from_zarr(p, chunk_rows=chunk_rows)
    if suffix in (".parquet", ".pq") or (p.is_dir() and any(p.glob("*.parquet"))):
        arr = from_parquet(p)
        return arr.rechunk((chunk_rows, -1)) if chunk_rows is not None else arr
    raise ValueError(f"data must be a .npy file, a .zarr store or Parquet data, got {str(p)!r}")


# -- sinks ------------------------------------------------------------------------------
class _NpyTarget:
    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, block: NDArray[Any], start: int) -> int:
        mm = np.lib.format.open_memmap(self.path, mode="r+")
        mm[start : start + block.shape[0]] = block
        mm.flush()
        del mm
        return int(block.shape[0])


class _ZarrTarget:
    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, block: NDArray[Any], start: int) -> int:
        import zarr

        arr = zarr.open_array(self.path, mode="r+")
        arr[start : start + block.shape[0]] = block
        return int(block.shape[0])


def _write_block(block: NDArray[Any], target: _NpyTarget | _ZarrTarget, start: int) -> int:
    return target.write(block, start)


def _fsync_tree(path: Path) -> None:
    paths = [path] if path.is_file() else [*path.rglob("*"), path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        trash = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex}")
        os.replace(dest, trash)
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_codes(codes: da.Array, path: str | os.PathLike[str], *, progress: bool = False) -> None:
    """Compute a dask array of codes and write it, atomically, to ``.npy`` or zarr.

    The format follows the suffix: ``.npy`` or ``.zarr`` (zarr v3, one chunk per
    row block, default compression). Each block is written by the worker that
    computed it into a temporary file or store in the destination's folder (so
    that folder must be shared by all workers); the finished file is then
    moved into place with :func:`os.replace`.

    Parameters
    ----------
    codes : dask.array.Array, shape (N, m), integer dtype
    path : path-like
    progress : bool
        Show a tqdm bar over the blocks (with a dask.distributed client).
    """
    import dask.array as da

    if not isinstance(codes, da.Array) or codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be a 2-D integer dask array, got {codes!r}")
    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in (".npy", ".zarr"):
        raise ValueError(f"codes are written to a .npy file or a .zarr store, got {str(dest)!r}")
    if len(codes.chunks[1]) > 1:
        codes = codes.rechunk({1: -1})
    if suffix == ".npy":
        from viva_glyph.io import atomic_output

        with atomic_output(dest) as tmp:
            shape = tuple(int(s) for s in codes.shape)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=codes.dtype, shape=shape).flush()
            _store(codes, _NpyTarget(str(tmp)), progress)
        return
    import zarr

    rows = codes.chunks[0]
    if len(rows) > 1 and (len(set(rows[:-1])) > 1 or rows[-1] > rows[0]):
        codes = codes.rechunk({0: max(rows)})  # zarr chunks are regular
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
    try:
        zarr.create_array(
            str(tmp),
            shape=codes.shape,
            chunks=(codes.chunks[0][0], codes.shape[1]),
            dtype=codes.dtype,
        )
        _store(codes, _ZarrTarget(str(tmp)), progress)
        _fsync_tree(tmp)
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _store(codes: da.Array, target: _NpyTarget | _ZarrTarget, progress: bool) -> None:
    """Compute every block of ``codes`` and write it at its row offset in ``target``."""
    from dask.delayed import delayed

    from viva_glyph.dask._compute import compute

    starts = np.concatenate([[0], np.cumsum(codes.chunks[0])[:-1]])
    blocks = codes.to_delayed().ravel()
    writes = [
        delayed(_write_block, pure=True)(b, target, int(s))
        for b, s in zip(blocks, starts, strict=True)
    ]
    written = sum(compute(writes, progress=progress, desc="blocks"))
    if written != codes.shape[0]:
        raise RuntimeError(f"wrote {written} rows of codes, expected {codes.shape[0]}")
