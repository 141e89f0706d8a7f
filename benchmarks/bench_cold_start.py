"""A first call in a new process: import time, first-call time and memory growth.

Every figure comes from a fresh interpreter (``subprocess``), as a user's script
or a command-line call meets it:

- ``import viva_glyph`` beyond ``import numpy``, and which heavy packages it loads;
- the first ``encoder.encode`` of 1, 1,000 and 100,000 rows (6-D, 4 x 256 and
  128-D, 8 x 256): its time and the growth of the resident set (RSS) it causes;
- ``viva-glyph --help`` and ``viva-glyph encode`` of a 1,000-row ``.npy``: wall time;
- FAISS beside it: ``import faiss`` and its first ``compute_codes`` of 1,000 x 128.

Medians of ``--repeat`` fresh processes each.

Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cold_start.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE = r"""
import json, resource, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
t0 = time.perf_counter(); import numpy as np; t1 = time.perf_counter()
r0 = rss()
import viva_glyph as vg
t2 = time.perf_counter()
heavy = [m for m in ("numba", "torch", "dask", "matplotlib", "scipy", "pyarrow", "zarr",
                     "safetensors", "tqdm", "faiss", "sklearn") if m in sys.modules]
enc = vg.load(sys.argv[1])
x = np.load(sys.argv[2])
r1 = rss(); t3 = time.perf_counter()
codes = enc.encode(x)
t4 = time.perf_counter(); r2 = rss()
print(json.dumps({"numpy": t1 - t0, "import": t2 - t1, "heavy": heavy,
                  "first_encode": t4 - t3, "rss_growth": r2 - r1,
                  "numba_after": "numba" in sys.modules}))
"""

FAISS_PROBE = r"""
import json, sys, time
import numpy as np
x = np.load(sys.argv[1]); books = np.load(sys.argv[2])
t0 = time.perf_counter(); import faiss; t1 = time.perf_counter()
m, k, d = books.shape
rq = faiss.ResidualQuantizer(d, m, 8); rq.max_beam_size = 1
faiss.copy_array_to_vector(books.reshape(-1), rq.codebooks); rq.is_trained = True
t2 = time.perf_counter(); rq.compute_codes(x); t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_encode": t3 - t2}))
"""


def run(args: list[str]) -> dict[str, float]:
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(args, capture_output=True, check=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    import viva_glyph as vg

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {"6-D, 4 x 256": vg.new(vg.default_config())}
        books = rng.standard_normal((8, 256, 128)) * 0.6 ** np.arange(8)[:, None, None]
        models["128-D, 8 x 256"] = vg.from_codebooks(books.astype(np.float32))
        for name, enc in models.items():
            model = folder / "m.safetensors"
            enc.save(model)
            print(f"\n{name}")
            for rows in (1, 1_000, 100_000):
                data = folder / f"x{rows}.npy"
                d = enc.config.dimension
                np.save(data, rng.uniform(-1, 1, (rows, d)).astype(np.float32))
                res = [run([sys.executable, "-c", PROBE, str(model), str(data)])
                       for _ in range(args.repeat)]  # fmt: skip
                med = {k: statistics.median(r[k] for r in res)  # type: ignore[misc]
                       for k in ("import", "first_encode", "rss_growth")}  # fmt: skip
                print(f"  first encode of {rows:>7,} rows: {med['first_encode'] * 1e3:8.1f} ms, "
                      f"RSS +{med['rss_growth'] / 2**20:6.1f} MB (numba loaded after: "
                      f"{res[0]['numba_after']})")  # fmt: skip
            print(f"  import viva_glyph beyond numpy: {med['import'] * 1e3:.0f} ms; heavy "
                  f"packages it loads: {res[0]['heavy'] or 'none'}")  # fmt: skip
        data = folder / "x1000.npy"
        np.save(data, rng.uniform(-1, 1, (1_000, 128)).astype(np.float32))
        model = folder / "m.safetensors"
        cli = [sys.executable, "-m", "viva_glyph"]
        helps = [wall([*cli, "--help"]) for _ in range(args.repeat)]
        out = folder / "codes.npy"
        encodes = [wall([*cli, "encode", str(model), str(data), "-o", str(out), "--quiet"])
                   for _ in range(args.repeat)]  # fmt: skip
        print(
            f"\nviva-glyph --help: {statistics.median(helps) * 1e3:.0f} ms; viva-glyph encode "
            f"of 1,000 x 128 rows (8 x 256): {statistics.median(encodes) * 1e3:.0f} ms wall"
        )
        np.save(folder / "books.npy", books.astype(np.float32))
        try:
            res = [run([sys.executable, "-c", FAISS_PROBE, str(data), str(folder / "books.npy")])
                   for _ in range(args.repeat)]  # fmt: skip
            print(
                f"FAISS: import faiss {statistics.median(r['import'] for r in res) * 1e3:.0f} "
                f"ms; first compute_codes of 1,000 x 128 (8 x 256, greedy): "
                f"{statistics.median(r['first_encode'] for r in res) * 1e3:.0f} ms"
            )
        except subprocess.CalledProcessError:
            print("FAISS: not installed")


if __name__ == "__main__":
    main()
