"""Search over RVQ codes: viva_glyph.index against FAISS 1.15 with the SAME codebooks and codes.

For every data set the RVQ codebooks are fitted once (viva_glyph.fit) and the
database is encoded once (beam search, FAISS's default beam of 5 unless
``--beam``); those codebooks and codes are loaded into both libraries:

- flat: ``RvqIndex(norm=float|qint8|cqint8|lut)`` against ``IndexResidualQuantizer``
  with ``ST_norm_float|ST_norm_qint8|ST_norm_cqint8|ST_norm_from_LUT`` (codes
  packed by FAISS's own ``pack_codes``, its norm quantizers trained by
  ``train_norm`` on the same norms);
- IVF: coarse centroids (viva_glyph k-means) and residual codebooks shared, against
  ``IndexIVFResidualQuantizer`` (ST_norm_float), several nprobe. FAISS 1.15's IVF
  scanner computes the table of q - c for every probed list and stores ||r'||^2;
  ours stores ||c + r'||^2 and needs one table per query;
- floor: ``IndexPQ`` with the same bytes per vector (M sub-quantizers of 8 bits);
- re-ranking: our flat index with ``rerank=R`` from the original vectors;
- ``--ip``: inner product with no norm stored (``norm="none"``) against
  ``IndexResidualQuantizer(METRIC_INNER_PRODUCT, ST_LUT_nonorm)``, truth by exact
  inner products.

Recall@R = |top R returned ∩ true R nearest| / R (exact ground truth by a float64
brute force), for R = 1, 10, 100, from one k = 100 search. Speed: queries per second
of k = 10 searches in batches of 1,000 queries on 2 threads (FAISS: OpenMP 2; ours:
VIVA_GLYPH_NUM_THREADS=2), the median of --repeats interleaved runs; a run repeats its
pass over the queries until it has lasted a second (small sets).

Run (figures in the README):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_search.py --n 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("VIVA_GLYPH_NUM_THREADS", "2")

import faiss  # type: ignore[import-untyped]
import numpy as np

import viva_glyph as vg
from viva_glyph.index import RvqIndex
from viva_glyph.train.kmeans import assign, lloyd

FAISS_NORMS = {
    "float": "ST_norm_float",
    "qint8": "ST_norm_qint8",
    "cqint8": "ST_norm_cqint8",
    "lut": "ST_norm_from_LUT",
}
_KEEP: list[Any] = []
#: Rows too slow for the full protocol: timed once on SLOW_QUERIES queries (labelled).
SLOW_QUERIES = 200
SLOW_MARK = f" [{SLOW_QUERIES} queries, 1 run]"
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def power_law(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian vectors whose covariance spectrum decays as 1/j, randomly rotated."""
    scale = 1.0 / np.sqrt(np.arange(1, d + 1))
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    out = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 1 << 16):
        b = min(a + (1 << 16), n)
        out[a:b] = (rng.standard_normal((b - a, d)) * scale) @ rot
    return out


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    x = x[np.random.default_rng(0).permutation(len(x))]
    return x[100:], x[:100], x[100:]


