"""Making semantic IDs unique: a suffix token, or moving items to free leaves.

Both work on sorted codes only (one ``lexsort``), never on the embeddings,
except that ``"reassign"`` reads the last-level residuals of the items it moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ResolveReport",
    "SuffixRangeError",
    "glyph_keys",
    "key_digits",
    "reassign",
    "suffix_ranks",
]


class SuffixRangeError(ValueError):
    """More items share one glyph than the model's suffix range can number.

    ``needed`` is the smallest suffix size that would have worked (None when unknown).
    """

    def __init__(self, message: str, *, needed: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed


@dataclass(frozen=True)
class ResolveReport:
    """What :meth:`SemanticIds.unique` did.

    Attributes
    ----------
    collided : int
        Items whose raw glyph (L codes) another item also has.
    largest_group : int
        Most items sharing one raw glyph.
    moved : int
        Items moved to a free last-level code (``"reassign"`` only).
    extra_error : float
        Mean increase of the squared reconstruction error of the moved items.
    mean_rank : float
        Mean rank of the chosen last-level code among the item's candidates
        (nearest first: 0 would be its own nearest code, which was taken).
    suffixed : int
        Items given a suffix other than 0.
    """

    collided: int
    largest_group: int
    moved: int = 0
    extra_error: float = 0.0
    mean_rank: float = 0.0
    suffixed: int = 0


def _order(
    codes: NDArray[Any], sqerr: NDArray[np.float64], keys: NDArray[Any] | None
) -> NDArray[np.intp]:
    cols = [codes[:, j] for j in range(codes.shape[1] - 1, -1, -1)]
    tail = [sqerr] if keys is None else [keys, sqerr]
    return np.lexsort((*tail, *cols))  # stable: ties by row when keys is None


def suffix_ranks(
    codes: NDArray[Any], sqerr: NDArray[np.float64], keys: NDArray[Any] | None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Rank of each item inside its glyph (by error, ties by key) and its glyph's size.

    Returns
    -------
    rank : ndarray, shape (N,), int64
    size : ndarray, shape (N,), int64
    """
    n = codes.shape[0]
    order = _order(codes, sqerr, keys)
    s = codes[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    idx = np.arange(n, dtype=np.int64)
    start = np.maximum.accumulate(np.where(new, idx, 0))
    bounds = np.append(np.flatnonzero(new), n)
    sizes = np.diff(bounds)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = idx - start
    size = np.empty(n, dtype=np.int64)
    size[order] = np.repeat(sizes, sizes)
    return rank, size


def check_range(rank: NDArray[np.int64], size: NDArray[np.int64], suffix_size: int) -> None:
    """Raise :class:`SuffixRangeError` when a rank does not fit in the suffix range."""
    largest = int(size.max()) if size.size else 0
    if largest > suffix_size:
        collided = int((size > 1).sum())
        raise SuffixRangeError(
            f"{collided} items collided (largest group: {largest} items with one glyph), but "
            f"the suffix range is {suffix_size}: a suffix size of {largest} would work "
            f"(fit(..., suffix_size={largest}) or ids.with_suffix_size({largest})); "
            "or fit more levels or larger codebooks",
            needed=largest,
        )


#: Overflowing items whose last-level distances are computed at once by :func:`reassign`
#: (copies of one vector would otherwise hold the distances of all of them at once).
REASSIGN_ROWS = 1 << 16
#: Bytes of those distances (float64) and their order (int64) at once: fewer rows than
#: REASSIGN_ROWS past 256 last-level codes (rows times codes is the memory that counts).
REASSIGN_BYTES = 256 << 20


def reassign(
    codes: NDArray[Any],
    rank: NDArray[np.int64],
    last_distances: Callable[[NDArray[np.intp]], NDArray[np.float64]],
    radices: tuple[int, ...],
    candidates: int,
) -> tuple[NDArray[np.int64], NDArray[np.intp], NDArray[np.int64]]:
    """Move items past the first of their glyph to the nearest free code among their candidates.

    The prefix (first L-1 codes) is kept. Items are placed in order of rank (the
    second of each glyph first, then the third, ...; ties by row); an item's
    candidates are the ``candidates`` last-level codes nearest to what the last
    level encodes for it (the last step of a beam search of that width under
    its prefix); a code is free when no item holds that glyph. An item whose
    candidates are all held stays (and gets a suffix).

    Parameters
    ----------
    codes : ndarray, shape (N, L)
    rank : ndarray, shape (N,)
        Rank inside the glyph (0: keeps the glyph).
    last_distances : callable
        Rows -> (n, K_L) squared distances of what the last level encodes
        for them to every last-level code.
    radices : tuple of int
        Codebook size of each level.
    candidates : int
        Beam width: codes considered per item.

    Returns
    -------
    codes : ndarray, shape (N, L), int64
        With the moved items' last code changed.
    moved : ndarray of row numbers
    cand_rank : ndarray, shape (len(moved),)
        Rank of the chosen code in the item's own distance order (1 = the
        second nearest).
    """
    out = codes.astype(np.int64, copy=True)
    L = out.shape[1]
    over = np.flatnonzero(rank > 0)
    if over.size == 0:
        return out, over, np.zeros(0, dtype=np.int64)
    over = over[np.argsort(rank[over], kind="stable")]
    k = radices[-1]
    width = min(candidates, k)
    # occupancy (prefix, last code) of the prefixes that the overflowing items use
    pkey = glyph_keys(out[:, : L - 1], radices[: L - 1], "'reassign'")
    prefixes = np.unique(pkey[over])
    inverse = np.searchsorted(prefixes, pkey)
    inside = inverse < prefixes.size
    inside[inside] = prefixes[inverse[inside]] == pkey[inside]
    # as sorted keys (prefix number) * K_L + last code after a -1 sentinel, 8 bytes an item
    # (a dense (prefixes, K_L) table grows with the product of both), and
    # the glyphs that moved items take
    keep = (rank == 0) & inside
    held = np.concatenate(([-1], np.unique(inverse[keep] * k + out[keep, L - 1])))
    taken: set[int] = set()
    moved: list[int] = []
    cand: list[int] = []
    block = max(1, min(REASSIGN_ROWS, REASSIGN_BYTES // (16 * k)))
    for start in range(0, over.size, block):  # (rows, K_L) distances per block
        rows = over[start : start + block]
        # each item's candidates, nearest first (ties to the lower code)
        part = np.argsort(last_distances(rows), axis=1, kind="stable")[:, :width]
        keys = inverse[rows, None] * k + part
        free = held[np.minimum(np.searchsorted(held, keys), held.size - 1)] != keys
        # the first candidate neither held nor taken; with none the item keeps its glyph
        for i, row_keys, row_free in zip(rows.tolist(), keys.tolist(), free.tolist(), strict=True):
            for j, (key, ok) in enumerate(zip(row_keys, row_free, strict=True)):
                if ok and key not in taken:
                    taken.add(key)
                    out[i, L - 1] = key % k
                    cand.append(j)
                    moved.append(i)
                    break
    return out, np.array(moved, dtype=np.intp), np.array(cand, dtype=np.int64)


def glyph_keys(codes: NDArray[Any], radices: tuple[int, ...], use: str) -> NDArray[np.int64]:
    """One int64 per row of ``codes`` (N, P): its mixed-radix number (all zeros for P = 0);
    ``use`` names what needs it in the error when the space passes 63 bits."""
    key = np.zeros(codes.shape[0], dtype=np.int64)
    total = 1
    for j, r in enumerate(radices):
        total *= r
        if total >= 1 << 63:
            raise ValueError(f"the glyph space {radices} does not fit in 63 bits for {use}")
        key = key * r + codes[:, j].astype(np.int64)
    return key


def key_digits(keys: NDArray[np.int64], radices: tuple[int, ...]) -> NDArray[np.int64]:
    """Codes (N, P) of mixed-radix numbers: the inverse of :func:`glyph_keys`."""
    out = np.empty((keys.shape[0], len(radices)), dtype=np.int64)
    rest = keys.copy()
    for j in range(len(radices) - 1, -1, -1):
        out[:, j] = rest % radices[j]
        rest //= radices[j]
    return out
