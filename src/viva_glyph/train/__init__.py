"""Training: :func:`fit` (stage-wise residual k-means, beam-aware, with refinement),
the k-means it runs (:mod:`viva_glyph.train.kmeans`) and the executors that run it
in memory or on a cluster.
"""

from __future__ import annotations

from viva_glyph.train import kmeans
from viva_glyph.train._fit import fit

__all__ = ["fit", "kmeans"]
