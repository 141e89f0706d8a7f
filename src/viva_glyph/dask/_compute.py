# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Running graphs: the current dask.distributed client, progress, and the CLI entry points."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from viva_glyph._validate import positive_int
from viva_glyph.rvq import RvqEncoder

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["compute", "connect", "current_client", "run_encode", "run_fit", "worker_environ"]

logger = logging.getLogger(__name__)


def current_client() -> Client | None:
    """The default dask.distributed client, or None (then dask's local scheduler runs graphs)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is part of the dask extra
        return None
    try:
        return default_client()
    except ValueError:
        return None


def compute(items: Sequence[Any], *, progress: bool = False, desc: str = "tasks") -> list[Any]:
    """Compute dask collections and return their values in order.

    With a dask.distributed client the items run as futures and, when
    ``progress`` is true, a tqdm bar counts them as they finish; without one
    they run on dask's default scheduler.

    Parameters
    ----------
    items : sequence of dask collections (Delayed, Array, ...)
    progress : bool
    desc : str
        Label of the progress bar.
    """
    from dask.base import compute as dask_compute

    client = current_client()
    if client is None:
        return list(dask_compute(*items))
    futures = client.compute(list(items))
    if progress:
        from distributed import as_completed
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        with tqdm(total=len(futures), desc=desc, unit="task") as bar:
            for _ in as_completed(futures):
                bar.update(1)
    values: list[Any] = client.gather(futures)
    return values


#: Environment of worker processes: glibc malloc settings and one viva-glyph
#: thread per worker thread (see :func:`worker_environ`).
WORKER_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": 16 << 20,
    "MALLOC_TRIM_THRESHOLD_": 64 << 20,
    "VIVA_GLYPH_NUM_THREADS": 1,
}


@contextmanager
def worker_environ() -> Iterator[None]:
    """Start worker processes inside this block with malloc settings for block work.

    dask.distributed's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``,
    which also switches off glibc's adaptive mmap threshold: every temporary
    array above 128 KiB is then a fresh ``mmap``, page-faulted in again, and
    freed heap is returned to the system at once. The encoder's per-chunk
    temporaries made block encoding about 2x slower in worker processes than
    in a plain process. Inside this block, new nannies give their workers
    :data:`WORKER_ENVIRON` instead (16 MiB mmap threshold, 64 MiB trim
    threshold): a worker keeps at most that much freed memory for reuse. They
    also get ``VIVA_GLYPH_NUM_THREADS=1``: dask runs one task per worker thread
    and already holds BLAS and OpenMP to one thread there, so beam search and
    k-means run no thread pool of their own inside a task.

    The nanny reads these variables from the dask config and, first, from this
    process's environment (which it also writes), so both are set here and
    restored on exit.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    environ = dict(dask.config.get(key, default={}) or {})
    environ.update(WORKER_ENVIRON)
    saved = {k: os.environ.get(k) for k in WORKER_ENVIRON}
    os.environ.update({k: str(v) for k, v in WORKER_ENVIRON.items()})
    try:
        with dask.config.set({key: environ}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def connect(
    scheduler: str | None = None, local_cluster: int | None = None
) -> Iterator[Client | None]:
    """Client for a running scheduler, or for a fresh LocalCluster; closed on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running dask.distributed scheduler (``tcp://host:8786``).
    local_cluster : int, optional
        Start a LocalCluster of that many single-threaded worker processes
        (under :func:`worker_environ`).

    Yields
    ------
    Client or None
        None when neither is given: dask's local threaded scheduler runs.
    """
    if scheduler is not None and local_cluster is not None:
        raise ValueError("give either scheduler or local_cluster, not both")
    if scheduler is None and local_cluster is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler:
            raise TypeError(f"scheduler must be an address string, got {scheduler!r}")
        with Client(scheduler) as client:
            logger.info("connected to %s", scheduler)
            yield client
        return
    workers = positive_int(local_cluster, "local_cluster")
    with (
        worker_environ(),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info("started a LocalCluster of %d workers", workers)
        yield client


def run_encode(
    encoder: RvqEncoder,
    data_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    scheduler: str | None,
    local_cluster: int | None,
    progress: bool,
    beam_size: int = 1,
    num_stages: int | None = None,
) -> None:
    """Encode a data file on a cluster and write the codes (``.npy`` or ``.zarr`` by suffix).

    Parameters
    ----------
    encoder : RvqEncoder
    data_path : path-like
        ``.npy``, ``.zarr`` or Parquet data, shape (N, D); readable by every worker.
    out_path : path-like
        Destination ``.npy`` file or ``.zarr`` store (codes (N, m), ``encoder.code_dtype``).
    scheduler, local_cluster
        See :func:`connect`.
    progress : bool
        tqdm bar over the blocks.
    beam_size, num_stages
        As for :meth:`RvqEncoder.encode`.
    """
    from viva_glyph.dask._arrays import encode, rows_per_chunk
    from viva_glyph.dask._io import BLOCK_BYTES, open_array, write_codes

    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    align = rows_per_chunk(encoder)
    row_bytes = encoder.config.dimension * 8
    rows = max(1, BLOCK_BYTES // row_bytes // align) * align
    with connect(scheduler, local_cluster):
        X = open_array(data_path, chunk_rows=rows)
        codes = encode(encoder, X, beam_size=beam_size, num_stages=num_stages)
        write_codes(codes, out_path, progress=progress)


def run_fit(
    data_path: str | os.PathLike[str],
    *,
    scheduler: str | None,
    local_cluster: int | None,
    progress: bool,
    **fit_kwargs: Any,
) -> RvqEncoder:
    """Fit an encoder to a data file on a cluster (see :func:`viva_glyph.dask.fit`).

    Parameters
    ----------
    data_path : path-like
        ``.npy``, ``.zarr`` or Parquet data, shape (N, D); readable by every worker.
    scheduler, local_cluster
        See :func:`connect`.
    progress : bool
        tqdm bar per stage.
    **fit_kwargs
        Passed to :func:`viva_glyph.dask.fit` (config, num_stages, codebook_size,
        beam_size, iterations, refine, max_samples, seed).
    """
    from viva_glyph.dask._fit import fit
    from viva_glyph.dask._io import open_array

    with connect(scheduler, local_cluster):
        X = open_array(data_path)
        return fit(X, progress=progress, **fit_kwargs)
