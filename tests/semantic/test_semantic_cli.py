"""`viva-glyph ids fit|assign|eval` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viva_glyph", "ids", *args], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 12)) + 3 * rng.normal(size=(8, 12))[rng.integers(0, 8, 1500)]
    np.save(d / "x.npy", x.astype(np.float32))
    (d / "keys.txt").write_text("\n".join(f"item-{i}" for i in range(1500)) + "\n")
    r = run(
        "fit",
        str(d / "x.npy"),
        "-o",
        str(d / "ids.safetensors"),
        "--levels",
        "2",
        "--codebook-size",
        "8,16",
        "--suffix-size",
        "200",
    )
    assert r.returncode == 0, r.stderr
    return d, x


def test_fit_assign_eval(files):
    import pyarrow.parquet as pq

    from viva_glyph import semantic

    d, x = files
    ids = semantic.load(d / "ids.safetensors")
    assert ids.codebook_sizes == (8, 16) and ids.suffix_size == 200
    r = run(
        "assign",
        str(d / "ids.safetensors"),
        str(d / "x.npy"),
        "-o",
        str(d / "out.parquet"),
        "--keys",
        str(d / "keys.txt"),
        "--trie",
    )
    assert r.returncode == 0, r.stderr
    table = pq.read_table(d / "out.parquet").to_pydict()
    assert table["key"][:2] == ["item-0", "item-1"]
    keys = [f"item-{i}" for i in range(1500)]
    expect = ids.unique(x.astype(np.float32), keys=keys)
    np.testing.assert_array_equal(np.array(table["tokens"]), expect)
    assert table["token_string"] == ids.tokens(expect)
    with_trie = semantic.load(d / "ids.safetensors")
    assert with_trie.trie is not None and len(with_trie.trie) == 1500
    # with a store: the same IDs come back on a second run, from the store
    for _ in range(2):
        r = run(
            "assign",
            str(d / "ids.safetensors"),
            str(d / "x.npy"),
            "-o",
            str(d / "s.csv"),
            "--keys",
            str(d / "keys.txt"),
            "--store",
            str(d / "ids.sqlite"),
        )
        assert r.returncode == 0, r.stderr
    lines = (d / "s.csv").read_text().splitlines()
    assert lines[0] == "key,tokens,token_string" and len(lines) == 1501
    r = run(
        "eval", str(d / "ids.safetensors"), str(d / "x.npy"), "--json", "--plot", str(d / "p.png")
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["unique_ids"] is True and rep["n"] == 1500
    assert (d / "p.png").exists()
    assert "collision rate" in run("eval", str(d / "ids.safetensors"), str(d / "x.npy")).stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keys", "KEYS_SHORT"], "holds 3 keys, but the data has 1500 rows"),
        (["--store", "JUNK", "--keys", "KEYS"], "not a viva-glyph ID store"),
        (["--store", "STORE"], "--store keeps IDs by key: give --keys"),
        (["-o", "out.txt"], "must end in .parquet or .csv"),
    ],
)
def test_assign_errors_exit_2_in_one_line(files, extra, message):
    d, _ = files
    (d / "short.txt").write_text("a\nb\nc\n")
    (d / "junk.db").write_bytes(b"junk" * 500)
    extra = [
        {
            "KEYS_SHORT": str(d / "short.txt"),
            "JUNK": str(d / "junk.db"),
            "KEYS": str(d / "keys.txt"),
            "STORE": str(d / "new.sqlite"),
            "out.txt": str(d / "out.txt"),
        }.get(a, a)
        for a in extra
    ]
    args = ["assign", str(d / "ids.safetensors"), str(d / "x.npy"), "-o", str(d / "o.parquet")]
    r = run(*args, *extra)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_suffix_range_and_nan_errors(files, tmp_path):
    d, x = files
    np.save(tmp_path / "dup.npy", np.repeat(x[:1], 300, axis=0).astype(np.float32))
    r = run(
        "assign",
        str(d / "ids.safetensors"),
        str(tmp_path / "dup.npy"),
        "-o",
        str(tmp_path / "o.csv"),
    )
    assert r.returncode == 2 and "a suffix size of 300 would work" in r.stderr
    assert not (tmp_path / "o.csv").exists()
    bad = x[:50].astype(np.float32).copy()
    bad[9, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = run(
        "fit",
        str(tmp_path / "nan.npy"),
        "-o",
        str(tmp_path / "m.safetensors"),
        "--codebook-size",
        "4",
    )
    assert r.returncode == 2 and "row 9" in r.stderr
    r = run("fit", str(d / "x.npy"), "-o", str(tmp_path / "m.safetensors"), "--codebook-size", "x")
    assert r.returncode == 2


def test_normalize_residuals_and_reassign_candidates_from_the_command_line(files, tmp_path):
    from viva_glyph import semantic

    d, x = files
    model = tmp_path / "n.safetensors"
    args = ["--levels", "2", "--codebook-size", "8", "--suffix-size", "1500"]
    r = run("fit", str(d / "x.npy"), "-o", str(model), *args, "--normalize-residuals")
    assert r.returncode == 2 and "needs metric='cosine'" in r.stderr
    r = run(
        "fit", str(d / "x.npy"), "-o", str(model), *args, "--metric", "cosine",
        "--normalize-residuals",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = semantic.load(model)
    assert ids.normalize_residuals and ids.residual_scales is not None
    out = tmp_path / "o.csv"
    r = run(
        "assign", str(model), str(d / "x.npy"), "-o", str(out), "--resolve", "reassign",
        "--candidates", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    got = np.array([list(map(int, row.split())) for row in rows])
    expect = ids.unique(x.astype(np.float32), resolve="reassign", candidates=3)
    np.testing.assert_array_equal(got, expect)


def test_the_suffix_range_advice_works_from_the_command_line(files, tmp_path):
    # The advice named a suffix size the command line had no way to give (and a store
    # refused the same model with another range).
    import re

    d, x = files
    np.save(tmp_path / "dup.npy", np.repeat(x[:1], 300, axis=0).astype(np.float32))
    (tmp_path / "keys.txt").write_text("".join(f"k{i}\n" for i in range(300)))
    for store in (None, tmp_path / "s.sqlite"):
        args = ["assign", str(d / "ids.safetensors"), str(tmp_path / "dup.npy")]
        args += ["-o", str(tmp_path / "o.csv"), "--keys", str(tmp_path / "keys.txt")]
        args += [] if store is None else ["--store", str(store)]
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        size = re.search(r"--suffix-size (\d+)", r.stderr)
        assert size is not None, r.stderr
        r = run(*args, "--suffix-size", size[1])
        assert r.returncode == 0, r.stderr
        rows = (tmp_path / "o.csv").read_text().splitlines()[1:]
        assert len({row.split(",")[1] for row in rows}) == 300  # unique IDs


def test_lookup_keys_and_ids_in_a_store(files, tmp_path):
    import csv
    import json

    d, _ = files
    store = tmp_path / "s.sqlite"
    r = run("assign", str(d / "ids.safetensors"), str(d / "x.npy"), "-o", str(tmp_path / "o.csv"),
            "--keys", str(d / "keys.txt"), "--store", str(store))  # fmt: skip
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "o.csv", newline="") as fh:
        rows = {row["key"]: row for row in csv.DictReader(fh)}
    r = run("lookup", str(store), "item-3", "item-1200")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"item-3\t{rows['item-3']['token_string']}",
        f"item-1200\t{rows['item-1200']['token_string']}",
    ]
    tokens = rows["item-7"]["token_string"]
    numbers = rows["item-8"]["tokens"].replace(" ", ",")
    r = run("lookup", str(store), "--id", tokens, numbers, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [g["key"] for g in got] == ["item-7", "item-8"]
    assert got[0]["tokens"] == tokens and got[1]["id"] == [int(v) for v in numbers.split(",")]
    for argv, message in (
        (["lookup", str(store), "nobody"], "key 'nobody' is not in"),
        (["lookup", str(store), "--id", "<a_0>"], "3 positions"),
        (["lookup", str(tmp_path / "none.sqlite"), "k"], "no such file"),
    ):
        r = run(*argv)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr, r.stderr
    assert not (tmp_path / "none.sqlite").exists()


def test_trie_into_a_model_that_cannot_be_written_is_refused_before_any_work(files, tmp_path):
    # --trie rewrites the model: a model in a folder that takes no file failed at the end,
    # after the IDs were written.
    import shutil

    from conftest import unprivileged

    prefix = unprivileged()  # without the right to override file modes (root has it)
    d, _ = files
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(d / "ids.safetensors", ro / "ids.safetensors")
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    ro.chmod(0o555)
    try:
        r = subprocess.run(
            [*prefix, sys.executable, "-m", "viva_glyph", "ids", "assign",
             str(ro / "ids.safetensors"), str(d / "x.npy"), "-o", str(out / "o.csv"), "--trie"],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "not writable" in r.stderr, r.stderr
    assert not (out / "o.csv").exists()


def test_trie_into_a_read_only_model_file_is_refused_before_any_work(files, tmp_path):
    # a read-only model file in a writable folder: the IDs were written, then the model's
    # temporary (given the model's mode 0o444 before it was written) could not be opened
    import shutil

    from conftest import unprivileged

    prefix = unprivileged()
    d, _ = files
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    model = work / "ids.safetensors"
    shutil.copy(d / "ids.safetensors", model)
    model.chmod(0o444)
    before = model.read_bytes()
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "viva_glyph", "ids", "assign",
         str(model), str(d / "x.npy"), "-o", str(work / "o.csv"), "--trie"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "read-only" in r.stderr and ".tmp" not in r.stderr, r.stderr
    assert not (work / "o.csv").exists() and model.read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == ["ids.safetensors"]
