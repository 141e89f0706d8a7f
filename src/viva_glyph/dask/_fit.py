# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Residual k-means on a dask array: :func:`viva_glyph.fit` where the data is.

At the defaults a fit trains on a sample of at most 256 rows per code, which
fits in memory: :func:`fit` then draws that sample on the cluster (the same
rows the in-memory fit draws for the same seed), gathers it and trains it with
the in-memory fit's own :func:`viva_glyph.train.train_sample`, so the codebooks
are the in-memory fit's bit for bit. A sample too large for this process's
memory is trained where it lies, by the same code:
the stage loop (:func:`viva_glyph.train.stages.run_stages`), the progressive
k-means and Lloyd loop of :mod:`viva_glyph.train.kmeans`, and the same leaf
functions, with the executor below plugged in. The sampled rows are cut into
the same leaves as in memory (:func:`viva_glyph.train.kmeans.leaf_rows` rows); a
dask block holds ``FANIN**j`` whole leaves, runs the leaf functions on each
and reduces their results as the lower levels of the fan-in-8 tree; the
client builds the upper levels as a graph. So every GEMM has the same shape
and every sum the same order as in memory, and the codebooks equal the
in-memory fit's bit for bit when client and workers use the same BLAS
library and settings.

Each stage re-encodes every leaf from X with the codebooks so far on the
workers; the residuals and their leading principal axes are persisted on the
workers while the stage trains when they fit in a third of the cluster's
memory (else recomputed each pass, out of core).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_magnitude, check_scale, memory_available
from viva_glyph.core import Codebook, RvqConfig, RvqEncoder
from viva_glyph.core.beam import use_lut
from viva_glyph.dask._arrays import as_dask_matrix
from viva_glyph.dask._compute import compute, current_client, shared
from viva_glyph.threads import single_blas_thread
from viva_glyph.train import ITERATIONS, FitParams, train_rows, train_sample
from viva_glyph.train.kmeans import leaf_rows
from viva_glyph.train.rows import FANIN, add_all, tree_reduce
from viva_glyph.train.stages import (
    Piece,
    crosses,
    leaf_encode,
    leaf_pairs,
    leaf_residual,
    leaf_sq_error,
)

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["fit"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest size of a block of leaves (bytes of float32 rows).
BLOCK_BYTES = 64 << 20
#: Share of the cluster's memory that persisted residuals may take.
PERSIST_SHARE = 1 / 3
#: Share of this process's available memory a gathered sample may take (training
#: holds a few more arrays of its size: residuals, a shuffled copy per k-means step).
GATHER_SHARE = 1 / 8


# -- block functions (run on the workers) -------------------------------------------------
def _leaves(block: NDArray[Any], leaf: int) -> list[NDArray[Any]]:
    return [block[s : s + leaf] for s in range(0, block.shape[0], leaf)]


def _map_block(
    block: NDArray[Any], fn: Callable[[NDArray[Any]], NDArray[np.float32]], leaf: int
) -> NDArray[np.float32]:
    with single_blas_thread():
        return np.concatenate([fn(v) for v in _leaves(block, leaf)])


def _reduce_block(
    block: NDArray[Any], fn: Callable[[NDArray[Any]], T], merge: Callable[..., T], leaf: int
) -> T:
    with single_blas_thread():
        return tree_reduce([fn(v) for v in _leaves(block, leaf)], merge)


def _checked_block(
    block: NDArray[Any], block_info: dict[Any, Any] | None = None
) -> NDArray[np.float32]:
    """The rows as float32, checked (NaN, inf, magnitude) with their global row numbers."""
    start = int(block_info[None]["array-location"][0][0]) if block_info else 0
    check_magnitude(block, start)
    return np.asarray(block, dtype=np.float32)


def _max_abs(block: NDArray[Any]) -> NDArray[np.float64]:
    return np.array([[float(np.abs(block).max())]])


def _encoded_leaves(
    block: NDArray[Any], books: Sequence[Codebook], spec: tuple[int, int, bool]
) -> list[tuple[NDArray[Any], list[Piece] | None]]:
    leaf, beam, lut = spec
    cross = crosses(books) if lut else []
    return [(v, leaf_encode(v, books, cross, leaf, beam, lut)) for v in _leaves(block, leaf)]


def _sq_error_block(
    block: NDArray[Any], books: Sequence[Codebook], spec: tuple[int, int, bool]
) -> float:
    with single_blas_thread():
        parts = [leaf_sq_error(p) for _, p in _encoded_leaves(block, books, spec) if p]
        return float(tree_reduce(parts, add_all))


def _residual_block(
    block: NDArray[Any], books: Sequence[Codebook], spec: tuple[int, int, bool]
) -> NDArray[np.float32]:
    with single_blas_thread():
        return np.concatenate([leaf_residual(v, p) for v, p in _encoded_leaves(block, books, spec)])


def _pairs_block(
    block: NDArray[Any],
    books: Sequence[Codebook],
    spec: tuple[int, int, bool],
    pairs: list[NDArray[np.intp]],
) -> NDArray[np.float32]:
    with single_blas_thread():
        leaves = _encoded_leaves(block, books, spec)
        return np.concatenate(
            [leaf_pairs(v, p, books, q) for (v, p), q in zip(leaves, pairs, strict=True)]
        )


# -- client side --------------------------------------------------------------------------
def _tree(parts: list[Any], merge: Callable[..., T]) -> T:
    """Value of ``parts`` reduced by ``merge`` in the fan-in-:data:`FANIN` tree."""
    from dask.delayed import delayed

    while len(parts) > 1:
        parts = [
            delayed(merge, pure=True)(*parts[i : i + FANIN]) for i in range(0, len(parts), FANIN)
        ]
    return compute(parts)[0]


def _aligned(x: da.Array, leaf: int) -> da.Array:
    """``x`` in blocks of ``leaf * FANIN**j`` rows (the last shorter), j >= 0 as large as
    both the input's blocks and :data:`BLOCK_BYTES` allow."""
    per = leaf
    limit = max(leaf, min(max(x.chunks[0]), BLOCK_BYTES // (4 * int(x.shape[1]))))
    while per * FANIN <= limit:
        per *= FANIN
    return x.rechunk({0: per, 1: -1})


class _DaskRows:
    """:class:`viva_glyph.train.rows.Rows` on a dask array of aligned blocks."""

    def __init__(self, arr: da.Array, leaf: int, keep: bool) -> None:
        self.arr, self.leaf, self.keep = arr, leaf, keep

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.arr.shape[0]), int(self.arr.shape[1])

    def map(self, fn: Callable[[NDArray[Any]], NDArray[np.float32]], width: int) -> _DaskRows:
        import dask.array as da

        key = shared(fn)
        out = da.map_blocks(
            _map_block, self.arr, key, self.leaf, dtype=np.float32,
            chunks=(self.arr.chunks[0], (width,)), meta=np.empty((0, width), np.float32),
        )  # fmt: skip
        return _DaskRows(out.persist() if self.keep else out, self.leaf, self.keep)

    def reduce(self, fn: Callable[[NDArray[Any]], T], merge: Callable[..., T]) -> T:
        from dask.delayed import delayed

        key = shared(fn)
        blocks = self.arr.to_delayed().ravel()
        return _tree([delayed(_reduce_block, pure=True)(b, key, merge, self.leaf)
                      for b in blocks], merge)  # fmt: skip

    def take(self, rows: NDArray[np.intp]) -> NDArray[Any]:
        return np.asarray(compute([self.arr[rows]])[0])


class _DaskTraining:
    """:class:`viva_glyph.train.stages.TrainingRows` on the workers: leaves re-encoded per pass."""

    def __init__(self, x: da.Array, k: int, beam: int, lut: bool, keep: bool) -> None:
        self.leaf = leaf_rows(k, int(x.shape[1]))
        self.spec = (self.leaf, beam, lut)
        self.x = _aligned(x, self.leaf)
        self.keep = keep
        self.books: list[Codebook] = []
        self._shared: tuple[int, Any] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x.shape[0]), int(self.x.shape[1])

    def _books(self) -> Any:
        """The codebooks so far, shared once per stage (every pass of a stage reads them)."""
        if self._shared is None or self._shared[0] != len(self.books):
            self._shared = (len(self.books), shared(tuple(self.books)))
        return self._shared[1]

    def checked(self) -> None:
        """Check every row (as the in-memory fit reads them) and the data's scale."""
        import dask.array as da

        d = self.shape[1]
        self.x = da.map_blocks(
            _checked_block, self.x, dtype=np.float32, meta=np.empty((0, d), np.float32)
        )
        big = da.map_blocks(_max_abs, self.x, dtype=np.float64,
                            chunks=((1,) * self.x.numblocks[0], (1,)))  # fmt: skip
        check_scale(float(compute([big.max()])[0]))

    def advance(self, books: Sequence[Codebook]) -> float:
        from dask.delayed import delayed

        self.books = list(books)
        key = self._books()
        parts = [delayed(_sq_error_block, pure=True)(b, key, self.spec)
                 for b in self.x.to_delayed().ravel()]  # fmt: skip
        return float(_tree(parts, add_all))

    def residuals(self) -> _DaskRows:
        import dask.array as da

        d = self.shape[1]
        r = da.map_blocks(_residual_block, self.x, self._books(), self.spec, dtype=np.float32,
                          meta=np.empty((0, d), np.float32))  # fmt: skip
        return _DaskRows(r.persist() if self.keep else r, self.leaf, self.keep)

    def pair_residuals(self, pick: NDArray[np.intp]) -> _DaskRows:
        import dask.array as da
        from dask.delayed import delayed

        b = 1  # beams per row after the stages so far
        for book in self.books:
            b = min(self.spec[1], b * book.size)
        d = self.shape[1]
        key = self._books()
        bounds = np.cumsum((0, *self.x.chunks[0]))
        parts = []
        for blk, lo, hi in zip(self.x.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True):
            starts = np.arange(lo, hi, self.leaf)
            cut = np.searchsorted(pick, np.append(starts, hi) * b)
            local = [pick[cut[i] : cut[i + 1]] - s * b for i, s in enumerate(starts)]
            if cut[-1] > cut[0]:
                task = delayed(_pairs_block, pure=True)(blk, key, self.spec, local)
                parts.append(da.from_delayed(task, shape=(int(cut[-1] - cut[0]), d),
                                             dtype=np.float32))  # fmt: skip
        r = _aligned(da.concatenate(parts), self.leaf)
        return _DaskRows(r.persist() if self.keep else r, self.leaf, self.keep)


def _memory_budget() -> float:
    """Bytes that persisted residuals may take on the workers (or locally)."""
    client = current_client()
    if client is None:
        return PERSIST_SHARE * memory_available()
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    total = sum(w.get("memory_limit") or memory_available() for w in workers)
    return PERSIST_SHARE * total


def _gathered(x: da.Array) -> NDArray[np.float32]:
    """The rows of ``x`` as one float32 array in this process, checked on the workers."""
    import dask.array as da

    d = int(x.shape[1])
    checked = da.map_blocks(_checked_block, x, dtype=np.float32, meta=np.empty((0, d), np.float32))
    return np.asarray(compute([checked])[0], dtype=np.float32)


def fit(
    X: da.Array,
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
    persist: bool | None = None,
    gather: bool | None = None,
) -> RvqEncoder:
    """Fit RVQ codebooks to a dask array on the current scheduler or cluster.

    Parameters are those of :func:`viva_glyph.fit` (same defaults, same
    random sample and seeding draws for the same ``seed``), plus ``persist``
    and ``gather``.

    Parameters
    ----------
    X : dask.array.Array, shape (N, D), real dtype
        Training vectors, e.g. from :func:`viva_glyph.dask.from_npy`.
    config : RvqConfig, optional
    num_stages : int, optional
    codebook_size : int or sequence of int, optional
        One size for every stage, or one per stage (e.g. ``[16, 256, 256]``).
    beam_size : int, optional
        B > 1 trains every stage on the residuals of the B-beam encoding
        (default: the preset's).
    iterations : int
        Most Lloyd iterations per dimension step of a stage's k-means, as in memory.
    refine : int
        Rounds of joint least-squares refinement, as in memory; needs the sample
        gathered (``gather``).
    max_samples : int, optional
        Train on a uniform random sample of at most this many rows; default
        ``256 * codebook_size`` as in memory: pass N (or more) to train on all rows.
    seed : int
    progress : bool
        tqdm bar over the stages.
    preset : {"fast", "balanced", "quality"}, optional
        As in memory; the presets' rounds need the sample gathered (``gather``).
    persist : bool, optional
        Training on the workers only: keep each stage's residuals in their memory
        while it trains; default: when they (with their leading principal axes,
        < 8 bytes per value) take at most a third of the cluster's memory.
    gather : bool, optional
        Draw the sample on the cluster and train it in this process, exactly as
        :func:`viva_glyph.fit` trains it (True), or train where the rows lie
        (False: the stage loop's passes run on the workers). Default: gather when
        the sample takes at most :data:`GATHER_SHARE` of the memory available here.

    Returns
    -------
    RvqEncoder
        float32 codebooks, equal bit for bit to :func:`viva_glyph.fit`'s on the
        same rows (given the same BLAS library and settings); ``.training`` holds
        a :class:`viva_glyph.TrainingSummary` (``params["distributed"]`` is True,
        ``params["gathered"]`` says which path trained).
    """
    t0 = time.perf_counter()
    params = FitParams(
        config, num_stages, codebook_size, beam_size, iterations, refine, max_samples, seed,
        preset,
    )  # fmt: skip
    if persist is not None and not isinstance(persist, bool):
        raise TypeError(f"persist must be a bool or None, got {type(persist).__name__}")
    if gather is not None and not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool or None, got {type(gather).__name__}")
    x = as_dask_matrix(X, None)
    n, dim = (int(s) for s in x.shape)
    cfg, rows = params.resolve(n, dim)
    local = gather if gather is not None else rows * dim * 4 <= GATHER_SHARE * memory_available()
    if (params.refine or params.rounds) and not local:
        raise ValueError(
            f"{'refine > 0' if params.refine else f'preset {params.preset!r}'} needs the "
            "sample in memory: fit with gather=True, or in memory with viva_glyph.fit on "
            "a sample"
        )
    rng = np.random.default_rng(params.seed)
    idx = params.sample_rows(n, rows, rng)
    if idx is not None:
        x = x[idx]
    record = params.record(cfg, rows)
    record["distributed"] = True
    record["gathered"] = bool(local)
    if local:  # the in-memory fit's training, on the same rows
        _log.info("fitting %s on %d of %d rows, gathered from the cluster", cfg, rows, n)
        sample = _gathered(x)
        check_scale(float(np.abs(sample).max()))
        return train_sample(sample, params, cfg, rng, progress=progress, record=record, started=t0)
    k = cfg.codebook_size
    # persisted: a stage's residuals and their leading principal axes (< 2 * rows * dim)
    keep = persist if persist is not None else rows * dim * 8 <= _memory_budget()
    record["persisted"] = bool(keep)
    _log.info("fitting %s on %d of %d rows (%d blocks, persist=%s)", cfg, rows, n,
              x.numblocks[0], keep)  # fmt: skip
    data = _DaskTraining(x, k, params.train_beam, use_lut(cfg, params.train_beam), keep)
    data.checked()
    return train_rows(
        data, params, cfg, rng, progress=progress, desc="viva_glyph.dask.fit", record=record,
        started=t0,
    )  # fmt: skip
