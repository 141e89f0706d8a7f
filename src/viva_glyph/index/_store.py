"""The arrays of an index: codes, stored norms, ids and (IVF) centroids and list bounds.

Rows of an IVF index are kept sorted by list: list ``l`` holds rows
``offsets[l]:offsets[l + 1]``. Additions are staged (:meth:`Store.reserve`,
:meth:`Store.append`) and swapped in by :meth:`Store.finish_append`, so a
failed add leaves the index as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import _norms

__all__ = ["NORM_TRAIN", "Store"]

#: Cross terms a quantized-norm grid (qint8, cqint8) must have seen before it stays as it
#: is: until then every addition trains it again on the exact cross terms of all stored
#: vectors (recomputed from their codes) and re-quantizes them (a grid trained on a first
#: batch of one vector would leave every later vector to its bound: a slow search).
#: Once it stays, later vectors are quantized on it and only widen its bounds.
NORM_TRAIN = 1 << 16


class Store:
    """Arrays of one index (see the module docstring); ``norms`` is None for lut/none."""

    def __init__(
        self,
        norm: str,
        codes: NDArray[Any],
        norms: NDArray[Any] | None,
        ids: NDArray[np.int64],
        norm_params: NDArray[np.float64],
        centroids: NDArray[Any] | None,
        offsets: NDArray[np.int64],
        nlist: int | None,
    ) -> None:
        self.norm = norm
        self.codes = codes
        self.norms = norms
        self.ids = ids
        self.norm_params = norm_params
        self.centroids = centroids
        self.offsets = offsets
        self.nlist = nlist
        #: Exact norms the quantized-norm grid was trained on (see NORM_TRAIN).
        self.norm_seen = 0
        #: Codebook size K: one grid of cross terms per first-stage code.
        self.groups = 0
        self._pending: dict[str, Any] | None = None

    @classmethod
    def empty(cls, encoder: RvqEncoder, norm: str, nlist: int | None) -> Store:
        m = encoder.config.num_stages
        dt = _norms.stored_dtype(norm)
        store = cls(
            norm,
            np.empty((0, m), dtype=encoder.code_dtype),
            None if dt is None else np.empty(0, dtype=dt),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
            None,
            np.zeros(2 if nlist is None else nlist + 1, dtype=np.int64),
            nlist,
        )
        store.groups = encoder.config.codebook_size
        return store

    def set_centroids(self, centroids: NDArray[Any]) -> None:
        if self.ids.shape[0]:
            raise ValueError("the IVF centroids cannot change once vectors are stored")
        self.centroids = np.ascontiguousarray(centroids)

    @property
    def params_groups(self) -> int:
        """First-stage codes that the quantized-norm parameters cover (the codebook size)."""
        return self.groups

    # -- ids and lists ----------------------------------------------------------------
    def check_new_ids(self, ids: ArrayLike | None, n: int) -> NDArray[np.int64]:
        """Ids for n new rows: given (checked unique and new) or continuing the largest."""
        if ids is None:
            start = int(self.ids.max()) + 1 if self.ids.shape[0] else 0
            if start + n - 1 > np.iinfo(np.int64).max:
                raise ValueError(
                    f"no room for {n} more ids after the largest stored id {start - 1} "
                    "(int64 maximum): pass ids= explicitly"
                )
            return np.arange(start, start + n, dtype=np.int64)
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers (int64), got dtype {arr.dtype}")
        if arr.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), one per vector, got {arr.shape}")
        if arr.dtype == np.uint64 and n and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"ids must fit in int64, got {arr.max()}")
        out = arr.astype(np.int64)
        neg = np.flatnonzero(out < 0)
        if neg.size:
            raise ValueError(
                "ids must be >= 0 (-1 marks a missing result, and ids address the rows of "
                f"re-ranking vectors), got {out[neg[0]]} at row {neg[0]}"
            )
        uniq, counts = np.unique(out, return_counts=True)
        if uniq.shape[0] != n:
            dup = int(uniq[np.argmax(counts > 1)])
            row = int(np.flatnonzero(out == dup)[1])
            raise ValueError(f"duplicate id {dup} in ids (again at row {row})")
        clash = np.isin(out, self.ids)
        if clash.any():
            row = int(np.argmax(clash))
            raise ValueError(f"id {out[row]} (row {row}) is already in the index")
        return out

    def check_lists(self, lists: ArrayLike | None, n: int) -> NDArray[np.intp] | None:
        if self.nlist is None:
            if lists is not None:
                raise ValueError("lists are only for IVF indexes (nlist=...)")
            return None
        if self.centroids is None:
            raise ValueError("train the IVF index (index.train(X)) before add_codes")
        if lists is None:
            raise ValueError("an IVF index needs lists= (the IVF list of each code)")
        arr = np.asarray(lists)
        if arr.dtype.kind not in "iu" or arr.shape != (n,):
            raise ValueError(f"lists must be integers of shape ({n},), got {arr.dtype} {arr.shape}")
        bad = np.flatnonzero((arr < 0) | (arr >= self.nlist))
        if bad.size:
            raise ValueError(f"lists[{bad[0]}] = {arr[bad[0]]} is outside [0, {self.nlist})")
        return arr.astype(np.intp)

    def list_of(self, positions: NDArray[np.int64]) -> NDArray[np.intp]:
        """IVF list of stored rows."""
        out: NDArray[np.intp] = np.searchsorted(self.offsets, positions, side="right") - 1
        return out

    def _row_lists(self) -> NDArray[np.intp]:
        return np.repeat(np.arange(self.offsets.shape[0] - 1), np.diff(self.offsets))

    # -- adding -----------------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Stage room for n rows after the stored ones."""
        old = self.ids.shape[0]
        codes = np.empty((old + n, self.codes.shape[1]), dtype=self.codes.dtype)
        codes[:old] = self.codes
        ids = np.empty(old + n, dtype=np.int64)
        ids[:old] = self.ids
        lists = np.empty(old + n, dtype=np.intp) if self.nlist is not None else None
        if lists is not None:
            lists[:old] = self._row_lists()
        norms = np.empty(n, dtype=np.float64)
        self._pending = {"codes": codes, "ids": ids, "lists": lists, "norms": norms, "at": old}

    def append(
        self,
        codes: NDArray[Any],
        norms: NDArray[np.float64],
        ids: NDArray[np.int64],
        lists: NDArray[Any] | None,
    ) -> None:
        """Write a block of staged rows (exact norms ``||x'||^2`` float64)."""
        p = self._pending
        assert p is not None
        a, b = p["at"], p["at"] + codes.shape[0]
        old = self.ids.shape[0]
        p["codes"][a:b] = codes
        p["ids"][a:b] = ids
        p["norms"][a - old : b - old] = norms
        if p["lists"] is not None:
            p["lists"][a:b] = lists
        p["at"] = b

    def finish_append(self, cross_terms: Any = None) -> None:
        """Swap the staged rows in.

        For qint8/cqint8, ``cross_terms(codes, lists)`` gives the exact cross terms
        (float64) of rows (``lists`` None for a flat index). A grid that has seen fewer
        than :data:`NORM_TRAIN` of them is trained again on every stored row and all
        bytes re-quantized; else only the new rows are quantized (widening the bounds).
        """
        p, self._pending = self._pending, None
        assert p is not None
        old = self.ids.shape[0]
        new_norms = p["norms"]
        norms = None
        if self.norm in _norms.QUANTIZED and new_norms.size:
            groups = self.params_groups
            retrain = self.norm_params.size == 0 or self.norm_seen < NORM_TRAIN
            first = 0 if retrain else old
            rows = p["codes"][first:]
            lists = None if p["lists"] is None else p["lists"][first:]
            cross = cross_terms(rows, lists)
            params = self.norm_params
            if retrain:
                params = _norms.train_cross(self.norm, cross, rows[:, 0], groups)
            stored, params = _norms.encode_cross(self.norm, params, cross, rows[:, 0])
            if not retrain:
                stored = np.concatenate([np.asarray(self.norms), stored])
            self.norm_params, norms = params, stored
            if retrain:
                self.norm_seen = rows.shape[0]
        elif self.norm in _norms.QUANTIZED:
            norms = self.norms
        elif self.norms is not None:
            norms = np.concatenate([np.asarray(self.norms), _norms.encode_norms(new_norms)])
        codes, ids = p["codes"], p["ids"]
        if p["lists"] is not None:
            order = np.argsort(p["lists"], kind="stable")
            if old == 0 or not np.array_equal(order, np.arange(order.shape[0])):
                codes, ids = codes[order], ids[order]
                norms = None if norms is None else norms[order]
            counts = np.bincount(p["lists"], minlength=self.nlist or 0)
            self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        else:
            self.offsets = np.array([0, ids.shape[0]], dtype=np.int64)
        self.codes, self.ids, self.norms = codes, ids, norms

    # -- removing ---------------------------------------------------------------------
    def remove(self, ids: ArrayLike) -> int:
        arr = np.atleast_1d(np.asarray(ids))
        if arr.ndim == 1 and arr.size == 0:  # nothing to remove (an empty list is float64)
            return 0
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise TypeError(f"ids must be a 1-D array of integers, got {arr.dtype} {arr.shape}")
        want = np.unique(arr.astype(np.int64))
        present = np.isin(want, self.ids)
        if not present.all():
            missing = want[~present]
            raise ValueError(
                f"{missing.shape[0]} id(s) not in the index, e.g. {missing[:5].tolist()}"
            )
        keep = ~np.isin(self.ids, want)
        lists = self._row_lists()[keep] if self.nlist is not None else None
        self.codes = np.asarray(self.codes)[keep]
        self.ids = np.asarray(self.ids)[keep]
        if self.norms is not None:
            self.norms = np.asarray(self.norms)[keep]
        if lists is not None:
            counts = np.bincount(lists, minlength=self.nlist or 0)
            self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        else:
            self.offsets = np.array([0, self.ids.shape[0]], dtype=np.int64)
        return int(want.shape[0])
