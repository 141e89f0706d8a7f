"""Readers of the binary array formats: ``.npy``, ``.npz``, ``.fvecs`` and ``.bvecs``.

Used by :func:`viva_glyph.files.open_vectors`. Every header is parsed and its
shape checked against the file's size before anything is allocated: ``.npy``
and ``.fvecs`` / ``.bvecs`` rows are read block by block with plain file reads
(:class:`FixedRows`; every ``.fvecs`` / ``.bvecs`` row's dimension is checked),
one array of a ``.npz`` archive is read whole (:func:`load_npz`).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_matrix

__all__ = ["FixedRows", "load_npz", "npy_header", "open_npy", "open_vecs"]


# -- .npy headers (also inside .npz) ----------------------------------------------------
def npy_header(fh: BinaryIO, what: str) -> tuple[tuple[int, int], bool, np.dtype[Any]]:
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


def open_npy(p: Path) -> FixedRows:
    with open(p, "rb") as fh:
        (n, d), fortran, dtype = npy_header(fh, str(p))
        offset = fh.tell()
    if fortran and d > 1:
        raise ValueError(f"{p}: Fortran-ordered arrays are not streamed; save it C-ordered")
    if os.path.getsize(p) < offset + n * d * dtype.itemsize:
        raise ValueError(f"{p}: truncated, shorter than its header's shape {(n, d)} says")
    return FixedRows(str(p), offset, n, d, dtype, prefix=0)


def open_vecs(p: Path, dtype: np.dtype[Any]) -> FixedRows:
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
    return FixedRows(str(p), 0, size // row_bytes, d, dtype, prefix=4)


class FixedRows:
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
def load_npz(p: Path, key: str | None) -> NDArray[Any]:
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
                (n, d), fortran, dtype = npy_header(fh, what)  # type: ignore[arg-type]
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
