"""Training time and held-out MSE: viva_glyph.fit against faiss.ResidualQuantizer, one process.

Both libraries at their DEFAULTS (anything else is an extra, labelled row):

- ``viva fit B=1``: ``viva_glyph.fit(X, num_stages=M, codebook_size=K)``, codes by
  ``encode(X)``;
- ``viva fit B=5``: the same with ``beam_size=5``, codes by ``encode(X, beam_size=5)``;
- ``faiss B=1``: ``faiss.ResidualQuantizer(D, M, 8)`` with ``max_beam_size = 1``
  (its other settings at their defaults: progressive-dimension k-means, 10 steps of
  ``niter = 10``, 256 points per centroid), codes by ``compute_codes``;
- ``faiss B=5``: ``faiss.ResidualQuantizer(D, M, 8)`` as constructed (its default
  ``max_beam_size`` is 5).

Data (``--widths``): synthetic ``sD`` of width D: 64 clusters whose centres and
within-cluster noise both follow a power-law spectrum (eigenvalue i ~ i**-1.2 in
a random basis), plus a nonzero mean of norm 3 x the data's RMS spread;
``digits``: scikit-learn's ``load_digits`` (1,797 x 64, 1,437 to train, the rest
held out). M = 8 (M = 4 for D = 6), K = 256.

MSE is the mean squared error PER COMPONENT on the held-out rows
(``mean((x - x')**2)``, as scikit-learn's ``mean_squared_error``). Times are
training only; times and MSEs are medians of ``--repeats`` interleaved rounds
(every setting once per round; round r seeds both libraries with r, FAISS as
its default seed 1234 + r, so the MSE median covers k-means' seed variance).
FAISS and viva-glyph use the same threads (``--threads``, default 2:
``faiss.omp_set_num_threads`` and ``VIVA_GLYPH_NUM_THREADS``).

``--sweep`` instead fits viva-glyph over settings of iterations, tolerance and
progressive-dimension steps (the table that chose the defaults); with
``--markdown`` it ends with that table in markdown, the default row in bold.
The comparison always ends with its markdown table.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fit.py \\
        --widths s6,s64,s128,s384,s768,digits --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

N_CLUSTERS = 64
POWER = 1.2


def power_law_data(d: int, n: int, seed: int = 0) -> np.ndarray:
    """Clustered rows with a power-law spectrum and a nonzero mean, float32 (n, d)."""
    rng = np.random.default_rng(1000 + d)  # the distribution depends on d only
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = np.arange(1, d + 1) ** (-POWER / 2)
    centres = (rng.standard_normal((N_CLUSTERS, d)) * scale) @ basis.T
    spread = math.sqrt(float(np.sum(scale**2)) * 2)
    mean = rng.standard_normal(d)
    mean *= 3 * spread / np.linalg.norm(mean)
    draw = np.random.default_rng(seed)
    noise = (draw.standard_normal((n, d)) * (0.7 * scale)) @ basis.T
    return (mean + centres[draw.integers(0, N_CLUSTERS, n)] + noise).astype(np.float32)


def dataset(name: str, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train, held-out, M) for a width name."""
    if name == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().data.astype(np.float32)
        x = x[np.random.default_rng(0).permutation(len(x))]
        cut = int(0.8 * len(x))
        return x[:cut], x[cut:], 8
    d = int(name.lstrip("s"))
    return power_law_data(d, n_train, 1), power_law_data(d, n_test, 2), 4 if d == 6 else 8


def mse(x: np.ndarray, recon: np.ndarray) -> float:
    diff = x.astype(np.float64) - recon
    return float(np.mean(diff * diff))


def faiss_run(
    xt: np.ndarray, xh: np.ndarray, m: int, beam: int | None, seed: int = 0
) -> dict[str, float]:
    import faiss

    rq = faiss.ResidualQuantizer(xt.shape[1], m, 8)
    rq.cp.seed += seed  # round r: FAISS's default seed (1234) + r
    if beam is not None:
        rq.max_beam_size = beam
    t = time.perf_counter()
    rq.train(xt)
    train_s = time.perf_counter() - t
    return {"train_s": train_s, "mse": mse(xh, rq.decode(rq.compute_codes(xh)))}


def viva_run(
    xt: np.ndarray, xh: np.ndarray, m: int, beam: int, seed: int = 0, **kw: Any
) -> dict[str, float]:
    import viva_glyph as vg

    t = time.perf_counter()
    enc = vg.fit(xt, num_stages=m, codebook_size=256, beam_size=beam, seed=seed, **kw)
    train_s = time.perf_counter() - t
    recon = enc.decode(enc.encode(xh, beam_size=beam)).astype(np.float64)
    its = enc.training.iterations if enc.training is not None else ()
    return {"train_s": train_s, "mse": mse(xh, recon), "iters": float(sum(its))}


