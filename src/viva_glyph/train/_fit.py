"""Fitting RVQ codebooks to data: residual k-means, beam-aware, with refinement.

:func:`fit` samples the rows, checks them once, and trains stage after stage
(:func:`viva_glyph.train._stages.run_stages`): stage m's codebook is a k-means
(:mod:`viva_glyph.train.kmeans`) of what stages 1..m-1 leave over, where "left
over" is the residual of the beam encoding of those stages when
``beam_size > 1`` (FAISS ResidualQuantizer's beam-aware training). Optional
refinement then alternates beam encoding with a joint least-squares update of
all codebooks given the codes, and keeps whichever iterate (the stage-wise
codebooks included) has the lowest error on a held-out slice of the training
sample, so it can never make that error worse.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import as_matrix, non_negative_int, positive_int, require_finite
from viva_glyph.core.config import RvqConfig, default_config, stage_sizes
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.search import use_lut
from viva_glyph.core.summary import TrainingSummary
from viva_glyph.train._refine import MAX_REFINE_UNKNOWNS, refine_codebooks
from viva_glyph.train._stages import LocalRows, run_stages

__all__ = ["TrainingSummary", "fit"]

_log = logging.getLogger("viva_glyph.train")

#: Rows per code read by default (FAISS's max_points_per_centroid): more rarely helps.
SAMPLES_PER_CODE = 256
#: Default most Lloyd iterations per dimension step (chosen by benchmarks/bench_fit.py --sweep).
ITERATIONS = 10
#: Largest magnitude a training value may have: squared distances of D such
#: values stay far inside float32's range (3.4e38) for any practical D.
MAX_MAGNITUDE = 1e15
#: Smallest largest-magnitude of the data: below it float32 squared distances
#: between nearby vectors underflow (float32's smallest normal is 1.2e-38).
MIN_MAGNITUDE = 1e-15


def _resolve_config(
    config: RvqConfig | None,
    num_stages: int | None,
    codebook_size: int | Sequence[int] | None,
    dim: int,
) -> RvqConfig:
    sizes = None
    if isinstance(codebook_size, Sequence):  # one size per stage
        sizes = stage_sizes(codebook_size)
        if num_stages is not None and num_stages != len(sizes):
            raise ValueError(
                f"num_stages={num_stages} contradicts the {len(sizes)} sizes of "
                f"codebook_size={list(sizes)}"
            )
    if config is None:
        if isinstance(codebook_size, Sequence):
            return RvqConfig.of_sizes(dim, codebook_size)
        base = default_config()
        m = base.num_stages if num_stages is None else num_stages
        k = base.codebook_size if codebook_size is None else codebook_size
        return RvqConfig(m, dim, k)
    if not isinstance(config, RvqConfig):
        raise TypeError(f"config must be an RvqConfig or None, got {type(config).__name__}")
    if sizes is not None and sizes != config.stage_sizes:
        raise ValueError(
            f"codebook_size={list(sizes)} contradicts config.stage_sizes={config.stage_sizes}"
        )
    for name, val in (("num_stages", num_stages), ("codebook_size", codebook_size)):
        if sizes is None and val is not None and val != getattr(config, name):
            raise ValueError(f"{name}={val} contradicts config.{name}={getattr(config, name)}")
    if config.dimension != dim:
        raise ValueError(f"X has dimension {dim}, but config.dimension is {config.dimension}")
    return config


def size_param(config: RvqConfig) -> int | list[int]:
    """``params["codebook_size"]`` of a training summary: K, or the per-stage sizes."""
    return config.codebook_size if config.uniform else list(config.stage_sizes)


class _FitArgs(NamedTuple):
    config: RvqConfig
    beam: int
    iterations: int
    seed: int
    samples: int  # rows to train on: min(N, max_samples)


def _memory_budget() -> int:
    """Bytes the beam search of a fit may use: half the memory available now."""
    try:  # Linux: MemAvailable counts the page cache the kernel can reclaim
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # neither Linux nor POSIX sysconf
        free = 8 << 30
    return int(free) // 2


def _check_beam(beam: int, rows: int, k: int) -> None:
    """Raise unless the beam's candidate scores (B * K * rows float32) fit the budget."""
    budget = _memory_budget()
    need = beam * k * rows * 4
    if beam > 1 and need > budget:
        largest = max(1, budget // (k * rows * 4))
        raise ValueError(
            f"beam_size {beam} needs {need / 2**30:.3g} GiB of beam scores for {rows} training "
            f"rows x {k} codes (B * K * rows * 4 bytes); the largest beam_size that fits in "
            f"{budget / 2**30:.3g} GiB (half the memory available) is {largest}: "
            "use that or fewer, or train on fewer rows (max_samples)"
        )


def _fit_args(
    n: int,
    dim: int,
    config: RvqConfig | None,
    num_stages: int | None,
    codebook_size: int | Sequence[int] | None,
    beam_size: object,
    iterations: object,
    seed: object,
    max_samples: object,
) -> _FitArgs:
    """The checks and defaults that :func:`fit` and the dask fit share, for N rows of dim D."""
    cfg = _resolve_config(config, num_stages, codebook_size, dim)
    k = cfg.codebook_size
    if n < k:
        raise ValueError(f"fit needs at least codebook_size = {k} rows, got N = {n}")
    default = SAMPLES_PER_CODE * k
    limit = min(n, default) if max_samples is None else positive_int(max_samples, "max_samples")
    if limit < k:
        raise ValueError(f"max_samples must be >= codebook_size = {k}, got {limit}")
    beam = positive_int(beam_size, "beam_size")
    _check_beam(beam, min(limit, n), k)
    return _FitArgs(
        cfg,
        beam,
        positive_int(iterations, "iterations"),
        non_negative_int(seed, "seed"),
        min(limit, n),
    )


def check_magnitude(chunk: NDArray[Any], start: int, name: str = "X") -> None:
    """Raise ``ValueError`` naming the first row of ``chunk`` holding NaN, inf or a value
    beyond :data:`MAX_MAGNITUDE` (``start`` is the row number of ``chunk[0]``)."""
    require_finite(chunk, start, name)
    big = np.abs(chunk) > MAX_MAGNITUDE
    if big.any():
        bad = int(np.flatnonzero(big.any(axis=1))[0])
        worst = float(np.abs(chunk[bad]).max())
        raise ValueError(
            f"{name} row {start + bad} holds a value of magnitude {worst:.3g}, beyond what "
            f"float32 training handles (|x| <= {MAX_MAGNITUDE:.0e}): scale the data down"
        )


def check_scale(largest: float, name: str = "X") -> None:
    """Raise ``ValueError`` when the data's largest magnitude is too small for float32."""
    if 0.0 < largest < MIN_MAGNITUDE:
        raise ValueError(
            f"{name}'s largest magnitude is {largest:.3g}: float32 squared distances of such "
            f"data underflow (training needs max |x| >= {MIN_MAGNITUDE:.0e}); multiply the data "
            "by a constant (e.g. 1 / max |x|) and divide the reconstructions by it"
        )


def _read_rows(x: NDArray[Any], idx: NDArray[np.intp] | None) -> NDArray[np.float32]:
    """Rows ``idx`` of x (all when None) as float32, read in chunks, checked."""
    n = x.shape[0] if idx is None else idx.shape[0]
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    step = max(1, (8 << 20) // (x.shape[1] * max(x.dtype.itemsize, 4)))
    for start in range(0, n, step):
        stop = min(start + step, n)
        chunk = x[start:stop] if idx is None else x[idx[start:stop]]
        try:
            check_magnitude(chunk, 0)
        except ValueError:
            bad = int(np.flatnonzero(~(np.abs(chunk) <= MAX_MAGNITUDE).all(axis=1))[0])
            row = start + bad if idx is None else int(idx[start + bad])
            check_magnitude(chunk[bad : bad + 1], row)
        out[start:stop] = chunk
    return out


def fit(
    X: ArrayLike,
    config: RvqConfig | None = None,
    *,
    num_stages: int | None = None,
    codebook_size: int | Sequence[int] | None = None,
    beam_size: int = 1,
    iterations: int = ITERATIONS,
    refine: int = 0,
    max_samples: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RvqEncoder:
    """Fit RVQ codebooks to data.

    Parameters
    ----------
    X : array_like, shape (N, D), float32 or float64 (memory maps welcome)
        Training vectors, finite, of magnitude at most 1e15 and (unless all
        zero) at least 1e-15 at the largest (float32 trains them). At most
        ``max_samples`` rows are read (a uniform random sample when N is
        larger); the rest of a memory map stays on disk.
    config : RvqConfig, optional
        M, D, K. Without it ``num_stages`` and ``codebook_size`` (default 4 and
        256) and D from X are used; given both, they must agree.
    num_stages : int, optional
    codebook_size : int or sequence of int, optional
        K for every stage, or one size per stage (``[16, 256, 256]``: a coarse
        first level, as semantic IDs use); ``num_stages`` then defaults to its
        length. N and ``max_samples`` (default ``256 * max K``) must be at least
        the largest size. Per-stage sizes train with the same stage-wise
        k-means, each stage with its own K; ``refine`` needs equal sizes.
    beam_size : int
        1: greedy residual k-means. B > 1: stage m is trained on the residuals
        of the B-beam encoding of stages 1..m-1; encode with the same
        ``beam_size`` for the best results. Bounded by memory: B * K * rows *
        4 bytes must fit in half the available memory (the error says the
        largest B that fits).
    iterations : int
        Most Lloyd iterations of each of the dimension steps of a stage's
        progressive k-means (:func:`viva_glyph.train.kmeans.progressive_kmeans`, up
        to 10 steps); a step stops earlier when an iteration changes the
        inertia by at most :data:`viva_glyph.train.kmeans.TOL` (1e-3) relative. The
        defaults (10 iterations, 1e-3, 10 steps: FAISS's iterations and steps
        plus early stopping) were chosen by ``benchmarks/bench_fit.py --sweep``.
    refine : int
        Rounds of joint least-squares codebook refinement (0: none). A tenth of
        the sample is held out; the iterate with the lowest held-out MSE wins.
    max_samples : int, optional
        Train on at most this many rows (>= codebook_size); default
        ``256 * codebook_size`` (FAISS's rule), so a large memory map is sampled,
        never read whole.
    seed : int
        Same data, parameters and seed give bit-identical codebooks.
    progress : bool
        Show a tqdm progress bar (needs tqdm).

    Returns
    -------
    RvqEncoder
        float32 codebooks; ``.training`` holds a :class:`TrainingSummary`
        (``stage_mse``: training MSE per component after each stage).

    Raises
    ------
    ValueError
        N < K, dimension mismatch, NaN/inf or out-of-range rows (the row is
        named), data too small in scale for float32, a beam too large for
        memory, bad parameters.
    TypeError
        Non-numeric data or parameters of the wrong type.
    """
    t0 = time.perf_counter()
    x = as_matrix(X, None)
    n, dim = x.shape
    cfg, beam, iters, seed, limit = _fit_args(
        n, dim, config, num_stages, codebook_size, beam_size, iterations, seed, max_samples
    )
    rounds = non_negative_int(refine, "refine")
    k = cfg.codebook_size
    if rounds and not cfg.uniform:
        raise ValueError(
            f"refine needs equal codebook sizes, got {list(cfg.stage_sizes)}: fit with refine=0"
        )
    if rounds and cfg.num_stages * k > MAX_REFINE_UNKNOWNS:
        raise ValueError(
            f"refine needs num_stages * codebook_size <= {MAX_REFINE_UNKNOWNS}, "
            f"got {cfg.num_stages} * {k}"
        )
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=limit, replace=False)) if limit < n else None
    sample = _read_rows(x, idx)
    check_scale(float(np.abs(sample).max()))
    params = {
        "num_stages": cfg.num_stages,
        "dimension": dim,
        "codebook_size": size_param(cfg),
        "beam_size": beam,
        "iterations": iters,
        "refine": rounds,
        "max_samples": max_samples,
        "seed": seed,
        "samples_used": int(sample.shape[0]),
    }
    _log.info("fitting %s on %d of %d rows", cfg, sample.shape[0], n)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=cfg.num_stages + rounds, desc="viva_glyph.fit", unit="step")
    try:
        hold = None
        if rounds:  # a slice the stage-wise codebooks never see, to pick the refine iterate
            hold = np.zeros(sample.shape[0], dtype=bool)
            hold[rng.choice(sample.shape[0], max(1, sample.shape[0] // 10), replace=False)] = True
            if sample.shape[0] - int(hold.sum()) < k:
                raise ValueError(
                    f"refine holds out a tenth of the sample, leaving fewer than "
                    f"codebook_size = {k} rows to train on: give more rows or refine=0"
                )
        train = sample if hold is None else sample[~hold]
        data = LocalRows(train, k, beam, use_lut(cfg, beam))
        books, stage_mse, n_iters = run_stages(
            data, cfg.num_stages, cfg.stage_sizes, beam, data.lut, iters, rng, bar
        )
        refine_mse: list[float] = []
        selected = 0
        if hold is not None:
            books, refine_mse, selected = refine_codebooks(
                books, train, data.best_codes(), sample[hold], beam, rounds, bar
            )
    finally:
        if bar is not None:
            bar.close()
    summary = TrainingSummary(
        stage_mse=tuple(stage_mse),
        iterations=tuple(n_iters),
        seconds=time.perf_counter() - t0,
        params=params,
        refine_mse=tuple(refine_mse),
        refine_selected=selected,
    )
    _log.info("fit done in %.3f s: training MSE %.6g", summary.seconds, stage_mse[-1])
    return RvqEncoder(books, cfg, training=summary)
