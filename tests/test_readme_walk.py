"""What a new user following README.md meets: the CLI agrees with the library it documents."""

from __future__ import annotations

import argparse
import contextlib
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


def test_ids_assign_store_needs_keys(tmp_path: Path, capsys: Any) -> None:
    # README: `--store` keeps the IDs of stored keys. Without --keys the keys are row
    # numbers, so a second file's row 0 silently got the first file's row-0 ID.
    from viva_glyph import semantic

    x = np.random.default_rng(3).normal(size=(400, 6)).astype(np.float32)
    semantic.fit(x, levels=2, codebook_size=8, suffix_size=400).save(tmp_path / "ids.safetensors")
    np.save(tmp_path / "a.npy", x[:200])
    np.save(tmp_path / "b.npy", x[200:])
    store, out = str(tmp_path / "ids.sqlite"), str(tmp_path / "o.csv")
    base = ["ids", "assign", str(tmp_path / "ids.safetensors")]
    assert cli.main([*base, str(tmp_path / "a.npy"), "-o", out, "--store", store, "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--keys" in err
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "ids.sqlite").exists()
    # with keys, the second file's items get their own IDs, unique across both files
    for name, rows in (("a", range(200)), ("b", range(200, 400))):
        (tmp_path / f"{name}.txt").write_text("".join(f"item-{i}\n" for i in rows))
        argv = [*base, str(tmp_path / f"{name}.npy"), "-o", str(tmp_path / f"{name}.csv")]
        assert cli.main([*argv, "--store", store, "--keys", str(tmp_path / f"{name}.txt")]) == 0
    capsys.readouterr()
    lines = [(tmp_path / f"{n}.csv").read_text().splitlines()[1:] for n in ("a", "b")]
    tokens = [line.split(",")[1] for line in lines[0] + lines[1]]
    assert len(set(tokens)) == 400
    model = semantic.load(tmp_path / "ids.safetensors")
    with semantic.IdStore(store) as opened:
        first = opened.get(["item-0"], model)
    assert lines[0][0].split(",")[1] == " ".join(str(int(c)) for c in first[0])


@pytest.mark.parametrize(
    "command",
    [
        ["fit"],
        ["encode"],
        ["eval"],
        ["index", "build"],
        ["index", "search"],
        ["ids", "fit"],
        ["ids", "assign"],
        ["ids", "eval"],
    ],
)
def test_every_data_argument_lists_every_readable_format(command: list[str], capsys: Any) -> None:
    # README "Input formats": one reader per format, shared by every command (.zarr too).
    from viva_glyph.files._vectors import READ_FORMATS

    with contextlib.suppress(SystemExit):  # argparse's --help exits, main may catch it
        cli.main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = text.split("vectors: ", 1)[1].split(" options:", 1)[0]
    for suffix in READ_FORMATS:
        assert suffix in listed.replace(",", " ").split(), (command, suffix, listed)


def test_every_cli_option_is_described() -> None:
    # README: "Every command has `--help`"; an option listed there without a word is a guess.
    def undescribed(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[Any]:
        found: list[Any] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += undescribed(sub, (*path, name))
            elif not action.help:
                found.append((path, action.option_strings or action.dest))
        return found

    assert undescribed(cli.build_parser(), ()) == []
