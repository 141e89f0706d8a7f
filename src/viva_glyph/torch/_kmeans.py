"""Codebook initialisation: numpy's k-means on each stage's residuals, rows gathered first.

Each stage is fitted by :func:`viva_glyph.train.kmeans.progressive_kmeans`, the
k-means of :func:`viva_glyph.fit` (principal axes, k-means++ seeds on the
leading axes, Lloyd on a growing number of them, empty clusters split from the
largest): one k-means for the whole library. It runs in numpy on the CPU, on at
most ``kmeans_max_samples`` rows copied from the device once per stage; the
assignments and residuals are computed on the device by the quantizer's own
kernel, so the residual of stage ``s`` is the one the module will encode.

Random draws come from the caller's ``torch.Generator`` (on the CPU): one draw
seeds the numpy generator of a whole initialisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from viva_glyph.torch import _distributed as ddp
from viva_glyph.torch._ops import augmented_tables, nearest, with_ones
from viva_glyph.train.kmeans import leaf_rows, progressive_kmeans
from viva_glyph.train.rows import ArrayRows

__all__ = ["INIT_ROWS_PER_CODE", "Gatherer", "init_stages", "random_rows"]

#: Default rows gathered per code before the k-means initialisation (``init_rows
#: = 16 K``), as many as numpy's k-means draws for its k-means++ seeding.
INIT_ROWS_PER_CODE = 16


def random_rows(n: int, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``count`` row indices into ``n`` rows: distinct when ``n >= count``, shape (count,)."""
    if n >= count:
        idx = torch.randperm(n, generator=generator)[:count]
    else:
        idx = torch.randint(n, (count,), generator=generator)
    return idx.to(device)


class Gatherer:
    """Training rows kept over steps until the k-means initialisation has enough of them.

    Only rank 0 keeps rows (it computes the initialisation and broadcasts it).
    With ``torch.distributed``, every step while gathering all-reduces two flags
    (rank 0 has enough; some rank's batch is bad), so all ranks agree on both.
    """

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.rows = 0

    def add(self, x2: Tensor, need: int, bad: bool) -> tuple[Tensor | None, bool]:
        """Keep ``x2`` (N, D) unless some rank's batch is ``bad``.

        Returns
        -------
        rows : Tensor or None
            Every kept row once rank 0 holds ``need`` of them (an empty (0, D)
            tensor on other ranks), else None.
        bad : bool
            Whether any rank's batch was bad (then nothing was kept).
        """
        first = ddp.rank() == 0
        done = first and self.rows + x2.shape[0] >= need
        if ddp.is_distributed():
            flags = ddp.all_reduce_mean_(torch.tensor([float(done), float(bad)], device=x2.device))
            done, bad = bool(flags[0] > 0), bool(flags[1] > 0)
        if bad:
            return None, True
        if first:  # the first batch may be enough alone: no copy then
            self.parts.append(x2 if not self.parts and done else x2.clone())
            self.rows += x2.shape[0]
        if not done:
            return None, False
        rows = torch.cat(self.parts) if self.parts else x2[:0]
        self.clear()
        return rows, False

    def clear(self) -> None:
        """Forget the kept rows."""
        self.parts, self.rows = [], 0


def _kmeans(rows: Tensor, k: int, iterations: int, rng: np.random.Generator) -> Tensor:
    """numpy's progressive k-means of ``rows`` (N, D) -> (K, D) float32 on ``rows``' device."""
    x = rows.detach().cpu().numpy().astype(np.float32, copy=True)
    if x.shape[0] < k:  # fewer rows than codes (the caller warned): repeat them
        x = x[np.arange(k) % x.shape[0]]
    centroids, _ = progressive_kmeans(ArrayRows.of(x, leaf_rows(k, x.shape[1])), k, iterations, rng)
    return torch.from_numpy(centroids.astype(np.float32)).to(rows.device)


def init_stages(
    x: Tensor,
    books: Tensor,
    iterations: int | None,
    generator: torch.Generator,
    rows: tuple[int, int],
    sizes: Sequence[int] | None = None,
) -> Tensor:
    """Initial state of every stage, fitted in turn to what earlier stages leave of ``x``.

    Parameters
    ----------
    x : Tensor, shape (N, D), float32, N >= 1, finite
    books : Tensor, shape (M, K, D), float32
        Current codebooks, kept when ``iterations`` is None.
    iterations : int or None
        Lloyd iterations per step of numpy's progressive k-means; None keeps
        ``books`` and only counts their use.
    generator : torch.Generator (CPU)
    rows : (init_rows, max_samples)
        k-means warns (UserWarning, with the figures) below ``init_rows`` rows
        and runs on a random ``max_samples`` of them above.
    sizes : sequence of int, optional
        Codes of each stage (per-stage sizes, at most K); default K for every
        stage. Stage s fills the first ``sizes[s]`` codes; the rest stay zero.

    Returns
    -------
    Tensor, shape (M, K, 2 D + 1), float32
        Per code: the codebook entry, the EMA sum and the EMA count, consistent
        (sum = entry x count; the count is the rows assigned, at least 1).
    """
    m, k_max, d = books.shape
    ks = [k_max] * m if sizes is None else list(sizes)
    k = k_max
    n, (init_rows, max_samples) = x.shape[0], rows
    if n > max_samples:
        x = x.index_select(0, random_rows(n, max_samples, generator, x.device))
    if iterations is not None and n < init_rows:
        warnings.warn(
            f"ResidualVQ: k-means initialisation of {k} codes per stage from {n} rows "
            f"({n / k:.1f} per code), fewer than init_rows = {init_rows}: expect dead "
            "codes and low perplexity in later stages; pass more rows",
            UserWarning,
            stacklevel=5,
        )
    state = torch.zeros((m, k_max, 2 * d + 1), device=x.device)
    fit = None  # one draw from the torch generator seeds numpy's generator
    if iterations is not None:
        seed = int(torch.randint(1 << 62, (), generator=generator))
        fit = (iterations, np.random.default_rng(seed))
    residual = x.clone()
    for s, k in enumerate(ks):
        book = books[s, :k] if fit is None else _kmeans(residual, k, *fit)
        codes = nearest(with_ones(residual), augmented_tables(book))
        count = torch.zeros(k, device=x.device).index_add_(
            0, codes, torch.ones_like(codes, dtype=x.dtype)
        )
        residual -= book[codes]
        count = count.clamp_min(1.0)  # keeps sum / count = entry for an empty cell
        state[s, :k] = torch.cat([book, book * count[:, None], count[:, None]], 1)
    return state
