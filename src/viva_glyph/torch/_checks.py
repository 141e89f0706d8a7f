"""Checks at the entry points of :class:`~viva_glyph.torch.ResidualVQ`.

Inputs, codes and loaded state are checked once where they enter; the passes
trust them. An input check is one reduction (``aminmax``) and one host-device
synchronisation per batch; the offending row is searched only when the check
fails. While ``torch.compile`` or ``torch.export`` trace the module the checks
are left out of the graph (they branch on data), as with ``check_finite=False``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from viva_glyph.checks import positive_int
from viva_glyph.core.config import stage_sizes

__all__ = [
    "MAX_ABS",
    "bad_row",
    "bad_row_error",
    "check_codes",
    "check_options",
    "check_rows",
    "check_sizes",
    "check_state",
    "flatten",
    "tracing",
]

#: Largest magnitude accepted in an input. Distances are sums of D float32
#: products; below 1e15 they cannot overflow for any D under 1e8.
MAX_ABS = 1e15


def tracing() -> bool:
    """True while ``torch.compile`` or ``torch.export`` trace (no data-dependent checks)."""
    return bool(torch.compiler.is_compiling())


def _where(shape: tuple[int, ...], row: int, name: str) -> str:
    """Row ``row`` of the flattened leading axes ``shape``: ``row 5`` or ``x[1, 2]``."""
    if len(shape) <= 1:
        return f"row {row}"
    return f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(row, shape))}]"


def flatten(x: object, dim: int) -> Tensor:
    """``x`` (..., D) as detached float32 rows (N, D); no copy when already float32."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (float32, bfloat16...), got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (..., {dim}) (channel-last), got {tuple(x.shape)}")
    return x.detach().reshape(-1, dim).float()


def bad_row(x2: Tensor) -> int | None:
    """First row of ``x2`` (N, D) holding NaN, inf or ``|value| > MAX_ABS``, or None.

    One reduction (``aminmax``) and one host-device sync; the row is searched
    only when there is one. None while tracing.
    """
    if x2.numel() == 0 or tracing():
        return None
    lo, hi = torch.aminmax(x2)  # NaN propagates: the comparison below fails
    if bool((lo >= -MAX_ABS) & (hi <= MAX_ABS)):
        return None
    return int((~(x2.abs() <= MAX_ABS)).any(1).nonzero()[0, 0])


def bad_row_error(x: Tensor, x2: Tensor, row: int | None) -> ValueError:
    """The error for bad row ``row`` of ``x`` (flattened: ``x2``); None: another rank's row."""
    if row is None:
        return ValueError(
            "x of another rank holds NaN, inf or a value beyond +-1e+15 (see that rank's "
            "error); nothing was updated on any rank"
        )
    col = int((~(x2[row].abs() <= MAX_ABS)).nonzero()[0, 0])
    shape = tuple(x.shape[:-1])
    where = f"x row {row}"
    if len(shape) > 1:
        where = f"{_where(shape, row, 'x')} (row {row} of the flattened input)"
    return ValueError(
        f"{where} holds {float(x2[row, col]):.3g} in column {col}; ResidualVQ needs finite "
        f"values within +-{MAX_ABS:.0e} (NaN or inf would poison the codebooks)"
    )


def check_rows(x: Tensor, x2: Tensor) -> None:
    """Raise ValueError naming the first row of ``x`` with NaN, inf or ``|value| > MAX_ABS``.

    Parameters
    ----------
    x : Tensor, shape (..., D)
        The caller's input (for the row's name).
    x2 : Tensor, shape (N, D), float32
        ``x`` flattened (:func:`flatten`).
    """
    row = bad_row(x2)
    if row is not None:
        raise bad_row_error(x, x2, row)


def check_sizes(codebook_size: object, num_stages: int) -> tuple[int, ...]:
    """The M codebook sizes of ``codebook_size``: one int for every stage, or one per stage."""
    if isinstance(codebook_size, Sequence) and not isinstance(codebook_size, str):
        sizes = stage_sizes(codebook_size, "codebook_size")
        if len(sizes) != num_stages:
            raise ValueError(
                f"codebook_size lists {len(sizes)} sizes, but num_stages is {num_stages}"
            )
        return sizes
    return (positive_int(codebook_size, "codebook_size"),) * num_stages


