# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""The command line's cluster jobs: encode a file, fit to a file, on a scheduler or a
LocalCluster (:func:`viva_glyph.dask.connect`)."""

from __future__ import annotations

import os
from typing import Any

from viva_glyph.core import RvqEncoder
from viva_glyph.dask._arrays import encode, rows_per_chunk
from viva_glyph.dask._compute import connect
from viva_glyph.dask._fit import fit
from viva_glyph.dask._io import BLOCK_BYTES, open_array, write_codes

__all__ = ["run_encode", "run_fit"]


def run_encode(
    encoder: RvqEncoder,
    data_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    scheduler: str | None,
    local_cluster: int | None,
    progress: bool,
    beam_size: int | None = None,
    num_stages: int | None = None,
    timeout: float | None = None,
    quiet: bool = False,
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
    timeout, quiet
        See :func:`connect`.
    """
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    align = rows_per_chunk(encoder)
    row_bytes = encoder.config.dimension * 8
    rows = max(1, BLOCK_BYTES // row_bytes // align) * align
    with connect(scheduler, local_cluster, timeout=timeout, quiet=quiet):
        X = open_array(data_path, chunk_rows=rows)
        codes = encode(encoder, X, beam_size=beam_size, num_stages=num_stages)
        write_codes(codes, out_path, progress=progress)


def run_fit(
    data_path: str | os.PathLike[str],
    *,
    scheduler: str | None,
    local_cluster: int | None,
    progress: bool,
    timeout: float | None = None,
    quiet: bool = False,
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
    timeout, quiet
        See :func:`connect`.
    **fit_kwargs
        Passed to :func:`viva_glyph.dask.fit` (config, num_stages, codebook_size,
        beam_size, iterations, refine, max_samples, seed).
    """
    with connect(scheduler, local_cluster, timeout=timeout, quiet=quiet):
        X = open_array(data_path)
        return fit(X, progress=progress, **fit_kwargs)
