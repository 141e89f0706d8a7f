"""Better codes at every speed: held-out MSE against encode speed, viva-glyph's presets
and settings side by side with FAISS's quantizers at the same bytes (8 x 256 = 64 bits).

For each set (``quality_data.py``: ``powerlaw`` and ``gaussian`` with their Gaussian
rate-distortion bounds, ``digits``, ``patches``, ``minilm``, ``lsa``; train and test rows
disjoint) it trains

- FAISS ``ResidualQuantizer`` at train beams 1/5/10/32 (``use_beam_LUT``), each encoding
  at beams 1/5/10/32; ``LocalSearchQuantizer`` at its defaults; OPQ + PQ;
- viva-glyph at its presets ``fast`` (the default), ``balanced`` and ``quality``, each
  encoding at its own beam and at a few others (labelled: not the preset's default);

encodes the held-out rows and prints one table per set: held-out MSE (``mean_i ||x_i -
x^_i||^2``), its ratio to FAISS's best residual quantizer (train beam 10 or 32, encode
beam 32, the lower MSE) and to the bound, encode vectors/s at ``--threads`` threads
(medians of ``--repeats`` runs interleaved between all methods, one process), and
training seconds. Then, for every FAISS point, the fastest viva-glyph point with a held-out
MSE at most FAISS's and its speed ratio. ``--png`` draws the curves (matplotlib).

Run on a quiet machine (FAISS's OpenMP threads spin and lose more than ours under load)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_WAIT_POLICY=PASSIVE \\
        python benchmarks/bench_quality.py --sets powerlaw digits patches minilm --png q.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import quality_data

import viva_glyph as vg

M, NBITS, K = 8, 8, 256
FAISS_BEAMS = (1, 5, 10, 32)
#: The preset's own encode beam first (the default), then other settings of the same model.
OUR_BEAMS = {"fast": (1, 2, 4, 8), "balanced": (4, 2, 8), "quality": (32, 8, 16)}


def mse(x: np.ndarray, xhat: np.ndarray) -> float:
    """``mean_i ||x_i - x^_i||^2`` in float64."""
    d = x.astype(np.float64) - xhat.astype(np.float64)
    return float(np.einsum("nd,nd->", d, d) / x.shape[0])


class Method:
    """A trained quantizer: ``encode(x, beam)`` and ``decode(codes)``; its operating points."""

    name: str
    beams: tuple[int, ...] = (0,)
    train_s: float = float("nan")

    def train(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def encode(self, x: np.ndarray, beam: int) -> np.ndarray:
        raise NotImplementedError

    def decode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def label(self, beam: int) -> str:
        return self.name


class FaissRQ(Method):
    def __init__(self, d: int, train_beam: int) -> None:
        import faiss

        self.name, self.beams = f"FAISS RQ train beam {train_beam}", FAISS_BEAMS
        self.rq = faiss.ResidualQuantizer(d, M, NBITS)
        self.rq.max_beam_size = train_beam
        self.rq.use_beam_LUT = 1

    def train(self, x: np.ndarray) -> None:
        t = time.perf_counter()
        self.rq.train(x)
        self.train_s = time.perf_counter() - t

    def encode(self, x: np.ndarray, beam: int) -> np.ndarray:
        self.rq.max_beam_size = beam
        self.rq.use_beam_LUT = 1
        return self.rq.compute_codes(x)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.rq.decode(codes)

    def label(self, beam: int) -> str:
        return f"{self.name}, encode beam {beam}"

    def codebooks(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.rq.codebooks).reshape(M, K, -1)


class FaissLSQ(Method):
    def __init__(self, d: int) -> None:
        import faiss

        self.name = "FAISS LSQ (defaults)"
        self.q = faiss.LocalSearchQuantizer(d, M, NBITS)

    def train(self, x: np.ndarray) -> None:
        t = time.perf_counter()
        self.q.train(x)
        self.train_s = time.perf_counter() - t

    def encode(self, x: np.ndarray, beam: int) -> np.ndarray:
        return self.q.compute_codes(x)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.q.decode(codes)


class FaissOPQ(Method):
    """OPQ (M subspaces) then PQ M x 8 bits: the same bytes."""

    def __init__(self, d: int) -> None:
        import faiss

        self.name = "FAISS OPQ + PQ"
        self.opq, self.pq = faiss.OPQMatrix(d, M), faiss.ProductQuantizer(d, M, NBITS)

    def train(self, x: np.ndarray) -> None:
        t = time.perf_counter()
        self.opq.train(x)
        self.pq.train(self.opq.apply_py(x))
        self.train_s = time.perf_counter() - t

    def encode(self, x: np.ndarray, beam: int) -> np.ndarray:
        return self.pq.compute_codes(self.opq.apply_py(x))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.opq.reverse_transform(self.pq.decode(codes))


class Ours(Method):
    def __init__(self, preset: str, seed: int) -> None:
        self.preset, self.seed = preset, seed
        self.name, self.beams = f"viva-glyph {preset}", OUR_BEAMS[preset]
        self.enc: vg.RvqEncoder | None = None

    def train(self, x: np.ndarray) -> None:
        t = time.perf_counter()
        self.enc = vg.fit(x, num_stages=M, codebook_size=K, preset=self.preset, seed=self.seed)
        self.train_s = time.perf_counter() - t

    def encode(self, x: np.ndarray, beam: int) -> np.ndarray:
        assert self.enc is not None
        return self.enc.encode(x, beam_size=beam)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        assert self.enc is not None
        return self.enc.decode(codes)

    def label(self, beam: int) -> str:
        assert self.enc is not None
        own = beam == self.enc.encoding.beam_size
        return f"{self.name}, encode beam {beam}" + ("" if own else " (not the default)")


def index_recall(
    name: str, methods: list[Method], train: np.ndarray, test: np.ndarray, queries: int
) -> list[dict[str, Any]]:
    """recall@10 (no re-ranking) of a flat float-norm index of the training rows built on
    the quality preset's model and on FAISS's best RQ codebooks (each encoding the rows at
    beam 32), against the exact 10 nearest training rows of each held-out query."""
    from viva_glyph.index import RvqIndex

    q = test[:queries]
    sq = np.einsum("nd,nd->n", train.astype(np.float64), train.astype(np.float64))
    truth = np.empty((q.shape[0], 10), dtype=np.int64)
    for s in range(0, q.shape[0], 256):
        d = sq[None, :] - 2.0 * (q[s : s + 256].astype(np.float64) @ train.T.astype(np.float64))
        part = np.argpartition(d, 10, axis=1)[:, :10]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1)
        truth[s : s + 256] = np.take_along_axis(part, order, axis=1)
    faiss_rows = [m for m in methods if isinstance(m, FaissRQ) and m.name.endswith(("10", "32"))]
    ours = [m for m in methods if isinstance(m, Ours) and m.preset == "quality"]
    if not faiss_rows or not ours:
        return []
    best = min(faiss_rows, key=lambda m: mse(test, m.decode(m.encode(test, 32))))
    out = []
    for m in (best, ours[0]):
        enc = ours[0].enc
        assert enc is not None
        books = m.codebooks() if isinstance(m, FaissRQ) else enc.codebook_array
        index = RvqIndex(vg.from_codebooks(books.astype(np.float32)))
        index.add_codes(m.encode(train, 32))
        _, found = index.search(q, 10)
        pairs = zip(found.tolist(), truth.tolist(), strict=True)
        rec = sum(len(set(f) & set(t)) for f, t in pairs) / truth.size
        out.append({"set": name, "method": m.name, "recall10": rec})
        print(f"  index recall@10 {m.name:40s} {rec:.4f}", file=sys.stderr, flush=True)
    return out


def speed(fn: Callable[[], Any], rows: int) -> float:
    t = time.perf_counter()
    fn()
    return rows / (time.perf_counter() - t)


def run_set(name: str, methods: list[Method], args: argparse.Namespace) -> list[dict[str, Any]]:
    train, test, bound = quality_data.load(name)
    print(f"\n{name}: train {train.shape}, test {test.shape}", file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    points: list[tuple[Method, int, dict[str, Any]]] = []
    for q in methods:
        q.train(train)
        for beam in q.beams:
            err = mse(test, q.decode(q.encode(test, beam)))
            row = {"set": name, "method": q.label(beam), "mse": err, "train_s": q.train_s,
                   "ours": isinstance(q, Ours), "beam": beam, "speeds": []}  # fmt: skip
            rows.append(row)
            points.append((q, beam, row))
            print(f"  {row['method']:58s} {err:12.6g}  train {q.train_s:7.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    sx = test[: args.speed_rows]
    for _ in range(args.repeats):  # interleaved: every point once per repeat
        for q, beam, row in points:
            row["speeds"].append(speed(lambda q=q, b=beam: q.encode(sx, b), sx.shape[0]))
    for row in rows:
        row["vps"] = statistics.median(row["speeds"])
        row["bound"] = bound
    return rows


def best_faiss(rows: list[dict[str, Any]]) -> float | None:
    """FAISS's best residual quantizer: train beam 10 or 32, encode beam 32 (the lower MSE)."""
    best = [r["mse"] for r in rows
            if r["method"] in ("FAISS RQ train beam 10, encode beam 32",
                               "FAISS RQ train beam 32, encode beam 32")]  # fmt: skip
    return min(best) if best else None


