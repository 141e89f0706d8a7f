"""Semantic IDs: viva-glyph vs semantic-id 0.2.5 RQKMeans vs FAISS RQ + suffix token.

Every method fits 3 levels x 256 codes on the same data, in this process;
fit times are medians of ``--repeats`` interleaved runs (``semantic-id``, whose
fit is ~20x slower than the others at 50,000 rows, runs ``--peer-repeats``
times, in the first rounds; every table says how many runs each median has),
quality figures come from the last run (all seeded) and are computed by one function
(:func:`viva_glyph.semantic.evaluate` on each method's own codebooks and codes):

- collision rate ``1 - unique/N`` of the 3 level codes (before any suffix),
  share of items in a shared glyph, largest group;
- MSE per component of the reconstruction;
- neighbour preservation: share of each item's 10 nearest neighbours (exact,
  2,000 sampled items) that share its first token, and their mean common prefix;
- largest first-level cluster in units of N/K.

Also: semantic-id with its default ``n_init=10`` (once, at ``--default-n``
rows: it is ~10x slower), its ``implementation="constrained"`` where it runs,
the time of ``unique`` (suffix resolution) for 1,000,000 items beyond
encoding, and the balanced-assignment solver against the exact optimum.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_semantic_ids.py``
(``--n 50000`` for the full clustered set; defaults are for a quick look).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from viva_glyph import semantic
from viva_glyph.core.codebook import Codebook
from viva_glyph.semantic._balance import balanced_assign, capacity, sq_distances
from viva_glyph.semantic._unique import check_range, suffix_ranks

LEVELS, K = 3, 256


def clustered(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    """Unit-norm embeddings with topic structure: 64 topics x 16 subtopics, noise."""
    return clustered_subtopics(n, d, seed)[0]


def clustered_subtopics(n: int, d: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clustered` (N, D) float32 and each row's subtopic (N,) int in [0, 1024).

    Subtopic sizes are Zipf(1.6): at N = 50,000, seed 0, the largest holds 26,335
    rows (53%) and the next ones 8,589, 3,475, 1,616.
    """
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(64, d))
    sub = topics[:, None, :] + 0.6 * rng.normal(size=(64, 16, d))
    sub = sub.reshape(-1, d)
    weights = rng.zipf(1.6, sub.shape[0]).astype(np.float64)
    pick = rng.choice(sub.shape[0], n, p=weights / weights.sum())
    x = sub[pick] + 0.9 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), pick


def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


#: Codes of each method's last run (for the unique timing).
LAST_CODES: dict[str, np.ndarray] = {}

Fit = Callable[[np.ndarray], tuple[list[np.ndarray], np.ndarray]]


