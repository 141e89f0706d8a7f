"""Argument types and sub-command groups shared by ``viva-glyph``'s command modules.

Each type raises :class:`argparse.ArgumentTypeError`, which argparse reports as
a usage error (exit code 2) naming the option and the value that came.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

#: Help of every command's vectors argument: the formats of :func:`viva_glyph.files.open_vectors`.
DATA_HELP = "vectors: .npy, .npz, .fvecs, .bvecs, .csv, .tsv, .parquet or .zarr"

__all__ = [
    "DATA_HELP",
    "OUTPUT_PACKAGES",
    "check_packages",
    "codebook_sizes",
    "command_group",
    "non_negative",
    "non_negative_number",
    "positive",
    "seconds",
]


def positive(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def codebook_sizes(text: str) -> int | list[int]:
    """One codebook size K, or one per stage separated by commas (``16,256,256``)."""
    parts = text.split(",")
    try:
        sizes = [positive(part.strip()) for part in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or a comma-separated list of them, got {text!r}"
        ) from None
    return sizes[0] if len(sizes) == 1 else sizes


def non_negative(text: str) -> int:
    """An integer >= 0."""
    return 0 if text.strip() == "0" else positive(text)


def non_negative_number(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def command_group(
    subparsers: Any,
    name: str,
    help: str,
    *,
    description: str,
    examples: Mapping[str, str],
    quiet_help: str,
) -> Callable[[str, str], argparse.ArgumentParser]:
    """Add ``viva-glyph NAME ACTION ...``; returns ``add(action, help)`` for its actions.

    The group's help lists every action's example; each action's parser shows
    ``examples[action]`` below its help and takes
    ``-q/--quiet``; the chosen action is stored as ``args.<name>_command``.
    """
    top = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n"  # every action's example, as each action shows its own
        + "\n".join(ln for e in examples.values() for ln in e.splitlines() if ln != "example:"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)

    def add(action: str, action_help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            action,
            help=action_help,
            description=action_help,
            epilog=examples[action],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
        return p

    return add


#: The optional package that writes each kind of output.
OUTPUT_PACKAGES = {
    ".parquet": ("pyarrow", "writing Parquet"),
    ".zarr": ("zarr", "writing a zarr store"),
    ".png": ("matplotlib", "writing a plot"),
}


def check_packages(*outputs: str | None) -> None:
    """Before any work: the optional packages the command's outputs need are installed
    (ImportError naming the extra otherwise, which the command line reports in one line)."""
    from pathlib import Path

    from viva_glyph.checks import require_package

    for out in outputs:
        if out is not None and Path(out).suffix.lower() in OUTPUT_PACKAGES:
            package, what = OUTPUT_PACKAGES[Path(out).suffix.lower()]
            require_package(package, what)
