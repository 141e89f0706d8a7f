"""Block-coordinate rounds: each stage's codebook refitted with every other stage fixed.

After the stage-wise fit, stage m's codebook was fitted to what the stages before
it left, before the later stages existed. A round encodes the training rows at
the beam the model will encode with, then, stage after stage, sets every entry of
stage m to the mean of ``x - (the other stages' entries)`` over the rows that chose
it (the entries of earlier stages already updated; an unused entry keeps its
value). Each update is the least-squares codebook of one stage for fixed codes, so
the codes' training error never rises within a round, and the coarse-to-fine
order that beam encoding relies on stays (the joint least squares of all
codebooks at once loses it). A round is kept only if it lowers the error of
held-out rows, encoded at the same beam; the first round that does not ends them
(ERVQ, Ai et al. 2015, with held-out selection).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core import Codebook, RvqConfig
from viva_glyph.core.beam import EncoderTables, check_beam_size, use_lut
from viva_glyph.core.search import encode
from viva_glyph.train.kmeans import accumulate

__all__ = ["beam_codes", "sq_error", "stage_rounds"]

_log = logging.getLogger("viva_glyph.train")

#: Rows of one block of the rounds' passes over the training rows.
BLOCK_ROWS = 1 << 14


def beam_codes(books: Sequence[Codebook], x: NDArray[Any], beam: int) -> NDArray[np.intp]:
    """Codes of the (checked) training rows x with ``books`` at ``beam``: the encoder's
    residual loop, without its input checks."""
    config = RvqConfig(len(books), x.shape[1], books[0].size)
    beam = check_beam_size(config, beam, len(books), books[0].dtype)
    lut = use_lut(config, beam, books[0].dtype.itemsize)
    return encode(books, x, beam, lut=lut, tables=EncoderTables(books) if lut else None)


def sq_error(books: Sequence[Codebook], x: NDArray[Any], codes: NDArray[Any]) -> float:
    """Mean squared error per component of ``x`` coded as ``codes`` (float64 sums)."""
    total = 0.0
    for a in range(0, x.shape[0], BLOCK_ROWS):
        diff = np.array(x[a : a + BLOCK_ROWS], dtype=np.float64)
        for m, book in enumerate(books):
            diff -= book.vectors64[codes[a : a + BLOCK_ROWS, m]]
        total += float(np.einsum("nd,nd->", diff, diff))
    return total / float(x.shape[0] * x.shape[1])


def _round(books: list[Codebook], x: NDArray[np.float32], beam: int) -> list[Codebook]:
    """One block-coordinate round on the training rows x: the new codebooks."""
    codes = beam_codes(books, x, beam)
    n = x.shape[0]
    recon = np.zeros(x.shape, dtype=np.float32)  # the codes' reconstruction, kept current
    for m, book in enumerate(books):
        recon += book.vectors[codes[:, m]]
    out = list(books)
    for m, book in enumerate(books):
        k = book.size
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)
        for a in range(0, n, BLOCK_ROWS):
            c = codes[a : a + BLOCK_ROWS, m]
            target = np.array(x[a : a + BLOCK_ROWS], dtype=np.float64)
            target -= recon[a : a + BLOCK_ROWS]
            target += book.vectors64[c]  # x minus the other stages' entries
            part, cnt, _ = accumulate(target, c, k)
            sums += part
            counts += cnt
        new = book.vectors64.copy()
        used = counts > 0
        new[used] = sums[used] / counts[used, None]
        out[m] = Codebook(new, dtype=book.dtype)
        for a in range(0, n, BLOCK_ROWS):  # the later stages see the updated entries
            c = codes[a : a + BLOCK_ROWS, m]
            recon[a : a + BLOCK_ROWS] += out[m].vectors[c] - book.vectors[c]
    return out


def stage_rounds(
    books: list[Codebook],
    x: NDArray[np.float32],
    held: NDArray[np.float32],
    beam: int,
    rounds: int,
    bar: Any = None,
) -> tuple[list[Codebook], list[float], int]:
    """Up to ``rounds`` block-coordinate rounds, each kept only if the held-out rows'
    error at ``beam`` falls.

    Parameters
    ----------
    books : list of Codebook
        The stage-wise codebooks, fitted on x.
    x : ndarray, shape (n, D), float32
        The training rows.
    held : ndarray, shape (h, D), float32
        Rows the codebooks never saw.
    beam : int
        Beam of the rounds' encodings and of the held-out check.
    rounds : int
    bar : tqdm bar or None

    Returns
    -------
    books : list of Codebook
        The last codebooks kept.
    held_mse : list of float
        Held-out MSE per component of the stage-wise codebooks and of each round tried.
    kept : int
        Rounds kept.
    """
    errors = [sq_error(books, held, beam_codes(books, held, beam))]
    kept = 0
    for r in range(1, rounds + 1):
        candidate = _round(books, x, beam)
        errors.append(sq_error(candidate, held, beam_codes(candidate, held, beam)))
        _log.info("round %d/%d: held-out MSE %.6g (before %.6g)", r, rounds, errors[-1], errors[-2])
        if bar is not None:
            bar.update(1)
        if not errors[-1] < errors[kept]:
            break
        books, kept = candidate, r
    if bar is not None:
        bar.update(rounds - (len(errors) - 1))  # the rounds not tried
    return books, errors, kept
