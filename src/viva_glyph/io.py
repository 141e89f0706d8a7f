"""Model files: the reader, :func:`load` (the writer lives in :mod:`viva_glyph._modelfile`).

The layout is described in :mod:`viva_glyph._modelfile`: one safetensors file
with a tensor ``codebooks`` (M, K, D) and string metadata. :func:`load` reads
and checks the header before any more of the file (header length capped at
:data:`MAX_HEADER_BYTES`, JSON parsed, format, config, dtype, shape, offsets
against the file size, nesting depth), refuses folders, pipes and devices
without reading them, then reads the tensor straight into its array: a
malformed or hostile file raises :class:`ModelFormatError` and never costs more
than a few MiB beyond the tensor its header declares.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._modelfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    TENSOR,
    atomic_output,
    header_problem,
    json_depth,
    save,
)
from viva_glyph.codebook import codebooks_of_stages
from viva_glyph.config import RvqConfig
from viva_glyph.encoder import RvqEncoder

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "ModelFormatError",
    "atomic_output",
    "load",
    "read_metadata",
    "read_model",
    "save",
]

_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_CONFIG_KEYS = {"num_stages", "dimension", "codebook_size"}
#: What a file that is no model file starts with, and what to call it.
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

PathLike = str | os.PathLike[str]


class ModelFormatError(ValueError):
    """A model file is malformed, truncated, of another format or another version."""


def _fail(path: PathLike, why: str) -> ModelFormatError:
    return ModelFormatError(f"{os.fspath(path)} is not a valid viva-glyph model file: {why}")


def _other(path: PathLike, what: str) -> ModelFormatError:
    return ModelFormatError(f"{os.fspath(path)} is not a viva-glyph model file: {what}")


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


# -- reading ------------------------------------------------------------------------------
def _kind(mode: int) -> str | None:
    """What a non-regular file is, or None for a regular file."""
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


def _open(path: PathLike) -> tuple[io.FileIO, int]:
    """Open a regular file for reading without blocking on pipes; return it and its size."""
    kind = _kind(os.stat(path).st_mode)
    if kind is None:
        nonblock = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in meanwhile must not block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock)
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is None:
            if nonblock:
                os.set_blocking(fd, True)
            return io.FileIO(fd, "rb"), info.st_size
        os.close(fd)
    raise ModelFormatError(f"{os.fspath(path)} is {kind}, not a model file")


def _read_exact(fh: io.FileIO, n: int, path: PathLike) -> bytes:
    data = fh.read(n)
    while data is not None and len(data) < n:
        more = fh.read(n - len(data))
        if not more:
            break
        data += more
    if data is None or len(data) != n:
        raise _fail(path, "the file is shorter than its header says (truncated?)")
    return data


def _header(fh: io.FileIO, size: int, path: PathLike) -> tuple[dict[str, Any], dict[str, str], int]:
    """Read and check the safetensors framing; return the tensor entry, metadata, data offset."""
    head = fh.read(min(size, 64)) or b""
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if len(head) < 10 or head[8:9] != b"{":  # a safetensors header opens with "{"
        raise _other(path, _what_it_is(head, size))
    if n < 2 or n > size - 8:
        if any(head.startswith(magic) for magic, _ in _SIGNATURES):
            raise _other(path, _what_it_is(head, size))
        raise _fail(path, f"header length {n} runs past the end of the {size}-byte file")
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {n} is over the limit of {MAX_HEADER_BYTES} bytes")
    raw = head[8 : 8 + n] + (_read_exact(fh, 8 + n - len(head), path) if 8 + n > len(head) else b"")
    problem = header_problem(raw)
    if problem is not None:
        raise _fail(path, problem)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _other(path, "a safetensors file without viva-glyph metadata")
    if meta.get("format") != FORMAT_NAME:
        raise _other(
            path, f"a safetensors file of format {meta.get('format')!r:.40}, not {FORMAT_NAME!r}"
        )
    if set(header) != {TENSOR}:
        names = [name[:20] for name in sorted(header)[:5]]
        raise _fail(path, f"expected exactly one tensor {TENSOR!r}, got {names}")
    entry = header[TENSOR]
    if not isinstance(entry, dict):
        raise _fail(path, "tensor entry is not a JSON object")
    return entry, meta, 8 + n


def _int_list(value: object, length: int) -> list[int] | None:
    if not isinstance(value, list) or len(value) != length:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def _json(text: str, what: str, path: PathLike) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _fail(path, f"{what} {text[:60]!r} is not valid JSON") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise _fail(path, f"{what} nests {depth} deep (at most {MAX_JSON_DEPTH})")
    return value


def _check_meta(meta: dict[str, str], path: PathLike) -> tuple[RvqConfig, np.dtype[Any]]:
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {meta.get('format_version')!r} is not supported "
            f"(this library reads version {FORMAT_VERSION})",
        )
    cfg = _json(meta.get("config", ""), "config", path)
    try:
        if not isinstance(cfg, dict) or set(cfg) != _CONFIG_KEYS:
            raise ValueError("config keys")
        config = RvqConfig(**cfg)
    except (ValueError, TypeError):
        raise _fail(
            path, f"config {meta.get('config', '')[:80]!r} is not a valid RVQ config"
        ) from None
    dtype_name = meta.get("dtype")
    if dtype_name not in ("float32", "float64"):
        raise _fail(path, f"dtype {dtype_name!r} is not float32 or float64")
    if "training" in meta:
        _json(meta["training"], "training summary", path)
    return config, np.dtype(dtype_name)


def _check_tensor(
    entry: dict[str, Any], config: RvqConfig, dtype: np.dtype[Any], data_bytes: int, path: PathLike
) -> np.dtype[Any]:
    """The tensor's file dtype, once its dtype, shape and offsets agree with the metadata."""
    name = entry.get("dtype")
    file_dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if file_dtype is None or file_dtype.newbyteorder("=") != dtype:
        raise _fail(path, f"tensor dtype {str(name)[:20]!r} does not match metadata {dtype}")
    shape = _int_list(entry.get("shape"), 3)
    expected = [config.num_stages, config.codebook_size, config.dimension]
    if shape != expected:
        raise _fail(
            path, f"tensor shape {str(entry.get('shape'))[:60]} does not match config {expected}"
        )
    offsets = _int_list(entry.get("data_offsets"), 2)
    size = math.prod(expected) * dtype.itemsize
    if offsets != [0, size]:
        found = str(entry.get("data_offsets"))[:60]
        raise _fail(path, f"data offsets {found}, expected [0, {size}]")
    if data_bytes != size:
        raise _fail(path, f"{data_bytes} bytes of tensor data, expected {size}")
    return file_dtype


