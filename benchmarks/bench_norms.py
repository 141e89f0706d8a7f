"""One-byte norms (``norm="qint8"``/``"cqint8"``) against float norms: recall and speed.

For every set the encoder (8 x 256, ``fit`` beam 1) is trained on the train rows, which
are indexed (flat, L2) three times: ``norm="float"``, ``"qint8"`` and ``"cqint8"``; the
held-out rows are the queries (at most ``--queries``). Printed per set:

- float recall@10 against the exact neighbours of the original vectors (float64 brute force);
- qint8/cqint8 recall@10 divided by the float one, and their agreement with the
  float-norm index's own top 10 (the share of its ids they return);
- queries per second divided by float's (k = 10, all queries in one call, the median of
  ``--repeats`` interleaved runs, one process, 2 threads);
- rows re-scored exactly per query (median / max).

Run:
    python benchmarks/bench_norms.py --sets patches,digits,minilm,lsa
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VIVA_GLYPH_NUM_THREADS", "2")

import numpy as np

import viva_glyph as vg
from viva_glyph.index import RvqIndex

sys.path.insert(0, str(Path(__file__).parent))
import quality_data

MODES = ("float", "qint8", "cqint8")


def truth(train: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k nearest train rows of each query (float64, blocks of queries)."""
    x = train.astype(np.float64)
    xx = np.einsum("nd,nd->n", x, x)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for a in range(0, queries.shape[0], 100):
        q = queries[a : a + 100].astype(np.float64)
        d = xx[None, :] - 2 * q @ x.T
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1)
        out[a : a + 100] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(found, ref, strict=True)])
    )


def run_set(name: str, n_queries: int, repeats: int, k: int = 10) -> dict[str, object]:
    train, test, _ = quality_data.load(name)
    queries = test[:n_queries]
    enc = vg.fit(train, num_stages=8, codebook_size=256, beam_size=1, iterations=10)
    codes = enc.encode(train)
    indexes = {}
    for mode in MODES:
        index = RvqIndex(enc, norm=mode)
        index.add_codes(codes)
        indexes[mode] = index
    ids = {mode: indexes[mode].search(queries, k)[1] for mode in MODES}  # warm-up, results
    rescored = {mode: indexes[mode]._last_rescored.copy() for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            t0 = time.perf_counter()
            indexes[mode].search(queries, k)
            times[mode].append(time.perf_counter() - t0)
    ref = truth(train, queries, k)
    qps = {mode: len(queries) / statistics.median(times[mode]) for mode in MODES}
    base = recall(ids["float"], ref)
    row: dict[str, object] = {
        "set": f"{name} ({len(train):,} x {train.shape[1]}, {len(queries):,} queries)",
        "float recall@10": base,
        "float q/s": qps["float"],
    }
    for mode in ("qint8", "cqint8"):
        r = recall(ids[mode], ref)
        row[mode] = (
            r / base if base else float("nan"),
            recall(ids[mode], ids["float"]),
            qps[mode] / qps["float"],
            int(np.median(rescored[mode])),
            int(rescored[mode].max()),
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sets", default="patches,digits,minilm,lsa")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, "
          f"threads {os.environ['VIVA_GLYPH_NUM_THREADS']}", flush=True)  # fmt: skip
    print("| set | float recall@10 | float q/s | mode | recall / float | same ids as float "
          "| q/s / float | re-scored per query (median / max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        row = run_set(name, args.queries, args.repeats)
        for mode in ("qint8", "cqint8"):
            ratio, same, speed, med, top = row[mode]  # type: ignore[misc]
            print(f"| {row['set']} | {row['float recall@10']:.3f} | {row['float q/s']:,.0f} "
                  f"| {mode} | {ratio:.3f}x | {same:.3f} | {speed:.2f}x | {med:,} / {top:,} |",
                  flush=True)  # fmt: skip
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
