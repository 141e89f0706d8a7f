"""``viva-glyph index build|search|info``: search over RVQ codes from the command line.

:func:`register` adds the ``index`` command to the parser of :mod:`viva_glyph.cli._main`,
whose ``main`` reports bad input in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import has_package, optional_import
from viva_glyph.cli._args import DATA_HELP, check_packages, command_group, positive
from viva_glyph.files import check_output

__all__ = ["register"]

EXAMPLES = {
    "build": "example:\n  viva-glyph index build model.safetensors vectors.npy -o vectors.vgindex "
    "--norm qint8",
    "search": "example:\n  viva-glyph index search vectors.vgindex queries.npy -k 10 "
    "-o results.parquet --rerank 100 --vectors vectors.npy",
    "info": "example:\n  viva-glyph index info vectors.vgindex",
}


def _progress(args: argparse.Namespace, total: int, desc: str) -> Any:
    from viva_glyph.metrics import progress_bar

    show = not args.quiet and sys.stderr.isatty() and has_package("tqdm")
    return progress_bar(total, show, desc)


def _open(path: str, key: str | None, dimension: int) -> NDArray[Any]:
    from viva_glyph.files import open_vectors

    source = open_vectors(path, key=key)
    if source.shape[1] != dimension:
        raise ValueError(
            f"{path} holds vectors of dimension {source.shape[1]}, but the index/model "
            f"expects dimension {dimension}"
        )
    arr: NDArray[Any] = source.array()
    return arr


def _named(path: str, exc: ValueError) -> ValueError:
    """Name the data file rather than the argument ("X ..." / "Q ...") in an error."""
    text = str(exc)
    for arg in ("X ", "Q "):
        if text.startswith(arg):
            return ValueError(f"{path} {text[2:]}")
    return exc


def cmd_build(args: argparse.Namespace) -> int:
    from viva_glyph.core import load
    from viva_glyph.index import RvqIndex

    check_output(args.output, (".vgindex",), {"model": args.model, "data": args.data})
    encoder = load(args.model)
    index = RvqIndex(
        encoder, metric=args.metric, norm=args.norm, beam_size=args.beam, nlist=args.nlist
    )
    X = _open(args.data, args.key, encoder.config.dimension)
    bar = _progress(args, X.shape[0], "index build")
    done = [0]

    def step(rows: int) -> None:
        if bar is not None:
            bar.update(rows - done[0])
        done[0] = rows

    try:
        index.add(X, progress=step)
    except ValueError as exc:
        raise _named(args.data, exc) from exc
    finally:
        if bar is not None:
            bar.close()
    index.save(args.output)
    if not args.quiet:
        print(f"wrote {args.output}: {len(index)} vectors, {_describe(index)}")
    return 0


def _describe(index: Any) -> str:
    c = index.encoder.config
    ivf = f", IVF {index.nlist} lists" if index.nlist else ""
    return (
        f"{c.num_stages} stages x {c.codebook_size} codes, dimension {c.dimension}, "
        f"metric {index.metric}, norm {index.norm}{ivf}"
    )


def cmd_search(args: argparse.Namespace) -> int:
    from viva_glyph.index import load

    inputs = {"index": args.index, "queries": args.queries, "vectors": args.vectors}
    check_output(args.output, (".parquet", ".npz"), inputs)
    check_packages(args.output)
    index = load(args.index)
    Q = np.asarray(_open(args.queries, args.key, index.dimension))
    most = max(len(index), 1)
    if args.k > most:  # every column past the index's size would be empty
        if args.rerank is not None and args.rerank < args.k:
            raise ValueError(f"--rerank must be >= -k ({args.k}), got {args.rerank}")
        if not args.quiet:
            print(
                f"viva-glyph: note: -k {args.k} is more than the {len(index)} vectors of "
                f"{args.index}; writing {most} neighbours per query",
                file=sys.stderr,
            )
        args.k = most
    if args.vectors is not None and args.rerank is None:
        raise ValueError("--vectors is only used with --rerank R")
    vectors = None
    if args.vectors is not None:
        vectors = _open(args.vectors, None, index.dimension)
    bar = _progress(args, Q.shape[0], "index search")
    parts = []
    try:
        for a in range(0, Q.shape[0], args.batch):
            try:
                parts.append(
                    index.search(
                        Q[a : a + args.batch],
                        args.k,
                        nprobe=args.nprobe,
                        rerank=args.rerank,
                        vectors=vectors,
                    )
                )
            except ValueError as exc:
                raise _named(args.queries, exc) from exc
            if bar is not None:
                bar.update(min(args.batch, Q.shape[0] - a))
    finally:
        if bar is not None:
            bar.close()
    dist = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, args.k), np.float32)
    ids = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, args.k), np.int64)
    _write_results(args.output, dist, ids)
    if not args.quiet:
        print(f"wrote {args.output}: {ids.shape[0]} queries x {args.k} neighbours")
    return 0


def _write_results(path: str, dist: NDArray[np.float32], ids: NDArray[np.int64]) -> None:
    """``.npz`` (arrays distances, ids) or ``.parquet`` (query, ids, distances), atomically."""
    from viva_glyph.files import atomic_output

    with atomic_output(path, Path(path).suffix) as tmp:
        if path.lower().endswith(".npz"):
            with open(tmp, "wb") as fh:
                np.savez(fh, distances=dist, ids=ids)
            return
        pa = optional_import("pyarrow", "writing Parquet")
        pq = optional_import("pyarrow.parquet", "writing Parquet")

        k = ids.shape[1]
        table = pa.table(
            {
                "query": pa.array(np.arange(ids.shape[0], dtype=np.int64)),
                "ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), k),
                "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.ravel()), k),
            }
        )
        pq.write_table(table, tmp)


def cmd_info(args: argparse.Namespace) -> int:
    from viva_glyph.index import load

    index = load(args.index)
    c = index.encoder.config
    store = index.store
    per_vector = c.num_stages * index.encoder.code_dtype.itemsize + 8
    per_vector += 0 if store.norms is None else store.norms.dtype.itemsize
    info = {
        "file": args.index,
        "file_bytes": os.path.getsize(args.index),
        "vectors": len(index),
        "num_stages": c.num_stages,
        "codebook_size": c.codebook_size,
        "dimension": c.dimension,
        "metric": index.metric,
        "norm": index.norm,
        "beam_size": index.beam_size,
        "nlist": index.nlist or 0,
        "bytes_per_vector": per_vector,
    }
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``index build|search|info`` to the sub-parsers of the ``viva-glyph`` parser."""
    group = command_group(
        subparsers,
        "index",
        "build and search an index of RVQ codes",
        description="build and search an index of RVQ codes (see 'viva-glyph index ACTION --help')",
        examples=EXAMPLES,
        quiet_help="no progress bar or notes",
    )

    def add(name: str, help: str) -> Any:
        p = group(name, help)
        p.set_defaults(func=globals()[f"cmd_{name}"])
        return p

    p = add("build", "encode vectors into an index file (.vgindex)")
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="index file to write (.vgindex)")
    p.add_argument("--metric", choices=("l2", "ip", "cosine"), default="l2", help="(l2)")
    p.add_argument(
        "--norm",
        choices=("float", "qint8", "cqint8", "lut", "none"),
        default="float",
        help="(float)",
    )
    p.add_argument("--nlist", type=positive, help="IVF lists (default: flat index)")
    p.add_argument("--beam", type=positive, help="beam width to encode (default: the model's)")
    p.add_argument("--key", help="array name in a .npz, column in a .parquet")

    p = add("search", "find the k nearest stored vectors of each query")
    p.add_argument("index", help="index file (.vgindex)")
    p.add_argument("queries", help=DATA_HELP)
    p.add_argument("-k", type=positive, default=10, help="neighbours per query (10)")
    p.add_argument("-o", "--output", required=True, help="results: .parquet or .npz")
    p.add_argument("--nprobe", type=positive, default=1, help="IVF lists probed (1)")
    p.add_argument("--rerank", type=positive, metavar="R", help="re-score the best R exactly")
    p.add_argument("--vectors", help="original vectors (row = id) for --rerank")
    p.add_argument("--batch", type=positive, default=1000, help="queries per batch (1000)")
    p.add_argument("--key", help="array name in a .npz, column in a .parquet")

    p = add("info", "show what an index file holds")
    p.add_argument("index", help="index file (.vgindex)")
    p.add_argument("--json", action="store_true", help="print JSON")
