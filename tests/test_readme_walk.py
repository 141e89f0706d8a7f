"""What a new user following README.md meets: the CLI agrees with the library it documents."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

import viva_glyph as vg
from viva_glyph import cli


def test_cli_fit_uses_the_library_default_iterations(tmp_path: Path, capsys: Any) -> None:
    # README: `viva-glyph fit vectors.npy -o model.safetensors` fits "by default" what
    # `vg.fit(X)` fits; its Lloyd iteration limit must be the library's, not another number.
    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model = tmp_path / "m.safetensors"
    argv = ["fit", str(tmp_path / "x.npy"), "-o", str(model), "--codebook-size", "8", "-q"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    used = vg.load(model).training.to_dict()["params"]["iterations"]
    assert used == inspect.signature(vg.fit).parameters["iterations"].default


def test_cli_fit_help_states_the_default_iterations(capsys: Any) -> None:
    default = inspect.signature(vg.fit).parameters["iterations"].default
    try:
        cli.main(["fit", "--help"])
    except SystemExit as stop:
        assert stop.code == 0
    text = " ".join(capsys.readouterr().out.split())
    described = text.rsplit("--iterations ITERATIONS", 1)[1].split("--refine", 1)[0]
    assert described.strip().endswith(f"({default})")
