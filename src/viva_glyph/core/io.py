"""Model files: an encoder's codebooks and header, written and read.

A model file is a safetensors file (readable by ``safetensors.numpy`` and
``safetensors.torch``):

- one tensor ``codebooks`` of shape (M, K, D), dtype F32 or F64; when the
  stages have different sizes K_1, ..., K_M, of shape (K_1 + ... + K_M, D)
  instead, stage 1's rows first;
- string metadata: ``format`` (``"viva-glyph-rvq"``), ``format_version``
  (``"1"``), ``config`` (JSON ``{"num_stages", "dimension", "codebook_size"}``,
  plus ``"codebook_sizes": [K_1, ..., K_M]`` when the sizes differ, and then
  ``codebook_size`` is the largest; files of equal sizes are written as before),
  ``dtype`` (``"float32"``/``"float64"``), ``library_version``, when the
  model was fitted, ``training`` (JSON of ``TrainingSummary.to_dict()``) and, when
  it encodes otherwise than greedily by default, ``encoding`` (JSON of
  ``EncodeSettings.to_dict()``; a file without it is a greedy model).

This module knows those arrays and that header, not the encoder class:
:meth:`viva_glyph.core.RvqEncoder.save` hands it the parts and
:func:`viva_glyph.core.load` builds the encoder from what :func:`read_parts`
returns. Reading checks the header before any more of the file (header length
capped, JSON parsed, format, config, dtype, shape, offsets against the file
size, nesting depth), refuses folders, pipes and devices without reading them,
then reads the tensor straight into its array: a malformed or hostile file
raises :class:`ModelFormatError` and never costs more than a few MiB beyond the
tensor its header declares. The writer refuses what the reader would refuse, so
every file it writes loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._version import __version__
from viva_glyph.core.codebook import Codebook, codebooks_of_stages
from viva_glyph.core.config import EncodeSettings, RvqConfig
from viva_glyph.core.summary import TrainingSummary
from viva_glyph.files import (
    MAX_JSON_DEPTH,
    FileKind,
    SafetensorsFile,
    Tensor,
    json_depth,
    open_file,
    write_file,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TENSOR",
    "ModelFormatError",
    "read_metadata",
    "read_model",
    "read_parts",
    "stage_codebooks",
    "write_model",
]

FORMAT_NAME = "viva-glyph-rvq"
FORMAT_VERSION = "1"
TENSOR = "codebooks"

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


def read_parts(
    path: PathLike,
) -> tuple[list[Codebook], RvqConfig, TrainingSummary | None, EncodeSettings]:
    """The codebooks of every stage, the config, the training summary and the encoding
    settings of a model file, every part checked (see :func:`viva_glyph.core.load`)."""
    stack, config, meta = read_model(path)
    training = _training(meta, path)
    encoding = EncodeSettings()
    if "encoding" in meta:
        try:
            encoding = EncodeSettings.from_dict(json.loads(meta["encoding"]))
        except (ValueError, TypeError, RecursionError) as exc:
            raise _fail(path, f"encoding settings are not valid: {exc}") from None
    try:
        books = codebooks_of_stages(stage_codebooks(stack, config), dtype=stack.dtype)
    except ValueError as exc:  # e.g. values whose squared distances would overflow
        raise _fail(path, str(exc)) from None
    return books, config, training, encoding


def _training(meta: dict[str, str], path: PathLike) -> TrainingSummary | None:
    text = meta.get("training")
    if text is None:
        return None
    try:
        return TrainingSummary.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise _fail(path, "training summary is malformed") from None


def _metadata(
    config: RvqConfig,
    dtype: np.dtype[Any],
    training: TrainingSummary | None,
    encoding: EncodeSettings | None,
) -> dict[str, str]:
    c = config
    cfg: dict[str, Any] = {
        "num_stages": c.num_stages, "dimension": c.dimension, "codebook_size": c.codebook_size
    }  # fmt: skip
    if c.codebook_sizes is not None:
        cfg["codebook_sizes"] = list(c.codebook_sizes)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(cfg),
        "dtype": str(dtype),
        "library_version": __version__,
    }
    if training is not None:
        try:
            summary = training.to_dict()
            depth = json_depth(summary)
            text = json.dumps(summary)
        except RecursionError:
            depth, text = 1 << 30, ""
        if depth > MAX_JSON_DEPTH:
            raise ValueError(
                f"the training summary nests {'too' if depth == 1 << 30 else depth} deep "
                f"(a model file allows at most {MAX_JSON_DEPTH}): flatten its params"
            )
        meta["training"] = text
    if encoding is not None and encoding != EncodeSettings():
        meta["encoding"] = json.dumps(encoding.to_dict())
    return meta


def write_model(
    path: PathLike,
    config: RvqConfig,
    books: Sequence[Codebook],
    training: TrainingSummary | None,
    encoding: EncodeSettings | None = None,
) -> None:
    """Write an encoder's parts as a model file, atomically.

    Raises
    ------
    ValueError
        The training summary is beyond the format's limits.
    """
    if config.uniform:
        stack = np.stack([b.vectors for b in books])
    else:  # stages of different sizes: their rows one after the other
        stack = np.concatenate([b.vectors for b in books])
    write_file(path, [(TENSOR, stack)], _metadata(config, stack.dtype, training, encoding))
