"""Shared test helpers: independent float64 brute-force references."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("ci")


def brute_force_encode(books: np.ndarray, x: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Greedy RVQ by explicit float64 distances to every code; ties to the lowest index.

    Independent of the library's GEMM kernel: it only uses elementwise arithmetic.
    Returns the indices and, per stage, the (K,) squared distances of that stage.
    """
    residual = np.asarray(x, dtype=np.float64).copy()
    indices, stage_dists = [], []
    for book in np.asarray(books, dtype=np.float64):
        dists = ((residual[None, :] - book) ** 2).sum(axis=1)
        q = int(np.flatnonzero(dists == dists.min())[0])
        indices.append(q)
        stage_dists.append(dists)
        residual = residual - book[q]
    return indices, np.array(stage_dists)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
