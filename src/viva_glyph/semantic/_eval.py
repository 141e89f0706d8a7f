"""Semantic-ID metrics: collisions, code usage, neighbour preservation, error.

Definitions (also in the README):

- collision rate: ``1 - (distinct glyphs) / N`` over the L level codes, before
  any suffix; the share in a shared glyph is the fraction of items whose glyph
  another item also has (always >= the collision rate).
- collisions per prefix depth: the collision rate of the first p codes, p = 1..L.
- utilisation of a level: distinct codes used / K; entropy in bits of the code
  histogram, perplexity ``2 ** entropy``.
- neighbour preservation (k = 10): for each item (a random sample of at most
  ``sample`` items), among its k nearest other items in embedding space (L2,
  or cosine for a cosine model), the share that have its first token, and the
  mean number of leading codes (0..L) they have in common with it.
- MSE per component: ``mean((x - x')**2)`` over items and dimensions (as
  ``semantic-id``'s ``quantization_mse``), after each level and in all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import (
    as_matrix,
    non_negative_int,
    optional_import,
    positive_int,
    require_finite,
)
from viva_glyph.semantic._checks import check_codes
from viva_glyph.semantic._levels import level_factors
from viva_glyph.semantic._model import SemanticIds, normalize_rows

__all__ = ["MAX_K", "SemanticReport", "evaluate"]

_BLOCK = 4096
#: Queries whose neighbours are searched at once (memory: about 4 x this x _BLOCK x 8 bytes).
_QUERY_CHUNK = 2048
#: Largest k of neighbour preservation (memory grows with sample x k).
MAX_K = 1024


@dataclass(frozen=True)
class SemanticReport:
    """The report of :func:`evaluate` (see the module docstring for definitions)."""

    n: int
    levels: int
    codebook_sizes: list[int]
    collision_rate: float
    shared_share: float
    collisions_per_depth: list[float]
    largest_group: int
    unique_ids: bool
    utilisation: list[float]
    entropy_bits: list[float]
    perplexity: list[float]
    k: int
    neighbour_sample: int
    first_token_share: float
    mean_common_prefix: float
    mse: float
    mse_per_level: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """Plain-text tables."""
        lines = [
            f"items {self.n}, levels {self.levels} x {self.codebook_sizes}",
            f"collision rate (1 - unique/N)   {self.collision_rate:.4f}",
            f"share in a shared glyph        {self.shared_share:.4f}",
            f"largest group                  {self.largest_group}",
            f"unique IDs after resolution    {'yes' if self.unique_ids else 'NO'}",
            f"first-token share of {self.k}-NN    {self.first_token_share:.4f}"
            f"  (on {self.neighbour_sample} items)",
            f"mean common prefix of {self.k}-NN   {self.mean_common_prefix:.4f}",
            f"MSE per component              {self.mse:.6g}",
            "",
            "level  utilisation  entropy(bits)  perplexity  collisions@depth  MSE",
        ]
        for j in range(self.levels):
            lines.append(
                f"{j + 1:>5}  {self.utilisation[j]:>11.4f}  {self.entropy_bits[j]:>13.3f}  "
                f"{self.perplexity[j]:>10.1f}  {self.collisions_per_depth[j]:>16.4f}  "
                f"{self.mse_per_level[j]:.6g}"
            )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write utilisation, perplexity and collisions per depth as a PNG (needs matplotlib)."""
        optional_import("matplotlib", "SemanticReport.plot()").use("Agg")
        plt = optional_import("matplotlib.pyplot", "SemanticReport.plot()")

        from viva_glyph.files import atomic_output

        levels = np.arange(1, self.levels + 1)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        axes[0].bar(levels, self.utilisation)
        axes[0].set(title="codes used / K", xlabel="level", ylim=(0, 1.05))
        axes[1].bar(levels, self.perplexity)
        axes[1].plot(levels, self.codebook_sizes, "k_", markersize=20, label="K")
        axes[1].set(title="perplexity", xlabel="level")
        axes[1].legend()
        axes[2].plot(levels, self.collisions_per_depth, "o-")
        scale = "log" if max(self.collisions_per_depth) > 0 else "linear"  # log of all zeros warns
        axes[2].set(title="collision rate of the prefix", xlabel="prefix depth", yscale=scale)
        fig.tight_layout()
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def _collision(codes: NDArray[Any]) -> tuple[float, float, int]:
    """(1 - unique/N, share in a shared row, largest group) of the rows of ``codes``."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    n = codes.shape[0]
    per_item = counts[inverse.reshape(-1)]
    return 1.0 - counts.size / n, float((per_item > 1).mean()), int(counts.max())


def evaluate(
    X: ArrayLike,
    unique_ids: ArrayLike,
    ids: SemanticIds,
    *,
    k: int = 10,
    sample: int = 2000,
    seed: int = 0,
) -> SemanticReport:
    """Rate semantic IDs of items.

    Parameters
    ----------
    X : array_like, shape (N, D)
        The items' embeddings (the ones ``unique_ids`` were made from).
    unique_ids : array_like of int, shape (N, L + 1) or (N, L)
        IDs from :meth:`SemanticIds.unique` (or raw codes).
    ids : SemanticIds
    k : int
        Neighbours per item for neighbour preservation.
    sample : int
        Items whose neighbours are searched (exactly, among all N).
    seed : int
        Seed of that sample.

    Returns
    -------
    SemanticReport
    """
    if not isinstance(ids, SemanticIds):
        raise TypeError(f"ids must be a SemanticIds, got {type(ids).__name__}")
    x = as_matrix(X, ids.dimension)
    n = x.shape[0]
    u = np.asarray(unique_ids)
    L = ids.levels
    if u.ndim != 2 or u.shape[0] != n or u.shape[1] not in (L, L + 1):
        raise ValueError(f"unique_ids must have shape ({n}, {L} or {L + 1}), got {u.shape}")
    codes = check_codes(u, ids.radices)[:, :L].astype(np.int64)  # dtype and range, every row
    k = positive_int(k, "k")
    sample = positive_int(sample, "sample")
    seed = non_negative_int(seed, "seed")
    if k > MAX_K:
        raise ValueError(f"k must be at most {MAX_K}, got {k}")
    if k >= n:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    rate, shared, largest = _collision(codes)
    per_depth = [_collision(codes[:, : p + 1])[0] for p in range(L)]
    util, ent = [], []
    for j, size in enumerate(ids.codebook_sizes):
        counts = np.bincount(codes[:, j], minlength=size)
        p = counts[counts > 0] / n
        util.append(float((counts > 0).sum() / size))
        ent.append(float(-(p * np.log2(p)).sum()))
    sq = np.zeros(L)
    factors = level_factors(ids.residual_scales, L)  # as decode: scaled levels when normalised
    for start in range(0, n, _BLOCK):
        block = x[start : start + _BLOCK]
        require_finite(block, start)
        xb = normalize_rows(block, start) if ids.metric == "cosine" else block.astype(np.float64)
        for level in range(L):
            entries = ids.codebooks[level].vectors64[codes[start : start + _BLOCK, level]]
            xb = xb - factors[level] * entries
            sq[level] += float(np.einsum("nd,nd->", xb, xb))
    mse = sq / (n * ids.dimension)
    share, common, m = _neighbours(x, codes, ids.metric, k, sample, seed)
    return SemanticReport(
        n=n,
        levels=L,
        codebook_sizes=list(ids.codebook_sizes),
        collision_rate=rate,
        shared_share=shared,
        collisions_per_depth=per_depth,
        largest_group=largest,
        unique_ids=bool(u.shape[1] == L + 1 and np.unique(u, axis=0).shape[0] == n),
        utilisation=util,
        entropy_bits=ent,
        perplexity=[float(2.0**e) for e in ent],
        k=k,
        neighbour_sample=m,
        first_token_share=share,
        mean_common_prefix=common,
        mse=float(mse[-1]),
        mse_per_level=[float(v) for v in mse],
    )


def _neighbours(
    x: NDArray[Any], codes: NDArray[np.int64], metric: str, k: int, sample: int, seed: int
) -> tuple[float, float, int]:
    """First-token share and mean common prefix of each sampled item's k nearest others."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)
    best_i = np.concatenate(
        [
            _nearest(x, queries[s : s + _QUERY_CHUNK], metric, k)
            for s in range(0, queries.size, _QUERY_CHUNK)
        ]
    )
    mine = codes[queries][:, None, :]
    theirs = codes[best_i]
    same = np.cumprod(mine == theirs, axis=2)  # leading codes in common
    return float(same[:, :, 0].mean()), float(same.sum(axis=2).mean()), int(queries.size)


