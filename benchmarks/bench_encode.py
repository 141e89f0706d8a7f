"""Greedy RVQ encoding: viva-glyph against faiss ResidualQuantizer, side by side.

Both encoders get the same codebooks and the same data in one process. FAISS
runs with max_beam_size = 1 at both settings of use_beam_LUT and the faster
one is the reference. Codes must agree except on float ties: wherever they
differ, the first differing stage's two choices must be equally near in
float64 (relative 1e-5).

Usage::

    python benchmarks/bench_encode.py [--repeats 5] [--case 6 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import faiss
import numpy as np

import viva_glyph as vg

CASES = {6: (6, 4, 256, 200_000), 128: (128, 8, 256, 100_000)}


def data_like_codebooks(x: np.ndarray, stages: int, size: int, seed: int) -> np.ndarray:
    """Codebooks drawn from the residuals of a sample: realistic scales per stage."""
    rng = np.random.default_rng(seed)
    residual = x[rng.choice(len(x), 20_000, replace=False)].astype(np.float64)
    books = []
    for _ in range(stages):
        book = residual[rng.choice(len(residual), size, replace=False)]
        books.append(book.astype(np.float32))
        idx, _ = vg.Codebook(book).nearest_batch(residual)
        residual = residual - book[idx]
    return np.stack(books)


def faiss_quantizer(books: np.ndarray, lut: int) -> faiss.ResidualQuantizer:
    stages, size, dim = books.shape
    rq = faiss.ResidualQuantizer(dim, stages, int(np.log2(size)))
    rq.max_beam_size = 1
    rq.use_beam_LUT = lut
    faiss.copy_array_to_vector(books.ravel(), rq.codebooks)
    rq.is_trained = True
    rq.compute_codebook_tables()
    return rq


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return statistics.median(times), out


def check_agreement(books: np.ndarray, x: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> str:
    differ = np.flatnonzero((ours != theirs).any(axis=1))
    books64 = books.astype(np.float64)
    not_ties = 0
    for row in differ:
        stage = int(np.flatnonzero(ours[row] != theirs[row])[0])
        residual = x[row].astype(np.float64) - books64[np.arange(stage), ours[row, :stage]].sum(0)
        d = ((residual - books64[stage]) ** 2).sum(axis=1)
        a, b = d[ours[row, stage]], d[theirs[row, stage]]
        if abs(a - b) > 1e-5 * min(a, b):
            not_ties += 1
    share = 1 - len(differ) / len(x)
    return f"identical rows {share:.4%}; differing rows that are not float ties: {not_ties}"


def run_case(dim: int, stages: int, size: int, n: int, repeats: int) -> float:
    rng = np.random.default_rng(dim)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    x = (rng.standard_normal((n, dim)) @ mix).astype(np.float32)
    books = data_like_codebooks(x, stages, size, seed=dim)
    enc = vg.from_codebooks(books)
    results = {}
    for lut in (0, 1):
        rq = faiss_quantizer(books, lut)
        results[f"faiss use_beam_LUT={lut}"] = timed(lambda rq=rq: rq.compute_codes(x), repeats)
    results["viva-glyph"] = timed(lambda: enc.encode(x), repeats)
    best_faiss = min((k for k in results if k.startswith("faiss")), key=lambda k: results[k][0])
    print(f"\nD={dim} M={stages} K={size} N={n:,} (medians of {repeats})")
    for name, (secs, _) in results.items():
        print(f"  {name:24s} {secs * 1e3:9.1f} ms  {n / secs / 1e6:7.2f} M vectors/s")
    ratio = results[best_faiss][0] / results["viva-glyph"][0]
    print(f"  speed-up vs {best_faiss}: {ratio:.2f}x")
    ours, theirs = results["viva-glyph"][1], results[best_faiss][1].reshape(n, stages)
    print("  " + check_agreement(books, x, ours, theirs))
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", type=int, nargs="+", choices=sorted(CASES), default=[6, 128])
    args = parser.parse_args()
    threads = faiss.omp_get_max_threads()
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, faiss threads {threads}")
    ratios = [run_case(*CASES[c], repeats=args.repeats) for c in args.case]
    print("\nratios (faiss best / viva-glyph): " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
