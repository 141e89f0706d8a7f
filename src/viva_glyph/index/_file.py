"""Index files: one safetensors file, written atomically, codes memory-mapped on load.

Tensors, in this order (a tensor appears only when the index has it):

- ``codebooks`` (M, K, D) F32/F64; ``codes`` (N, M) U8/U16/I32;
- ``norms`` (N,) F32 (``norm="float"``) or U8 (``"qint8"``, ``"cqint8"``);
- ``ids`` (N,) I64; ``norm_params`` (2,) or (256,) F32 (quantized norms);
- ``centroids`` (nlist, D) and ``offsets`` (nlist + 1,) I64 (IVF).

String metadata: ``format`` (``"viva-glyph-index"``), ``format_version``
(``"1"``), ``config`` (JSON num_stages/dimension/codebook_size), ``metric``,
``norm``, ``beam_size``, ``nlist`` (``"0"`` for flat), ``count`` (N),
``library_version``. :func:`load` refuses anything but a regular file, reads
and checks the header (length capped, every dtype, shape and offset against
the metadata and the file size) before it reads any tensor data, and
memory-maps codes, norms and ids.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph._kernels import code_dtype
from viva_glyph._version import __version__
from viva_glyph.codebook import Codebook
from viva_glyph.config import RvqConfig
from viva_glyph.encoder import RvqEncoder
from viva_glyph.index._index import METRICS, RvqIndex
from viva_glyph.index._norms import NORM_MODES, stored_dtype
from viva_glyph.io import MAX_HEADER_BYTES, ModelFormatError, atomic_output

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "IndexFormatError", "load", "save"]

FORMAT_NAME = "viva-glyph-index"
FORMAT_VERSION = "1"
_CODES = {"U8": np.uint8, "U16": np.uint16, "I32": np.int32, "F32": np.float32}
_CODES.update({"F64": np.float64, "I64": np.int64})
_NAMES = {np.dtype(v): k for k, v in _CODES.items()}
#: Rows written per step (memory maps are streamed, never copied whole).
_WRITE_ROWS = 1 << 20

PathLike = str | os.PathLike[str]


class IndexFormatError(ModelFormatError):
    """An index file is malformed, truncated, of another format or version."""


def _tensors(index: RvqIndex) -> Iterator[tuple[str, NDArray[Any]]]:
    s = index.store
    yield "codebooks", index.encoder.codebook_array
    yield "codes", s.codes
    if s.norms is not None:
        yield "norms", s.norms
    yield "ids", s.ids
    if s.norm_params.size:
        yield "norm_params", s.norm_params
    if s.centroids is not None:
        yield "centroids", s.centroids
        yield "offsets", s.offsets


def save(index: RvqIndex, path: PathLike) -> None:
    """Write ``index`` to one safetensors file, atomically (temporary file + rename).

    Parameters
    ----------
    index : RvqIndex
    path : str or PathLike
        Conventionally ``*.vgindex``; replaced only once the new file is complete.
    """
    if not isinstance(index, RvqIndex):
        raise TypeError(f"index must be an RvqIndex, got {type(index).__name__}")
    if index.nlist is not None and index.store.centroids is None:
        raise ValueError("an untrained IVF index cannot be saved: add vectors first")
    c = index.encoder.config
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(
            {"num_stages": c.num_stages, "dimension": c.dimension, "codebook_size": c.codebook_size}
        ),
        "metric": index.metric,
        "norm": index.norm,
        "beam_size": str(index.beam_size),
        "nlist": str(index.nlist or 0),
        "count": str(len(index)),
        "library_version": __version__,
    }
    header: dict[str, Any] = {"__metadata__": meta}
    at = 0
    arrays = list(_tensors(index))
    for name, arr in arrays:
        size = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [at, at + size],
        }
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for _, arr in arrays:
            for a in range(0, max(arr.shape[0], 1), _WRITE_ROWS):
                fh.write(np.ascontiguousarray(arr[a : a + _WRITE_ROWS]).tobytes())
        fh.flush()


def _fail(path: PathLike, why: str) -> IndexFormatError:
    return IndexFormatError(f"{os.fspath(path)} is not a valid viva-glyph index file: {why}")


def _read_header(path: PathLike) -> tuple[dict[str, Any], int, int]:
    """The parsed header, where the data starts, and the file size."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise _fail(path, "not a regular file")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _fail(path, f"file is {len(head)} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER_BYTES:
            raise _fail(path, f"header length {n} outside [2, {MAX_HEADER_BYTES}]")
        if 8 + n > info.st_size:
            raise _fail(
                path, f"header length {n} runs past the end of the {info.st_size}-byte file"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    return header, 8 + n, info.st_size


def _meta(header: dict[str, Any], path: PathLike) -> dict[str, Any]:
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(path, "metadata missing or not a map of strings")
    if meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.get('format_version')!r} is not supported")
    try:
        cfg = json.loads(meta.get("config", ""))
        if not isinstance(cfg, dict) or set(cfg) != {"num_stages", "dimension", "codebook_size"}:
            raise ValueError("config keys")
        config = RvqConfig(**cfg)
        count, nlist, beam = (int(meta[key]) for key in ("count", "nlist", "beam_size"))
        if count < 0 or nlist < 0 or beam < 1 or count > 1 << 40 or nlist > 1 << 24:
            raise ValueError("range")
    except (ValueError, TypeError, KeyError, RecursionError):
        raise _fail(path, "config, count, nlist or beam_size is not valid") from None
    if meta.get("metric") not in METRICS or meta.get("norm") not in NORM_MODES:
        raise _fail(path, f"metric {meta.get('metric')!r} / norm {meta.get('norm')!r} unknown")
    if meta["norm"] == "none" and meta["metric"] != "ip":
        raise _fail(path, 'norm "none" with a metric other than "ip"')
    return {**meta, "config": config, "count": count, "nlist": nlist, "beam": beam}


