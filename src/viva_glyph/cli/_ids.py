"""``viva-glyph ids fit|assign|eval``: semantic IDs from the command line.

Registered by :func:`viva_glyph.cli.build_parser`; errors are ValueError /
OSError, which the main entry point reports in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from viva_glyph.checks import optional_import
from viva_glyph.cli._args import (
    DATA_HELP,
    check_packages,
    codebook_sizes,
    command_group,
    non_negative_number,
    positive,
)
from viva_glyph.files import check_distinct, check_output, not_regular

__all__ = ["register"]

EXAMPLES = {
    "fit": "example:\n  viva-glyph ids fit items.npy -o ids.safetensors --codebook-size 256",
    "assign": "example:\n  viva-glyph ids assign ids.safetensors items.npy -o ids.parquet "
    "--keys keys.txt --store ids.sqlite",
    "eval": "example:\n  viva-glyph ids eval ids.safetensors items.npy --plot ids.png",
    "lookup": "example:\n  viva-glyph ids lookup ids.sqlite item-17 item-42"
    "\n  viva-glyph ids lookup ids.sqlite --id '<a_3><b_12><c_0><d_1>' 3,12,0,2",
}


def _resolve_options(p: argparse.ArgumentParser) -> None:
    """``--resolve`` and ``--candidates``, as ``assign`` and ``eval`` take them."""
    p.add_argument(
        "--resolve",
        choices=("suffix", "reassign"),
        default="suffix",
        help="unique IDs of colliding items: a suffix, or a free last-level code (suffix)",
    )
    p.add_argument(
        "--candidates", type=positive, default=32, help="reassign: last-level codes tried (32)"
    )


def register(subparsers: Any) -> None:
    """Add the ``ids`` command (with ``fit``, ``assign``, ``eval``) to ``subparsers``."""
    group = command_group(
        subparsers,
        "ids",
        "semantic IDs: unique, prefix-meaningful token IDs for items",
        description="Semantic IDs: unique, prefix-meaningful token IDs for items.",
        examples=EXAMPLES,
        quiet_help="no notes",
    )

    def add(name: str, help: str) -> Any:
        p = group(name, help)
        p.add_argument("--key", help="array name in a .npz, column in a .parquet")
        return p

    p = add("fit", "fit a semantic-ID model and write it (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--levels", type=positive, default=3, help="levels L (3)")
    p.add_argument(
        "--codebook-size",
        type=codebook_sizes,
        default=256,
        help="K, or one per level: 16,256,256 (256)",
    )
    p.add_argument("--metric", choices=("l2", "cosine"), default="l2", help="l2 or cosine (l2)")
    p.add_argument(
        "--balance", type=non_negative_number, help="cluster bound (1 + B) N / K per level"
    )
    p.add_argument("--beam", type=positive, default=1, help="beam width (1)")
    p.add_argument("--suffix-size", type=positive, help="suffix range (the last K)")
    p.add_argument(
        "--normalize-residuals",
        action="store_true",
        help="unit-length residual before every level after the first (--metric cosine)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(func=cmd_fit)

    p = add("assign", "unique IDs of items: key, tokens, token string (.parquet or .csv)")
    p.add_argument("model", help="semantic-ID model (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="IDs to write: .parquet or .csv")
    p.add_argument("--keys", help="text file, one key per line (default: row numbers)")
    p.add_argument(
        "--store", help="SQLite ID store: keep stored keys' IDs, add new ones (needs --keys)"
    )
    _resolve_options(p)
    p.add_argument(
        "--suffix-size",
        type=positive,
        metavar="N",
        help="number colliding items up to N (default: the model's suffix range)",
    )
    p.add_argument("--trie", action="store_true", help="save the IDs' prefix trie in the model")
    p.set_defaults(func=cmd_assign)

    p = add("eval", "collisions, code usage, neighbour preservation and error of the IDs")
    p.add_argument("model", help="semantic-ID model (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    _resolve_options(p)
    p.add_argument("--sample", type=positive, default=2000, help="items for k-NN (2000)")
    p.add_argument("--k", type=positive, default=10, help="neighbours per item, < N (10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="write a plot")
    p.set_defaults(func=cmd_eval)

    p = group("lookup", "the IDs of stored keys, or (--id) the keys of IDs, in an ID store")
    p.add_argument("store", help="SQLite ID store (read only, never created)")
    p.add_argument(
        "values",
        nargs="+",
        metavar="KEY",
        help="keys; with --id, IDs as token strings (<a_3><b_12><c_0>) or numbers (3,12,0)",
    )
    p.add_argument(
        "--id", dest="by_id", action="store_true", help="look up IDs and print their keys"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_lookup)


def _data(path: str, key: str | None) -> Any:
    from viva_glyph.files import open_vectors

    return open_vectors(path, key=key).array()


def cmd_fit(args: argparse.Namespace) -> int:
    """``ids fit``."""
    from viva_glyph import semantic

    check_output(args.output, (".safetensors",), {"data": args.data})
    check_packages(args.output)
    ids = semantic.fit(
        _data(args.data, args.key),
        levels=args.levels,
        codebook_size=args.codebook_size,
        metric=args.metric,
        balance=args.balance,
        beam_size=args.beam,
        suffix_size=args.suffix_size,
        normalize_residuals=args.normalize_residuals,
        seed=args.seed,
    )
    ids.save(args.output)
    if not args.quiet:
        print(f"wrote {args.output}: {ids!r} in {ids.training['seconds']:.2f} s")
    return 0


def _read_keys(path: str | None, n: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(n)]
    what = not_regular(os.stat(path).st_mode)
    if what is not None:  # a named pipe without a writer would block the read forever
        raise ValueError(f"--keys {path} is {what}, not a file of keys (one per line)")
    with open(path, "rb") as fh:
        lines = fh.read().removeprefix(b"\xef\xbb\xbf").splitlines()  # a UTF-8 BOM is no key
    keys = []
    for i, line in enumerate(lines):
        try:
            keys.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {i + 1} is not UTF-8 text: {line[:40]!r}") from None
    if len(keys) != n:
        raise ValueError(f"{path} holds {len(keys)} keys, but the data has {n} rows")
    if len(set(keys)) != n:
        raise ValueError(f"{path}: keys must be distinct")
    return keys


def cmd_assign(args: argparse.Namespace) -> int:
    """``ids assign``."""
    from viva_glyph import semantic

    inputs = {"model": args.model, "data": args.data, "keys": args.keys}
    check_output(args.output, (".parquet", ".csv"), {**inputs, "ID store": args.store})
    check_packages(args.output, args.model if args.trie else None)
    if args.trie:  # the model file is written too: its folder must take it, before any work
        check_output(args.model, (".safetensors",))
    if args.store is not None:
        check_distinct(args.store, inputs, "ID store")
    if args.store is not None and args.keys is None:
        # row numbers as keys would give another file's rows the stored rows' IDs
        raise ValueError("--store keeps IDs by key: give --keys (a file of one key per line)")
    ids = semantic.load(args.model)
    if args.suffix_size is not None:
        ids = ids.with_suffix_size(args.suffix_size)
    x = _data(args.data, args.key)
    keys = _read_keys(args.keys, x.shape[0])
    try:
        if args.store is not None:
            if args.resolve != "suffix":
                raise ValueError("--store numbers colliding items by suffix: drop --resolve")
            with semantic.IdStore(args.store) as store:
                uids = store.assign(ids, x, keys)
        else:
            uids = ids.unique(x, keys=keys, resolve=args.resolve, candidates=args.candidates)
    except semantic.SuffixRangeError as exc:
        if exc.needed is None:
            raise
        raise semantic.SuffixRangeError(
            f"{exc} (from the command line: rerun with --suffix-size {exc.needed})",
            needed=exc.needed,
        ) from None
    tokens = ids.tokens(uids)
    _write_ids(args.output, keys, uids, tokens)
    if args.trie:
        ids.build_trie(uids)
        ids.save(args.model)
    if not args.quiet:
        print(f"wrote {len(keys)} IDs to {args.output}")
    return 0


def _write_ids(path: str, keys: list[str], uids: np.ndarray, tokens: list[str]) -> None:
    from viva_glyph.files import atomic_output

    suffix = Path(path).suffix.lower()
    with atomic_output(path, suffix) as tmp:
        if suffix == ".parquet":
            pa = optional_import("pyarrow", "writing Parquet")
            pq = optional_import("pyarrow.parquet", "writing Parquet")

            table = pa.table(
                {
                    "key": pa.array(keys, pa.string()),
                    "tokens": pa.array(uids.astype(np.int32).tolist(), pa.list_(pa.int32())),
                    "token_string": pa.array(tokens, pa.string()),
                }
            )
            pq.write_table(table, tmp)
        else:
            import csv

            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["key", "tokens", "token_string"])
                for key, row, text in zip(keys, uids.tolist(), tokens, strict=True):
                    writer.writerow([key, " ".join(map(str, row)), text])


def cmd_eval(args: argparse.Namespace) -> int:
    """``ids eval``."""
    from viva_glyph import semantic

    if args.plot is not None:
        check_output(args.plot, (".png",), {"model": args.model, "data": args.data})
        check_packages(args.plot)
    ids = semantic.load(args.model)
    x = _data(args.data, args.key)
    if args.k >= x.shape[0]:
        raise ValueError(f"--k must be below the {x.shape[0]} items, got {args.k}")
    uids = ids.unique(x, resolve=args.resolve, candidates=args.candidates)
    report = semantic.evaluate(x, uids, ids, k=args.k, sample=args.sample)
    print(report.to_json() if args.json else report.table())
    if args.plot is not None:
        report.plot(args.plot)
    return 0


def _parse_id(text: str) -> str | list[int]:
    """One ID of the command line: a token string, or its numbers (``3,12,0`` or ``3 12 0``)."""
    if text.lstrip().startswith("<"):
        return text.strip()
    parts = text.replace(",", " ").split()
    try:
        return [int(v) for v in parts]
    except ValueError:
        raise ValueError(
            f"--id {text!r} is neither a token string (<a_3><b_12><c_0>) nor numbers (3,12,0)"
        ) from None


def cmd_lookup(args: argparse.Namespace) -> int:
    """``ids lookup``: key -> ID, or with ``--id`` ID -> key."""
    import json
    import os

    from viva_glyph import semantic
    from viva_glyph.cli._commands import _printable

    if not os.path.exists(args.store):
        raise FileNotFoundError(2, "no such file", args.store)
    with semantic.IdStore(args.store, create=False) as store:
        try:
            if args.by_id:
                if store.radices is None:
                    raise ValueError(f"{args.store} holds no IDs yet")
                uids = [
                    store.parse([v])[0].tolist() if isinstance(v, str) else v
                    for v in map(_parse_id, args.values)
                ]
                keys = store.keys_of(uids)
                rows: list[dict[str, Any]] = [
                    {"id": [int(c) for c in u], "key": k} for u, k in zip(uids, keys, strict=True)
                ]
            else:
                got = store.get(args.values)
                rows = [{"key": k, "id": u} for k, u in zip(args.values, got.tolist(), strict=True)]
        except KeyError as exc:  # an unknown key or ID: bad input, one line
            raise ValueError(str(exc.args[0])) from None
        tokens = store.tokens([r["id"] for r in rows])
    for row, text in zip(rows, tokens, strict=True):
        row["tokens"] = text
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        key = "(retired)" if row["key"] is None else _printable(str(row["key"]))
        print(f"{row['tokens']}\t{key}" if args.by_id else f"{key}\t{row['tokens']}")
    return 0
