"""The engine: configuration, codebooks, glyph ids, nearest-code search, the residual
loop and the encoder, and the model file of an encoder.

Everything here needs numpy only. Above it, :mod:`viva_glyph.train` fits codebooks;
below it, :mod:`viva_glyph.files` reads and writes files.
"""

from __future__ import annotations

from viva_glyph.core import codebook, glyph
from viva_glyph.core.codebook import Codebook, codebooks_of_stages
from viva_glyph.core.config import EncodeSettings, RvqConfig, default_config, stage_sizes
from viva_glyph.core.encoder import RvqEncoder, load, save
from viva_glyph.core.io import ModelFormatError, read_metadata
from viva_glyph.core.summary import TrainingSummary

__all__ = [
    "Codebook",
    "EncodeSettings",
    "ModelFormatError",
    "RvqConfig",
    "RvqEncoder",
    "TrainingSummary",
    "codebook",
    "codebooks_of_stages",
    "default_config",
    "glyph",
    "load",
    "read_metadata",
    "save",
    "stage_sizes",
]
