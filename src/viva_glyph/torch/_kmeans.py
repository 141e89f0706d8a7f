"""k-means++ seeding and Lloyd iterations on tensors, for codebook initialization.

Every random draw comes from the caller's ``torch.Generator`` (on the CPU); the
draws are made up front and moved to the data's device, so no step waits on the
host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from viva_glyph.torch._ops import augmented_tables, code_norms, nearest, with_ones

__all__ = ["init_stages", "kmeans", "kmeans_plus_plus", "random_rows"]


def random_rows(n: int, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``count`` row indices into ``n`` rows: distinct when ``n >= count``, shape (count,)."""
    if n >= count:
        idx = torch.randperm(n, generator=generator)[:count]
    else:
        idx = torch.randint(n, (count,), generator=generator)
    return idx.to(device)


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007).

    Parameters
    ----------
    x : Tensor, shape (N, D), float32
    k : int
    generator : torch.Generator (CPU)

    Returns
    -------
    Tensor, shape (k, D), float32: rows of ``x``, each drawn with probability
    proportional to its squared distance to the rows drawn before.
    """
    n = x.shape[0]
    u = torch.rand(k, generator=generator, dtype=torch.float64).to(x.device)
    x_norms = code_norms(x)
    centers = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    pick = (u[0] * n).long().clamp(max=n - 1)
    d2: Tensor | None = None
    for j in range(k):
        if j > 0:
            assert d2 is not None
            cum = d2.double().cumsum(0)
            pick = torch.searchsorted(cum, u[j] * cum[-1]).clamp(max=n - 1)
        c = x.index_select(0, pick.reshape(1))[0]
        centers[j] = c
        dist = (x_norms - 2.0 * (x @ c) + c.dot(c)).clamp_min(0.0)
        d2 = dist if d2 is None else torch.minimum(d2, dist)
    return centers


def kmeans(
    x: Tensor, k: int, iterations: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """k-means++ seeding then Lloyd iterations; empty clusters get random rows.

    Parameters
    ----------
    x : Tensor, shape (N, D), float32
    k : int
    iterations : int
        Lloyd iterations (0 keeps the seeds).
    generator : torch.Generator (CPU)

    Returns
    -------
    centroids : Tensor, shape (k, D), float32
    counts : Tensor, shape (k,), float32
        Rows assigned to each centroid.
    codes : Tensor, shape (N,), int64
        The assignment of each row to ``centroids``.
    """
    n = x.shape[0]
    centroids = kmeans_plus_plus(x, k, generator)
    ones = torch.ones(n, device=x.device, dtype=x.dtype)
    x_aug = with_ones(x)
    for _ in range(iterations):
        codes = nearest(x_aug, augmented_tables(centroids))
        counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, codes, ones)
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        reseed = x.index_select(0, random_rows(n, k, generator, x.device))
        centroids = torch.where(
            (counts > 0)[:, None], sums / counts.clamp_min(1.0)[:, None], reseed
        )
    codes = nearest(x_aug, augmented_tables(centroids))
    counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, codes, ones)
    return centroids, counts, codes


def init_stages(
    x: Tensor, books: Tensor, iterations: int | None, generator: torch.Generator
) -> Tensor:
    """Initial state of every stage, fitted in turn to what earlier stages leave of ``x``.

    Parameters
    ----------
    x : Tensor, shape (N, D), float32
    books : Tensor, shape (M, K, D), float32
        Current codebooks, kept when ``iterations`` is None.
    iterations : int or None
        Lloyd iterations of a k-means per stage; None keeps ``books`` and only
        counts their use.
    generator : torch.Generator (CPU)

    Returns
    -------
    Tensor, shape (M, K, 2 D + 1), float32
        Per code: the codebook entry, the EMA sum and the EMA count, consistent
        (sum = entry x count; the count is the rows assigned, at least 1).
    """
    m, k, d = books.shape
    state = torch.empty((m, k, 2 * d + 1), device=x.device)
    residual = x.clone()
    for s in range(m):
        if iterations is None:
            book = books[s]
            codes = nearest(with_ones(residual), augmented_tables(book))
            count = torch.zeros(k, device=x.device).index_add_(
                0, codes, torch.ones_like(codes, dtype=x.dtype)
            )
        else:
            book, count, codes = kmeans(residual, k, iterations, generator)
        residual -= book[codes]
        count = count.clamp_min(1.0)  # keeps sum / count = entry for an empty cell
        state[s] = torch.cat([book, book * count[:, None], count[:, None]], 1)
    return state
