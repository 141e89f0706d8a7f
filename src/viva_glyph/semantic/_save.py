"""Semantic-ID files, written: the level codebooks, the trie's keys and a header of
settings, as one safetensors file (:func:`viva_glyph.files.write_file`, atomic).
:mod:`viva_glyph.semantic._file` reads them back; the model builds itself from them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._version import __version__
from viva_glyph.core import Codebook
from viva_glyph.files import write_file

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_semantic"]

FORMAT_NAME = "viva-glyph-semantic-ids"
FORMAT_VERSION = "1"

PathLike = str | os.PathLike[str]


def write_semantic(
    path: PathLike,
    codebooks: Sequence[Codebook],
    settings: dict[str, Any],
    trie_keys: NDArray[np.int64] | None,
) -> None:
    """Write a semantic-ID model's parts, atomically: tensors ``level_i`` (K_i, D) F32 and,
    when given, ``trie_keys`` (n,) I64; the settings as the JSON metadata ``semantic``."""
    tensors = [
        (f"level_{i}", np.ascontiguousarray(b.vectors, dtype=np.float32))
        for i, b in enumerate(codebooks)
    ]
    if trie_keys is not None:
        tensors.append(("trie_keys", np.ascontiguousarray(trie_keys, dtype=np.int64)))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "semantic": json.dumps(settings),
    }
    write_file(path, tensors, meta)
