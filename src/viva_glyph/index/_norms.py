"""How an index keeps ||x'||^2, the squared norm of each reconstruction.

For additive codes ``||x'||^2`` is not a sum over stages (cross terms), so the
L2 and cosine scores need it stored or rebuilt (FAISS ``AdditiveQuantizer``
search types):

- ``"float"``: float32, 4 bytes per vector, exact to float32 rounding;
- ``"qint8"`` and ``"cqint8"``: one byte per vector, and searches return the same
  neighbours and scores as ``"float"`` (up to float rounding ties). The norm is split as
  ``||x'||^2 = S + X``: ``S = sum_m ||C_m[c_m]||^2`` is exact and folded into the
  per-query stage tables, and only the cross terms
  ``X = ||x'||^2 - S = 2 sum_{a<b} <C_a[c_a], C_b[c_b]>`` (with IVF also
  ``2 <c, r'>``; ``||c||^2`` goes into the list's constant) are quantized, on a
  separate 256-level grid for each first-stage code (the vectors sharing a first code
  have similar cross terms). ``"qint8"``: 256 equal bins over the range of X among the
  vectors of that first code (parameters (K, 3) float64: lo, step, bound);
  ``"cqint8"``: the 256 levels of an optimal 1-D k-means of those X
  (:func:`viva_glyph.index._kmeans1d.kmeans_1d`; parameters (K, 256, 2) float64:
  level, bound). Each group (or level) keeps ``bound``, the largest error of any
  vector stored in it, so every score the scan computes from the byte is within
  a known interval of the exact score; the search re-scores, with the exact norm
  rebuilt from the codes, every vector whose interval can reach the current top k,
  so the result is the exact-norm top k, not an approximation. Where norms vary
  widely (image patches: ||x'||^2 over 613 .. 4.1e6) one byte of the whole norm,
  as FAISS ``ST_norm_qint8``/``ST_norm_cqint8`` store it, kept 0.38x of the recall;
- ``"lut"``: nothing stored; rebuilt at search time from the stage tables,
  ``sum_m ||C_m[c_m]||^2 + 2 sum_{a<b} <C_a[c_a], C_b[c_b]>`` (O(M^2) per vector);
- ``"none"``: nothing (inner product only).

Index files written before this scheme (one byte of the whole norm: ``[min, max]``
or 256 levels) load as before: the bytes are rebuilt from the codes at load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.index._kmeans1d import kmeans_1d

__all__ = [
    "LEVELS",
    "NORM_MODES",
    "QUANTIZED",
    "NormTables",
    "cross_tables",
    "decode_cross",
    "decode_norms",
    "encode_cross",
    "encode_norms",
    "params_shape",
    "round_up32",
    "stored_dtype",
    "train_cross",
]

NORM_MODES = ("float", "qint8", "cqint8", "lut", "none")
#: Modes that store one byte of the cross terms per vector.
QUANTIZED = ("qint8", "cqint8")
#: Largest cross-table stack (bytes) that ``norm="lut"`` may build.
MAX_LUT_BYTES = 512 << 20
LEVELS = 256


def stored_dtype(mode: str) -> np.dtype[Any] | None:
    """dtype of the stored norm per vector, None when nothing is stored."""
    if mode == "float":
        return np.dtype(np.float32)
    return np.dtype(np.uint8) if mode in QUANTIZED else None


def params_shape(mode: str, groups: int) -> tuple[int, ...]:
    """Shape of the quantizer parameters of ``groups`` first-stage codes."""
    return (groups, 3) if mode == "qint8" else (groups, LEVELS, 2)


def encode_norms(norms: NDArray[np.float64]) -> NDArray[np.float32]:
    """Stored form of exact norms for ``norm="float"``."""
    return norms.astype(np.float32)


def decode_norms(stored: NDArray[Any]) -> NDArray[np.float32]:
    """float32 norms (N,) of ``norm="float"``."""
    return np.asarray(stored, dtype=np.float32)


def _by_group(group: NDArray[Any], groups: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Rows sorted by group (stable) and the bounds of each group in that order."""
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(groups + 1), side="left")
    return order, bounds


def train_cross(
    mode: str, cross: NDArray[np.float64], group: NDArray[Any], groups: int
) -> NDArray[np.float64]:
    """Grid (qint8) or levels (cqint8) of the cross terms of each first-stage code.

    Parameters
    ----------
    mode : {"qint8", "cqint8"}
    cross : ndarray, shape (N,), float64
        Exact cross terms X of the vectors.
    group : ndarray, shape (N,), int
        First-stage code of each vector, in [0, groups).
    groups : int

    Returns
    -------
    ndarray, float64: (groups, 3) ``lo, step, bound`` (qint8) or (groups, 256, 2)
    ``level, bound`` (cqint8); bounds start at 0 (:func:`encode_cross` sets them).
    Groups without vectors get an empty grid (lo = step = 0).
    """
    params = np.zeros(params_shape(mode, groups), dtype=np.float64)
    order, bounds = _by_group(group, groups)
    for g in np.flatnonzero(np.diff(bounds)):
        v = cross[order[bounds[g] : bounds[g + 1]]]
        if mode == "qint8":
            lo, hi = float(v.min()), float(v.max())
            params[g, 0], params[g, 1] = lo, (hi - lo) / LEVELS
        else:
            params[g, :, 0] = kmeans_1d(v, LEVELS)
    return params