def _nearest(x: NDArray[Any], queries: NDArray[Any], metric: str, k: int) -> NDArray[np.int64]:
    """Row numbers (m, k) of the k nearest other rows of x to the rows ``queries`` of x."""
    n = x.shape[0]
    q = np.asarray(x[queries], dtype=np.float64)
    if metric == "cosine":
        q = normalize_rows(q, 0)
    best_d = np.full((q.shape[0], k), np.inf)
    best_i = np.zeros((q.shape[0], k), dtype=np.int64)
    qn = np.einsum("nd,nd->n", q, q)
    for start in range(0, n, _BLOCK):
        block = np.asarray(x[start : start + _BLOCK], dtype=np.float64)
        if metric == "cosine":
            block = normalize_rows(block, start)
        d = qn[:, None] - 2.0 * (q @ block.T) + np.einsum("nd,nd->n", block, block)[None, :]
        idx = np.arange(start, start + block.shape[0])
        d[queries[:, None] == idx[None, :]] = np.inf  # not its own neighbour
        both_d = np.concatenate([best_d, d], axis=1)
        both_i = np.concatenate([best_i, np.broadcast_to(idx, d.shape)], axis=1)
        top = np.argpartition(both_d, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(both_d, top, axis=1)
        best_i = np.take_along_axis(both_i, top, axis=1)
    return best_i
