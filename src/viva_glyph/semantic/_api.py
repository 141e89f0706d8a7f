"""``semantic.fit``: train a semantic-ID model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from viva_glyph.checks import (
    MAX_MAGNITUDE,
    as_matrix,
    check_magnitude,
    check_scale,
    checked_rows,
    optional_import,
    positive_int,
)
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.search import greedy
from viva_glyph.semantic._checks import check_flag, check_levels, check_normalize, check_suffix_size
from viva_glyph.semantic._fit import train_levels
from viva_glyph.semantic._model import (
    METRICS,
    SemanticIds,
    check_balance,
    normalize_rows,
)
from viva_glyph.train import FitParams, train_sample

__all__ = ["fit"]


def _sizes(codebook_size: Any, levels: int) -> tuple[int, ...]:
    if isinstance(codebook_size, (int, np.integer)) and not isinstance(codebook_size, bool):
        return (positive_int(codebook_size, "codebook_size"),) * levels
    if isinstance(codebook_size, np.ndarray):
        if codebook_size.ndim != 1 or codebook_size.dtype.kind not in "iu":
            raise TypeError(
                "codebook_size must be an int or one int per level, got an array of shape "
                f"{codebook_size.shape} and dtype {codebook_size.dtype}"
            )
        codebook_size = [int(k) for k in codebook_size]
    if not isinstance(codebook_size, Sequence) or isinstance(codebook_size, str):
        raise TypeError(
            f"codebook_size must be an int or one int per level, got {type(codebook_size).__name__}"
        )
    if len(codebook_size) != levels:
        raise ValueError(
            f"codebook_size lists {len(codebook_size)} sizes, but levels is {levels}: "
            "give one per level"
        )
    return tuple(positive_int(k, f"codebook_size[{i}]") for i, k in enumerate(codebook_size))


def _level_mse(x: Any, books: list[Codebook]) -> list[float]:
    """MSE per component after each level, greedy, on at most 16,384 rows of x."""
    rows = np.asarray(x[: 1 << 14], dtype=np.float64)
    codes, _ = greedy(rows, books)
    out = []
    for level, book in enumerate(books):  # what the first levels leave, level by level
        rows = rows - book.vectors64[codes[:, level]]
        out.append(float((rows**2).mean()))
    return out


def fit(
    X: ArrayLike,
    *,
    levels: int = 3,
    codebook_size: int | Sequence[int] = 256,
    metric: str = "l2",
    balance: float | None = None,
    beam_size: int = 1,
    suffix_size: int | None = None,
    normalize_residuals: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> SemanticIds:
    """Fit a semantic-ID model: L levels of residual k-means over item embeddings.

    Parameters
    ----------
    X : array_like, shape (N, D), float (memory maps welcome)
        Item embeddings; at most ``256 * max(codebook_size)`` rows are sampled.
    levels : int
        Number of levels L (3 as in TIGER).
    codebook_size : int or sequence of int
        K of every level, or one size per level (e.g. ``(16, 256, 256)``).
    metric : {"l2", "cosine"}
        ``"cosine"`` scales every row to unit length (in fitting and encoding).
    balance : float >= 0, optional
        Bound every level's clusters to at most
        ``max(ceil(N/K), floor((1 + balance) N / K))`` rows, in training (on the
        training rows) and in balanced assignment (``ids.unique``).
    beam_size : int
        Beam width of training and encoding (equal sizes without balance only).
    suffix_size : int, optional
        Range of the disambiguating suffix token; default: the last level's K.
    normalize_residuals : bool
        ``metric="cosine"`` only: scale the residual to unit length before
        every level after the first (GRID's ``normalize_residuals``), so every
        level clusters directions. The mean residual norm of each level is
        stored with the model and used by ``decode``.
    seed : int
        Same data, parameters and seed give the same model.
    progress : bool
        Show a progress bar (needs tqdm).

    Returns
    -------
    SemanticIds
    """
    t0 = time.perf_counter()
    x = as_matrix(X, None)
    levels = check_levels(levels)
    sizes = _sizes(codebook_size, levels)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    bal = check_balance(balance)
    params = FitParams(codebook_size=sizes, beam_size=beam_size, seed=seed)
    beam = params.train_beam
    if beam > 1 and bal is not None:
        raise ValueError("beam_size > 1 needs balance=None")
    check_normalize(normalize_residuals, (1.0,) * levels, metric, beam, levels)
    progress = check_flag(progress, "progress")
    if suffix_size is not None:
        check_suffix_size(suffix_size)
    n = x.shape[0]
    if n < max(sizes):
        raise ValueError(f"fit needs at least max(codebook_size) = {max(sizes)} rows, got N = {n}")
    config, rows = params.resolve(n, x.shape[1])
    rng = np.random.default_rng(params.seed)
    idx = params.sample_rows(n, rows, rng)
    training: dict[str, Any] = {"seed": params.seed, "rows": n}
    scales: list[float] | None = None
    if beam > 1 and metric == "l2":  # beam-aware training: the core fit's
        enc = train_sample(checked_rows(x, idx), params, config, rng, progress=progress)
        books = list(enc.codebooks)
        training["level_mse"] = _level_mse(x, books)
        training["samples"] = rows
    else:
        sample = np.asarray(x[slice(None) if idx is None else idx], dtype=np.float64)
        ok = np.isfinite(sample) if metric == "cosine" else np.abs(sample) <= MAX_MAGNITUDE
        if not ok.all():
            bad = int(np.flatnonzero(~ok.all(axis=1))[0])
            row = bad if idx is None else int(idx[bad])
            check_magnitude(sample[bad : bad + 1], row)  # the core fit's message
            raise ValueError(f"X row {row} holds NaN or inf")
        if metric == "cosine":
            sample = normalize_rows(sample, 0)
        else:
            check_scale(float(np.abs(sample).max()))
        bar = None
        if progress:
            tqdm = optional_import("tqdm.auto", "semantic.fit(progress=True)").tqdm
            bar = tqdm(total=levels, desc="semantic.fit", unit="level")
        try:
            if beam > 1:  # cosine: the core fit's training on the unit rows
                fresh = np.random.default_rng(params.seed)
                enc = train_sample(sample.astype(np.float32), params, config, fresh)
                books = list(enc.codebooks)
                training["level_mse"] = _level_mse(sample, books)
            else:
                books, errors, largest, level_scales = train_levels(
                    sample.astype(np.float32),
                    sizes,
                    bal,
                    rng,
                    bar,
                    normalize=bool(normalize_residuals),
                )
                training["level_mse"] = errors
                training["largest_cluster"] = largest
                scales = level_scales if normalize_residuals else None
        finally:
            if bar is not None:
                bar.close()
        training["samples"] = int(sample.shape[0])
    training["seconds"] = time.perf_counter() - t0
    return SemanticIds(
        books,
        metric=metric,
        balance=bal,
        beam_size=beam,
        suffix_size=suffix_size,
        normalize_residuals=bool(normalize_residuals),
        residual_scales=scales,
        training=training,
    )
