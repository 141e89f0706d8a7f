"""viva-glyph: residual vector quantization of vectors into coarse-to-fine glyphs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from viva_glyph import rvq
from viva_glyph._version import __version__
from viva_glyph.core import codebook, glyph
from viva_glyph.core.codebook import Codebook
from viva_glyph.rvq import (
    RvqConfig,
    RvqEncoder,
    RvqTokens,
    decode,
    default_config,
    encode,
    from_codebooks,
    new,
    reconstruct,
    reconstruction_error,
    total_vocabulary,
)

# Parts with optional dependencies or heavier imports load on first use.
_LAZY = {
    "fit": "viva_glyph.train",
    "TrainingSummary": "viva_glyph.core",
    "load": "viva_glyph.core",
    "save": "viva_glyph.core",
    "ModelFormatError": "viva_glyph.core",
}

if TYPE_CHECKING:
    from viva_glyph.core import ModelFormatError, TrainingSummary, load, save
    from viva_glyph.train import fit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'viva_glyph' has no attribute {name!r}")


__all__ = [
    "Codebook",
    "ModelFormatError",
    "RvqConfig",
    "RvqEncoder",
    "RvqTokens",
    "TrainingSummary",
    "__version__",
    "codebook",
    "decode",
    "default_config",
    "encode",
    "fit",
    "from_codebooks",
    "glyph",
    "load",
    "new",
    "reconstruct",
    "reconstruction_error",
    "rvq",
    "save",
    "total_vocabulary",
]
