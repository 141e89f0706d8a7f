"""Fitting RVQ codebooks to data: residual k-means, beam-aware, with refinement.

:func:`fit` trains stage after stage: stage m's codebook is a k-means
(:mod:`viva_glyph.kmeans`) of what stages 1..m-1 leave over, where "left
over" is the residual of the beam encoding of those stages when
``beam_size > 1`` (FAISS ResidualQuantizer's beam-aware training). Optional
refinement then alternates beam encoding with a joint least-squares update of
all codebooks given the codes, and keeps whichever iterate (the stage-wise
codebooks included) has the lowest error on a held-out slice of the training
sample, so it can never make that error worse.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph._kernels import chunk_rows
from viva_glyph._threads import default_threads, parallel_map
from viva_glyph._validate import as_matrix, positive_int, require_finite
from viva_glyph.beam import (
    BeamState,
    beam_start,
    beam_step,
    cross_tables,
    lut_step,
    numba_kernel,
    use_lut,
)
from viva_glyph.codebook import Codebook
from viva_glyph.kmeans import progressive_kmeans
from viva_glyph.refine import MAX_REFINE_UNKNOWNS, refine_codebooks
from viva_glyph.rvq import RvqConfig, RvqEncoder, default_config

__all__ = ["TrainingSummary", "fit"]

_log = logging.getLogger(__name__)

#: Rows per code read by default (FAISS's max_points_per_centroid): more rarely helps.
SAMPLES_PER_CODE = 256
#: Beam residuals per code a beam-aware stage trains on (several beams of a row
#: are different points: twice the rows' rule lowers held-out error, issue 3 bench).
BEAM_SAMPLES_PER_CODE = 512


@dataclass(frozen=True)
class TrainingSummary:
    """What :func:`fit` recorded.

    Attributes
    ----------
    stage_errors : tuple of float
        Training MSE (mean over vectors of ``||x - x'||^2``) after each stage.
    iterations : tuple of int
        k-means iterations run for each stage.
    seconds : float
        Wall time of the whole fit.
    params : dict
        The fit's parameters (JSON types).
    refine_errors : tuple of float
        Held-out MSE of the stage-wise codebooks (first) and of each refinement
        iterate; empty without refinement.
    refine_selected : int
        Index into ``refine_errors`` of the iterate kept (0: no refinement step).
    """

    stage_errors: tuple[float, ...]
    iterations: tuple[int, ...]
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    refine_errors: tuple[float, ...] = ()
    refine_selected: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (lists for tuples)."""
        d = asdict(self)
        d["stage_errors"] = list(self.stage_errors)
        d["iterations"] = list(self.iterations)
        d["refine_errors"] = list(self.refine_errors)
        return d

    @classmethod
    def from_dict(cls, d: object) -> TrainingSummary:
        """Inverse of :meth:`to_dict`; raises ValueError on malformed input."""
        if not isinstance(d, dict):
            raise ValueError(f"a training summary must be a dict, got {type(d).__name__}")
        try:
            params = d.get("params", {})
            if not isinstance(params, dict):
                raise TypeError("params must be a dict")
            return cls(
                stage_errors=tuple(float(v) for v in d["stage_errors"]),
                iterations=tuple(_as_int(v) for v in d["iterations"]),
                seconds=float(d["seconds"]),
                params=dict(params),
                refine_errors=tuple(float(v) for v in d.get("refine_errors", ())),
                refine_selected=_as_int(d.get("refine_selected", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed training summary {d!r}: {exc}") from exc


def _as_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"expected an int, got {v!r}")
    return int(v)


def _nonneg_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _resolve_config(
    config: RvqConfig | None, num_stages: int | None, codebook_size: int | None, dim: int
) -> RvqConfig:
    if config is None:
        base = default_config()
        m = base.num_stages if num_stages is None else num_stages
        k = base.codebook_size if codebook_size is None else codebook_size
        return RvqConfig(m, dim, k)
    if not isinstance(config, RvqConfig):
        raise TypeError(f"config must be an RvqConfig or None, got {type(config).__name__}")
    for name, val in (("num_stages", num_stages), ("codebook_size", codebook_size)):
        if val is not None and val != getattr(config, name):
            raise ValueError(f"{name}={val} contradicts config.{name}={getattr(config, name)}")
    if config.dimension != dim:
        raise ValueError(f"X has dimension {dim}, but config.dimension is {config.dimension}")
    return config


class _FitArgs(NamedTuple):
    config: RvqConfig
    beam: int
    iterations: int
    seed: int
    samples: int  # rows to train on: min(N, max_samples)


def _fit_args(
    n: int,
    dim: int,
    config: RvqConfig | None,
    num_stages: int | None,
    codebook_size: int | None,
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
    return _FitArgs(
        cfg,
        positive_int(beam_size, "beam_size"),
        positive_int(iterations, "iterations"),
        _nonneg_int(seed, "seed"),
        min(limit, n),
    )


def _read_rows(x: NDArray[Any], idx: NDArray[np.intp] | None) -> NDArray[np.float32]:
    """Rows ``idx`` of x (all when None) as float32, read in chunks, checked finite."""
    n = x.shape[0] if idx is None else idx.shape[0]
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    step = max(1, (8 << 20) // (x.shape[1] * max(x.dtype.itemsize, 4)))
    for start in range(0, n, step):
        stop = min(start + step, n)
        chunk = x[start:stop] if idx is None else x[idx[start:stop]]
        if idx is None:
            require_finite(chunk, start)
        elif not np.isfinite(chunk).all():
            bad = int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            require_finite(x[idx[start + bad] : idx[start + bad] + 1], int(idx[start + bad]))
        out[start:stop] = chunk
    return out


def _stagewise(
    x: NDArray[np.float32],
    cfg: RvqConfig,
    beam: int,
    iterations: int,
    rng: np.random.Generator,
    bar: Any,
) -> tuple[list[Codebook], list[BeamState], list[float], list[int]]:
    """Train the M codebooks one after the other on (beam) residuals.

    With B > 1 each stage is trained on the residuals of all B beams of every
    row (as FAISS does), not only the best one. The beam state of every row is
    carried from stage to stage, so each stage costs one beam step: by
    residual GEMMs (``beam_step``; B = 1 is the greedy encoder) or, for B > 1,
    by look-up tables (``lut_step``).
    """
    n, d = x.shape
    k = cfg.codebook_size
    lut = use_lut(cfg, beam)
    fused = lut and numba_kernel() is not None
    per = 4096 if fused else max(1, chunk_rows(k, d, 4) // beam)
    slices = [slice(s, min(s + per, n)) for s in range(0, n, per)]
    states = [beam_start(x[s], np.float32) for s in slices]
    rows = [st.residual.reshape(-1, d + 1) for st in states] if lut else []  # type: ignore[union-attr]
    # with the numpy path the pieces run one after the other and share scratch
    threads = default_threads() if fused else 1
    work = None if fused else np.empty(2 * per * beam * k, dtype=np.float32)
    books: list[Codebook] = []
    errors: list[float] = []
    iters: list[int] = []
    for stage in range(cfg.num_stages):
        if lut:
            residual = _beam_residuals(x, books, [st.codes for st in states], k, rng)
        else:
            residual = np.concatenate([st.best_residual for st in states])
        cent, n_iter = progressive_kmeans(residual, k, iterations, rng)
        book = Codebook(cent, dtype=np.float32)
        if lut:
            step = functools.partial(_table_step, book, cross_tables(books, book), beam, work)
            states = parallel_map(step, list(zip(states, rows, strict=True)), threads)
        else:
            states = [beam_step(st, book, beam, work) for st in states]
        err = float(np.concatenate([st.dist[:, 0] for st in states]).astype(np.float64).mean())
        books.append(book)
        errors.append(err)
        iters.append(n_iter)
        _log.info(
            "stage %d/%d: %d k-means iterations, training MSE %.6g",
            stage + 1,
            cfg.num_stages,
            n_iter,
            err,
        )
        if bar is not None:
            bar.update(1)
    return books, states, errors, iters


def _table_step(
    book: Codebook,
    cross: NDArray[np.float32],
    beam: int,
    work: NDArray[np.float32] | None,
    piece: tuple[BeamState, NDArray[np.float32]],
) -> BeamState:
    """One table-path beam step of a piece: its rows (beside ones) against ``book``."""
    state, rows = piece
    return lut_step(state, rows @ book.table, cross, beam, work)


def _beam_residuals(
    x: NDArray[np.float32],
    books: list[Codebook],
    codes: list[NDArray[np.intp]],
    k: int,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Residuals of all beams of all rows (FAISS trains each stage on these).

    At most ``BEAM_SAMPLES_PER_CODE * k`` of the n * b (row, beam) pairs are
    drawn, uniformly; shape (min(n * b, cap), D).
    """
    allc = np.concatenate(codes)  # (n, b, m)
    n, b, _ = allc.shape
    cap = BEAM_SAMPLES_PER_CODE * k
    pick = np.sort(rng.choice(n * b, cap, replace=False)) if n * b > cap else np.arange(n * b)
    rows, beams = np.divmod(pick, b)
    return _residual(x[rows], books, allc[rows, beams])


def _residual(x: NDArray[Any], books: list[Codebook], codes: NDArray[Any]) -> NDArray[np.float32]:
    """``x - sum_m books[m][codes[:, m]]`` in float32, in cache-sized pieces on threads."""
    r = np.array(x, dtype=np.float32, copy=True)
    per = 4096

    def subtract(start: int) -> None:
        part, part_codes = r[start : start + per], codes[start : start + per]
        for m, book in enumerate(books):
            part -= book.vectors[part_codes[:, m]]

    parallel_map(subtract, range(0, len(r), per), default_threads())
    return r


def fit(
    X: ArrayLike,
    config: RvqConfig | None = None,
    *,
    num_stages: int | None = None,
    codebook_size: int | None = None,
    beam_size: int = 1,
    iterations: int = 25,
    refine: int = 0,
    max_samples: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RvqEncoder:
    """Fit RVQ codebooks to data.

    Parameters
    ----------
    X : array_like, shape (N, D), float32 or float64 (memory maps welcome)
        Training vectors. At most ``max_samples`` rows are read (a uniform
        random sample when N is larger); the rest of a memory map stays on disk.
    config : RvqConfig, optional
        M, D, K. Without it ``num_stages`` and ``codebook_size`` (default 4 and
        256) and D from X are used; given both, they must agree.
    num_stages, codebook_size : int, optional
    beam_size : int
        1: greedy residual k-means. B > 1: stage m is trained on the residuals
        of the B-beam encoding of stages 1..m-1; encode with the same
        ``beam_size`` for the best results.
    iterations : int
        Maximum Lloyd iterations of each of the dimension steps of a stage's
        progressive k-means (:func:`viva_glyph.kmeans.progressive_kmeans`, 6
        steps); each step stops earlier when the inertia improves by less than
        1e-4 relative. 10 is FAISS's default and usually enough.
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
        float32 codebooks; ``.training`` holds a :class:`TrainingSummary`.

    Raises
    ------
    ValueError
        N < K, dimension mismatch, NaN/inf rows (the row is named), bad parameters.
    TypeError
        Non-numeric data or parameters of the wrong type.
    """
    t0 = time.perf_counter()
    x = as_matrix(X, None)
    n, dim = x.shape
    cfg, beam, iters, seed, limit = _fit_args(
        n, dim, config, num_stages, codebook_size, beam_size, iterations, seed, max_samples
    )
    rounds = _nonneg_int(refine, "refine")
    k = cfg.codebook_size
    if rounds and cfg.num_stages * k > MAX_REFINE_UNKNOWNS:
        raise ValueError(
            f"refine needs num_stages * codebook_size <= {MAX_REFINE_UNKNOWNS}, "
            f"got {cfg.num_stages} * {k}"
        )
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=limit, replace=False)) if limit < n else None
    sample = _read_rows(x, idx)
    params = {
        "num_stages": cfg.num_stages,
        "dimension": dim,
        "codebook_size": k,
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
        books, states, stage_errors, n_iters = _stagewise(train, cfg, beam, iters, rng, bar)
        refine_errors: list[float] = []
        selected = 0
        if hold is not None:
            codes = np.concatenate([st.best_codes for st in states])
            books, refine_errors, selected = refine_codebooks(
                books, train, codes, sample[hold], beam, rounds, bar
            )
    finally:
        if bar is not None:
            bar.close()
    summary = TrainingSummary(
        stage_errors=tuple(stage_errors),
        iterations=tuple(n_iters),
        seconds=time.perf_counter() - t0,
        params=params,
        refine_errors=tuple(refine_errors),
        refine_selected=selected,
    )
    _log.info("fit done in %.3f s: training MSE %.6g", summary.seconds, stage_errors[-1])
    return RvqEncoder(books, cfg, training=summary)
