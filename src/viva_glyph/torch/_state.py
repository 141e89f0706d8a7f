"""Training-state updates of :class:`~viva_glyph.torch.ResidualVQ`.

One training step, for all stages at once: the batch statistics (per-code sums
and counts) are averaged over ranks with a single all-reduce, the EMA sums and
counts move by ``decay``, each codebook becomes ``sum / smoothed count``, the
steps-unused counters advance, and codes unused for ``dead_after`` steps are
replaced by random stage inputs with a fresh EMA state. The replacement comes
after the EMA update, so nothing overwrites it in the same step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from viva_glyph.torch import _distributed as ddp

if TYPE_CHECKING:
    from viva_glyph.torch._module import ResidualVQ

__all__ = ["RESET_COUNT", "ema_update", "replace_dead"]

#: EMA count a replaced code restarts with (its EMA sum is the new code itself).
RESET_COUNT = 1.0


@torch.no_grad()
def ema_update(
    vq: ResidualVQ, sums: Tensor, counts: Tensor, candidates: Tensor, bad: bool = False
) -> Tensor | None:
    """Apply one training step's statistics to ``vq``'s state; return the batch counts.

    Parameters
    ----------
    vq : ResidualVQ
    sums : Tensor, shape (m, K, D), float32
        Per-code sums of the rows assigned to each code by the first m stages run.
    counts : Tensor, shape (m, K), float32
        Rows assigned to each code.
    candidates : Tensor, shape (m, K, D), float32
        Random stage inputs that replace dead codes (rank 0's are used).
    bad : bool
        This rank's batch failed its input check (distributed training only:
        the flag rides in the step's all-reduce so every rank learns it).

    Returns
    -------
    Tensor, shape (M, K), float32, or None
        The batch counts, averaged over ranks (zeros for stages not run); None,
        with nothing updated, when some rank's batch was bad.
    """
    m, k, d = vq.num_stages, vq.codebook_size, vq.dim
    ran = counts.shape[0]
    ran_on_rank0 = torch.full((ran, 1), float(ddp.rank() == 0), device=counts.device)
    parts = [counts, ran_on_rank0, torch.full((ran, 1), float(bad), device=counts.device)]
    if vq.ema:
        parts.insert(0, sums.reshape(ran, k * d))
    stats = F.pad(torch.cat(parts, 1), (0, 0, 0, m - ran))
    ddp.all_reduce_mean_(stats)  # the one collective of the step, all stages fused
    if ddp.is_distributed() and bool(stats[0, -1] > 0):
        return None  # some rank's batch was bad: every rank stops here
    batch_counts = stats[:, -(k + 2) : -2]
    active = batch_counts.sum(1) > 0
    a2 = active[:, None]
    if vq.ema:
        decay = vq.decay
        new_count = vq.ema_count * decay + batch_counts * (1.0 - decay)
        new_sum = vq.ema_sum * decay + stats[:, : k * d].view(m, k, d) * (1.0 - decay)
        vq.ema_count.copy_(torch.where(a2, new_count, vq.ema_count))
        vq.ema_sum.copy_(torch.where(a2[..., None], new_sum, vq.ema_sum))
        n = vq.ema_count.sum(-1, keepdim=True)
        k_s = k if vq.code_valid is None else vq.code_valid.sum(-1, keepdim=True)  # per stage
        smoothed = (vq.ema_count + vq.eps) / (n + k_s * vq.eps) * n  # Laplace smoothing
        book = vq.ema_sum / smoothed[..., None]
        vq.codebook.copy_(torch.where(a2[..., None], book, vq.codebook))
    unused = torch.where(batch_counts > 0, 0, vq.unused_steps + 1)
    vq.unused_steps.copy_(torch.where(a2, unused, vq.unused_steps))
    if vq.dead_after > 0:
        eligible = active & (stats[:, -2] > 0)  # rank 0 has candidates for the stage
        replace_dead(vq, F.pad(candidates, (0, 0, 0, 0, 0, m - ran)), eligible)
    return batch_counts


@torch.no_grad()
def replace_dead(vq: ResidualVQ, candidates: Tensor, eligible: Tensor) -> None:
    """Replace codes unused for ``vq.dead_after`` steps; reset their whole EMA state.

    Without a process group this is branch-free (no host-device sync). With one,
    every rank holds the same counters, checks once whether any code is dead and
    if so takes rank 0's candidates (one broadcast).

    Parameters
    ----------
    vq : ResidualVQ
    candidates : Tensor, shape (M, K, D), float32
    eligible : Tensor, shape (M,), bool
        Stages whose codes may be replaced this step.
    """
    dead = (vq.unused_steps >= vq.dead_after) & eligible[:, None]
    if vq.code_valid is not None:  # per-stage sizes: the padding codes never come alive
        dead &= vq.code_valid
    if ddp.is_distributed():
        if not bool(dead.any()):
            return
        ddp.broadcast_(candidates)
    d3 = dead[..., None]
    vq.codebook.data.copy_(torch.where(d3, candidates, vq.codebook.data))
    if vq.ema:
        vq.ema_sum.copy_(torch.where(d3, candidates * RESET_COUNT, vq.ema_sum))
        vq.ema_count.copy_(torch.where(dead, RESET_COUNT, vq.ema_count))
    vq.unused_steps.masked_fill_(dead, 0)
