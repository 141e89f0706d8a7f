"""Token strings of semantic IDs and the prefix trie for constrained decoding.

A semantic ID of L levels and a suffix is written ``<a_12><b_7><c_200><d_0>``:
one token per position, the letter naming the position (``a`` the first level,
the letter after the last level the suffix), the number the code.

:class:`PrefixTrie` holds the assigned IDs as one sorted array of mixed-radix
integers (8 bytes per ID, memory proportional to N); the IDs that start with a
prefix are one contiguous range of it, found by two binary searches, and the
allowed next codes are the distinct digits of that range.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.semantic._checks import check_codes

__all__ = ["MAX_VOCABULARY", "PrefixTrie", "format_tokens", "parse_tokens", "vocabulary"]

#: Most token strings :func:`vocabulary` lists (a tokenizer's vocabulary, not an ID space).
MAX_VOCABULARY = 1 << 24
# ASCII digits, no leading zero: exactly the strings format_tokens writes
_TOKEN = re.compile(r"<([a-z])_(0|[1-9][0-9]{0,8})>")


def _letters(n: int) -> str:
    if n > 26:
        raise ValueError(f"token strings name at most 26 positions, got {n}")
    return string.ascii_lowercase[:n]


def vocabulary(radices: Sequence[int]) -> list[str]:
    """Every token string, position by position: ``<a_0> .. <a_{K1-1}>, <b_0>, ...``.

    Raises
    ------
    ValueError
        When that is more than :data:`MAX_VOCABULARY` strings.
    """
    total = sum(int(k) for k in radices)
    if total > MAX_VOCABULARY:
        raise ValueError(
            f"the vocabulary would hold {total} tokens (radices {tuple(radices)}), more than "
            f"{MAX_VOCABULARY}: use a smaller suffix_size"
        )
    return [
        f"<{ch}_{j}>"
        for ch, k in zip(_letters(len(radices)), radices, strict=True)
        for j in range(k)
    ]


def format_tokens(codes: ArrayLike, radices: Sequence[int]) -> list[str]:
    """One token string per row of ``codes`` (N, P), P <= len(radices)."""
    arr = check_codes(codes, radices)
    letters = _letters(arr.shape[1])
    cols = [[f"<{ch}_{v}>" for v in col.tolist()] for ch, col in zip(letters, arr.T, strict=True)]
    return ["".join(parts) for parts in zip(*cols, strict=True)]


def parse_tokens(texts: Sequence[str], radices: Sequence[int]) -> NDArray[np.int64]:
    """Inverse of :func:`format_tokens`: token strings to codes (N, P).

    Raises
    ------
    ValueError
        For a string that is not a run of ``<letter_number>`` tokens in
        position order, of one length, each number within its position's range.
    """
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, (Sequence, np.ndarray)):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    rows: list[list[int]] = []
    letters = _letters(len(radices))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"token string {i} must be str, got {type(text).__name__}")
        found = _TOKEN.findall(text)
        if not found or "".join(f"<{a}_{b}>" for a, b in found) != text:
            raise ValueError(f"token string {i} is not a run of <x_N> tokens: {text[:80]!r}")
        positions = "".join(a for a, _ in found)
        if positions != letters[: len(found)]:
            raise ValueError(
                f"token string {i} has positions {positions[:30]!r}"
                f"{'...' if len(positions) > 30 else ''}, expected {letters[: len(found)]!r}"
                " in order"
            )
        rows.append([int(b) for _, b in found])
        if len(rows[-1]) != len(rows[0]):
            raise ValueError(
                f"token string {i} has {len(rows[-1])} tokens, string 0 has {len(rows[0])}"
            )
    if not rows:
        return np.zeros((0, len(radices)), dtype=np.int64)
    out = np.array(rows, dtype=np.int64)
    check_codes(out, radices)
    return out


class PrefixTrie:
    """The set of assigned IDs, answering "which codes may follow this prefix?".

    Parameters
    ----------
    ids : array_like of int, shape (N, P)
        Assigned IDs (duplicates are kept once).
    radices : sequence of int, length P
        Range of each position; their product must be below 2**63.

    Attributes
    ----------
    keys : ndarray, shape (U,), int64
        The distinct IDs as sorted mixed-radix integers (position 0 most significant).
    """

    __slots__ = ("_strides", "keys", "radices")

    def __init__(self, ids: ArrayLike, radices: Sequence[int]) -> None:
        if isinstance(radices, (str, bytes)) or not isinstance(radices, (Sequence, np.ndarray)):
            raise TypeError(f"radices must be a sequence of ints, got {type(radices).__name__}")
        if len(radices) == 0 or not all(
            isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)) and r > 0
            for r in radices
        ):
            raise ValueError(f"radices must be one or more positive ints, got {list(radices)!r}")
        self.radices = tuple(int(r) for r in radices)
        total = 1
        for r in self.radices:
            total *= r
        if total >= 1 << 63:
            raise ValueError(f"the ID space {self.radices} does not fit in 63 bits")
        strides = [1] * len(self.radices)
        for j in range(len(self.radices) - 2, -1, -1):
            strides[j] = strides[j + 1] * self.radices[j + 1]
        self._strides = np.array(strides, dtype=np.int64)
        arr = check_codes(ids, self.radices)
        if arr.shape[1] != len(self.radices):
            raise ValueError(f"ids must have {len(self.radices)} columns, got {arr.shape[1]}")
        self.keys: NDArray[np.int64] = np.unique(arr @ self._strides)

    @classmethod
    def from_keys(cls, keys: NDArray[Any], radices: Sequence[int]) -> PrefixTrie:
        """A trie from stored keys (validated: int64, sorted, unique, in range)."""
        trie = cls(np.zeros((0, len(radices)), dtype=np.int64), radices)
        k = np.asarray(keys)
        if k.dtype != np.int64 or k.ndim != 1:
            raise ValueError(f"trie keys must be 1-D int64, got {k.dtype} {k.shape}")
        total = int(trie._strides[0]) * trie.radices[0]
        if k.size and (k[0] < 0 or k[-1] >= total or not (np.diff(k) > 0).all()):
            raise ValueError("trie keys must be sorted, distinct and inside the ID space")
        trie.keys = k
        return trie

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __repr__(self) -> str:
        return f"PrefixTrie({len(self)} ids, radices={self.radices})"

    def _range(self, prefix: object) -> tuple[int, int]:
        prefix = _prefix(prefix)
        p = len(prefix)
        if p > len(self.radices):
            raise ValueError(f"prefix of {p} codes is longer than an ID ({len(self.radices)})")
        if p == 0:
            return 0, len(self)
        for j, v in enumerate(prefix):
            if not 0 <= v < self.radices[j]:
                raise ValueError(f"codes column {j} must be in [0, {self.radices[j]}), got {v}")
        stride = int(self._strides[p - 1])
        lo = int(np.dot(np.asarray(prefix, dtype=np.int64), self._strides[:p]))
        return (
            int(np.searchsorted(self.keys, lo, side="left")),
            int(np.searchsorted(self.keys, lo + stride, side="left")),
        )

    def allowed(self, prefix: Sequence[int] = ()) -> NDArray[np.int64]:
        """Codes that follow ``prefix`` in some assigned ID, ascending.

        Parameters
        ----------
        prefix : sequence of int, length p < P
            Codes of the first p positions (empty: the first position).

        Returns
        -------
        ndarray, shape (n,), int64
            Empty when no ID starts with ``prefix`` or the prefix is a whole ID.
        """
        prefix = _prefix(prefix)
        lo, hi = self._range(prefix)
        p = len(prefix)
        if p == len(self.radices) or lo == hi:
            return np.zeros(0, dtype=np.int64)
        digits = (self.keys[lo:hi] // self._strides[p]) % self.radices[p]
        keep = np.ones(digits.shape[0], dtype=bool)
        keep[1:] = digits[1:] != digits[:-1]  # sorted keys: sorted digits
        out: NDArray[np.int64] = digits[keep]
        return out

    def count(self, prefix: Sequence[int] = ()) -> int:
        """Number of assigned IDs that start with ``prefix``."""
        lo, hi = self._range(prefix)
        return hi - lo

    def __contains__(self, ident: object) -> bool:
        try:
            codes = _prefix(ident)
        except TypeError:
            return False
        if len(codes) != len(self.radices):
            return False
        if not all(0 <= v < r for v, r in zip(codes, self.radices, strict=True)):
            return False
        return self.count(codes) == 1


def _prefix(prefix: object) -> list[int]:
    """A prefix as a list of Python ints; TypeError for anything but a sequence of ints."""
    if isinstance(prefix, np.ndarray):
        if prefix.ndim != 1 or (prefix.size and prefix.dtype.kind not in "iu"):
            raise TypeError(
                f"prefix must be a 1-D sequence of ints, got an array {prefix.dtype} {prefix.shape}"
            )
        return [int(v) for v in prefix.tolist()]
    if isinstance(prefix, (str, bytes)) or not isinstance(prefix, Sequence):
        raise TypeError(f"prefix must be a sequence of ints, got {type(prefix).__name__}")
    out = []
    for j, v in enumerate(prefix):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"prefix must hold ints, got {type(v).__name__} {v!r} at position {j}")
        out.append(int(v))
    return out
