"""The ``viva-glyph`` command line: fit, encode, decode, eval, info, demo.

Exit codes: 0 on success, 2 on a usage or input error (one line
``viva-glyph: error: ...`` on stderr, no traceback), 1 on an unexpected failure.
Progress bars go to stderr, only when it is a terminal and ``--quiet`` is not given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray

from viva_glyph._cli_args import codebook_sizes, non_negative, positive, seconds
from viva_glyph._files import Terminated, check_output, removing_temps_on_signals, terminated_by
from viva_glyph._validate import check_codes, require_finite
from viva_glyph._version import __version__
from viva_glyph.encoder import RvqEncoder

__all__ = ["main"]

PROG = "viva-glyph"
DATA_HELP = "vectors: .npy, .npz, .fvecs, .bvecs, .csv, .tsv, .parquet or .zarr"


class UsageError(Exception):
    """Bad command line or input: reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- helpers ----------------------------------------------------------------------------
def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _bar(total: int, show: bool, desc: str) -> Any:
    from viva_glyph.metrics import progress_bar

    return progress_bar(total, show, desc)


def _load_model(path: str) -> RvqEncoder:
    from viva_glyph.io import load

    return load(path)


def _open_data(args: argparse.Namespace, path: str, dimension: int | None) -> Any:
    from viva_glyph.data import open_vectors

    source = open_vectors(path, key=args.key, header=args.header)
    if dimension is not None and source.shape[1] != dimension:
        raise UsageError(
            f"{path} holds vectors of dimension {source.shape[1]}, "
            f"but the model expects dimension {dimension}"
        )
    return source


def _check_output(path: str, suffixes: Sequence[str]) -> None:
    """Refuse a bad output before any work: suffix, missing folder, a folder in its place."""
    try:
        check_output(path, suffixes)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def _stream(
    args: argparse.Namespace,
    source: Any,
    out: tuple[int, Any],
    step: Callable[[int, NDArray[Any]], NDArray[Any]],
) -> None:
    """Read ``source`` by blocks, transform each, append to ``args.output``.

    ``out`` is (columns, dtype) of the output; the bar is named after the command.
    """
    from viva_glyph.data import open_writer

    bar = _bar(source.shape[0], _show_progress(args), args.command)
    try:
        shape = (source.shape[0], out[0])
        with open_writer(args.output, shape, out[1], chunk_rows=args.block_rows) as writer:
            for start, block in source.blocks(args.block_rows):
                writer.write(step(start, block))
                if bar is not None:
                    bar.update(block.shape[0])
    finally:
        if bar is not None:
            bar.close()


def _dask_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.scheduler is None and args.local_cluster is None:
        return None
    return {
        "scheduler": args.scheduler,
        "local_cluster": args.local_cluster,
        "timeout": args.connect_timeout,
        "quiet": args.quiet,
    }


