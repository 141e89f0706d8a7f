"""Model files: an encoder in one safetensors file, written atomically.

Layout (safetensors, readable by ``safetensors.numpy`` and ``safetensors.torch``):

- one tensor ``codebooks`` of shape (M, K, D), dtype F32 or F64;
- string metadata: ``format`` (``"viva-glyph-rvq"``), ``format_version``
  (``"1"``), ``config`` (JSON ``{"num_stages", "dimension", "codebook_size"}``),
  ``dtype`` (``"float32"``/``"float64"``), ``library_version`` and, when the
  encoder was fitted, ``training`` (JSON of ``TrainingSummary.to_dict()``).

:func:`load` checks the header itself before the safetensors library sees the
bytes (header length capped, JSON parsed, dtype, shape against the config,
offsets against the file size), so a malformed or hostile file raises
:class:`ModelFormatError` and never triggers a large allocation.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from viva_glyph._files import atomic_output
from viva_glyph.codebook import Codebook
from viva_glyph.rvq import RvqConfig, RvqEncoder

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "ModelFormatError",
    "atomic_output",
    "load",
    "read_metadata",
    "save",
]

FORMAT_NAME = "viva-glyph-rvq"
FORMAT_VERSION = "1"
#: Largest safetensors JSON header accepted (a real one is well under 64 KiB).
MAX_HEADER_BYTES = 1 << 20
_DTYPES = {"F32": np.dtype(np.float32), "F64": np.dtype(np.float64)}
_TENSOR = "codebooks"

PathLike = str | os.PathLike[str]


class ModelFormatError(ValueError):
    """A model file is malformed, truncated, of another format or another version."""


def _metadata(encoder: RvqEncoder) -> dict[str, str]:
    from viva_glyph import __version__

    c = encoder.config
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(
            {"num_stages": c.num_stages, "dimension": c.dimension, "codebook_size": c.codebook_size}
        ),
        "dtype": str(encoder.dtype),
        "library_version": __version__,
    }
    if encoder.training is not None:
        meta["training"] = json.dumps(encoder.training.to_dict())
    return meta


def save(encoder: RvqEncoder, path: PathLike) -> None:
    """Write ``encoder`` to a safetensors model file, atomically.

    Parameters
    ----------
    encoder : RvqEncoder
    path : str or PathLike
        Destination, conventionally ``*.safetensors``; an existing file is
        replaced only once the new one is complete on disk.
    """
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    from safetensors.numpy import save as st_save

    payload = st_save(
        {_TENSOR: np.ascontiguousarray(encoder.codebook_array)}, metadata=_metadata(encoder)
    )
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()


# -- loading ----------------------------------------------------------------------------
def _fail(path: PathLike, why: str) -> ModelFormatError:
    return ModelFormatError(f"{os.fspath(path)} is not a valid viva-glyph model file: {why}")


def _parse_header(data: bytes, path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Check the safetensors framing; return the tensor entry and the metadata."""
    if len(data) < 8:
        raise _fail(path, f"file is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {n} outside [2, {MAX_HEADER_BYTES}]")
    if 8 + n > len(data):
        raise _fail(path, f"header length {n} runs past the end of the {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _fail(path, "metadata missing or not a map of strings")
    if set(header) != {_TENSOR}:
        raise _fail(path, f"expected exactly one tensor {_TENSOR!r}, got {sorted(header)[:5]}")
    entry = header[_TENSOR]
    if not isinstance(entry, dict):
        raise _fail(path, "tensor entry is not a JSON object")
    return entry, meta


def _int_list(value: object, length: int) -> list[int] | None:
    if not isinstance(value, list) or len(value) != length:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def _check_meta(meta: dict[str, str], path: PathLike) -> tuple[RvqConfig, np.dtype[Any]]:
    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {meta.get('format_version')!r} is not supported "
            f"(this library reads version {FORMAT_VERSION})",
        )
    try:
        cfg = json.loads(meta.get("config", ""))
        if not isinstance(cfg, dict) or set(cfg) != {"num_stages", "dimension", "codebook_size"}:
            raise ValueError("config keys")
        config = RvqConfig(**cfg)
    except (ValueError, TypeError, RecursionError):
        raise _fail(
            path, f"config {meta.get('config', '')[:80]!r} is not a valid RVQ config"
        ) from None
    dtype_name = meta.get("dtype")
    if dtype_name not in ("float32", "float64"):
        raise _fail(path, f"dtype {dtype_name!r} is not float32 or float64")
    return config, np.dtype(dtype_name)


def _check_tensor(
    entry: dict[str, Any], config: RvqConfig, dtype: np.dtype[Any], data_bytes: int, path: PathLike
) -> None:
    if _DTYPES.get(entry.get("dtype")) != dtype:  # type: ignore[arg-type]
        raise _fail(path, f"tensor dtype {entry.get('dtype')!r} does not match metadata {dtype}")
    shape = _int_list(entry.get("shape"), 3)
    expected = [config.num_stages, config.codebook_size, config.dimension]
    if shape != expected:
        raise _fail(path, f"tensor shape {entry.get('shape')!r} does not match config {expected}")
    offsets = _int_list(entry.get("data_offsets"), 2)
    size = math.prod(expected) * dtype.itemsize
    if offsets != [0, size]:
        raise _fail(path, f"data offsets {entry.get('data_offsets')!r}, expected [0, {size}]")
    if data_bytes != size:
        raise _fail(path, f"{data_bytes} bytes of tensor data, expected {size}")


def read_metadata(path: PathLike) -> dict[str, str]:
    """The validated string metadata of a model file, without reading the tensor."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if 2 <= n <= MAX_HEADER_BYTES:
                head += fh.read(n)
    _, meta = _parse_header(head, path)
    _check_meta(meta, path)
    return meta


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
        For anything malformed: truncated, corrupted, another format or version,
        shapes that disagree with the config, non-finite values.
    OSError
        When the file cannot be read (missing, a folder, no permission).
    """
    size = os.stat(path).st_size
    if size > (1 << 40):
        raise _fail(path, f"file of {size} bytes is too large for a model")
    with open(path, "rb") as fh:
        data = fh.read()
    entry, meta = _parse_header(data, path)
    config, dtype = _check_meta(meta, path)
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    _check_tensor(entry, config, dtype, len(data) - header_end, path)
    training = _training(meta, path)
    from safetensors.numpy import load as st_load

    try:
        stack = st_load(data)[_TENSOR]
    except Exception as exc:
        raise _fail(path, f"safetensors could not read it ({exc})") from None
    if stack.shape != (config.num_stages, config.codebook_size, config.dimension):
        raise _fail(path, f"tensor shape {stack.shape} does not match the config")
    if not np.isfinite(stack).all():
        raise _fail(path, "codebooks hold NaN or inf")
    books = [Codebook(book, dtype=dtype) for book in stack]
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
