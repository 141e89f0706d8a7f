"""The result type of :meth:`viva_glyph.torch.ResidualVQ.forward`."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["RvqOutput"]


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
