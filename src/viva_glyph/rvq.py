"""Residual vector quantization: the ``viva_glyph/rvq`` API.

Stage 1 quantizes the input, every later stage quantizes what the stages
before it left over (EnCodec, Défossez et al. 2022; SoundStream, Zeghidour et
al. 2021)::

    q1 = argmin_c ||x - c||,   r1 = x - codebook1[q1]
    q2 = argmin_c ||r1 - c||,  r2 = r1 - codebook2[q2]   ...
    x' = sum_i codebook_i[q_i]

The module-level functions mirror the spec one to one (lists in, lists out);
:class:`RvqEncoder` (:mod:`viva_glyph.core.encoder`) does the same on (N, D)
arrays, streamed in cache-sized chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from viva_glyph.core import glyph
from viva_glyph.core.codebook import Codebook, codebooks_of_stages
from viva_glyph.core.config import RvqConfig, default_config
from viva_glyph.core.encoder import RvqEncoder

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

    def to_glyph_id(self, codebook_size: int | Sequence[int]) -> int:
        """Mixed-radix glyph id, stage 1 most significant (see :mod:`viva_glyph.core.glyph`)."""
        return glyph.glyph_id(self.indices, codebook_size)

    @classmethod
    def from_glyph_id(
        cls, glyph_id: int, codebook_size: int | Sequence[int], num_stages: int | None = None
    ) -> RvqTokens:
        """Tokens of a glyph id; ``total_error`` is NaN (unknown)."""
        return cls(glyph.indices_from_glyph_id(glyph_id, codebook_size, num_stages), math.nan)

    def to_bytes(self, codebook_size: int | Sequence[int]) -> bytes:
        """Compact bytes, ``ceil(log2 K_m)`` bits for stage m."""
        return glyph.to_bytes(self.indices, codebook_size)

    @classmethod
    def from_bytes(
        cls, data: bytes, codebook_size: int | Sequence[int], num_stages: int | None = None
    ) -> RvqTokens:
        """Tokens from :meth:`to_bytes` output; ``total_error`` is NaN (unknown)."""
        return cls(glyph.from_bytes(data, codebook_size, num_stages), math.nan)


def _grid_scale(value: float) -> float:
    """``value`` rounded to a multiple of 2**-24, so a 1-ulp difference between two
    platforms' ``pow`` cannot change the codebook bits."""
    return math.ldexp(round(math.ldexp(value, 24)), -24)


# -- the spec's functions --------------------------------------------------------------
def new(config: RvqConfig, seed: int = 0, *, dtype: DTypeLike = np.float32) -> RvqEncoder:
    """RVQ encoder with deterministic initialization.

    Stage ``s`` (0-based) holds the origin as entry 0 and K - 1 points uniform in
    ``[-h_s, h_s]^D`` with ``h_s = K**(-s / D)``, the side of the cell one of K
    codes covers in a unit cube (with per-stage sizes K_m,
    ``h_s = (K_1 ... K_s)**(-1 / D)``, the cell the earlier stages leave).
    The origin makes every stage's greedy choice at
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
    d, sizes = config.dimension, config.stage_sizes
    books = []
    for stage, k in enumerate(sizes):
        cb = Codebook.random(k, d, seed=seed, scale=1.0, dtype=np.float64).vectors.copy()
        cb[0] = 0.0
        cells = float(k) ** (-stage / d)  # per-stage sizes: the cells of the stages before
        if not config.uniform:
            cells = float(math.prod(sizes[:stage])) ** (-1.0 / d)
        books.append(cb * _grid_scale(cells))
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
    return RvqEncoder(codebooks_of_stages(items))


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
    indices, error = _check_encoder(encoder).encode_vector(input)
    tokens = object.__new__(RvqTokens)  # the encoder's codes: ints >= 0, a float error
    object.__setattr__(tokens, "indices", indices)
    object.__setattr__(tokens, "total_error", error)
    return tokens


def decode(encoder: RvqEncoder, tokens: RvqTokens) -> list[float]:
    """Decode tokens back to a vector (sum of the chosen entries, in float64).

    Fewer tokens than stages decode the first stages only.
    """
    if not isinstance(tokens, RvqTokens):
        raise TypeError(f"tokens must be RvqTokens, got {type(tokens).__name__}")
    decoded: list[float] = _check_encoder(encoder).decode_vector(tokens.indices).tolist()
    return decoded


def reconstruct(encoder: RvqEncoder, input: Sequence[float] | ArrayLike) -> list[float]:
    """Round-trip: encode then decode."""
    return decode(encoder, encode(encoder, input))


def reconstruction_error(encoder: RvqEncoder, input: Sequence[float] | ArrayLike) -> float:
    """Reconstruction error ``||input - reconstruct(input)||`` (equals ``total_error``)."""
    return encode(encoder, input).total_error


def total_vocabulary(encoder: RvqEncoder) -> int:
    """Total vocabulary ``codebook_size ** num_stages`` (the product of the
    stage sizes when they differ): how many glyphs are possible."""
    return _check_encoder(encoder).config.vocabulary
