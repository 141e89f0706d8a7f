"""First-token neighbour share against MSE on the semantic-ID sets, over seeds.

Why viva-glyph's first-token share (of each item's 10 nearest neighbours, the
share with its first token) stays below FAISS's on the clustered set while its
MSE is lower: every method fits 3 levels x 256 with seeds 0..S-1, and the table
gives the mean, min and max of each figure (one seed's comparison is a coin
flip at these margins):

- viva-glyph at its defaults;
- **non-default, a benchmark-only variant:** viva-glyph with level 0 seeded by
  K random rows and Lloyd to convergence (FAISS's density-proportional seeding
  in place of k-means++; the later levels unchanged), to see what the share
  costs when bought by FAISS's seeding;
- ``semantic-id`` 0.2.5 ``RQKMeans(n_init=1)``, the MSE reference (same seed);
- FAISS RQ at its defaults (beam 5), ``cp.seed`` = the seed.

The third set is real text: the docstrings of Python's standard library and
of the installed numpy, scipy, scikit-learn and torch (distinct texts of over
80 characters; the count depends on the installed versions, which the output
names), as 384-D LSA embeddings (TF-IDF, truncated SVD, unit length): many
near-duplicate texts, dense topics, no planted structure.

On the clustered set it also prints, for the four largest subtopics, how many
first-level codes each method spreads them over and the sum of squared code
shares (the first-token share of an item of a noise ball, whose nearest
neighbours are nearly random within it), and the share by subtopic size.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/semantic_share.py
--n 50000 --seeds 5`` (about half an hour on 2 cores; semantic-id takes most).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import itertools
import json
import pkgutil
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from bench_semantic_ids import (
    Fit,
    clustered_subtopics,
    digits,
    faiss_rq,
    seed_spread,
    semantic_id,
    show,
    spread_table,
    viva,
)

import viva_glyph.semantic._fit as semantic_fit
from viva_glyph.train.kmeans import lloyd

SID = "semantic-id n_init=1"
RANDOM = "viva-glyph, level 0 random-row seeds (non-default)"


@contextmanager
def random_level0() -> Iterator[None]:
    """Level 0 of ``semantic.fit`` seeded by K random rows (then Lloyd as usual)."""
    default = semantic_fit.level_kmeans

    def level_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, level: int) -> np.ndarray:
        if level > 0:
            return default(x, k, rng, level)
        init = x[np.sort(rng.choice(x.shape[0], k, replace=False))]
        cent, _, _ = lloyd(
            x, k, iterations=semantic_fit.ITERATIONS, tol=semantic_fit.TOL, rng=rng, init=init
        )
        return cent

    semantic_fit.level_kmeans = level_kmeans
    try:
        yield
    finally:
        semantic_fit.level_kmeans = default


def random_viva(seed: int) -> Fit:
    fit = viva(None, seed)

    def run(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        with random_level0():
            return fit(x)

    return run


METHODS: dict[str, Callable[[int], Fit]] = {
    "viva-glyph": lambda s: viva(None, s),
    RANDOM: random_viva,
    SID: lambda s: semantic_id(1, seed=s),
    "FAISS RQ (beam 5)": lambda s: faiss_rq(s),
}


DOC_PACKAGES = ("numpy", "scipy", "sklearn", "torch")
#: What changes from run to run inside a docstring: memory addresses in object reprs and
#: the decimals of examples drawn at import (scipy.stats).
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
DECIMAL = re.compile(r"\d+\.\d+(?:[eE][+-]?\d+)?")


def _collect(obj: object, where: str, docs: dict[str, str], depth: int = 0) -> None:
    """Docstrings (over 80 characters) of the public classes and routines of ``obj``."""
    try:
        members = inspect.getmembers(obj)
    except Exception:
        return
    for name, member in members:
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        doc = inspect.getdoc(member)
        if doc:
            doc = DECIMAL.sub("0.0", ADDRESS.sub("0x", doc))
        if doc and len(doc) > 80:
            docs.setdefault(doc, f"{where}.{name}")
        if inspect.isclass(member) and depth == 0:
            _collect(member, f"{where}.{name}", docs, 1)


def docstrings(packages: tuple[str, ...] = DOC_PACKAGES) -> tuple[np.ndarray, str]:
    """LSA embeddings (N, 384) float32 of the distinct docstrings of the standard library
    and ``packages``, and a line naming the sources and their versions."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from threadpoolctl import threadpool_limits

    names = [
        n
        for n in sorted(sys.stdlib_module_names)
        if not n.startswith("_")
        and n not in {"antigravity", "this", "idlelib", "tkinter"}
        and not n.startswith("turtle")
    ]
    versions = [f"Python {sys.version.split()[0]}"]
    docs: dict[str, str] = {}
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        for root in packages:
            try:
                pkg = importlib.import_module(root)
            except ImportError:
                continue
            versions.append(f"{root} {getattr(pkg, '__version__', '?')}")
            names.append(root)
            path = getattr(pkg, "__path__", [])
            for info in pkgutil.walk_packages(path, root + ".", onerror=lambda _: None):
                if not any(part.startswith(("_", "test")) for part in info.name.split(".")):
                    names.append(info.name)
        for name in names:
            try:  # optional parts of a package may fail to import, or exit
                module = importlib.import_module(name)
            except (Exception, SystemExit):
                continue
            _collect(module, name, docs)
    texts = sorted(docs)
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english").fit_transform(texts)
    with threadpool_limits(1):  # one BLAS thread: the same embedding in every run
        x = TruncatedSVD(384, random_state=0).fit_transform(tfidf)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32), f"{len(texts):,} docstrings of " + ", ".join(versions)


