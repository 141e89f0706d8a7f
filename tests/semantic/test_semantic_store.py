"""The SQLite ID store: stable IDs, concurrent processes, kill -9, foreign files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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
    with pytest.raises(ValueError, match=r"locked by another process .*0\.5 s"):
        semantic.IdStore(tmp_path / "s.db", timeout=0.5)
