"""The one safetensors reader and writer behind model, index and semantic-ID files.

Files know tensors and a header of string metadata, not classes: the encoder, the
index and the semantic-ID model each turn themselves into those and back.
:func:`write_file` writes one atomically (streaming memory maps, never copying
them whole), refusing what the reader would refuse.

:func:`open_file` refuses folders, pipes and devices without blocking or
reading them, then reads and checks the 8-byte length and the JSON header
before anything else: length capped at ``MAX_HEADER_BYTES``, JSON containers
capped, string metadata, the format name and version the caller expects.
:meth:`SafetensorsFile.tensors` checks every tensor entry against what the
caller expects (names, dtype, shape, offsets inside the data, sizes equal to
dtype times shape, spans that tile the data without overlap); the caller then
reads a tensor into one array (:meth:`~SafetensorsFile.read`) or memory-maps
it (:meth:`~SafetensorsFile.memmap`). Every refusal raises the caller's error
class, naming the file, what kind of file was expected and why.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from viva_glyph.files._atomic import atomic_output

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "Expect",
    "FileKind",
    "SafetensorsFile",
    "Tensor",
    "header_problem",
    "json_depth",
    "not_regular",
    "open_file",
    "write_file",
]

#: safetensors dtype names numpy reads, and their (little-endian) numpy dtypes.
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"), ("U8", "u1"), ("I8", "i1"), ("U16", "<u2"), ("I16", "<i2"),
        ("F16", "<f2"), ("U32", "<u4"), ("I32", "<i4"), ("F32", "<f4"),
        ("U64", "<u8"), ("I64", "<i8"), ("F64", "<f8"),
    )
}  # fmt: skip
#: What a file that is no safetensors file starts with, and what to call it.
_SIGNATURES = (
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"PK\x03\x04", "a zip archive (an .npz file?)"),
    (b"PAR1", "a Parquet file"),
    (b"GGUF", "a GGUF model"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x89PNG", "a PNG image"),
    (b"\x1f\x8b", "a gzip file"),
    *((b"\x80" + bytes([v]), "a Python pickle") for v in range(2, 6)),
)

#: Largest JSON header accepted: 256 KiB holds a training summary of ~10,000
#: figures, and parsing any JSON of that size stays within a few MiB.
MAX_HEADER_BYTES = 1 << 18
#: Most ``[`` and ``{`` bytes in a header (a real one has a few dozen).
MAX_JSON_CONTAINERS = 10_000
#: Deepest nesting of a JSON value inside the metadata (a real one has 3).
MAX_JSON_DEPTH = 32

PathLike = str | os.PathLike[str]


def json_depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (0 for a scalar, 1 for ``[]``), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def header_problem(header: bytes) -> str | None:
    """Why a JSON header is outside the format's limits, or None when it is within them."""
    if len(header) > MAX_HEADER_BYTES:
        return f"header of {len(header)} bytes is over the limit of {MAX_HEADER_BYTES}"
    containers = header.count(b"[") + header.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        return f"header holds {containers} JSON lists or objects (at most {MAX_JSON_CONTAINERS})"
    return None


#: Rows of a tensor written per step (memory maps are streamed, never copied whole).
WRITE_ROWS = 1 << 20

#: An expected tensor: the allowed dtype names, and its exact shape or only its rank.
Expect = tuple[Collection[str], tuple[int, ...] | int]


@dataclass(frozen=True)
class FileKind:
    """A kind of viva-glyph safetensors file: its format metadata and how to refuse one.

    ``what`` names it in messages (``"model file"``); ``error`` is raised for
    every refusal; with ``foreign`` true, a file of another format is "not a
    viva-glyph model file" rather than "not a valid" one.
    """

    name: str
    version: str
    what: str
    error: type[ValueError]
    foreign: bool = False

    def fail(self, path: PathLike, why: str) -> ValueError:
        """The error for a malformed file of this kind."""
        return self.error(f"{os.fspath(path)} is not a valid viva-glyph {self.what}: {why}")

    def other(self, path: PathLike, why: str) -> ValueError:
        """The error for a file of another kind altogether."""
        if not self.foreign:
            return self.fail(path, why)
        return self.error(f"{os.fspath(path)} is not a viva-glyph {self.what}: {why}")


