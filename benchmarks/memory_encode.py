"""Peak memory of a large greedy encode: run under ``/usr/bin/time -v``.

Builds an (N, D) float32 input in place (no temporaries), encodes it with an
M-stage, K-code encoder, and prints the input and output sizes so the peak RSS
that ``time -v`` reports can be compared with input + output + ~64 MB.

A one-row encode runs first and its growth of the peak is printed apart: it
is the one-time runtime of the kernels (numba and the LLVM code it loads, with
the ``fast`` extra), not memory that grows with the data.

Usage::

    /usr/bin/time -v python benchmarks/memory_encode.py [--n 1000000 --dim 128 --stages 8]
"""

from __future__ import annotations

import argparse
import resource

import numpy as np

import viva_glyph as vg


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    enc = vg.new(vg.RvqConfig(args.stages, args.dim, args.size))
    x = np.empty((args.n, args.dim), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, args.n, 4096):
        block = x[start : start + 4096]
        block[:] = rng.uniform(-1, 1, block.shape)
    start = rss_mb()
    enc.encode(x[:1])  # loads the kernels' runtime once
    before = rss_mb()
    print(f"one-time kernel runtime (first encode of one row): {before - start:.1f} MiB")
    codes = enc.encode(x)
    after = rss_mb()
    in_mb, out_mb = x.nbytes / 2**20, codes.nbytes / 2**20
    print(f"input {in_mb:.1f} MiB, output {out_mb:.1f} MiB ({codes.dtype}, shape {codes.shape})")
    print(f"peak RSS before encode {before:.1f} MiB, after {after:.1f} MiB")
    print(f"encode added {after - before:.1f} MiB to the peak (output included)")
    print(f"peak beyond input + output: {after - in_mb - out_mb:.1f} MiB (interpreter included)")


if __name__ == "__main__":
    main()
