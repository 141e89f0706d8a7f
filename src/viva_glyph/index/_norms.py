"""How an index keeps ||x'||^2, the squared norm of each reconstruction.

For additive codes ``||x'||^2`` is not a sum over stages (cross terms), so the
L2 and cosine scores need it stored or rebuilt (FAISS ``AdditiveQuantizer``
search types):

- ``"float"``: float32, 4 bytes per vector, exact to float32 rounding;
- ``"qint8"``: one byte, 256 equal bins between the smallest and largest norm
  of the first batch added, decoded at the bin centre; error <= (max - min) / 512
  inside that range (FAISS ``ST_norm_qint8``'s grid, here computed in float64);
- ``"cqint8"``: one byte, the nearest of 256 levels of an optimal 1-D k-means of
  the first batch's norms (:func:`viva_glyph.index._kmeans1d.kmeans_1d`: exact
  up to 65,536 distinct norms, then on 65,536 equal-count runs polished by
  Lloyd on all norms; FAISS ``ST_norm_cqint8`` is exact on a random sample of
  65,536); error = the distance to the nearest level;
- ``"lut"``: nothing stored; rebuilt at search time from the stage tables,
  ``sum_m ||C_m[c_m]||^2 + 2 sum_{a<b} <C_a[c_a], C_b[c_b]>`` (O(M^2) per vector);
- ``"none"``: nothing (inner product only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.index._kmeans1d import kmeans_1d

__all__ = [
    "NORM_MODES",
    "NormTables",
    "decode_norms",
    "encode_norms",
    "stored_dtype",
    "train_norms",
]

NORM_MODES = ("float", "qint8", "cqint8", "lut", "none")
#: Largest cross-table stack (bytes) that ``norm="lut"`` may build.
MAX_LUT_BYTES = 512 << 20
LEVELS = 256


def stored_dtype(mode: str) -> np.dtype[Any] | None:
    """dtype of the stored norm per vector, None when nothing is stored."""
    if mode == "float":
        return np.dtype(np.float32)
    return np.dtype(np.uint8) if mode in ("qint8", "cqint8") else None


def train_norms(mode: str, norms: NDArray[np.float64]) -> NDArray[np.float32]:
    """Parameters of the norm quantizer from the first batch's exact norms.

    Returns ``[min, max]`` (qint8), the 256 sorted levels (cqint8), or an
    empty array (other modes).
    """
    if mode == "qint8":
        return np.array([norms.min(), norms.max()], dtype=np.float32)
    if mode == "cqint8":
        return kmeans_1d(norms, LEVELS).astype(np.float32)
    return np.empty(0, dtype=np.float32)


def encode_norms(mode: str, params: NDArray[np.float32], norms: NDArray[np.float64]) -> Any:
    """Stored form of exact norms (N,) float64; None when the mode stores nothing."""
    if mode == "float":
        return norms.astype(np.float32)
    if mode == "qint8":  # 256 bins of (max - min) / 256, decoded at their centres
        lo, hi = float(params[0]), float(params[1])
        if not hi > lo:  # one norm trained: every code decodes to it
            return np.zeros(norms.shape[0], dtype=np.uint8)
        step = (hi - lo) / LEVELS
        return np.clip(np.floor((norms - lo) / step), 0, LEVELS - 1).astype(np.uint8)
    if mode == "cqint8":
        levels = params.astype(np.float64)
        mid = (levels[1:] + levels[:-1]) / 2
        return np.searchsorted(mid, norms, side="left").astype(np.uint8)
    return None


def decode_norms(mode: str, params: NDArray[np.float32], stored: NDArray[Any]) -> NDArray[Any]:
    """float32 norms (N,) from their stored form (float, qint8, cqint8)."""
    if mode == "float":
        return np.asarray(stored, dtype=np.float32)
    if mode == "qint8":
        lo, hi = float(params[0]), float(params[1])
        step = (hi - lo) / LEVELS  # 0 when one norm was trained: decodes to it
        return (lo + step * (np.asarray(stored, dtype=np.float64) + 0.5)).astype(np.float32)
    levels: NDArray[np.float32] = params[np.asarray(stored)]
    return levels


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
