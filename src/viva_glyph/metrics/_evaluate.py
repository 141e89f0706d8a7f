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

import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import as_matrix, optional_import, require_finite
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.glyph import codes_to_glyph_ids
from viva_glyph.metrics._report import EvalReport, StageRow

__all__ = ["EvalReport", "StageRow", "evaluate", "progress_bar"]

BLOCK_ROWS = 1 << 16
_MERGE_AT = 1 << 20  # pending glyph keys before a merge into the distinct set
_WORK_BYTES = 4 << 20  # size of the float64 temporaries of one error sub-block


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
    if callable(blocks):  # a viva_glyph.files.VectorFile
        yield from blocks(rows)
        return
    x = as_matrix(vectors, None, "X")
    for start in range(0, x.shape[0], rows):
        yield start, x[start : start + rows]


def evaluate(
    encoder: RvqEncoder,
    vectors: Any,
    *,
    beam_size: int | None = None,
    block_rows: int = BLOCK_ROWS,
    progress: bool = False,
    name: str = "X",
) -> EvalReport:
    """Encode ``vectors`` block by block and measure the reconstructions.

    Parameters
    ----------
    encoder : RvqEncoder
    vectors : array_like, shape (N, D), or viva_glyph.files.VectorFile
        Memory maps and vector files are read one block at a time.
    beam_size : int, optional
        Passed to :meth:`RvqEncoder.encode` (default: the model's encoding).
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
    beam_size = encoder.encoding.beam_size if beam_size is None else beam_size
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
    tqdm = optional_import("tqdm", "a progress bar").tqdm
    return tqdm(total=total, unit="vec", unit_scale=True, desc=desc, file=sys.stderr)