# -- commands ---------------------------------------------------------------------------
def cmd_fit(args: argparse.Namespace) -> int:
    _check_output(args.output, (".safetensors",))
    kwargs: dict[str, Any] = {
        "num_stages": args.stages,
        "codebook_size": args.codebook_size,
        "beam_size": args.beam,
        "iterations": args.iterations,
        "refine": args.refine,
        "max_samples": args.sample,
        "seed": args.seed,
        "progress": _show_progress(args),
    }
    dask = _dask_options(args)
    if dask is not None:
        from viva_glyph.dask import run_fit

        encoder = run_fit(args.data, **dask, **kwargs)
    else:
        from viva_glyph.training import fit

        source = _open_data(args, args.data, None)
        largest = max(args.codebook_size) if isinstance(args.codebook_size, list) else None
        if source.shape[0] < (largest or args.codebook_size):
            raise UsageError(
                f"{args.data} holds {source.shape[0]} vectors; fitting needs at least "
                f"--codebook-size ({largest or args.codebook_size}"
                f"{', the largest size' if largest else ''})"
            )
        try:
            encoder = fit(source.array(), **kwargs)
        except ValueError as exc:  # name the file rather than the argument "X"
            text = str(exc)
            if text.startswith("X "):
                raise ValueError(f"{args.data} {text[2:]}") from exc
            raise
    encoder.save(args.output)
    if not args.quiet:
        c = encoder.config
        sizes = c.codebook_size if c.uniform else ",".join(map(str, c.stage_sizes))
        print(
            f"wrote {args.output}: {c.num_stages} stages x {sizes} codes, dimension {c.dimension}"
        )
        if encoder.training is not None and encoder.training.stage_mse:
            errors = ", ".join(f"{e:.4g}" for e in encoder.training.stage_mse)
            print(f"training MSE (per component) after each stage: {errors}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    encoder = _load_model(args.model)
    m = encoder.config.num_stages if args.stages is None else args.stages
    if m > encoder.config.num_stages:
        raise UsageError(f"--stages {m} exceeds the model's {encoder.config.num_stages} stages")
    dask = _dask_options(args)
    if dask is not None:
        from viva_glyph.dask import run_encode

        _check_output(args.output, (".npy", ".zarr"))
        run_encode(
            encoder,
            args.data,
            args.output,
            **dask,
            progress=_show_progress(args),
            beam_size=args.beam,
            num_stages=m,
        )
        if not args.quiet:
            print(f"wrote {args.output}: {m} codes per vector ({encoder.code_dtype})")
        return 0
    _check_output(args.output, (".npy", ".parquet", ".zarr"))
    source = _open_data(args, args.data, encoder.config.dimension)

    def step(start: int, block: NDArray[Any]) -> NDArray[Any]:
        require_finite(block, start, args.data)
        return encoder.encode(block, m, beam_size=args.beam)

    _stream(args, source, (m, encoder.code_dtype), step)
    if not args.quiet:
        print(f"wrote {args.output}: {source.shape[0]} x {m} codes ({encoder.code_dtype})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    encoder = _load_model(args.model)
    _check_output(args.output, (".npy", ".zarr"))
    source = _open_data(args, args.codes, None)
    c = encoder.config
    if source.shape[1] > c.num_stages:
        raise UsageError(
            f"{args.codes} holds {source.shape[1]} codes per vector, but the model has "
            f"{c.num_stages} stages"
        )

    def step(start: int, block: NDArray[Any]) -> NDArray[Any]:
        if block.dtype.kind == "f":  # codes from a text file
            whole = np.isfinite(block) & (block == np.round(block))
            if not whole.all():
                row = int(np.flatnonzero(~whole.all(axis=1))[0])
                raise UsageError(
                    f"{args.codes} row {start + row}: codes must be integers, got "
                    f"{block[row][~whole[row]][0]}"
                )
            block = block.astype(np.int64)
        codes = check_codes(block, c.num_stages, c.stage_sizes, args.codes, start_row=start)
        return encoder.decode(codes)

    _stream(args, source, (encoder.config.dimension, encoder.dtype), step)
    if not args.quiet:
        print(f"wrote {args.output}: {source.shape[0]} x {encoder.config.dimension} vectors")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from viva_glyph.metrics import evaluate

    encoder = _load_model(args.model)
    if args.plot is not None:
        _check_output(args.plot, (".png",))
    source = _open_data(args, args.data, encoder.config.dimension)
    report = evaluate(
        encoder,
        source,
        beam_size=args.beam,
        block_rows=args.block_rows,
        progress=_show_progress(args),
        name=args.data,
    )
    print(report.to_json() if args.json else report.table())
    if args.plot is not None:
        report.plot(args.plot)
        if not args.json and not args.quiet:
            print(f"wrote {args.plot}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from viva_glyph.io import read_metadata

    encoder = _load_model(args.model)
    meta = read_metadata(args.model)
    c = encoder.config
    info: dict[str, Any] = {
        "file": args.model,
        "bytes": os.path.getsize(args.model),
        "format": f"{meta['format']} v{meta['format_version']}",
        "library_version": meta["library_version"],
        "num_stages": c.num_stages,
        "codebook_size": c.codebook_size if c.uniform else list(c.stage_sizes),
        "dimension": c.dimension,
        "dtype": str(encoder.dtype),
        "code_dtype": str(encoder.code_dtype),
        "bits_per_vector": c.num_stages * float(np.log2(c.codebook_size))
        if c.uniform
        else float(sum(np.log2(k) for k in c.stage_sizes)),
        "vocabulary": c.vocabulary,
        "training": None if encoder.training is None else encoder.training.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    training = info.pop("training")
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {_printable(str(value))}")
    if training is not None:
        print(f"{'training':<{width}}  {json.dumps(training)}")
    return 0


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters backslash-escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from viva_glyph.demo import run

    run(args.out, force=args.force, progress=_show_progress(args))
    return 0


# -- parser -----------------------------------------------------------------------------
EXAMPLES = {
    "fit": "example:\n  viva-glyph fit vectors.npy -o model.safetensors --stages 8 --sample 100000",
    "encode": "example:\n  viva-glyph encode model.safetensors vectors.npy -o codes.npy --beam 4"
    "\n  viva-glyph encode model.safetensors vectors.parquet -o codes.zarr",
    "decode": "example:\n  viva-glyph decode model.safetensors codes.npy -o decoded.npy",
    "eval": "example:\n  viva-glyph eval model.safetensors vectors.npy --plot report.png",
    "info": "example:\n  viva-glyph info model.safetensors",
    "demo": "example:\n  viva-glyph demo --out demo-run",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``viva-glyph`` (one sub-parser per command)."""
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    blocks = _Parser(add_help=False)
    blocks.add_argument(
        "--block-rows", type=positive, default=1 << 16, help="rows read per block (65536)"
    )
    blocks.add_argument("--key", help="array in a .npz or .zarr group, column in .parquet data")
    header = blocks.add_mutually_exclusive_group()
    header.add_argument(
        "--header",
        action="store_true",
        default=None,
        help=".csv/.tsv: the first row is a header (default: when none of its fields is a number)",
    )
    header.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        help=".csv/.tsv: the first row is data",
    )
    cluster = _Parser(add_help=False)
    group = cluster.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask scheduler")
    group.add_argument(
        "--local-cluster", type=positive, metavar="N", help="run on N local dask workers"
    )
    cluster.add_argument(
        "--connect-timeout",
        type=seconds,
        metavar="SECONDS",
        help="seconds the scheduler has to answer (dask's distributed.comm.timeouts.connect, 30)",
    )
    parser = _Parser(
        prog=PROG,
        description="Residual vector quantization: vectors to short token sequences (glyphs).",
        epilog="quick start:\n  viva-glyph demo\n\nrun 'viva-glyph COMMAND --help' for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, parents: list[_Parser]) -> Any:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES[name],
            parents=[common, *parents],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=globals()[f"cmd_{name}"])
        return p

    p = add("fit", "train an encoder on vectors and write a model file", [blocks, cluster])
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument(
        "--stages", type=positive, help="number of stages M (4, or the number of sizes given)"
    )
    p.add_argument(
        "--codebook-size",
        type=codebook_sizes,
        default=256,
        help="codes per stage K, or one size per stage: 16,256,256 (256)",
    )
    p.add_argument("--beam", type=positive, default=1, help="beam width used in training (1)")
    p.add_argument("--iterations", type=positive, default=25, help="k-means iterations (25)")
    p.add_argument("--refine", type=non_negative, default=0, help="refinement passes (0)")
    p.add_argument("--sample", type=positive, metavar="N", help="train on N sampled vectors")
    p.add_argument("--seed", type=non_negative, default=0, help="random seed (0)")

    p = add("encode", "encode vectors to codes (.npy, .parquet or .zarr)", [blocks, cluster])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="codes to write: .npy, .parquet or .zarr (with a cluster: .npy or .zarr)",
    )
    p.add_argument("--stages", type=positive, metavar="m", help="encode the first m stages")
    p.add_argument("--beam", type=positive, default=1, help="beam width (1 = greedy)")

    p = add("decode", "decode codes back to vectors (.npy or .zarr)", [blocks])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("codes", help="codes: .npy, .parquet, .zarr or .csv; m <= M columns")
    p.add_argument("-o", "--output", required=True, help="vectors to write (.npy or .zarr)")

    p = add("eval", "rate-distortion and code usage of a model on vectors", [blocks])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--beam", type=positive, default=1, help="beam width (1 = greedy)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write the curve and histograms")

    p = add("info", "show what a model file holds", [])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("demo", "fit the default config on the shipped PAD emotion data", [])
    p.add_argument(
        "--out",
        metavar="DIR",
        help="new or empty folder for model, plot and data (default: a new folder under the "
        "system's temp directory)",
    )
    p.add_argument("--force", action="store_true", help="write into DIR even if it holds files")
    from viva_glyph import _cli_ids, _cli_index  # `viva-glyph ids ...`, `viva-glyph index ...`

    _cli_ids.register(sub)
    _cli_index.register(sub)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, ModuleNotFoundError):
        extra = {
            "pyarrow": "parquet",
            "safetensors": "cli",
            "matplotlib": "cli",
            "tqdm": "cli",
            "zarr": "dask",
            "dask": "dask",
            "distributed": "dask",
        }
        hint = extra.get((exc.name or "").split(".")[0], "all")
        return f"needs the optional package {exc.name!r}: pip install 'viva-glyph[{hint}]'"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``viva-glyph`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except BaseException as exc:  # usage errors, --help, --version
        return _failed(exc)
    try:
        with removing_temps_on_signals():
            code = int(args.func(args))
            _raise_if_signalled()
            return code
    except BaseException as exc:
        signum = terminated_by()  # whatever exception the signal surfaced as, or none
        if signum is None:
            return _failed(exc)
        with contextlib.suppress(OSError):  # temporaries are already removed
            print(f"{PROG}: {Terminated(signum)}", file=sys.stderr)
        return 128 + signum


def _raise_if_signalled() -> None:
    signum = terminated_by()
    if signum is not None:
        raise Terminated(signum)


def _failed(exc: BaseException) -> int:
    """Exit code and one line for ``exc`` raised by a command (no signal came)."""
    from viva_glyph.io import ModelFormatError

    try:
        raise exc
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ModelFormatError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(
            f"{PROG}: unexpected error: {type(exc).__name__}: {_message(exc)} "
            "(please report it; set VIVA_GLYPH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        if os.environ.get("VIVA_GLYPH_DEBUG"):
            raise
        return 1