def ground_truth(db: np.ndarray, q: np.ndarray, k: int, metric: str = "l2") -> np.ndarray:
    """Exact k nearest (``"l2"``) or largest inner products (``"ip"``), float64 scores,
    ties to the lower index, 100 queries at a time (one full sort of 1,000 x 1,000,000
    scores took 16 GB)."""
    out = np.empty((q.shape[0], k), dtype=np.int64)
    db64 = db.T.astype(np.float64)
    sq = np.einsum("dn,dn->n", db64, db64) if metric == "l2" else np.zeros(db.shape[0])
    for a in range(0, q.shape[0], 100):
        qq = q[a : a + 100].astype(np.float64)
        score = sq[None, :] - (2 if metric == "l2" else 1) * (qq @ db64)
        part = np.argpartition(score, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, np.take_along_axis(score, part, 1)), axis=1)
        out[a : a + 100] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray, r: int) -> float:
    hits = [len(set(f[:r]) & set(t[:r])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / r


def faiss_rq(enc: vg.RvqEncoder, codes: np.ndarray, norms: np.ndarray, mode: str) -> Any:
    m, _, d = enc.codebook_array.shape
    st = getattr(faiss.AdditiveQuantizer, FAISS_NORMS[mode])
    index = faiss.IndexResidualQuantizer(d, m, 8, faiss.METRIC_L2, st)
    _load_rq(index.rq, enc, norms)
    index.is_trained = True
    index.add_sa_codes(_pack(index.rq, codes, norms))
    return index


def _load_rq(rq: Any, enc: vg.RvqEncoder, norms: np.ndarray) -> None:
    books = np.ascontiguousarray(enc.codebook_array, dtype=np.float32)
    faiss.copy_array_to_vector(books.ravel(), rq.codebooks)
    rq.is_trained = True
    rq.compute_codebook_tables()
    rq.train_norm(norms.shape[0], faiss.swig_ptr(norms))


def _pack(rq: Any, codes: np.ndarray, norms: np.ndarray) -> np.ndarray:
    packed = np.zeros((codes.shape[0], rq.code_size), dtype=np.uint8)
    c32 = np.ascontiguousarray(codes, dtype=np.int32)
    rq.pack_codes(codes.shape[0], faiss.swig_ptr(c32), faiss.swig_ptr(packed), -1,
                  faiss.swig_ptr(norms), None)  # fmt: skip
    return packed


def faiss_ivf(
    enc: vg.RvqEncoder, cent: np.ndarray, lists: np.ndarray, codes: np.ndarray, norms: np.ndarray
) -> Any:
    m, _, d = enc.codebook_array.shape
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(cent.astype(np.float32))
    index = faiss.IndexIVFResidualQuantizer(
        quantizer, d, cent.shape[0], m, 8, faiss.METRIC_L2, faiss.AdditiveQuantizer.ST_norm_float
    )
    _KEEP.append(quantizer)  # the IVF index does not own it: keep it alive
    _load_rq(index.rq, enc, norms)
    index.is_trained = True
    packed = _pack(index.rq, codes, norms)
    for lst in range(cent.shape[0]):
        rows = np.flatnonzero(lists == lst)
        if rows.size:
            ids = rows.astype(np.int64)
            block = np.ascontiguousarray(packed[rows])
            index.invlists.add_entries(lst, rows.size, faiss.swig_ptr(ids), faiss.swig_ptr(block))
    index.ntotal = codes.shape[0]
    return index


#: A timing run repeats its passes over the queries for at least this many seconds
#: (a pass over 100 queries of a small set takes a millisecond: one scheduler hiccup).
MIN_SECONDS = 1.0


def timed(fn: Search, q: np.ndarray) -> float:
    """Seconds per pass of k = 10 searches of all queries in batches of 1,000."""
    passes = 0
    t = time.perf_counter()
    while True:
        for a in range(0, q.shape[0], 1000):
            fn(q[a : a + 1000], 10)
        passes += 1
        spent = time.perf_counter() - t
        if spent >= MIN_SECONDS:
            return spent / passes


def measure(
    rows: dict[str, Search], q: np.ndarray, truth: np.ndarray, repeats: int
) -> dict[str, tuple[float, float, float, float]]:
    """Per method: recall@1, @10, @100 and the median queries/s of interleaved runs."""
    out = {}
    rec = {}
    for name, fn in rows.items():
        if name.endswith(SLOW_MARK):  # recall and one timing on the first queries
            _, ids = fn(q[:SLOW_QUERIES], 100)
            rec[name] = tuple(recall(ids, truth[:SLOW_QUERIES], r) for r in (1, 10, 100))
            continue
        _, ids = fn(q, 100)
        rec[name] = tuple(recall(ids, truth, r) for r in (1, 10, 100))
        timed(fn, q[:100])  # warm up (numba loading, page faults)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for rep in range(repeats):
        for name, fn in rows.items():
            if name.endswith(SLOW_MARK):
                if rep == 0:
                    times[name].append(timed(fn, q[:SLOW_QUERIES]) * q.shape[0] / SLOW_QUERIES)
                continue
            times[name].append(timed(fn, q))
    for name in rows:
        out[name] = (*rec[name], q.shape[0] / statistics.median(times[name]))
    return out


def run(name: str, db: np.ndarray, q: np.ndarray, train: np.ndarray, args: Any) -> None:
    m = args.stages
    t0 = time.perf_counter()
    enc = vg.fit(train, num_stages=m, codebook_size=256, iterations=10, max_samples=args.train)
    codes = enc.encode(db, beam_size=args.beam)
    dec = enc.decode(codes).astype(np.float64)
    norms = np.einsum("nd,nd->n", dec, dec).astype(np.float32)
    truth = ground_truth(db, q, 100)
    print(f"\n## {name}: N={db.shape[0]:,} D={db.shape[1]} nq={q.shape[0]} M={m} K=256 "
          f"beam={args.beam} (setup {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    rows: dict[str, Search] = {}
    pairs = []
    for mode in ("float", "qint8", "cqint8", "lut"):
        ours = RvqIndex(enc, norm=mode)
        ours.add_codes(codes, norms=dec_norms(norms))
        theirs = faiss_rq(enc, codes, norms, mode)
        faiss_name = f"FAISS RQ {FAISS_NORMS[mode]}" + (SLOW_MARK if mode == "lut" else "")
        rows[f"viva-glyph flat {mode}"] = ours.search
        rows[faiss_name] = theirs.search
        pairs.append((f"viva-glyph flat {mode}", faiss_name))
    rr = RvqIndex(enc)
    rr.add_codes(codes, norms=dec_norms(norms))
    for depth in args.rerank:

        def reranked(x: np.ndarray, k: int, depth: int = depth) -> Any:
            return rr.search(x, k, rerank=max(depth, k), vectors=db)

        rows[f"viva-glyph flat float, rerank {depth} (recall@100: of max(R, 100))"] = reranked
    pq = faiss.IndexPQ(db.shape[1], m, 8)
    pq.train(train[: args.train])
    pq.add(db)
    rows[f"FAISS IndexPQ {m}x8 (floor)"] = pq.search
    res = measure(rows, q, truth, args.repeats)
    table(res, pairs)
    if args.ip:
        inner_product(enc, codes, norms, db, q, args)
    if args.nlist and db.shape[0] >= 40 * args.nlist:
        ivf(enc, db, q, train, truth, args)


def inner_product(enc: vg.RvqEncoder, codes: Any, norms: Any, db: Any, q: Any, args: Any) -> None:
    """metric="ip", norm="none" (no norm stored) against FAISS's IP RQ index (ST_LUT_nonorm)."""
    truth = ground_truth(db, q, 100, "ip")
    ours = RvqIndex(enc, metric="ip", norm="none")
    ours.add_codes(codes)
    m, _, d = enc.codebook_array.shape
    st = faiss.AdditiveQuantizer.ST_LUT_nonorm
    theirs = faiss.IndexResidualQuantizer(d, m, 8, faiss.METRIC_INNER_PRODUCT, st)
    _load_rq(theirs.rq, enc, norms)
    theirs.is_trained = True
    theirs.add_sa_codes(_pack(theirs.rq, codes, norms))
    rows = {"viva-glyph flat ip, none": ours.search, "FAISS RQ IP ST_LUT_nonorm": theirs.search}
    table(measure(rows, q, truth, args.repeats), [tuple(rows)])  # type: ignore[list-item]


def dec_norms(norms: np.ndarray) -> np.ndarray:
    return norms.astype(np.float64)


def ivf(enc0: Any, db: np.ndarray, q: np.ndarray, train: np.ndarray, truth: Any, args: Any) -> None:
    nlist = args.nlist
    rng = np.random.default_rng(0)
    sample = train[: min(len(train), 64 * nlist)].astype(np.float64)
    cent, _, _ = lloyd(sample, nlist, iterations=10, rng=rng)
    tl, _ = assign(train[: args.train], cent)
    enc = vg.fit(train[: args.train] - cent[tl], num_stages=args.stages, codebook_size=256,
                 iterations=10)  # fmt: skip
    lists, _ = assign(db, cent)
    codes = enc.encode(db - cent[lists], beam_size=args.beam)
    resid = enc.decode(codes).astype(np.float64)
    recon = resid + cent[lists]
    # ours keeps ||c + r'||^2 (one table per query serves every list); FAISS 1.15's IVF
    # L2 scanner builds a table of q - c per probed list and wants ||r'||^2.
    norms = np.einsum("nd,nd->n", recon, recon)
    ours = RvqIndex(enc, centroids=cent)
    ours.add_codes(codes, norms=norms, lists=lists)
    rnorms = np.einsum("nd,nd->n", resid, resid).astype(np.float32)
    theirs = faiss_ivf(enc, cent, lists, codes, rnorms)
    rows: dict[str, Search] = {}
    pairs = []
    for p in args.nprobe:
        if p > nlist:
            continue

        def mine(x: np.ndarray, k: int, p: int = p) -> Any:
            return ours.search(x, k, nprobe=p)

        def faiss_p(x: np.ndarray, k: int, p: int = p) -> Any:
            theirs.nprobe = p
            return theirs.search(x, k)

        rows[f"viva-glyph IVF{nlist} nprobe={p}"] = mine
        rows[f"FAISS IVFRQ{nlist} nprobe={p}"] = faiss_p
        pairs.append((f"viva-glyph IVF{nlist} nprobe={p}", f"FAISS IVFRQ{nlist} nprobe={p}"))
    table(measure(rows, q, truth, args.repeats), pairs)


def table(res: dict[str, tuple[float, float, float, float]], pairs: list[tuple[str, str]]) -> None:
    ratio = {a: res[a][3] / res[b][3] for a, b in pairs}
    print("| index | recall@1 | recall@10 | recall@100 | queries/s | vs FAISS |")
    print("|---|---|---|---|---|---|")
    for name, (r1, r10, r100, qps) in res.items():
        extra = f"{ratio[name]:.2f}x" if name in ratio else ""
        print(f"| {name} | {r1:.3f} | {r10:.3f} | {r100:.3f} | {qps:,.0f} | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="database vectors (100000)")
    parser.add_argument("--nq", type=int, default=1000, help="queries (1000)")
    parser.add_argument("--dims", default="64,128,384", help="synthetic widths (64,128,384)")
    parser.add_argument("--stages", type=int, default=8, help="M = bytes per vector (8)")
    parser.add_argument("--beam", type=int, default=5, help="encoding beam (5, FAISS's)")
    parser.add_argument("--train", type=int, default=20_000, help="training vectors (20000)")
    parser.add_argument("--nlist", type=int, default=256, help="IVF lists, 0 = no IVF (256)")
    parser.add_argument("--nprobe", default="4,16,64", help="IVF nprobe values (4,16,64)")
    parser.add_argument("--rerank", default="100,300", help="re-ranking depths (100,300)")
    parser.add_argument(
        "--slow-queries", type=int, default=200, help="queries for FAISS ST_norm_from_LUT (200)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing runs (3)")
    parser.add_argument("--no-digits", action="store_true", help="skip load_digits")
    parser.add_argument(
        "--ip", action="store_true", help='also metric="ip", norm="none" vs FAISS (exact truth)'
    )
    args = parser.parse_args()
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    args.rerank = [int(p) for p in args.rerank.split(",")]
    global SLOW_QUERIES, SLOW_MARK
    SLOW_QUERIES = args.slow_queries
    SLOW_MARK = f" [{SLOW_QUERIES} queries, 1 run]"
    faiss.omp_set_num_threads(2)
    print(f"faiss {faiss.__version__}, viva-glyph {vg.__version__}, threads 2, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")  # fmt: skip
    for d in [int(v) for v in args.dims.split(",") if v]:
        rng = np.random.default_rng(d)
        x = power_law(args.n + args.nq + args.train, d, rng)
        db, q, train = x[: args.n], x[args.n : args.n + args.nq], x[args.n + args.nq :]
        run(f"power-law D={d}", db, q, train, args)
    if not args.no_digits:
        db, q, train = digits()
        small = argparse.Namespace(**{**vars(args), "nlist": 0, "train": len(train)})
        run("load_digits", db, q, train, small)


if __name__ == "__main__":
    main()
