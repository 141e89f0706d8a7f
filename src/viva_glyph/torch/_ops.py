"""Tensor kernels of the quantizer: nearest code, usage statistics, the loss.

The nearest code of each row is found with one matrix product per stage, as in
the numpy core (:mod:`viva_glyph.core.nearest`): ``||r - c||^2 = ||r||^2 - 2 r.c +
||c||^2`` and the row constant ``||r||^2`` cannot change the argmin, so rows
carrying a ones column times the table ``[-2 C^T ; ||c||^2]`` followed by
``argmin`` picks it (ties to the lowest index, like the numpy encoder). No
one-hot matrix, no square root, no host-device synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "augmented_tables",
    "code_norms",
    "nearest",
    "perplexity",
    "surrogate_loss",
    "usage_counts",
    "with_ones",
]


def code_norms(codebooks: Tensor) -> Tensor:
    """Squared norms of every code, ``(..., K, D) -> (..., K)`` float32."""
    return codebooks.float().pow(2).sum(-1)


def augmented_tables(codebooks: Tensor) -> Tensor:
    """``[-2 C^T ; ||c||^2]`` of each codebook, ``(..., K, D) -> (..., D + 1, K)`` float32."""
    books = codebooks.float()
    return torch.cat([books.transpose(-1, -2) * -2.0, code_norms(books).unsqueeze(-2)], -2)


def with_ones(rows: Tensor) -> Tensor:
    """``rows`` (N, D) with a column of ones appended, (N, D + 1) float32 (a new tensor)."""
    return torch.cat([rows.float(), torch.ones((rows.shape[0], 1), device=rows.device)], 1)


def nearest(rows_aug: Tensor, table: Tensor) -> Tensor:
    """Index of the nearest code to each row: one matrix product and an argmin.

    Parameters
    ----------
    rows_aug : Tensor, shape (N, D + 1), float32
        Rows with a ones column (:func:`with_ones`).
    table : Tensor, shape (D + 1, K), float32
        The codebook's augmented table (:func:`augmented_tables`).

    Returns
    -------
    Tensor, shape (N,), int64: ``argmin_k ||r - c_k||^2``, ties to the lowest index.
    """
    return torch.mm(rows_aug, table).argmin(dim=1)


def usage_counts(codes: Tensor, codebook_size: int) -> Tensor:
    """How often each code is used per stage, ignoring ``-1`` (dropped stages).

    Parameters
    ----------
    codes : Tensor, shape (N, m), int64, values in ``[-1, K)``
    codebook_size : int

    Returns
    -------
    Tensor, shape (m, K), float32
    """
    n, m = codes.shape
    k1 = codebook_size + 1  # one extra bin collects the -1 entries
    offsets = torch.arange(m, device=codes.device, dtype=codes.dtype) * k1
    flat = (torch.where(codes < 0, codebook_size, codes) + offsets).reshape(-1)
    counts = torch.zeros(m * k1, device=codes.device, dtype=torch.float32)
    counts = counts.index_add(0, flat, torch.ones(n * m, device=codes.device))
    return counts.view(m, k1)[:, :codebook_size]


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of each row of counts, shape (m, K) -> (m,); 1.0 for an empty row."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum(-1))


class _Surrogate(torch.autograd.Function):
    """A scalar whose value and gradients were computed in closed form beforehand."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, *pairs: Tensor) -> Tensor:
        # pairs = (input_0, grad_0, input_1, grad_1, ...)
        ctx.save_for_backward(*pairs[1::2])
        ctx.dtypes = [t.dtype for t in pairs[0::2]]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads: list[Tensor | None] = [None]
        for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True):
            grads.extend([(grad_out * g).to(dtype), None])
        return tuple(grads)


def surrogate_loss(value: Tensor, *pairs: tuple[Tensor, Tensor]) -> Tensor:
    """Attach closed-form gradients to a precomputed scalar loss.

    Parameters
    ----------
    value : Tensor, scalar
        The loss value.
    pairs : (input, gradient) tuples
        ``gradient`` is ``d value / d input`` (same shape as ``input``).

    Returns
    -------
    Tensor, scalar, equal to ``value``; its backward gives each input its gradient.
    """
    flat = [t for pair in pairs for t in pair]
    out: Tensor = _Surrogate.apply(value, *flat)  # type: ignore[no-untyped-call]
    return out
