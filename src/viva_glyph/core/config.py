"""RVQ configuration: stages, dimension and codebook size (one, or one per stage)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from viva_glyph.checks import positive_int

__all__ = ["EncodeSettings", "RvqConfig", "default_config", "stage_sizes"]


def stage_sizes(sizes: object, name: str = "codebook_size") -> tuple[int, ...]:
    """A sequence of per-stage codebook sizes as a tuple of positive ints (at least one)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(sizes).__name__}")
    if len(sizes) == 0:
        raise ValueError(f"{name} must hold one size per stage, got an empty sequence")
    return tuple(positive_int(k, f"{name}[{i}]") for i, k in enumerate(sizes))


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
        Size K of each codebook (the vocabulary of one stage). When the stages
        have different sizes it is the largest of them (it sizes the code dtype
        and the search buffers).
    codebook_sizes : tuple of int, optional, keyword only
        Per-stage sizes ``(K_1, ..., K_M)`` when they differ (semantic IDs use
        e.g. 16, 256, 256); ``codebook_size`` must then be their maximum.
        Sizes that are all equal are stored as the plain config (this field
        None), so ``RvqConfig(3, 8, 256, codebook_sizes=(256, 256, 256)) ==
        RvqConfig(3, 8, 256)``. :meth:`of_sizes` builds a config from the sizes
        alone; :attr:`stage_sizes` gives the M sizes in every case.

    Examples
    --------
    >>> RvqConfig.of_sizes(8, [16, 256, 256])
    RvqConfig(num_stages=3, dimension=8, codebook_size=256, codebook_sizes=(16, 256, 256))
    >>> RvqConfig(3, 8, 256).stage_sizes
    (256, 256, 256)
    """

    num_stages: int
    dimension: int
    codebook_size: int
    codebook_sizes: tuple[int, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("num_stages", "dimension", "codebook_size"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if self.codebook_sizes is None:
            return
        sizes = stage_sizes(self.codebook_sizes, "codebook_sizes")
        if len(sizes) != self.num_stages:
            raise ValueError(
                f"codebook_sizes must hold num_stages = {self.num_stages} sizes, got {len(sizes)}"
            )
        if max(sizes) != self.codebook_size:
            raise ValueError(
                f"codebook_size must be the largest of codebook_sizes {sizes}, "
                f"got {self.codebook_size}"
            )
        object.__setattr__(self, "codebook_sizes", None if min(sizes) == max(sizes) else sizes)

    @classmethod
    def of_sizes(cls, dimension: int, codebook_sizes: Sequence[int]) -> RvqConfig:
        """The config of ``len(codebook_sizes)`` stages of those sizes."""
        sizes = stage_sizes(codebook_sizes, "codebook_sizes")
        return cls(len(sizes), dimension, max(sizes), codebook_sizes=sizes)

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """The codebook size of every stage, ``(K_1, ..., K_M)``."""
        if self.codebook_sizes is None:
            return (self.codebook_size,) * self.num_stages
        return self.codebook_sizes

    @property
    def uniform(self) -> bool:
        """Whether every stage has ``codebook_size`` codes."""
        return self.codebook_sizes is None

    @property
    def vocabulary(self) -> int:
        """How many glyphs are possible: the product of the stage sizes."""
        return math.prod(self.stage_sizes)

    def __repr__(self) -> str:
        sizes = "" if self.codebook_sizes is None else f", codebook_sizes={self.codebook_sizes}"
        return (
            f"RvqConfig(num_stages={self.num_stages}, dimension={self.dimension}, "
            f"codebook_size={self.codebook_size}{sizes})"
        )


#: Largest beam an encoding setting may hold (a model file's value is checked against it;
#: the search refuses a beam whose scratch would not fit in memory in any case).
MAX_BEAM_SIZE = 1 << 16


@dataclass(frozen=True)
class EncodeSettings:
    """How an encoder encodes when a call does not say: the settings it was trained for.

    A model fitted for beam search (:func:`viva_glyph.fit` with ``beam_size`` or a
    ``preset``) records them, its model file keeps them, and
    :meth:`~viva_glyph.RvqEncoder.encode` uses them unless its caller overrides
    them. Decoding never depends on them: it is the sum of one entry per stage.

    Parameters
    ----------
    beam_size : int
        Beam width of encoding (1: greedy, the default of a model without settings).
    """

    beam_size: int = 1

    def __post_init__(self) -> None:
        beam = positive_int(self.beam_size, "beam_size")
        if beam > MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be <= {MAX_BEAM_SIZE}, got {beam}")
        object.__setattr__(self, "beam_size", beam)

    def to_dict(self) -> dict[str, int]:
        """The settings as JSON types (what a model file stores)."""
        return {"beam_size": self.beam_size}

    @classmethod
    def from_dict(cls, d: object) -> EncodeSettings:
        """Settings from :meth:`to_dict`'s output; unknown or mistyped keys are refused.

        Raises
        ------
        TypeError, ValueError
            For anything but a dict of known keys with valid values.
        """
        if not isinstance(d, dict):
            raise TypeError(f"encoding settings must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"beam_size"})
        if unknown:
            raise ValueError(f"unknown encoding settings {unknown[:5]}")
        return cls(**d)


def default_config() -> RvqConfig:
    """Default configuration: 4 stages of 256 codes on a 6-D latent.

    - 6-D latent: Johnson-Lindenstrauss optimal for the 3-D PAD
      (pleasure, arousal, dominance) emotional state;
    - 4 stages: matches EnCodec's error distribution;
    - 256 codes: adequate emotional granularity, one byte per token.

    Together: 256**4 = 4,294,967,296 possible glyphs.
    """
    return RvqConfig(num_stages=4, dimension=6, codebook_size=256)