def interleaved(jobs: dict[str, Callable[..., dict[str, float]]], repeats: int) -> dict[str, Any]:
    """Medians over rounds; round r runs every job once, with seed r (both libraries)."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in jobs}
    for rep in range(repeats):
        for label, job in jobs.items():
            runs[label].append(job(seed=rep))
            r = runs[label][-1]
            print(f"    round {rep + 1}: {label:<34} train {r['train_s']:7.2f} s  "
                  f"mse {r['mse']:.8g}", flush=True)  # fmt: skip
    return {k: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for k, rs in runs.items()}


def compare(name: str, args: argparse.Namespace) -> dict[str, Any]:
    xt, xh, m = dataset(name, args.train, args.test)
    print(f"\n== {name}: D={xt.shape[1]} M={m} K=256, train {len(xt)}, held-out {len(xh)}")
    jobs = {
        "faiss B=1": functools.partial(faiss_run, xt, xh, m, 1),
        "viva fit B=1": functools.partial(viva_run, xt, xh, m, 1),
        "faiss B=5 (default)": functools.partial(faiss_run, xt, xh, m, None),
        "viva fit B=5": functools.partial(viva_run, xt, xh, m, 5),
    }
    res = interleaved(jobs, args.repeats)
    row = {"name": name, "D": xt.shape[1], **{k: v for k, v in res.items()}}
    for ours, theirs, target in (("viva fit B=1", "faiss B=1", 0.7), ("viva fit B=5",
                                 "faiss B=5 (default)", 1.0)):  # fmt: skip
        t = res[ours]["train_s"] / res[theirs]["train_s"]
        q = res[ours]["mse"] / res[theirs]["mse"]
        ok = "ok" if t <= target and q <= 1.0 else "MISSED"
        print(f"  {ours} vs {theirs}: time {t:.3f}x (target <= {target}), MSE {q:.4f}x "
              f"(target <= 1.00)  {ok}")  # fmt: skip
        row[f"{ours} time"], row[f"{ours} mse"] = t, q
    return row


def sweep(name: str, args: argparse.Namespace) -> list[str]:
    """viva fit over (iterations, tolerance, dimension steps) settings, for the defaults.

    Returns the rows of the docs' markdown table (``--markdown``).
    """
    import viva_glyph as vg
    from viva_glyph.train import kmeans

    xt, xh, m = dataset(name, args.train, args.test)
    print(f"\n== sweep {name}: D={xt.shape[1]} M={m}, train {len(xt)}")
    base = kmeans.TOL, kmeans.PROGRESSIVE_STEPS

    def run(beam: int, it: int, tol: float, steps: int, seed: int) -> dict[str, float]:
        kmeans.TOL, kmeans.PROGRESSIVE_STEPS = tol, steps
        try:
            return viva_run(xt, xh, m, beam, seed, iterations=it)
        finally:
            kmeans.TOL, kmeans.PROGRESSIVE_STEPS = base

    default = (inspect.signature(vg.fit).parameters["iterations"].default, *base)
    jobs: dict[str, Callable[[], dict[str, float]]] = {}
    cells: dict[str, str] = {}
    for beam in (int(b) for b in args.sweep_beams.split(",")):
        for spec in args.sweep_specs.split(","):
            it, tol, steps = spec.split(":")
            label = f"B={beam} iterations={it} tol={tol} steps={steps}"
            jobs[label] = functools.partial(run, beam, int(it), float(tol), int(steps))
            cell = f"{it} : {tol} : {steps}" + (f" (B={beam})" if beam != 1 else "")
            is_default = (int(it), float(tol), int(steps)) == default and beam == 1
            cells[label] = f"**{cell} (default)**" if is_default else cell
    res = interleaved(jobs, args.repeats)
    print(f"\n  {'setting':<40}{'train s':>9}{'MSE':>14}{'Lloyd its':>10}")
    for label, r in res.items():
        print(f"  {label:<40}{r['train_s']:9.2f}{r['mse']:14.8g}{r['iters']:10.0f}")
    return [
        f"| {name} | {cells[label]} | {r['train_s']:.2f} | {r['mse']:.6g} | {r['iters']:.0f} |"
        for label, r in res.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--widths", default="s6,s64,s128,s384,s768,digits")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--omp-wait",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for FAISS's OpenMP threads ('' = libgomp's default, spinning); "
        "PASSIVE spares FAISS the spin waits that cost it 3-4x on a loaded machine",
    )
    ap.add_argument("--sweep", action="store_true", help="grid of viva-glyph settings")
    ap.add_argument(
        "--sweep-specs",
        default="10:1e-3:10,10:1e-4:10,10:3e-3:10,5:1e-3:10,15:1e-3:10,10:1e-3:6",
        help="comma list of iterations:tolerance:dimension-steps",
    )
    ap.add_argument("--sweep-beams", default="1")
    ap.add_argument(
        "--markdown", action="store_true", help="print the sweep as the docs' markdown table"
    )
    args = ap.parse_args()
    os.environ["VIVA_GLYPH_NUM_THREADS"] = str(args.threads)
    if args.omp_wait:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait  # read when faiss loads libgomp
    import faiss

    print(
        f"faiss {faiss.__version__}, {args.threads} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load {os.getloadavg()[0]:.1f}"
    )
    faiss.omp_set_num_threads(args.threads)
    names = [w for w in args.widths.split(",") if w]
    if args.sweep:
        swept = [row for name in names for row in sweep(name, args)]
        if args.markdown:
            print("\n| data | iterations : tol : steps | train s | held-out MSE "
                  "| Lloyd iterations (all stages) |")  # fmt: skip
            print("|---|---|---:|---:|---:|")
            print("\n".join(swept))
        return
    rows = [compare(name, args) for name in names]
    print("\n| data | D | fit B=1 / FAISS B=1 time | MSE ratio | fit B=5 / FAISS B=5 time "
          "| MSE ratio | FAISS B=1 s | FAISS B=5 s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['D']} | {r['viva fit B=1 time']:.3f} "
            f"| {r['viva fit B=1 mse']:.4f} "
            f"| {r['viva fit B=5 time']:.3f} | {r['viva fit B=5 mse']:.4f} "
            f"| {r['faiss B=1']['train_s']:.2f} | {r['faiss B=5 (default)']['train_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
