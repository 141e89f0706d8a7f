"""Encoding engine: viva-glyph against faiss.ResidualQuantizer at the library's defaults.

Per case one model is trained once, with ``viva_glyph.fit`` at its defaults (or,
with ``--train faiss``, by FAISS), and its codebooks are loaded into both
encoders, so both encode with the same codebooks. Timed in one process, the
same threads for everyone (``--threads``, default 2: BLAS, FAISS's OpenMP and
viva-glyph's pool), medians of ``--repeats`` interleaved rounds (every setting
once per round):

- ``gemm``: numpy ``X @ C`` for (N x D)(D x M K) float32, the machine's GEMM
  limit for the shape (an encoder must at least compute these products), in
  blocks of ``--gemm-rows`` rows (default 256) into one reused output, so the
  (rows x M K) result stays in cache (a single (N x M K) product is bound by
  writing its N M K output to memory, not by the arithmetic);
- FAISS greedy (max_beam_size 1) and beam 5, each at use_beam_LUT 0 and 1, the
  faster kept;
- viva-glyph ``encode(X)`` (greedy) and ``encode(X, beam_size=5)``.

Data: synthetic rows with a power-law spectrum (variance of component i ~ i^-1.2
after a random rotation), a nonzero mean and 64 clusters, at D = 6 (M = 4) and
64, 128, 384, 768 (M = 8), K = 256; and scikit-learn's ``load_digits`` (64-D,
1,797 rows: trained on all, encoded tiled to ``--n`` rows).

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_engine.py \
        [--cases 6,64,128,384,768,digits] [--repeats 3] [--threads 2] [--markdown]

``--markdown`` prints the rows as the markdown table of the docs' Benchmarks page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def synthetic(d: int, n: int, seed: int) -> np.ndarray:
    """Power-law spectrum, nonzero mean, clusters (float32, (n, d))."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, d + 1) ** -0.6
    centers = rng.standard_normal((64, d)) * 2.0
    z = (centers[rng.integers(0, 64, n)] + rng.standard_normal((n, d))) * scale
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (z @ rot + rng.uniform(0.5, 2.0, d)).astype(np.float32)


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    return x, np.resize(x, (n, x.shape[1]))


def faiss_rq(books: np.ndarray, beam: int, lut: int) -> Any:
    import faiss

    m, k, d = books.shape
    rq = faiss.ResidualQuantizer(d, m, int(np.log2(k)))
    rq.max_beam_size = beam
    rq.use_beam_LUT = lut
    faiss.copy_array_to_vector(books.ravel(), rq.codebooks)
    rq.is_trained = True
    rq.compute_codebook_tables()
    return rq


def train(x: np.ndarray, m: int, k: int, how: str) -> np.ndarray:
    import viva_glyph as vg

    if how == "faiss":
        import faiss

        rq = faiss.ResidualQuantizer(x.shape[1], m, int(np.log2(k)))
        rq.max_beam_size = 1
        rq.train(x)
        return faiss.vector_to_array(rq.codebooks).reshape(m, k, x.shape[1])
    return np.asarray(vg.fit(x, num_stages=m, codebook_size=k).codebook_array)


def run_case(name: str, args: argparse.Namespace) -> dict[str, float]:
    import viva_glyph as vg

    k = 256
    if name == "digits":
        xt, x = digits(args.n)
    else:
        d = int(name)
        xt = synthetic(d, args.train, seed=d)
        x = synthetic(d, args.n, seed=d)[::-1].copy()  # same distribution, rows reordered
    d = x.shape[1]
    m = 4 if d <= 6 else 8
    t0 = time.perf_counter()
    books = train(xt, m, k, args.train_with)
    fit_s = time.perf_counter() - t0
    enc = vg.from_codebooks(books.astype(np.float32))
    gemm_c = np.ascontiguousarray(books.transpose(2, 0, 1).reshape(d, m * k), dtype=np.float32)
    step = args.gemm_rows
    out_buf = np.empty((step, m * k), dtype=np.float32)

    def gemm() -> None:
        for lo in range(0, len(x), step):
            block = x[lo : lo + step]
            np.matmul(block, gemm_c, out=out_buf[: len(block)])

    jobs: dict[str, Callable[[], Any]] = {"gemm": gemm}
    for beam in (1, 5):
        for lut in (0, 1):
            rq = faiss_rq(books, beam, lut)
            jobs[f"faiss B{beam} LUT{lut}"] = lambda rq=rq: rq.compute_codes(x)
    jobs["viva greedy"] = lambda: enc.encode(x)
    jobs["viva beam 5"] = lambda: enc.encode(x, beam_size=5)
    times: dict[str, list[float]] = {j: [] for j in jobs}
    out: dict[str, Any] = {}
    for fn in jobs.values():
        fn()  # warm-up (numba compile, tables)
    for _ in range(args.repeats):
        for label, fn in jobs.items():
            t = time.perf_counter()
            out[label] = fn()
            times[label].append(time.perf_counter() - t)
    rate = {j: len(x) / statistics.median(ts) for j, ts in times.items()}
    f1 = max(rate["faiss B1 LUT0"], rate["faiss B1 LUT1"])
    f5 = max(rate["faiss B5 LUT0"], rate["faiss B5 LUT1"])
    faiss_codes = out["faiss B1 LUT1"].reshape(len(x), m)
    same = float((out["viva greedy"] == faiss_codes).all(axis=1).mean())
    row = {
        "D": d, "M": m, "N": len(x), "fit_s": fit_s, "gemm": rate["gemm"],
        "greedy": rate["viva greedy"], "faiss1": f1, "beam5": rate["viva beam 5"], "faiss5": f5,
        "same": same,
    }  # fmt: skip
    if args.markdown:
        return row
    print(
        f"{name:>7} {d:4d} {m:2d} {len(x):8,d} {rate['gemm']:10,.0f} {rate['viva greedy']:10,.0f}"
        f" {rate['viva greedy'] / rate['gemm']:6.0%} {f1:10,.0f} {rate['viva greedy'] / f1:6.2f}x"
        f" {rate['viva beam 5']:10,.0f} {f5:10,.0f} {rate['viva beam 5'] / f5:6.2f}x"
        f" {same:7.2%}",
        flush=True,
    )
    return row


