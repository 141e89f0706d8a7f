"""The codebook: K code vectors of dimension D and nearest-code search.

This is the ``codebook`` module the spec's ``RvqEncoder`` is built from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from viva_glyph.checks import (
    as_matrix,
    as_vector,
    check_norms,
    non_negative_int,
    positive_int,
    require_finite,
)
from viva_glyph.core.nearest import Residuals, augmented_table, chunk_rows

__all__ = ["Codebook", "codebooks_of_stages"]


def _float_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"codebook dtype must be float32 or float64, got {dt}")
    return dt


class Codebook:
    """An immutable codebook of K entries of dimension D.

    Parameters
    ----------
    vectors : array_like, shape (K, D)
        Code vectors; finite real numbers, each of norm at most
        :func:`~viva_glyph.checks.norm_limit` of the dtype (about 4.6e18 for
        float32), so that no squared distance overflows. Copied, stored read-only.
    dtype : float32 or float64, optional
        Storage and compute dtype. Default: float32 input stays float32,
        anything else becomes float64.

    Examples
    --------
    >>> cb = Codebook([[0.0, 0.0], [1.0, 1.0]])
    >>> cb.nearest([0.9, 0.8])
    (1, 0.05)
    """

    __slots__ = ("_centered", "_norms", "_table", "_vectors", "_vectors64")

    def __init__(self, vectors: ArrayLike, *, dtype: DTypeLike | None = None) -> None:
        arr = as_matrix(vectors, None, "codebook vectors")
        if dtype is None:
            dtype = np.float32 if arr.dtype == np.float32 else np.float64
        arr = np.array(arr, dtype=_float_dtype(dtype), order="C", copy=True)
        require_finite(arr, 0, "codebook vectors")
        arr.setflags(write=False)
        self._vectors: NDArray[np.floating[Any]] = arr
        self._table: NDArray[np.floating[Any]] | None = None
        self._centered: tuple[Any, ...] | None = None
        vectors64 = arr.astype(np.float64)
        vectors64.setflags(write=False)
        self._vectors64: NDArray[np.float64] = vectors64
        check_norms(vectors64, 0, arr.dtype, "codebook", what="code")
        norms = np.sqrt(np.einsum("kd,kd->k", vectors64, vectors64))
        norms.setflags(write=False)
        self._norms: NDArray[np.float64] = norms

    @classmethod
    def random(
        cls,
        size: int,
        dimension: int,
        *,
        seed: int = 0,
        scale: float = 1.0,
        dtype: DTypeLike = np.float32,
    ) -> Codebook:
        """Codebook of entries uniform in ``[-scale, scale]^D``, bit-identical everywhere.

        The bits come from numpy's PCG64 stream and IEEE arithmetic only, so the
        same arguments give the same codebook on every platform.

        Parameters
        ----------
        size, dimension : int
            K and D.
        seed : int
            Non-negative seed.
        scale : float
            Half-width of the cube.
        dtype : float32 or float64
        """
        size = positive_int(size, "size")
        dimension = positive_int(dimension, "dimension")
        seed = non_negative_int(seed, "seed")
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be finite and >= 0, got {scale!r}")
        rng = np.random.Generator(np.random.PCG64(seed))
        unit = rng.random((size, dimension))  # float64 in [0, 1)
        return cls((2.0 * unit - 1.0) * float(scale), dtype=dtype)

    @property
    def vectors(self) -> NDArray[np.floating[Any]]:
        """Read-only code vectors, shape (K, D)."""
        return self._vectors

    @property
    def vectors64(self) -> NDArray[np.float64]:
        """Read-only code vectors in float64, shape (K, D)."""
        return self._vectors64

    @property
    def norms(self) -> NDArray[np.float64]:
        """Read-only ``||c||`` of every entry in float64, shape (K,)."""
        return self._norms

    @property
    def size(self) -> int:
        """Number of entries K."""
        return int(self._vectors.shape[0])

    @property
    def dimension(self) -> int:
        """Dimension D of each entry."""
        return int(self._vectors.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        """Storage and compute dtype (float32 or float64)."""
        return self._vectors.dtype

    @property
    def table(self) -> NDArray[np.floating[Any]]:
        """Augmented distance table ``[-2 C^T ; ||c||^2]``, shape (D + 1, K)."""
        if self._table is None:
            table = augmented_table(self._vectors)
            table.setflags(write=False)
            self._table = table
        return self._table

    @property
    def centered(
        self,
    ) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[np.float64], NDArray[Any]]:
        """The codebook shifted to its mean: ``(mu, table, norms, vectors)``.

        ``mu`` (D,) float64 is the mean entry; ``vectors`` (K, D) are the entries
        ``c - mu`` rounded once to this dtype, ``table`` (D + 1, K) is their
        :attr:`table` (last row from the exact shifted entries) and ``norms`` (K,)
        float64 the norms of the exact shifted entries. Distances from ``x - mu``
        to ``c - mu`` are those from x to c, without the float cancellation a
        large common offset of data and codes causes.
        """
        if self._centered is None:
            mu = self._vectors64.mean(axis=0)
            shifted = self._vectors64 - mu
            vectors = shifted.astype(self.dtype)
            table = augmented_table(vectors)
            table[-1] = np.einsum("kd,kd->k", shifted, shifted)
            norms = np.sqrt(np.einsum("kd,kd->k", shifted, shifted))
            for arr in (mu, table, norms, vectors):
                arr.setflags(write=False)
            self._centered = (mu, table, norms, vectors)
        return self._centered

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Codebook(size={self.size}, dimension={self.dimension}, dtype={self.dtype})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        return self.dtype == other.dtype and np.array_equal(self._vectors, other._vectors)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The vectors alone: the derived tables are rebuilt where they are needed, so a
        # pickled codebook (Dask ships encoders to workers) is the size of its data.
        return (Codebook, (self._vectors,))

    def lookup(self, indices: ArrayLike) -> NDArray[np.floating[Any]]:
        """Entries at ``indices``, shape ``indices.shape + (D,)``.

        Raises
        ------
        ValueError
            If an index is outside ``[0, K)``.
        """
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise ValueError(
                f"index out of range: codes must be in [0, {self.size}), "
                f"got min {idx.min()} and max {idx.max()}"
            )
        entries: NDArray[np.floating[Any]] = self._vectors[idx]
        return entries

    def nearest(self, vector: ArrayLike) -> tuple[int, float]:
        """Nearest entry to one vector.

        Parameters
        ----------
        vector : array_like, shape (D,)

        Returns
        -------
        index : int
            Lowest index among the nearest entries.
        squared_distance : float
            ``||vector - vectors[index]||^2`` in float64.
        """
        x = as_vector(vector, self.dimension, "vector")
        idx, dist = self.nearest_batch(x[None, :])
        return int(idx[0]), float(dist[0])

    def nearest_batch(self, vectors: ArrayLike) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """Nearest entry to each row, streamed in cache-sized chunks.

        Parameters
        ----------
        vectors : array_like, shape (N, D)

        Returns
        -------
        indices : ndarray, shape (N,), intp
        squared_distances : ndarray, shape (N,), float64
            Exact squared distance to the chosen entry (recomputed in float64).
        """
        x = as_matrix(vectors, self.dimension, "vectors")
        n = x.shape[0]
        rows = chunk_rows(self.size, self.dimension, self.dtype.itemsize)
        indices = np.empty(n, dtype=np.intp)
        dists = np.empty(n, dtype=np.float64)
        for start in range(0, n, rows):  # a one-stage greedy encoding of each chunk
            chunk = x[start : start + rows]
            require_finite(chunk, start, "vectors")
            residual = Residuals(chunk, self.dtype)
            indices[start : start + len(chunk)] = residual.take_nearest(self)
            dists[start : start + len(chunk)] = residual.sq_errors()
        return indices, dists


def codebooks_of_stages(stages: Any, dtype: DTypeLike | None = None) -> list[Codebook]:
    """One :class:`Codebook` per stage of ``stages`` (an (M, K, D) array or a
    sequence of (K, D) arrays or Codebooks); a bad stage's error names the stage.
    """
    books = []
    for stage, cb in enumerate(stages):
        try:
            books.append(cb if isinstance(cb, Codebook) else Codebook(cb, dtype=dtype))
        except ValueError as exc:
            raise ValueError(f"codebook of stage {stage}: {exc}") from None
    return books
