"""The SQLite ID store: stable IDs, concurrent processes, kill -9, foreign files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import unprivileged
from hypothesis import given, settings
from hypothesis import strategies as st

from viva_glyph import semantic

SRC = str(Path(semantic.__file__).resolve().parents[2])

WORKER = """
import sys, numpy as np
from viva_glyph import semantic
ids = semantic.load(sys.argv[1])
store = semantic.IdStore(sys.argv[2])
prefix, n, batch, seed = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rng = np.random.default_rng(seed)
X = rng.normal(size=(n, ids.dimension)).astype(np.float32)
print("ready", flush=True)
for s in range(0, n, batch):
    store.assign(ids, X[s:s + batch], [f"{prefix}{i}" for i in range(s, min(s + batch, n))])
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    ids = semantic.fit(x, levels=2, codebook_size=16, suffix_size=1 << 20)
    path = tmp_path_factory.mktemp("m") / "ids.safetensors"
    ids.save(path)
    return ids, path


def all_rows(path: Path) -> list[tuple[int, int, str | None]]:
    con = sqlite3.connect(path)
    rows = con.execute("SELECT glyph, suffix, key FROM ids").fetchall()
    con.close()
    return rows


def test_existing_keys_keep_ids_and_new_ids_never_reused(tmp_path, model):
    ids, _ = model
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    with semantic.IdStore(tmp_path / "s.db") as store:
        first = store.assign(ids, x[:300], [f"k{i}" for i in range(300)])
        assert np.unique(first, axis=0).shape[0] == 300
        np.testing.assert_array_equal(first[:, :2], ids.codes(x[:300]))
        # same keys with other vectors: IDs kept; new keys get new IDs
        again = store.assign(ids, x[200:500], [f"k{i}" for i in range(200, 500)])
        np.testing.assert_array_equal(again[:100], first[200:300])
        allid = np.concatenate([first, again[100:]])
        assert np.unique(allid, axis=0).shape[0] == 500
        assert len(store) == 500
        np.testing.assert_array_equal(store.get(["k7", "k450"], ids), allid[[7, 450]])
        assert store.retire(["k7"]) == 1
        later = store.assign(ids, np.repeat(x[7:8], 5, axis=0), [f"n{i}" for i in range(5)])
        taken = {tuple(r) for r in allid.tolist()}
        assert not taken & {tuple(r) for r in later.tolist()}  # k7's ID is not handed out again
        with pytest.raises(KeyError, match="k7"):
            store.get(["k7"], ids)
        store.check()


def test_two_processes_assign_50000_keys_each_without_duplicates(tmp_path, model):
    _, model_path = model
    db = tmp_path / "s.db"
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(model_path), str(db), p, "50000", "5000", str(s)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p, s in (("a", 1), ("b", 2))
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "done" in out
    rows = all_rows(db)
    assert len(rows) == 100_000
    assert len({(g, s) for g, s, _ in rows}) == 100_000
    assert len({k for _, _, k in rows}) == 100_000
    with semantic.IdStore(db) as store:
        store.check()


def test_kill_9_mid_assign_leaves_store_consistent_and_rerun_completes(tmp_path, model):
    _, model_path = model
    db = tmp_path / "s.db"
    env = {**os.environ, "PYTHONPATH": SRC}
    args = [sys.executable, "-c", WORKER, str(model_path), str(db), "a", "200000", "40000", "3"]
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    wal = Path(str(db) + "-wal")
    while time.monotonic() < deadline and not (wal.exists() and wal.stat().st_size > 1 << 20):
        time.sleep(0.005)  # a transaction is writing
    p.send_signal(signal.SIGKILL)
    p.wait()
    with semantic.IdStore(db) as store:
        store.check()
        count = len(store)
    assert count % 40000 == 0 and count < 200_000  # whole batches only
    rows_before = {k: (g, s) for g, s, k in all_rows(db)}
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = all_rows(db)
    assert len(rows) == 200_000 == len({(g, s) for g, s, _ in rows})
    after = {k: (g, s) for g, s, k in rows}
    assert all(after[k] == v for k, v in rows_before.items())
    with semantic.IdStore(db) as store:
        store.check()


