"""Is the cqint8 recall gap to FAISS a property of the norm quantizer, or chance?

On one data set of ``bench_search.py`` (same data, fit and greedy codes), score the flat
index with several 8-bit norm quantizers, all decoded to float and searched by the same
``RvqIndex(norm="float")``: FAISS's ``ST_norm_cqint8`` levels (read from its index),
ours (:func:`viva_glyph.index._kmeans1d.kmeans_1d` on all norms), ours on a random
65,536-norm sample (as FAISS trains), and 1-D k-means of sqrt(norm) and of log(norm).
For each: RMS norm error over all vectors and over the true 100 / 10 nearest
neighbours of the queries, and recall@1/10/100 against FAISS's cqint8 index, paired
over the queries with a 95% bootstrap interval of the mean difference.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/search_norm_noise.py
--n 1000000 --dim 128``
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_search import faiss_rq, ground_truth, power_law

import viva_glyph as vg
from viva_glyph.index import RvqIndex
from viva_glyph.index._kmeans1d import kmeans_1d

LEVELS = 256


def nearest_level(levels: np.ndarray, values: np.ndarray) -> np.ndarray:
    lv = np.sort(levels)
    return lv[np.searchsorted((lv[1:] + lv[:-1]) / 2, values)]


def hits(found: np.ndarray, truth: np.ndarray, r: int) -> np.ndarray:
    return np.array([len(set(f[:r]) & set(t[:r])) for f, t in zip(found, truth, strict=True)]) / r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--train", type=int, default=20_000)
    args = ap.parse_args()
    n, nq = args.n, args.nq
    x = power_law(n + nq + args.train, args.dim, np.random.default_rng(args.dim))
    db, q, train = x[:n], x[n : n + nq], x[n + nq :]
    enc = vg.fit(train, num_stages=8, codebook_size=256, iterations=10, max_samples=args.train)
    codes = enc.encode(db, beam_size=1)
    dec = enc.decode(codes).astype(np.float64)
    norms = np.einsum("nd,nd->n", dec, dec)
    truth = ground_truth(db, q, 100)
    theirs = faiss_rq(enc, codes, norms.astype(np.float32), "cqint8")
    _, found = theirs.search(q, 100)
    ref = {r: hits(found, truth, r) for r in (1, 10, 100)}
    sample = norms[np.random.default_rng(0).choice(n, min(n, 65536), replace=False)]
    variants = {
        "FAISS ST_norm_cqint8": theirs.rq.qnorm.reconstruct_n(0, LEVELS).ravel().astype(float),
        "viva-glyph cqint8 (all norms)": kmeans_1d(norms, LEVELS),
        "ours on a 65,536 sample": kmeans_1d(sample, LEVELS),
        "k-means of sqrt(norm)": kmeans_1d(np.sqrt(norms), LEVELS) ** 2,
        "k-means of log(norm)": np.exp(kmeans_1d(np.log(norms), LEVELS)),
    }
    top100, top10 = np.unique(truth), np.unique(truth[:, :10])
    boot = np.random.default_rng(0)
    print(f"N={n:,} D={args.dim} nq={nq}, greedy codes, 8 x 256")
    print("| quantizer | RMS error: all / top-100 / top-10 | recall@1, @10, @100 minus FAISS "
          "cqint8 [95% interval] |")  # fmt: skip
    print("|---|---|---|")
    for name, levels in variants.items():
        v = nearest_level(levels, norms)
        err = v - norms
        index = RvqIndex(enc, norm="float")
        index.add_codes(codes, norms=v)
        _, got = index.search(q, 100)
        cells = []
        for r in (1, 10, 100):
            diff = hits(got, truth, r) - ref[r]
            means = [diff[boot.integers(0, nq, nq)].mean() for _ in range(2000)]
            lo, hi = np.percentile(means, [2.5, 97.5])
            cells.append(f"{diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
        rms = [np.sqrt(np.mean(err[s] ** 2)) for s in (slice(None), top100, top10)]
        print(f"| {name} | {' / '.join(f'{e:.4g}' for e in rms)} | {'; '.join(cells)} |")


if __name__ == "__main__":
    main()
