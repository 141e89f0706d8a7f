# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Distributed residual k-means: :func:`viva_glyph.fit` on a dask array.

The same training as :func:`viva_glyph.training.fit` (same parameters, same
random draws, same stopping rule), with every pass over the data a map over row
blocks:

- stage m trains on what the (beam) encoding of stages 1..m-1 leaves over;
  each block recomputes its residuals from X with the encoder of the stages so
  far, and they are persisted on the workers while a stage trains when they
  fit in a third of the cluster's memory (else recomputed each pass, out of
  core);
- each stage is :func:`viva_glyph.kmeans.progressive_kmeans`: the residuals'
  mean and covariance (one reduction) give the principal axes; k-means++
  (:func:`viva_glyph.kmeans.kmeans_plus_plus`) on the same random sample of
  rotated rows the in-memory fit draws (16 K rows, the only rows that reach the
  client) seeds Lloyd runs on growing leading dimensions;
- a Lloyd iteration: :func:`viva_glyph.kmeans.partial_step` (assign +
  accumulate) on each block, a tree reduction with
  :func:`viva_glyph.kmeans.combine`, and :func:`viva_glyph.kmeans.update` on
  the client.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._kernels import chunk_rows
from viva_glyph._validate import require_finite
from viva_glyph.beam import beam_start, beam_step, use_lut
from viva_glyph.codebook import Codebook
from viva_glyph.dask._arrays import as_dask_matrix
from viva_glyph.dask._compute import compute, current_client
from viva_glyph.kmeans import (
    PROGRESSIVE_STEPS,
    SEED_SAMPLES_PER_CODE,
    TOL,
    Accumulation,
    combine,
    kmeans_plus_plus,
    partial_step,
    update,
)
from viva_glyph.rvq import RvqConfig, RvqEncoder
from viva_glyph.training import (
    BEAM_SAMPLES_PER_CODE,
    TrainingSummary,
    _fit_args,
    _nonneg_int,
    _residual,
)

if TYPE_CHECKING:
    import dask.array as da
    from dask.delayed import Delayed

__all__ = ["fit"]

_log = logging.getLogger(__name__)

#: Blocks combined per node of the reduction tree.
SPLIT_EVERY = 8
#: Share of the cluster's memory that persisted residuals may take.
PERSIST_SHARE = 1 / 3

Moments = tuple[int, NDArray[np.float64], NDArray[np.float64]]


# -- block functions (run on the workers) -------------------------------------------------
def _residual_block(
    block: NDArray[Any],
    books: Sequence[Codebook],
    beam: int,
    block_info: dict[Any, Any] | None = None,
) -> NDArray[np.float32]:
    """What the beam encoding with ``books`` leaves of each row, float32 (n, D)."""
    start = int(block_info[None]["array-location"][0][0]) if block_info else 0
    if not books:
        require_finite(block, start)
        return np.array(block, dtype=np.float32, copy=True)
    try:
        codes = RvqEncoder(books).encode(block, beam_size=beam)
    except ValueError as exc:  # name the global row, not the row inside the block
        raise ValueError(f"block starting at row {start}: {exc}") from exc
    return _residual(block, list(books), codes)


