"""k-means initialisation of viva_glyph.torch.ResidualVQ: enough rows, numpy's algorithm.

References: numpy's k-means (:func:`viva_glyph.train.kmeans.progressive_kmeans`, the
one :func:`viva_glyph.fit` runs), and the figures of a quantizer initialised from
one small batch (stage 4 at perplexity 1.1 with 98% of its codes dead, before
rows were gathered over batches).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import torch_mixture  # noqa: E402

from viva_glyph.torch import ResidualVQ  # noqa: E402
from viva_glyph.train import kmeans  # noqa: E402
from viva_glyph.train.rows import ArrayRows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixture(n: int, d: int, seed: int, centers: int = 64) -> torch.Tensor:
    return torch_mixture(n, d, seed, centers)


def test_default_init_rows_is_a_multiple_of_k() -> None:
    assert ResidualVQ(4, 2, 32).init_rows == 16 * 32
    assert ResidualVQ(4, 2, 32, init_rows=100).init_rows == 100
    with pytest.raises(ValueError, match="init_rows"):
        ResidualVQ(4, 2, 32, init_rows=0)
    with pytest.raises(ValueError, match=r"init_rows \(600\) must be <= kmeans_max_samples"):
        ResidualVQ(4, 2, 32, init_rows=600, kmeans_max_samples=500)


def test_rows_are_gathered_over_batches_until_init_rows() -> None:
    k, batch = 32, 100  # init_rows = 512: five batches gathered, the sixth initialises
    batches = mixture(1000, 6, 0).split(batch)
    vq = ResidualVQ(6, 3, k, seed=4)
    books = vq.codebook.clone()
    for step in range(5):
        out = vq(batches[step])
        assert int(vq.init_state) == 0 and torch.equal(vq.codebook, books), step
        # warm-up steps quantize with the current codebooks and update nothing
        assert torch.equal(out.codes, vq.eval().encode(batches[step]))
        vq.train()
        assert float(vq.ema_count.sum()) == 3 * k
    vq(batches[5])
    assert int(vq.init_state) == 2
    # the same initialisation as one explicit call on the six gathered batches
    ref = ResidualVQ(6, 3, k, seed=4)
    ref.init_from_data(torch.cat(batches[:6]))
    ref(batches[5])  # and the same first training step on the last batch
    torch.testing.assert_close(vq.codebook, ref.codebook, rtol=0, atol=0)
    torch.testing.assert_close(vq.ema_count, ref.ema_count, rtol=0, atol=0)


def test_warm_up_keeps_a_gradient_for_learned_codebooks() -> None:
    vq = ResidualVQ(4, 2, 16, ema=False, seed=0)
    x = mixture(64, 4, 1).requires_grad_(True)
    out = vq(x)  # 64 < 256 rows: a warm-up step
    out.loss.backward()
    assert int(vq.init_state) == 0
    assert x.grad is not None and vq.codebook.grad is not None
    assert float(vq.codebook.grad.abs().max()) == 0.0


def test_explicit_init_with_few_rows_warns_with_the_figures() -> None:
    vq = ResidualVQ(8, 2, 64, seed=0)
    with pytest.warns(UserWarning, match=r"64 codes per stage from 200 rows \(3\.1 per code\)"):
        vq.init_from_data(mixture(200, 8, 0))
    with pytest.warns(UserWarning, match=r"init_rows = 1024"):
        ResidualVQ(8, 2, 64, seed=0).init_from_data(mixture(40, 8, 0))  # fewer rows than K
    vq = ResidualVQ(8, 2, 64, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vq.init_from_data(mixture(1024, 8, 0))  # enough: silent


def test_issue_case_later_stages_are_used() -> None:
    """K = 256 and batches of 512 rows: the first batch alone left stage 4 dead."""
    d, m, k = 16, 4, 256
    vq = ResidualVQ(d, m, k, seed=0, dead_after=0)
    for batch in mixture(9 * 512, d, 1).split(512):
        vq(batch)
    assert int(vq.init_state) == 2
    vq.eval()
    out = vq(mixture(16384, d, 2))
    assert float(out.perplexity.min()) > 0.5 * k, out.perplexity
    assert float(out.dead_share.max()) < 0.05, out.dead_share


@pytest.mark.parametrize(("d", "k", "iters"), [(8, 32, 20), (24, 64, 5)])
def test_init_is_numpys_kmeans(d: int, k: int, iters: int) -> None:
    """Issue 10: one k-means. Stage 1 is numpy's progressive k-means of the rows, exactly.

    The numpy generator is seeded by one draw from the module's torch generator,
    which first drew the random codebooks of the constructor.
    """
    x = mixture(3000, d, 3)
    vq = ResidualVQ(d, 2, k, kmeans_iters=iters, seed=5)
    vq.init_from_data(x)
    g = torch.Generator().manual_seed(5)
    torch.randn((2, k, d), generator=g)  # the constructor's random codebooks
    rng = np.random.default_rng(int(torch.randint(1 << 62, (), generator=g)))
    xs = x.numpy().copy()
    rows = ArrayRows.of(xs, kmeans.leaf_rows(k, xs.shape[1]))
    ref, _ = kmeans.progressive_kmeans(rows, k, iters, rng)
    np.testing.assert_array_equal(vq.codebook[0].numpy(), ref.astype(np.float32))
    # every code is used on the training rows, in both stages
    vq.eval()
    assert float(vq(x).dead_share.max()) == 0.0
