"""RvqIndex: search a vector collection in its RVQ-compressed form (flat or IVF)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import as_matrix, check_norms, norm_limit, positive_int, require_finite
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import _norms
from viva_glyph.index._pages import drop_pages
from viva_glyph.index._query import rerank_source, scan_input, vector_terms
from viva_glyph.index._rerank import rerank as rerank_exact
from viva_glyph.index._save import write_index
from viva_glyph.index._scan import scan
from viva_glyph.index._store import Store

__all__ = ["MAX_K", "MAX_NLIST", "METRICS", "QUERY_BATCH", "SEARCH_BYTES", "RvqIndex", "save"]

METRICS = ("l2", "ip", "cosine")
#: Largest k (and re-ranking depth) a search accepts: bounds the (nq, k) results.
MAX_K = 100_000
#: Largest number of IVF lists (as index files allow).
MAX_NLIST = 1 << 24
#: Queries per scan batch: bounds the (batch, M, K) lookup tables.
QUERY_BATCH = 4096
#: Bytes a batch of queries may hold per candidate of the search depth: the scan's top
#: lists (float32 score, int64 position), their sort's orders and copies, and re-ranking's
#: float64 scores and order.
CANDIDATE_BYTES = 64
#: Bytes of those per-candidate arrays at once: a deep search (large k or rerank) takes
#: fewer queries per batch (rerank=100,000 held 22 GB with 4,096 queries).
SEARCH_BYTES = 64 << 20
#: Rows encoded per step of :meth:`RvqIndex.add` (memory maps are streamed).
ADD_ROWS = 1 << 16


class RvqIndex:
    """A searchable collection of RVQ codes, with ids, stored norms and optional IVF.

    Parameters
    ----------
    encoder : RvqEncoder
        Its codebooks code the vectors (or, with ``nlist``, their residuals to
        the coarse centroid).
    metric : {"l2", "ip", "cosine"}
        Search by squared L2 distance (ascending), inner product (descending)
        or cosine similarity (descending), always against the decoded vectors.
    norm : {"float", "qint8", "cqint8", "lut", "none"}
        How ``||x'||^2`` is kept (see :mod:`viva_glyph.index._norms`):
        ``"float"`` 4 bytes a vector; ``"qint8"``/``"cqint8"`` one byte a vector
        (the stage cross terms on a grid, or k-means levels, per first-stage code),
        searching to the same neighbours and distances as ``"float"`` (up to float
        rounding ties) by re-scoring exactly, norms rebuilt from the codes, every
        vector whose byte's error bound can reach the top k; ``"lut"`` nothing
        stored; ``"none"`` only with ``metric="ip"``. The one-byte grids are
        trained on every vector stored until 65,536 have been seen, then kept
        (later vectors only widen their error bounds).
    beam_size : int, optional
        Beam width :meth:`add` encodes with (1 = greedy); default: the encoder's
        (:attr:`~viva_glyph.RvqEncoder.encoding`).
    nlist : int, optional
        Number of IVF lists; the coarse k-means is trained by :meth:`train`
        or by the first :meth:`add`.
    centroids : array_like, shape (nlist, D), optional
        Coarse centroids trained elsewhere (then ``nlist`` may be omitted);
        ``encoder`` should then have been fitted to the residuals to them.

    Examples
    --------
    >>> index = RvqIndex(encoder, metric="l2", norm="float")   # doctest: +SKIP
    >>> index.add(X)                                           # doctest: +SKIP
    >>> distances, ids = index.search(Q, 10, rerank=100)       # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: RvqEncoder,
        *,
        metric: str = "l2",
        norm: str = "float",
        beam_size: int | None = None,
        nlist: int | None = None,
        centroids: ArrayLike | None = None,
    ) -> None:
        if not isinstance(encoder, RvqEncoder):
            raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
        if len(set(encoder.config.stage_sizes)) > 1:
            raise ValueError(
                "RvqIndex needs one codebook size for every stage, got sizes "
                f"{encoder.config.stage_sizes} (per-stage sizes are not supported by the index yet)"
            )
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if norm not in _norms.NORM_MODES:
            raise ValueError(f"norm must be one of {_norms.NORM_MODES}, got {norm!r}")
        if norm == "none" and metric != "ip":
            raise ValueError(
                f'norm="none" keeps no ||x\'||^2, which metric={metric!r} needs; '
                'use it only with metric="ip", or choose norm="float", "qint8", "cqint8" or "lut"'
            )
        self.encoder = encoder
        self.metric = metric
        self.norm = norm
        self.beam_size = (
            encoder.encoding.beam_size
            if beam_size is None
            else positive_int(beam_size, "beam_size")
        )
        self.nlist = None if nlist is None else positive_int(nlist, "nlist")
        if self.nlist is not None and self.nlist > MAX_NLIST:
            raise ValueError(f"nlist must be <= {MAX_NLIST}, got {self.nlist}")
        self._stack64 = np.asarray(encoder.codebook_array, dtype=np.float64)
        #: Largest norm of a reconstruction: the sum of each stage's largest code norm.
        self._reach = float(
            np.sqrt(np.einsum("mkd,mkd->mk", self._stack64, self._stack64)).max(1).sum()
        )
        _check_scale(self._reach, "the codebooks reconstruct vectors")
        self._stack32 = np.ascontiguousarray(encoder.codebook_array, dtype=np.float32)
        self._tables = _norms.NormTables(encoder.codebook_array) if norm == "lut" else None
        cent = None
        if centroids is not None:
            cent = as_matrix(centroids, encoder.config.dimension, "centroids")
            require_finite(cent, 0, "centroids")
            if self.nlist is not None and cent.shape[0] != self.nlist:
                raise ValueError(f"nlist = {self.nlist} but {cent.shape[0]} centroids were given")
            self.nlist = cent.shape[0]
        self.store = Store.empty(encoder, norm, self.nlist)
        #: Rows re-scored exactly per query by the last search (one-byte norms; else 0).
        self._last_rescored = np.zeros(0, dtype=np.int64)
        #: The last search's one-byte-norm tables and the arrays they were built from.
        self._bound_cache: tuple[tuple[Any, ...], Any] | None = None
        if cent is not None:
            self._set_centroids(np.asarray(cent, dtype=encoder.dtype))

    def _set_centroids(self, cent: NDArray[Any]) -> None:
        top = float(np.sqrt(np.einsum("cd,cd->c", cent, cent, dtype=np.float64)).max())
        _check_scale(top + self._reach, "centroids plus codebooks reconstruct vectors")
        self.store.set_centroids(cent)

    # -- properties -------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        """Vector dimension D."""
        return self.encoder.config.dimension

    @property
    def is_trained(self) -> bool:
        """False only for an IVF index whose coarse centroids are not trained yet."""
        return self.nlist is None or self.store.centroids is not None

    @property
    def ids(self) -> NDArray[np.int64]:
        """Ids of the stored vectors, shape (N,), in storage order (read-only)."""
        view = self.store.ids.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return int(self.store.ids.shape[0])

    def __repr__(self) -> str:
        ivf = f", nlist={self.nlist}" if self.nlist else ""
        return (
            f"RvqIndex({len(self)} vectors, D={self.dimension}, metric={self.metric!r}, "
            f"norm={self.norm!r}{ivf})"
        )

    # -- building ---------------------------------------------------------------------
    def train(self, X: ArrayLike, *, seed: int = 0) -> None:
        """Fit the IVF coarse centroids (k-means, :func:`viva_glyph.train.kmeans.lloyd`) on X.

        Parameters
        ----------
        X : array_like, shape (N, D), N >= nlist
            At most ``256 * nlist`` rows are sampled.
        seed : int
        """
        if self.nlist is None:
            raise ValueError("train() is for IVF indexes; this one has no nlist")
        from viva_glyph.train.kmeans import lloyd

        x = as_matrix(X, self.dimension)
        n = x.shape[0]
        if n < self.nlist:
            raise ValueError(f"training {self.nlist} IVF lists needs >= {self.nlist} rows, got {n}")
        rng = np.random.default_rng(seed)
        m = min(n, 256 * self.nlist)
        rows = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
        sample = np.asarray(x[rows], dtype=np.float64)
        require_finite(sample, 0)
        cent, _, _ = lloyd(sample, self.nlist, rng=rng, dtype=np.float32)
        self._set_centroids(cent.astype(self.encoder.dtype))

    def add(
        self,
        X: ArrayLike,
        ids: ArrayLike | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Encode and store vectors (streamed in blocks; memory maps stay on disk).

        Parameters
        ----------
        X : array_like, shape (N, D) or (D,)
        ids : array_like of int64, shape (N,), optional
            Unique, not already in the index; default continues from the
            largest id stored (0..N-1 in an empty index).
        progress : callable(rows_done), optional
            Called after each block.
        """
        x = as_matrix(X, self.dimension)
        n = x.shape[0]
        new_ids = self.store.check_new_ids(ids, n)
        if not self.is_trained:
            self.train(x)
        self.store.reserve(n)
        for start in range(0, n, ADD_ROWS):
            chunk = np.asarray(x[start : start + ADD_ROWS])
            require_finite(chunk, start)
            lists = None
            base = None
            if self.store.centroids is not None:
                from viva_glyph.train.kmeans import assign

                lists, _ = assign(chunk, self.store.centroids)
                base = self.store.centroids[lists].astype(np.float64)
                chunk = chunk - base
            codes = self.encoder.encode(chunk, beam_size=self.beam_size)
            norms = np.zeros(codes.shape[0], dtype=np.float64)
            if self.norm == "float":
                recon = self.decode64(codes)
                if base is not None:
                    recon += base
                norms = np.einsum("nd,nd->n", recon, recon)
            self.store.append(codes, norms, new_ids[start : start + codes.shape[0]], lists)
            drop_pages(x, start, start + codes.shape[0])
            if progress is not None:
                progress(min(start + ADD_ROWS, n))
        self.store.finish_append(self._cross_terms)

    def add_codes(
        self,
        codes: ArrayLike,
        norms: ArrayLike | None = None,
        ids: ArrayLike | None = None,
        *,
        lists: ArrayLike | None = None,
    ) -> None:
        """Store codes made elsewhere (e.g. ``encoder.encode``).

        Parameters
        ----------
        codes : array_like of int, shape (N, M)
        norms : array_like, shape (N,), optional
            ``||x'||^2`` of each reconstruction (with IVF: of centroid +
            residual); computed from the codes when omitted.
        ids : array_like of int64, shape (N,), optional
        lists : array_like of int, shape (N,)
            IVF list of each code (IVF indexes only, required there).
        """
        arr = np.asarray(codes)
        m, k = self.encoder.config.num_stages, self.encoder.config.codebook_size
        if arr.dtype.kind not in "iu":
            raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != m:
            raise ValueError(f"codes must have shape (N, {m}), got {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            bad = int(np.flatnonzero(((arr < 0) | (arr >= k)).any(axis=1))[0])
            raise ValueError(f"codes must be in [0, {k}), got {arr[bad].tolist()} at row {bad}")
        n = arr.shape[0]
        new_ids = self.store.check_new_ids(ids, n)
        lst = self.store.check_lists(lists, n)
        if norms is None:
            recon = self.decode64(arr)
            if lst is not None:
                assert self.store.centroids is not None
                recon += self.store.centroids[lst]
            nrm = np.einsum("nd,nd->n", recon, recon)
        else:
            nrm = np.asarray(norms, dtype=np.float64)
            if nrm.shape != (n,):
                raise ValueError(f"norms must have shape ({n},), got {nrm.shape}")
            wrong = np.flatnonzero(~np.isfinite(nrm) | (nrm < 0))
            if wrong.size:
                raise ValueError(
                    f"norms must be finite and >= 0, got {nrm[wrong[0]]} at row {wrong[0]}"
                )
        self.store.reserve(n)
        self.store.append(arr.astype(self.encoder.code_dtype), nrm, new_ids, lst)
        self.store.finish_append(self._cross_terms)

    def _cross_terms(self, codes: NDArray[Any], lists: NDArray[Any] | None) -> NDArray[np.float64]:
        """Exact cross terms ``||x'||^2 - ||c||^2 - sum_m ||C_m[c_m]||^2`` (float64) of rows
        with ``codes`` (and IVF ``lists``; x' = c + r' with c the list's centroid), in blocks."""
        out = np.empty(codes.shape[0], dtype=np.float64)
        sq = np.einsum("mkd,mkd->mk", self._stack64, self._stack64)
        cent = self.store.centroids
        for a in range(0, codes.shape[0], ADD_ROWS):
            c = np.asarray(codes[a : a + ADD_ROWS])
            recon = self.decode64(c)
            cc: Any = 0.0
            if cent is not None and lists is not None:
                base = cent[np.asarray(lists[a : a + ADD_ROWS])].astype(np.float64)
                recon += base
                cc = np.einsum("nd,nd->n", base, base)
            s = np.zeros(c.shape[0], dtype=np.float64)
            for j in range(c.shape[1]):
                s += sq[j, c[:, j]]
            out[a : a + c.shape[0]] = (np.einsum("nd,nd->n", recon, recon) - cc) - s
        return out

    def decode64(self, codes: NDArray[Any]) -> NDArray[np.float64]:
        """Reconstructions (n, D) float64 of codes (n, M): the sum of the chosen entries."""
        out: NDArray[np.float64] = self._stack64[0][codes[:, 0]]
        for stage in range(1, codes.shape[1]):
            out += self._stack64[stage][codes[:, stage]]
        return out

    def remove(self, ids: ArrayLike) -> int:
        """Remove vectors by id; every id must be in the index. Returns how many went."""
        return self.store.remove(ids)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this index to one safetensors file, atomically (temporary file + rename).

        Parameters
        ----------
        path : str or PathLike
            Conventionally ``*.vgindex``; replaced only once the new file is complete.
        """
        if self.nlist is not None and self.store.centroids is None:
            raise ValueError("an untrained IVF index cannot be saved: add vectors first")
        write_index(
            path, self.encoder, self.store, metric=self.metric, norm=self.norm,
            beam_size=self.beam_size, nlist=self.nlist,
        )  # fmt: skip

    # -- search -----------------------------------------------------------------------
    def search(
        self,
        Q: ArrayLike,
        k: int,
        *,
        nprobe: int = 1,
        rerank: int | None = None,
        vectors: ArrayLike | str | os.PathLike[str] | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The k nearest stored vectors of each query.

        Parameters
        ----------
        Q : array_like, shape (nq, D) or (D,)
        k : int, 1 <= k <= MAX_K
        nprobe : int
            IVF lists scanned per query (1 <= nprobe <= nlist); ignored by flat indexes.
        rerank : int, optional
            Re-score the best ``rerank >= k`` candidates exactly and keep the k best
            (at most every stored vector: a larger depth re-scores them all). Deep
            searches run fewer queries at a time, so the memory beyond the result
            stays within about :data:`SEARCH_BYTES`.
        vectors : array_like or path of a .npy, shape (>= max id + 1, D), optional
            Originals addressed by id for re-ranking (a path is memory-mapped);
            without it re-ranking uses the decoded codes.

        Returns
        -------
        distances : ndarray, shape (nq, k), float32
            Squared L2 distance (ascending) or inner product / cosine
            similarity (descending); inf / -inf where fewer than k.
        ids : ndarray, shape (nq, k), int64; -1 where fewer than k
        """
        q = as_matrix(Q, self.dimension, "Q")
        require_finite(q, 0, "Q")
        if self.metric != "cosine":  # cosine: normalised in float64
            check_norms(q, 0, np.float32, "Q")  # the index's float32 scores
        k = positive_int(k, "k")
        if k > MAX_K:
            raise ValueError(f"k must be <= {MAX_K}, got {k}")
        depth = k
        if rerank is not None:
            depth = positive_int(rerank, "rerank")
            if not k <= depth <= MAX_K:
                raise ValueError(f"rerank must be in [k, {MAX_K}] = [{k}, {MAX_K}], got {depth}")
        elif vectors is not None:
            raise ValueError("vectors are only used with rerank=R; pass rerank too")
        nprobe = self._check_nprobe(nprobe)
        source = rerank_source(self, vectors) if rerank is not None else None
        q64 = np.asarray(q, dtype=np.float64)
        if self.metric == "cosine":
            qn = np.linalg.norm(q64, axis=1)
            if (qn == 0).any():
                raise ValueError(f"Q row {int(np.flatnonzero(qn == 0)[0])} is zero: no cosine")
            q64 = q64 / qn[:, None]
        nq = q64.shape[0]
        # no more candidates than stored vectors: the columns past them stay empty
        filled = min(k, max(len(self), 1))
        depth = min(depth, max(len(self), 1))
        batch = max(1, min(QUERY_BATCH, SEARCH_BYTES // (CANDIDATE_BYTES * depth)))
        dist = np.full((nq, k), np.inf, dtype=np.float32)
        pos = np.full((nq, k), -1, dtype=np.int64)
        terms = vector_terms(self)
        rescored = np.zeros(nq, dtype=np.int64)
        for a in range(0, nq, batch):
            qb = q64[a : a + batch]
            given = scan_input(self, qb, nprobe, terms)
            sc, ps = scan(given, depth)
            if given.bound is not None:
                rescored[a : a + qb.shape[0]] = given.bound.counts
            if source is not None:
                s64, ps = rerank_exact(self.metric, qb, ps, source, filled)
                sc = s64.astype(np.float32)
            else:
                sc, ps = sc[:, :filled], ps[:, :filled]
                if self.metric == "l2":
                    sc = sc + np.einsum("nd,nd->n", qb, qb).astype(sc.dtype)[:, None]
            dist[a : a + qb.shape[0], :filled] = sc if self.metric == "l2" else -sc
            pos[a : a + qb.shape[0], :filled] = ps
        self._last_rescored = rescored
        found = pos >= 0
        ids = np.full(pos.shape, -1, dtype=np.int64)
        ids[found] = self.store.ids[pos[found]]
        if self.metric != "l2":
            dist[~found] = -np.inf
        return dist, ids

    def _check_nprobe(self, nprobe: int) -> int:
        p = positive_int(nprobe, "nprobe")
        if self.nlist is not None and p > self.nlist:
            raise ValueError(f"nprobe must be <= nlist = {self.nlist}, got {p}")
        return p


def _check_scale(reach: float, what: str) -> None:
    """Refuse vectors whose squared norms no float32 score can hold."""
    limit = norm_limit(np.float32)
    if not reach <= limit:
        raise ValueError(
            f"{what} of norm up to {reach:.4g}, above the limit {limit:.4g} of the index's "
            "float32 scores (sqrt of the float32 maximum / 4)"
        )


def save(index: RvqIndex, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to one safetensors file, atomically (:meth:`RvqIndex.save`)."""
    if not isinstance(index, RvqIndex):
        raise TypeError(f"index must be an RvqIndex, got {type(index).__name__}")
    index.save(path)
