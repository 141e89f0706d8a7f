"""Semantic-ID model files: safetensors, written atomically, read with checks.

Layout: tensors ``level_0`` .. ``level_{L-1}`` (K_l, D) F32, optionally
``trie_keys`` (U,) I64 (the sorted assigned IDs, see
:class:`~viva_glyph.semantic.PrefixTrie`); string metadata ``format``
(``"viva-glyph-semantic-ids"``), ``format_version`` (``"1"``),
``library_version`` and ``semantic`` (JSON: levels, codebook_sizes, dimension,
metric, balance, beam_size, suffix_size, normalize_residuals, residual_scales,
training; files without the two normalisation keys load as not normalised).
:func:`load` reads it
with :mod:`viva_glyph.files._safetensors`: anything but a regular file is refused
without blocking, and the header (length, JSON, tensor names, dtypes, shapes
against the metadata, offsets against the file size) is checked before any
tensor is read, so a malformed file raises
:class:`viva_glyph.core.io.ModelFormatError` without a large allocation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from viva_glyph.core import ModelFormatError
from viva_glyph.core.codebook import Codebook
from viva_glyph.files import Expect, FileKind, open_file
from viva_glyph.semantic._checks import MAX_LEVELS
from viva_glyph.semantic._model import METRICS, SemanticIds, check_balance
from viva_glyph.semantic._save import FORMAT_NAME, FORMAT_VERSION
from viva_glyph.semantic._tokens import PrefixTrie

__all__ = ["load"]
PathLike = str | os.PathLike[str]


_KIND = FileKind(FORMAT_NAME, FORMAT_VERSION, "semantic-ID file", ModelFormatError)


def _fail(path: PathLike, why: str) -> ValueError:
    return _KIND.fail(path, why)


#: Settings every file holds (``normalize_residuals``, ``residual_scales`` and ``training``
#: may be missing: files written before them load as not normalised, with no training record).
REQUIRED = (
    "levels",
    "codebook_sizes",
    "dimension",
    "metric",
    "balance",
    "beam_size",
    "suffix_size",
)


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
    missing = [name for name in REQUIRED if name not in cfg]
    if missing:
        raise _fail(path, f"'semantic' metadata lacks the field {missing[0]!r}")
    levels = _int(cfg.get("levels"), "levels", path)
    sizes = cfg.get("codebook_sizes")
    if not isinstance(sizes, list) or len(sizes) != levels or levels > MAX_LEVELS:
        raise _fail(path, f"codebook_sizes {sizes!r} does not list {levels} sizes")
    cfg["codebook_sizes"] = [_int(k, "codebook size", path) for k in sizes]
    _int(cfg.get("dimension"), "dimension", path)
    _int(cfg.get("beam_size"), "beam_size", path)
    _int(cfg.get("suffix_size"), "suffix_size", path)
    if cfg.get("metric") not in METRICS:
        raise _fail(path, f"metric {cfg.get('metric')!r} is not one of {METRICS}")
    try:
        check_balance(cfg["balance"])
    except (TypeError, ValueError) as exc:
        raise _fail(path, str(exc)) from None
    if not isinstance(cfg.setdefault("normalize_residuals", False), bool):
        raise _fail(path, "normalize_residuals is not a JSON bool")
    scales = cfg.setdefault("residual_scales", None)
    if scales is not None and (
        not isinstance(scales, list)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales)
    ):
        raise _fail(path, f"residual_scales {scales!r} is not a list of numbers")
    if scales is not None and not cfg["normalize_residuals"]:
        raise _fail(path, "residual_scales are given, but normalize_residuals is false")
    if not isinstance(cfg.get("training", {}), dict):
        raise _fail(path, "training is not a JSON object")
    return cfg


def _expected(names: frozenset[str], cfg: dict[str, Any]) -> dict[str, Expect]:
    """The tensors the settings call for: ``level_i`` (K_i, D) F32, optional 1-D I64 trie."""
    expect: dict[str, Expect] = {
        f"level_{i}": ({"F32"}, (k, cfg["dimension"])) for i, k in enumerate(cfg["codebook_sizes"])
    }
    if "trie_keys" in names:
        expect["trie_keys"] = ({"I64"}, 1)
    return expect


def load(path: PathLike) -> SemanticIds:
    """Read a model written by :meth:`SemanticIds.save`.

    Raises
    ------
    ModelFormatError (a ValueError)
        For anything malformed, truncated, of another format or version.
    OSError
        When the file cannot be read.
    """
    with open_file(path, _KIND) as fh:
        cfg = _settings(fh.metadata, path)
        tensors = {name: fh.read(t) for name, t in fh.tensors(_expected(fh.names, cfg)).items()}
    try:
        books = [Codebook(tensors[f"level_{i}"], dtype=np.float32) for i in range(cfg["levels"])]
        ids = SemanticIds(
            books,
            metric=cfg["metric"],
            balance=cfg["balance"],
            beam_size=cfg["beam_size"],
            suffix_size=cfg["suffix_size"],
            normalize_residuals=cfg["normalize_residuals"],
            residual_scales=cfg["residual_scales"],
            training=cfg.get("training", {}),
        )
        if "trie_keys" in tensors:
            ids.trie = PrefixTrie.from_keys(tensors["trie_keys"], ids.radices)
    except (TypeError, ValueError) as exc:
        raise _fail(path, str(exc)) from None
    return ids
