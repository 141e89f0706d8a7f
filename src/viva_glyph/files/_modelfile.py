"""Model files: the writer, the format's limits and the atomic output (layer 0).

A model file is a safetensors file (readable by ``safetensors.numpy`` and
``safetensors.torch``):

- one tensor ``codebooks`` of shape (M, K, D), dtype F32 or F64; when the
  stages have different sizes K_1, ..., K_M, of shape (K_1 + ... + K_M, D)
  instead, stage 1's rows first;
- string metadata: ``format`` (``"viva-glyph-rvq"``), ``format_version``
  (``"1"``), ``config`` (JSON ``{"num_stages", "dimension", "codebook_size"}``,
  plus ``"codebook_sizes": [K_1, ..., K_M]`` when the sizes differ, and then
  ``codebook_size`` is the largest; files of equal sizes are written as before),
  ``dtype`` (``"float32"``/``"float64"``), ``library_version`` and, when the
  model was fitted, ``training`` (JSON of ``TrainingSummary.to_dict()``).

:func:`save` writes any object shaped like an encoder (:class:`SavableModel`),
so this module imports nothing from the layers above it; the reader is
:func:`viva_glyph.core.io.load`. The writer refuses what the reader would refuse
(header over :data:`MAX_HEADER_BYTES`, JSON nested deeper than
:data:`MAX_JSON_DEPTH`, non-finite values), so every file it writes loads.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from viva_glyph._version import __version__
from viva_glyph.files._atomic import atomic_output

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "TENSOR",
    "SavableModel",
    "atomic_output",
    "header_problem",
    "json_depth",
    "save",
]

FORMAT_NAME = "viva-glyph-rvq"
FORMAT_VERSION = "1"
TENSOR = "codebooks"
#: Largest JSON header accepted: 256 KiB holds a training summary of ~10,000
#: figures, and parsing any JSON of that size stays within a few MiB.
MAX_HEADER_BYTES = 1 << 18
#: Most ``[`` and ``{`` bytes in a header (a real one has a few dozen).
MAX_JSON_CONTAINERS = 10_000
#: Deepest nesting of a JSON value inside the metadata (a real one has 3).
MAX_JSON_DEPTH = 32

PathLike = str | os.PathLike[str]


class _Config(Protocol):
    @property
    def num_stages(self) -> int: ...
    @property
    def dimension(self) -> int: ...
    @property
    def codebook_size(self) -> int: ...
    @property
    def codebook_sizes(self) -> tuple[int, ...] | None: ...


class _Book(Protocol):
    @property
    def vectors(self) -> NDArray[np.floating[Any]]: ...


class _Summary(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class SavableModel(Protocol):
    """What :func:`save` needs: an :class:`~viva_glyph.core.encoder.RvqEncoder` has it."""

    @property
    def config(self) -> _Config: ...
    @property
    def codebook_array(self) -> NDArray[np.floating[Any]]: ...
    @property
    def codebooks(self) -> tuple[_Book, ...]: ...
    @property
    def training(self) -> _Summary | None: ...


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


def _metadata(model: SavableModel, stack: NDArray[np.floating[Any]]) -> dict[str, str]:
    c = model.config
    config: dict[str, Any] = {
        "num_stages": c.num_stages, "dimension": c.dimension, "codebook_size": c.codebook_size
    }  # fmt: skip
    if c.codebook_sizes is not None:
        config["codebook_sizes"] = list(c.codebook_sizes)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config),
        "dtype": str(stack.dtype),
        "library_version": __version__,
    }
    if model.training is not None:
        try:
            summary = model.training.to_dict()
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
    return meta


def _codebooks(model: object) -> NDArray[np.floating[Any]]:
    c = getattr(model, "config", None)
    sizes = getattr(c, "codebook_sizes", None)
    books = "codebook_array" if sizes is None else "codebooks"  # per-stage sizes: one per stage
    if c is None or not all(hasattr(model, a) for a in (books, "training")):
        raise TypeError(
            f"model must have .config, .{books} and .training (an RvqEncoder), "
            f"got {type(model).__name__}"
        )
    if sizes is None:
        stack = np.ascontiguousarray(model.codebook_array)  # type: ignore[attr-defined]
        expected: tuple[int, ...] = (c.num_stages, c.codebook_size, c.dimension)
        layout = "(M, K, D)"
    else:  # stages of different sizes: their rows one after the other
        stages = model.codebooks  # type: ignore[attr-defined]
        stack = np.ascontiguousarray(np.concatenate([b.vectors for b in stages]))
        expected = (sum(sizes), c.dimension)
        layout = "(K_1 + ... + K_M, D)"
    if stack.shape != expected or stack.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"codebooks must be float32 or float64 of shape {expected} {layout}, "
            f"got {stack.dtype} {stack.shape}"
        )
    if not np.isfinite(stack).all():
        raise ValueError("codebook_array holds NaN or inf")
    return stack


def save(model: SavableModel, path: PathLike) -> None:
    """Write ``model`` to a safetensors model file, atomically.

    Parameters
    ----------
    model : SavableModel
        An :class:`~viva_glyph.core.encoder.RvqEncoder` or anything with its
        ``config``, ``codebook_array`` (M, K, D) float32/float64 and ``training``.
    path : str or PathLike
        Destination, conventionally ``*.safetensors``; an existing file is
        replaced only once the new one is complete on disk.

    Raises
    ------
    TypeError
        ``model`` lacks one of the three attributes.
    ValueError
        The codebooks disagree with the config or are not finite, or the
        training summary is beyond the format's limits.
    """
    stack = _codebooks(model)
    meta = _metadata(model, stack)
    from safetensors.numpy import save as st_save

    payload = st_save({TENSOR: stack}, metadata=meta)
    (n,) = struct.unpack("<Q", payload[:8])
    problem = header_problem(payload[8 : 8 + n])
    if problem is not None:
        raise ValueError(f"cannot write a model file: its {problem} (the training summary)")
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