def read_metadata(path: PathLike) -> dict[str, str]:
    """The validated string metadata of a model file, without reading the tensor."""
    fh, size = _open(path)
    with fh:
        entry, meta, start = _header(fh, size, path)
        config, dtype = _check_meta(meta, path)
        _check_tensor(entry, config, dtype, size - start, path)
    return meta


def read_model(path: PathLike) -> tuple[NDArray[np.floating[Any]], RvqConfig, dict[str, str]]:
    """Codebooks (M, K, D), config and metadata of a model file, every part checked.

    The header is read and checked first; the tensor is then read into one
    array of the size the header declares (which equals the rest of the file).
    """
    fh, size = _open(path)
    with fh:
        entry, meta, start = _header(fh, size, path)
        config, dtype = _check_meta(meta, path)
        file_dtype = _check_tensor(entry, config, dtype, size - start, path)
        shape = (config.num_stages, config.codebook_size, config.dimension)
        stack = np.empty(shape, dtype=file_dtype)
        view = stack.data.cast("B")
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise _fail(path, "the file is shorter than its header says (truncated?)")
            done += got
    stack = stack.astype(dtype, copy=False)  # native byte order
    if not np.isfinite(stack).all():
        raise _fail(path, "codebooks hold NaN or inf")
    return stack, config, meta


def load(path: PathLike) -> RvqEncoder:
    """Read an encoder written by :func:`save`.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    RvqEncoder
        Codebooks in the stored dtype; ``training`` restored when present.

    Raises
    ------
    ModelFormatError
        For anything that is not a sound model file: another format, a folder,
        pipe or device, truncated or corrupted, another version, shapes that
        disagree with the config, non-finite values, JSON nested too deep.
    OSError
        When the file cannot be read (missing, no permission).
    """
    stack, config, meta = read_model(path)
    training = _training(meta, path)
    try:
        books = codebooks_of_stages(stack, dtype=stack.dtype)
    except ValueError as exc:  # e.g. values whose squared distances would overflow
        raise _fail(path, str(exc)) from None
    return RvqEncoder(books, config, training=training)


def _training(meta: dict[str, str], path: PathLike) -> Any:
    text = meta.get("training")
    if text is None:
        return None
    from viva_glyph.training import TrainingSummary

    try:
        return TrainingSummary.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise _fail(path, "training summary is malformed") from None
