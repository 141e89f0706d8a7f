"""Stage-wise residual k-means: one training loop for every executor.

:func:`run_stages` trains the M codebooks one after the other; stage m's
codebook is the progressive k-means (:func:`viva_glyph.train.kmeans.progressive_kmeans`)
of what the (beam) encoding with stages 1..m-1 leaves over. With B > 1 and
the table path (:func:`viva_glyph.core.search.use_lut`) each stage trains on a
uniform sample of the residuals of all B beams of every row, as FAISS's
ResidualQuantizer does; else on the best beam's residual. With B > 1 every
stage's k-means is seeded by random rows, as FAISS's (k-means++, used at
B = 1, spread the seeds over outliers: ``bench_fit.py``, ``load_digits``).

The loop sees the training rows only through :class:`TrainingRows`: leaves
of :func:`viva_glyph.train.kmeans.leaf_rows` rows, each encoded by the leaf
functions below (pieces of ``leaf // B`` rows, one beam step per stage).
:class:`LocalRows` keeps every leaf's beam state in memory and advances it
by one stage at a time; ``viva_glyph.dask`` re-encodes each leaf from the
codebooks on the workers. Both run the same functions on the same leaves,
so their arithmetic is identical.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core.beam import (
    BeamState,
    beam_start,
    beam_step,
    cross_tables,
    lut_kernel,
    lut_step,
)
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.nearest import Residuals
from viva_glyph.threads import single_blas_thread
from viva_glyph.train.kmeans import leaf_rows, progressive_kmeans
from viva_glyph.train.rows import ArrayRows, Rows, add_all, map_leaves, tree_reduce

__all__ = ["LocalRows", "TrainingRows", "leaf_encode", "leaf_pairs", "leaf_residual", "run_stages"]

_log = logging.getLogger("viva_glyph.train")

#: Beam residuals per code a beam-aware stage trains on (several beams of a row
#: are different points: twice the rows' rule lowers held-out error, bench_fit.py).
BEAM_SAMPLES_PER_CODE = 512

#: One piece of a leaf: its encoding (the greedy residuals, or the beam state) and (table
#: path) its rows beside a column of ones.
Piece = tuple[Residuals | BeamState, NDArray[np.float32] | None]


def crosses(books: Sequence[Codebook]) -> list[NDArray[Any]]:
    """:func:`~viva_glyph.core.beam.cross_tables` of every stage against the stages before it."""
    with single_blas_thread():
        return [cross_tables(books[:m], books[m]) for m in range(len(books))]


def leaf_advance(
    leaf: int,
    beam: int,
    lut: bool,
    book: Codebook,
    cross: NDArray[Any] | None,
    item: tuple[NDArray[Any], list[Piece] | None],
) -> list[Piece]:
    """One more stage of beam encoding of a leaf ``item = (rows, pieces or None)``."""
    x, pieces = item
    if pieces is None:  # the rows themselves, in pieces of leaf // beam rows
        per = max(1, leaf // beam)
        pieces = []
        for s in range(0, x.shape[0], per):
            if beam == 1:
                pieces.append((Residuals(x[s : s + per], np.float32, brute=False), None))
                continue
            start = beam_start(x[s : s + per], np.float32)
            assert start.residual is not None
            pieces.append((start, start.residual.reshape(-1, x.shape[1] + 1) if lut else None))
    fused = lut and lut_kernel() is not None
    size = 2 * max(len(p[0].best_dist) for p in pieces) * beam * book.size
    work = None if fused else np.empty(size, dtype=np.float32)
    out: list[Piece] = []
    for st, rows in pieces:
        if isinstance(st, Residuals):  # greedy: the exact nearest code, subtracted
            st.take_nearest(book, work)
        elif rows is not None:  # ||c||^2 - 2 x.c from one GEMM, then table additions
            assert cross is not None
            st = lut_step(st, rows @ book.table, cross, beam, work)
        else:
            st = beam_step(st, book, beam, work)
        out.append((st, rows))
    return out


def leaf_encode(
    x: NDArray[Any],
    books: Sequence[Codebook],
    cross: Sequence[NDArray[Any]],
    leaf: int,
    beam: int,
    lut: bool,
) -> list[Piece] | None:
    """The pieces of a leaf encoded from scratch with ``books`` (None without books)."""
    pieces: list[Piece] | None = None
    for m, book in enumerate(books):
        pieces = leaf_advance(leaf, beam, lut, book, cross[m] if lut else None, (x, pieces))
    return pieces


def leaf_sq_error(pieces: list[Piece]) -> float:
    """Sum over the leaf's rows of the best beam's squared error (float64 sums)."""
    return float(add_all(*[float(np.sum(st.best_dist, dtype=np.float64)) for st, _ in pieces]))


def leaf_residual(x: NDArray[Any], pieces: list[Piece] | None) -> NDArray[np.float32]:
    """The best beam's residual of every row of a leaf, float32 (n, D)."""
    if pieces is None:
        return np.array(x, dtype=np.float32, copy=True)
    return np.concatenate([st.best_residual for st, _ in pieces])


