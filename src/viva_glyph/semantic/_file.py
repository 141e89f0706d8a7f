"""Semantic-ID model files: safetensors, written atomically, read with checks.

Layout: tensors ``level_0`` .. ``level_{L-1}`` (K_l, D) F32, optionally
``trie_keys`` (U,) I64 (the sorted assigned IDs, see
:class:`~viva_glyph.semantic.PrefixTrie`); string metadata ``format``
(``"viva-glyph-semantic-ids"``), ``format_version`` (``"1"``),
``library_version`` and ``semantic`` (JSON: levels, codebook_sizes, dimension,
metric, balance, beam_size, suffix_size, training). The header is checked
(length, JSON, tensor names, dtypes, shapes against the metadata, offsets
against the file size) before any tensor is read, so a malformed file raises
:class:`viva_glyph.io.ModelFormatError` without a large allocation.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from typing import Any

import numpy as np

from viva_glyph.codebook import Codebook
from viva_glyph.io import MAX_HEADER_BYTES, ModelFormatError, atomic_output
from viva_glyph.semantic._model import METRICS, SemanticIds, check_balance
from viva_glyph.semantic._tokens import PrefixTrie

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load", "save"]

FORMAT_NAME = "viva-glyph-semantic-ids"
FORMAT_VERSION = "1"
_DTYPES = {"F32": (np.dtype(np.float32), 4), "I64": (np.dtype(np.int64), 8)}
PathLike = str | os.PathLike[str]


def _config(ids: SemanticIds) -> dict[str, Any]:
    return {
        "levels": ids.levels,
        "codebook_sizes": list(ids.codebook_sizes),
        "dimension": ids.dimension,
        "metric": ids.metric,
        "balance": ids.balance,
        "beam_size": ids.beam_size,
        "suffix_size": ids.suffix_size,
        "training": ids.training,
    }


def save(ids: SemanticIds, path: PathLike) -> None:
    """Write ``ids`` (codebooks, settings, trie) to ``path`` atomically."""
    from safetensors.numpy import save as st_save

    from viva_glyph._version import __version__

    tensors = {
        f"level_{i}": np.ascontiguousarray(b.vectors, dtype=np.float32)
        for i, b in enumerate(ids.codebooks)
    }
    if ids.trie is not None:
        if ids.trie.radices != ids.radices:
            raise ValueError(
                f"the trie's radices {ids.trie.radices} are not the model's {ids.radices}"
            )
        tensors["trie_keys"] = np.ascontiguousarray(ids.trie.keys, dtype=np.int64)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "semantic": json.dumps(_config(ids)),
    }
    payload = st_save(tensors, metadata=meta)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)


def _fail(path: PathLike, why: str) -> ModelFormatError:
    return ModelFormatError(f"{os.fspath(path)} is not a valid viva-glyph semantic-ID file: {why}")


def _header(data: bytes, path: PathLike) -> tuple[dict[str, Any], dict[str, str], int]:
    if len(data) < 8:
        raise _fail(path, f"file is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise _fail(path, f"header length {n} is outside the file or [2, {MAX_HEADER_BYTES}]")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(path, "metadata missing or not a map of strings")
    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.get('format_version')!r} is not supported")
    return header, meta, 8 + n


def _int(value: object, name: str, path: PathLike) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, f"{name} {value!r} is not a positive int")
    return value


def _settings(meta: dict[str, str], path: PathLike) -> dict[str, Any]:
    try:
        cfg = json.loads(meta.get("semantic", ""))
    except (ValueError, RecursionError):
        raise _fail(path, "'semantic' metadata is not JSON") from None
    if not isinstance(cfg, dict):
        raise _fail(path, "'semantic' metadata is not a JSON object")
    levels = _int(cfg.get("levels"), "levels", path)
    sizes = cfg.get("codebook_sizes")
    if not isinstance(sizes, list) or len(sizes) != levels or levels > 26:
        raise _fail(path, f"codebook_sizes {sizes!r} does not list {levels} sizes")
    cfg["codebook_sizes"] = [_int(k, "codebook size", path) for k in sizes]
    _int(cfg.get("dimension"), "dimension", path)
    _int(cfg.get("beam_size"), "beam_size", path)
    _int(cfg.get("suffix_size"), "suffix_size", path)
    if cfg.get("metric") not in METRICS:
        raise _fail(path, f"metric {cfg.get('metric')!r} is not one of {METRICS}")
    try:
        check_balance(cfg.get("balance"))
    except (TypeError, ValueError) as exc:
        raise _fail(path, str(exc)) from None
    if not isinstance(cfg.get("training", {}), dict):
        raise _fail(path, "training is not a JSON object")
    return cfg


def _check_tensors(header: dict[str, Any], cfg: dict[str, Any], size: int, path: PathLike) -> None:
    expect: dict[str, tuple[str, list[int] | None]] = {
        f"level_{i}": ("F32", [k, cfg["dimension"]]) for i, k in enumerate(cfg["codebook_sizes"])
    }
    names = set(header)
    if "trie_keys" in names:
        expect["trie_keys"] = ("I64", None)
    if names != set(expect):
        raise _fail(path, f"tensors {sorted(names)[:6]} are not {sorted(expect)[:6]}")
    spans = []
    for name, (dtype, shape) in expect.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype:
            raise _fail(path, f"tensor {name} is not {dtype}")
        got = entry.get("shape")
        if not isinstance(got, list) or not all(isinstance(v, int) and v >= 0 for v in got):
            raise _fail(path, f"tensor {name} has no valid shape")
        if shape is not None and got != shape:
            raise _fail(path, f"tensor {name} has shape {got}, expected {shape}")
        if shape is None and len(got) != 1:
            raise _fail(path, f"tensor {name} must be 1-D, got shape {got}")
        offsets = entry.get("data_offsets")
        nbytes = math.prod(got) * _DTYPES[dtype][1]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(v, int) for v in offsets)
            or offsets[1] - offsets[0] != nbytes
            or offsets[0] < 0
            or offsets[1] > size
        ):
            raise _fail(path, f"tensor {name} has data offsets {offsets!r} outside the data")
        spans.append(tuple(offsets))
    spans.sort()
    if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
        raise _fail(path, "tensor data overlap")


def load(path: PathLike) -> SemanticIds:
    """Read a model written by :meth:`SemanticIds.save`.

    Raises
    ------
    ModelFormatError (a ValueError)
        For anything malformed, truncated, of another format or version.
    OSError
        When the file cannot be read.
    """
    if os.stat(path).st_size > (1 << 40):
        raise _fail(path, "file is too large")
    with open(path, "rb") as fh:
        data = fh.read()
    header, meta, start = _header(data, path)
    cfg = _settings(meta, path)
    _check_tensors(header, cfg, len(data) - start, path)
    from safetensors.numpy import load as st_load

    try:
        tensors = st_load(data)
    except Exception as exc:
        raise _fail(path, f"safetensors could not read it ({exc})") from None
    try:
        books = [Codebook(tensors[f"level_{i}"], dtype=np.float32) for i in range(cfg["levels"])]
        ids = SemanticIds(
            books,
            metric=cfg["metric"],
            balance=cfg["balance"],
            beam_size=cfg["beam_size"],
            suffix_size=cfg["suffix_size"],
            training=cfg.get("training", {}),
        )
        if "trie_keys" in tensors:
            ids.trie = PrefixTrie.from_keys(tensors["trie_keys"], ids.radices)
    except (TypeError, ValueError) as exc:
        raise _fail(path, str(exc)) from None
    return ids
