"""One pass of rows through the stages: codes, residuals, and what training needs.

Per stage: one matrix product and an argmin pick the codes
(:func:`~viva_glyph.torch._ops.nearest`), a gather subtracts them from the
residual in place. Training also gathers, in the same pass, the per-code sums of
each stage's input (for the EMA and the codebook gradient), the replacement
candidates for dead codes, and the gradient of the commitment loss in closed
form (``sum_s r_{s+1} / n_s``), so no autograd graph is built through the stages.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from viva_glyph.torch._kmeans import random_rows
from viva_glyph.torch._ops import augmented_tables, nearest, with_ones

__all__ = ["Pass", "draw_dropout", "run_stages"]

#: A replacement code goes this far from a random row's code toward the row: it
#: splits a used cell, so it is used at once (a raw row, far out in high
#: dimension, would often lose to every centroid and die again).
SPLIT = 0.5


class Pass(NamedTuple):
    """What one pass over the stages gathered."""

    codes: Tensor  # (N, m) int64, -1 where a stage skipped the row
    residual: Tensor  # (N, D) float32, what the stages left over
    stage_sq: Tensor  # (m,) sum of squared residuals after each stage, kept rows only
    rows: Tensor  # (m,) rows each stage quantized
    grad_x: Tensor | None  # (N, D) sum_s r_{s+1} * keep / rows_s
    sums: Tensor | None  # (m, K, D) per-code sums of each stage's input
    candidates: Tensor | None  # (m, K, D) replacements for dead codes


def run_stages(
    books: Tensor,
    x2: Tensor,
    keep: Tensor | None,
    generator: torch.Generator,
    *,
    train: bool,
    grad: bool,
    invalid: Tensor | None = None,
) -> Pass:
    """All rows through the stages of ``books``, in float32 even under autocast.

    Parameters
    ----------
    books : Tensor, shape (m, K, D), float32, detached
    x2 : Tensor, shape (N, D), float32
    keep : Tensor, shape (N, m), bool, optional
        Which stages quantize each row (quantizer dropout per sample).
    generator : torch.Generator
        Draws the replacement candidates (training only).
    train, grad : bool
        Gather the training statistics / the commitment gradient.
    invalid : Tensor, shape (m, K), bool, optional
        Codes that do not exist (stages smaller than K: per-stage sizes); their
        distance is +inf, so no row picks them.
    """
    with torch.autocast(x2.device.type, enabled=False):
        n, d = x2.shape
        m, k = books.shape[0], books.shape[1]
        tables = augmented_tables(books)  # (m, D + 1, K)
        if invalid is not None:  # ||c||^2 = inf: a padding code is never the nearest
            tables[:, d].masked_fill_(invalid, float("inf"))
        r_aug = with_ones(x2)
        r = r_aug[:, :d]
        g = torch.zeros_like(x2) if grad else None
        sums = torch.zeros((m, k + 1, d), device=r.device) if train else None
        pick = random_rows(n, m * k, generator, r.device).view(m, k) if train else None
        codes, sq, rows, cands = [], [], [], []
        for s in range(m):
            book = books[s]
            idx = nearest(r_aug, tables[s])
            if pick is not None:  # split the cell of a random row
                home = F.embedding(idx.index_select(0, pick[s]), book)
                cands.append(torch.lerp(home, r.index_select(0, pick[s]), SPLIT))
            if keep is None:
                if sums is not None:
                    sums[s].index_add_(0, idx, r)
                r.sub_(F.embedding(idx, book))
                flat = r_aug.view(-1)
                sq.append(torch.dot(flat, flat) - n)  # the ones column adds n
                rows.append(torch.full((), n, dtype=torch.float32, device=r.device))
                if g is not None:
                    g.add_(r, alpha=1.0 / max(n, 1))
                codes.append(idx)
            else:
                w = keep[:, s]
                idx = torch.where(w, idx, k)  # bin k collects skipped rows
                if sums is not None:
                    sums[s].index_add_(0, idx, r)
                r.sub_(F.embedding(idx, F.pad(book, (0, 0, 0, 1))))
                wf = w.float()
                n_s = wf.sum()
                sq.append(((r * r).sum(1) * wf).sum())
                rows.append(n_s)
                if g is not None:
                    g.add_(r * (wf / n_s.clamp_min(1.0))[:, None])
                codes.append(torch.where(w, idx, -1))
        return Pass(
            codes=torch.stack(codes, 1),
            residual=r,
            stage_sq=torch.stack(sq),
            rows=torch.stack(rows),
            grad_x=g,
            sums=None if sums is None else sums[:, :k],
            candidates=torch.stack(cands) if cands else None,
        )


def draw_dropout(
    generator: torch.Generator,
    n: int,
    m: int,
    prob: float,
    mode: str,
    min_stages: int,
    device: torch.device,
) -> tuple[int, Tensor | None]:
    """Quantizer dropout of one training step (SoundStream).

    Returns
    -------
    stages : int
        Stages to run (fewer than ``m`` when the whole batch drops some).
    keep : Tensor, shape (N, m), bool, or None
        Per-sample mode: row i keeps its first ``depth_i`` stages.
    """
    if prob <= 0.0 or m == 1:
        return m, None
    lo = min(min_stages, m)
    if mode == "batch":
        if float(torch.rand((), generator=generator)) < prob:
            return int(torch.randint(lo, m + 1, (), generator=generator)), None
        return m, None
    drop = torch.rand(n, generator=generator) < prob
    depth = torch.where(drop, torch.randint(lo, m + 1, (n,), generator=generator), m)
    return m, (torch.arange(m)[None, :] < depth[:, None]).to(device)
