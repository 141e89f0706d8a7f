"""One training step of :class:`~viva_glyph.torch.ResidualVQ`, and its initialisation.

A step checks the batch first (a bad one raises before any state changes; in
distributed training the flag rides in the step's collective, so all ranks
raise). Until the codebooks are initialised it gathers rows and quantizes with
the initial codebooks, updating nothing; once enough rows came, :func:`initialize`
fits every stage (k-means, or only code counts). After that a step draws the
stages quantizer dropout keeps, runs them, forms the learned-codebook gradient in
closed form and moves the EMA state (:func:`viva_glyph.torch._state.ema_update`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from viva_glyph.torch import _distributed as ddp
from viva_glyph.torch._checks import bad_row_error
from viva_glyph.torch._kmeans import init_stages
from viva_glyph.torch._ops import usage_counts
from viva_glyph.torch._output import RvqOutput, make_output
from viva_glyph.torch._pass import draw_dropout
from viva_glyph.torch._state import ema_update

if TYPE_CHECKING:
    from viva_glyph.torch._module import ResidualVQ

__all__ = ["NEEDS_COUNTS", "NEEDS_KMEANS", "READY", "initialize", "train_step"]

# Values of the ``init_state`` buffer.
NEEDS_KMEANS, NEEDS_COUNTS, READY = 0, 1, 2


@torch.no_grad()
def initialize(vq: ResidualVQ, x2: Tensor) -> None:
    """Initialize every stage of ``vq`` from the rows ``x2`` (N, D); rank 0 computes.

    k-means when ``vq`` still needs it, else only the EMA counts; the result is
    broadcast to every rank.
    """
    m, k, d = vq.num_stages, vq.codebook_size, vq.dim
    state = torch.zeros((m, k, 2 * d + 1), device=x2.device)
    if ddp.rank() == 0:
        fit = vq.kmeans_iters if vq._state == NEEDS_KMEANS else None
        rows = (vq.init_rows, vq.kmeans_max_samples)
        sizes = vq.codebook_sizes
        state = init_stages(x2, vq._books(m), fit, vq.generator, rows, sizes)
    ddp.broadcast_(state)
    vq.codebook.data.copy_(state[..., :d])
    if vq.ema:
        vq.ema_sum.copy_(state[..., d : 2 * d])
        vq.ema_count.copy_(state[..., 2 * d])
    vq.unused_steps.zero_()
    vq.init_state.fill_(READY)
    vq._state = READY


def train_step(vq: ResidualVQ, x: Tensor, x2: Tensor, m: int) -> RvqOutput:
    """One training step of ``vq`` on ``x`` (flattened: ``x2``, (N, D)) with m stages."""
    # A bad batch raises before any state changes. In distributed training the
    # flag rides in the step's collective (gathering or EMA), so all ranks raise.
    problem = vq._problem(x, x2)
    if problem is not None and not ddp.is_distributed():
        raise problem
    error = problem or bad_row_error(x, x2, None)
    learned = not vq.ema and vq.codebook.requires_grad and torch.is_grad_enabled()
    if vq._state != READY:
        need = vq.init_rows if vq._state == NEEDS_KMEANS else 1
        rows, bad = vq._gathered.add(x2, need, problem is not None)
        if bad:
            raise error
        if rows is None:  # warm-up: a zero codebook gradient keeps optimizers in step
            return vq._quantize(x, x2, m, torch.zeros_like(vq.codebook) if learned else None)
        initialize(vq, rows)
    if problem is not None:  # only this rank: join the step's all-reduce, then raise
        zeros = torch.zeros_like(vq._books(vq.num_stages))
        ema_update(vq, zeros, zeros[..., 0], zeros, bad=True)
        raise error
    ran, keep = draw_dropout(
        vq.generator,
        x2.shape[0],
        m,
        vq.dropout,
        vq.dropout_mode,
        vq.dropout_min_stages,
        x2.device,
    )
    grad = torch.is_grad_enabled() and x.requires_grad
    p = vq._run(x2, ran, keep, train=True, grad=grad)
    assert p.sums is not None and p.candidates is not None
    local = usage_counts(p.codes, vq.codebook_size)
    grad_books = None
    if learned:  # d loss / d c_k = -2 w / (D n_s) * sum_{i -> k} (r_i - c_k)
        books = vq.codebook.detach()[:ran]
        diff = p.sums - local[:, :, None] * books
        scale = -2.0 * vq.codebook_weight / (vq.dim * p.rows.clamp_min(1.0))
        grad_books = F.pad(diff * scale[:, None, None], (0, 0, 0, 0, 0, vq.num_stages - ran))
    counts = ema_update(vq, p.sums, local, p.candidates)
    if counts is None:  # another rank's batch was bad
        raise error
    return make_output(vq, x, p, m, counts[:ran], grad_books)
