"""viva_glyph.torch.ResidualVQ: gradients, EMA arithmetic, init, dead codes, codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from conftest import ema_step_reference, torch_mixture  # noqa: E402

import viva_glyph  # noqa: E402
from viva_glyph.torch import ResidualVQ, RvqOutput  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


mixture = torch_mixture


def ready(vq: ResidualVQ, books: np.ndarray, counts: np.ndarray | None = None) -> ResidualVQ:
    """Put a quantizer in a known trained state through ``load_state_dict``."""
    sd = vq.state_dict()
    sd["codebook"] = torch.as_tensor(books, dtype=torch.float32)
    if vq.ema:
        c = np.ones(books.shape[:2]) if counts is None else counts
        sd["ema_count"] = torch.as_tensor(c, dtype=torch.float32)
        sd["ema_sum"] = torch.as_tensor(books * c[..., None], dtype=torch.float32)
    sd["init_state"] = torch.tensor(2)
    vq.load_state_dict(sd)
    return vq


def brute_codes(books: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Greedy RVQ codes by explicit float64 distances (independent of the GEMM kernel)."""
    r = x.astype(np.float64).copy()
    out = []
    for book in books.astype(np.float64):
        idx = ((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        out.append(idx)
        r -= book[idx]
    return np.stack(out, 1)


# -- gradients -----------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_straight_through_and_commitment_gradients(train: bool) -> None:
    vq = ResidualVQ(6, 3, 8, seed=1, commitment_weight=0.7, dead_after=0)
    vq.init_from_data(mixture(256, 6, 0))
    vq.train(train)
    x = mixture(40, 6, 1).view(5, 8, 6).requires_grad_(True)
    out = vq(x)
    assert isinstance(out, RvqOutput)
    assert out.quantized.shape == x.shape and out.codes.shape == (5, 8, 3)
    (g_ste,) = torch.autograd.grad(out.quantized.sum(), x, retain_graph=True)
    assert torch.equal(g_ste, torch.ones_like(x))  # identity: straight through
    (g_loss,) = torch.autograd.grad(out.loss, x)
    # reference: plain autograd of 0.7 * sum_s mean((r_s - sg(c_s))^2) with the same codes
    xr = x.detach().clone().requires_grad_(True)
    books = vq.codebook.detach() if train else vq.codebook
    flat, codes = xr.reshape(-1, 6), out.codes.reshape(-1, 3)
    ref, done = 0.0, torch.zeros_like(flat)
    if train:  # the step updated the codebooks: the codes were chosen with the old ones
        return
    for s in range(3):
        c = books[s][codes[:, s]].detach()
        r = flat - done
        ref = ref + ((r - c) ** 2).mean()
        done = done + c
    (g_ref,) = torch.autograd.grad(0.7 * ref, xr)
    torch.testing.assert_close(g_loss, g_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, 0.7 * ref.detach(), rtol=1e-5, atol=1e-6)


def test_commitment_gradient_in_training_matches_autograd() -> None:
    vq = ResidualVQ(5, 2, 6, seed=2, dead_after=0, ema=True)
    vq.init_from_data(mixture(200, 5, 0))
    before = vq.codebook.clone()
    x = mixture(30, 5, 3).requires_grad_(True)
    out = vq(x)  # training mode: codes from the codebooks before the update
    (g,) = torch.autograd.grad(out.loss, x)
    ref, done = 0.0, torch.zeros_like(x)
    for s in range(2):
        c = before[s][out.codes[:, s]]
        ref = ref + ((x - done - c) ** 2).mean()
        done = done + c
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_gradients_with_per_sample_dropout_match_autograd() -> None:
    vq = ResidualVQ(4, 3, 6, ema=False, dropout=1.0, dropout_mode="sample", seed=5)
    vq.init_from_data(mixture(120, 4, 0))
    books = vq.codebook.detach().clone().requires_grad_(True)
    x = mixture(60, 4, 6).requires_grad_(True)
    out = vq(x)
    out.loss.backward()
    assert (out.codes == -1).any() and x.grad is not None and vq.codebook.grad is not None
    xr = x.detach().clone().requires_grad_(True)
    commit, book_loss, done = 0.0, 0.0, torch.zeros_like(x)
    for s in range(3):  # mean over the rows each stage kept
        kept = out.codes[:, s] >= 0
        c = books[s][out.codes[:, s].clamp_min(0)] * kept[:, None]
        r = xr - done
        rows = kept.sum()
        commit = commit + (((r - c.detach()) ** 2).sum(1) * kept).sum() / (rows * 4)
        book_loss = book_loss + (((r.detach() - c) ** 2).sum(1) * kept).sum() / (rows * 4)
        done = done + c.detach()
    gx, gb = torch.autograd.grad(commit + book_loss, (xr, books))
    torch.testing.assert_close(x.grad, gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vq.codebook.grad, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, (commit + book_loss).detach(), rtol=1e-5, atol=1e-6)


def test_learned_codebook_gradient_matches_autograd() -> None:
    vq = ResidualVQ(4, 2, 5, ema=False, seed=3, dead_after=0, codebook_weight=0.5)
    vq.init_from_data(mixture(100, 4, 0))
    books = vq.codebook.detach().clone().requires_grad_(True)
    x = mixture(50, 4, 4).requires_grad_(True)
    out = vq(x)
    out.loss.backward()
    assert vq.codebook.grad is not None
    ref, done = 0.0, torch.zeros_like(x)
    for s in range(2):  # codebook loss: sum_s mean((sg(r_s) - c_s)^2)
        c = books[s][out.codes[:, s]]
        ref = ref + ((x.detach() - done - c) ** 2).mean()
        done = done + c.detach()
    (g_ref,) = torch.autograd.grad(0.5 * ref, books)
    torch.testing.assert_close(vq.codebook.grad, g_ref, rtol=1e-5, atol=1e-6)


# -- EMA -------------------------------------------------------------------------------
def test_one_ema_step_equals_hand_computation() -> None:
    rng = np.random.default_rng(0)
    m, k, d, decay, eps = 2, 4, 3, 0.9, 0.01
    books = rng.normal(size=(m, k, d)).astype(np.float32)
    counts = rng.uniform(0.5, 3.0, size=(m, k))
    vq = ready(ResidualVQ(d, m, k, decay=decay, eps=eps, dead_after=0), books, counts)
    x = rng.normal(size=(64, d)).astype(np.float32)
    out = vq(torch.from_numpy(x))
    codes = brute_codes(books, x)
    np.testing.assert_array_equal(out.codes.numpy(), codes)
    ref = ema_step_reference(list(books), list(counts), codes, x, decay, eps)
    r = x.astype(np.float64)
    for s, (cnt, new_count, new_sum, new_book) in enumerate(ref):
        np.testing.assert_allclose(vq.ema_count[s].numpy(), new_count, rtol=1e-5)
        np.testing.assert_allclose(vq.ema_sum[s].numpy(), new_sum, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(vq.codebook[s].numpy(), new_book, rtol=1e-4, atol=1e-5)
        r = r - books[s][codes[:, s]]
        assert vq.unused_steps[s].tolist() == [0 if c > 0 else 1 for c in cnt]
    np.testing.assert_allclose(out.stage_losses.numpy()[-1], (r**2).sum(1).mean() / d, rtol=1e-4)


def test_kmeans_init_survives_first_ema_step() -> None:
    x = mixture(2048, 8, 0)
    vq = ResidualVQ(8, 2, 16, decay=0.99, dead_after=0, seed=0)
    vq.init_from_data(x)
    # EMA state consistent with the centroids: sum = centroid * count
    torch.testing.assert_close(vq.ema_sum, vq.codebook * vq.ema_count[..., None])
    vq.eval()
    err0 = float((vq(x).quantized - x).pow(2).mean())
    books0 = vq.codebook.clone()
    vq.train()
    vq(x)
    vq.eval()
    err1 = float((vq(x).quantized - x).pow(2).mean())
    assert err1 <= err0 * 1.01
    assert float((vq.codebook - books0).abs().max()) < 0.05 * float(books0.abs().max())
    # and k-means is real clustering: far better than the random start
    rnd = ResidualVQ(8, 2, 16, kmeans_init=False, dead_after=0, seed=0).eval()
    assert err0 < 0.5 * float((rnd(x).quantized - x).pow(2).mean())


@pytest.mark.slow
def test_kmeans_init_close_to_faiss() -> None:
    faiss = pytest.importorskip("faiss")
    x = mixture(4000, 8, 5, centers=40)
    vq = ResidualVQ(8, 1, 32, kmeans_iters=20, seed=0)
    vq.init_from_data(x)
    ours = float(((x[:, None] - vq.codebook[0][None]) ** 2).sum(-1).min(1).values.sum())
    km = faiss.Kmeans(8, 32, niter=20, seed=1, nredo=3)
    km.train(x.numpy())
    assert ours <= km.obj[-1] * 1.10


def test_first_training_batch_initializes_and_eval_does_not() -> None:
    x = mixture(512, 4, 0)
    vq = ResidualVQ(4, 2, 8, seed=0).eval()
    books = vq.codebook.clone()
    vq(x)
    assert torch.equal(vq.codebook, books) and int(vq.init_state) == 0  # eval never inits
    vq.train()
    vq(x)
    assert int(vq.init_state) == 2 and not torch.equal(vq.codebook, books)


# -- dead codes ------------------------------------------------------------------------
def test_parked_code_revived_after_dead_after_steps() -> None:
    x = mixture(4096, 6, 0)
    vq = ResidualVQ(6, 2, 8, dead_after=3, seed=0)
    vq.init_from_data(x[:1024])
    with torch.no_grad():
        vq.codebook[1, 5] = 1e3  # parked far from every residual
        vq.ema_sum[1, 5] = 1e3 * vq.ema_count[1, 5]
    batches = x.split(512)
    for step in range(2):
        vq(batches[step])
        assert int(vq.unused_steps[1, 5]) == step + 1
        assert float(vq.codebook[1, 5].min()) > 900  # still parked
    vq(batches[2])  # third unused step: replaced in this same step
    assert float(vq.codebook[1, 5].abs().max()) < 50
    assert int(vq.unused_steps[1, 5]) == 0
    assert float(vq.ema_count[1, 5]) == 1.0  # whole EMA state reset
    torch.testing.assert_close(vq.ema_sum[1, 5], vq.codebook[1, 5])
    used = sum(int((vq(b).codes[:, 1] == 5).sum()) for b in batches[3:6])
    assert used > 0  # and it is used again


def test_dead_codes_disabled() -> None:
    vq = ResidualVQ(3, 1, 4, dead_after=0, seed=0)
    vq.init_from_data(mixture(100, 3, 0))
    with torch.no_grad():
        vq.codebook[0, 0] = 1e3
        vq.ema_sum[0, 0] = 1e3 * vq.ema_count[0, 0]
    for _ in range(5):
        vq(mixture(100, 3, 1))
    assert float(vq.codebook[0, 0].min()) > 900


# -- codes -----------------------------------------------------------------------------
def test_codes_equal_numpy_encoder_and_brute_force() -> None:
    x = mixture(3000, 8, 0)
    vq = ResidualVQ(8, 3, 16, seed=0, dead_after=2)
    for b in x.split(500):
        vq(b)
    vq.eval()
    enc = vq.to_encoder()
    assert isinstance(enc, viva_glyph.RvqEncoder)
    held = mixture(1000, 8, 7)
    ours = vq.encode(held).numpy()
    theirs = enc.encode(held.numpy()).astype(np.int64)
    same = (ours == theirs).all(1)
    assert same.mean() > 0.99  # float ties only
    np.testing.assert_array_equal(ours[same], brute_codes(enc.codebook_array, held.numpy())[same])
    np.testing.assert_allclose(vq.decode(vq.encode(held)).numpy(), enc.decode(ours), atol=1e-5)


def test_from_encoder_and_io_roundtrip(tmp_path: object) -> None:
    enc = viva_glyph.new(viva_glyph.RvqConfig(3, 5, 16), seed=4)
    vq = ResidualVQ.from_encoder(enc, decay=0.95).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (300, 5)).astype(np.float32)
    np.testing.assert_array_equal(vq.encode(torch.from_numpy(x)).numpy(), enc.encode(x))
    assert vq.to_encoder() == enc
    vq.train()
    books = vq.codebook.clone()
    vq(torch.from_numpy(x))  # first batch only counts, no k-means: codebooks barely move
    assert float((vq.codebook - books).abs().max()) < 0.2
    pytest.importorskip("viva_glyph.core")
    pytest.importorskip("safetensors")
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "model.safetensors"
    viva_glyph.save(enc, path)
    loaded = ResidualVQ.from_encoder(viva_glyph.load(path))
    assert torch.equal(loaded.codebook, torch.from_numpy(enc.codebook_array))


@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    m=st.integers(1, 3),
    seed=st.integers(0, 5),
)
def test_encode_decode_roundtrip(lead: list[int], m: int, seed: int) -> None:
    vq = ResidualVQ(4, 3, 6, kmeans_init=False, seed=seed).eval()
    x = torch.randn((*lead, 4), generator=torch.Generator().manual_seed(seed))
    codes = vq.encode(x, m)
    assert codes.shape == (*lead, m) and codes.dtype == torch.int64
    assert torch.equal(codes, vq.encode(x)[..., :m])  # a prefix of the full code
    out = vq(x, num_stages=m)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(vq.decode(codes), out.quantized)
    flat = codes.reshape(-1, m)
    ref = sum(vq.codebook[s][flat[:, s]] for s in range(m))
    torch.testing.assert_close(vq.decode(codes).reshape(-1, 4), ref)


def test_bfloat16_input() -> None:
    vq = ResidualVQ(8, 2, 16, seed=0)
    vq.init_from_data(mixture(512, 8, 0))
    vq.eval()
    x = mixture(64, 8, 1).bfloat16().requires_grad_(True)
    out = vq(x)
    assert out.quantized.dtype == torch.bfloat16 and out.codes.dtype == torch.int64
    assert torch.equal(out.codes, vq.encode(x.detach().float()))
    out.quantized.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    vq.train()
    assert vq(x).quantized.dtype == torch.bfloat16


def test_autocast_keeps_distances_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    vq = ResidualVQ(16, 2, 64, seed=0)
    vq.init_from_data(torch.randn(4096, 16, generator=g))
    vq.eval()
    x = torch.randn(4000, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = vq(x).codes
    assert torch.equal(codes, vq.encode(x))


# -- dropout, determinism, state ---------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_quantizer_dropout(mode: str) -> None:
    x = mixture(256, 4, 0)
    vq = ResidualVQ(4, 4, 8, dropout=1.0, dropout_mode=mode, seed=3)
    vq.init_from_data(x)
    depths = set()
    for _ in range(8):
        books = vq.codebook.clone()  # the step quantizes with these, then updates them
        out = vq(x)
        valid = out.codes >= 0
        depth = valid.sum(1)
        # valid codes form a prefix, and quantized is what they decode to
        assert torch.equal(valid, torch.arange(4)[None, :] < depth[:, None])
        ref = sum(books[s][out.codes[:, s].clamp_min(0)] * valid[:, s, None] for s in range(4))
        torch.testing.assert_close(out.quantized, ref, rtol=0, atol=1e-5)
        if mode == "batch":
            assert len(set(depth.tolist())) == 1
        depths.update(depth.tolist())
    assert len(depths) > 1
    assert min(depths) >= 1


def test_one_seed_drives_everything() -> None:
    x = mixture(600, 4, 0)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        vq = ResidualVQ(4, 3, 8, dropout=0.5, dropout_mode="sample", dead_after=1, seed=seed)
        codes = [vq(b).codes for b in x.split(200)]
        return vq.codebook, torch.stack(codes)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_state_dict_roundtrip_keeps_training_state() -> None:
    x = mixture(512, 4, 0)
    vq = ResidualVQ(4, 2, 8, seed=0)
    vq(x)
    other = ResidualVQ(4, 2, 8, seed=5)
    other.load_state_dict(vq.state_dict())
    books = other.codebook.clone()
    other(x[:8])  # no new k-means: the loaded state says ready
    assert float((other.codebook - books).abs().max()) < 0.5
    other.eval()
    vq.eval()
    assert torch.equal(other.encode(x), vq.encode(x))


def test_usage_statistics() -> None:
    vq = ResidualVQ(4, 2, 8, kmeans_init=False, seed=0).eval()
    x = torch.randn(400, 4)
    out = vq(x)
    for s in range(2):
        p = torch.bincount(out.codes[:, s], minlength=8).double() / 400
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        assert abs(float(out.perplexity[s]) - float(ent.exp())) < 1e-4
        assert float(out.dead_share[s]) == float((p == 0).double().mean())


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="dim"):
        ResidualVQ(2.5, 2, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_stages"):
        ResidualVQ(4, 0, 4)
    with pytest.raises(ValueError, match="decay"):
        ResidualVQ(4, 2, 4, decay=1.0)
    with pytest.raises(ValueError, match="dropout_mode"):
        ResidualVQ(4, 2, 4, dropout_mode="row")
    with pytest.raises(ValueError, match="dropout_min_stages"):
        ResidualVQ(4, 2, 4, dropout_min_stages=3)
    vq = ResidualVQ(4, 2, 4).eval()
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        vq(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        vq(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        vq(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="num_stages must be <= 2"):
        vq(torch.zeros(3, 4), num_stages=3)
    with pytest.raises(TypeError, match="integers"):
        vq.decode(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="1 <= m <= 2"):
        vq.decode(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="RvqEncoder"):
        ResidualVQ.from_encoder("model.safetensors")  # type: ignore[arg-type]