def check_codes(codes: object, num_stages: int, codebook_size: int | Sequence[int]) -> Tensor:
    """Codes for ``decode``: integers of shape (..., m), values in ``[0, K)`` or ``-1``
    (``[0, K_s)`` at stage s with one size per stage).

    ``-1`` marks a stage skipped by quantizer dropout (as in ``RvqOutput.codes``).
    Raises TypeError / ValueError naming the expected range and the first bad row.
    """
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.ndim < 1 or not 1 <= codes.shape[-1] <= num_stages:
        raise ValueError(
            f"codes must have shape (..., m) with 1 <= m <= {num_stages}, got {tuple(codes.shape)}"
        )
    idx = codes.long()
    if idx.numel() == 0 or tracing():
        return idx
    m = idx.shape[-1]
    sizes = [codebook_size] * m if isinstance(codebook_size, int) else list(codebook_size)[:m]
    lo, hi = torch.aminmax(idx)
    if bool((lo >= -1) & (hi < min(sizes))):
        return idx
    flat = idx.reshape(-1, m)
    bad = (flat < -1) | (flat >= torch.tensor(sizes, device=flat.device))
    if not bool(bad.any()):
        return idx
    row = int(bad.any(1).nonzero()[0, 0])
    stage = int(bad[row].nonzero()[0, 0])
    k = sizes[stage]
    raise ValueError(
        f"token index out of range: expected [0, {k}) or -1 (a stage skipped by quantizer "
        f"dropout), got {int(flat[row, stage])} at "
        f"{_where(tuple(idx.shape[:-1]), row, 'codes')}, stage {stage} "
        f"(min {int(lo)}, max {int(hi)})"
    )


def check_state(
    module: Any,
    state_dict: dict[str, Any],
    prefix: str,
    *args: Any,
) -> None:
    """``load_state_dict`` pre-hook: refuse a state with non-finite or impossible values.

    Codebooks and EMA sums must be finite, EMA counts finite and >= 0, the
    steps-unused counters >= 0 and ``init_state`` 0, 1 or 2. Raises ValueError
    naming the key, the stage and the code, before anything is copied.
    """
    for name in ("codebook", "ema_sum", "ema_count", "unused_steps"):
        t = state_dict.get(prefix + name)
        if not isinstance(t, Tensor) or t.numel() == 0:
            continue
        bad = t < 0 if not t.is_floating_point() else ~torch.isfinite(t)
        if name == "ema_count" and t.is_floating_point():
            bad |= t < 0
        if bool(bad.any()):
            at = [int(i) for i in np.unravel_index(int(bad.reshape(-1).nonzero()[0, 0]), t.shape)]
            value = t[tuple(at)].item()
            raise ValueError(
                f"state_dict[{prefix + name!r}] holds {value!r} at stage {at[0]}, code {at[1]}; "
                "refusing to load it (NaN, inf or a negative count would poison the quantizer)"
            )
    init = state_dict.get(prefix + "init_state")
    if isinstance(init, Tensor) and (init.numel() != 1 or int(init) not in (0, 1, 2)):
        got = init.tolist()
        raise ValueError(f"state_dict[{prefix + 'init_state'!r}] must be 0, 1 or 2, got {got}")


def _number(value: object, name: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (lo <= v <= hi) or (hi_open and v == hi):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")
    return v


def _count(value: object, name: str, lo: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = operator.index(value)
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def check_options(
    *,
    decay: object,
    eps: object,
    commitment_weight: object,
    codebook_weight: object,
    kmeans_iters: object,
    dead_after: object,
    dropout: object,
    dropout_mode: object,
    dropout_min_stages: object,
    num_stages: int,
    seed: object,
) -> dict[str, Any]:
    """Validate the options of ``ResidualVQ``; raise TypeError/ValueError naming the bad one."""
    inf = float("inf")
    _number(decay, "decay", 0.0, 1.0, hi_open=True)
    if _number(eps, "eps", 0.0, inf) <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    weights = (
        _number(commitment_weight, "commitment_weight", 0.0, inf),
        _number(codebook_weight, "codebook_weight", 0.0, inf),
    )
    _count(kmeans_iters, "kmeans_iters", 0)
    _count(dead_after, "dead_after", 0)
    _number(dropout, "dropout", 0.0, 1.0)
    if dropout_mode not in ("batch", "sample"):
        raise ValueError(f"dropout_mode must be 'batch' or 'sample', got {dropout_mode!r}")
    lo = _count(dropout_min_stages, "dropout_min_stages", 1)
    if lo > num_stages:
        raise ValueError(f"dropout_min_stages must be <= num_stages={num_stages}, got {lo}")
    _count(seed, "seed", 0)
    return {"weights": weights}
