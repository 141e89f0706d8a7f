"""Index files, written: the index's arrays and a header of its settings, as one
safetensors file (:func:`viva_glyph.files.write_file`: atomic, memory maps streamed).
:mod:`viva_glyph.index._file` reads them back; the index builds itself from them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from numpy.typing import NDArray

from viva_glyph._version import __version__
from viva_glyph.core import RvqEncoder
from viva_glyph.files import write_file
from viva_glyph.index._norms import QUANTIZED
from viva_glyph.index._store import Store

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "NORM_GRID", "write_index"]

FORMAT_NAME = "viva-glyph-index"
FORMAT_VERSION = "1"
#: ``norm_grid`` metadata of files whose qint8/cqint8 bytes hold the cross terms on
#: one grid per first-stage code (files without it: one byte of the whole norm).
NORM_GRID = "first_code"

PathLike = str | os.PathLike[str]


def write_index(
    path: PathLike,
    encoder: RvqEncoder,
    store: Store,
    *,
    metric: str,
    norm: str,
    beam_size: int,
    nlist: int | None,
) -> None:
    """Write an index's parts to one safetensors file, atomically.

    Tensors, in this order (a tensor appears only when the index has it):
    ``codebooks`` (M, K, D) F32/F64; ``codes`` (N, M) U8/U16/I32; ``norms`` (N,) F32
    (``norm="float"``) or U8 (``"qint8"``, ``"cqint8"``); ``ids`` (N,) I64;
    ``norm_params`` (K, 3) F64 (qint8: lo, step, bound of each first code's grid of cross
    terms) or (K, 256, 2) F64 (cqint8: level, bound); ``centroids`` (nlist, D)
    and ``offsets`` (nlist + 1,) I64 (IVF). String metadata: ``format``,
    ``format_version``, ``config`` (JSON num_stages/dimension/codebook_size),
    ``metric``, ``norm``, ``norm_grid`` (``"first_code"``, qint8/cqint8 only: the bytes
    hold cross terms on per-first-code grids; files without it hold one byte of the
    whole norm), ``beam_size``, ``nlist`` (``"0"`` for flat), ``count`` (N),
    ``norm_seen`` (the cross terms the grid was trained on), ``library_version``.
    """
    c = encoder.config
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(
            {"num_stages": c.num_stages, "dimension": c.dimension, "codebook_size": c.codebook_size}
        ),
        "metric": metric,
        "norm": norm,
        **({"norm_grid": NORM_GRID} if norm in QUANTIZED else {}),
        "beam_size": str(beam_size),
        "nlist": str(nlist or 0),
        "count": str(len(store.ids)),
        "norm_seen": str(store.norm_seen),
        "library_version": __version__,
    }
    tensors: list[tuple[str, NDArray[Any]]] = [
        ("codebooks", encoder.codebook_array),
        ("codes", store.codes),
    ]
    if store.norms is not None:
        tensors.append(("norms", store.norms))
    tensors.append(("ids", store.ids))
    if store.norm_params.size:
        tensors.append(("norm_params", store.norm_params))
    if store.centroids is not None:
        tensors += [("centroids", store.centroids), ("offsets", store.offsets)]
    write_file(path, tensors, meta)
