"""Model files: the reader, :func:`load` (the writer lives in :mod:`viva_glyph.files._modelfile`).

The layout is described in :mod:`viva_glyph.files._modelfile`: one safetensors file
with a tensor ``codebooks`` (M, K, D), or (K_1 + ... + K_M, D) for stages of
different sizes (listed in the config), and string metadata. :func:`load` reads
and checks the header before any more of the file (header length capped at
:data:`MAX_HEADER_BYTES`, JSON parsed, format, config, dtype, shape, offsets
against the file size, nesting depth), refuses folders, pipes and devices
without reading them, then reads the tensor straight into its array: a
malformed or hostile file raises :class:`ModelFormatError` and never costs more
than a few MiB beyond the tensor its header declares.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.codebook import codebooks_of_stages
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.summary import TrainingSummary
from viva_glyph.files._modelfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    TENSOR,
    atomic_output,
    json_depth,
    save,
)
from viva_glyph.files._safetensors import FileKind, SafetensorsFile, Tensor, open_file

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
    "stage_codebooks",
]

_CONFIG_KEYS = {"num_stages", "dimension", "codebook_size"}
#: A model with stages of different sizes also lists them.
_SIZED_KEYS = _CONFIG_KEYS | {"codebook_sizes"}

PathLike = str | os.PathLike[str]


class ModelFormatError(ValueError):
    """A model file is malformed, truncated, of another format or another version."""


def _fail(path: PathLike, why: str) -> ValueError:
    return _KIND.fail(path, why)


_KIND = FileKind(FORMAT_NAME, FORMAT_VERSION, "model file", ModelFormatError, foreign=True)


def _json(text: str, what: str, path: PathLike) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _fail(path, f"{what} {text[:60]!r} is not valid JSON") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise _fail(path, f"{what} nests {depth} deep (at most {MAX_JSON_DEPTH})")
    return value


def _check_meta(meta: dict[str, str], path: PathLike) -> tuple[RvqConfig, np.dtype[Any], bool]:
    cfg = _json(meta.get("config", ""), "config", path)
    try:
        if not isinstance(cfg, dict) or set(cfg) not in (_CONFIG_KEYS, _SIZED_KEYS):
            raise ValueError("config keys")
        sizes = cfg.get("codebook_sizes")
        if sizes is not None and not isinstance(sizes, list):
            raise ValueError("codebook_sizes")
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
    return config, np.dtype(dtype_name), "codebook_sizes" in cfg


def _checked(fh: SafetensorsFile) -> tuple[Tensor, RvqConfig, dict[str, str]]:
    """The codebooks tensor entry, config and metadata, once all agree."""
    config, dtype, sized = _check_meta(fh.metadata, fh.path)
    if fh.names != {TENSOR}:
        names = [name[:20] for name in sorted(fh.names)[:5]]
        raise _fail(fh.path, f"expected exactly one tensor {TENSOR!r}, got {names}")
    shape: tuple[int, ...] = (config.num_stages, config.codebook_size, config.dimension)
    if sized:  # stages of different sizes: (K_1 + ... + K_M, D)
        shape = (sum(config.stage_sizes), config.dimension)
    code = "F32" if dtype == np.float32 else "F64"
    return fh.tensors({TENSOR: ({code}, shape)})[TENSOR], config, fh.metadata


def read_metadata(path: PathLike) -> dict[str, str]:
    """The validated string metadata of a model file, without reading the tensor."""
    with open_file(path, _KIND) as fh:
        return _checked(fh)[2]


def read_model(path: PathLike) -> tuple[NDArray[np.floating[Any]], RvqConfig, dict[str, str]]:
    """Codebooks as stored, config and metadata of a model file, every part checked.

    The codebooks are (M, K, D), or (K_1 + ... + K_M, D) when the config lists
    per-stage sizes (:func:`stage_codebooks` splits either into stages). The
    header is read and checked first; the tensor is then read into one array
    of the size the header declares (which equals the rest of the file).
    """
    with open_file(path, _KIND) as fh:
        tensor, config, meta = _checked(fh)
        stack = fh.read(tensor)
    if not np.isfinite(stack).all():
        raise _fail(path, "codebooks hold NaN or inf")
    return stack, config, meta


def stage_codebooks(
    stack: NDArray[np.floating[Any]], config: RvqConfig
) -> list[NDArray[np.floating[Any]]]:
    """The (K_m, D) codebook of every stage of a stack :func:`read_model` returned."""
    if stack.ndim == 3:
        return list(stack)
    return np.split(stack, np.cumsum(config.stage_sizes)[:-1])


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
        books = codebooks_of_stages(stage_codebooks(stack, config), dtype=stack.dtype)
    except ValueError as exc:  # e.g. values whose squared distances would overflow
        raise _fail(path, str(exc)) from None
    return RvqEncoder(books, config, training=training)


def _training(meta: dict[str, str], path: PathLike) -> Any:
    text = meta.get("training")
    if text is None:
        return None
    try:
        return TrainingSummary.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise _fail(path, "training summary is malformed") from None
