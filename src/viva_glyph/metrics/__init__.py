"""Evaluation of an encoder on data: rate-distortion per stage, code usage, glyph
collisions, as tables, JSON and a plot."""

from __future__ import annotations

from viva_glyph.metrics._evaluate import evaluate, progress_bar
from viva_glyph.metrics._report import EvalReport, StageRow

__all__ = ["EvalReport", "StageRow", "evaluate", "progress_bar"]
