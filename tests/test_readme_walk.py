"""What a new user following README.md meets: the CLI agrees with the library it documents."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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


def test_index_refuses_per_level_sizes_by_name(tmp_path: Path, capsys: Any) -> None:
    # README: "Not yet: viva_glyph.index needs equal sizes." The refusal must say so,
    # not speak of an (M, K, D) stacking the user never asked for.
    from viva_glyph.index import RvqIndex

    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    enc = vg.fit(x, codebook_size=[4, 16], seed=0)
    with pytest.raises(ValueError, match=r"RvqIndex needs one codebook size.*\(4, 16\)"):
        RvqIndex(enc)
    enc.save(tmp_path / "levels.safetensors")
    np.save(tmp_path / "x.npy", x)
    argv = ["index", "build", str(tmp_path / "levels.safetensors"), str(tmp_path / "x.npy")]
    assert cli.main([*argv, "-o", str(tmp_path / "x.vgindex"), "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "RvqIndex needs one codebook size" in err
    assert not (tmp_path / "x.vgindex").exists()


def test_index_ids_property_is_read_only_as_documented() -> None:
    # help(RvqIndex.ids): "Ids of the stored vectors ... (read-only)". Writing through it
    # would change the index's ids behind its back (duplicates, wrong search results).
    from viva_glyph.index import RvqIndex

    x = np.random.default_rng(2).normal(size=(120, 4)).astype(np.float32)
    index = RvqIndex(vg.fit(x, num_stages=2, codebook_size=8, seed=0))
    index.add(x[:5])
    for step in ("fresh", "added", "removed"):
        if step == "added":
            index.add(x[5:9])
        if step == "removed":
            index.remove([0])
        with pytest.raises(ValueError, match="read-only"):
            index.ids[0] = 7
    np.testing.assert_array_equal(np.sort(index.ids), np.arange(1, 9))
    assert index.search(x[1], 1)[1][0, 0] >= 1
