"""Per-level codebook sizes in the torch layer: a ResidualVQ of stages of different K."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_stagewise_nearest, ema_step_reference, torch_mixture  # noqa: E402

import viva_glyph  # noqa: E402
from viva_glyph.torch import ResidualVQ  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [3, 16, 8]


def brute_codes(books: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Greedy RVQ codes by explicit float64 distances, one (K_s, D) book per stage."""
    r = x.astype(np.float64).copy()
    out = []
    for book in books:
        book = np.asarray(book, dtype=np.float64)
        idx = ((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        out.append(idx)
        r -= book[idx]
    return np.stack(out, 1)


def stage_books(vq: ResidualVQ) -> list[np.ndarray]:
    return [vq.codebook[s, :k].detach().numpy() for s, k in enumerate(SIZES)]


def test_padding_codes_are_never_chosen() -> None:
    vq = ResidualVQ(4, 3, SIZES, kmeans_init=False, seed=1).eval()
    assert vq.codebook_sizes == (3, 16, 8) and vq.codebook_size == 16
    assert vq.codebook.shape == (3, 16, 4) and "codebook_size=(3, 16, 8)" in repr(vq)
    assert float(vq.codebook[0, 3:].abs().max()) == 0.0  # zero padding
    # padding codes at the origin would be the nearest for rows near it: they must lose
    x = 0.01 * torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    out = vq(x)
    codes = out.codes.numpy()
    assert (codes < np.array(SIZES)).all()
    np.testing.assert_array_equal(codes, brute_codes(stage_books(vq), x.numpy()))
    np.testing.assert_array_equal(vq.encode(x).numpy(), codes)
    ref = sum(stage_books(vq)[s][codes[:, s]] for s in range(3))
    np.testing.assert_allclose(vq.decode(out.codes).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(out.quantized.numpy(), ref, atol=1e-5)
    # perplexity and dead share per stage of its own size
    for s, k in enumerate(SIZES):
        used = len(np.unique(codes[:, s]))
        assert float(out.dead_share[s]) == pytest.approx(1 - used / k)
        assert float(out.perplexity[s]) <= k + 1e-4


def test_decode_checks_each_stage_range() -> None:
    vq = ResidualVQ(4, 3, SIZES, kmeans_init=False)
    with pytest.raises(ValueError, match=r"expected \[0, 3\) or -1.*got 3 at.*stage 0"):
        vq.decode(torch.tensor([[3, 0, 0]]))
    with pytest.raises(ValueError, match=r"expected \[0, 8\).*got 9 at.*stage 2"):
        vq.decode(torch.tensor([[0, 15, 9]]))
    torch.testing.assert_close(vq.decode(torch.tensor([[-1, 15, -1]])), vq.codebook[1, 15][None])
    with pytest.raises(ValueError, match="lists 3 sizes, but num_stages is 2"):
        ResidualVQ(4, 2, SIZES)


def test_one_ema_step_uses_each_stages_own_size() -> None:
    rng = np.random.default_rng(0)
    d, decay, eps = 3, 0.9, 0.5  # a large eps makes K in the smoothing visible
    books = [rng.normal(size=(k, d)).astype(np.float32) for k in SIZES]
    counts = [rng.uniform(0.5, 3.0, size=k) for k in SIZES]
    vq = ResidualVQ(d, 3, SIZES, decay=decay, eps=eps, dead_after=0)
    sd = vq.state_dict()
    pad_books, pad_counts = np.zeros((3, 16, d), np.float32), np.zeros((3, 16))
    for s, k in enumerate(SIZES):
        pad_books[s, :k], pad_counts[s, :k] = books[s], counts[s]
    sd["codebook"] = torch.from_numpy(pad_books)
    sd["ema_count"] = torch.from_numpy(pad_counts).float()
    sd["ema_sum"] = torch.from_numpy(pad_books * pad_counts[..., None]).float()
    sd["init_state"] = torch.tensor(2)
    vq.load_state_dict(sd)
    x = rng.normal(size=(64, d)).astype(np.float32)
    out = vq(torch.from_numpy(x))
    codes = brute_codes(books, x)
    np.testing.assert_array_equal(out.codes.numpy(), codes)
    ref = ema_step_reference(books, counts, codes, x, decay, eps)
    for s, (k, (_, new_count, _, new_book)) in enumerate(zip(SIZES, ref, strict=True)):
        np.testing.assert_allclose(vq.ema_count[s, :k].numpy(), new_count, rtol=1e-5)
        np.testing.assert_allclose(vq.codebook[s, :k].numpy(), new_book, rtol=1e-4, atol=1e-5)
        assert float(vq.codebook[s, k:].abs().sum()) == 0.0  # padding untouched
        assert float(vq.ema_count[s, k:].abs().sum()) == 0.0


def test_training_with_kmeans_init_and_dead_codes_keeps_padding_out() -> None:
    x = torch_mixture(4096, 6, 0)
    vq = ResidualVQ(6, 3, SIZES, dead_after=1, seed=0)
    for b in x.split(512):
        out = vq(b)
        assert (out.codes.numpy() < np.array(SIZES)).all()
    for s, k in enumerate(SIZES):
        assert float(vq.codebook[s, k:].abs().sum()) == 0.0
        assert int(vq.unused_steps[s, :k].max()) <= 1  # dead codes were replaced
    vq.eval()
    held = torch_mixture(1000, 6, 7)
    enc = vq.to_encoder()
    assert enc.config.stage_sizes == tuple(SIZES)
    ours = vq.encode(held).numpy()
    assert_stagewise_nearest([cb.vectors for cb in enc.codebooks], held.numpy(), ours)
    theirs = enc.encode(held.numpy()).astype(np.int64)
    assert (ours == theirs).all(1).mean() > 0.99  # float ties only
    # trained: far better than the data's spread
    err = ((held - vq.decode(vq.encode(held))) ** 2).mean()
    assert float(err) < 0.2 * float(held.var(0).mean())


def test_from_encoder_state_dict_and_io(tmp_path: object) -> None:
    x = np.random.default_rng(0).standard_normal((2000, 5)).astype(np.float32)
    enc = viva_glyph.fit(x, codebook_size=SIZES, seed=0)
    vq = ResidualVQ.from_encoder(enc).eval()
    assert vq.codebook_sizes == tuple(SIZES)
    assert vq.to_encoder() == enc
    codes = vq.encode(torch.from_numpy(x)).numpy()
    assert_stagewise_nearest([cb.vectors for cb in enc.codebooks], x, codes)
    other = ResidualVQ(5, 3, SIZES, kmeans_init=False)
    other.load_state_dict(vq.state_dict())
    assert "code_valid" not in vq.state_dict()
    np.testing.assert_array_equal(other.eval().encode(torch.from_numpy(x)).numpy(), codes)


def test_export_and_compile_with_mixed_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    vq = ResidualVQ(6, 3, SIZES, seed=0, dead_after=2)
    for _ in range(3):
        vq(torch.randn(256, 6, generator=g) * 2.0)
    vq.eval()
    x = torch.randn(40, 6, generator=g) * 2.0
    want = vq(x)
    n = torch.export.Dim("n")
    ep = torch.export.export(vq, (x,), dynamic_shapes={"x": {0: n}})
    got = ep.module()(x)
    assert torch.equal(got.codes, want.codes)
    torch.testing.assert_close(got.quantized, want.quantized)
    compiled = torch.compile(vq, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x).codes, want.codes)
    assert (want.codes < torch.tensor(SIZES)).all()
