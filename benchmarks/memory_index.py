"""Peak memory of building an index from a memory-mapped .npy, its file size, its open time.

Three fresh processes, so each peak RSS (``ru_maxrss``) is its own:

1. ``make``: write N x D float32 vectors (power-law spectrum) to ``vectors.npy`` in blocks;
2. ``build``: fit an 8-stage x 256-code encoder on the first 20,000 rows, open the
   ``.npy`` memory-mapped, ``RvqIndex.add`` it (8-byte codes + float norms), save;
   print the peak RSS and compare the file size with codes + norms + ids + codebooks;
3. ``open``: ``viva_glyph.index.load`` (codes memory-mapped) and one search.

Usage::

    python benchmarks/memory_index.py --n 10000000 --dim 32 --folder /tmp/vg-mem
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(path: Path, n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), "w+", np.float32, (n, d))
    for a in range(0, n, 1 << 18):
        b = min(a + (1 << 18), n)
        out[a:b] = rng.standard_normal((b - a, d), dtype=np.float32) * scale
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)


def build(folder: Path) -> dict[str, float]:
    import viva_glyph as vg
    from viva_glyph.index import RvqIndex

    x = np.load(folder / "vectors.npy", mmap_mode="r")
    t = time.perf_counter()
    # The first 20,000 rows (i.i.d. data): a random sample read through the memory
    # map would fault in (read-ahead) and keep most of the file's pages resident.
    enc = vg.fit(np.array(x[:20_000]), num_stages=8, codebook_size=256, iterations=10)
    fit_s = time.perf_counter() - t
    index = RvqIndex(enc, norm="float")
    t = time.perf_counter()
    index.add(x)
    add_s = time.perf_counter() - t
    index.save(folder / "vectors.vgindex")
    n = len(index)
    parts = n * 8 + n * 4 + n * 8 + enc.codebook_array.nbytes
    return {
        "rows": n,
        "fit_s": fit_s,
        "add_s": add_s,
        "peak_rss_mb": rss_mb(),
        "file_bytes": os.path.getsize(folder / "vectors.vgindex"),
        "codes_norms_ids_codebooks_bytes": parts,
    }


def open_index(folder: Path) -> dict[str, float]:
    from viva_glyph.index import load

    t = time.perf_counter()
    index = load(folder / "vectors.vgindex")
    open_s = time.perf_counter() - t
    return {"open_s": open_s, "rows": len(index), "peak_rss_mb": rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--folder", default="/tmp/vg-mem")
    parser.add_argument("--phase", choices=("all", "make", "build", "open"), default="all")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.phase == "make":
        make(folder / "vectors.npy", args.n, args.dim)
    elif args.phase == "build":
        print(json.dumps(build(folder)))
    elif args.phase == "open":
        print(json.dumps(open_index(folder)))
    else:
        for phase in ("make", "build", "open"):
            if phase == "make" and (folder / "vectors.npy").exists():
                continue
            cmd = [sys.executable, __file__, "--phase", phase, "--folder", str(folder),
                   "--n", str(args.n), "--dim", str(args.dim)]  # fmt: skip
            print(phase, subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
