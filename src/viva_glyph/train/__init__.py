"""Training: :func:`fit` (stage-wise residual k-means, beam-aware, with refinement)
and its parameters (:class:`FitParams`), the k-means it runs
(:mod:`viva_glyph.train.kmeans`), the stage loop (:mod:`viva_glyph.train.stages`)
and the executors that run it in memory or on a cluster (:mod:`viva_glyph.train.rows`).

Every fit path checks its parameters once, as a :class:`FitParams`; a fit whose
sample is in memory trains it with :func:`train_sample`.
"""

from __future__ import annotations

from viva_glyph.train import kmeans, rows, stages
from viva_glyph.train._fit import fit, train_rows, train_sample
from viva_glyph.train._params import ITERATIONS, PRESETS, SAMPLES_PER_CODE, FitParams, Preset

__all__ = [
    "ITERATIONS",
    "PRESETS",
    "SAMPLES_PER_CODE",
    "FitParams",
    "Preset",
    "fit",
    "kmeans",
    "rows",
    "stages",
    "train_rows",
    "train_sample",
]
