"""Area 5: 4 concurrent 'ids assign --store' writers on one store, kill -9 some mid-run,
repeat. After every round: PRAGMA integrity_check ok, the store opens, no ID twice, no key
twice, every key of each finished writer stored with the ID that writer wrote out."""
import csv, os, random, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import numpy as np

W = Path("/tmp/bk5"); SRC = "/work/wt-break/src"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
env = dict(os.environ, PYTHONPATH=SRC)
V = [sys.executable, "-m", "viva_glyph"]
W.mkdir(exist_ok=True)
rows = 20000
if not (W / "ids.safetensors").exists():
    x = np.random.default_rng(1).standard_normal((rows, 8)).astype(np.float32)
    np.save(W / "x.npy", x)
    subprocess.run([*V, "ids", "fit", "-q", str(W / "x.npy"), "-o", str(W / "ids.safetensors"),
                    "--levels", "2", "--codebook-size", "16", "--suffix-size", "4096"], env=env, check=True)
for i in range(4):
    (W / f"keys{i}.txt").write_text("".join(f"k{i * 5000 + j}\n" for j in range(rows)))
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 5)
tried = held = 0
sys.path.insert(0, SRC)
from viva_glyph.semantic import IdStore
for rnd in range(ROUNDS):
    store = W / f"s{rnd}.sqlite"
    procs = []
    for i in range(4):
        out = W / f"o{rnd}-{i}.csv"
        procs.append(subprocess.Popen([*V, "ids", "assign", "-q", str(W / "ids.safetensors"), str(W / "x.npy"),
                                       "-o", str(out), "--keys", str(W / f"keys{i}.txt"), "--store", str(store)],
                                      env=env, stderr=subprocess.PIPE, text=True))
    victims = rng.sample(range(4), rng.choice([1, 2, 3]))
    time.sleep(rng.uniform(0.5, 2.0))
    for v in victims:
        os.kill(procs[v].pid, signal.SIGKILL)
    results = []
    for i, p in enumerate(procs):
        try:
            err = p.communicate(timeout=300)[1]
        except subprocess.TimeoutExpired:
            p.kill(); err = "HANG"
        results.append((p.returncode, err.strip()))
    problems = []
    con = sqlite3.connect(store)
    if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        problems.append("integrity")
    rows_db = con.execute("SELECT glyph, suffix, key FROM ids").fetchall()
    con.close()
    keys = [r[2] for r in rows_db if r[2] is not None]
    if len(set(keys)) != len(keys):
        problems.append("duplicate keys")
    if len({(g, s) for g, s, _ in rows_db}) != len(rows_db):
        problems.append("duplicate IDs")
    with IdStore(store, create=False) as s:
        n = len(s)
    stored = {r[2]: (r[0], r[1]) for r in rows_db}
    finished = 0
    for i, (rc, err) in enumerate(results):
        if rc == 0:
            finished += 1
            with open(W / f"o{rnd}-{i}.csv") as fh:
                rd = csv.reader(fh); next(rd)
                n_out = 0
                for row in rd:
                    n_out += 1
                    if row[0] not in stored:
                        problems.append(f"writer {i} key {row[0]} not stored"); break
                if n_out != rows:
                    problems.append(f"writer {i} wrote {n_out} rows")
        elif rc == -9:
            part = sum(1 for j in range(rows) if f"k{i * 5000 + j}" in stored)
        else:
            problems.append(f"writer {i} rc={rc} {err[-200:]}")
    # killed writers: all or none of their keys that no finished writer holds?
    tried += 1; held += not problems
    print(f"round {rnd}: killed {sorted(victims)} rcs {[r[0] for r in results]} stored={len(stored)} len={n} "
          f"finished={finished} {'HELD' if not problems else problems[:3]}")
    for i, (rc, err) in enumerate(results):
        if rc not in (0, -9):
            print("   ", i, rc, err[-300:])
print(f"tried={tried} held={held}")
