"""Residual vector quantization: the ``viva_glyph/rvq`` API and its array engine.

Stage 1 quantizes the input, every later stage quantizes what the stages
before it left over (EnCodec, Défossez et al. 2022; SoundStream, Zeghidour et
al. 2021)::

    q1 = argmin_c ||x - c||,   r1 = x - codebook1[q1]
    q2 = argmin_c ||r1 - c||,  r2 = r1 - codebook2[q2]   ...
    x' = sum_i codebook_i[q_i]

The module-level functions mirror the spec one to one (lists in, lists out);
:class:`RvqEncoder` methods do the same on (N, D) arrays, streamed in
cache-sized chunks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from viva_glyph import glyph
from viva_glyph._kernels import chunk_rows, code_dtype
from viva_glyph._validate import as_matrix, as_vector, positive_int, require_finite
from viva_glyph.codebook import Codebook

if TYPE_CHECKING:
    from viva_glyph.training import TrainingSummary

__all__ = [
    "RvqConfig",
    "RvqEncoder",
    "RvqTokens",
    "decode",
    "default_config",
    "encode",
    "from_codebooks",
    "new",
    "reconstruct",
    "reconstruction_error",
    "total_vocabulary",
]


@dataclass(frozen=True)
class RvqConfig:
    """RVQ configuration.

    Parameters
    ----------
    num_stages : int
        Number of quantization stages M (tokens per vector).
    dimension : int
        Dimension D of the vectors.
    codebook_size : int
        Size K of each codebook (the vocabulary of one stage).
    """

    num_stages: int
    dimension: int
    codebook_size: int

    def __post_init__(self) -> None:
        for name in ("num_stages", "dimension", "codebook_size"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))


def default_config() -> RvqConfig:
    """Default configuration: 4 stages of 256 codes on a 6-D latent.

    - 6-D latent: Johnson-Lindenstrauss optimal for the 3-D PAD
      (pleasure, arousal, dominance) emotional state;
    - 4 stages: matches EnCodec's error distribution;
    - 256 codes: adequate emotional granularity, one byte per token.

    Together: 256**4 = 4,294,967,296 possible glyphs.
    """
    return RvqConfig(num_stages=4, dimension=6, codebook_size=256)


@dataclass(frozen=True)
class RvqTokens:
    """Quantized result of one vector.

    Parameters
    ----------
    indices : sequence of int
        Token indices, one per stage, coarse to fine (stored as a tuple).
    total_error : float
        Euclidean norm of the residual after all stages, ``||x - decode(tokens)||``;
        NaN when unknown (tokens rebuilt from a glyph id or bytes).
    """

    indices: tuple[int, ...]
    total_error: float

    def __post_init__(self) -> None:
        if isinstance(self.indices, (str, bytes)) or not isinstance(self.indices, Sequence):
            raise TypeError(f"indices must be a sequence of int, got {type(self.indices).__name__}")
        for i in self.indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"indices must be ints, got {type(i).__name__} {i!r}")
            if i < 0:
                raise ValueError(f"indices must be >= 0, got {i}")
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        object.__setattr__(self, "total_error", float(self.total_error))

    def to_glyph_id(self, codebook_size: int) -> int:
        """Mixed-radix glyph id, stage 1 most significant (see :mod:`viva_glyph.glyph`)."""
        return glyph.glyph_id(self.indices, codebook_size)

    @classmethod
    def from_glyph_id(cls, glyph_id: int, codebook_size: int, num_stages: int) -> RvqTokens:
        """Tokens of a glyph id; ``total_error`` is NaN (unknown)."""
        return cls(glyph.indices_from_glyph_id(glyph_id, codebook_size, num_stages), math.nan)

    def to_bytes(self, codebook_size: int) -> bytes:
        """Compact bytes, ``ceil(log2 K)`` bits per stage."""
        return glyph.to_bytes(self.indices, codebook_size)

    @classmethod
    def from_bytes(cls, data: bytes, codebook_size: int, num_stages: int) -> RvqTokens:
        """Tokens from :meth:`to_bytes` output; ``total_error`` is NaN (unknown)."""
        return cls(glyph.from_bytes(data, codebook_size, num_stages), math.nan)


class RvqEncoder:
    """RVQ encoder: one codebook per stage.

    Parameters
    ----------
    codebooks : sequence of Codebook
        One per stage, all of the same size K, dimension D and dtype.
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

    __slots__ = ("_stack", "_stack64", "codebooks", "config", "training")

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
            if (cb.size, cb.dimension, cb.dtype) != (first.size, first.dimension, first.dtype):
                raise ValueError(
                    f"codebooks[{i}] is {cb.size} x {cb.dimension} {cb.dtype}, but codebooks[0] "
                    f"is {first.size} x {first.dimension} {first.dtype}: all must match"
                )
        derived = RvqConfig(len(books), first.dimension, first.size)
        if config is not None and config != derived:
            raise ValueError(f"config {config} does not match the codebooks ({derived})")
        self.codebooks = books
        self.config = derived
        self.training = training
        stack = np.stack([cb.vectors for cb in books])
        stack.setflags(write=False)
        self._stack: NDArray[np.floating[Any]] = stack
        self._stack64: NDArray[np.float64] | None = None

    # -- properties ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """Compute dtype of the codebooks (float32 or float64)."""
        return self._stack.dtype

    @property
    def code_dtype(self) -> np.dtype[Any]:
        """dtype of codes: uint8 for K <= 256, uint16 for K <= 65536, else int32."""
        return code_dtype(self.config.codebook_size)

    @property
    def codebook_array(self) -> NDArray[np.floating[Any]]:
        """All codebooks as one read-only array, shape (M, K, D)."""
        return self._stack

    def __repr__(self) -> str:
        c = self.config
        return (
            f"RvqEncoder(num_stages={c.num_stages}, dimension={c.dimension}, "
            f"codebook_size={c.codebook_size}, dtype={self.dtype})"
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

    def _row_chunks(self, n: int) -> Iterator[slice]:
        rows = chunk_rows(self.config.codebook_size, self.config.dimension, self.dtype.itemsize)
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
            reconstructions per vector at every stage (:mod:`viva_glyph.beam`).

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
        beam = positive_int(beam_size, "beam_size")
        n, d = x.shape
        codes = np.empty((n, m), dtype=self.code_dtype)
        errs = np.empty(n, dtype=np.float64) if errors else None
        first = next(self._row_chunks(n))
        rows_aug = np.ones((first.stop, d + 1), dtype=self.dtype)
        work = np.empty((first.stop, self.config.codebook_size), dtype=self.dtype)
        for rows in self._row_chunks(n):
            chunk = x[rows]
            require_finite(chunk, rows.start)
            k = chunk.shape[0]
            if beam > 1:
                from viva_glyph.beam import beam_search

                codes[rows] = beam_search(self, chunk.astype(self.dtype, copy=False), m, beam)
                if errs is not None:
                    diff = chunk.astype(np.float64) - self._decode_rows(codes[rows], np.float64)
                    errs[rows] = np.sqrt(np.einsum("nd,nd->n", diff, diff))
            else:
                left = self._greedy(chunk, rows_aug[:k], work[:k], codes[rows])
                if errs is not None:
                    errs[rows] = np.sqrt(np.einsum("nd,nd->n", left, left))
        return codes, errs

    def _greedy(
        self,
        x: NDArray[Any],
        rows_aug: NDArray[np.floating[Any]],
        work: NDArray[np.floating[Any]],
        codes: NDArray[Any],
    ) -> NDArray[np.float64]:
        """SoundStream's Algorithm 1 on one chunk; returns the final residual (float64).

        ``rows_aug`` (n, D + 1) holds the residual in the compute dtype beside a
        column of ones; the exact residual is kept in float64.
        """
        d = self.config.dimension
        residual = x.astype(np.float64)
        for stage in range(codes.shape[1]):
            book = self.codebooks[stage]
            rows_aug[:, :d] = residual
            q = book.assign(rows_aug, residual, work)  # q = argmin_c ||r - c||
            codes[:, stage] = q
            residual -= book.vectors64[q]  # r <- r - c_q
        return residual

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this encoder to a model file (safetensors), atomically.

        See :func:`viva_glyph.io.save`; needs the ``cli`` extra (safetensors).
        """
        from viva_glyph.io import save

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
        arr = np.asarray(codes)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or not 1 <= arr.shape[1] <= self.config.num_stages:
            raise ValueError(
                f"codes must have shape (N, m) with 1 <= m <= {self.config.num_stages}, "
                f"got {np.shape(codes)}"
            )
        k = self.config.codebook_size
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise ValueError(
                f"token index out of range: expected [0, {k}), got min {arr.min()} max {arr.max()}"
            )
        return arr

    def _decode_rows(self, codes: NDArray[Any], dtype: DTypeLike) -> NDArray[Any]:
        """Sum of the chosen entries, accumulated in ``dtype``, shape (n, D)."""
        stack = self._stack
        if np.dtype(dtype) != stack.dtype:
            if self._stack64 is None:
                self._stack64 = stack.astype(np.float64)
            stack = self._stack64
        out: NDArray[Any] = stack[0][codes[:, 0]]
        for stage in range(1, codes.shape[1]):
            out += stack[stage][codes[:, stage]]
        return out


def _grid_scale(value: float) -> float:
    """``value`` rounded to a multiple of 2**-24, so a 1-ulp difference between two
    platforms' ``pow`` cannot change the codebook bits."""
    return math.ldexp(round(math.ldexp(value, 24)), -24)


# -- the spec's functions --------------------------------------------------------------
def new(config: RvqConfig, seed: int = 0, *, dtype: DTypeLike = np.float32) -> RvqEncoder:
    """RVQ encoder with deterministic initialization.

    Stage ``s`` (0-based) holds the origin as entry 0 and K - 1 points uniform in
    ``[-h_s, h_s]^D`` with ``h_s = K**(-s / D)``, the side of the cell one of K
    codes covers in a unit cube. The origin makes every stage's greedy choice at
    least as good as skipping it, so decoding more stages never raises any
    vector's error. Same config and seed give bit-identical codebooks on every
    platform (numpy PCG64 and IEEE arithmetic only).

    Parameters
    ----------
    config : RvqConfig
    seed : int
        Non-negative seed.
    dtype : float32 or float64
        Codebook dtype.
    """
    if not isinstance(config, RvqConfig):
        raise TypeError(f"config must be an RvqConfig, got {type(config).__name__}")
    k, d = config.codebook_size, config.dimension
    books = []
    for stage in range(config.num_stages):
        cb = Codebook.random(k, d, seed=seed, scale=1.0, dtype=np.float64).vectors.copy()
        cb[0] = 0.0
        books.append(cb * _grid_scale(float(k) ** (-stage / d)))
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 63)
    return RvqEncoder([Codebook(v, dtype=dtype) for v in books], config)


