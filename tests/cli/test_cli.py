"""The viva-glyph command line: round trips through files, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli

import viva_glyph as vg
from viva_glyph import cli


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    enc = vg.from_codebooks(rng.normal(size=(3, 16, 5)).astype(np.float32))
    x = rng.normal(size=(400, 5)).astype(np.float32)
    enc.save(tmp_path / "m.safetensors")
    np.save(tmp_path / "x.npy", x)
    return {"dir": tmp_path, "enc": enc, "x": x, "model": str(tmp_path / "m.safetensors")}


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_decode_round_trip(files: dict[str, Any], capsys: Any) -> None:
    d, enc, x = files["dir"], files["enc"], files["x"]
    code, out, err = run(
        capsys,
        "encode",
        files["model"],
        str(d / "x.npy"),
        "-o",
        str(d / "c.npy"),
        "--block-rows",
        "64",
    )
    assert (code, err) == (0, "")
    assert "400 x 3 codes" in out
    codes = np.load(d / "c.npy")
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, enc.encode(x))
    code, out, err = run(capsys, "decode", files["model"], str(d / "c.npy"), "-o", str(d / "y.npy"))
    assert (code, err) == (0, "")
    np.testing.assert_array_equal(np.load(d / "y.npy"), enc.decode(codes))


def test_encode_options_stages_beam_parquet(files: dict[str, Any], capsys: Any) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    d, enc, x = files["dir"], files["enc"], files["x"]
    argv = ["encode", files["model"], str(d / "x.npy"), "-o", str(d / "c.parquet"), "--stages", "2"]
    assert run(capsys, *argv, "--beam", "3")[0] == 0
    table = pq.read_table(d / "c.parquet")
    got = np.column_stack([c.to_numpy() for c in table.columns])
    np.testing.assert_array_equal(got, enc.encode(x, 2, beam_size=3))
    # decoding 2 of 3 stages from parquet codes: progressive decode
    assert (
        run(capsys, "decode", files["model"], str(d / "c.parquet"), "-o", str(d / "y.npy"))[0] == 0
    )
    np.testing.assert_allclose(np.load(d / "y.npy"), enc.decode(got), rtol=0, atol=0)


def test_other_input_formats(files: dict[str, Any], capsys: Any) -> None:
    d, enc, x = files["dir"], files["enc"], files["x"]
    np.savetxt(d / "x.csv", x, delimiter=",", header="a,b,c,d,e", comments="", fmt="%.9g")
    assert run(capsys, "encode", files["model"], str(d / "x.csv"), "-o", str(d / "c.npy"))[0] == 0
    np.testing.assert_array_equal(np.load(d / "c.npy"), enc.encode(x))


def test_eval_table_json_and_plot(files: dict[str, Any], capsys: Any) -> None:
    d = files["dir"]
    code, out, err = run(capsys, "eval", files["model"], str(d / "x.npy"), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert [s["stages"] for s in report["stages"]] == [1, 2, 3]
    assert report["num_vectors"] == 400
    from viva_glyph import metrics

    ref = metrics.evaluate(files["enc"], files["x"])
    assert report == json.loads(ref.to_json())
    code, out, _ = run(capsys, "eval", files["model"], str(d / "x.npy"), "--plot", str(d / "p.png"))
    assert code == 0 and "rel. error" in out and "wrote" in out
    assert (d / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_info(files: dict[str, Any], capsys: Any) -> None:
    code, out, _ = run(capsys, "info", files["model"], "--json")
    info = json.loads(out)
    assert code == 0
    assert (info["num_stages"], info["codebook_size"], info["dimension"]) == (3, 16, 5)
    assert info["bits_per_vector"] == 12.0 and info["vocabulary"] == 16**3
    assert info["format"] == "viva-glyph-rvq v1" and info["training"] is None
    code, out, _ = run(capsys, "info", files["model"])
    assert code == 0 and "codebook_size    16" in out


def test_fit_writes_a_loadable_model(files: dict[str, Any], capsys: Any) -> None:
    pytest.importorskip("viva_glyph.train")
    d = files["dir"]
    argv = ["fit", str(d / "x.npy"), "-o", str(d / "f.safetensors"), "--stages", "2"]
    code, out, err = run(capsys, *argv, "--codebook-size", "8", "--iterations", "3", "--seed", "1")
    assert (code, err) == (0, "")
    enc = vg.load(d / "f.safetensors")
    assert enc.config == vg.RvqConfig(2, 5, 8)
    assert enc.training is not None and enc.training.params["seed"] == 1
    assert "2 stages x 8 codes" in out
    # the CLI fit is the library fit
    ref = vg.fit(files["x"], num_stages=2, codebook_size=8, iterations=3, seed=1)
    assert enc == ref


def test_fit_bad_input_exits_2(files: dict[str, Any], capsys: Any) -> None:
    pytest.importorskip("viva_glyph.train")
    d = files["dir"]
    nan = files["x"].copy()
    nan[77, 0] = np.inf
    np.save(d / "nan.npy", nan)
    for data_file, extra, message in [
        ("nan.npy", ["--codebook-size", "8"], "nan.npy row 77 holds NaN or inf"),
        ("x.npy", ["--codebook-size", "1000"], "fitting needs at least --codebook-size (1000)"),
    ]:
        argv = ["fit", str(d / data_file), "-o", str(d / "f.safetensors"), *extra]
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in one_error_line(err)
    assert not (d / "f.safetensors").exists()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("viva-glyph: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_bad_input_exits_2_with_one_line(files: dict[str, Any], capsys: Any) -> None:
    d, model = files["dir"], files["model"]
    np.save(d / "wide.npy", np.zeros((10, 7), np.float32))
    nan = files["x"].copy()
    nan[123, 4] = np.nan
    np.save(d / "nan.npy", nan)
    (d / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cases = {
        "no such file": ["encode", model, str(d / "missing.npy"), "-o", str(d / "c.npy")],
        "dimension 7, but the model expects dimension 5": [
            "encode",
            model,
            str(d / "wide.npy"),
            "-o",
            str(d / "c.npy"),
        ],
        "not a valid viva-glyph model file": [
            "encode",
            str(d / "bad.safetensors"),
            str(d / "x.npy"),
            "-o",
            str(d / "c.npy"),
        ],
        "nan.npy row 123 holds NaN or inf": [
            "encode",
            model,
            str(d / "nan.npy"),
            "-o",
            str(d / "c.npy"),
        ],
        "nan.npy row 123 holds NaN": ["eval", model, str(d / "nan.npy")],
        "must end in .npy or .parquet": ["encode", model, str(d / "x.npy"), "-o", str(d / "c.txt")],
        "exceeds the model's 3 stages": [
            "encode",
            model,
            str(d / "x.npy"),
            "-o",
            str(d / "c.npy"),
            "--stages",
            "4",
        ],
        "expected a positive integer": [
            "encode",
            model,
            str(d / "x.npy"),
            "-o",
            "c.npy",
            "--beam",
            "0",
        ],
        "required: -o/--output": ["encode", model, str(d / "x.npy")],
        "invalid choice": ["frobnicate"],
        "no such file: ": ["info", str(d / "none.safetensors")],
    }
    for message, argv in cases.items():
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in one_error_line(err), (message, err)
    assert not (d / "c.npy").exists()
    assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_codes_exit_2(files: dict[str, Any], capsys: Any) -> None:
    d, model = files["dir"], files["model"]
    np.save(d / "big.npy", np.full((5, 3), 16, np.int64))
    np.save(d / "wide.npy", np.zeros((5, 4), np.uint8))
    np.save(d / "float.npy", np.full((5, 3), 0.5))
    for name, message in [
        ("big.npy", "out of range"),
        ("wide.npy", "holds 4 codes per vector"),
        ("float.npy", "codes must be integers"),
    ]:
        code, _, err = run(capsys, "decode", model, str(d / name), "-o", str(d / "y.npy"))
        assert code == 2 and message in one_error_line(err)
    assert not (d / "y.npy").exists()


def test_unexpected_failure_exits_1(files: dict[str, Any], capsys: Any, monkeypatch: Any) -> None:
    def broken(args: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli._main, "cmd_info", broken)
    code, _, err = run(capsys, "info", files["model"])
    assert code == 1
    assert "unexpected error: RuntimeError: boom" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["fit", "encode", "decode", "eval", "info", "demo"])
def test_help_has_an_example(capsys: Any, command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"example:\n  viva-glyph {command}" in out


@pytest.mark.parametrize(
    ("group", "actions"),
    [("ids", ("fit", "assign", "eval")), ("index", ("build", "search", "info"))],
)
def test_command_group_help_lists_every_actions_example(
    capsys: Any, group: str, actions: tuple[str, ...]
) -> None:
    """README: every command has --help with an example; the groups had none."""
    code, out, _ = run(capsys, group, "--help")
    assert code == 0
    assert "examples:" in out
    for action in actions:
        assert f"\n  viva-glyph {group} {action} " in out
        own = run(capsys, group, action, "--help")[1]
        assert own.count(f"example:\n  viva-glyph {group} {action} ") == 1


def test_progress_bar_only_on_a_terminal(
    files: dict[str, Any], capsys: Any, monkeypatch: Any
) -> None:
    pytest.importorskip("tqdm")
    d = files["dir"]
    argv = ["encode", files["model"], str(d / "x.npy"), "-o", str(d / "c.npy")]
    assert run(capsys, *argv)[2] == ""  # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _, _, err = run(capsys, *argv)
    assert "encode" in err and "400/400" in err
    _, out, err = run(capsys, *argv, "--quiet")
    assert (out, err) == ("", "")


def test_dask_options_delegate(files: dict[str, Any], capsys: Any, monkeypatch: Any) -> None:
    dask_mod = pytest.importorskip("viva_glyph.dask")
    seen: dict[str, Any] = {}

    def fake_encode(encoder: Any, data_path: Any, out_path: Any, **kw: Any) -> None:
        seen.update(kw, encoder=encoder, data=data_path, out=out_path)

    monkeypatch.setattr(dask_mod, "run_encode", fake_encode)
    d = files["dir"]
    argv = [
        "encode",
        files["model"],
        str(d / "x.npy"),
        "-o",
        str(d / "c.zarr"),
        "--local-cluster",
        "2",
    ]
    assert run(capsys, *argv, "--beam", "2")[0] == 0
    assert seen["encoder"] == files["enc"] and seen["out"] == str(d / "c.zarr")
    assert (seen["scheduler"], seen["local_cluster"], seen["beam_size"], seen["num_stages"]) == (
        None,
        2,
        2,
        3,
    )
    code, _, err = run(capsys, *argv, "--scheduler", "tcp://x:1")
    assert code == 2 and "not allowed with argument" in one_error_line(err)


def test_python_dash_m(files: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "viva_glyph", "info", files["model"], "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dimension"] == 5
    proc = subprocess.run(
        [sys.executable, "-m", "viva_glyph", "info", "/nonexistent/m.safetensors"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "command",
    [
        ["ids", "fit", "{missing}", "-o", "{out}/m.safetensors"],
        ["ids", "assign", "{missing}", "{missing}", "-o", "{out}/ids.csv"],
        ["ids", "eval", "{missing}", "{missing}", "--plot", "{out}/p.png"],
        ["index", "build", "{missing}", "{missing}", "-o", "{out}/i.vgindex"],
        ["index", "search", "{missing}", "{missing}", "-o", "{out}/r.npz"],
    ],
)
def test_an_unwritable_output_is_refused_before_any_input_is_read(
    command: list[str], unwritable: list[Path], tmp_path: Path
) -> None:
    # The ids and index commands had their own output checks (suffix and folder only):
    # the work ran and the write failed at the end. Inputs that do not exist show which
    # check came first.
    missing = str(tmp_path / "missing.npy")
    args = [a.format(missing=missing, out=unwritable[0]) for a in command]
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0], res.stderr


# -- an output that is one of the inputs ------------------------------------------------
@pytest.fixture(scope="module")
def every_input(tmp_path_factory: Any) -> Path:
    """One folder holding an input of every kind the commands read."""
    from viva_glyph import semantic
    from viva_glyph.index import RvqIndex

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    enc = vg.from_codebooks(rng.normal(size=(2, 16, 5)).astype(np.float32))
    enc.save(d / "m.safetensors")
    np.save(d / "x.npy", x)
    np.save(d / "codes.npy", enc.encode(x))
    np.save(d / "q.npy", x[:7])
    ids = semantic.fit(x, levels=2, codebook_size=8, suffix_size=300)
    ids.save(d / "ids.safetensors")
    (d / "keys.txt").write_text("\n".join(f"k{i}" for i in range(300)) + "\n")
    with semantic.IdStore(d / "store.sqlite") as store:
        store.assign(ids, x[:10], [f"k{i}" for i in range(10)])
    index = RvqIndex(enc)
    index.add(x)
    index.save(d / "idx.vgindex")
    return d


#: Every command that writes a file: its argv with {out} for the output, the output's
#: suffix, and the inputs it reads (names in the folder of ``every_input``).
WRITERS = {
    "fit": (["fit", "x.npy", "-o", "{out}"], ".safetensors", ["x.npy"]),
    "encode": (
        ["encode", "m.safetensors", "x.npy", "-o", "{out}"],
        ".npy",
        ["m.safetensors", "x.npy"],
    ),
    "encode-cluster": (
        ["encode", "m.safetensors", "x.npy", "-o", "{out}", "--local-cluster", "1"],
        ".npy",
        ["m.safetensors", "x.npy"],
    ),
    "decode": (
        ["decode", "m.safetensors", "codes.npy", "-o", "{out}"],
        ".npy",
        ["m.safetensors", "codes.npy"],
    ),
    "eval": (
        ["eval", "m.safetensors", "x.npy", "--plot", "{out}"],
        ".png",
        ["m.safetensors", "x.npy"],
    ),
    "ids fit": (
        ["ids", "fit", "x.npy", "-o", "{out}", "--levels", "2", "--codebook-size", "8"],
        ".safetensors",
        ["x.npy"],
    ),
    "ids assign": (
        ["ids", "assign", "ids.safetensors", "x.npy", "--keys", "keys.txt", "-o", "{out}"],
        ".csv",
        ["ids.safetensors", "x.npy", "keys.txt"],
    ),
    "ids assign --store": (
        [
            "ids",
            "assign",
            "ids.safetensors",
            "x.npy",
            "--keys",
            "keys.txt",
            "--store",
            "store.sqlite",
            "-o",
            "{out}",
        ],
        ".csv",
        ["store.sqlite"],
    ),
    "ids assign, store": (
        [
            "ids",
            "assign",
            "ids.safetensors",
            "x.npy",
            "--keys",
            "keys.txt",
            "--store",
            "{out}",
            "-o",
            "ids.csv",
        ],
        ".sqlite",
        ["ids.safetensors", "x.npy", "keys.txt"],
    ),
    "ids eval": (
        ["ids", "eval", "ids.safetensors", "x.npy", "--plot", "{out}"],
        ".png",
        ["ids.safetensors", "x.npy"],
    ),
    "index build": (
        ["index", "build", "m.safetensors", "x.npy", "-o", "{out}"],
        ".vgindex",
        ["m.safetensors", "x.npy"],
    ),
    "index search": (
        [
            "index",
            "search",
            "idx.vgindex",
            "q.npy",
            "-o",
            "{out}",
            "--rerank",
            "5",
            "--vectors",
            "x.npy",
        ],
        ".npz",
        ["idx.vgindex", "q.npy", "x.npy"],
    ),
}


CASES = [
    (command, name, spelling)
    for command, (_, suffix, inputs) in WRITERS.items()
    for name in inputs
    for spelling in ("same", "dot", "symlink", "hardlink")
    if spelling in ("symlink", "hardlink") or name.endswith(suffix)  # else refused by suffix
]


@pytest.mark.parametrize(("command", "name", "spelling"), CASES)
def test_an_output_that_is_an_input_is_refused_before_any_work(
    every_input: Path,
    tmp_path: Path,
    monkeypatch: Any,
    capsys: Any,
    command: str,
    name: str,
    spelling: str,
) -> None:
    # `ids assign m X.parquet -o X.parquet`, `index search idx Q.npz -o Q.npz`, `encode m X.npy
    # -o X.npy` and `--store st.csv -o st.csv` exited 0 and replaced their input.
    argv, suffix, _ = WRITERS[command]
    work = tmp_path / "work"
    shutil.copytree(every_input, work)
    monkeypatch.chdir(work)
    if spelling in ("same", "dot"):
        out = name if spelling == "same" else f"./{name}"
    elif spelling == "symlink":
        out = f"alias{suffix}"
        os.symlink(work / name, out)
    else:
        out = f"hard{suffix}"
        os.link(name, out)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    code, _, err = run(capsys, *[a.format(out=out) for a in argv])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "is the same file as" in err and name in err, err
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before  # nothing written


def test_an_output_inside_a_folder_input_is_refused(files: dict[str, Any], capsys: Any) -> None:
    # A folder of Parquet files is one input: a codes.parquet written into it would be read
    # as data by the next run.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = files["dir"] / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"v": list(files["x"])}), folder / "a.parquet")
    out = folder / "codes.parquet"
    code, _, err = run(capsys, "encode", files["model"], str(folder), "-o", str(out))
    assert code == 2 and "inside the data folder" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["a.parquet"]
