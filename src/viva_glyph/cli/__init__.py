"""The ``viva-glyph`` command line (``python -m viva_glyph`` is the same program)."""

from __future__ import annotations

from viva_glyph.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
