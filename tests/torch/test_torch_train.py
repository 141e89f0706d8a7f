"""A small autoencoder trained with viva_glyph.torch.ResidualVQ on structured data."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from viva_glyph.torch import ResidualVQ  # noqa: E402

D_IN, LATENT, STAGES, K = 16, 8, 2, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def manifold(n: int, seed: int) -> torch.Tensor:
    """Points on a 2-D curved sheet embedded in 16-D by a fixed smooth map."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 2, generator=g) * 2 * math.pi
    feats = torch.cat([torch.sin(t), torch.cos(t), torch.sin(2 * t[:, :1] + t[:, 1:])], 1)
    w = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(42))
    return feats @ w + 0.01 * torch.randn(n, D_IN, generator=g)


@pytest.mark.parametrize("ema", [True, False])
def test_autoencoder_learns_and_uses_codes(ema: bool) -> None:
    torch.manual_seed(0)
    enc = torch.nn.Sequential(
        torch.nn.Linear(D_IN, 32), torch.nn.GELU(), torch.nn.Linear(32, LATENT)
    )
    dec = torch.nn.Sequential(
        torch.nn.Linear(LATENT, 32), torch.nn.GELU(), torch.nn.Linear(32, D_IN)
    )
    vq = ResidualVQ(LATENT, STAGES, K, ema=ema, dead_after=10, commitment_weight=0.25, seed=0)
    params = [*enc.parameters(), *dec.parameters(), *vq.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    data = manifold(250 * 128, 1)
    errors = []
    for batch in data.split(128):
        out = vq(enc(batch))
        recon = torch.nn.functional.mse_loss(dec(out.quantized), batch)
        opt.zero_grad()
        (recon + out.loss).backward()
        opt.step()
        errors.append(float(recon.detach()))
    vq.eval()
    held = manifold(4096, 2)
    with torch.no_grad():
        out = vq(enc(held))
        final = float(torch.nn.functional.mse_loss(dec(out.quantized), held))
    assert final < 0.2 * errors[0], (errors[0], final)
    for s in range(STAGES):
        used = out.codes[:, s].unique().numel()
        assert used >= 0.9 * K, (s, used)