class Tensor(NamedTuple):
    """A checked tensor entry: file dtype, shape, absolute offset and size in bytes."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _what_it_is(head: bytes, size: int) -> str:
    """A description of a file that does not start like a safetensors file."""
    if size == 0:
        return "the file is empty"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return f"it is {name} (it starts with {head[:8]!r})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is text (it starts with {text[:24]!r})"
    if size < 10:
        return f"the file is {size} bytes, too short for a safetensors header"
    return f"it does not start with a safetensors header (it starts with {head[:12]!r})"


def not_regular(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is not a regular file ("a folder",
    "a named pipe (FIFO)", ...), or None for a regular file."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _open(path: PathLike, kind: FileKind) -> tuple[io.FileIO, int]:
    """Open a regular file for reading without blocking on pipes; return it and its size."""
    what = not_regular(os.stat(path).st_mode)
    if what is None:
        nonblock = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in meanwhile must not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock)
        info = os.fstat(fd)
        what = not_regular(info.st_mode)
        if what is None:
            if nonblock:
                os.set_blocking(fd, True)
            return io.FileIO(fd, "rb"), info.st_size
        os.close(fd)
    article = "an" if kind.what[:1].lower() in "aeiou" else "a"
    raise kind.error(f"{os.fspath(path)} is {what}, not {article} {kind.what} (not a regular file)")


def _read_exact(fh: io.FileIO, n: int, path: PathLike, kind: FileKind) -> bytes:
    data = fh.read(n) or b""
    while len(data) < n:
        more = fh.read(n - len(data))
        if not more:
            raise kind.fail(path, "the file is shorter than its header says (truncated?)")
        data += more
    return data


def _header(
    fh: io.FileIO, size: int, path: PathLike, kind: FileKind
) -> tuple[dict[str, Any], dict[str, str], int]:
    """Read and check the framing and metadata; return the tensor entries, metadata, data start."""
    head = fh.read(min(size, 64)) or b""
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if len(head) < 10 or head[8:9] != b"{":  # a safetensors header opens with "{"
        raise kind.other(path, _what_it_is(head, size))
    if n < 2 or n > size - 8:
        if any(head.startswith(magic) for magic, _ in _SIGNATURES):
            raise kind.other(path, _what_it_is(head, size))
        raise kind.fail(path, f"header length {n} runs past the end of the {size}-byte file")
    if n > MAX_HEADER_BYTES:
        raise kind.fail(path, f"header length {n} is over the limit of {MAX_HEADER_BYTES} bytes")
    rest = 8 + n - len(head)
    raw = head[8 : 8 + n] + (_read_exact(fh, rest, path, kind) if rest > 0 else b"")
    problem = header_problem(raw)
    if problem is not None:
        raise kind.fail(path, problem)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise kind.fail(path, f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise kind.fail(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise kind.other(path, "metadata missing or not a map of strings (not viva-glyph's)")
    if meta.get("format") != kind.name:
        found = meta.get("format")
        raise kind.other(
            path, f"a safetensors file whose format is {found!r:.40}, not {kind.name!r}"
        )
    if meta.get("format_version") != kind.version:
        raise kind.fail(
            path,
            f"format version {meta.get('format_version')!r:.20} is not supported "
            f"(this library reads version {kind.version})",
        )
    return header, meta, 8 + n


def _shape(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return tuple(value)


class SafetensorsFile:
    """An open safetensors file whose header and metadata are checked; use as a context manager.

    Attributes
    ----------
    metadata : dict of str to str
        The ``__metadata__`` map (format name and version already checked).
    names : frozenset of str
        The tensor names the header lists (entries unchecked until :meth:`tensors`).
    """

    def __init__(self, fh: io.FileIO, path: PathLike, kind: FileKind, size: int) -> None:
        self._fh, self.path, self.kind = fh, path, kind
        self._entries, self.metadata, self._start = _header(fh, size, path, kind)
        self._data_bytes = size - self._start
        self.names = frozenset(self._entries)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._fh.close()

    def tensors(self, expect: Mapping[str, Expect]) -> dict[str, Tensor]:
        """Check every entry against ``expect`` (name -> (dtype names, shape or rank)).

        The names must be exactly those of ``expect``; each dtype one of those
        allowed; each shape non-negative ints equal to the expected shape (or of
        the expected rank); each span inside the data and of dtype x shape bytes;
        the spans must tile the data with no overlap and no gap.
        """
        kind, path = self.kind, self.path
        if set(self._entries) != set(expect):
            got = [name[:20] for name in sorted(self._entries)[:6]]
            raise kind.fail(path, f"tensors {got} differ from the expected {sorted(expect)}")
        out: dict[str, Tensor] = {}
        for name, (dtypes, want) in expect.items():
            entry = self._entries[name]
            if not isinstance(entry, dict):
                raise kind.fail(path, f"tensor {name!r} entry is not a JSON object")
            code = entry.get("dtype")
            if not isinstance(code, str) or code not in dtypes or code not in DTYPES:
                raise kind.fail(
                    path, f"tensor {name!r} has dtype {str(code)[:20]!r}, expected {sorted(dtypes)}"
                )
            shape = _shape(entry.get("shape"))
            if shape is None or (shape != want if isinstance(want, tuple) else len(shape) != want):
                wanted = list(want) if isinstance(want, tuple) else f"{want}-D"
                found = str(entry.get("shape"))[:60]
                raise kind.fail(path, f"tensor {name!r} has shape {found}, expected {wanted}")
            nbytes = math.prod(shape) * DTYPES[code].itemsize
            offsets = _shape(entry.get("data_offsets"))
            if offsets is None or len(offsets) != 2 or offsets[1] - offsets[0] != nbytes:
                found = str(entry.get("data_offsets"))[:60]
                raise kind.fail(
                    path, f"tensor {name!r} data offsets {found} do not span its {nbytes} bytes"
                )
            if offsets[1] > self._data_bytes:
                raise kind.fail(
                    path,
                    f"tensor {name!r} data offsets {list(offsets)} run past the "
                    f"{self._data_bytes} bytes of tensor data (truncated?)",
                )
            out[name] = Tensor(DTYPES[code], shape, self._start + offsets[0], nbytes)
        at = self._start
        for name, t in sorted(out.items(), key=lambda item: (item[1].start, item[1].nbytes)):
            span = [t.start - self._start, t.start - self._start + t.nbytes]
            if t.start != at:
                gap = f"leave a {t.start - at}-byte gap"
                why = "overlap another tensor's" if t.start < at else gap
                raise kind.fail(path, f"tensor {name!r} data offsets {span} {why}")
            at = t.start + t.nbytes
        if at - self._start != self._data_bytes:
            used = at - self._start
            raise kind.fail(path, f"{self._data_bytes} bytes of tensor data, expected {used}")
        return out

    def read(self, tensor: Tensor) -> NDArray[Any]:
        """Read ``tensor`` into one new array (native byte order)."""
        out = np.empty(tensor.shape, dtype=tensor.dtype)
        view = out.reshape(-1).view(np.uint8).data  # bytes, also for an empty tensor
        self._fh.seek(tensor.start)
        done = 0
        while done < len(view):
            got = self._fh.readinto(view[done:])
            if not got:
                raise self.kind.fail(self.path, "the file is shorter than its header says")
            done += got
        return out.astype(tensor.dtype.newbyteorder("="), copy=False)

    def memmap(self, tensor: Tensor) -> NDArray[Any]:
        """Memory-map ``tensor`` read-only (an empty array when it holds no values)."""
        if tensor.nbytes == 0:
            return np.empty(tensor.shape, tensor.dtype)
        return np.memmap(
            self._fh, dtype=tensor.dtype, mode="r", offset=tensor.start, shape=tensor.shape
        )


def open_file(path: PathLike, kind: FileKind) -> SafetensorsFile:
    """Open ``path`` as a safetensors file of ``kind``, its header and metadata checked.

    Raises
    ------
    kind.error
        A non-regular file, another format or version, a malformed header.
    OSError
        When the file cannot be opened or read.
    """
    fh, size = _open(path, kind)
    try:
        return SafetensorsFile(fh, path, kind, size)
    except BaseException:
        fh.close()
        raise


def write_file(
    path: PathLike, tensors: Sequence[tuple[str, NDArray[Any]]], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` (name, array) in this order with string ``metadata`` as one
    safetensors file, atomically (temporary file, fsync, rename): readable by the
    ``safetensors`` package, and by :func:`open_file`.

    Raises
    ------
    ValueError
        A dtype safetensors has no name for, or a header beyond :data:`MAX_HEADER_BYTES`
        or :data:`MAX_JSON_CONTAINERS` (the reader would refuse the file).
    """
    names = {dt: name for name, dt in DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    at = 0
    for name, arr in tensors:
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in names:
            raise ValueError(
                f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot hold"
            )
        size = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": names[dt],
            "shape": list(arr.shape),
            "data_offsets": [at, at + size],
        }
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned
    problem = header_problem(text)
    if problem is not None:
        raise ValueError(f"cannot write {os.fspath(path)}: its {problem}")
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for _, arr in tensors:
            rows = arr.reshape(1, -1) if arr.ndim == 0 else arr
            for a in range(0, max(rows.shape[0], 1), WRITE_ROWS):
                part = np.ascontiguousarray(rows[a : a + WRITE_ROWS])
                fh.write(part.astype(part.dtype.newbyteorder("<"), copy=False).tobytes())
        fh.flush()
