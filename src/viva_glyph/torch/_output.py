"""The result of :meth:`viva_glyph.torch.ResidualVQ.forward`, and how a pass becomes one."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch.nn.functional as F
from torch import Tensor

from viva_glyph.torch._ops import perplexity, surrogate_loss

if TYPE_CHECKING:
    from viva_glyph.torch._module import ResidualVQ
    from viva_glyph.torch._pass import Pass

__all__ = ["RvqOutput", "make_output"]


class RvqOutput(NamedTuple):
    """What :meth:`ResidualVQ.forward` returns (a NamedTuple, so it unpacks and exports).

    Attributes
    ----------
    quantized : Tensor, shape (..., D), dtype of the input
        Sum of the chosen codes; its gradient passes straight through to the input.
    codes : Tensor, shape (..., m), int64
        Code of each stage; ``-1`` where quantizer dropout skipped the stage.
    loss : Tensor, scalar float32
        ``commitment_weight * sum(stage_losses)``, plus ``codebook_weight *
        sum(stage_losses)`` (the codebook loss, gradient to the codebooks) in
        learned-codebook training.
    stage_losses : Tensor, shape (m,), float32
        Mean squared residual left by each stage, ``mean ||r_s - c_s||^2 / D``,
        over the rows the stage quantized (0 for a skipped stage).
    perplexity : Tensor, shape (m,), float32
        ``exp(entropy)`` of each stage's code distribution in this batch (over all
        ranks in distributed training); K means uniform use, 1 a single code.
    dead_share : Tensor, shape (m,), float32
        Share of each stage's codes this batch did not use (0 for a skipped stage).
        Replacement itself follows the steps-unused rule (``dead_after``).
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    stage_losses: Tensor
    perplexity: Tensor
    dead_share: Tensor


def _loss(
    vq: ResidualVQ, x: Tensor, p: Pass, stage_losses: Tensor, grad_books: Tensor | None
) -> Tensor:
    learned = vq.training and not vq.ema  # the codebook loss counts in training
    weight = vq.commitment_weight + (vq.codebook_weight if learned else 0.0)
    value = weight * stage_losses.sum()
    pairs: list[tuple[Tensor, Tensor]] = []
    if p.grad_x is not None:
        gx = p.grad_x * (2.0 * vq.commitment_weight / vq.dim)
        pairs.append((x, gx.view(x.shape)))
    if grad_books is not None:
        pairs.append((vq.codebook, grad_books))
    return surrogate_loss(value, *pairs) if pairs else value


def make_output(
    vq: ResidualVQ, x: Tensor, p: Pass, m: int, counts: Tensor, grad_books: Tensor | None
) -> RvqOutput:
    """The output of ``vq`` for input ``x`` from pass ``p`` over the first ``m`` stages.

    ``counts`` (stages run, K) are the batch's code counts; ``grad_books`` the
    closed-form codebook gradient of learned-codebook training, or None.
    """
    ran = p.codes.shape[1]
    q = x.detach().reshape(-1, vq.dim).float() - p.residual
    quantized = q.to(x.dtype).view(x.shape)
    if x.requires_grad:
        quantized = quantized + (x - x.detach())  # straight-through estimator
    stage_losses = p.stage_sq / (p.rows.clamp_min(1.0) * vq.dim)
    codes = p.codes
    if vq.code_valid is None:
        dead = (counts == 0).float().mean(1)
    else:  # per-stage sizes: the share of each stage's own codes
        valid = vq.code_valid[:ran]
        dead = ((counts == 0) & valid).float().sum(1) / valid.float().sum(1)
    if ran < m:  # stages skipped by batch dropout
        pad = m - ran
        codes = F.pad(codes, (0, pad), value=-1)
        stage_losses = F.pad(stage_losses, (0, pad))
        dead = F.pad(dead, (0, pad))
    loss = _loss(vq, x, p, stage_losses, grad_books)
    return RvqOutput(
        quantized=quantized,
        codes=codes.view(*x.shape[:-1], m),
        loss=loss,
        stage_losses=stage_losses,
        perplexity=F.pad(perplexity(counts), (0, m - ran), value=1.0),
        dead_share=dead,
    )
