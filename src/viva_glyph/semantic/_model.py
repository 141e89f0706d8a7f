"""The semantic-ID model: level codebooks, codes, unique IDs and tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import as_matrix, check_matrix, positive_int, require_finite
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.nearest import code_dtype
from viva_glyph.semantic._balance import balanced_assign, capacity, sq_distances
from viva_glyph.semantic._checks import (
    check_balance,
    check_codes,
    check_flag,
    check_keys,
    check_levels,
    check_normalize,
    check_suffix_size,
)
from viva_glyph.semantic._levels import (
    decode_levels,
    encode_levels,
    last_input,
    row_norms,
    unit_rows,
)
from viva_glyph.semantic._save import write_semantic
from viva_glyph.semantic._tokens import PrefixTrie, format_tokens, parse_tokens, vocabulary
from viva_glyph.semantic._unique import (
    ResolveReport,
    check_range,
    reassign,
    suffix_ranks,
)

__all__ = ["METRICS", "RESOLVE", "SemanticIds", "check_balance", "normalize_rows", "rows_source"]

METRICS = ("l2", "cosine")
RESOLVE = ("suffix", "reassign")
#: Beam candidates per item of ``unique(resolve="reassign")``.
REASSIGN_CANDIDATES = 32
#: Rows read per block when streaming a (memory-mapped) input.
BLOCK_ROWS = 1 << 16


def rows_source(X: Any, dim: int | None) -> Any:
    """``X`` checked as an (N, D) matrix without reading it.

    numpy input (and array-likes) go through ``as_matrix``; other arrays with
    ``shape``/``dtype``/``ndim`` and row slicing (Dask, zarr, h5py) are kept
    as they are and read block by block (``np.asarray(X[a:b])``).
    """
    if isinstance(X, np.ndarray) or not all(hasattr(X, a) for a in ("shape", "dtype", "ndim")):
        return as_matrix(X, dim)
    if not all(isinstance(v, (int, np.integer)) for v in X.shape):
        raise ValueError(
            f"X has unknown or non-integer sizes {X.shape} (a Dask array of unknown "
            "chunk sizes: call X.compute_chunk_sizes() first)"
        )
    check_matrix(X, dim)
    return X


def normalize_rows(x: NDArray[Any], start: int) -> NDArray[np.float64]:
    """Rows scaled to unit length (float64); a zero row is an error naming it."""
    out = np.asarray(x, dtype=np.float64)
    norms = row_norms(out)
    if (norms == 0).any():
        row = start + int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"X row {row} is all zeros: it has no direction for metric='cosine'")
    normalized: NDArray[np.float64] = out / norms[:, None]
    return normalized


class SemanticIds:
    """Semantic-ID model: L level codebooks and a suffix range.

    Made by :func:`viva_glyph.semantic.fit` or :func:`viva_glyph.semantic.load`.

    Parameters
    ----------
    codebooks : sequence of Codebook
        One per level, all of dimension D (sizes may differ).
    metric : {"l2", "cosine"}
        ``"cosine"`` scales every input row to unit length before encoding.
    balance : float or None
        Capacity bound of balanced assignment (see :meth:`codes`).
    beam_size : int
        Beam width of encoding.
    suffix_size : int, optional
        Range of the suffix token; default: the last level's size.
    normalize_residuals : bool
        Scale the residual to unit length before every level after the first
        (``metric="cosine"`` only; see :mod:`viva_glyph.semantic._levels`).
    residual_scales : sequence of float, optional
        With ``normalize_residuals``: the mean norm of each level's input
        residuals in training (L values, the first 1.0), used by :meth:`decode`.
    training : dict, optional
        What fitting recorded.
    trie : PrefixTrie, optional
        Assigned IDs for constrained decoding (saved with the model).
    """

    def __init__(
        self,
        codebooks: Sequence[Codebook],
        *,
        metric: str = "l2",
        balance: float | None = None,
        beam_size: int = 1,
        suffix_size: int | None = None,
        normalize_residuals: bool = False,
        residual_scales: Sequence[float] | None = None,
        training: dict[str, Any] | None = None,
        trie: PrefixTrie | None = None,
    ) -> None:
        books = tuple(codebooks)
        if not books or not all(isinstance(b, Codebook) for b in books):
            raise TypeError("codebooks must be a non-empty sequence of Codebook")
        check_levels(len(books))
        if len({b.dimension for b in books}) != 1:
            raise ValueError("all level codebooks must have the same dimension")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.codebooks = books
        self.metric = metric
        self.balance = check_balance(balance)
        self.beam_size = positive_int(beam_size, "beam_size")
        sizes = self.codebook_sizes
        self.suffix_size = check_suffix_size(sizes[-1] if suffix_size is None else suffix_size)
        self.normalize_residuals, self.residual_scales = check_normalize(
            normalize_residuals, residual_scales, metric, self.beam_size, len(books)
        )
        self.training = dict(training or {})
        self.trie = trie
        # the core engine encodes every model without residual normalisation
        self._encoder = None if self.normalize_residuals else RvqEncoder(books)

    # -- description --------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Number of levels L (tokens before the suffix)."""
        return len(self.codebooks)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Size of each level's codebook."""
        return tuple(b.size for b in self.codebooks)

    @property
    def dimension(self) -> int:
        """Dimension D of the embeddings."""
        return self.codebooks[0].dimension

    @property
    def radices(self) -> tuple[int, ...]:
        """Range of each position of a unique ID: the level sizes, then the suffix size."""
        return (*self.codebook_sizes, self.suffix_size)

    def __repr__(self) -> str:
        return (
            f"SemanticIds(levels={self.levels}, codebook_sizes={self.codebook_sizes}, "
            f"dimension={self.dimension}, metric={self.metric!r}, balance={self.balance}, "
            f"suffix_size={self.suffix_size}, normalize_residuals={self.normalize_residuals})"
        )

    def with_suffix_size(self, suffix_size: int) -> SemanticIds:
        """The same model with another suffix range (the trie is dropped)."""
        return SemanticIds(
            self.codebooks,
            metric=self.metric,
            balance=self.balance,
            beam_size=self.beam_size,
            suffix_size=suffix_size,
            normalize_residuals=self.normalize_residuals,
            residual_scales=self.residual_scales,
            training=self.training,
        )

    # -- codes --------------------------------------------------------------------
    def _blocks(self, x: NDArray[Any]) -> Iterator[tuple[int, NDArray[Any]]]:
        for start in range(0, x.shape[0], BLOCK_ROWS):
            block = np.asarray(x[start : start + BLOCK_ROWS])
            require_finite(block, start)
            yield start, normalize_rows(block, start) if self.metric == "cosine" else block

    def codes(self, X: ArrayLike, *, balanced: bool = False) -> NDArray[Any]:
        """Raw codes of each item.

        Parameters
        ----------
        X : array_like, shape (N, D)
            Memory maps are read in blocks.
        balanced : bool
            False (default): each item's own nearest codes, independent of the
            other items. True: capacity-constrained assignment over the items
            of ``X`` (every code of every level used by at most
            ``max(ceil(N/K), floor((1 + balance) N / K))`` of them); needs a
            model fitted with ``balance`` and holds N x D float64 in memory.

        Returns
        -------
        ndarray, shape (N, L), unsigned ints
        """
        codes, _ = self.codes_and_errors(X, balanced=balanced)
        return codes

    def codes_and_errors(
        self, X: ArrayLike, *, balanced: bool = False
    ) -> tuple[NDArray[Any], NDArray[np.float64]]:
        """Codes (N, L) and squared reconstruction errors (N,) float64."""
        balanced = check_flag(balanced, "balanced")
        x = rows_source(X, self.dimension)
        n = x.shape[0]
        codes = np.empty((n, self.levels), dtype=code_dtype(max(self.codebook_sizes)))
        err = np.empty(n, dtype=np.float64)
        if balanced:
            if self.balance is None:
                raise ValueError("balanced=True needs a model fitted with balance=...")
            rows = np.concatenate([b.astype(np.float64) for _, b in self._blocks(x)])
            codes[:], err[:] = self._balanced(rows)
            return codes, err
        for start, block in self._blocks(x):
            stop = start + block.shape[0]
            if self._encoder is not None:
                c, e = self._encoder.encode_with_errors(block, beam_size=self.beam_size)
                codes[start:stop], err[start:stop] = c, e**2
            else:
                c, e = encode_levels(block, self.codebooks, self.residual_scales)
                codes[start:stop], err[start:stop] = c, e
        return codes, err

    def _balanced(self, x: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        assert self.balance is not None
        n = x.shape[0]
        residual = x.copy()
        codes = np.empty((n, self.levels), dtype=np.intp)
        for level, book in enumerate(self.codebooks):
            if self.normalize_residuals and level > 0:
                residual, _ = unit_rows(residual)
            cap = capacity(n, book.size, self.balance)
            codes[:, level] = balanced_assign(residual, book.vectors64, cap)
            residual -= book.vectors64[codes[:, level]]
        if self.normalize_residuals:
            residual = x - self.decode(codes)
        return codes, np.einsum("nd,nd->n", residual, residual)

    def decode(self, codes: ArrayLike) -> NDArray[np.float64]:
        """Reconstructions (N, D) float64 of codes (N, m), m <= L (the first m levels)."""
        arr = np.asarray(codes)
        if arr.ndim != 2 or not 1 <= arr.shape[1] <= self.levels + 1:
            raise ValueError(
                f"codes must have shape (N, m), 1 <= m <= {self.levels}, got {arr.shape}"
            )
        arr = check_codes(arr, self.radices)[:, : self.levels]
        return decode_levels(arr, self.codebooks, self.residual_scales)

    # -- unique IDs -----------------------------------------------------------------
    def unique(
        self,
        X: ArrayLike,
        keys: Sequence[Any] | NDArray[Any] | None = None,
        resolve: str = "suffix",
        *,
        candidates: int = REASSIGN_CANDIDATES,
        balanced: bool | None = None,
        report: bool = False,
    ) -> Any:
        """Unique IDs: the L codes of each item and a suffix token.

        Parameters
        ----------
        X : array_like, shape (N, D)
        keys : sequence, length N, optional
            Distinct item keys; break ties of the suffix order (default: row order).
        resolve : {"suffix", "reassign"}
            ``"suffix"``: the items of one glyph are numbered 0, 1, 2, ... by
            their distance to its reconstruction (ties by key). ``"reassign"``:
            every item past the first of its glyph (second ones first, then
            third ones, ...) moves to the nearest last-level code among its
            beam candidates that no item holds under the same prefix; an item
            whose candidates are all held keeps its glyph and gets a suffix.
        candidates : int
            ``"reassign"``'s beam candidates: the ``candidates`` last-level
            codes nearest to the item's residual under its own prefix (its own
            code among them). Default 32.
        balanced : bool, optional
            Use the balanced assignment of :meth:`codes`; default: when the
            model was fitted with ``balance``.
        report : bool
            Also return a :class:`ResolveReport`.

        Returns
        -------
        ids : ndarray, shape (N, L + 1), unsigned ints
        report : ResolveReport (only with ``report=True``)

        Raises
        ------
        SuffixRangeError (a ValueError)
            When more items share a glyph than ``suffix_size``: says how many
            collided and which suffix size would work; never wraps.
        """
        if resolve not in RESOLVE:
            raise ValueError(f"resolve must be one of {RESOLVE}, got {resolve!r}")
        width = positive_int(candidates, "candidates")
        report = check_flag(report, "report")
        if balanced is not None:
            balanced = check_flag(balanced, "balanced")
        x = rows_source(X, self.dimension)
        n = x.shape[0]
        key_arr = check_keys(keys, n)
        use_balance = self.balance is not None if balanced is None else balanced
        codes, err = self.codes_and_errors(x, balanced=use_balance)
        rank, size = suffix_ranks(codes, err, key_arr)
        collided = int((size > 1).sum())
        largest = int(size.max())
        moved_rows: NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        extra: NDArray[np.float64] = np.zeros(0)
        cand: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        final = codes.astype(np.int64)
        if resolve == "reassign" and largest > 1:
            final, moved_rows, cand = reassign(
                codes,
                rank,
                lambda rows: self._last_distances(x, final, rows),
                self.codebook_sizes,
                width,
            )
            if moved_rows.size:
                err = err.copy()
                before = err[moved_rows]
                err[moved_rows] = self._errors(x, final, moved_rows)
                extra = err[moved_rows] - before
            rank, size = suffix_ranks(final, err, key_arr)
        check_range(rank, size, self.suffix_size)
        out = np.empty((n, self.levels + 1), dtype=code_dtype(max(self.radices)))
        out[:, : self.levels] = final
        out[:, self.levels] = rank
        if not report:
            return out
        return out, ResolveReport(
            collided=collided,
            largest_group=largest,
            moved=int(moved_rows.size),
            extra_error=float(extra.mean()) if extra.size else 0.0,
            mean_rank=float(cand.mean()) if cand.size else 0.0,
            suffixed=int((rank > 0).sum()),
        )

    def _rows(self, x: NDArray[Any], rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """Input rows (in the caller's order) as the model encodes them (float64)."""
        order = np.argsort(rows, kind="stable")
        block = np.empty((rows.size, self.dimension), dtype=np.float64)
        block[order] = np.asarray(x[rows[order]])  # sorted reads: memory maps, Dask
        return normalize_rows(block, 0) if self.metric == "cosine" else block

    def _last_distances(
        self, x: NDArray[Any], codes: NDArray[Any], rows: NDArray[np.intp]
    ) -> NDArray[np.float64]:
        """Squared distances of what the last level encodes for ``rows`` to every last code."""
        u = last_input(self._rows(x, rows), codes[rows], self.codebooks, self.residual_scales)
        return sq_distances(u, self.codebooks[-1].vectors64)

    def _errors(
        self, x: NDArray[Any], codes: NDArray[Any], rows: NDArray[np.intp]
    ) -> NDArray[np.float64]:
        """Squared reconstruction errors of ``rows`` under ``codes``."""
        diff = self._rows(x, rows) - self.decode(codes[rows])
        out: NDArray[np.float64] = np.einsum("nd,nd->n", diff, diff)
        return out

    # -- tokens -------------------------------------------------------------------
    def tokens(self, ids: ArrayLike) -> list[str]:
        """Token strings such as ``<a_12><b_7><c_200><d_0>`` of IDs or codes (N, P)."""
        return format_tokens(ids, self.radices)

    def parse(self, texts: Sequence[str] | str) -> NDArray[np.int64]:
        """Codes (N, P) of token strings; inverse of :meth:`tokens`."""
        return parse_tokens(texts, self.radices)

    def vocabulary(self) -> list[str]:
        """Every token string (L levels, then the suffix), to add to a tokenizer."""
        return vocabulary(self.radices)

    def build_trie(self, ids: ArrayLike) -> PrefixTrie:
        """Index assigned unique IDs (N, L + 1) for :meth:`PrefixTrie.allowed`; sets ``.trie``."""
        self.trie = PrefixTrie(ids, self.radices)
        return self.trie

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model (and its trie) to a safetensors file, atomically."""
        keys = None
        if self.trie is not None:
            if self.trie.radices != self.radices:
                raise ValueError(
                    f"the trie's radices {self.trie.radices} are not the model's {self.radices}"
                )
            keys = self.trie.keys
        settings = {
            "levels": self.levels,
            "codebook_sizes": list(self.codebook_sizes),
            "dimension": self.dimension,
            "metric": self.metric,
            "balance": self.balance,
            "beam_size": self.beam_size,
            "suffix_size": self.suffix_size,
            "normalize_residuals": self.normalize_residuals,
            "residual_scales": None if self.residual_scales is None else list(self.residual_scales),
            "training": self.training,
        }
        write_semantic(path, self.codebooks, settings, keys)
