"""viva-glyph on Dask: encode, decode and fit dask arrays, out of core and on clusters.

Needs the ``dask`` extra (``pip install 'viva-glyph[dask]'``: dask.array,
dask.distributed, zarr; Parquet sources also need ``pyarrow``).

- :func:`encode` / :func:`decode`: lazy, row-blocked dask arrays of codes or
  vectors; the encoder is one key of the graph, shipped once per worker.
- :func:`fit`: the residual k-means of :func:`viva_glyph.fit`, one Lloyd
  iteration being a map over row blocks plus a tree reduction.
- Sources :func:`from_npy`, :func:`from_zarr`, :func:`from_parquet`,
  :func:`open_array`; sink :func:`write_codes` (``.npy`` or ``.zarr``).
- :func:`run_fit` / :func:`run_encode`: what ``viva-glyph fit|encode
  --scheduler ADDRESS | --local-cluster N`` run.

Whatever client is current (``distributed.Client(...)``) runs the graphs;
without one, dask's local threaded scheduler does.
"""

from __future__ import annotations

from viva_glyph.checks import require_package

require_package("dask", "viva_glyph.dask")

from viva_glyph.dask._arrays import aligned_rows, decode, encode, rows_per_chunk  # noqa: E402
from viva_glyph.dask._compute import (  # noqa: E402
    compute,
    connect,
    connect_timeout,
    current_client,
    worker_environ,
)
from viva_glyph.dask._fit import fit  # noqa: E402
from viva_glyph.dask._io import from_npy, from_parquet, from_zarr, open_array, write_codes  # noqa: E402
from viva_glyph.dask._run import run_encode, run_fit  # noqa: E402

__all__ = [
    "aligned_rows",
    "compute",
    "connect",
    "connect_timeout",
    "current_client",
    "decode",
    "encode",
    "fit",
    "from_npy",
    "from_parquet",
    "from_zarr",
    "open_array",
    "rows_per_chunk",
    "run_encode",
    "run_fit",
    "worker_environ",
    "write_codes",
]
