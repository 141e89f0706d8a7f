"""Files: atomic outputs, the one safetensors reader and writer (tensors and a header
of strings, for model, index and semantic-ID files), and one reader and writer per
vector format (``.npy``, ``.fvecs``/``.bvecs``, ``.npz``, CSV/TSV, Parquet, zarr).

Nothing here knows an encoder: readers give arrays, writers take arrays.
"""

from __future__ import annotations

from viva_glyph.files._atomic import (
    Terminated,
    atomic_folder,
    atomic_output,
    check_distinct,
    check_output,
    removing_temps_on_signals,
    same_file,
    terminated_by,
)
from viva_glyph.files._binary import npy_header
from viva_glyph.files._safetensors import (
    DTYPES,
    MAX_HEADER_BYTES,
    MAX_JSON_CONTAINERS,
    MAX_JSON_DEPTH,
    Expect,
    FileKind,
    SafetensorsFile,
    Tensor,
    header_problem,
    json_depth,
    not_regular,
    open_file,
    write_file,
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
from viva_glyph.files._writers import create_zarr

__all__ = [
    "BLOCK_ROWS",
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "Expect",
    "FileKind",
    "NpyWriter",
    "ParquetWriter",
    "SafetensorsFile",
    "Tensor",
    "Terminated",
    "VectorFile",
    "ZarrWriter",
    "atomic_folder",
    "atomic_output",
    "check_distinct",
    "check_output",
    "create_zarr",
    "header_problem",
    "json_depth",
    "not_regular",
    "npy_header",
    "open_file",
    "open_parquet",
    "open_vectors",
    "open_writer",
    "open_zarr",
    "removing_temps_on_signals",
    "same_file",
    "save_array",
    "terminated_by",
    "write_file",
]
