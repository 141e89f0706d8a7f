"""Distributed data parallel: 2 CPU processes (gloo) keep identical codebooks."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

pytestmark = pytest.mark.slow  # two spawned processes per test

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, folder: str, mode: str) -> None:
    import torch.distributed as dist

    from viva_glyph.torch import ResidualVQ

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    calls = {"all_reduce": 0, "broadcast": 0}
    for name in calls:
        original = getattr(dist, name)

        def counted(
            *args: object, _name: str = name, _f: object = original, **kw: object
        ) -> object:
            calls[_name] += 1
            return _f(*args, **kw)  # type: ignore[operator]

        setattr(dist, name, counted)
    # different data on each rank, different batch sizes too
    g = torch.Generator().manual_seed(100 + rank)
    # "gather": k-means waits for 500 rows of rank 0 (200 a step): steps 1-2 only gather
    vq = ResidualVQ(
        4, 3, 8, dead_after=2, seed=rank, ema=mode != "learned", dropout=0.5,
        dropout_mode="batch", init_rows=500 if mode == "gather" else None,
    )  # fmt: skip
    opt = torch.optim.SGD(vq.parameters(), lr=0.1) if mode == "learned" else None
    reduces = []
    for step in range(STEPS):
        before = calls["all_reduce"]
        x = torch.randn(200 + 50 * rank, 4, generator=g) + 2.0 * step  # drifting data
        out = vq(x)
        if opt is not None:  # DDP would average these gradients; do it by hand
            opt.zero_grad()
            out.loss.backward()
            grad = vq.codebook.grad
            assert grad is not None
            dist.all_reduce(grad)
            grad /= world
            opt.step()
            calls["all_reduce"] -= 1
        reduces.append(calls["all_reduce"] - before)
    vq.eval()
    before = dict(calls)
    vq(torch.randn(10, 4, generator=g))
    vq.encode(torch.randn(10, 4, generator=g))
    eval_calls = sum(calls.values()) - sum(before.values())
    # a bad batch on one rank: every rank raises (no hang), nothing changes anywhere
    vq.train()
    kept = [t.clone() for t in vq.state_dict().values()]
    messages = []
    for bad in ("nan", "empty"):
        x = torch.randn(100, 4, generator=g)
        if bad == "nan" and rank == 1:
            x[7, 2] = float("nan")
        if bad == "empty" and rank == 0:
            x = x[:0]
        try:
            vq(x)
            messages.append("no error")
        except ValueError as exc:
            messages.append(str(exc))
    unchanged = all(torch.equal(a, b) for a, b in zip(kept, vq.state_dict().values(), strict=True))
    (Path(folder) / f"errors{rank}.txt").write_text("\n".join([*messages, str(unchanged)]))
    vq(torch.randn(100, 4, generator=g))  # and training goes on
    vq.eval()
    state = [vq.codebook.detach(), vq.unused_steps.float()]
    if mode != "learned":
        state += [vq.ema_sum, vq.ema_count]
    flat = torch.cat([t.reshape(-1) for t in state]).numpy()
    np.save(Path(folder) / f"rank{rank}.npy", flat, allow_pickle=False)
    np.save(
        Path(folder) / f"calls{rank}.npy",
        np.array([*reduces, eval_calls, calls["broadcast"]]),
        allow_pickle=False,
    )
    # Both ranks reach teardown before either closes its gloo pairs: a rank that closed
    # first could abort the other's gloo threads ("terminate called without an active
    # exception", SIGABRT), seen once in CI.
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ema", "learned", "gather"])
def test_ranks_hold_identical_codebooks(tmp_path: Path, mode: str) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), mode), nprocs=2, join=True)
    a, b = (np.load(tmp_path / f"rank{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(a, b)
    nan0, empty0, same0 = (tmp_path / "errors0.txt").read_text().splitlines()
    nan1, empty1, same1 = (tmp_path / "errors1.txt").read_text().splitlines()
    assert nan1.startswith("x row 7 holds nan") and "another rank" in nan0
    assert empty0.startswith("x holds no rows") and "another rank" in empty1
    assert same0 == same1 == "True"
    for r in (0, 1):
        calls = np.load(tmp_path / f"calls{r}.npy")
        # one fused all-reduce per step, plus one (two flags) per step until k-means ran
        warm = 2 if mode == "gather" else 0
        assert list(calls[:STEPS]) == [1] * warm + [2] + [1] * (STEPS - warm - 1)
        assert calls[STEPS] == 0  # no collective in eval mode
        assert calls[STEPS + 1] >= 2  # k-means init and at least one replacement
    # the ranks did train: codebooks are not the seed-0 random ones of rank 0
    from viva_glyph.torch import ResidualVQ

    fresh = ResidualVQ(4, 3, 8, seed=0).codebook.reshape(-1).numpy()
    assert not np.allclose(a[: fresh.size], fresh)