def leaf_pairs(
    x: NDArray[Any],
    pieces: list[Piece] | None,
    books: Sequence[Codebook],
    pairs: NDArray[np.intp],
) -> NDArray[np.float32]:
    """Residuals of the (row, beam) pairs ``pairs`` (index ``row * b + beam``) of a leaf."""
    if pieces is None:
        return np.array(x[pairs], dtype=np.float32, copy=True)
    codes = np.concatenate([st.codes for st, _ in pieces if isinstance(st, BeamState)])
    rows, beams = np.divmod(pairs, codes.shape[1])
    r = np.array(x[rows], dtype=np.float32, copy=True)
    chosen = codes[rows, beams]
    for m, book in enumerate(books):
        r -= book.vectors[chosen[:, m]]
    return r


class TrainingRows(Protocol):
    """The training rows, as leaves, with the beam state of every row."""

    @property
    def shape(self) -> tuple[int, int]:
        """(n, D)."""
        ...

    def advance(self, books: Sequence[Codebook]) -> float:
        """Encode with ``books`` (one stage more than before); the summed squared error."""
        ...

    def residuals(self) -> Rows:
        """The best beam's residual of every row."""
        ...

    def pair_residuals(self, pick: NDArray[np.intp]) -> Rows:
        """Residuals of the (row, beam) pairs ``pick`` (sorted ``row * b + beam``)."""
        ...


class LocalRows:
    """:class:`TrainingRows` in memory: leaf states kept and advanced on the thread pool.

    Parameters
    ----------
    x : ndarray, shape (n, D), float32
        Finite rows (checked by the caller).
    k, beam : int
    lut : bool
        Whether the beam search takes the table path.
    """

    def __init__(self, x: NDArray[np.float32], k: int, beam: int, lut: bool) -> None:
        self.leaf = leaf_rows(k, x.shape[1])
        self.rows = x
        self.x = ArrayRows.of(x, self.leaf)
        self.k, self.beam, self.lut = k, beam, lut
        self.pieces: list[list[Piece] | None] = [None] * len(self.x.leaves)
        self.books: list[Codebook] = []
        self._shape = x.shape

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._shape[0]), int(self._shape[1])

    def advance(self, books: Sequence[Codebook]) -> float:
        cross = crosses(books)[-1] if self.lut else None
        step = functools.partial(leaf_advance, self.leaf, self.beam, self.lut, books[-1], cross)
        self.pieces = map_leaves(step, list(zip(self.x.leaves, self.pieces, strict=True)))
        self.books = list(books)
        return float(tree_reduce([leaf_sq_error(p) for p in self.pieces if p], add_all))

    def residuals(self) -> Rows:
        if self.pieces[0] is None:
            return self.x
        parts = [leaf_residual(x, p) for x, p in zip(self.x.leaves, self.pieces, strict=True)]
        return ArrayRows(parts, self.leaf)

    def pair_residuals(self, pick: NDArray[np.intp]) -> Rows:
        first = None if self.pieces[0] is None else self.pieces[0][0][0]
        b = first.codes.shape[1] if isinstance(first, BeamState) else 1
        cut = np.searchsorted(pick, np.arange(len(self.x.leaves) + 1) * self.leaf * b)
        items = [
            (x, p, pick[cut[i] : cut[i + 1]] - i * self.leaf * b)
            for i, (x, p) in enumerate(zip(self.x.leaves, self.pieces, strict=True))
        ]
        parts = map_leaves(lambda it: leaf_pairs(it[0], it[1], self.books, it[2]), items)
        return ArrayRows.of(np.concatenate(parts), self.leaf)

    def best_codes(self) -> NDArray[np.intp]:
        """Codes of the best beam of every row, (n, M)."""
        return np.concatenate([st.best_codes for p in self.pieces if p for st, _ in p])


def run_stages(
    data: TrainingRows,
    num_stages: int,
    k: int | Sequence[int],
    beam: int,
    lut: bool,
    iterations: int,
    rng: np.random.Generator,
    bar: Any = None,
) -> tuple[list[Codebook], list[float], list[int]]:
    """Train ``num_stages`` codebooks of ``k`` codes (or ``k[m]`` for stage m),
    one after the other.

    Returns
    -------
    books : list of Codebook, float32
    stage_mse : list of float
        Training MSE per component after each stage.
    iterations : list of int
        Lloyd iterations of each stage.
    """
    n, d = data.shape
    books: list[Codebook] = []
    errors: list[float] = []
    iters: list[int] = []
    b = 1  # beams per row after the stages so far
    sizes = [k] * num_stages if isinstance(k, int) else list(k)
    for stage, k in enumerate(sizes):
        if lut:  # a capped uniform sample of every beam's residual
            cap = BEAM_SAMPLES_PER_CODE * k
            pick = (
                np.sort(rng.choice(n * b, cap, replace=False)) if n * b > cap else np.arange(n * b)
            )
            residual = data.pair_residuals(pick)
        else:
            residual = data.residuals()
        # beam-aware training: random seeds (k-means++ favours outliers of the beams' residuals)
        cent, n_iter = progressive_kmeans(residual, k, iterations, rng, plus_plus=beam == 1)
        books.append(Codebook(cent, dtype=np.float32))
        errors.append(data.advance(books) / (n * d))
        iters.append(n_iter)
        b = min(beam, b * k)
        _log.info(
            "stage %d/%d: %d k-means iterations, training MSE %.6g",
            stage + 1,
            num_stages,
            n_iter,
            errors[-1],
        )
        if bar is not None:
            bar.update(1)
    return books, errors, iters