def _rotate_block(
    block: NDArray[Any], mean: NDArray[np.float32], axes: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Rows centred and turned to the principal ``axes`` (D, d), float32 (n, d)."""
    out: NDArray[np.float32] = (block - mean) @ axes
    return out


def _moments_block(block: NDArray[Any], centre: NDArray[np.float32]) -> Moments:
    """Row count, column sums and Gram matrix of ``block - centre``, in float64."""
    x = (block - centre).astype(np.float64)
    return x.shape[0], x.sum(axis=0), x.T @ x


def _add_moments(*parts: Moments) -> Moments:
    return (
        sum(p[0] for p in parts),
        functools.reduce(np.add, [p[1] for p in parts]),
        functools.reduce(np.add, [p[2] for p in parts]),
    )


def _beam_pair_block(
    block: NDArray[Any],
    books: Sequence[Codebook],
    beam: int,
    start: int,
    pairs: NDArray[np.intp],
) -> NDArray[np.float32]:
    """Residuals of the (row, beam) pairs ``pairs`` (index row * b + beam) of a block."""
    require_finite(block, start)
    n, d = block.shape
    per = max(1, chunk_rows(books[0].size if books else 1, d, 4) // beam)
    codes = []
    for lo in range(0, n, per):
        state = beam_start(block[lo : lo + per], np.float32)
        for book in books:
            state = beam_step(state, book, beam)
        codes.append(state.codes)
    allc = np.concatenate(codes)  # (n, b, m)
    rows, beams = np.divmod(pairs, allc.shape[1])
    return _residual(block[rows], list(books), allc[rows, beams])


def _sum_squares(block: NDArray[Any]) -> NDArray[np.float64]:
    r = block.astype(np.float64)
    return np.array([[np.einsum("nd,nd->", r, r)]])


def _combine_many(*parts: Accumulation) -> Accumulation:
    return functools.reduce(combine, parts)


# -- client side --------------------------------------------------------------------------
def _tree(parts: list[Delayed], merge: Any) -> Any:
    """Value of ``parts`` reduced by ``merge`` in a tree of fan-in :data:`SPLIT_EVERY`."""
    from dask.delayed import delayed

    while len(parts) > 1:
        parts = [
            delayed(merge, pure=True)(*parts[i : i + SPLIT_EVERY])
            for i in range(0, len(parts), SPLIT_EVERY)
        ]
    return compute(parts)[0]


def _lloyd_pass(R: da.Array, centroids: NDArray[Any]) -> Accumulation:
    """One assignment pass: per-block partial sums, reduced as a tree."""
    from dask.delayed import delayed

    key = delayed(np.ascontiguousarray(centroids, dtype=np.float32), pure=True, traverse=False)
    parts = [delayed(partial_step, pure=True)(b, key) for b in R.to_delayed().ravel()]
    total: Accumulation = _tree(parts, _combine_many)
    return total


def _lloyd(
    R: da.Array, init: NDArray[Any], iterations: int, rng: np.random.Generator
) -> tuple[NDArray[np.float64], int]:
    """:func:`viva_glyph.kmeans.lloyd` from ``init``: same iterations and stopping rule."""
    cent = np.array(init, dtype=np.float64, copy=True)
    prev = math.inf
    n_iter = 0
    for it in range(iterations):
        sums, counts, inertia = _lloyd_pass(R, cent)
        cent, n_empty = update(sums, counts, cent, rng)
        n_iter = it + 1
        _log.debug("k-means iteration %d: inertia %.6g, %d empty", n_iter, inertia, n_empty)
        if n_empty == 0 and math.isfinite(prev) and prev - inertia <= TOL * prev:
            break
        prev = inertia
    return cent, n_iter


def _progressive_kmeans(
    R: da.Array, k: int, iterations: int, rng: np.random.Generator, keep: bool
) -> tuple[NDArray[np.float64], int]:
    """:func:`viva_glyph.kmeans.progressive_kmeans` on the blocks of ``R``."""
    import dask.array as da
    from dask.delayed import delayed

    n, d = (int(s) for s in R.shape)
    blocks = R.to_delayed().ravel()

    def moments(about: NDArray[np.float32]) -> Moments:
        key = delayed(about, pure=True, traverse=False)
        return _tree([delayed(_moments_block, pure=True)(b, key) for b in blocks], _add_moments)

    # Two passes, as in memory: the mean, then the covariance of the centred rows.
    count, total, _ = moments(np.zeros(d, dtype=np.float32))
    mean = total / count
    _, _, gram = moments(mean.astype(np.float32))
    _, vecs = np.linalg.eigh(gram / count)
    rot = vecs[:, ::-1]  # principal axes, largest variance first
    axes = delayed(rot.astype(np.float32), pure=True, traverse=False)
    centre = delayed(mean.astype(np.float32), pure=True, traverse=False)
    xr = da.map_blocks(
        _rotate_block, R, centre, axes, dtype=np.float32, meta=np.empty((0, d), np.float32)
    )
    if keep:
        xr = xr.persist()
    dims = sorted({max(1, min(d, round(d ** ((i + 1) / PROGRESSIVE_STEPS))))
                   for i in range(PROGRESSIVE_STEPS)})  # fmt: skip
    m = min(n, SEED_SAMPLES_PER_CODE * k)
    pick = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
    sample = np.asarray(compute([xr[pick, : dims[0]]])[0])
    cent = kmeans_plus_plus(sample, k, rng)
    n_iter = 0
    for di in dims:
        init = np.zeros((k, di))
        init[:, : cent.shape[1]] = cent
        cent, it = _lloyd(xr[:, :di], init, iterations, rng)
        n_iter += it
    out: NDArray[np.float64] = cent @ rot.T + mean
    return out, n_iter


def _memory_budget() -> float:
    """Bytes that persisted residuals may take on the workers (or locally)."""
    import psutil  # type: ignore[import-untyped]

    client = current_client()
    if client is None:
        return PERSIST_SHARE * psutil.virtual_memory().available
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    total = sum(w.get("memory_limit") or psutil.virtual_memory().total for w in workers)
    return PERSIST_SHARE * total


def _residuals(X: da.Array, books: Sequence[Codebook], beam: int) -> da.Array:
    import dask.array as da
    from dask.delayed import delayed

    key = delayed(tuple(books), pure=True, traverse=False)
    return da.map_blocks(
        _residual_block,
        X,
        key,
        beam,
        dtype=np.float32,
        meta=np.empty((0, X.shape[1]), dtype=np.float32),
        token="viva-glyph-residual",
    )


def _beam_residuals(
    X: da.Array, books: Sequence[Codebook], beam: int, k: int, rng: np.random.Generator
) -> da.Array:
    """:func:`viva_glyph.training._beam_residuals` on blocks: the same draw of pairs."""
    import dask.array as da
    from dask.delayed import delayed

    n, d = (int(s) for s in X.shape)
    b = 1  # beams per row after the stages so far
    for _ in books:
        b = min(beam, b * k)
    cap = BEAM_SAMPLES_PER_CODE * k
    pick = np.sort(rng.choice(n * b, cap, replace=False)) if n * b > cap else np.arange(n * b)
    key = delayed(tuple(books), pure=True, traverse=False)
    parts = []
    bounds = np.cumsum((0, *X.chunks[0]))
    for blk, lo, hi in zip(X.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True):
        a, z = np.searchsorted(pick, [lo * b, hi * b])
        if z > a:
            task = delayed(_beam_pair_block, pure=True)(blk, key, beam, int(lo), pick[a:z] - lo * b)
            parts.append(da.from_delayed(task, shape=(int(z - a), d), dtype=np.float32))
    return da.concatenate(parts)


def _mse(R: da.Array) -> float:
    import dask.array as da

    sq = da.map_blocks(_sum_squares, R, dtype=np.float64, chunks=((1,) * R.numblocks[0], (1,)))
    return float(compute([sq.sum()])[0]) / int(R.shape[0])


def fit(
    X: da.Array,
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
    persist: bool | None = None,
) -> RvqEncoder:
    """Fit RVQ codebooks to a dask array on the current scheduler or cluster.

    Parameters are those of :func:`viva_glyph.fit` (same defaults, same
    random sample and seeding draws for the same ``seed``), plus ``persist``.

    Parameters
    ----------
    X : dask.array.Array, shape (N, D), real dtype
        Training vectors, e.g. from :func:`viva_glyph.dask.from_npy`.
    config : RvqConfig, optional
    num_stages, codebook_size : int, optional
    beam_size : int
        B > 1 trains every stage on the residuals of the B-beam encoding.
    iterations : int
        Maximum k-means iterations per stage (stops at < 1e-4 relative gain).
    refine : int
        Must be 0: joint least-squares refinement is only in :func:`viva_glyph.fit`.
    max_samples : int, optional
        Train on a uniform random sample of at most this many rows; default
        ``256 * codebook_size`` as in memory: pass N (or more) to train on all rows.
    seed : int
    progress : bool
        tqdm bar over the stages.
    persist : bool, optional
        Keep each stage's residuals in the workers' memory while it trains;
        default: when they take at most a third of the cluster's memory.

    Returns
    -------
    RvqEncoder
        float32 codebooks; ``.training`` holds a :class:`viva_glyph.TrainingSummary`
        (``params["distributed"]`` is True).
    """
    t0 = time.perf_counter()
    x = as_dask_matrix(X, None)
    n, dim = (int(s) for s in x.shape)
    cfg, beam, iters, seed, limit = _fit_args(
        n, dim, config, num_stages, codebook_size, beam_size, iterations, seed, max_samples
    )
    if _nonneg_int(refine, "refine"):
        raise ValueError(
            "refine > 0 is not supported on dask arrays; fit without it, or refine "
            "in memory with viva_glyph.fit on a sample"
        )
    k = cfg.codebook_size
    if persist is not None and not isinstance(persist, bool):
        raise TypeError(f"persist must be a bool or None, got {type(persist).__name__}")
    rng = np.random.default_rng(seed)
    if limit < n:
        x = x[np.sort(rng.choice(n, size=limit, replace=False))]
    rows = int(x.shape[0])
    keep = persist if persist is not None else rows * dim * 4 <= _memory_budget()
    params: dict[str, Any] = {
        "num_stages": cfg.num_stages, "dimension": dim, "codebook_size": k, "beam_size": beam,
        "iterations": iters, "refine": 0, "max_samples": max_samples, "seed": seed,
        "samples_used": rows, "distributed": True, "persisted": bool(keep),
    }  # fmt: skip
    _log.info("fitting %s on %d of %d rows (%d blocks, persist=%s)", cfg, rows, n,
              x.numblocks[0], keep)  # fmt: skip
    all_beams = use_lut(cfg, beam)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=cfg.num_stages, desc="viva_glyph.dask.fit", unit="stage")
    books: list[Codebook] = []
    errors: list[float] = []
    n_iters: list[int] = []
    try:
        for stage in range(cfg.num_stages + 1):
            R = _residuals(x, books, beam)  # persisted (when kept) once rotated
            if stage:
                errors.append(_mse(R))
                _log.info("stage %d/%d: %d k-means iterations, training MSE %.6g",
                          stage, cfg.num_stages, n_iters[-1], errors[-1])  # fmt: skip
                if bar is not None:
                    bar.update(1)
            if stage == cfg.num_stages:
                break
            if all_beams:  # as in memory: a capped sample of every beam's residual
                R = _beam_residuals(x, books, beam, k, rng)
            cent, n_iter = _progressive_kmeans(R, k, iters, rng, keep)
            books.append(Codebook(cent, dtype=np.float32))
            n_iters.append(n_iter)
            del R
    finally:
        if bar is not None:
            bar.close()
    summary = TrainingSummary(
        stage_errors=tuple(errors),
        iterations=tuple(n_iters),
        seconds=time.perf_counter() - t0,
        params=params,
    )
    return RvqEncoder(books, cfg, training=summary)