def markdown(name: str, row: dict[str, float]) -> str:
    """One row of the docs' encoding table (``--markdown``)."""
    data = "load_digits" if name == "digits" else "synthetic"
    g, f1, b5, f5 = row["greedy"], row["faiss1"], row["beam5"], row["faiss5"]
    cells = [
        data, f"{row['D']}", f"{row['M']}", f"{row['gemm']:,.0f}", f"{g:,.0f}",
        f"{g / row['gemm']:.0%}", f"{f1:,.0f}", f"{g / f1:.2f}x", f"{b5:,.0f}", f"{f5:,.0f}",
        f"{b5 / f5:.2f}x",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def calibrate(n: int = 4000, d: int = 128, m: int = 8, k: int = 256, beam: int = 5) -> None:
    """Measure the constants of :func:`viva_glyph.core.beam.path_costs` on this machine."""
    import viva_glyph as vg
    from viva_glyph.core.beam import EncoderTables
    from viva_glyph.core.search import encode

    rng = np.random.default_rng(0)
    books = rng.standard_normal((m, k, d)) * 0.7 ** np.arange(m)[:, None, None]
    enc = vg.from_codebooks(books.astype(np.float32))
    x = rng.standard_normal((n, d)).astype(np.float32)
    rows = np.ones((n, d + 1), dtype=np.float32)
    rows[:, :d] = x
    table = np.concatenate([b.table for b in enc.codebooks], axis=1)

    def best(fn: Callable[[], Any]) -> float:
        fn()
        return min(timeit(fn) for _ in range(5))

    tables = EncoderTables(enc.codebooks)
    gemm = best(lambda: rows @ table)
    tab = best(lambda: encode(enc.codebooks, x, beam, lut=True, tables=tables))
    res = best(lambda: encode(enc.codebooks, x, beam, lut=False))
    mac = gemm / (n * (d + 1) * m * k) * 1e9
    add = (tab - gemm) / (n * beam * k * (m + m * (m - 1) / 2)) * 1e9
    cand = (res - beam * gemm) / (n * m * beam * k) * 1e9
    print(f"GEMM_NS_PER_MAC = {mac:.4g}\nTABLE_NS_PER_ADD = {add:.3g}")
    print(f"RESIDUAL_NS_PER_CANDIDATE = {cand:.3g}")


def timeit(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default="6,64,128,384,768,digits")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=50_000, help="rows encoded per case")
    ap.add_argument("--train", type=int, default=20_000, help="training rows (synthetic)")
    ap.add_argument("--train-with", choices=("viva", "faiss"), default="viva")
    ap.add_argument("--gemm-rows", type=int, default=256, help="rows per block of the GEMM limit")
    ap.add_argument("--calibrate", action="store_true", help="measure the cost model's constants")
    ap.add_argument(
        "--markdown", action="store_true", help="print the results as the docs' markdown table"
    )
    args = ap.parse_args()
    os.environ["VIVA_GLYPH_NUM_THREADS"] = str(args.threads)
    if args.calibrate:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.threads, user_api="blas"):
            calibrate()
        return
    import faiss
    from threadpoolctl import threadpool_limits

    import viva_glyph as vg

    faiss.omp_set_num_threads(args.threads)
    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, viva-glyph {vg.__version__}, "
        f"{args.threads} threads, codebooks trained by {args.train_with}, medians of "
        f"{args.repeats} interleaved rounds; rates in vectors/s"
    )
    if args.markdown:
        print(
            "\n| data | D | M | GEMM limit | greedy | % of GEMM | FAISS greedy | ratio | beam 5 "
            "| FAISS beam 5 | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|",
            flush=True,
        )
    else:
        print(
            f"{'case':>7} {'D':>4} {'M':>2} {'N':>8} {'GEMM lim':>10} {'greedy':>10} {'%GEMM':>6}"
            f" {'FAISS B1':>10} {'ratio':>7} {'beam 5':>10} {'FAISS B5':>10} {'ratio':>7}"
            f" {'=FAISS':>7}"
        )
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for case in args.cases.split(","):
            row = run_case(case, args)
            if args.markdown:
                print(markdown(case, row), flush=True)


if __name__ == "__main__":
    main()