def from_codebooks(codebooks: Sequence[Codebook] | Sequence[ArrayLike] | ArrayLike) -> RvqEncoder:
    """RVQ encoder from existing codebooks.

    Parameters
    ----------
    codebooks : sequence of Codebook, sequence of (K, D) arrays, or one (M, K, D) array
        Non-empty; all of equal K and D; finite values.
    """
    if isinstance(codebooks, np.ndarray):
        if codebooks.ndim != 3:
            raise ValueError(f"a codebook array must have shape (M, K, D), got {codebooks.shape}")
        items: list[Any] = list(codebooks)
    elif isinstance(codebooks, Sequence) and not isinstance(codebooks, (str, bytes)):
        items = list(codebooks)
    else:
        raise TypeError(
            f"codebooks must be a sequence of codebooks, got {type(codebooks).__name__}"
        )
    if not items:
        raise ValueError("from_codebooks needs at least one codebook, got none")
    books = [cb if isinstance(cb, Codebook) else Codebook(cb) for cb in items]
    return RvqEncoder(books)


def _check_encoder(encoder: object) -> RvqEncoder:
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    return encoder


def encode(encoder: RvqEncoder, input: Sequence[float] | ArrayLike) -> RvqTokens:
    """Encode one vector to tokens using residual quantization.

    Parameters
    ----------
    encoder : RvqEncoder
    input : sequence of float or ndarray, shape (D,)
    """
    x = as_vector(input, _check_encoder(encoder).config.dimension)
    codes, errors = encoder.encode_with_errors(x[None, :])
    return RvqTokens(tuple(int(i) for i in codes[0]), float(errors[0]))


def decode(encoder: RvqEncoder, tokens: RvqTokens) -> list[float]:
    """Decode tokens back to a vector (sum of the chosen entries, in float64).

    Fewer tokens than stages decode the first stages only.
    """
    if not isinstance(tokens, RvqTokens):
        raise TypeError(f"tokens must be RvqTokens, got {type(tokens).__name__}")
    codes = _check_encoder(encoder)._check_codes(np.asarray([tokens.indices], dtype=np.int64))
    return [float(v) for v in encoder._decode_rows(codes, np.float64)[0]]


def reconstruct(encoder: RvqEncoder, input: Sequence[float] | ArrayLike) -> list[float]:
    """Round-trip: encode then decode."""
    return decode(encoder, encode(encoder, input))


def reconstruction_error(encoder: RvqEncoder, input: Sequence[float] | ArrayLike) -> float:
    """Reconstruction error ``||input - reconstruct(input)||`` (equals ``total_error``)."""
    return encode(encoder, input).total_error


def total_vocabulary(encoder: RvqEncoder) -> int:
    """Total vocabulary ``codebook_size ** num_stages``: how many glyphs are possible."""
    c = _check_encoder(encoder).config
    vocabulary: int = c.codebook_size**c.num_stages
    return vocabulary
