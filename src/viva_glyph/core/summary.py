"""The record of a fit: :class:`TrainingSummary` (what ``viva_glyph.fit`` saw and did).

"MSE" here, as everywhere in viva-glyph (and in scikit-learn and FAISS), is
the mean squared error per component: ``mean over vectors and dimensions of
(x - x')**2``, i.e. ``mean ||x - x'||^2 / D``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["TrainingSummary"]


@dataclass(frozen=True)
class TrainingSummary:
    """What :func:`viva_glyph.fit` recorded.

    Attributes
    ----------
    stage_mse : tuple of float
        Training MSE per component (``mean ||x - x'||^2 / D``) after each stage.
    iterations : tuple of int
        k-means iterations run for each stage.
    seconds : float
        Wall time of the whole fit.
    params : dict
        The fit's parameters (JSON types); ``params["dimension"]`` is D.
    refine_mse : tuple of float
        Held-out MSE per component of the stage-wise codebooks (first) and of
        each refinement iterate; empty without refinement.
    refine_selected : int
        Index into ``refine_mse`` of the iterate kept (0: no refinement step).
    rounds_mse : tuple of float
        Held-out MSE per component of the stage-wise codebooks (first) and after
        each block-coordinate round tried (a preset's); empty without rounds.
    rounds_kept : int
        Rounds kept (the codebooks after that many rounds are the model's).
    """

    stage_mse: tuple[float, ...]
    iterations: tuple[int, ...]
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    refine_mse: tuple[float, ...] = ()
    refine_selected: int = 0
    rounds_mse: tuple[float, ...] = ()
    rounds_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (lists for tuples)."""
        d = asdict(self)
        d["stage_mse"] = list(self.stage_mse)
        d["iterations"] = list(self.iterations)
        d["refine_mse"] = list(self.refine_mse)
        d["rounds_mse"] = list(self.rounds_mse)
        return d

    @classmethod
    def from_dict(cls, d: object) -> TrainingSummary:
        """Inverse of :meth:`to_dict`; raises ValueError on malformed input.

        Summaries written before version 0.2 hold ``stage_errors`` and
        ``refine_errors``: mean squared errors per *vector* (``||x - x'||^2``).
        They are read and divided by ``params["dimension"]``.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a training summary must be a dict, got {type(d).__name__}")
        try:
            params = d.get("params", {})
            if not isinstance(params, dict):
                raise TypeError("params must be a dict")
            if "stage_mse" in d:
                scale = 1.0
                stage, refine = d["stage_mse"], d.get("refine_mse", ())
            else:  # per-vector figures of older files
                scale = float(_as_int(params["dimension"]))
                if scale < 1:
                    raise ValueError(f"params.dimension must be >= 1, got {scale:g}")
                stage, refine = d["stage_errors"], d.get("refine_errors", ())
            return cls(
                stage_mse=tuple(float(v) / scale for v in stage),
                iterations=tuple(_as_int(v) for v in d["iterations"]),
                seconds=float(d["seconds"]),
                params=dict(params),
                refine_mse=tuple(float(v) / scale for v in refine),
                refine_selected=_as_int(d.get("refine_selected", 0)),
                rounds_mse=tuple(float(v) for v in d.get("rounds_mse", ())),
                rounds_kept=_as_int(d.get("rounds_kept", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed training summary {_short(d)}: {exc!r}") from exc


def _short(d: object) -> str:
    text = repr(d)
    return text if len(text) <= 200 else text[:200] + "..."


def _as_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"expected an int, got {v!r}")
    return int(v)
