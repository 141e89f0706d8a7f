"""Files: atomic outputs, the safetensors reader, and one reader and writer per
vector format (``.npy``, ``.fvecs``/``.bvecs``, ``.npz``, CSV/TSV, Parquet, zarr).

Nothing here knows an encoder: readers give arrays, writers take arrays.
"""

from __future__ import annotations

from viva_glyph.files._atomic import (
    Terminated,
    atomic_folder,
    atomic_output,
    check_output,
    removing_temps_on_signals,
)
from viva_glyph.files._vectors import (
    BLOCK_ROWS,
    NpyWriter,
    ParquetWriter,
    VectorFile,
    ZarrWriter,
    open_parquet,
    open_vectors,
    open_writer,
    open_zarr,
    save_array,
)

__all__ = [
    "BLOCK_ROWS",
    "NpyWriter",
    "ParquetWriter",
    "Terminated",
    "VectorFile",
    "ZarrWriter",
    "atomic_folder",
    "atomic_output",
    "check_output",
    "open_parquet",
    "open_vectors",
    "open_writer",
    "open_zarr",
    "removing_temps_on_signals",
    "save_array",
]