def _expected(m: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], set[np.dtype[Any]]]]:
    c: RvqConfig = m["config"]
    n, nlist = m["count"], m["nlist"]
    floats: set[np.dtype[Any]] = {np.dtype(np.float32), np.dtype(np.float64)}
    i64: set[np.dtype[Any]] = {np.dtype(np.int64)}
    f32: set[np.dtype[Any]] = {np.dtype(np.float32)}
    out: dict[str, tuple[tuple[int, ...], set[np.dtype[Any]]]] = {
        "codebooks": ((c.num_stages, c.codebook_size, c.dimension), floats),
        "codes": ((n, c.num_stages), {code_dtype(c.codebook_size)}),
    }
    nd = stored_dtype(m["norm"])
    if nd is not None:
        out["norms"] = ((n,), {nd})
    out["ids"] = ((n,), i64)
    if m["norm"] in ("qint8", "cqint8") and n:
        out["norm_params"] = ((2 if m["norm"] == "qint8" else 256,), f32)
    if nlist:
        out["centroids"] = ((nlist, c.dimension), floats)
        out["offsets"] = ((nlist + 1,), i64)
    return out


def _check_layout(
    header: dict[str, Any], m: dict[str, Any], data_bytes: int, path: PathLike
) -> dict[str, tuple[np.dtype[Any], tuple[int, ...], int]]:
    want = _expected(m)
    if set(header) != set(want):
        raise _fail(path, f"tensors {sorted(header)} differ from the expected {sorted(want)}")
    at = 0
    out: dict[str, tuple[np.dtype[Any], tuple[int, ...], int]] = {}
    for name in want:  # the order save() writes them in
        entry = header[name]
        if not isinstance(entry, dict):
            raise _fail(path, f"tensor {name!r} entry is not a JSON object")
        shape, dtypes = want[name]
        dt = np.dtype(_CODES[entry["dtype"]]) if entry.get("dtype") in _CODES else None
        if dt is None or dt not in dtypes:
            raise _fail(path, f"tensor {name!r} has dtype {entry.get('dtype')!r}")
        if entry.get("shape") != list(shape):
            raise _fail(path, f"tensor {name!r} has shape {entry.get('shape')!r}, expected {shape}")
        size = math.prod(shape) * dt.itemsize
        if entry.get("data_offsets") != [at, at + size]:
            raise _fail(path, f"tensor {name!r} offsets {entry.get('data_offsets')!r} are wrong")
        out[name] = (dt, shape, at)
        at += size
    if at != data_bytes:
        raise _fail(path, f"{data_bytes} bytes of tensor data, expected {at} (truncated?)")
    return out


def load(path: PathLike) -> RvqIndex:
    """Open an index written by :meth:`RvqIndex.save`; codes, norms and ids are memory-mapped.

    Raises
    ------
    IndexFormatError
        (a ``ValueError``) for a malformed, truncated or foreign file.
    OSError
        When the file cannot be read.
    """
    header, start, size = _read_header(path)
    meta = _meta(header, path)
    layout = _check_layout(header, meta, size - start, path)

    def small(name: str) -> NDArray[Any]:
        dt, shape, at = layout[name]
        with open(path, "rb") as fh:
            fh.seek(start + at)
            return np.frombuffer(fh.read(math.prod(shape) * dt.itemsize), dt).reshape(shape)

    def mapped(name: str) -> NDArray[Any]:
        dt, shape, at = layout[name]
        if math.prod(shape) == 0:
            return np.empty(shape, dt)
        return np.memmap(path, dtype=dt, mode="r", offset=start + at, shape=shape)

    stack = small("codebooks")
    if not np.isfinite(stack).all():
        raise _fail(path, "codebooks hold NaN or inf")
    encoder = RvqEncoder([Codebook(b, dtype=stack.dtype) for b in stack])
    nlist = meta["nlist"] or None
    index = RvqIndex(
        encoder, metric=meta["metric"], norm=meta["norm"], beam_size=meta["beam"], nlist=nlist
    )
    s = index.store
    s.codes, s.ids = mapped("codes"), mapped("ids")
    k = encoder.config.codebook_size
    small_k = k < 256**encoder.code_dtype.itemsize  # else every stored value is valid
    if s.codes.size and small_k and (int(s.codes.max()) >= k or int(s.codes.min()) < 0):
        raise _fail(path, f"codes outside [0, {k})")
    if "norms" in layout:
        s.norms = mapped("norms")
        if meta["norm"] == "float" and not np.isfinite(s.norms).all():
            raise _fail(path, "norms hold NaN or inf")
    if "norm_params" in layout:
        s.norm_params = small("norm_params").copy()
        if not np.isfinite(s.norm_params).all():
            raise _fail(path, "norm parameters hold NaN or inf")
    if nlist:
        s.centroids, s.offsets = small("centroids").copy(), small("offsets").copy()
        if not np.isfinite(s.centroids).all():
            raise _fail(path, "centroids hold NaN or inf")
        if s.offsets[0] != 0 or s.offsets[-1] != meta["count"] or (np.diff(s.offsets) < 0).any():
            raise _fail(path, "IVF list offsets are not a partition of the rows")
    else:
        s.offsets = np.array([0, meta["count"]], dtype=np.int64)
    return index
