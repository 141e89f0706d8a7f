"""Hostile inputs to ``viva_glyph.semantic`` and ``viva-glyph ids``: each test is a defect
that a hostile user found (it failed before its fix)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from viva_glyph import semantic
from viva_glyph.core.io import ModelFormatError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    ids = semantic.fit(x, levels=2, codebook_size=8, suffix_size=300)
    return x, ids, ids.unique(x)


# -- fit / model parameters ---------------------------------------------------------


def test_levels_beyond_the_token_letters_are_refused_before_fitting(data):
    x, _, _ = data
    # 25 levels + the suffix use the 26 letters a..z; 26 levels made a model that
    # could not be tokenized, nor saved and loaded back
    with pytest.raises(ValueError, match="levels must be at most 25, got 26"):
        semantic.fit(x, levels=26, codebook_size=2)
    ids = semantic.fit(x, levels=25, codebook_size=2)
    assert len(ids.vocabulary()) == 25 * 2 + ids.suffix_size


@pytest.mark.parametrize("size", [10**9 + 1, 10**18, 2**70])
def test_huge_suffix_size_is_refused(data, size):
    x, ids, _ = data
    with pytest.raises(ValueError, match=r"suffix_size must be at most 1000000000"):
        semantic.fit(x, levels=2, codebook_size=8, suffix_size=size)
    with pytest.raises(ValueError, match=r"suffix_size must be at most"):
        ids.with_suffix_size(size)


def test_a_file_with_a_huge_suffix_size_is_a_format_error(data, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    _, ids, _ = data
    ids.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "np") as fh:
        meta = dict(fh.metadata())
    cfg = json.loads(meta["semantic"])
    cfg["suffix_size"] = 10**30
    meta["semantic"] = json.dumps(cfg)
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "v.safetensors"), meta)
    with pytest.raises(ModelFormatError, match="suffix_size must be at most"):
        semantic.load(tmp_path / "v.safetensors")


def test_vocabulary_size_is_bounded():
    from viva_glyph.semantic._tokens import MAX_VOCABULARY, vocabulary

    with pytest.raises(ValueError, match="tokens"):
        vocabulary((256, MAX_VOCABULARY))
    assert len(vocabulary((3, 4))) == 7


@pytest.mark.parametrize("flag", ["balanced", "report"])
def test_non_bool_flags_are_type_errors(data, flag):
    x, ids, _ = data
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        ids.unique(x, **{flag: "no"})
    if flag == "balanced":
        with pytest.raises(TypeError, match="balanced must be a bool"):
            ids.codes(x, balanced="no")


def test_decode_checks_the_suffix_column(data):
    _, ids, uids = data
    bad = uids.astype(np.int64)
    bad[7, -1] = ids.suffix_size
    with pytest.raises(ValueError, match="column 2"):
        ids.decode(bad)
    np.testing.assert_array_equal(ids.decode(uids), ids.decode(uids[:, :2]))


# -- tokens and trie ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["<a_\u0661><b_1><c_0>", "<a_01><b_1><c_0>", "<a_1><b_\uff11><c_0>"],
)
def test_parse_accepts_only_the_vocabulary_s_tokens(data, text):
    _, ids, _ = data
    vocab = set(ids.vocabulary())
    with pytest.raises(ValueError, match="token string 0"):
        ids.parse(text)
    assert ids.parse("<a_1><b_1><c_0>").tolist() == [[1, 1, 0]]
    assert {"<a_1>", "<b_1>", "<c_0>"} <= vocab


@pytest.mark.parametrize("texts", [None, 5, b"<a_1>", [b"<a_1>"]])
def test_parse_of_non_strings_is_a_type_error(data, texts):
    _, ids, _ = data
    with pytest.raises(TypeError, match="str"):
        ids.parse(texts)


def test_parse_error_message_is_bounded(data):
    _, ids, _ = data
    with pytest.raises(ValueError) as info:
        ids.parse("<a_1>" * 100_000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("prefix", [[1.5], "12", [True], [np.float64(2.0)], 3, None])
def test_trie_prefix_must_be_ints(data, prefix):
    _, ids, uids = data
    trie = semantic.PrefixTrie(uids, ids.radices)
    with pytest.raises(TypeError, match="prefix"):
        trie.allowed(prefix)
    with pytest.raises(TypeError, match="prefix"):
        trie.count(prefix)


def test_trie_prefix_beyond_int64_is_a_value_error(data):
    _, ids, uids = data
    trie = semantic.PrefixTrie(uids, ids.radices)
    with pytest.raises(ValueError, match="codes column 0"):
        trie.allowed([2**70])


def test_trie_contains_is_false_for_anything_not_an_id(data):
    _, ids, uids = data
    trie = semantic.PrefixTrie(uids, ids.radices)
    brute = {tuple(r) for r in uids.tolist()}
    assert tuple(uids[0].tolist()) in brute and list(uids[0]) in trie
    for thing in ([99, 1, 2], [-1, 0, 0], "abc", [0.5, 1, 2], [uids[0][0], uids[0][1], 10**6]):
        assert thing not in trie


# -- evaluate -----------------------------------------------------------------------


def test_evaluate_checks_every_row_of_the_ids(data):
    x, ids, uids = data
    bad = uids.astype(np.int64)
    bad[123, 0] = 8
    with pytest.raises(ValueError, match="row 123"):
        semantic.evaluate(x, bad, ids)


def test_evaluate_refuses_float_ids(data):
    x, ids, uids = data
    with pytest.raises(TypeError, match="integers"):
        semantic.evaluate(x, uids.astype(np.float64) + 0.5, ids)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 2.5}, TypeError, "k must be a positive int"),
        ({"k": True}, TypeError, "k must be a positive int"),
        ({"sample": 0}, ValueError, "sample must be a positive int"),
        ({"sample": -1}, ValueError, "sample must be a positive int"),
        ({"sample": 1.5}, TypeError, "sample must be a positive int"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int"),
    ],
)
def test_evaluate_parameters(data, kwargs, error, match):
    x, ids, uids = data
    with pytest.raises(error, match=match):
        semantic.evaluate(x, uids, ids, **kwargs)


# -- the ID store ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["folder", "missing"])
def test_store_path_that_cannot_be_opened_is_a_clear_error(tmp_path, where):
    path = tmp_path if where == "folder" else tmp_path / "no" / "s.sqlite"
    with pytest.raises(ValueError, match="cannot open the ID store"):
        semantic.IdStore(path)


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf"), "x"])
def test_store_timeout_is_checked(tmp_path, timeout):
    with pytest.raises((TypeError, ValueError), match="timeout"):
        semantic.IdStore(tmp_path / "s.sqlite", timeout=timeout)


def foreign_sqlite(folder: Path, *statements: str) -> Path:
    """A SQLite file made by running ``statements`` (not by viva-glyph)."""
    path = folder / "f.sqlite"
    con = sqlite3.connect(path)
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize(
    "statements",
    [
        (  # a foreign database whose tables have the store's names
            "CREATE TABLE meta (name, value)",
            "CREATE TABLE ids (a)",
            "INSERT INTO ids VALUES (42)",
        ),
        (  # the store's format rows, but an ids table without the uniqueness constraints
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE ids (glyph, suffix, key)",
            "INSERT INTO meta VALUES ('format', 'viva-glyph-idstore'), ('version', '1')",
        ),
    ],
)
def test_store_refuses_a_database_it_did_not_make(tmp_path, statements):
    path = foreign_sqlite(tmp_path, *statements)
    con = sqlite3.connect(path)
    before = con.execute("SELECT * FROM meta").fetchall()
    con.close()
    with pytest.raises(ValueError, match="not a viva-glyph ID store"):
        semantic.IdStore(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT * FROM meta").fetchall() == before  # left as it was
    con.close()


def _tampered(tmp_path, ids, x, sql):
    path = tmp_path / "t.sqlite"
    with semantic.IdStore(path) as store:
        store.assign(ids, x[:5], ["a", "b", "c", "d", "e"])
    con = sqlite3.connect(path)
    con.execute(sql)
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ids SET glyph = -5 WHERE key = 'a'",
        "UPDATE ids SET glyph = 64 WHERE key = 'a'",
        "UPDATE ids SET glyph = 'abc' WHERE key = 'a'",
        "UPDATE ids SET glyph = glyph + 0.5 WHERE key = 'a'",
        "UPDATE ids SET suffix = 1000000 WHERE key = 'a'",
        "UPDATE ids SET suffix = 'x' WHERE key = 'a'",
    ],
)
def test_store_rows_read_back_are_validated(tmp_path, data, sql):
    x, ids, _ = data
    path = _tampered(tmp_path, ids, x, sql)
    with semantic.IdStore(path) as store:
        with pytest.raises(ValueError, match="corrupt"):
            store.assign(ids, x[:6], ["a", "b", "c", "d", "e", "f"])
        with pytest.raises(ValueError, match="corrupt"):
            store.get(["a"], ids)
        with pytest.raises(ValueError, match="corrupt"):
            store.check()


def test_store_new_keys_of_a_glyph_with_a_corrupt_suffix_are_refused(tmp_path, data):
    x, ids, _ = data
    path = _tampered(tmp_path, ids, x, "UPDATE ids SET suffix = 'x' WHERE key = 'a'")
    with semantic.IdStore(path) as store, pytest.raises(ValueError, match="corrupt"):
        store.assign(ids, x[:1], ["new"])  # same row as 'a': the same glyph


def test_store_get_with_another_model_is_refused(tmp_path, data):
    x, ids, _ = data
    other = semantic.fit(x, levels=3, codebook_size=4)
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        store.assign(ids, x[:3], ["a", "b", "c"])
        with pytest.raises(ValueError, match="another model"):
            store.get(["a"], other)
        np.testing.assert_array_equal(store.get(["a"], ids), ids.unique(x[:1]))


def test_store_assign_with_a_non_model_is_a_type_error(tmp_path, data):
    x, _, _ = data
    with (
        semantic.IdStore(tmp_path / "s.sqlite") as store,
        pytest.raises(TypeError, match="SemanticIds"),
    ):
        store.assign("ids.safetensors", x[:1], ["a"])  # type: ignore[arg-type]


def test_store_keys_that_are_not_utf8_name_the_key(tmp_path, data):
    x, ids, _ = data
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(ValueError, match=r"key 1 .*UTF-8"):
            store.assign(ids, x[:2], ["ok", "bad\udcff"])
        assert len(store) == 0


# -- command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, data):
    x, ids, _ = data
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "x.npy", x)
    ids.save(d / "m.safetensors")
    return d


@pytest.mark.parametrize("store", ["folder", "missing"])
def test_cli_store_that_cannot_be_opened_exits_2(cli_files, store):
    target = str(cli_files) if store == "folder" else str(cli_files / "no" / "s.sqlite")
    rows = np.load(cli_files / "x.npy").shape[0]
    (cli_files / "keys.txt").write_text("".join(f"k{i}\n" for i in range(rows)))
    out = run_cli(
        "ids", "assign", "m.safetensors", "x.npy", "-o", "o.csv", "--keys", "keys.txt",
        "--store", target, cwd=cli_files,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "cannot open the ID store" in out.stderr


def assign_with_keys(folder: Path, keys: str, output: str):  # type: ignore[no-untyped-def]
    """``viva-glyph ids assign m.safetensors x.npy -o OUTPUT --keys KEYS`` in ``folder``."""
    args = ("ids", "assign", "m.safetensors", "x.npy", "-o", output, "--keys", keys)
    return run_cli(*args, cwd=folder)


def test_cli_keys_file_not_utf8_names_file_and_line(cli_files):
    lines = [b"%d" % i for i in range(300)]
    lines[41] = b"k\xff"
    (cli_files / "keys.txt").write_bytes(b"\n".join(lines) + b"\n")
    out = assign_with_keys(cli_files, "keys.txt", "o.csv")
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1
    assert "keys.txt line 42 is not UTF-8" in out.stderr
    assert not (cli_files / "o.csv").exists()


def test_cli_fit_refuses_26_levels(cli_files):
    out = run_cli(
        "ids",
        "fit",
        "x.npy",
        "-o",
        "big.safetensors",
        "--levels",
        "26",
        "--codebook-size",
        "2",
        cwd=cli_files,
    )
    assert out.returncode == 2, out.stderr
    assert "levels must be at most 25" in out.stderr
    assert not (cli_files / "big.safetensors").exists()


# -- second round -----------------------------------------------------------------------


def test_keys_ending_in_nul_are_refused_not_called_duplicates(data):
    x, ids, _ = data
    # numpy's str arrays drop trailing NULs: "a\x00" and "a" became one key
    with pytest.raises(ValueError, match=r"key 0 ends in a NUL"):
        ids.unique(x[:2], keys=["a\x00", "a"])
    assert ids.unique(x[:2], keys=["a\x00b", "a"]).shape == (2, 3)  # inner NUL is kept


def test_int_keys_beyond_64_bits_say_so(data):
    x, ids, _ = data
    with pytest.raises(ValueError, match="64-bit"):
        ids.unique(x[:2], keys=[2**64, 1])


def test_one_store_shared_by_threads(tmp_path, data):
    import threading

    x, ids, _ = data
    errors: list[BaseException] = []
    with semantic.IdStore(tmp_path / "s.sqlite") as store:

        def work(i: int) -> None:
            try:
                for b in range(5):
                    rows = slice(i * 50 + b * 10, i * 50 + b * 10 + 10)
                    keys = [f"t{i}-{j}" for j in range(rows.start, rows.stop)]
                    store.assign(ids, x[rows], keys)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(store) == 200
        store.check()
        got = store.get([f"t{i}-{j}" for i in range(4) for j in range(i * 50, i * 50 + 50)], ids)
        assert np.unique(got, axis=0).shape[0] == 200
        np.testing.assert_array_equal(got[:, :2], ids.codes(x[:200]))


def test_dask_array_of_unknown_length_is_a_clear_error(data):
    da = pytest.importorskip("dask.array")
    x, ids, _ = data
    d = da.from_array(x, chunks=(50, 8))
    unknown = d[d[:, 0] > 0]
    with pytest.raises(ValueError, match="unknown"):
        ids.codes(unknown)
    np.testing.assert_array_equal(
        ids.codes(unknown.compute_chunk_sizes()), ids.codes(x[x[:, 0] > 0])
    )


def test_a_closed_store_says_so(tmp_path, data):
    x, ids, _ = data
    store = semantic.IdStore(tmp_path / "s.sqlite")
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.assign(ids, x[:1], ["a"])
    with pytest.raises(ValueError, match="closed"):
        len(store)
    store.close()  # twice is fine


@pytest.mark.parametrize("radices", [[0, 3], [4, -1], [2.5, 3], [True, 3], []])
def test_trie_radices_are_checked(radices):
    with pytest.raises((TypeError, ValueError), match="radices"):
        semantic.PrefixTrie(np.zeros((0, max(len(radices), 1)), dtype=np.int64), radices)


def test_evaluate_bounds_k(data):
    from viva_glyph.semantic._eval import MAX_K

    x, ids, _ = data
    big = np.repeat(x, 5, axis=0)[: MAX_K + 10]
    codes = ids.codes(big)
    with pytest.raises(ValueError, match=f"k must be at most {MAX_K}"):
        semantic.evaluate(big, codes, ids, k=MAX_K + 1)


def test_evaluate_neighbours_in_query_chunks_match_brute_force(monkeypatch):
    """sample=N held (N, min(N, 4096)) blocks of distances at once: the queries now go in
    chunks, so memory is bounded whatever sample is, and the result is the brute force's."""
    import tracemalloc

    from viva_glyph.semantic import _eval

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 4))
    ids = semantic.fit(x, levels=2, codebook_size=8, suffix_size=3000)
    codes = ids.codes(x).astype(np.int64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # brute force, float64
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :5]
    del d
    same = np.cumprod(codes[:, None, :] == codes[nn], axis=2)
    monkeypatch.setattr(_eval, "_QUERY_CHUNK", 64, raising=False)
    tracemalloc.start()
    try:
        rep = semantic.evaluate(x, codes, ids, k=5, sample=3000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.neighbour_sample == 3000
    assert rep.first_token_share == pytest.approx(same[:, :, 0].mean(), abs=2 / 15000)
    assert rep.mean_common_prefix == pytest.approx(same.sum(axis=2).mean(), abs=2 * 2 / 15000)
    assert peak < 30 * 2**20  # one chunk: 64 x 3000 x 8 bytes per array; was 3000 x 3000


def test_fit_progress_must_be_a_bool(data):
    x, _, _ = data
    with pytest.raises(TypeError, match="progress must be a bool"):
        semantic.fit(x, levels=1, codebook_size=4, progress="no")


def test_tokens_of_uint64_codes_beyond_int64_name_the_value(data):
    _, ids, _ = data
    with pytest.raises(ValueError, match=str(2**63 + 5)):
        ids.tokens(np.array([[2**63 + 5, 0, 0]], dtype=np.uint64))
    assert ids.tokens(np.array([[7, 7, 299]], dtype=np.uint64)) == ["<a_7><b_7><c_299>"]


def test_plot_without_any_collision_gives_no_warning(tmp_path):
    import warnings

    pytest.importorskip("matplotlib")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    ids = semantic.fit(x, levels=2, codebook_size=64, suffix_size=64)
    rep = semantic.evaluate(x, ids.unique(x), ids)
    assert rep.collisions_per_depth[-1] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pragma", ["max_page_count = {pages}", "query_only = 1"])
def test_a_full_or_read_only_store_is_an_os_error_and_stores_nothing(tmp_path, data, pragma):
    x, ids, _ = data
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        store.assign(ids, x[:3], ["a", "b", "c"])
        pages = store._con.execute("PRAGMA page_count").fetchone()[0]
        store._con.execute("PRAGMA " + pragma.format(pages=pages))  # a full disk, a read-only file
        keys = [f"k{i:0200d}" for i in range(300)]  # long keys: more pages than there are
        with pytest.raises(OSError, match=r"s\.sqlite"):
            store.assign(ids, x, keys)
        if pragma.startswith("query_only"):  # clearing a key needs no new page
            with pytest.raises(OSError, match=r"s\.sqlite"):
                store.retire(["a"])
        assert len(store) == 3
        store.check()


def test_evaluate_mse_of_a_normalized_residual_model_is_its_decode_error():
    x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    ids = semantic.fit(
        x, levels=3, codebook_size=16, metric="cosine", normalize_residuals=True, suffix_size=2000
    )
    uids = ids.unique(x)
    rep = semantic.evaluate(x, uids, ids)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    want = [float(((unit - ids.decode(uids[:, : j + 1])) ** 2).mean()) for j in range(3)]
    np.testing.assert_allclose(rep.mse_per_level, want, rtol=1e-9)
    assert rep.mse == pytest.approx(want[-1], rel=1e-9)


def test_cli_keys_file_with_a_utf8_bom(cli_files):
    import csv

    (cli_files / "bom.txt").write_bytes(
        b"\xef\xbb\xbf" + b"\n".join(b"k%d" % i for i in range(300)) + b"\n"
    )
    out = assign_with_keys(cli_files, "bom.txt", "bom.csv")
    assert out.returncode == 0, out.stderr
    with open(cli_files / "bom.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(300)]


def test_one_huge_key_does_not_pad_every_key_to_its_length(data):
    """numpy's fixed-width str array of the keys was N x (longest key) x 4 bytes: one key
    of 2,000,000 characters among 300 made 2.4 GB. Ties are still broken by key order."""
    import tracemalloc

    x, ids, _ = data
    same = np.repeat(x[:1], 300, axis=0)  # one glyph, equal errors: the suffix is the key order
    keys = [f"k{(i * 7919) % 300}" for i in range(300)]
    keys[5] = "k" + "x" * 2_000_000
    tracemalloc.start()
    try:
        uids = ids.unique(same, keys=keys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20
    order = sorted(range(300), key=keys.__getitem__)
    want = np.empty(300, dtype=np.int64)
    want[order] = np.arange(300)
    np.testing.assert_array_equal(uids[:, -1], want)
    dup = list(keys)
    dup[7] = dup[5]
    with pytest.raises(ValueError, match="distinct"):
        ids.unique(same, keys=dup)


def test_store_one_huge_key_does_not_pad_every_key(tmp_path, data):
    import tracemalloc

    x, ids, _ = data
    same = np.repeat(x[:1], 300, axis=0)
    keys = [f"k{(i * 7919) % 300}" for i in range(300)]
    keys[5] = "k" + "x" * 2_000_000
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        tracemalloc.start()
        try:
            uids = store.assign(ids, same, keys)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 200 * 2**20
        np.testing.assert_array_equal(uids, ids.unique(same, keys=keys))


def test_cli_eval_of_a_few_items_with_k(cli_files, data):
    x, ids, _ = data
    np.save(cli_files / "x5.npy", x[:5])
    out = run_cli("ids", "eval", "m.safetensors", "x5.npy", "--json", "--k", "2", cwd=cli_files)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    want = semantic.evaluate(x[:5], ids.unique(x[:5]), ids, k=2)
    assert rep["k"] == 2 and rep["first_token_share"] == want.first_token_share
    out = run_cli("ids", "eval", "m.safetensors", "x5.npy", cwd=cli_files)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--k" in out.stderr


@pytest.mark.parametrize("scale", [2.0**700, 2.0**-700])
def test_cosine_codes_do_not_depend_on_a_row_s_scale(scale):
    """Cosine is scale-free: rows scaled by 2^700 (squared norm overflows: every code was
    the same) or 2^-700 (it underflows to 0: 'row is all zeros') get the unscaled codes
    (a power of two scales exactly, so the directions are the same bits)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8))
    ids = semantic.fit(x, levels=2, codebook_size=8, metric="cosine", seed=0, suffix_size=300)
    scaled = x * scale
    assert np.isfinite(scaled).all() and (np.abs(scaled).max(axis=1) > 0).all()
    np.testing.assert_array_equal(ids.codes(scaled), ids.codes(x))
    np.testing.assert_array_equal(ids.unique(scaled), ids.unique(x))


@pytest.mark.parametrize("scale", [2.0**700, 2.0**-700])
def test_cosine_fit_does_not_depend_on_the_data_s_scale(scale):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 8))
    a = semantic.fit(x, levels=2, codebook_size=8, metric="cosine", seed=0)
    b = semantic.fit(x * scale, levels=2, codebook_size=8, metric="cosine", seed=0)
    for p, q in zip(a.codebooks, b.codebooks, strict=True):
        np.testing.assert_array_equal(p.vectors64, q.vectors64)


@pytest.mark.parametrize("scale", [2.0**700, 2.0**-700, 1.0])
def test_row_norms_neither_overflow_nor_underflow(scale):
    from viva_glyph.semantic._levels import row_norms, unit_rows

    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 7))
    x[3] = 0.0
    ref = np.sqrt(np.einsum("nd,nd->n", x, x))  # of the unscaled rows: no overflow
    np.testing.assert_array_equal(row_norms(x * scale), ref * scale)
    unit, norms = unit_rows(x * scale)
    np.testing.assert_array_equal(unit, unit_rows(x)[0])
    np.testing.assert_array_equal(norms, ref * scale)


@pytest.mark.parametrize("which", ["keys", "store"])
def test_cli_named_pipes_as_keys_or_store_are_refused_without_blocking(cli_files, which):
    # `--keys f.txt` with f.txt a named pipe (no writer) blocked forever.
    fifo = cli_files / f"fifo-{which}"
    if not fifo.exists():
        os.mkfifo(fifo)
    rows = np.load(cli_files / "x.npy").shape[0]
    (cli_files / "keys.txt").write_text("".join(f"k{i}\n" for i in range(rows)))
    keys = str(fifo) if which == "keys" else "keys.txt"
    args = ("ids", "assign", "m.safetensors", "x.npy", "-o", "o.csv", "--keys", keys)
    if which == "store":
        args += ("--store", str(fifo))
    out = run_cli(*args, cwd=cli_files, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "named pipe" in out.stderr, out.stderr