def show(name: str, rows: list[dict[str, Any]]) -> None:
    ref, bound = best_faiss(rows), rows[0]["bound"]
    limit = f"; rate-distortion bound {bound:.4g}" if bound else ""
    print(f"\n**{name}** (8 x 256 = 64 bits{limit})\n")
    head = "| method | held-out MSE | / FAISS best RQ |" + (" / bound |" if bound else "")
    print(head + " encode vectors/s | train s |")
    print("|---" * (head.count("|") + 1) + "|")
    for r in rows:
        cells = [r["method"], f"{r['mse']:.5g}", f"{r['mse'] / ref:.3f}" if ref else "-"]
        cells += [f"{r['mse'] / bound:.3f}"] if bound else []
        cells += [f"{r['vps']:,.0f}", f"{r['train_s']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nFor every FAISS point, the fastest viva-glyph point at an MSE at most its own:\n")
    print("| FAISS point | MSE | vectors/s | viva-glyph point | MSE | vectors/s | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    ours = [r for r in rows if r["ours"]]
    for f in (r for r in rows if not r["ours"]):
        better = [o for o in ours if o["mse"] <= f["mse"]]
        if not better:
            print(f"| {f['method']} | {f['mse']:.5g} | {f['vps']:,.0f} | none | | | |")
            continue
        o = max(better, key=lambda r: r["vps"])
        print(f"| {f['method']} | {f['mse']:.5g} | {f['vps']:,.0f} | {o['method']} | "
              f"{o['mse']:.5g} | {o['vps']:,.0f} | {o['vps'] / f['vps']:.2f}x |")  # fmt: skip


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in rows))
    cols = min(2, len(sets))
    nrows = -(-len(sets) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(sets) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, sets, strict=False):
        part = [r for r in rows if r["set"] == name]
        ref = best_faiss(part) or min(r["mse"] for r in part)
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in part:
            groups.setdefault(r["method"].split(",")[0], []).append(r)
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["beam"])  # a model's points in the order of its beam
            style = "-o" if rs[0]["ours"] else "--s"
            ax.plot([r["vps"] for r in rs], [r["mse"] / ref for r in rs], style, label=label, ms=4)
        ax.set_xscale("log")
        ax.set_xlabel("encode vectors/s")
        ax.set_ylabel("held-out MSE / FAISS best RQ")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)  # each set has its own FAISS settings: its own legend
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "?")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sets", nargs="+", default=["powerlaw", "digits", "patches", "minilm"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speed-rows", type=int, default=10_000)
    p.add_argument("--faiss-train-beams", default="1,5,10,32")
    p.add_argument("--presets", default="fast,balanced,quality")
    p.add_argument("--no-lsq", action="store_true", help="leave out LocalSearchQuantizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--png", help="draw the curves")
    p.add_argument(
        "--index", type=int, default=0, metavar="Q",
        help="also compare the recall@10 of a flat index on the quality model and on FAISS's "
        "best RQ codebooks, for Q held-out queries (0: not run)",
    )  # fmt: skip
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.environ["VIVA_GLYPH_NUM_THREADS"] = str(args.threads)
    print(f"CPU {cpu()}; load average {os.getloadavg()[0]:.1f}; {args.threads} threads; "
          f"faiss {faiss.__version__}, viva-glyph {vg.__version__}")  # fmt: skip
    allrows: list[dict[str, Any]] = []
    for name in args.sets:
        d = {"digits": 64, "patches": 64, "minilm": 384, "lsa": 384}.get(name, 128)
        methods: list[Method] = [FaissRQ(d, int(b)) for b in args.faiss_train_beams.split(",")]
        if not args.no_lsq:
            methods.append(FaissLSQ(d))
        methods.append(FaissOPQ(d))
        methods += [Ours(p, args.seed) for p in args.presets.split(",")]
        rows = run_set(name, methods, args)
        show(name, rows)
        if args.index:
            train, test, _ = quality_data.load(name)
            found = index_recall(name, methods, train, test, args.index)
            print("\n| index (flat, float norms, codes at beam 32) | recall@10 |\n|---|---|")
            for r in found:
                print(f"| {r['method']} | {r['recall10']:.4f} |")
        allrows += rows
        if args.json:
            Path(args.json).write_text(json.dumps(allrows, indent=1))
    if args.png:
        plot(allrows, args.png)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