def viva(balance: float | None, seed: int = 0) -> Fit:
    def run(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        ids = semantic.fit(x, levels=LEVELS, codebook_size=K, balance=balance, seed=seed)
        return [b.vectors64 for b in ids.codebooks], ids.codes(x, balanced=balance is not None)

    return run


def semantic_id(n_init: int, implementation: str = "kmeans", seed: int = 0) -> Fit:
    def run(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        from semantic_id import RQKMeans

        model = RQKMeans(
            n_levels=LEVELS,
            n_clusters=K,
            implementation=implementation,
            random_state=seed,
            n_init=n_init,
        )
        model.fit(x)
        return [np.asarray(c, dtype=np.float64) for c in model.codebooks_], model.encode(x)

    return run


def faiss_rq(seed: int | None = None) -> Fit:
    """FAISS ResidualQuantizer at its defaults (beam 5); ``seed`` sets its k-means seed
    (None: FAISS's default, 1234)."""

    def run(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        import faiss

        rq = faiss.ResidualQuantizer(x.shape[1], LEVELS, 8)
        if seed is not None:
            rq.cp.seed = seed
        rq.train(x)
        codes = rq.compute_codes(x)  # 8 bits per level: one byte each
        books = faiss.vector_to_array(rq.codebooks).reshape(LEVELS, K, x.shape[1])
        return [b.astype(np.float64) for b in books], codes

    return run


def quality(x: np.ndarray, books: list[np.ndarray], codes: np.ndarray) -> dict[str, float]:
    ids = semantic.SemanticIds([Codebook(b, dtype=np.float32) for b in books])
    rep = semantic.evaluate(x, np.asarray(codes, dtype=np.int64), ids, sample=2000)
    n = x.shape[0]
    return {
        "collision_rate": rep.collision_rate,
        "shared_share": rep.shared_share,
        "largest_group": rep.largest_group,
        "mse": rep.mse,
        "first_token_share": rep.first_token_share,
        "mean_common_prefix": rep.mean_common_prefix,
        "largest_l1_over_n_per_k": float(np.bincount(codes[:, 0]).max() / (n / K)),
    }


def compare(
    x: np.ndarray, methods: dict[str, Fit], repeats: int, runs: dict[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds: round r runs every method with more than r runs (default repeats)."""
    count = {m: (runs or {}).get(m, repeats) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    last: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    for r in range(max(count.values())):
        for name, fit in methods.items():
            if r >= count[name]:
                continue
            t = time.perf_counter()
            last[name] = fit(x)
            times[name].append(time.perf_counter() - t)
            print(f"  {name}: run {r + 1} {times[name][-1]:.2f} s", flush=True)
    out = {}
    LAST_CODES.update({name: codes for name, (_, codes) in last.items()})
    for name in methods:
        out[name] = {
            "fit_s": statistics.median(times[name]),
            "runs": len(times[name]),
            "times": times[name],
            **quality(x, *last[name]),
        }
    return out


SPREAD = ("mse", "collision_rate", "first_token_share", "largest_l1_over_n_per_k")


def seed_spread(
    x: np.ndarray, seeds: int, methods: dict[str, Callable[[int], Fit]] | None = None
) -> dict[str, dict[str, list[float]]]:
    """The :data:`SPREAD` figures of each method for seeds 0..seeds-1 (default methods:
    viva-glyph and semantic-id n_init=1).

    On a small set one seed's comparison is a coin flip (load_digits: 3 to 7 colliding
    items for either library); the spread shows where each one lies.
    """
    if methods is None:
        methods = {
            "viva-glyph": lambda s: viva(None, s),
            "semantic-id n_init=1": lambda s: semantic_id(1, seed=s),
        }
    out: dict[str, dict[str, list[float]]] = {}
    for name, make in methods.items():
        rows: dict[str, list[float]] = {key: [] for key in SPREAD}
        for seed in range(seeds):
            q = quality(x, *make(seed)(x))
            for key in SPREAD:
                rows[key].append(q[key])
            print(f"  {name}: seed {seed}", flush=True)
        out[name] = rows
    return out


def spread_table(title: str, res: dict[str, dict[str, list[float]]], base: str) -> str:
    """Mean, min, max of each :data:`SPREAD` figure (the MSE as a ratio to ``base``'s,
    seed by seed)."""
    ref = res[base]["mse"]
    heads = {
        "mse": f"MSE / {base} (same seed)",
        "collision_rate": "collision rate",
        "first_token_share": "first-token share (10-NN)",
        "largest_l1_over_n_per_k": "largest L1 / (N/K)",
    }
    lines = [
        f"### {title}",
        "",
        "| method | " + " | ".join(f"{heads[k]}: mean, min, max" for k in SPREAD) + " |",
        "|---|" + "---|" * len(SPREAD),
    ]
    for name, r in res.items():
        cells = []
        for key in SPREAD:
            v = [m / b for m, b in zip(r[key], ref, strict=True)] if key == "mse" else r[key]
            f = ".2f" if key == "largest_l1_over_n_per_k" else ".4f"
            cells.append(", ".join(format(a, f) for a in (statistics.mean(v), min(v), max(v))))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unique_timing(codes: np.ndarray, n: int, repeats: int) -> float:
    """Seconds of suffix resolution (sort, rank, range check) for n items, beyond encoding."""
    rng = np.random.default_rng(0)
    big = codes[rng.integers(0, codes.shape[0], n)]
    err = rng.random(n)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        rank, size = suffix_ranks(big, err, None)
        check_range(rank, size, 1 << 30)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def balance_solver(seed: int = 1) -> dict[str, float]:
    """Auction + repair vs the exact min-cost assignment (scipy), n=3000, K=64, balance 0."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(seed)
    n, k = 3000, 64
    x = rng.normal(size=(n, 16))
    x[: n // 4] *= 0.3
    c = x[rng.choice(n, k, replace=False)]
    cap = capacity(n, k, 0.0)
    d = sq_distances(x, c)
    t = time.perf_counter()
    labels = balanced_assign(x, c, cap)
    t_auction = time.perf_counter() - t
    big = np.repeat(d, cap, axis=1)
    t = time.perf_counter()
    r, cols = linear_sum_assignment(big)
    t_exact = time.perf_counter() - t
    return {
        "cost_ratio": float(d[np.arange(n), labels].sum() / big[r, cols].sum()),
        "auction_s": t_auction,
        "exact_s": t_exact,
    }


def table(title: str, res: dict[str, dict[str, Any]], base: str, ref: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"| method | fit s (median) | runs | fit / {ref} | collision rate | in shared glyph | "
        "largest group | "
        "MSE / "
        + base
        + " | first-token share (10-NN) | common prefix (10-NN) | largest L1 / (N/K) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        lines.append(
            f"| {name} | {r['fit_s']:.2f} | {r['runs']} | {r['fit_s'] / res[ref]['fit_s']:.2f} | "
            f"{r['collision_rate']:.4f} | {r['shared_share']:.4f} | {r['largest_group']} | "
            f"{r['mse'] / res[base]['mse']:.3f} | {r['first_token_share']:.3f} | "
            f"{r['mean_common_prefix']:.3f} | {r['largest_l1_over_n_per_k']:.2f} |"
        )
    return "\n".join(lines)


def show(text: str) -> None:
    print(f"\n{text}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="rows of the clustered set (20000)")
    ap.add_argument("--default-n", type=int, default=2_000, help="rows for n_init=10 (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of viva-glyph and FAISS (3)")
    ap.add_argument(
        "--peer-repeats",
        type=int,
        default=1,
        help="runs of semantic-id n_init=1 on the clustered set",
    )
    ap.add_argument("--balance", type=float, default=0.5, help="viva balanced setting (0.5)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the load_digits spread (5)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    methods: dict[str, Fit] = {
        "viva-glyph": viva(None),
        f"viva-glyph balance={args.balance}": viva(args.balance),
        "semantic-id n_init=1": semantic_id(1),
        "FAISS RQ (beam 5) + suffix": faiss_rq(),
    }
    results: dict[str, Any] = {"args": vars(args)}
    sid = "semantic-id n_init=1"
    x = clustered(args.n)
    res = compare(x, methods, args.repeats, {sid: args.peer_repeats})
    results["clustered"] = res
    show(table(f"clustered {args.n} x 384", res, sid, sid))
    codes = LAST_CODES["viva-glyph"]
    res = compare(digits(), methods, args.repeats)
    results["digits"] = res
    show(table("load_digits 1797 x 64", res, sid, sid))
    if args.seeds:
        spread = seed_spread(digits(), args.seeds)
        results["digits_seeds"] = spread
        show(spread_table(f"load_digits, seeds 0-{args.seeds - 1}", spread, sid))
    if args.default_n:
        small = {"viva-glyph": viva(None), "semantic-id default n_init=10": semantic_id(10)}
        res = compare(clustered(args.default_n, seed=1), small, args.repeats, {list(small)[1]: 1})
        results["default_n_init"] = res
        title = f"reduced: clustered {args.default_n} x 384 (semantic-id default: one run)"
        show(table(title, res, "viva-glyph", "viva-glyph"))
    con = {
        "viva-glyph balance=0": viva(0.0),
        "semantic-id constrained n_init=1": semantic_id(1, "constrained"),
    }
    try:
        res = compare(clustered(2000, seed=2), con, 1)
        results["constrained"] = res
        show(table("constrained, clustered 2000 x 384, one run", res, *list(con)[:1] * 2))
    except Exception as exc:  # semantic-id's constrained mode is reported to fail
        results["constrained"] = f"{type(exc).__name__}: {exc}"
        show(f"semantic-id constrained failed: {results['constrained'][:200]}")
    t = unique_timing(codes, 1_000_000, args.repeats)
    results["unique_1m_s"] = t
    show(f"unique (suffix resolution) of 1,000,000 items beyond encoding: {t:.3f} s")
    results["balance_solver"] = balance_solver()
    show(
        "balanced assignment, auction + repair vs exact min-cost (3000 x 64, balance 0): "
        + json.dumps(results["balance_solver"])
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
