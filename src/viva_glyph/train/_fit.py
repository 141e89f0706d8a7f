"""Fitting RVQ codebooks to data: residual k-means, beam-aware, with refinement.

:func:`fit` checks its parameters once (:class:`~viva_glyph.train.FitParams`),
samples the rows, checks them once, and hands the sample to :func:`train_sample`,
which every fit path that holds its sample in memory runs (the Dask fit too):
stage after stage (:func:`viva_glyph.train.stages.run_stages`), stage m's
codebook is a k-means (:mod:`viva_glyph.train.kmeans`) of what stages 1..m-1
leave over, where "left over" is the residual of the beam encoding of those
stages when ``beam_size > 1`` (FAISS ResidualQuantizer's beam-aware training).
Optional refinement then alternates beam encoding with a joint least-squares
update of all codebooks given the codes, and keeps whichever iterate (the
stage-wise codebooks included) has the lowest error on a held-out slice of the
training sample, so it can never make that error worse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import optional_import
from viva_glyph.core import EncodeSettings, RvqConfig, RvqEncoder, TrainingSummary
from viva_glyph.core.beam import use_lut
from viva_glyph.train._params import ITERATIONS, FitParams
from viva_glyph.train._refine import refine_codebooks
from viva_glyph.train._rounds import beam_codes, stage_rounds
from viva_glyph.train.stages import LocalRows, TrainingRows, run_stages

__all__ = ["fit", "train_rows", "train_sample"]

_log = logging.getLogger("viva_glyph.train")


def train_rows(
    data: TrainingRows,
    params: FitParams,
    config: RvqConfig,
    rng: np.random.Generator,
    *,
    held: NDArray[np.float32] | None = None,
    progress: bool = False,
    desc: str = "viva_glyph.fit",
    record: dict[str, Any],
    started: float,
) -> RvqEncoder:
    """The stage loop on an executor's training rows; then, given held-out rows, the
    preset's block-coordinate rounds and ``params.refine`` rounds of refinement; and the
    encoder with its training summary and encoding.

    Parameters
    ----------
    data : TrainingRows
        The training rows on their executor (:class:`viva_glyph.train.stages.LocalRows`
        in memory; the Dask fit's on a cluster).
    params : FitParams
    config : RvqConfig
        From ``params.resolve``.
    rng : numpy Generator
        The fit's generator, after the sample was drawn with it.
    held : ndarray, shape (h, D), float32, optional
        Rows the stages never see, to judge the rounds and the refinement iterates
        (in memory only).
    progress : bool
        Show a tqdm progress bar (needs tqdm).
    desc : str
        The bar's label.
    record : dict
        The parameters the training summary records.
    started : float
        ``time.perf_counter()`` when the fit started (for the summary's seconds).
    """
    rounds = params.rounds if held is not None else 0
    refine = params.refine if held is not None else 0
    _log.info("fitting %s on %d rows", config, data.shape[0])
    bar = None
    if progress:
        tqdm = optional_import("tqdm.auto", "fit(progress=True)").tqdm

        bar = tqdm(total=config.num_stages + rounds + refine, desc=desc, unit="step")
    try:
        beam = params.train_beam
        books, stage_mse, n_iters = run_stages(
            data, config.num_stages, config.stage_sizes, beam, use_lut(config, beam),
            params.iterations, rng, bar,
        )  # fmt: skip
        rounds_mse: list[float] = []
        kept = 0
        if rounds:
            assert held is not None and isinstance(data, LocalRows)
            books, rounds_mse, kept = stage_rounds(
                books, data.rows, held, params.round_beam, rounds, bar
            )
        refine_mse: list[float] = []
        selected = 0
        if refine:
            assert held is not None and isinstance(data, LocalRows)
            codes = data.best_codes() if not kept else beam_codes(books, data.rows, beam)
            books, refine_mse, selected = refine_codebooks(
                books, data.rows, codes, held, beam, refine, bar
            )
    finally:
        if bar is not None:
            bar.close()
    summary = TrainingSummary(
        stage_mse=tuple(stage_mse),
        iterations=tuple(n_iters),
        seconds=time.perf_counter() - started,
        params=record,
        refine_mse=tuple(refine_mse),
        refine_selected=selected,
        rounds_mse=tuple(rounds_mse),
        rounds_kept=kept,
    )
    _log.info("fit done in %.3f s: training MSE %.6g", summary.seconds, stage_mse[-1])
    encoding = EncodeSettings(beam_size=params.encode_beam)  # encode as it was trained for
    return RvqEncoder(books, config, training=summary, encoding=encoding)


def train_sample(
    sample: NDArray[np.float32],
    params: FitParams,
    config: RvqConfig,
    rng: np.random.Generator,
    *,
    progress: bool = False,
    record: dict[str, Any] | None = None,
    started: float | None = None,
) -> RvqEncoder:
    """Train codebooks on a checked float32 sample held in memory.

    With a preset's rounds or with ``refine``, a tenth of the sample is held out to
    judge them; when no round is kept (and nothing is refined), the stages are
    trained again on the whole sample, so the held-out tenth costs nothing.

    Parameters
    ----------
    sample : ndarray, shape (n, D), float32
        The training rows, checked (finite, within the magnitude limits).
    params : FitParams
    config : RvqConfig
        From ``params.resolve``.
    rng : numpy Generator
        The fit's generator, after the sample was drawn with it.
    progress : bool
        Show a tqdm progress bar (needs tqdm).
    record : dict, optional
        The parameters the training summary records (default ``params.record``).
    started : float, optional
        ``time.perf_counter()`` when the fit started (for the summary's seconds).
    """
    t0 = time.perf_counter() if started is None else started
    k = config.codebook_size
    record = params.record(config, int(sample.shape[0])) if record is None else record
    lut = use_lut(config, params.train_beam)
    hold = None
    if params.refine or params.rounds:  # a slice the stages never see, to judge what follows
        hold = np.zeros(sample.shape[0], dtype=bool)
        hold[rng.choice(sample.shape[0], max(1, sample.shape[0] // 10), replace=False)] = True
        if sample.shape[0] - int(hold.sum()) < k:
            raise ValueError(
                f"the fit holds out a tenth of the sample, leaving fewer than "
                f"codebook_size = {k} rows to train on: give more rows, or fit with "
                "refine=0 and the preset 'fast'"
            )
    train = sample if hold is None else sample[~hold]
    held = None if hold is None else sample[hold]
    enc = train_rows(
        LocalRows(train, k, params.train_beam, lut), params, config, rng,
        held=held, progress=progress, record=record, started=t0,
    )  # fmt: skip
    summary = enc.training
    if hold is not None and not params.refine and summary is not None and not summary.rounds_kept:
        _log.info("no round kept: the stages again, on the whole sample")
        again = train_rows(
            LocalRows(sample, k, params.train_beam, lut), params, config, rng,
            progress=progress, record=record, started=t0,
        )  # fmt: skip
        assert again.training is not None
        summary = replace(again.training, rounds_mse=summary.rounds_mse)
        enc = RvqEncoder(again.codebooks, config, training=summary, encoding=again.encoding)
    return enc


def fit(
    X: ArrayLike,
    config: RvqConfig | None = None,
    *,
    num_stages: int | None = None,
    codebook_size: int | Sequence[int] | None = None,
    beam_size: int | None = None,
    iterations: int = ITERATIONS,
    refine: int = 0,
    max_samples: int | None = None,
    seed: int = 0,
    progress: bool = False,
    preset: str | None = None,
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
    beam_size : int, optional
        1: greedy residual k-means. B > 1: stage m is trained on the residuals
        of the B-beam encoding of stages 1..m-1, and (without a preset) the model
        records B as its encoding (:attr:`RvqEncoder.encoding`): ``encode`` then
        searches with B unless told otherwise. Default: the preset's (1 for
        ``"fast"``). Bounded by memory: B * K * rows * 4 bytes must fit in half the
        available memory (the error says the largest B that fits).
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
        ``256 * codebook_size`` (FAISS's rule; 1,024 per code for the presets
        ``"balanced"`` and ``"quality"``), so a large memory map is sampled, never
        read whole.
    seed : int
        Same data, parameters and seed give bit-identical codebooks.
    progress : bool
        Show a tqdm progress bar (needs tqdm).
    preset : {"fast", "balanced", "quality"}, optional
        What to train for (default ``"fast"``, the greedy fit above). ``"balanced"``
        and ``"quality"`` train for beam search on more rows per code (1,024 by
        default), then refit each stage's codebook given the other stages' codes in
        rounds that are kept only while they lower the error of a held-out tenth of
        the sample, and record the beam to encode with (4 and 32): better codes for
        slower encoding (``benchmarks/bench_quality.py``). Parameters given
        explicitly override the preset's (see :data:`viva_glyph.train.PRESETS`).

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
    params = FitParams(
        config, num_stages, codebook_size, beam_size, iterations, refine, max_samples, seed,
        preset,
    )  # fmt: skip
    sample, cfg, rng = params.draw(X)
    return train_sample(sample, params, cfg, rng, progress=progress, started=t0)
