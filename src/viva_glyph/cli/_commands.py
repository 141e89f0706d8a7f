"""The handlers of ``viva-glyph``'s model commands: fit, encode, decode, eval, info, demo.

Each ``cmd_*`` takes the parsed arguments and returns the exit code; a bad
command line or input raises :class:`UsageError` (or ValueError, TypeError,
OSError), which :func:`viva_glyph.cli.main` reports in one line with exit code 2.
:func:`viva_glyph.cli.build_parser` registers them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import check_codes, require_finite
from viva_glyph.cli._args import check_packages
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.files import check_output

__all__ = ["UsageError", "cmd_decode", "cmd_demo", "cmd_encode", "cmd_eval", "cmd_fit", "cmd_info"]


class UsageError(Exception):
    """Bad command line or input: reported in one line with exit code 2."""


# -- helpers ----------------------------------------------------------------------------
def _show_progress(args: argparse.Namespace) -> bool:
    from viva_glyph.checks import has_package

    # a bar is only shown: without tqdm (the cli extra) the work runs without one
    return not args.quiet and sys.stderr.isatty() and has_package("tqdm")


def _bar(total: int, show: bool, desc: str) -> Any:
    from viva_glyph.metrics import progress_bar

    return progress_bar(total, show, desc)


def _load_model(path: str) -> RvqEncoder:
    from viva_glyph.core import load

    return load(path)


def _open_data(args: argparse.Namespace, path: str, dimension: int | None) -> Any:
    from viva_glyph.files import open_vectors

    source = open_vectors(path, key=args.key, header=args.header)
    if dimension is not None and source.shape[1] != dimension:
        raise UsageError(
            f"{path} holds vectors of dimension {source.shape[1]}, "
            f"but the model expects dimension {dimension}"
        )
    return source


def _stream(
    args: argparse.Namespace,
    source: Any,
    out: tuple[int, Any],
    step: Callable[[int, NDArray[Any]], NDArray[Any]],
) -> None:
    """Read ``source`` by blocks, transform each, append to ``args.output``.

    ``out`` is (columns, dtype) of the output; the bar is named after the command.
    """
    from viva_glyph.files import open_writer

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
    check_output(args.output, (".safetensors",), {"data": args.data})
    check_packages(args.output)
    kwargs: dict[str, Any] = {
        "num_stages": args.stages,
        "codebook_size": args.codebook_size,
        "beam_size": args.beam,
        "iterations": args.iterations,
        "refine": args.refine,
        "max_samples": args.sample,
        "seed": args.seed,
        "progress": _show_progress(args),
        "preset": args.preset,
    }
    dask = _dask_options(args)
    if dask is not None:
        from viva_glyph.dask import run_fit

        encoder = run_fit(args.data, **dask, **kwargs)
    else:
        from viva_glyph.train import fit

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
    dask = _dask_options(args)
    inputs = {"model": args.model, "data": args.data}
    check_output(args.output, (".npy", ".zarr") if dask else (".npy", ".parquet", ".zarr"), inputs)
    check_packages(args.output)
    encoder = _load_model(args.model)
    m = encoder.config.num_stages if args.stages is None else args.stages
    if m > encoder.config.num_stages:
        raise UsageError(f"--stages {m} exceeds the model's {encoder.config.num_stages} stages")
    if dask is not None:
        from viva_glyph.dask import run_encode

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
    source = _open_data(args, args.data, encoder.config.dimension)

    def step(start: int, block: NDArray[Any]) -> NDArray[Any]:
        require_finite(block, start, args.data)
        return encoder.encode(block, m, beam_size=args.beam)

    _stream(args, source, (m, encoder.code_dtype), step)
    if not args.quiet:
        print(f"wrote {args.output}: {source.shape[0]} x {m} codes ({encoder.code_dtype})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    check_output(args.output, (".npy", ".zarr"), {"model": args.model, "codes": args.codes})
    check_packages(args.output)
    encoder = _load_model(args.model)
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

    if args.plot is not None:
        check_output(args.plot, (".png",), {"model": args.model, "data": args.data})
        check_packages(args.plot)
    encoder = _load_model(args.model)
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
    from viva_glyph.core import read_metadata

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
        "encoding": encoder.encoding.to_dict(),
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
