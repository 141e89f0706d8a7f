"""viva_glyph.torch.ResidualVQ against vector-quantize-pytorch's ResidualVQ, side by side.

Same settings for both: dim 128, 8 stages, 256 codes, EMA codebooks (decay 0.99),
k-means init (10 iterations; ours gathers its default ``init_rows`` = 16 K rows
over the first batches, theirs uses the first batch), dead-code expiry on
(ours: ``dead_after`` steps unused; theirs: ``threshold_ema_dead_code``), the
straight-through estimator (their ``rotation_trick=False``; ``--rotation`` keeps
their default rotation trick instead). Both train on the same batches of
structured data (a Gaussian mixture with low-rank clusters), then:

- eval throughput: vectors/s of an eval-mode forward on held-out data;
- training step: seconds per step (forward in train mode, EMA update, backward of
  commitment + reconstruction loss to the input), steps after the k-means init;
- held-out MSE after the same steps, and the share of codes used per stage.

The two run interleaved, step by step, so both see the same machine load. Each
figure is a median within a run (steps, eval repeats), then the median over
``--runs`` runs (different init seeds); ratios are ours / theirs for throughput
and theirs / ours for time.

Run::

    python benchmarks/bench_torch.py                 # CPU, as on the docs' Benchmarks page
    python benchmarks/bench_torch.py --device cuda   # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def make_data(n: int, dim: int, seed: int) -> Tensor:
    """Gaussian mixture: 512 centers, each cluster a rank-16 Gaussian plus small noise."""
    g = torch.Generator().manual_seed(1234)  # the mixture is fixed; seed picks samples
    centers = torch.randn(512, dim, generator=g) * 2.0
    bases = torch.randn(512, 16, dim, generator=g) / 16**0.5
    s = torch.Generator().manual_seed(seed)
    which = torch.randint(512, (n,), generator=s)
    z = torch.randn(n, 16, generator=s)
    x = centers[which] + torch.einsum("nr,nrd->nd", z, bases[which])
    return x + 0.05 * torch.randn(n, dim, generator=s)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(args: argparse.Namespace, seed: int) -> tuple[torch.nn.Module, Callable[..., Any]]:
    from viva_glyph.torch import ResidualVQ

    m = ResidualVQ(
        args.dim,
        args.stages,
        args.codes,
        decay=args.decay,
        kmeans_iters=10,
        dead_after=args.dead_after,
        seed=seed,
    )

    def call(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = m(x)
        return out.quantized, out.codes, out.loss

    return m, call


def theirs(args: argparse.Namespace, seed: int) -> tuple[torch.nn.Module, Callable[..., Any]]:
    from vector_quantize_pytorch import ResidualVQ

    torch.manual_seed(seed)
    extra = {} if args.rotation else {"rotation_trick": False}
    m = ResidualVQ(
        dim=args.dim,
        num_quantizers=args.stages,
        codebook_size=args.codes,
        decay=args.decay,
        kmeans_init=True,
        kmeans_iters=10,
        threshold_ema_dead_code=args.threshold,
        **extra,
    )

    def call(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, codes, losses = m(x)
        return q, codes, losses.sum()

    return m, call


def one_run(
    args: argparse.Namespace, seed: int, batches: list[Tensor], held: Tensor
) -> dict[str, dict[str, Any]]:
    """Train and evaluate both quantizers, interleaved step by step.

    Interleaving makes both see the same machine load (shared CPUs vary a lot).
    """
    device = torch.device(args.device)
    models = {"viva_glyph": ours(args, seed), "vqp": theirs(args, seed)}
    steps: dict[str, list[float]] = {name: [] for name in models}
    for module, _ in models.values():
        module.to(device).train()
    for i, xb in enumerate(batches):
        for name, (module, call) in models.items():
            # time only steps after the k-means init (theirs: step 0; ours: once it has
            # gathered init_rows rows)
            ready = int(module.init_state) == 2 if name == "viva_glyph" else i > 0
            x = xb.to(device).view(-1, args.seq, args.dim).requires_grad_(True)
            sync(device)
            t0 = time.perf_counter()
            q, _, loss = call(x)
            (loss + (q - x.detach()).pow(2).mean()).backward()
            sync(device)
            if ready:
                steps[name].append(time.perf_counter() - t0)
    h = held.to(device).view(-1, args.seq, args.dim)
    evals: dict[str, list[float]] = {name: [] for name in models}
    outs = {}
    with torch.inference_mode():
        for module, call in models.values():
            module.eval()
            call(h[:64])  # warm-up
        for _ in range(args.eval_repeats):
            for name, (_, call) in models.items():
                sync(device)
                t0 = time.perf_counter()
                outs[name] = call(h)
                sync(device)
                evals[name].append(time.perf_counter() - t0)
    result = {}
    for name, (q, codes, _) in outs.items():
        flat = codes.reshape(-1, args.stages)
        result[name] = {
            "eval_vps": held.shape[0] / statistics.median(evals[name]),
            "step_s": statistics.median(steps[name]),
            "mse": float((q.float() - h).pow(2).mean()),
            "usage": [float(flat[:, s].unique().numel()) / args.codes for s in range(args.stages)],
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--stages", type=int, default=8)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--decay", type=float, default=0.99)
    p.add_argument("--dead-after", type=int, default=10, help="ours: steps unused")
    p.add_argument("--threshold", type=float, default=2.0, help="theirs: threshold_ema_dead_code")
    p.add_argument("--rotation", action="store_true", help="keep their default rotation trick")
    p.add_argument("--steps", type=int, default=150, help="training steps")
    p.add_argument("--batch", type=int, default=2048, help="vectors per training batch")
    p.add_argument("--seq", type=int, default=128, help="batch is shaped (batch/seq, seq, dim)")
    p.add_argument("--eval-rows", type=int, default=16384)
    p.add_argument("--eval-repeats", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--markdown", action="store_true", help="also print the medians as the docs' markdown table"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from importlib.metadata import version

    data = make_data(args.steps * args.batch, args.dim, seed=1)
    batches = list(data.split(args.batch))
    held = make_data(args.eval_rows, args.dim, seed=2)
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"vector-quantize-pytorch={version('vector-quantize-pytorch')}"
    )
    print(
        f"dim={args.dim} stages={args.stages} codes={args.codes} decay={args.decay} "
        f"steps={args.steps} batch={args.batch} eval_rows={args.eval_rows} runs={args.runs} "
        f"ours dead_after={args.dead_after} theirs threshold_ema_dead_code={args.threshold} "
        f"rotation_trick={'default(on)' if args.rotation else 'off'}"
    )
    results: dict[str, list[dict[str, Any]]] = {"viva_glyph": [], "vqp": []}
    for run in range(args.runs):
        for name, r in one_run(args, seed=run, batches=batches, held=held).items():
            results[name].append(r)
            print(
                f"  run {run} {name:10s} eval {r['eval_vps']:12.0f} vec/s  "
                f"step {r['step_s'] * 1e3:8.2f} ms  mse {r['mse']:.5f}  "
                f"min usage {min(r['usage']):.3f}"
            )
    med: dict[str, dict[str, Any]] = {}
    for name, rs in results.items():
        med[name] = {
            key: statistics.median(float(r[key]) for r in rs)
            for key in ("eval_vps", "step_s", "mse")
        }
        med[name]["usage"] = [
            statistics.median(r["usage"][s] for r in rs) for s in range(args.stages)
        ]
    print(f"\nmedians of {args.runs} runs")
    head = f"{'':12s}{'eval vec/s':>14s}{'train step ms':>15s}{'held-out MSE':>14s}"
    print(head + "  usage per stage")
    for name, r in med.items():
        usage = " ".join(f"{u:.2f}" for u in r["usage"])
        print(f"{name:12s}{r['eval_vps']:14.0f}{r['step_s'] * 1e3:15.2f}{r['mse']:14.5f}  {usage}")
    a, b = med["viva_glyph"], med["vqp"]
    print("\nratios (viva_glyph vs vector-quantize-pytorch)")
    print(f"  eval throughput   {a['eval_vps'] / b['eval_vps']:.2f}x   (target >= 2x)")
    print(f"  train step speed  {b['step_s'] / a['step_s']:.2f}x   (target >= 1.5x)")
    print(f"  held-out MSE      {a['mse'] / b['mse']:.3f} of theirs (target <= 1)")
    lo_a, lo_b = min(a["usage"]), min(b["usage"])
    print(f"  min stage usage   ours {lo_a:.2f}, theirs {lo_b:.2f} (target >= 0.90)")
    if args.markdown:
        print("\n" + markdown(a, b))


def markdown(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The medians as the docs' table: viva_glyph, vector-quantize-pytorch and their ratios."""

    def rate(v: float) -> str:
        return f"{v / 1e6:.1f} M" if v >= 1e6 else f"{v:,.0f}"

    def ms(s: float) -> str:
        return f"{s * 1e3:.1f} ms" if s >= 0.1 else f"{s * 1e3:.2f} ms"

    head = "eval vectors/s | train step | held-out MSE | codes used per stage (min)"
    rows = [f"| | {head} |", "|---|---:|---:|---:|---:|"]
    for name, r in (("viva_glyph", a), ("vector-quantize-pytorch", b)):
        cells = [rate(r["eval_vps"]), ms(r["step_s"]), f"{r['mse']:.4f}", f"{min(r['usage']):.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = [
        f"{a['eval_vps'] / b['eval_vps']:.2f}x",
        f"{b['step_s'] / a['step_s']:.2f}x",
        f"{a['mse'] / b['mse']:.3f}",
    ]
    rows.append("| ratio | " + " | ".join(f"**{c}**" for c in ratios) + " | |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
