"""``viva-glyph index build|search|info`` against the Python API, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from viva_glyph.cli._main import main
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import RvqIndex, load

D = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    enc = RvqEncoder([Codebook(rng.standard_normal((16, D)) * 0.5**s) for s in range(3)])
    enc.save(folder / "model.safetensors")
    X = rng.standard_normal((500, D)).astype(np.float32)
    Q = rng.standard_normal((30, D)).astype(np.float32)
    np.save(folder / "x.npy", X)
    np.save(folder / "q.npy", Q)
    return folder, enc, X, Q


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def test_build_info_search_match_the_api(files, capsys) -> None:
    folder, enc, X, Q = files
    out = folder / "a.vgindex"
    assert run("index", "build", folder / "model.safetensors", folder / "x.npy", "-o", out,
               "--norm", "qint8", "--nlist", "4", "-q") == 0  # fmt: skip
    ref = RvqIndex(enc, norm="qint8", nlist=4)
    ref.add(X)
    assert run("index", "info", out, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vectors"] == 500 and info["norm"] == "qint8" and info["nlist"] == 4
    assert info["bytes_per_vector"] == 3 + 1 + 8
    assert run("index", "search", out, folder / "q.npy", "-k", 7, "--nprobe", 2,
               "-o", folder / "r.npz", "-q", "--batch", 8) == 0  # fmt: skip
    got = np.load(folder / "r.npz")
    # the same batches of 8 as the CLI: identical arithmetic (a GEMM of another row
    # count may round the tables differently)
    parts = [ref.search(Q[a : a + 8], 7, nprobe=2) for a in range(0, len(Q), 8)]
    d, i = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    np.testing.assert_array_equal(got["ids"], i)
    np.testing.assert_array_equal(got["distances"], d)
    np.testing.assert_array_equal(load(out).store.codes, ref.store.codes)


def test_search_rerank_to_parquet(files) -> None:
    import pyarrow.parquet as pq

    folder, enc, X, Q = files
    out = folder / "b.vgindex"
    assert run("index", "build", folder / "model.safetensors", folder / "x.npy", "-o", out,
               "--metric", "cosine", "-q") == 0  # fmt: skip
    assert run("index", "search", out, folder / "q.npy", "-k", 5, "--rerank", 50,
               "--vectors", folder / "x.npy", "-o", folder / "r.parquet", "-q") == 0  # fmt: skip
    table = pq.read_table(folder / "r.parquet").to_pydict()
    ref = RvqIndex(enc, metric="cosine")
    ref.add(X)
    d, i = ref.search(Q, 5, rerank=50, vectors=X)
    assert table["query"] == list(range(30))
    np.testing.assert_array_equal(np.array(table["ids"]), i)
    np.testing.assert_array_equal(np.array(table["distances"], dtype=np.float32), d)


def test_errors_exit_2_with_one_line(files, capsys) -> None:
    folder, _, _, Q = files
    model, data = folder / "model.safetensors", folder / "x.npy"
    good = folder / "c.vgindex"
    assert run("index", "build", model, data, "-o", good, "-q") == 0
    bad_q = Q.copy()
    bad_q[3, 1] = np.nan
    np.save(folder / "nan.npy", bad_q)
    np.save(folder / "wide.npy", np.zeros((3, D + 1), np.float32))
    broken = folder / "broken.vgindex"
    broken.write_bytes(good.read_bytes()[:-10])
    cases = [
        (("index", "build", model, data, "-o", folder / "x.vgindex", "--norm", "none"),
         "norm=\"none\""),
        (("index", "build", model, data, "-o", folder / "x.bin"), "must end in .vgindex"),
        (("index", "search", good, folder / "nan.npy", "-o", folder / "err.npz"), "nan.npy"),
        (("index", "search", good, folder / "wide.npy", "-o", folder / "err.npz"),
         "dimension 7"),
        (("index", "search", good, folder / "q.npy", "-k", "0", "-o", folder / "err.npz"),
         "positive integer"),
        (("index", "search", good, folder / "q.npy", "--vectors", data, "-o",
          folder / "err.npz"), "only used with --rerank"),
        (("index", "search", broken, folder / "q.npy", "-o", folder / "err.npz"),
         "not a valid viva-glyph index file"),
        (("index", "info", folder / "missing.vgindex"), "no such file"),
        (("index", "frobnicate"), "invalid choice"),
    ]  # fmt: skip
    for argv, match in cases:
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("viva-glyph: error: "), err
        assert match in err, (match, err)
    assert "row 3" in run_err(folder, good)
    assert not (folder / "err.npz").exists()


def run_err(folder, good) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "viva_glyph", "index", "search", str(good),
         str(folder / "nan.npy"), "-o", str(folder / "err.npz")],
        capture_output=True, text=True, env={**os.environ}, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    return proc.stderr


def test_k_beyond_the_index_is_capped_with_a_notice(files, capsys) -> None:
    # -k 100000 on 19,000 vectors silently wrote a 1.2 GB .npz of empty slots.
    folder, _, X, Q = files
    built = folder / "k.vgindex"
    assert run("index", "build", folder / "model.safetensors", folder / "x.npy", "-o", built) == 0
    capsys.readouterr()
    out = folder / "k.npz"
    assert run("index", "search", built, folder / "q.npy", "-k", 100_000, "-o", out) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "100000" in err and "500" in err, err
    with np.load(out) as res:
        assert res["ids"].shape == (len(Q), len(X))
        assert (np.sort(res["ids"], axis=1) == np.arange(len(X))).all()
    assert run("index", "search", built, folder / "q.npy", "-k", 10**5, "-o", out, "-q") == 0
    assert capsys.readouterr().err == ""
