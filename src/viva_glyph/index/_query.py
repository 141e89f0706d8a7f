"""Search inputs of an :class:`~viva_glyph.index.RvqIndex`: norm terms, IVF probes, re-ranking."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import as_matrix
from viva_glyph.index import _norms
from viva_glyph.index._rerank import gather_rows, open_vectors
from viva_glyph.index._scan import (
    MODE_ADD,
    MODE_BOUND,
    MODE_PLAIN,
    MODE_SCALE,
    BoundInput,
    ScanInput,
    scan_kernels,
)
from viva_glyph.threads import single_blas_thread

if TYPE_CHECKING:
    from viva_glyph.index._index import RvqIndex

__all__ = ["centroid_terms", "rerank_source", "scan_input", "vector_terms"]

#: Rows per step when IVF norm terms are rebuilt.
ROWS = 1 << 16


Terms = tuple[int, NDArray[np.float32], NDArray[np.float32], BoundInput | None]


def vector_terms(self: RvqIndex) -> Terms:
    """(mode, add, scale, bound) of the scan: the per-vector norm terms."""
    empty = np.empty(0, dtype=np.float32)
    if self.metric == "ip":  # the inner product needs no norm
        return MODE_PLAIN, empty, empty, None
    if self.norm in _norms.QUANTIZED:
        return MODE_BOUND, empty, empty, bound_input(self)
    if self._tables is not None:
        norms = self._tables.norms(self.store.codes, scan_kernels())
        if self.store.centroids is not None:
            norms = norms + centroid_terms(self)
    else:
        assert self.store.norms is not None
        norms = _norms.decode_norms(self.store.norms)
    if self.metric == "l2":
        return MODE_ADD, np.ascontiguousarray(norms, dtype=np.float32), empty, None
    with np.errstate(divide="ignore"):
        scale = np.where(norms > 0, 1.0 / np.sqrt(np.maximum(norms, 0)), 0.0)
    return MODE_SCALE, empty, scale.astype(np.float32), None


def bound_input(self: RvqIndex) -> BoundInput:
    """The one-byte cross terms' tables of a search (see :class:`~._scan.BoundInput`),
    kept while the stored bytes, grids and centroids stay the same objects."""
    store = self.store
    key = (store.norms, store.norm_params, store.centroids)
    cached = self._bound_cache
    if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
        bound: BoundInput = cached[1]
        return bound
    bound = _bound_input(self)
    self._bound_cache = (key, bound)
    return bound


def _bound_input(self: RvqIndex) -> BoundInput:
    store = self.store
    _, k, d = self._stack64.shape
    # float32 codebooks decode exactly from float32 (half the bytes of the re-scoring)
    books = self.encoder.codebook_array
    stack = np.ascontiguousarray(books if books.dtype == np.float32 else self._stack64)
    sq64 = np.einsum("mkd,mkd->mk", self._stack64, self._stack64)
    if store.centroids is None:
        cent = np.zeros((1, d), dtype=np.float64)
    else:
        cent = np.ascontiguousarray(store.centroids, dtype=np.float64)
    cc64 = np.einsum("cd,cd->c", cent, cent)
    params = store.norm_params
    if params.size == 0:  # nothing stored yet
        params = np.zeros(_norms.params_shape(self.norm, k), dtype=np.float64)
    val, err = _norms.cross_tables(self.norm, params)
    lin = self.norm == "qint8" and self.metric != "cosine"
    if lin:  # lo + step / 2 in float32, its rounding in the bound of every byte
        fold = (params[:, 0] + params[:, 1] / 2).astype(np.float32)
        step = params[:, 1].astype(np.float32)
        off = np.abs(fold.astype(np.float64) - (params[:, 0] + params[:, 1] / 2))
        off += np.abs(step.astype(np.float64) - params[:, 1]) * _norms.LEVELS
        half = _norms.round_up32(params[:, 2] + off)
    else:
        fold = step = half = np.zeros(k, dtype=np.float32)
    reach = float(np.sqrt(cc64.max())) + self._reach
    vmax = float(2.0 * np.abs(val).max() + np.abs(err).max())  # step * byte <= 2 max |val|
    nscale = float(cc64.max() + sq64.max(axis=1).sum() + vmax)
    return BoundInput(
        np.ascontiguousarray(store.norms, dtype=np.uint8),
        lin,
        fold,
        step,
        half,
        np.ascontiguousarray(val),
        np.ascontiguousarray(err),
        err.max(axis=1),
        sq64.astype(np.float32),
        sq64,
        stack,
        cent,
        cc64.astype(np.float32),
        cc64,
        self.metric == "cosine",
        np.sqrt(sq64.max(axis=1)),
        float(sq64.max(axis=1).sum()) * (1.0 + 2.0**-20),
        float(np.abs(fold).max(initial=0.0)) * (1.0 + 2.0**-20),
        vmax,
        nscale,
        4.0 * reach * reach,
        np.zeros(0, dtype=np.int64),
    )


def centroid_terms(self: RvqIndex) -> NDArray[np.float32]:
    """``||c||^2 + 2 <c, r'>`` of every IVF row (c its centroid, r' its residual)."""
    store = self.store
    assert store.centroids is not None
    cent = store.centroids.astype(np.float64)
    m, k, d = self._stack32.shape
    tab = cent @ self.encoder.codebook_array.astype(np.float64).reshape(m * k, d).T
    tab = tab.reshape(-1, m, k)
    out = np.empty(len(self), dtype=np.float32)
    for a in range(0, len(self), ROWS):
        pos = np.arange(a, min(a + ROWS, len(self)), dtype=np.int64)
        lists = store.list_of(pos)
        codes = np.asarray(store.codes[a : a + pos.shape[0]])
        acc = np.einsum("nd,nd->n", cent[lists], cent[lists])
        for j in range(m):
            acc += 2.0 * tab[lists, j, codes[:, j]]
        out[a : a + pos.shape[0]] = acc
    return out


def scan_input(
    self: RvqIndex,
    q64: NDArray[np.float64],
    nprobe: int,
    terms: Terms,
) -> ScanInput:
    mode, add, scale, bound = terms
    factor = -2.0 if self.metric == "l2" else -1.0
    q32 = np.ascontiguousarray(q64, dtype=np.float32)
    nq = q32.shape[0]
    store = self.store
    if store.centroids is None:
        probes = np.zeros((nq, 1), dtype=np.int64)
        consts = np.zeros((nq, 1), dtype=np.float32)
        offsets = np.array([0, len(self)], dtype=np.int64)
    else:
        cent32 = store.centroids.astype(np.float32)
        with single_blas_thread():
            qc = q32 @ cent32.T
        key = -qc if self.metric != "l2" else np.einsum("cd,cd->c", cent32, cent32) - 2 * qc
        probes = np.argpartition(key, nprobe - 1, axis=1)[:, :nprobe].astype(np.int64)
        consts64 = factor * np.take_along_axis(qc, probes, axis=1).astype(np.float64)
        if bound is not None and not bound.cos:  # ||c||^2 of the list, with the L2 tables
            consts64 += bound.cc64[probes]
        consts = consts64.astype(np.float32)
        offsets = store.offsets
    return ScanInput(
        q32,
        self._stack32,
        factor,
        np.ascontiguousarray(store.codes),
        add,
        scale,
        mode,
        offsets,
        probes,
        consts,
        None if bound is None else bound._replace(counts=np.zeros(nq, dtype=np.int64)),
    )


def rerank_source(
    self: RvqIndex, vectors: Any
) -> Callable[[NDArray[np.int64]], NDArray[np.float64]]:
    """Vectors of stored positions: from ``vectors`` by id, or decoded."""
    store = self.store
    if vectors is None:

        def decoded(positions: NDArray[np.int64]) -> NDArray[np.float64]:
            out = self.decode64(np.asarray(store.codes[positions]))
            if store.centroids is not None:
                out += store.centroids[store.list_of(positions)]
            return out

        return decoded
    if isinstance(vectors, (str, os.PathLike)):
        vectors = open_vectors(vectors, self.dimension)
    arr = as_matrix(vectors, self.dimension, "vectors")
    top = int(store.ids.max()) if len(self) else -1
    if arr.shape[0] <= top:
        raise ValueError(
            f"vectors has {arr.shape[0]} rows, but re-ranking addresses them by id "
            f"and the index holds id {top}"
        )

    def by_id(positions: NDArray[np.int64]) -> NDArray[np.float64]:
        return gather_rows(arr, store.ids[positions], self.dimension)

    return by_id
