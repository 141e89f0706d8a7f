"""The ``viva-glyph`` command line: fit, encode, decode, eval, info, demo.

This module holds the parser and the error reporting; the commands' handlers
are in :mod:`viva_glyph.cli._commands` (``ids`` and ``index``: ``_cli_ids``,
``_cli_index``).

Exit codes: 0 on success, 2 on a usage or input error (one line
``viva-glyph: error: ...`` on stderr, no traceback), 1 on an unexpected failure.
Progress bars go to stderr, only when it is a terminal and ``--quiet`` is not given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from viva_glyph._version import __version__
from viva_glyph.cli._args import DATA_HELP, codebook_sizes, non_negative, positive, seconds
from viva_glyph.cli._commands import UsageError

# the commands' handlers, re-exported: build_parser looks each up here by name
from viva_glyph.cli._commands import cmd_decode as cmd_decode
from viva_glyph.cli._commands import cmd_demo as cmd_demo
from viva_glyph.cli._commands import cmd_encode as cmd_encode
from viva_glyph.cli._commands import cmd_eval as cmd_eval
from viva_glyph.cli._commands import cmd_fit as cmd_fit
from viva_glyph.cli._commands import cmd_info as cmd_info
from viva_glyph.files import Terminated, removing_temps_on_signals, terminated_by
from viva_glyph.train import ITERATIONS, PRESETS

__all__ = ["main"]

PROG = "viva-glyph"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


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
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="what to train for: fast (greedy, the default), balanced or quality (beam "
        "search on more rows per code, stages refitted; the model records its beam)",
    )
    p.add_argument(
        "--beam", type=positive, help="beam width used in training (the preset's; fast: 1)"
    )
    p.add_argument(
        "--iterations",
        type=positive,
        default=ITERATIONS,
        help=f"most Lloyd iterations per k-means step ({ITERATIONS})",
    )
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
    p.add_argument("--beam", type=positive, help="beam width (default: the model's; 1 = greedy)")

    p = add("decode", "decode codes back to vectors (.npy or .zarr)", [blocks])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("codes", help="codes: .npy, .parquet, .zarr or .csv; m <= M columns")
    p.add_argument("-o", "--output", required=True, help="vectors to write (.npy or .zarr)")

    p = add("eval", "rate-distortion and code usage of a model on vectors", [blocks])
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--beam", type=positive, help="beam width (default: the model's; 1 = greedy)")
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
    from viva_glyph.cli import _ids as _cli_ids
    from viva_glyph.cli import _index as _cli_index  # `viva-glyph ids ...`, `viva-glyph index ...`

    _cli_ids.register(sub)
    _cli_index.register(sub)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        return f"no such file: {exc.filename}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, ModuleNotFoundError):
        from viva_glyph.checks import install_hint

        if "pip install" in str(exc):  # the library's own message: what needs which extra
            return " ".join(str(exc).split())
        return f"needs the optional package {exc.name!r}: {install_hint(exc.name or '')}"
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
    from viva_glyph.core import ModelFormatError

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
