"""The RVQ encoder: codebooks per stage and the array engine that uses them.

Encoding streams (N, D) inputs in row chunks through the one engine of
:mod:`viva_glyph.core.search` (greedy is its B = 1 search, the step training runs too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from viva_glyph.checks import as_matrix, check_codes, positive_int, require_finite
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.config import RvqConfig
from viva_glyph.core.nearest import chunk_rows, code_dtype, norm_limit, over_norm_limit
from viva_glyph.core.search import beam_search, check_beam_size

if TYPE_CHECKING:
    from viva_glyph.core.summary import TrainingSummary

__all__ = ["RvqEncoder"]

#: Encoding hands the engine chunks of this many cache-sized row blocks at a time
#: (the engine splits them into pieces over its threads).
ENGINE_CHUNKS = 4


class RvqEncoder:
    """RVQ encoder: one codebook per stage.

    Parameters
    ----------
    codebooks : sequence of Codebook
        One per stage, all of the same dimension D and dtype. Their sizes may
        differ (e.g. 16, 256, 256 for semantic IDs): the config then carries
        them as ``codebook_sizes`` and codes take the dtype of the largest.
    config : RvqConfig, optional
        Must agree with the codebooks; derived from them when omitted.
    training : TrainingSummary, optional
        What fitting recorded (set by :func:`viva_glyph.fit`).

    Attributes
    ----------
    codebooks : tuple of Codebook
    config : RvqConfig
    training : TrainingSummary or None
    """

    __slots__ = ("_stack", "codebooks", "config", "training")

    def __init__(
        self,
        codebooks: Sequence[Codebook],
        config: RvqConfig | None = None,
        *,
        training: TrainingSummary | None = None,
    ) -> None:
        books = tuple(codebooks)
        if not books:
            raise ValueError("an RVQ encoder needs at least one codebook, got none")
        for i, cb in enumerate(books):
            if not isinstance(cb, Codebook):
                raise TypeError(f"codebooks[{i}] must be a Codebook, got {type(cb).__name__}")
        first = books[0]
        for i, cb in enumerate(books[1:], start=1):
            if (cb.dimension, cb.dtype) != (first.dimension, first.dtype):
                raise ValueError(
                    f"codebooks[{i}] is {cb.size} x {cb.dimension} {cb.dtype}, but codebooks[0] "
                    f"is {first.size} x {first.dimension} {first.dtype}: all must match in "
                    "dimension and dtype"
                )
        sizes = tuple(cb.size for cb in books)
        derived = RvqConfig(len(books), first.dimension, max(sizes), codebook_sizes=sizes)
        if config is not None and config != derived:
            raise ValueError(f"config {config} does not match the codebooks ({derived})")
        self.codebooks = books
        self.config = derived
        self.training = training
        stack: NDArray[np.floating[Any]] | None = None
        if derived.uniform:
            stack = np.stack([cb.vectors for cb in books])
            stack.setflags(write=False)
        self._stack = stack

    # -- properties ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """Compute dtype of the codebooks (float32 or float64)."""
        return self.codebooks[0].dtype

    @property
    def code_dtype(self) -> np.dtype[Any]:
        """dtype of codes: uint8 for K <= 256, uint16 for K <= 65536, else int32
        (K the largest codebook size)."""
        return code_dtype(self.config.codebook_size)

    @property
    def codebook_array(self) -> NDArray[np.floating[Any]]:
        """All codebooks as one read-only array, shape (M, K, D).

        Raises
        ------
        ValueError
            When the stages have different sizes (use :attr:`codebooks`).
        """
        if self._stack is None:
            raise ValueError(
                f"codebooks of sizes {self.config.codebook_sizes} do not stack into one "
                "(M, K, D) array: use .codebooks (one (K_m, D) codebook per stage)"
            )
        return self._stack

    def __repr__(self) -> str:
        c = self.config
        sizes = "" if c.uniform else f", codebook_sizes={c.codebook_sizes}"
        return (
            f"RvqEncoder(num_stages={c.num_stages}, dimension={c.dimension}, "
            f"codebook_size={c.codebook_size}{sizes}, dtype={self.dtype})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RvqEncoder):
            return NotImplemented
        return self.config == other.config and self.codebooks == other.codebooks

    __hash__ = None  # type: ignore[assignment]

    def _stages(self, num_stages: int | None) -> int:
        if num_stages is None:
            return self.config.num_stages
        m = positive_int(num_stages, "num_stages")
        if m > self.config.num_stages:
            raise ValueError(f"num_stages must be <= {self.config.num_stages}, got {m}")
        return m

    def _row_chunks(self, n: int, scale: int = 1) -> Iterator[slice]:
        rows = chunk_rows(self.config.codebook_size, self.config.dimension, self.dtype.itemsize)
        rows *= scale
        for start in range(0, n, rows):
            yield slice(start, min(start + rows, n))

    # -- encoding -----------------------------------------------------------------
    def encode(
        self, X: ArrayLike, num_stages: int | None = None, *, beam_size: int = 1
    ) -> NDArray[Any]:
        """Residual codes of each vector (greedy, or beam search).

        Parameters
        ----------
        X : array_like, shape (N, D) or (D,)
            Any real dtype; memory maps are streamed, never loaded whole.
        num_stages : int, optional
            Encode only the first m <= M stages.
        beam_size : int
            1 (default) is the greedy encoder; B > 1 keeps the B best partial
            reconstructions per vector at every stage (:mod:`viva_glyph.core.search`).

        Returns
        -------
        codes : ndarray, shape (N, m) or (m,), dtype :attr:`code_dtype`
        """
        codes, _ = self._encode(X, num_stages, beam_size, errors=False)
        return codes[0] if np.ndim(X) == 1 else codes

    def encode_with_errors(
        self, X: ArrayLike, num_stages: int | None = None, *, beam_size: int = 1
    ) -> tuple[NDArray[Any], NDArray[np.float64]]:
        """Codes and per-vector errors ``||x - decode(codes)||`` in one pass.

        Parameters are those of :meth:`encode`.

        Returns
        -------
        codes : ndarray, shape (N, m), dtype :attr:`code_dtype`
        errors : ndarray, shape (N,), float64
        """
        codes, errors = self._encode(X, num_stages, beam_size, errors=True)
        assert errors is not None
        return codes, errors

    def _encode(
        self, X: ArrayLike, num_stages: int | None, beam_size: int, *, errors: bool
    ) -> tuple[NDArray[Any], NDArray[np.float64] | None]:
        x = as_matrix(X, self.config.dimension)
        m = self._stages(num_stages)
        beam = check_beam_size(self.config, positive_int(beam_size, "beam_size"), m, self.dtype)
        n = x.shape[0]
        codes = np.empty((n, m), dtype=self.code_dtype)
        errs = np.empty(n, dtype=np.float64) if errors else None
        for rows in self._row_chunks(n, ENGINE_CHUNKS):
            chunk = x[rows]
            self._check_rows(chunk, rows.start)
            if beam == 1:  # greedy: the engine at B = 1 (exact decisions, float64 errors)
                out = None if errs is None else errs[rows]
                codes[rows] = beam_search(self, chunk, m, 1, sq_errors=out)
                if out is not None:
                    np.sqrt(out, out=out)
                continue
            codes[rows] = beam_search(self, chunk.astype(self.dtype, copy=False), m, beam)
            if errs is not None:
                diff = chunk.astype(np.float64) - self._decode_rows(codes[rows], np.float64)
                errs[rows] = np.sqrt(np.einsum("nd,nd->n", diff, diff))
        return codes, errs

    def _check_rows(self, chunk: NDArray[Any], start: int) -> None:
        """Rows must be finite and of norm at most :func:`~viva_glyph.core.nearest.norm_limit`
        (one pass over the chunk when they are)."""
        limit = norm_limit(self.dtype)
        top = float(np.max(np.abs(chunk)))
        if top * np.sqrt(chunk.shape[1]) <= limit:  # False for NaN
            return
        require_finite(chunk, start)
        over = over_norm_limit(chunk.astype(np.float64), self.dtype)
        if over is not None:
            row, norm, limit = over
            raise ValueError(
                f"X row {start + row} has norm {norm:.4g}, above the limit {limit:.4g} "
                f"of a {self.dtype} model (sqrt of the {self.dtype} maximum / 4) beyond "
                "which squared distances overflow"
            )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this encoder to a model file (safetensors), atomically.

        See :func:`viva_glyph.core.io.save`; needs the ``cli`` extra (safetensors).
        """
        from viva_glyph.files._modelfile import save

        save(self, path)

    # -- decoding -----------------------------------------------------------------
    def decode(self, codes: ArrayLike) -> NDArray[np.floating[Any]]:
        """Vectors from codes; fewer than M columns decodes the first stages only.

        Parameters
        ----------
        codes : array_like of int, shape (N, m) or (m,), 1 <= m <= M

        Returns
        -------
        ndarray, shape (N, D) or (D,), dtype :attr:`dtype`
        """
        arr = self._check_codes(codes)
        out = np.empty((arr.shape[0], self.config.dimension), dtype=self.dtype)
        for rows in self._row_chunks(arr.shape[0]):
            out[rows] = self._decode_rows(arr[rows], self.dtype)
        return out[0] if np.ndim(codes) == 1 else out

    def _check_codes(self, codes: ArrayLike) -> NDArray[Any]:
        c = self.config
        sizes = c.codebook_size if c.uniform else c.stage_sizes
        return check_codes(codes, c.num_stages, sizes, vector=True)

    def _decode_rows(self, codes: NDArray[Any], dtype: DTypeLike) -> NDArray[Any]:
        """Sum of the chosen entries, accumulated in ``dtype``, shape (n, D)."""
        wide = np.dtype(dtype) != self.dtype  # float64 sums of a float32 model
        stack = [cb.vectors64 if wide else cb.vectors for cb in self.codebooks]
        out: NDArray[Any] = stack[0][codes[:, 0]]
        for stage in range(1, codes.shape[1]):
            out += stack[stage][codes[:, stage]]
        return out
