"""viva_glyph.torch.ResidualVQ under hostile input: non-finite values, bad codes and state.

Every case here once gave a silent wrong result (NaN codebooks, NaN rows coded as
(0, 0, 0), out-of-range tokens decoded) or a torch-internal error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from conftest import torch_mixture  # noqa: E402

from viva_glyph.torch import ResidualVQ  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


mixture = torch_mixture


def trained(ema: bool = True) -> ResidualVQ:
    vq = ResidualVQ(4, 3, 8, seed=0, ema=ema, dead_after=2)
    for b in mixture(1024, 4, 0).split(256):
        vq(b)
    return vq


def snapshot(vq: ResidualVQ) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in vq.state_dict().items()}


def assert_unchanged(vq: ResidualVQ, before: dict[str, torch.Tensor]) -> None:
    after = vq.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


BAD = [float("nan"), float("inf"), float("-inf"), 3e38]


# -- non-finite input ------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("ema", [True, False])
def test_training_batch_with_a_bad_value_is_refused_before_any_update(
    bad: float, ema: bool
) -> None:
    vq = trained(ema)
    before, gen = snapshot(vq), vq.generator.get_state()
    x = mixture(300, 4, 1)
    x[217, 2] = bad
    with pytest.raises(ValueError, match=r"x row 217 holds") as info:
        vq(x)
    assert "nan" in str(info.value) or "inf" in str(info.value) or "3e+38" in str(info.value)
    assert_unchanged(vq, before)
    assert torch.equal(vq.generator.get_state(), gen)  # not even a random draw
    for b in mixture(50 * 64, 4, 2).split(64):  # 50 clean steps later: all finite
        out = vq(b)
    assert torch.isfinite(vq.codebook).all() and torch.isfinite(out.loss)
    if ema:
        assert torch.isfinite(vq.ema_sum).all() and torch.isfinite(vq.ema_count).all()


def test_row_named_in_the_input_shape() -> None:
    vq = trained()
    x = mixture(60, 4, 1).view(3, 5, 4, 4)
    x[2, 1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x\[2, 1, 3\] \(row 47 of the flattened input\)"):
        vq(x)
    vq.eval()
    with pytest.raises(ValueError, match=r"x\[2, 1, 3\]"):
        vq.encode(x)


def test_kmeans_initialisation_batch_with_nan_is_refused() -> None:
    vq = ResidualVQ(4, 3, 8, seed=0)
    before = snapshot(vq)
    x = mixture(512, 4, 1)
    x[400, 1] = float("nan")
    with pytest.raises(ValueError, match="x row 400 holds nan"):
        vq(x)  # the first training batch initializes
    with pytest.raises(ValueError, match="x row 400 holds nan"):
        vq.init_from_data(x)
    assert_unchanged(vq, before)
    assert int(vq.init_state) == 0
    vq(mixture(512, 4, 2))  # and a clean batch initializes it
    assert int(vq.init_state) == 2 and torch.isfinite(vq.codebook).all()


@pytest.mark.parametrize("bad", BAD)
def test_eval_forward_and_encode_refuse_bad_rows(bad: float) -> None:
    vq = trained().eval()
    x = mixture(40, 4, 1)
    x[31, 0] = bad
    with pytest.raises(ValueError, match="x row 31 holds"):
        vq(x)
    with pytest.raises(ValueError, match="x row 31 holds"):
        vq.encode(x)
    with pytest.raises(ValueError, match="x row 31 holds"):
        vq(x.bfloat16() if bad != 3e38 else x)


def test_check_finite_false_skips_the_check_in_eval() -> None:
    vq = ResidualVQ(4, 3, 8, seed=0, check_finite=False)
    vq.load_state_dict(trained().state_dict())
    vq.eval()
    x = mixture(10, 4, 1)
    x[3, 0] = float("nan")
    assert vq.encode(x).shape == (10, 3)  # no check, no host-device sync


@given(rows=st.integers(1, 40), bad_row=st.integers(0, 39), col=st.integers(0, 3))
def test_first_bad_row_is_named(rows: int, bad_row: int, col: int) -> None:
    vq = ResidualVQ(4, 2, 4, kmeans_init=False, seed=0).eval()
    x = torch.zeros(rows, 4)
    bad_row %= rows
    x[bad_row:, col] = float("inf")
    with pytest.raises(ValueError, match=rf"x row {bad_row} holds inf"):
        vq.encode(x)


def test_empty_training_batch() -> None:
    vq = ResidualVQ(4, 2, 8, seed=0)
    with pytest.raises(ValueError, match=r"no rows \(shape \(0, 4\)\)"):
        vq(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"no rows \(shape \(2, 0, 4\)\)"):
        vq.init_from_data(torch.zeros(2, 0, 4))
    vq = trained()
    before = snapshot(vq)
    with pytest.raises(ValueError, match="no rows"):
        vq(torch.zeros(0, 4))
    assert_unchanged(vq, before)
    vq.eval()  # eval of an empty batch is fine: no rows, no codes
    assert vq.encode(torch.zeros(0, 4)).shape == (0, 3)
    assert vq(torch.zeros(2, 0, 4)).codes.shape == (2, 0, 3)


# -- state -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "index", "value", "message"),
    [
        ("codebook", (1, 5, 2), float("nan"), r"\['codebook'\] holds nan at stage 1, code 5"),
        ("ema_sum", (0, 2, 0), float("inf"), r"\['ema_sum'\] holds inf at stage 0, code 2"),
        ("ema_count", (2, 7), float("nan"), r"\['ema_count'\] holds nan at stage 2, code 7"),
        ("ema_count", (2, 7), -1.0, r"\['ema_count'\] holds -1.0 at stage 2, code 7"),
        ("unused_steps", (0, 1), -3, r"\['unused_steps'\] holds -3 at stage 0, code 1"),
        ("init_state", (), 7, r"\['init_state'\] must be 0, 1 or 2, got 7"),
    ],
)
def test_state_dict_with_bad_values_is_refused(
    key: str, index: tuple[int, ...], value: float, message: str
) -> None:
    sd = trained().state_dict()
    sd[key] = sd[key].clone()
    sd[key][index] = value
    vq = trained()
    before = snapshot(vq)
    with pytest.raises(ValueError, match=message):
        vq.load_state_dict(sd)
    assert_unchanged(vq, before)
    # also as a submodule: the key carries the prefix
    outer = torch.nn.Sequential(trained())
    with pytest.raises(ValueError, match=message.replace("'" + key, "'0." + key)):
        outer.load_state_dict({f"0.{k}": v for k, v in sd.items()})


def test_learned_state_dict_with_nan_is_refused() -> None:
    sd = trained(ema=False).state_dict()
    sd["codebook"] = sd["codebook"].clone()
    sd["codebook"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\['codebook'\] holds nan at stage 0, code 0"):
        trained(ema=False).load_state_dict(sd)


# -- decode ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-5, -2, 8, 300])
def test_decode_refuses_out_of_range_tokens(bad: int) -> None:
    vq = trained().eval()
    codes = vq.encode(mixture(20, 4, 1))
    codes[13, 1] = bad
    with pytest.raises(
        ValueError,
        match=rf"token index out of range: expected \[0, 8\) or -1 \(a stage skipped by "
        rf"quantizer dropout\), got {bad} at row 13, stage 1",
    ):
        vq.decode(codes)
    grid = codes.view(4, 5, 3)
    with pytest.raises(ValueError, match=rf"got {bad} at codes\[2, 3\], stage 1"):
        vq.decode(grid)


def test_decode_skipped_stage_sentinel_matches_numpy() -> None:
    vq = trained().eval()
    x = mixture(50, 4, 3)
    codes = vq.encode(x)
    enc = vq.to_encoder()
    np.testing.assert_allclose(vq.decode(codes).numpy(), enc.decode(codes.numpy()), atol=1e-5)
    short = codes.clone()
    short[:, 2] = -1  # a stage skipped by dropout adds nothing: the 2-stage decode
    np.testing.assert_allclose(
        vq.decode(short).numpy(), enc.decode(codes[:, :2].numpy()), atol=1e-5
    )
    assert vq.decode(codes[:0]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"expected \[0, 8\)"):
        enc.decode(short.numpy())  # numpy has no sentinel; torch documents its -1
