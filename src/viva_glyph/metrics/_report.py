"""What :func:`viva_glyph.metrics.evaluate` returns, and how it is shown.

:class:`StageRow` and :class:`EvalReport` (both importable from
:mod:`viva_glyph.metrics`) hold the figures; :class:`EvalReport` turns them into a JSON-ready
dict, plain-text tables for a terminal, and a PNG of the rate-distortion curve
and the per-stage code-usage histograms (matplotlib, written atomically).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import optional_import

__all__ = ["EvalReport", "StageRow"]


@dataclass(frozen=True)
class StageRow:
    """Rate-distortion figures when the first ``stages`` stages are decoded."""

    stages: int
    bits: float
    mse: float
    relative_error: float
    snr_db: float


@dataclass(frozen=True)
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes
    ----------
    num_vectors, dimension, codebook_size, beam_size : int
    rows : tuple of StageRow
        One per m = 1..M.
    code_counts : ndarray, shape (M, K), int64
        How often each code of each stage was chosen (K the largest size).
    distinct_glyphs : int
        Number of different full token sequences among the inputs.
    shared_vectors : int
        Vectors whose full token sequence is also that of another input.
    """

    num_vectors: int
    dimension: int
    codebook_size: int
    beam_size: int
    rows: tuple[StageRow, ...]
    code_counts: NDArray[np.int64]
    distinct_glyphs: int
    shared_vectors: int
    #: Per-stage codebook sizes when they differ (the encoder's ``config.codebook_sizes``).
    codebook_sizes: tuple[int, ...] | None = None

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """The codebook size of every stage."""
        if self.codebook_sizes is None:
            return (self.codebook_size,) * len(self.code_counts)
        return self.codebook_sizes

    @property
    def utilization(self) -> tuple[float, ...]:
        """Per stage, share of its K_s codes used at least once."""
        sizes = self.stage_sizes
        return tuple(
            float((c[:k] > 0).mean()) for c, k in zip(self.code_counts, sizes, strict=True)
        )

    @property
    def perplexity(self) -> tuple[float, ...]:
        """Per stage, ``exp(H)`` of the code frequencies (natural log)."""
        out = []
        for counts in self.code_counts:
            p = counts[counts > 0] / counts.sum()
            out.append(float(np.exp(-(p * np.log(p)).sum())))
        return tuple(out)

    @property
    def distinct_share(self) -> float:
        """``distinct_glyphs / num_vectors``: 1.0 when every vector has its own glyph."""
        return self.distinct_glyphs / self.num_vectors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite SNR becomes ``None``)."""

        def finite(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "num_vectors": self.num_vectors,
            "dimension": self.dimension,
            "codebook_size": self.codebook_size
            if self.codebook_sizes is None
            else list(self.codebook_sizes),
            "beam_size": self.beam_size,
            "stages": [
                {
                    "stages": r.stages,
                    "bits": r.bits,
                    "mse": r.mse,
                    "relative_error": finite(r.relative_error),
                    "snr_db": finite(r.snr_db),
                }
                for r in self.rows
            ],
            "per_stage": [
                {"stage": i + 1, "utilization": u, "perplexity": p, "codes_used": int(used)}
                for i, (u, p, used) in enumerate(
                    zip(
                        self.utilization,
                        self.perplexity,
                        (self.code_counts > 0).sum(axis=1),
                        strict=True,
                    )
                )
            ],
            "distinct_glyphs": self.distinct_glyphs,
            "distinct_share": self.distinct_share,
            "shared_vectors": self.shared_vectors,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """Plain-text tables for a terminal."""
        lines = [
            f"{self.num_vectors} vectors of dimension {self.dimension}, "
            f"K = {self.codebook_size if self.codebook_sizes is None else self.codebook_sizes}, "
            f"beam {self.beam_size}",
            "",
            f"{'stages':>6} {'bits':>7} {'MSE':>12} {'rel. error':>11} {'SNR dB':>8}",
        ]
        for r in self.rows:
            lines.append(
                f"{r.stages:>6} {r.bits:>7.1f} {r.mse:>12.4g} {r.relative_error:>11.4g} "
                f"{r.snr_db:>8.2f}"
            )
        lines += ["", f"{'stage':>6} {'codes used':>11} {'utilization':>12} {'perplexity':>11}"]
        used = (self.code_counts > 0).sum(axis=1)
        for i, (u, p) in enumerate(zip(self.utilization, self.perplexity, strict=True)):
            lines.append(
                f"{i + 1:>6} {int(used[i]):>5}/{self.stage_sizes[i]:<5} {u:>12.1%} {p:>11.1f}"
            )
        lines += [
            "",
            f"distinct glyphs: {self.distinct_glyphs} of {self.num_vectors} vectors "
            f"({self.distinct_share:.1%}); {self.shared_vectors} vectors share their glyph",
        ]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write a PNG: rate-distortion curve and per-stage code-usage histograms.

        Needs matplotlib (the ``cli`` extra); the file is written atomically.
        """
        _plot(self, path)


def _plot(report: EvalReport, path: str | os.PathLike[str]) -> None:
    Figure = optional_import("matplotlib.figure", "report.plot()").Figure

    from viva_glyph.files import atomic_output

    m = len(report.rows)
    cols = min(m, 4)
    hist_rows = math.ceil(m / cols)
    fig = Figure(figsize=(4 * cols if cols > 2 else 9, 3.6 + 2.6 * hist_rows), layout="constrained")
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[1.4] + [1] * hist_rows)
    ax = fig.add_subplot(grid[0, :])
    bits = [r.bits for r in report.rows]
    rel = [r.relative_error for r in report.rows]
    ax.plot(bits, rel, "o-", color="tab:blue")
    for r in report.rows:
        ax.annotate(
            f"m={r.stages}\n{r.snr_db:.1f} dB",
            (r.bits, r.relative_error),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    if all(v > 0 for v in rel):
        ax.set_yscale("log")
    ax.set_xlabel("bits per vector (stages x log2 K)")
    ax.set_ylabel("relative error ||x - x'||^2 / ||x||^2")
    ax.set_title(
        f"Rate-distortion: {report.num_vectors} vectors, D = {report.dimension}, "
        f"K = {report.codebook_size}"
    )
    ax.grid(True, which="both", alpha=0.3)
    for s, counts in enumerate(report.code_counts):
        k = report.stage_sizes[s]
        counts = counts[:k]
        hax = fig.add_subplot(grid[1 + s // cols, s % cols])
        if k > 512:  # group codes into 512 bins so the bars stay visible
            edges = np.linspace(0, k, 513).astype(np.int64)
            values = np.add.reduceat(counts, edges[:-1])
            hax.bar(edges[:-1], values, width=np.diff(edges), align="edge", color="tab:orange")
        else:
            hax.bar(np.arange(k), counts, width=1.0, color="tab:orange")
        hax.set_xlim(0, k)
        hax.set_title(
            f"stage {s + 1}: {report.utilization[s]:.0%} used, "
            f"perplexity {report.perplexity[s]:.0f}",
            fontsize=9,
        )
        hax.set_xlabel("code index", fontsize=8)
        if s % cols == 0:
            hax.set_ylabel("vectors", fontsize=8)
        hax.tick_params(labelsize=7)
    with atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
