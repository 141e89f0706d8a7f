"""What a fit is asked for: one parameter object, checked once, for every fit path.

:class:`FitParams` holds the parameters that :func:`viva_glyph.fit`,
:func:`viva_glyph.dask.fit` and :func:`viva_glyph.semantic.fit` share; it checks
each value when it is made (type and range), and :meth:`FitParams.resolve`
checks it against the data (N rows of dimension D) and fills in the
configuration. The fits then trust it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import (
    as_matrix,
    checked_rows,
    memory_available,
    non_negative_int,
    positive_int,
)
from viva_glyph.core import RvqConfig, default_config, stage_sizes

__all__ = [
    "ITERATIONS",
    "MAX_REFINE_UNKNOWNS",
    "PRESETS",
    "SAMPLES_PER_CODE",
    "FitParams",
    "Preset",
]

#: Rows per code read by default (FAISS's max_points_per_centroid): more rarely helps.
SAMPLES_PER_CODE = 256
#: Default most Lloyd iterations per dimension step (chosen by benchmarks/bench_fit.py --sweep).
ITERATIONS = 10
#: Most unknowns (M K) of refinement's least-squares system.
MAX_REFINE_UNKNOWNS = 8192


@dataclass(frozen=True)
class Preset:
    """What a preset of :func:`viva_glyph.fit` trains, and how its models encode.

    Attributes
    ----------
    beam_size : int
        Beam of the stage-wise, beam-aware training.
    rounds : int
        Most block-coordinate rounds after it (each kept only if held-out rows
        gain; :mod:`viva_glyph.train`).
    round_beam : int
        Beam the rounds encode with, and judge the held-out rows at.
    encode_beam : int
        The beam the model records (:class:`~viva_glyph.core.EncodeSettings`).
    samples_per_code : int
        Rows per code read by default (``max_samples`` overrides).
    """

    beam_size: int
    rounds: int
    round_beam: int
    encode_beam: int
    samples_per_code: int


#: The presets: ``"fast"`` is greedy training and encoding; ``"balanced"`` and
#: ``"quality"`` train for beam search with more rows per code and refit each stage's
#: codebook given the others (``benchmarks/bench_quality.py`` measures them).
PRESETS: dict[str, Preset] = {
    "fast": Preset(beam_size=1, rounds=0, round_beam=1, encode_beam=1, samples_per_code=256),
    "balanced": Preset(beam_size=4, rounds=8, round_beam=2, encode_beam=4, samples_per_code=1024),
    "quality": Preset(beam_size=5, rounds=6, round_beam=32, encode_beam=32, samples_per_code=1024),
}


@dataclass(frozen=True)
class FitParams:
    """The parameters of a fit of RVQ codebooks, checked when made.

    Parameters
    ----------
    config : RvqConfig, optional
        M, D, K. Without it ``num_stages`` and ``codebook_size`` (default 4 and
        256) and D from the data are used; given both, they must agree.
    num_stages : int, optional
    codebook_size : int or sequence of int, optional
        K for every stage, or one size per stage (``num_stages`` then defaults
        to its length).
    beam_size : int, optional
        1: greedy residual k-means; B > 1: beam-aware training. Default: the preset's.
    iterations : int
        Most Lloyd iterations of each dimension step of a stage's k-means.
    refine : int
        Rounds of joint least-squares refinement (0: none; equal sizes only).
    max_samples : int, optional
        Train on at most this many rows (default: the preset's rows per code, 256
        for ``"fast"``, times the largest K).
    seed : int
        Same data, parameters and seed give bit-identical codebooks.
    preset : {"fast", "balanced", "quality"}, optional
        What to train for (:data:`PRESETS`; default ``"fast"``): the training beam,
        the block-coordinate rounds, the rows per code and the beam the model
        records for encoding. Parameters given explicitly override the preset's.
        Without a preset, a model trained at ``beam_size`` B records B.

    Attributes
    ----------
    train_beam, rounds, round_beam, encode_beam : int
        What the preset and ``beam_size`` make of them: the beam of the stage-wise
        training, the block-coordinate rounds and their beam, and the beam the
        model records for encoding.

    Raises
    ------
    TypeError, ValueError
        For a value of the wrong type or out of range, or parameters that
        contradict each other.
    """

    config: RvqConfig | None = None
    num_stages: int | None = None
    codebook_size: int | Sequence[int] | None = None
    beam_size: int | None = None
    iterations: int = ITERATIONS
    refine: int = 0
    max_samples: int | None = None
    seed: int = 0
    preset: str | None = None
    train_beam: int = field(init=False, default=1)
    rounds: int = field(init=False, default=0)
    round_beam: int = field(init=False, default=1)
    encode_beam: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if self.config is not None and not isinstance(self.config, RvqConfig):
            raise TypeError(
                f"config must be an RvqConfig or None, got {type(self.config).__name__}"
            )
        if self.num_stages is not None:
            put("num_stages", positive_int(self.num_stages, "num_stages"))
        size = self.codebook_size
        if isinstance(size, np.ndarray):
            size = size.tolist()
        if isinstance(size, Sequence):
            sizes = stage_sizes(size)
            if self.num_stages is not None and self.num_stages != len(sizes):
                raise ValueError(
                    f"num_stages={self.num_stages} contradicts the {len(sizes)} sizes of "
                    f"codebook_size={list(sizes)}"
                )
            put("codebook_size", sizes)
        elif size is not None:
            put("codebook_size", positive_int(size, "codebook_size"))
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        preset = PRESETS[self.preset or "fast"]
        if self.beam_size is None:
            put("train_beam", preset.beam_size)
            put("encode_beam", preset.encode_beam)
        else:
            put("beam_size", positive_int(self.beam_size, "beam_size"))
            put("train_beam", self.beam_size)
            put("encode_beam", preset.encode_beam if self.preset else self.beam_size)
        put("rounds", preset.rounds)
        put("round_beam", preset.round_beam)
        put("iterations", positive_int(self.iterations, "iterations"))
        put("refine", non_negative_int(self.refine, "refine"))
        put("seed", non_negative_int(self.seed, "seed"))
        if self.max_samples is not None:
            put("max_samples", positive_int(self.max_samples, "max_samples"))
        if self.config is not None:
            self._agrees(self.config)
            cfg = self.config
            self._check_codebooks(cfg.num_stages, cfg.codebook_size, cfg.dimension)
        else:  # before the sizes are listed: 10**9 stages made a tuple of 10**9 sizes
            m, k = self._stages_and_largest()
            if m > 1 << 16:  # other sizes are checked by resolve, after N >= K
                self._check_codebooks(m, k, None)
        sizes = self._sizes()
        if self.refine and len(set(sizes)) > 1:
            raise ValueError(
                f"refine needs equal codebook sizes, got {list(sizes)}: fit with refine=0"
            )
        if self.refine and len(sizes) * max(sizes) > MAX_REFINE_UNKNOWNS:
            raise ValueError(
                f"refine needs num_stages * codebook_size <= {MAX_REFINE_UNKNOWNS}, "
                f"got {len(sizes)} * {max(sizes)}"
            )

    def _agrees(self, config: RvqConfig) -> None:
        size = self.codebook_size
        if isinstance(size, tuple):
            if size != config.stage_sizes:
                raise ValueError(
                    f"codebook_size={list(size)} contradicts "
                    f"config.stage_sizes={config.stage_sizes}"
                )
            return
        for name, val in (("num_stages", self.num_stages), ("codebook_size", size)):
            if val is not None and val != getattr(config, name):
                raise ValueError(f"{name}={val} contradicts config.{name}={getattr(config, name)}")

    def _stages_and_largest(self) -> tuple[int, int]:
        """M and the largest codebook size K, without listing the stage sizes."""
        size = self.codebook_size
        if isinstance(size, Sequence):
            return len(size), max(size)
        base = default_config()
        m = base.num_stages if self.num_stages is None else self.num_stages
        return m, base.codebook_size if size is None else size

    def _check_codebooks(self, m: int, k: int, dim: int | None) -> None:
        """Raise unless M codebooks of (at most) K x D float64 fit in half the memory
        available (D None: not yet known, at least 1)."""
        budget = memory_available() // 2
        need = m * k * (dim or 1) * 8
        if need > budget:
            largest = max(1, budget // (k * (dim or 1) * 8))
            shape = f"{k} x {dim}" if dim else f"{k} codes (of dimension D >= 1)"
            raise ValueError(
                f"num_stages {m} needs {need / 2**30:.3g} GiB or more of codebooks of {shape} "
                f"(M * K * D * 8 bytes); the largest num_stages that fits in "
                f"{budget / 2**30:.3g} GiB (half the memory available) is {largest}: "
                "use that or fewer"
            )

    def _sizes(self) -> tuple[int, ...]:
        """The stage sizes (they do not depend on the data's dimension)."""
        if self.config is not None:
            return self.config.stage_sizes
        size = self.codebook_size
        if isinstance(size, Sequence):
            return tuple(size)
        base = default_config()
        m = base.num_stages if self.num_stages is None else self.num_stages
        return (base.codebook_size if size is None else size,) * m

    def resolve(self, n: int, dim: int) -> tuple[RvqConfig, int]:
        """The configuration for data of N rows of dimension D, and the rows to train on.

        Raises
        ------
        ValueError
            D disagrees with the config, N or ``max_samples`` is below the largest
            codebook size, or the codebooks or the beam's scores would not fit in half
            the memory available.
        """
        if self.config is not None:
            if self.config.dimension != dim:
                raise ValueError(
                    f"X has dimension {dim}, but config.dimension is {self.config.dimension}"
                )
            cfg = self.config
        else:
            m, k = self._stages_and_largest()
            if n < k:
                raise ValueError(f"fit needs at least codebook_size = {k} rows, got N = {n}")
            self._check_codebooks(m, k, dim)
            cfg = RvqConfig.of_sizes(dim, self._sizes())
        k = cfg.codebook_size
        if n < k:
            raise ValueError(f"fit needs at least codebook_size = {k} rows, got N = {n}")
        per_code = PRESETS[self.preset or "fast"].samples_per_code
        limit = min(n, per_code * k) if self.max_samples is None else self.max_samples
        if limit < k:
            raise ValueError(f"max_samples must be >= codebook_size = {k}, got {limit}")
        rows = min(limit, n)
        self._check_beam(rows, k)
        return cfg, rows

    def _check_beam(self, rows: int, k: int) -> None:
        """Raise unless the beam's candidate scores (B * K * rows float32) fit in half
        the memory available."""
        beam = self.train_beam
        budget = memory_available() // 2
        need = beam * k * rows * 4
        if beam > 1 and need > budget:
            largest = max(1, budget // (k * rows * 4))
            raise ValueError(
                f"beam_size {beam} needs {need / 2**30:.3g} GiB of beam scores for {rows} "
                f"training rows x {k} codes (B * K * rows * 4 bytes); the largest beam_size "
                f"that fits in {budget / 2**30:.3g} GiB (half the memory available) is "
                f"{largest}: use that or fewer, or train on fewer rows (max_samples)"
            )

    def draw(self, X: Any) -> tuple[NDArray[np.float32], RvqConfig, np.random.Generator]:
        """The training sample of ``X`` (N, D), checked (the only check of the data), its
        configuration, and the fit's generator after drawing it."""
        x = as_matrix(X, None)
        config, rows = self.resolve(*x.shape)
        rng = np.random.default_rng(self.seed)
        return checked_rows(x, self.sample_rows(x.shape[0], rows, rng)), config, rng

    def sample_rows(self, n: int, rows: int, rng: np.random.Generator) -> Any:
        """Sorted indices of a uniform sample of ``rows`` of N rows, or None for all."""
        return np.sort(rng.choice(n, size=rows, replace=False)) if rows < n else None

    def record(self, config: RvqConfig, rows: int) -> dict[str, Any]:
        """The fit's parameters as a training summary records them (JSON types)."""
        return {
            "num_stages": config.num_stages,
            "dimension": config.dimension,
            "codebook_size": config.codebook_size if config.uniform else list(config.stage_sizes),
            "beam_size": self.train_beam,
            "iterations": self.iterations,
            "refine": self.refine,
            "max_samples": self.max_samples,
            "seed": self.seed,
            "samples_used": rows,
            "preset": self.preset or "fast",
        }
