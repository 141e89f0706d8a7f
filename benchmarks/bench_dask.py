"""Scale-out benchmark: viva_glyph.dask on a LocalCluster vs the single-process encoder.

1. Writes an (N, D) float32 ``.npy`` of clustered vectors (default 20,000,000 x
   128 = 10 GB; the size shrinks to the free disk space, and says so).
2. Fits a 4 x 256 encoder in memory on 100,000 rows.
3. Single process: ``encoder.encode`` on a slice of the memory map (median of
   ``--repeat`` runs).
4. LocalCluster: ``encode`` -> ``write_codes`` to a zarr store, for N/10 rows
   and for all N rows (each once), with the peak RSS of every worker sampled by
   a thread inside it; the codes of 100,000 random rows are checked bit for bit
   against the in-memory encoder.
5. Out of core fit (``--fit-rows``, default 4,000,000 rows = 2 GB): distributed
   ``fit`` on workers limited to ``--fit-memory`` (512 MB), vs in-memory
   ``viva_glyph.fit`` on a ``--fit-sample`` row sample with the same
   parameters and seed, compared by MSE on 100,000 held-out rows.

Run (the defaults are the sizes of the docs' Benchmarks page)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dask.py
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import viva_glyph as vg
import viva_glyph.dask as vgd

GB = 1e9


def make_data(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """Clustered float32 data: 1024 centres with noise at two scales, written block by block."""
    if path.exists():
        mm = np.load(path, mmap_mode="r")
        if mm.shape == (rows, dim) and mm.dtype == np.float32:
            print(f"reusing {path} ({rows} x {dim})")
            return
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1024, dim)).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    t0 = time.perf_counter()
    step = 1 << 18
    for start in range(0, rows, step):
        n = min(step, rows - start)
        block = centres[rng.integers(0, 1024, n)]
        block += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        out[start : start + n] = block
    out.flush()
    del out
    tmp.replace(path)
    print(f"wrote {path}: {rows} x {dim} float32, {rows * dim * 4 / GB:.2f} GB "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip


def _start_sampler(dask_worker: Any, interval: float = 0.05) -> int:
    import psutil

    proc = psutil.Process()
    dask_worker._vg_peak = proc.memory_info().rss
    dask_worker._vg_stop = False

    def loop() -> None:
        while not dask_worker._vg_stop:
            dask_worker._vg_peak = max(dask_worker._vg_peak, proc.memory_info().rss)
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True).start()
    return int(dask_worker._vg_peak)


def _stop_sampler(dask_worker: Any) -> int:
    dask_worker._vg_stop = True
    return int(getattr(dask_worker, "_vg_peak", 0))


@contextlib.contextmanager
def cluster_client(args: argparse.Namespace, memory_limit: str) -> Iterator[Any]:
    """A LocalCluster of ``args.workers`` single-threaded worker processes and its client."""
    from distributed import Client, LocalCluster

    with (
        contextlib.nullcontext() if args.dask_malloc else vgd.worker_environ(),
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", memory_limit=memory_limit,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def _mb(values: dict[str, int]) -> str:
    return ", ".join(f"{v / 2**20:.0f}" for _, v in sorted(values.items()))


def bench_encode(args: argparse.Namespace, path: Path, enc: vg.RvqEncoder) -> None:
    mm = np.load(path, mmap_mode="r")
    n = mm.shape[0]
    # -- single process -----------------------------------------------------------------
    s = min(n, args.single_rows)
    np.asarray(mm[:s]).sum()  # warm the page cache, as the cluster run will find it

    def encode_rates() -> list[float]:
        """Rows/s of ``args.repeat`` encodings of the first s rows."""
        out = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            enc.encode(mm[:s])
            out.append(s / (time.perf_counter() - t))
        return out

    rates = encode_rates()
    single = statistics.median(rates)
    print(f"single process: {single:,.0f} rows/s (median of {args.repeat} runs on "
          f"the first {s:,} rows, default BLAS threads; runs "
          f"{', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        single1 = statistics.median(encode_rates())
    print(f"single process, 1 BLAS thread: {single1:,.0f} rows/s "
          f"(median of {args.repeat} runs)")  # fmt: skip
    # -- cluster ------------------------------------------------------------------------
    rows = vgd.rows_per_chunk(enc) * max(1, args.block_mb * 2**20 // (mm.shape[1] * 4)
                                         // vgd.rows_per_chunk(enc))  # fmt: skip
    out = path.with_name("codes.zarr")
    with cluster_client(args, args.encode_memory) as client:
        malloc = "dask's malloc env" if args.dask_malloc else "vgd.worker_environ"
        for count in (n // 10, n):
            X = vgd.from_npy(path, chunk_rows=rows)[:count]
            base = client.run(_start_sampler)
            t = time.perf_counter()
            vgd.write_codes(vgd.encode(enc, X), out, progress=args.progress)
            dt = time.perf_counter() - t
            peak = client.run(_stop_sampler)
            rate = count / dt
            print(f"LocalCluster {args.workers} x 1 thread ({malloc}): {count:,} rows -> zarr "
                  f"in {dt:.1f} s = {rate:,.0f} rows/s ({rate / single:.2f} x single process, "
                  f"{rate / single1:.2f} x single process on 1 BLAS thread); "
                  f"{X.numblocks[0]} blocks of {rows:,} rows "
                  f"({rows * mm.shape[1] * 4 / 2**20:.0f} MiB); "
                  f"worker RSS at start {_mb(base)} MiB, peak {_mb(peak)} MiB")  # fmt: skip
    import zarr

    z = zarr.open_array(str(out), mode="r")
    idx = np.sort(np.random.default_rng(1).choice(n, size=min(n, 100_000), replace=False))
    same = np.array_equal(z.get_orthogonal_selection((idx, slice(None))), enc.encode(mm[idx]))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"zarr codes {z.shape} {z.dtype}, chunks {z.chunks}, {size / 2**20:.1f} MiB on disk "
          f"({z.nbytes / 2**20:.1f} MiB raw); 100,000 random rows equal the in-memory "
          f"encoder bit for bit: {same}")  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)


def bench_fit(args: argparse.Namespace, path: Path) -> None:

    mm = np.load(path, mmap_mode="r")
    n = mm.shape[0]
    rows = min(args.fit_rows, n - 100_000)
    held = np.asarray(mm[n - 100_000 :])
    kw: dict[str, Any] = dict(num_stages=args.fit_stages, codebook_size=args.fit_k,
                              iterations=args.fit_iterations, seed=0)  # fmt: skip

    def mse(e: vg.RvqEncoder) -> float:  # per component
        diff = held.astype(np.float64) - e.decode(e.encode(held))
        return float(np.einsum("nd,nd->", diff, diff) / diff.size)

    with cluster_client(args, args.fit_memory) as client:
        X = vgd.from_npy(path, chunk_rows=args.fit_block_rows)[:rows]
        base = client.run(_start_sampler)
        t = time.perf_counter()
        dist = vgd.fit(X, max_samples=rows, progress=args.progress, **kw)  # all rows
        dt = time.perf_counter() - t
        peak = client.run(_stop_sampler)
    assert dist.training is not None
    print(f"dask fit: {rows:,} x {mm.shape[1]} rows ({rows * mm.shape[1] * 4 / GB:.2f} GB) on "
          f"{args.workers} workers limited to {args.fit_memory} each, {kw}, "
          f"persisted={dist.training.params['persisted']}: {dt:.1f} s, iterations "
          f"{dist.training.iterations}; worker RSS at start {_mb(base)} MiB, "
          f"peak {_mb(peak)} MiB")  # fmt: skip
    t = time.perf_counter()
    mem = vg.fit(mm[:rows], max_samples=min(rows, args.fit_sample), **kw)
    dt = time.perf_counter() - t
    assert mem.training is not None
    print(f"in-memory fit on a {mem.training.params['samples_used']:,}-row sample: {dt:.1f} s, "
          f"iterations {mem.training.iterations}")  # fmt: skip
    a, b = mse(dist), mse(mem)
    print(f"held-out MSE (100,000 rows not trained on): dask fit {a:.6f}, in-memory fit {b:.6f}, "
          f"relative difference {(a - b) / b:+.3%} (target within 1%)")  # fmt: skip


def bench_fit_defaults(args: argparse.Namespace) -> None:
    """``viva_glyph.dask.fit`` at its defaults against ``viva_glyph.fit`` on the same rows.

    A 40,000 x 80 set (a power-law spectrum with clusters, the shape of speech
    frames), 8 x 256, a LocalCluster of ``--workers`` single-threaded workers;
    interleaved runs, medians. The default sample fits in memory, so the dask fit
    draws it on the cluster and trains it with the in-memory code: the codebooks
    are compared bit for bit.
    """
    import dask.array as da
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(3)
    n, d = args.defaults_rows, 80
    scale = (1.0 + np.arange(d)) ** -0.75
    centres = rng.standard_normal((64, d)) * scale
    x = centres[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, d)) * scale
    x = x.astype(np.float32)
    kw: dict[str, Any] = dict(num_stages=8, codebook_size=256, seed=0)
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                     dashboard_address=None) as cluster,
        Client(cluster),
    ):  # fmt: skip
        X = da.from_array(x, chunks=(8_192, d))
        local, dist = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ref = vg.fit(x, **kw)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = vgd.fit(X, **kw)
            dist.append(time.perf_counter() - t)
        same = got == ref
    a, b = statistics.median(local), statistics.median(dist)
    print(
        f"fit at defaults, {n:,} x {d}, 8 x 256, {args.workers} workers x 1 thread: "
        f"viva_glyph.fit {a:.2f} s, viva_glyph.dask.fit {b:.2f} s ({b / a:.2f}x; medians "
        f"of {args.repeat} interleaved runs); identical codebooks: {same}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dir", type=Path, default=None, help="data folder (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the data file")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-mb", type=int, default=32, help="MiB of input per block")
    p.add_argument("--encode-memory", default="2GB", help="memory limit per worker (encode)")
    p.add_argument("--single-rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fit-rows", type=int, default=4_000_000)
    p.add_argument("--fit-memory", default="512MB")
    p.add_argument("--fit-block-rows", type=int, default=1 << 16)
    p.add_argument("--fit-sample", type=int, default=1_000_000)
    p.add_argument("--fit-k", type=int, default=256)
    p.add_argument("--fit-stages", type=int, default=2)
    p.add_argument("--fit-iterations", type=int, default=8)
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument(
        "--fit-defaults", action="store_true",
        help="only compare dask.fit with fit at the defaults (40,000 x 80, 8 x 256)",
    )  # fmt: skip
    p.add_argument("--defaults-rows", type=int, default=40_000)
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--dask-malloc", action="store_true",
        help="start workers with dask's own malloc settings (no vgd.worker_environ)",
    )  # fmt: skip
    args = p.parse_args()
    if args.fit_defaults:
        bench_fit_defaults(args)
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="vg-bench-dask-"))
    folder.mkdir(parents=True, exist_ok=True)
    need = args.rows * args.dim * 4
    free = shutil.disk_usage(folder).free
    if need > free - 4 * GB:
        rows = max(1_000_000, int((free - 4 * GB) // (args.dim * 4)))
        print(f"only {free / GB:.1f} GB free in {folder}: {args.rows:,} rows need "
              f"{need / GB:.1f} GB, using {rows:,} rows")  # fmt: skip
        args.rows = rows
    path = folder / f"x_{args.rows}x{args.dim}.npy"
    try:
        make_data(path, args.rows, args.dim)
        mm = np.load(path, mmap_mode="r")
        t = time.perf_counter()
        enc = vg.fit(mm[:100_000], num_stages=4, codebook_size=256, iterations=10, seed=0)
        print(f"encoder: {enc} fitted in memory on 100,000 rows in {time.perf_counter() - t:.1f} s")
        if not args.skip_encode:
            bench_encode(args, path, enc)
        if not args.skip_fit:
            bench_fit(args, path)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