def test_corrupt_foreign_and_other_model_files(tmp_path, model):
    ids, _ = model
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ValueError, match="not a viva-glyph ID store"):
        semantic.IdStore(junk)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="not a viva-glyph ID store"):
        semantic.IdStore(foreign)
    db = tmp_path / "s.db"
    x = np.random.default_rng(4).normal(size=(20, 8)).astype(np.float32)
    with semantic.IdStore(db) as store:
        store.assign(ids, x, list(range(20)))
    other = semantic.fit(x.repeat(50, axis=0) + 0.1, levels=2, codebook_size=16)
    with semantic.IdStore(db) as store:
        with pytest.raises(ValueError, match="another model"):
            store.assign(other, x, list(range(20)))
        with pytest.raises(ValueError, match="distinct"):
            store.assign(ids, x[:2], ["a", "a"])
        with pytest.raises(ValueError, match="one key per row"):
            store.assign(ids, x[:2], ["a"])
        assert len(store) == 20


def test_suffix_range_exceeded_stores_nothing(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    ids = semantic.fit(x, levels=1, codebook_size=4, suffix_size=8)
    with semantic.IdStore(tmp_path / "s.db") as store:
        store.assign(ids, np.repeat(x[:1], 6, axis=0), [f"a{i}" for i in range(6)])
        with pytest.raises(semantic.SuffixRangeError, match="suffix size of 9 would work"):
            store.assign(ids, np.repeat(x[:1], 3, axis=0), [f"b{i}" for i in range(3)])
        assert len(store) == 6
        store.check()


def test_a_store_busy_while_opening_is_waited_for(tmp_path, monkeypatch):
    """Another process switching the file to WAL or creating the schema makes SQLite say
    'database is locked' at once (its busy handler is not always called there): opening
    waits and retries within ``timeout`` instead of calling the file 'not an ID store'."""
    from viva_glyph.semantic import _store

    real_connect = sqlite3.connect
    busy = {"left": 3}

    class Flaky:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode") and busy["left"] > 0:
                busy["left"] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.con, name)

    monkeypatch.setattr(_store.sqlite3, "connect", lambda *a, **k: Flaky(real_connect(*a, **k)))
    with semantic.IdStore(tmp_path / "s.db", timeout=30) as store:
        assert len(store) == 0
    assert busy["left"] == 0
    busy["left"] = 10**9  # locked for good: a clear error once the timeout has passed
    with pytest.raises(OSError, match=r"locked by another process .*0\.5 s"):
        semantic.IdStore(tmp_path / "new.db", timeout=0.5)  # a new store: opening makes it
    with semantic.IdStore(tmp_path / "s.db", timeout=0.5) as store:  # an existing one: no lock
        assert len(store) == 0


