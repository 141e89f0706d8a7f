# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Sources (every format of :mod:`viva_glyph.files`) and sinks (zarr, ``.npy``) for dask arrays.

Sources are the :class:`viva_glyph.files.VectorFile` readers of the command
line and the evaluation, with the same rules and messages: small picklable
array-likes that open the file inside the task that reads a block, so a graph
never carries data and workers read straight from (shared) storage. Sinks
write each block into its own row range of a temporary file or store next to
the destination, then move it into place with :func:`os.replace`; writing a
block twice (a task re-run after a worker loss) writes the same bytes to the
same place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_code_shape, optional_import, positive_int
from viva_glyph.files import (
    VectorFile,
    atomic_folder,
    atomic_output,
    check_output,
    create_zarr,
    open_parquet,
    open_vectors,
    open_zarr,
)

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["from_npy", "from_parquet", "from_zarr", "open_array", "write_codes"]

#: Default bytes per block of a source.
BLOCK_BYTES = 64 << 20


def _rows_per_block(row_bytes: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return positive_int(chunk_rows, "chunk_rows")
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


# -- sources: the readers of viva_glyph.files, one task per block ------------------------
def _from_file(src: VectorFile, rows: int | tuple[int, ...], kind: str) -> da.Array:
    """Dask array over a :class:`~viva_glyph.files.VectorFile` (picklable; the binary and
    table formats hold only paths, so a task reads its own rows)."""
    import dask.array as da
    from dask.base import tokenize

    chosen = [getattr(src._source, a, None) for a in ("columns", "component")]
    token = tokenize(src.path, _stamp(src.path), src.shape, str(src.dtype), rows, chosen)
    name = f"{kind}-{token}"
    chunks = (rows, (src.shape[1],))
    return da.from_array(src, chunks=chunks, name=name, asarray=False, lock=False)


def _stamp(path: str) -> list[tuple[str, int, int]]:
    """Name, size and mtime of a file, or of a folder and the entries directly in it."""
    p = Path(path)
    entries = [p, *sorted(p.iterdir())] if p.is_dir() else [p]
    out = []
    for f in entries:
        with contextlib.suppress(OSError):
            st = f.stat()
            out.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
    return out


def from_npy(path: str | os.PathLike[str], *, chunk_rows: int | None = None) -> da.Array:
    """Dask array over a ``.npy`` file (2-D, or 1-D as one column), read block by block.

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
    if Path(path).suffix.lower() != ".npy":
        raise ValueError(f"from_npy reads .npy files, got {os.fspath(path)!r}")
    src = open_vectors(path)
    rows = _rows_per_block(src.shape[1] * src.dtype.itemsize, chunk_rows)
    return _from_file(src, rows, "npy")


def from_zarr(
    path: str | os.PathLike[str], *, component: str | None = None, chunk_rows: int | None = None
) -> da.Array:
    """Dask array over a zarr array (a store path or URL, optionally a component inside it).

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
    src = open_zarr(path, component=component)
    rows = positive_int(chunk_rows, "chunk_rows") if chunk_rows is not None else None
    return _from_file(src, rows or src.natural_rows or 1, "zarr")


def from_parquet(path: str | os.PathLike[str], *, columns: Sequence[str] | None = None) -> da.Array:
    """Dask array over Parquet data, one block per row group.

    Parameters
    ----------
    path : path-like
        A Parquet file, or a folder of ``*.parquet`` files (read in name order).
    columns : sequence of str, optional
        Either one list column holding the vectors, or D numeric columns (one
        per dimension). Default: the only list column, else every numeric column.

    Returns
    -------
    dask.array.Array, shape (N, D), the columns' common dtype
    """
    src = open_parquet(path, columns=columns)
    return _from_file(src, src.natural_rows or 1, "parquet")


def open_array(
    path: str | os.PathLike[str],
    *,
    chunk_rows: int | None = None,
    key: str | None = None,
    header: bool | None = None,
) -> da.Array:
    """Dask array over any data file :func:`viva_glyph.files.open_vectors` reads.

    ``.npy``, ``.fvecs`` / ``.bvecs`` and Parquet are read block by block on the
    workers, ``.zarr`` chunk by chunk; ``.npz`` and CSV/TSV are read whole here
    (the graph then carries their data). A folder holding ``*.parquet`` files is
    read as Parquet. ``key`` and ``header`` are those of
    :func:`viva_glyph.files.open_vectors`.
    """
    src = open_vectors(path, key=key, header=header)
    rows = src.natural_rows
    if chunk_rows is not None or rows is None:
        rows = _rows_per_block(src.shape[1] * src.dtype.itemsize, chunk_rows)
    return _from_file(src, rows, "vectors")


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
        zarr = optional_import("zarr", "writing a zarr store")

        arr = zarr.open_array(self.path, mode="r+")
        arr[start : start + block.shape[0]] = block
        return int(block.shape[0])


def _write_block(block: NDArray[Any], target: _NpyTarget | _ZarrTarget, start: int) -> int:
    return target.write(block, start)


def write_codes(codes: da.Array, path: str | os.PathLike[str], *, progress: bool = False) -> None:
    """Compute a dask array of codes and write it, atomically, to ``.npy`` or zarr.

    The format follows the suffix: ``.npy`` or ``.zarr`` (zarr v3, one chunk per
    row block, default compression). Each block is written by the worker that
    computed it into a temporary file or store in the destination's folder (so
    that folder must be shared by all workers); the finished file is then
    moved into place with :func:`os.replace` (see :mod:`viva_glyph.files._atomic`).

    Parameters
    ----------
    codes : dask.array.Array, shape (N, m), integer dtype
    path : path-like
    progress : bool
        Show a tqdm bar over the blocks (with a dask.distributed client).
    """
    import dask.array as da

    if not isinstance(codes, da.Array):
        raise TypeError(f"codes must be a 2-D integer dask array, got {type(codes).__name__}")
    check_code_shape(codes, None, "codes")
    if Path(path).suffix.lower() not in (".npy", ".zarr"):
        raise ValueError(f"codes are written to a .npy file or a .zarr store, got {str(path)!r}")
    dest = check_output(path)
    if len(codes.chunks[1]) > 1:
        codes = codes.rechunk({1: -1})
    shape = (int(codes.shape[0]), int(codes.shape[1]))
    if dest.suffix.lower() == ".npy":
        with atomic_output(dest) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=codes.dtype, shape=shape).flush()
            _store(codes, _NpyTarget(str(tmp)), progress)
        return
    rows = codes.chunks[0]
    if len(rows) > 1 and (len(set(rows[:-1])) > 1 or rows[-1] > rows[0]):
        codes = codes.rechunk({0: max(rows)})  # zarr chunks are regular
    with atomic_folder(dest) as tmp:
        create_zarr(tmp, shape, codes.dtype, codes.chunks[0][0])
        _store(codes, _ZarrTarget(str(tmp)), progress)


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
