"""The few collectives the quantizer uses, all no-ops without ``torch.distributed``.

Only the training path calls these; the inference path never does, so an
exported or compiled model holds no collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean_", "any_rank", "broadcast_", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when a default process group is initialized with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place, with one collective (SUM then divide).

    SUM is used since gloo has no AVG reduction.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``src``'s values, in place."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on some rank (one collective; ``flag`` without one)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    return bool(all_reduce_mean_(t)[0] > 0)