# -- read-only stores, readers beside a writer, one error for a lock, corrupt files -------
READER = """
import json, sys, numpy as np
from viva_glyph import semantic
ids = semantic.load(sys.argv[1])
out = {}
with semantic.IdStore(sys.argv[2], timeout=5) as store:
    out["len"] = len(store)
    out["get"] = store.get(["k1", "k7"], ids).tolist()
    assert store.get(["k1", "k7"]).tolist() == out["get"]  # the lookups, without the model
    assert store.keys_of(store.get(["k7", "k1"])) == ["k7", "k1"]
    x = np.zeros((2, ids.dimension), np.float32)
    out["known"] = store.assign(ids, x, ["k1", "k7"]).tolist()  # stored keys: a read
    for what, call in (
        ("assign", lambda: store.assign(ids, x, ["new1", "new2"])),
        ("retire", lambda: store.retire(["k1"])),
    ):
        try:
            call()
            out[what] = "done"
        except OSError as exc:
            out[what] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("folder_mode", [0o555, 0o755])
def test_a_read_only_store_reads_and_says_read_only_on_writes(tmp_path, model, folder_mode):
    # A store file 0444 in a 0555 folder, as a user who cannot write them, could not even
    # be read: "attempt to write a readonly database".
    ids, model_path = model
    prefix = unprivileged()  # conftest: without the right to override file modes
    folder = tmp_path / "ro"
    folder.mkdir()
    x = np.random.default_rng(6).normal(size=(10, 8)).astype(np.float32)
    with semantic.IdStore(folder / "s.sqlite") as store:
        first = store.assign(ids, x, [f"k{i}" for i in range(10)])
    before = (folder / "s.sqlite").read_bytes()
    (folder / "s.sqlite").chmod(0o444)
    folder.chmod(folder_mode)
    try:
        res = subprocess.run(
            [*prefix, sys.executable, "-c", READER, str(model_path), str(folder / "s.sqlite")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
            timeout=120,
            check=False,
        )
    finally:
        folder.chmod(0o755)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["len"] == 10
    assert out["get"] == first[[1, 7]].tolist() == out["known"]
    for what in ("assign", "retire"):
        assert "read-only" in out[what] and "s.sqlite" in out[what], out
    assert (folder / "s.sqlite").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".sqlite") == ["s.sqlite"]


def test_opening_and_reading_do_not_wait_for_a_writer(tmp_path, model):
    # Opening took the write lock (BEGIN IMMEDIATE): a reader waited behind any writer
    # for up to the timeout (600 s by default), then got a ValueError.
    ids, _ = model
    x = np.random.default_rng(7).normal(size=(5, 8)).astype(np.float32)
    db = tmp_path / "s.sqlite"
    with semantic.IdStore(db) as store:
        first = store.assign(ids, x, list("abcde"))
    with _write_locked(db):  # another process's assign, in progress
        t0 = time.monotonic()
        with semantic.IdStore(db, timeout=3) as store:
            assert len(store) == 5
            np.testing.assert_array_equal(store.get(["c"], ids), first[2:3])
            with pytest.raises(OSError, match="locked by another process"):
                store.assign(ids, x[:1], ["f"])  # a write waits, then says why
        assert time.monotonic() - t0 < 3 + 2.5  # only the write waited


def test_a_lock_is_the_same_error_from_the_constructor_and_from_assign(tmp_path, model):
    # The constructor said ValueError, assign OSError, for the same condition.
    ids, _ = model
    db = tmp_path / "new.sqlite"

    def locked() -> Any:
        return pytest.raises(OSError, match=r"new\.sqlite.*locked by another process")

    with _write_locked(db), locked():  # a new, empty file: opening must create the store
        semantic.IdStore(db, timeout=0.3)
    with semantic.IdStore(db) as store:
        store.assign(ids, np.zeros((1, 8), np.float32), ["a"])
    with _write_locked(db), semantic.IdStore(db, timeout=0.3) as store, locked():
        store.assign(ids, np.zeros((1, 8), np.float32), ["b"])


@contextlib.contextmanager
def _write_locked(db: Path) -> Iterator[None]:
    """Another connection holding the write lock of ``db`` meanwhile."""
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_bytes_that_are_no_utf8_in_the_schema_or_a_key_name_the_file(tmp_path, model):
    # A byte flip inside sqlite_master gave a raw UnicodeDecodeError without the file name.
    ids, _ = model
    db = tmp_path / "s.sqlite"
    with semantic.IdStore(db) as store:
        store.assign(ids, np.zeros((2, 8), np.float32), ["a", "b"])
    data = bytearray(db.read_bytes())
    at = data.index(b"CREATE TABLE ids")
    data[at + 7] = 0xFF  # inside the schema's SQL text
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.sqlite (is not a viva-glyph ID store|is corrupt)"):
        semantic.IdStore(bad)
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = CAST(x'ff61' AS TEXT) WHERE name = 'format'")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match=r"s\.sqlite is not a viva-glyph ID store, or is corrupt"):
        semantic.IdStore(db)


@settings(max_examples=200)
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=3)
)
def test_any_bit_flip_in_a_store_is_a_clear_error_or_a_sound_store(tmp_path_factory, flips):
    """Open, count, check, read and write a store with flipped bits: ValueError or OSError
    naming the file, or it works."""
    folder = tmp_path_factory.mktemp("flip")
    good = flip_source(folder)
    data = bytearray(good.read_bytes())
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    path = folder / "f.sqlite"
    path.write_bytes(bytes(data))
    ids = FLIP_MODEL[0]
    try:
        with semantic.IdStore(path, timeout=1) as store:
            len(store)
            store.check()
            store.get(["a"], ids)
            store.assign(ids, np.ones((1, ids.dimension), np.float32), ["z"])
    except (ValueError, OSError) as exc:
        assert "f.sqlite" in str(exc), exc
    except KeyError:
        pass  # a flip that makes key 'a' another key


FLIP_MODEL: list[semantic.SemanticIds] = []


def flip_source(folder: Path) -> Path:
    if not FLIP_MODEL:
        x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
        FLIP_MODEL.append(semantic.fit(x, levels=2, codebook_size=4, suffix_size=100))
    path = folder / "good.sqlite"
    with semantic.IdStore(path) as store:
        store.assign(FLIP_MODEL[0], np.zeros((3, 3), np.float32), ["a", "b", "c"])
    return path


@pytest.fixture(scope="module")
def crowded():
    """A model without balance and 3,000 items of 60 distinct vectors: many equal errors."""
    rng = np.random.default_rng(8)
    base = rng.normal(size=(60, 6)).astype(np.float32)
    x = base[rng.integers(0, 60, 3000)]
    ids = semantic.fit(base.repeat(20, axis=0), levels=2, codebook_size=4, suffix_size=3000)
    return ids, x


@pytest.mark.parametrize("kind", ["int", "str", "numpy int"])
def test_store_and_unique_number_ties_alike(tmp_path, crowded, kind):
    # With int keys the store broke ties by the key's decimal text ("10" before "9") and
    # unique by its value: 11 of 3,000 rows got other IDs.
    ids, x = crowded
    values = np.random.default_rng(9).permutation(3000) - 1500  # negative ones too
    keys = {
        "int": values.tolist(),
        "str": [f"k{v}" for v in values.tolist()],
        "numpy int": list(values),
    }[kind]
    with semantic.IdStore(tmp_path / "s.sqlite") as store:
        got = store.assign(ids, x, keys)
    np.testing.assert_array_equal(got, ids.unique(x, keys=keys))


@settings(max_examples=40)
@given(
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    keys=st.lists(st.integers(-(10**6), 10**6), min_size=40, max_size=40, unique=True),
    as_text=st.booleans(),
)
def test_store_and_unique_agree_on_any_batch(tmp_path_factory, crowded, rows, keys, as_text):
    ids, x = crowded
    batch = x[rows]
    chosen = [str(k) if as_text else k for k in keys[: len(rows)]]
    with semantic.IdStore(tmp_path_factory.mktemp("s") / "s.sqlite") as store:
        np.testing.assert_array_equal(
            store.assign(ids, batch, chosen), ids.unique(batch, keys=chosen)
        )


def test_the_suffix_range_advice_works_on_a_store(tmp_path):
    # "a suffix size of 9 would work", followed, gave "was made with another model".
    import re

    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    ids = semantic.fit(x, levels=1, codebook_size=4, suffix_size=8)
    with semantic.IdStore(tmp_path / "s.db") as store:
        first = store.assign(ids, np.repeat(x[:1], 6, axis=0), [f"a{i}" for i in range(6)])
        with pytest.raises(semantic.SuffixRangeError) as info:
            store.assign(ids, np.repeat(x[:1], 3, axis=0), [f"b{i}" for i in range(3)])
        size = int(re.search(r"a suffix size of (\d+) would work", str(info.value))[1])
        wider = ids.with_suffix_size(size)  # as the message says
        later = store.assign(wider, np.repeat(x[:1], 3, axis=0), [f"b{i}" for i in range(3)])
        assert f"ids.with_suffix_size({size})" in str(info.value)
        assert later[:, 1].tolist() == [6, 7, 8]
        np.testing.assert_array_equal(store.get([f"a{i}" for i in range(6)], wider), first)
        store.check()
        with pytest.raises(ValueError, match=r"suffixes up to 8.*suffix range 8"):
            store.get(["a0"], ids)  # the narrower model cannot number what is stored now
    other = semantic.fit(x + 1, levels=1, codebook_size=4, suffix_size=size)
    with semantic.IdStore(tmp_path / "s.db") as store, pytest.raises(ValueError, match="another"):
        store.assign(other, x[:1], ["c"])  # other codebooks are still another model


def test_lookup_by_key_and_by_id_without_the_model(tmp_path, model):
    ids, _ = model
    x = np.random.default_rng(10).normal(size=(40, 8)).astype(np.float32)
    keys = [f"item-{i}" for i in range(40)]
    db = tmp_path / "s.sqlite"
    with semantic.IdStore(db) as store:
        assigned = store.assign(ids, x, keys)
        assert store.retire(["item-3"]) == 1
    by_key = {k: row.tolist() for k, row in zip(keys, assigned, strict=True)}
    by_id = {tuple(row): (None if k == "item-3" else k) for k, row in by_key.items()}
    with semantic.IdStore(db, create=False) as store:
        live = [k for k in keys if k != "item-3"]
        got = store.get(live)  # key -> ID, from the store's own record of its layout
        assert got.tolist() == [by_key[k] for k in live]
        np.testing.assert_array_equal(store.get(live, ids), got)  # the same with the model
        assert store.keys_of(assigned) == [by_id[tuple(r)] for r in assigned.tolist()]
        assert (
            store.keys_of(ids.tokens(assigned[:5]))
            == [by_id[tuple(r)] for r in by_key.values()][:5]
        )
        assert store.keys_of(assigned[7]) == ["item-7"]  # one ID
        assert store.tokens(assigned) == ids.tokens(assigned)  # the recorded ranges
        np.testing.assert_array_equal(store.parse(store.tokens(assigned)), assigned)
        free = next(
            [a, b, s]
            for a in range(16)
            for b in range(16)
            for s in range(3)
            if (a, b, s) not in by_id
        )
        with pytest.raises(KeyError, match=r"is not in .*s\.sqlite"):
            store.keys_of([free])
        with pytest.raises(KeyError, match="item-3"):
            store.get(["item-3"])
        with pytest.raises(ValueError, match=r"codes column 0 must be in \[0, 16\)"):
            store.keys_of([[16, 0, 0]])
        with pytest.raises(ValueError, match=r"3 positions \(2 codes and a suffix\), got 2"):
            store.keys_of([[1, 0]])
    con = sqlite3.connect(db)
    con.execute("UPDATE ids SET key = CAST(x'ff61' AS TEXT) WHERE key = 'item-9'")
    con.commit()
    con.close()
    with semantic.IdStore(db) as store, pytest.raises(ValueError, match=r"s\.sqlite is corrupt"):
        store.keys_of(assigned[9])
    with pytest.raises(ValueError, match="not a viva-glyph ID store"):
        semantic.IdStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_reading_a_read_only_store_leaves_nothing_that_blocks_later_writes(tmp_path, model):
    # A store file 0444 in a writable folder, read by a user who cannot write it, left an
    # s.sqlite-shm of mode 0444 (and an s.sqlite-wal) beside it: once the file was made
    # writable again every write failed with "attempt to write a readonly database".
    ids, model_path = model
    prefix = unprivileged()
    folder = tmp_path / "w"
    folder.mkdir()
    folder.chmod(0o777)
    x = np.random.default_rng(6).normal(size=(10, 8)).astype(np.float32)
    with semantic.IdStore(folder / "s.sqlite") as store:
        store.assign(ids, x, [f"k{i}" for i in range(10)])
    (folder / "s.sqlite").chmod(0o444)
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run(
        [*prefix, sys.executable, "-c", READER, str(model_path), str(folder / "s.sqlite")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["s.sqlite"]
    (folder / "s.sqlite").chmod(0o666)
    writer = (
        "import sys, numpy as np\nfrom viva_glyph import semantic\n"
        "ids = semantic.load(sys.argv[1])\n"
        "with semantic.IdStore(sys.argv[2]) as s:\n"
        "    s.assign(ids, np.zeros((1, 8), np.float32), ['new'])\n"
    )
    res = subprocess.run(
        [*prefix, sys.executable, "-c", writer, str(model_path), str(folder / "s.sqlite")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
