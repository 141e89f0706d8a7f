"""RVQ configuration: stages, dimension and codebook size."""

from __future__ import annotations

from dataclasses import dataclass

from viva_glyph._validate import positive_int

__all__ = ["RvqConfig", "default_config"]


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
