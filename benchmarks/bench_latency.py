"""One vector at a time: the time of a call, side by side with FAISS.

Medians over many calls of the spec API (``vg.encode``, ``vg.decode``,
``vg.reconstruct``) and of ``encoder.encode`` on one row, for the default
configuration (6-D, 4 x 256) and a 128-D, 8 x 256 model, against FAISS
``ResidualQuantizer.compute_codes`` of one row (greedy, ``max_beam_size = 1``, one
OpenMP thread) on the same codebooks. Every function is timed in rounds that alternate between
them, and each round's time per call is a median over its calls, so a burst of
load on the machine moves all of them alike.

Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_latency.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import viva_glyph as vg


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Median seconds per call over ``calls`` calls, timed one by one."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def faiss_encoder(enc: vg.RvqEncoder) -> Any:
    """A FAISS ResidualQuantizer holding ``enc``'s codebooks, greedy."""
    import faiss

    # One row is one thread's work; FAISS's idle OpenMP workers would otherwise spin on
    # the other cores for a while after each call, slowing whatever is timed next.
    faiss.omp_set_num_threads(1)
    c = enc.config
    rq = faiss.ResidualQuantizer(c.dimension, c.num_stages, int(np.log2(c.codebook_size)))
    rq.max_beam_size = 1
    faiss.copy_array_to_vector(enc.codebook_array.reshape(-1).astype(np.float32), rq.codebooks)
    rq.is_trained = True
    rq.compute_codebook_tables()
    return rq


def bench(name: str, enc: vg.RvqEncoder, rounds: int, calls: int) -> None:
    rng = np.random.default_rng(0)
    d = enc.config.dimension
    vec = rng.uniform(-1, 1, d).astype(np.float32)
    as_list = vec.tolist()
    row = vec[None, :]
    tokens = vg.encode(enc, as_list)
    cases: dict[str, Callable[[], Any]] = {
        "vg.encode(enc, list)": lambda: vg.encode(enc, as_list),
        "vg.decode(enc, tokens)": lambda: vg.decode(enc, tokens),
        "vg.reconstruct(enc, list)": lambda: vg.reconstruct(enc, as_list),
        "enc.encode(one row)": lambda: enc.encode(vec),
    }
    try:
        rq = faiss_encoder(enc)
        cases["FAISS compute_codes(one row)"] = lambda: rq.compute_codes(row)
        same = bool((rq.compute_codes(row)[0] == enc.encode(row)[0]).all())  # 8 bits a stage
    except ImportError:
        same = None
    results: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            results[key].append(per_call(fn, calls))
    print(f"\n{name}: {enc}" + ("" if same is None else f" (same codes as FAISS: {same})"))
    base = statistics.median(results.get("FAISS compute_codes(one row)", [float("nan")]))
    for key, vals in results.items():
        med = statistics.median(vals) * 1e6
        ratio = "" if key.startswith("FAISS") else f"  ({base * 1e6 / med:.2f}x FAISS's speed)"
        print(f"  {key:30s} {med:8.1f} us per call{ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    bench("default_config (6-D, 4 x 256)", vg.new(vg.default_config()), args.rounds, args.calls)
    rng = np.random.default_rng(1)
    books = rng.standard_normal((8, 256, 128)) * 0.6 ** np.arange(8)[:, None, None]
    bench("128-D, 8 x 256", vg.from_codebooks(books.astype(np.float32)), args.rounds, args.calls)


if __name__ == "__main__":
    main()
