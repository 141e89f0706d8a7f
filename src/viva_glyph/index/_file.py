"""Index files, read: one safetensors file, codes memory-mapped on load (the writer is
:mod:`viva_glyph.index._save`).

Tensors, in this order (a tensor appears only when the index has it):

- ``codebooks`` (M, K, D) F32/F64; ``codes`` (N, M) U8/U16/I32;
- ``norms`` (N,) F32 (``norm="float"``) or U8 (``"qint8"``, ``"cqint8"``);
- ``ids`` (N,) I64; ``norm_params`` (K, 3) F64 (qint8: lo, step and error bound of
  each first-stage code's grid of cross terms) or (K, 256, 2) F64 (cqint8: level and
  error bound), see :mod:`viva_glyph.index._norms`;
- ``centroids`` (nlist, D) and ``offsets`` (nlist + 1,) I64 (IVF).

String metadata: ``format`` (``"viva-glyph-index"``), ``format_version``
(``"1"``), ``config`` (JSON num_stages/dimension/codebook_size), ``metric``,
``norm``, ``norm_grid`` (``"first_code"`` for qint8/cqint8), ``beam_size``, ``nlist``
(``"0"`` for flat), ``count`` (N),
``norm_seen`` (the norms the quantized-norm grid was trained on; files without it
load as N), ``library_version``. :func:`load` reads it with :mod:`viva_glyph.files._safetensors`
(anything but a regular file refused, the header and every dtype, shape and
offset checked against the metadata and the file size before any tensor data
is read), memory-maps codes, norms and ids and checks every value the
constructor, :meth:`RvqIndex.add` and :meth:`RvqIndex.add_codes` would refuse.
Quantizer parameters must be finite, within the scale the codebooks (and centroids)
can reach, with steps and bounds >= 0 and levels sorted; every stored norm byte must
decode to within its bound of the row's exact cross term, rebuilt from the codes (one
pass over the codes, in blocks).

qint8/cqint8 files written before ``norm_grid`` (one byte of the whole norm on one
grid: ``norm_params`` (2,) ``[min, max]`` or (256,) levels, F32) still load: their
bytes are rebuilt at load from the codes on the current per-first-code grids (the
old bytes are not used; the rebuilt ones are held in memory, one byte a vector, and
saving writes the current format).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.core import ModelFormatError
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.nearest import code_dtype
from viva_glyph.files import DTYPES, FileKind, open_file
from viva_glyph.index import _norms
from viva_glyph.index._index import MAX_NLIST, METRICS, RvqIndex
from viva_glyph.index._norms import NORM_MODES, QUANTIZED, stored_dtype
from viva_glyph.index._save import FORMAT_NAME, FORMAT_VERSION, NORM_GRID

__all__ = ["IndexFormatError", "load"]

_NAMES = {dtype: name for name, dtype in DTYPES.items()}

PathLike = str | os.PathLike[str]


class IndexFormatError(ModelFormatError):
    """An index file is malformed, truncated, of another format or version."""


_KIND = FileKind(FORMAT_NAME, FORMAT_VERSION, "index file", IndexFormatError)


def _fail(path: PathLike, why: str) -> ValueError:
    return _KIND.fail(path, why)


def _meta(meta: dict[str, str], path: PathLike) -> dict[str, Any]:
    try:
        cfg = json.loads(meta.get("config", ""))
        if not isinstance(cfg, dict) or set(cfg) != {"num_stages", "dimension", "codebook_size"}:
            raise ValueError("config keys")
        config = RvqConfig(**cfg)
        count, nlist, beam = (int(meta[key]) for key in ("count", "nlist", "beam_size"))
        if count < 0 or nlist < 0 or beam < 1 or count > 1 << 40 or nlist > MAX_NLIST:
            raise ValueError("range")
    except (ValueError, TypeError, KeyError, RecursionError):
        raise _fail(path, "config, count, nlist or beam_size is not valid") from None
    try:  # files written before it: the grid is taken to have seen the stored norms
        seen = int(meta.get("norm_seen", count))
        if not 0 <= seen <= 1 << 62:
            raise ValueError("range")
    except ValueError:
        raise _fail(path, f"norm_seen {meta.get('norm_seen')!r} is not a count") from None
    if meta.get("metric") not in METRICS or meta.get("norm") not in NORM_MODES:
        raise _fail(path, f"metric {meta.get('metric')!r} / norm {meta.get('norm')!r} unknown")
    if meta["norm"] == "none" and meta["metric"] != "ip":
        raise _fail(path, 'norm "none" with a metric other than "ip"')
    grid = meta.get("norm_grid")
    if grid not in (None, NORM_GRID) or (grid is not None and meta["norm"] not in QUANTIZED):
        raise _fail(path, f"norm_grid {str(grid)[:20]!r} unknown for norm {meta['norm']!r}")
    return {
        **meta,
        "legacy": meta["norm"] in QUANTIZED and grid is None,
        "config": config,
        "count": count,
        "nlist": nlist,
        "beam": beam,
        "norm_seen": seen,
    }


#: Tensors memory-mapped on load (one row each per vector); the others are read.
_MAPPED = frozenset({"codes", "norms", "ids"})


def _expected(m: dict[str, Any]) -> dict[str, tuple[set[str], tuple[int, ...]]]:
    """Each tensor the metadata calls for: its allowed dtype names and its shape."""
    c: RvqConfig = m["config"]
    n, nlist = m["count"], m["nlist"]
    floats = {"F32", "F64"}
    out = {
        "codebooks": (floats, (c.num_stages, c.codebook_size, c.dimension)),
        "codes": ({_NAMES[np.dtype(code_dtype(c.codebook_size))]}, (n, c.num_stages)),
    }
    nd = stored_dtype(m["norm"])
    if nd is not None:
        out["norms"] = ({_NAMES[np.dtype(nd)]}, (n,))
    out["ids"] = ({"I64"}, (n,))
    if m["norm"] in QUANTIZED and n:
        if m["legacy"]:
            out["norm_params"] = ({"F32"}, (2 if m["norm"] == "qint8" else 256,))
        else:
            out["norm_params"] = ({"F64"}, _norms.params_shape(m["norm"], c.codebook_size))
    if nlist:
        out["centroids"] = (floats, (nlist, c.dimension))
        out["offsets"] = ({"I64"}, (nlist + 1,))
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
    with open_file(path, _KIND) as fh:
        meta = _meta(fh.metadata, path)
        layout = fh.tensors(_expected(meta))
        small = {name: fh.read(t) for name, t in layout.items() if name not in _MAPPED}
        mapped = {name: fh.memmap(t) for name, t in layout.items() if name in _MAPPED}
    stack = small["codebooks"]
    if not np.isfinite(stack).all():
        raise _fail(path, "codebooks hold NaN or inf")
    nlist = meta["nlist"] or None
    try:  # what the constructor refuses: codes too large for float32 scores
        encoder = RvqEncoder([Codebook(b, dtype=stack.dtype) for b in stack])
        index = RvqIndex(
            encoder, metric=meta["metric"], norm=meta["norm"], beam_size=meta["beam"], nlist=nlist
        )
    except ValueError as exc:
        raise _fail(path, f"codebooks: {exc}") from None
    s = index.store
    if nlist:
        cent = small["centroids"]
        if not np.isfinite(cent).all():
            raise _fail(path, "centroids hold NaN or inf")
        try:  # as the constructor's centroids=: their norms plus the codebooks' reach
            index._set_centroids(cent)
        except ValueError as exc:
            raise _fail(path, f"centroids: {exc}") from None
        s.offsets = small["offsets"]
        if s.offsets[0] != 0 or s.offsets[-1] != meta["count"] or (np.diff(s.offsets) < 0).any():
            raise _fail(path, "IVF list offsets are not a partition of the rows")
    else:
        s.offsets = np.array([0, meta["count"]], dtype=np.int64)
    s.codes, s.ids = mapped["codes"], mapped["ids"]
    k = encoder.config.codebook_size
    small_k = k < 256**encoder.code_dtype.itemsize  # else every stored value is valid
    if s.codes.size and small_k and (int(s.codes.max()) >= k or int(s.codes.min()) < 0):
        raise _fail(path, f"codes outside [0, {k})")
    if "norms" in layout:
        s.norms = mapped["norms"]
        if meta["norm"] == "float":
            row = _first_row(s.norms, lambda v: ~(v >= 0) | ~np.isfinite(v))  # NaN, inf, < 0
            if row is not None:
                raise _fail(
                    path,
                    f"norms hold {_number(s.norms[row])} at row {row}; squared norms are finite "
                    "and >= 0",
                )
    row = _first_row(s.ids, lambda v: v < 0)
    if row is not None:
        raise _fail(path, f"ids hold negative values ({int(s.ids[row])} at row {row})")
    dup = _duplicate(s.ids)
    if dup is not None:
        raise _fail(path, f"ids hold {dup} twice; every id must be unique")
    s.norm_seen = meta["norm_seen"]
    if "norm_params" in layout:
        if meta["legacy"]:
            _check_legacy(path, meta["norm"], small["norm_params"])
            _rebuild(index)
        else:
            s.norm_params = _check_params(path, index, small["norm_params"])
            if index.norm in ("qint8", "cqint8"):
                _check_bytes(path, index)
    return index


#: Rows whose cross terms :func:`_check_bytes` rebuilds at a time (bounded memory).
CHECK_ROWS = 1 << 16


def _check_bytes(path: PathLike, index: RvqIndex) -> None:
    """Every stored byte decodes to within its bound of the row's exact cross term (from
    the codes): a byte or bound altered on disk would silently drop neighbours."""
    s = index.store
    assert s.norms is not None
    val, bound = _norms.decode_cross(index.norm, s.norm_params)
    for start in range(0, len(index), CHECK_ROWS):
        stop = min(start + CHECK_ROWS, len(index))
        codes = np.asarray(s.codes[start:stop])
        rows = np.arange(start, stop, dtype=np.int64)
        lists = s.list_of(rows) if s.centroids is not None else None
        cross = index._cross_terms(codes, lists)
        first, byte = codes[:, 0].astype(np.intp), np.asarray(s.norms[start:stop], dtype=np.intp)
        # the search's float32 margins absorb far more than this relative slack
        slack = bound[first, byte] + 1e-12 * np.abs(cross)
        bad = np.flatnonzero(~(np.abs(cross - val[first, byte]) <= slack))
        if bad.size:
            row = start + int(bad[0])
            raise _fail(
                path,
                f"norms byte {int(byte[bad[0]])} at row {row} is farther from the row's cross "
                "term (from its codes) than its norm_params bound: the norm bytes or their "
                "bounds were altered",
            )


def _check_legacy(path: PathLike, norm: str, params: NDArray[Any]) -> None:
    """The whole-norm quantizer of an older file: checked as that version did, then dropped."""
    if not np.isfinite(params).all():
        raise _fail(path, "norm_params (norm quantizer) hold NaN or inf")
    if (params < 0).any():
        raise _fail(path, "norm_params (norm quantizer) hold a negative squared norm")
    if (np.diff(params) < 0).any():
        what = (
            "qint8 norm range is reversed"
            if norm == "qint8"
            else "cqint8 norm levels are not sorted"
        )
        raise _fail(path, f"norm_params: {what}")


def _rebuild(index: RvqIndex) -> None:
    """Train the per-first-code grids on the exact cross terms of every stored row (from
    the codes) and quantize them again: a file of the whole-norm format."""
    s = index.store
    lists = s.list_of(np.arange(len(index), dtype=np.int64)) if s.centroids is not None else None
    cross = index._cross_terms(s.codes, lists)
    first = np.asarray(s.codes[:, 0])
    params = _norms.train_cross(index.norm, cross, first, s.groups)
    s.norms, s.norm_params = _norms.encode_cross(index.norm, params, cross, first)
    s.norm_seen = len(index)


def _check_params(path: PathLike, index: RvqIndex, params: NDArray[np.float64]) -> NDArray[Any]:
    """The per-first-code grids: finite, within reach of the codebooks, steps and bounds
    >= 0, levels sorted."""
    what = "norm_params (cross-term quantizer)"
    if not np.isfinite(params).all():
        raise _fail(path, f"{what} hold NaN or inf")
    reach = index._reach
    if index.store.centroids is not None:
        cent = index.store.centroids.astype(np.float64)
        reach += float(np.sqrt(np.einsum("cd,cd->c", cent, cent).max()))
    # |X| <= 2 ||c + r'||^2 <= 2 reach^2: a larger value is no grid an index writes
    top = 4.0 * reach * reach + 1.0
    if (np.abs(params) > top).any():
        raise _fail(path, f"{what} hold values past {top:.4g}, beyond what the codes reach")
    if index.norm == "qint8":
        if (params[:, 1] < 0).any() or (params[:, 2] < 0).any():
            raise _fail(path, f"{what}: a qint8 step or bound is negative")
    else:
        if (params[:, :, 1] < 0).any():
            raise _fail(path, f"{what}: a cqint8 bound is negative")
        if (np.diff(params[:, :, 0], axis=1) < 0).any():
            raise _fail(path, f"{what}: cqint8 levels of a first code are not sorted")
    return np.array(params, dtype=np.float64)


def _number(value: Any) -> str:
    v = float(value)
    return "NaN" if np.isnan(v) else f"{v:g}"


#: Elements of a memory-mapped tensor checked per step (bounds the temporaries).
_CHECK_ROWS = 1 << 20


def _first_row(arr: NDArray[Any], bad: Any) -> int | None:
    """The first position where ``bad(values)`` holds, read in bounded steps, or None."""
    for a in range(0, arr.shape[0], _CHECK_ROWS):
        hit = np.flatnonzero(bad(np.asarray(arr[a : a + _CHECK_ROWS])))
        if hit.size:
            return a + int(hit[0])
    return None


def _duplicate(ids: NDArray[np.int64]) -> int | None:
    """An id stored twice, or None: a pass in bounded steps when the ids increase (a flat
    index's default ids), else one sort of a copy (8 bytes an id)."""
    rising = True
    for a in range(0, max(ids.shape[0] - 1, 0), _CHECK_ROWS):
        part = np.asarray(ids[a : a + _CHECK_ROWS + 1])
        if not (part[1:] > part[:-1]).all():
            rising = False
            break
    if rising:
        return None
    srt = np.sort(ids)
    same = np.flatnonzero(srt[1:] == srt[:-1])
    return int(srt[same[0]]) if same.size else None