def allocation(x: np.ndarray, sub: np.ndarray, seed: int, top: int = 4) -> str:
    """Codes per large subtopic and share by subtopic size, seed ``seed``, each method."""
    n = x.shape[0]
    sizes = np.bincount(sub, minlength=int(sub.max()) + 1)
    largest = np.argsort(sizes)[::-1][:top]
    rng = np.random.default_rng(5)
    probe = rng.choice(n, min(n, 2000), replace=False)
    sq = np.einsum("nd,nd->n", x, x)
    dist = sq[probe, None] + sq[None, :] - 2.0 * (x[probe] @ x.T)
    dist[np.arange(probe.size), probe] = np.inf
    nn = np.argpartition(dist, 10, axis=1)[:, :10]
    edges = [0, 100, 1000, 5000, n + 1]
    head = " | ".join(f"subtopic of {sizes[t]:,}: codes, sum p^2" for t in largest)
    buckets = " | ".join(
        f"share, subtopics of {a:,}-{b - 1:,}" if b <= n else f"share, subtopics of {a:,}+"
        for a, b in itertools.pairwise(edges)
    )
    lines = [
        f"### clustered {n} x {x.shape[1]}, seed {seed}: where the first-level codes go",
        "",
        f"| method | {head} | {buckets} |",
        "|---|" + "---|" * (top + len(edges) - 1),
    ]
    for name, make in METHODS.items():
        first = np.asarray(make(seed)(x)[1])[:, 0].astype(np.int64)
        cells = []
        for t in largest:
            c = np.bincount(first[sub == t])
            p = c[c > 0] / c.sum()
            cells.append(f"{p.size}, {float(np.sum(p * p)):.3f}")
        share = (first[nn] == first[probe, None]).mean(axis=1)
        size = sizes[sub[probe]]
        for a, b in itertools.pairwise(edges):
            m = (size >= a) & (size < b)
            cells.append(f"{share[m].mean():.3f} ({int(m.sum())})" if m.any() else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="rows of the clustered set (20000)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (3)")
    ap.add_argument(
        "--sets",
        default="clustered,digits,docstrings,allocation",
        help="comma-separated parts to run (default: clustered,digits,docstrings,allocation)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results: dict[str, object] = {"args": vars(args)}
    sets = set(args.sets.split(","))
    x, sub = clustered_subtopics(args.n)
    if "clustered" in sets:
        spread = seed_spread(x, args.seeds, METHODS)
        results["clustered"] = spread
        show(spread_table(f"clustered {args.n} x 384, seeds 0-{args.seeds - 1}", spread, SID))
    if "digits" in sets:
        spread = seed_spread(digits(), args.seeds, METHODS)
        results["digits"] = spread
        show(spread_table(f"load_digits 1797 x 64, seeds 0-{args.seeds - 1}", spread, SID))
    if "docstrings" in sets:
        text, sources = docstrings()
        show(f"docstrings: {sources}")
        spread = seed_spread(text, args.seeds, METHODS)
        results["docstrings"] = {"sources": sources, **spread}
        title = f"docstrings (LSA) {text.shape[0]} x 384, seeds 0-{args.seeds - 1}"
        show(spread_table(title, spread, SID))
    if "allocation" in sets:
        show(allocation(x, sub, 0))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
