"""Evaluation of an encoder on a data set: rate-distortion and code usage.

For each number of decoded stages m = 1..M (progressive decoding of the same
codes), over all N vectors x and their reconstructions x':

- ``mse``: mean squared error per component, ``sum ||x - x'||^2 / (N D)``;
- ``relative_error``: ``sum ||x - x'||^2 / sum ||x||^2`` (normalized MSE);
- ``snr_db``: ``10 log10(sum ||x||^2 / sum ||x - x'||^2)``;
- ``bits``: bits per vector, ``m log2 K``.

Per stage: ``utilization`` (share of the K codes used at least once) and
``perplexity`` (``exp`` of the entropy of the code frequencies: K for a
uniform use, 1 when one code takes everything). Over full token sequences:
the number of distinct glyphs and how many vectors share their glyph with
another vector.

Everything is accumulated block by block, so a memory-mapped or streamed
input is never loaded whole; only the distinct glyphs are kept (8 bytes or so
each).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._validate import as_matrix, require_finite
from viva_glyph.encoder import RvqEncoder
from viva_glyph.glyph import codes_to_glyph_ids

__all__ = ["EvalReport", "StageRow", "evaluate", "progress_bar"]

BLOCK_ROWS = 1 << 16
_MERGE_AT = 1 << 20  # pending glyph keys before a merge into the distinct set
_WORK_BYTES = 4 << 20  # size of the float64 temporaries of one error sub-block


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


class _GlyphCounter:
    """Distinct full token sequences and their counts, merged block by block.

    Keys are uint64 glyph ids when ``K**M`` fits (fast sorting), else the raw
    code bytes of each row.
    """

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.k = sizes
        self.as_ids = math.prod(sizes) <= 1 << 64
        self.keys: NDArray[Any] | None = None
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[NDArray[Any]] = []
        self._size = 0

    def add(self, codes: NDArray[Any]) -> None:
        keys: NDArray[Any]
        if self.as_ids:
            keys = codes_to_glyph_ids(codes, list(self.k))
        else:
            rows = np.ascontiguousarray(codes)
            keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        self._pending.append(keys)
        self._size += keys.size
        if self._size >= _MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys, counts = np.unique(np.concatenate(self._pending), return_counts=True)
        self._pending, self._size = [], 0
        if self.keys is not None:
            keys = np.concatenate([self.keys, keys])
            counts = np.concatenate([self.counts, counts])
            order = np.argsort(keys, kind="stable")
            keys, counts = keys[order], counts[order]
            first = np.ones(keys.size, dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            starts = np.flatnonzero(first)
            keys, counts = keys[starts], np.add.reduceat(counts, starts)
        self.keys, self.counts = keys, counts.astype(np.int64)

    def result(self) -> tuple[int, int]:
        """(distinct glyphs, vectors sharing their glyph)."""
        self._merge()
        return int(self.counts.size), int(self.counts[self.counts > 1].sum())


def _blocks(vectors: Any, rows: int) -> Iterator[tuple[int, NDArray[Any]]]:
    blocks = getattr(vectors, "blocks", None)
    if callable(blocks):  # a viva_glyph.data.VectorFile
        yield from blocks(rows)
        return
    x = as_matrix(vectors, None, "X")
    for start in range(0, x.shape[0], rows):
        yield start, x[start : start + rows]


def evaluate(
    encoder: RvqEncoder,
    vectors: Any,
    *,
    beam_size: int = 1,
    block_rows: int = BLOCK_ROWS,
    progress: bool = False,
    name: str = "X",
) -> EvalReport:
    """Encode ``vectors`` block by block and measure the reconstructions.

    Parameters
    ----------
    encoder : RvqEncoder
    vectors : array_like, shape (N, D), or viva_glyph.data.VectorFile
        Memory maps and vector files are read one block at a time.
    beam_size : int
        Passed to :meth:`RvqEncoder.encode`.
    block_rows : int
        Rows per block.
    progress : bool
        Show a tqdm progress bar on stderr.
    name : str
        What error messages call the input (e.g. its file name).

    Returns
    -------
    EvalReport

    Raises
    ------
    ValueError
        For a wrong dimension or a row holding NaN or inf (named by its row number).
    """
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    c = encoder.config
    total = int(np.shape(vectors)[0]) if hasattr(vectors, "shape") else None
    err = np.zeros(c.num_stages, dtype=np.float64)
    energy = 0.0
    n = 0
    counts = np.zeros((c.num_stages, c.codebook_size), dtype=np.int64)
    glyphs = _GlyphCounter(c.stage_sizes)
    bar = progress_bar(total, progress, "evaluate")
    try:
        for start, block in _blocks(vectors, block_rows):
            x = as_matrix(block, c.dimension, name)
            require_finite(x, start, name)
            codes = encoder.encode(x, beam_size=beam_size)
            sub = max(256, _WORK_BYTES // (8 * c.dimension))
            for a in range(0, x.shape[0], sub):  # bounded float64 temporaries
                energy += _accumulate_errors(encoder, x[a : a + sub], codes[a : a + sub], err)
            for s in range(c.num_stages):
                counts[s] += np.bincount(codes[:, s], minlength=c.codebook_size)
            glyphs.add(codes)
            n += x.shape[0]
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if n == 0:
        raise ValueError("no vectors to evaluate")
    distinct, shared = glyphs.result()
    return EvalReport(
        num_vectors=n,
        dimension=c.dimension,
        codebook_size=c.codebook_size,
        beam_size=beam_size,
        rows=tuple(
            _row(m, c.stage_sizes, err[m - 1], energy, n * c.dimension)
            for m in range(1, c.num_stages + 1)
        ),
        code_counts=counts,
        distinct_glyphs=distinct,
        shared_vectors=shared,
        codebook_sizes=c.codebook_sizes,
    )


def _accumulate_errors(
    encoder: RvqEncoder, x: NDArray[Any], codes: NDArray[Any], err: NDArray[np.float64]
) -> float:
    """Add ``sum ||x - x'||^2`` for m = 1..M into ``err``; return ``sum ||x||^2``."""
    x64 = x.astype(np.float64)
    for m in range(1, codes.shape[1] + 1):
        diff = x64 - encoder.decode(codes[:, :m])
        err[m - 1] += float(np.einsum("nd,nd->", diff, diff))
    return float(np.einsum("nd,nd->", x64, x64))


def _row(m: int, sizes: tuple[int, ...], err: float, energy: float, components: int) -> StageRow:
    rel = err / energy if energy > 0 else (0.0 if err == 0 else math.inf)
    if err == 0:
        snr = math.inf
    elif energy == 0:
        snr = -math.inf
    else:
        snr = 10 * math.log10(energy / err)
    k = sizes[0]
    bits = m * math.log2(k) if len(set(sizes)) == 1 else sum(math.log2(s) for s in sizes[:m])
    return StageRow(m, bits, err / components, rel, snr)


def progress_bar(total: int | None, show: bool, desc: str) -> Any:
    """A tqdm bar on stderr counting vectors, or None when ``show`` is false."""
    if not show:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, unit="vec", unit_scale=True, desc=desc, file=sys.stderr)


def _plot(report: EvalReport, path: str | os.PathLike[str]) -> None:
    from matplotlib.figure import Figure

    from viva_glyph.io import atomic_output

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