def encode_cross(
    mode: str, params: NDArray[np.float64], cross: NDArray[np.float64], group: NDArray[Any]
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """One byte per vector, and the parameters with each bound widened to cover them.

    qint8 stores ``floor((X - lo) / step)`` clipped to [0, 255], decoded at the bin
    centre; cqint8 the nearest level. A value outside the trained range is clipped
    and only widens its group's (or level's) bound: the search stays exact.
    """
    out = np.zeros(cross.shape[0], dtype=np.uint8)
    params = params.copy()
    if cross.shape[0] == 0:
        return out, params
    if mode == "qint8":
        lo, step = params[group, 0], params[group, 1]
        safe = np.where(step > 0, step, 1.0)
        raw = np.where(step > 0, np.floor((cross - lo) / safe), 0.0)
        out[:] = np.clip(raw, 0, LEVELS - 1)
        err = np.abs(cross - (lo + step * (out + 0.5)))
        np.maximum.at(params[:, 2], group, err)
        return out, params
    order, bounds = _by_group(group, params.shape[0])
    for g in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[g] : bounds[g + 1]]
        levels = params[g, :, 0]
        mid = (levels[1:] + levels[:-1]) / 2
        out[rows] = np.searchsorted(mid, cross[rows], side="left")
    err = np.abs(cross - params[group, out.astype(np.intp), 0])
    np.maximum.at(params[:, :, 1], (group, out.astype(np.intp)), err)
    return out, params


def decode_cross(mode: str, params: NDArray[np.float64]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(value, bound) float64 tables (groups, 256) of every (first code, byte)."""
    if mode == "qint8":
        val = params[:, :1] + params[:, 1:2] * (np.arange(LEVELS) + 0.5)
        bound = np.repeat(params[:, 2:3], LEVELS, axis=1)
        return val, bound
    return params[:, :, 0].copy(), params[:, :, 1].copy()


def cross_tables(
    mode: str, params: NDArray[np.float64]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """float32 (value, bound) tables of the scan: ``|X - value| <= bound`` for every
    stored vector, the float32 rounding of the value included and the bound rounded up."""
    val64, bound64 = decode_cross(mode, params)
    val = val64.astype(np.float32)
    return val, round_up32(bound64 + np.abs(val.astype(np.float64) - val64))


def round_up32(x: NDArray[np.float64]) -> NDArray[np.float32]:
    """The smallest float32 >= each value."""
    out = np.asarray(x, dtype=np.float64).astype(np.float32)
    low = out.astype(np.float64) < x
    out[low] = np.nextafter(out[low], np.float32(np.inf))
    return out


class NormTables:
    """Stage tables that rebuild ``||x'||^2`` from codes (``norm="lut"``).

    ``sq`` (M, K) holds ``||C_m[k]||^2``, ``cross`` (M(M-1)/2, K, K) the inner
    products ``<C_a[i], C_b[j]>`` of every stage pair a < b, in float64.
    """

    def __init__(self, stack: NDArray[Any]) -> None:
        m, k, _ = stack.shape
        pairs = m * (m - 1) // 2
        if pairs * k * k * 8 > MAX_LUT_BYTES:
            raise ValueError(
                f'norm="lut" needs {pairs} cross tables of {k} x {k} '
                f"({pairs * k * k * 8 >> 20} MiB, limit {MAX_LUT_BYTES >> 20} MiB); "
                'use norm="float" for this many stages or codes'
            )
        s64 = stack.astype(np.float64)
        self.sq: NDArray[np.float64] = np.einsum("mkd,mkd->mk", s64, s64)
        self.cross = np.empty((pairs, k, k), dtype=np.float64)
        p = 0
        for a in range(m):
            for b in range(a + 1, m):
                self.cross[p] = s64[a] @ s64[b].T
                p += 1

    def norms(self, codes: NDArray[Any], kernels: Any) -> NDArray[np.float32]:
        """``||decode(codes)||^2`` (N,) float32, by the numba kernel or in numpy."""
        out = np.empty(codes.shape[0], dtype=np.float64)
        if kernels is not None:
            kernels.lut_norms(np.ascontiguousarray(codes), self.sq, self.cross, out)
            return out.astype(np.float32)
        m = codes.shape[1]
        for start in range(0, codes.shape[0], 1 << 16):
            c = codes[start : start + (1 << 16)].astype(np.intp)
            acc = np.zeros(c.shape[0], dtype=np.float64)
            p = 0
            for a in range(m):
                acc += self.sq[a, c[:, a]]
                for b in range(a + 1, m):
                    acc += 2.0 * self.cross[p, c[:, a], c[:, b]]
                    p += 1
            out[start : start + c.shape[0]] = acc
        return out.astype(np.float32)
