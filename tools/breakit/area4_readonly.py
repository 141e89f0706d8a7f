"""Area 4: read-only files and folders, run without the right to override file modes
(setpriv: uid 0 with every capability dropped; /root is 0700 here so uid 65534 cannot
start this interpreter). Every output into a read-only folder: exit 2, one line, nothing
created, quickly. The read-only ID store: lookups work, new keys are refused naming
"read-only", the store bytes unchanged."""
import hashlib, os, shutil, subprocess, sys, time
from pathlib import Path

W = Path("/tmp/bk4"); SRC = "/work/wt-break/src"
PFX = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
env = dict(os.environ, PYTHONPATH=SRC)


def run(args, cwd=W):
    t0 = time.time()
    r = subprocess.run([*PFX, sys.executable, "-m", "viva_glyph", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr.strip().splitlines(), time.time() - t0


def tree(p):
    return sorted((str(q), q.stat().st_size if q.is_file() else -1) for q in p.rglob("*"))


shutil.rmtree(W, ignore_errors=True); shutil.copytree("/tmp/bk", W)
ro = W / "ro"; ro.mkdir(); ro.chmod(0o555)
tried = held = 0


def verdict(ok, label, rc, lines, dt):
    global tried, held
    tried += 1; held += ok
    print(f"{'HELD' if ok else 'FAIL'} {label:34s} rc={rc} {dt:4.1f}s {lines[-1][:150] if lines else ''}")


outs = [
    ("fit", ["fit", "x.npy", "-o", "ro/o.safetensors", "--stages", "1", "--codebook-size", "4"]),
    ("encode", ["encode", "m.safetensors", "x.npy", "-o", "ro/o.npy"]),
    ("encode zarr", ["encode", "m.safetensors", "x.npy", "-o", "ro/o.zarr"]),
    ("encode parquet", ["encode", "m.safetensors", "x.npy", "-o", "ro/o.parquet"]),
    ("decode", ["decode", "m.safetensors", "codes.npy", "-o", "ro/o.npy"]),
    ("eval --plot", ["eval", "m.safetensors", "x.npy", "--plot", "ro/o.png"]),
    ("index build", ["index", "build", "m.safetensors", "x.npy", "-o", "ro/o.vgindex"]),
    ("index search", ["index", "search", "i.vgindex", "q.npy", "-o", "ro/o.parquet"]),
    ("ids fit", ["ids", "fit", "x.npy", "-o", "ro/o.safetensors"]),
    ("ids assign", ["ids", "assign", "ids.safetensors", "x.npy", "-o", "ro/o.csv"]),
    ("ids assign --store in ro", ["ids", "assign", "ids.safetensors", "x.npy", "-o", "w.csv", "--keys", "keys.txt", "--store", "ro/new.sqlite"]),
    ("ids eval --plot", ["ids", "eval", "ids.safetensors", "x.npy", "--plot", "ro/o.png"]),
    ("demo --out", ["demo", "-q", "--out", "ro/demo"]),
]
for label, args in outs:
    rc, _, lines, dt = run(args)
    verdict(rc == 2 and len(lines) == 1 and not any(ro.iterdir()) and not (W / "w.csv").exists(), label, rc, lines, dt)

# an existing read-only output file in a writable folder: refused before work, kept
for label, args in outs:
    if label in ("demo --out", "ids assign --store in ro"):
        continue
    args = [a.replace("ro/", "rof-") for a in args]
    target = W / next(a for a in args if a.startswith("rof-"))
    if target.suffix == ".zarr":
        continue
    target.write_bytes(b"keep"); target.chmod(0o444)
    rc, _, lines, dt = run(args)
    verdict(rc == 2 and len(lines) == 1 and "read-only" in lines[0] and target.read_bytes() == b"keep"
            and not list(W.glob(".rof-*")), "ro file: " + label, rc, lines, dt)
    target.chmod(0o644); target.unlink()

# a model in a read-only folder written by --trie
shutil.copy(W / "ids.safetensors", W / "ro2.safetensors")
ro2 = W / "rodir"; ro2.mkdir(); shutil.copy(W / "ids.safetensors", ro2 / "ids.safetensors"); ro2.chmod(0o555)
before = hashlib.sha256((ro2 / "ids.safetensors").read_bytes()).hexdigest()
rc, _, lines, dt = run(["ids", "assign", "rodir/ids.safetensors", "x.npy", "-o", "t.csv", "--trie"])
verdict(rc == 2 and len(lines) == 1 and not (W / "t.csv").exists()
        and before == hashlib.sha256((ro2 / "ids.safetensors").read_bytes()).hexdigest(), "ids assign --trie ro folder", rc, lines, dt)
# a read-only model file in a writable folder, --trie
rom = W / "rom.safetensors"; shutil.copy(W / "ids.safetensors", rom); rom.chmod(0o444)
rc, _, lines, dt = run(["ids", "assign", "rom.safetensors", "x.npy", "-o", "t2.csv", "--trie"])
verdict(rc == 2 and "read-only" in lines[0] and not (W / "t2.csv").exists(), "ids assign --trie ro model file", rc, lines, dt)

# the read-only store
st = W / "s.sqlite"; st.chmod(0o444)
digest = hashlib.sha256(st.read_bytes()).hexdigest()
rc, out, lines, dt = run(["ids", "lookup", "s.sqlite", "k1", "k299"])
verdict(rc == 0 and "k1" in out, "lookup read-only store", rc, lines or [out.strip()[:100]], dt)
rc, out, lines, dt = run(["ids", "lookup", "s.sqlite", "--id", "0,0"])
verdict(rc in (0, 2) and (rc == 0 or len(lines) == 1), "lookup --id read-only store", rc, lines or [out.strip()[:100]], dt)
rc, _, lines, dt = run(["ids", "assign", "ids.safetensors", "x.npy", "-o", "same.csv", "--keys", "keys.txt", "--store", "s.sqlite"])
verdict(rc == 0 and (W / "same.csv").exists(), "assign known keys ro store", rc, lines, dt)
(W / "keys2.txt").write_text("".join(f"n{i}\n" for i in range(300)))
rc, _, lines, dt = run(["ids", "assign", "ids.safetensors", "x.npy", "-o", "new.csv", "--keys", "keys2.txt", "--store", "s.sqlite"])
verdict(rc == 2 and len(lines) == 1 and "read-only" in lines[0] and not (W / "new.csv").exists(), "assign new keys ro store", rc, lines, dt)
verdict(digest == hashlib.sha256(st.read_bytes()).hexdigest() and sorted(p.name for p in W.glob("s.sqlite*")) == ["s.sqlite"], "ro store bytes unchanged", 0, [], 0)

# a writable store file in a read-only folder
sd = W / "sdir"; sd.mkdir(); shutil.copy(W / "s.sqlite", sd / "s.sqlite"); (sd / "s.sqlite").chmod(0o644); sd.chmod(0o555)
d2 = hashlib.sha256((sd / "s.sqlite").read_bytes()).hexdigest()
rc, out, lines, dt = run(["ids", "lookup", "sdir/s.sqlite", "k5"])
verdict(rc == 0 and "k5" in out, "lookup store in ro folder", rc, lines or [out.strip()[:100]], dt)
rc, _, lines, dt = run(["ids", "assign", "ids.safetensors", "x.npy", "-o", "new2.csv", "--keys", "keys2.txt", "--store", "sdir/s.sqlite"])
verdict(rc == 2 and len(lines) == 1 and "read-only" in lines[0] and not (W / "new2.csv").exists()
        and d2 == hashlib.sha256((sd / "s.sqlite").read_bytes()).hexdigest(), "assign new keys store in ro folder", rc, lines, dt)

# API: IdStore on the read-only file
code = r'''
import numpy as np, sys
from viva_glyph.semantic import load, IdStore
ids = load("ids.safetensors"); x = np.load("x.npy")
s = IdStore("s.sqlite")
print("get", s.get(["k1"]) is not None)
try:
    s.assign(ids, x[:3], ["brand-new-1", "brand-new-2", "brand-new-3"]); print("ASSIGNED")
except OSError as e:
    print("OSError", "read-only" in str(e), str(e)[:120])
'''
r = subprocess.run([*PFX, sys.executable, "-c", code], cwd=W, env=env, capture_output=True, text=True, timeout=60)
verdict("OSError True" in r.stdout, "API IdStore.assign on ro store", r.returncode, (r.stdout + r.stderr).strip().splitlines()[-2:], 0)
print(f"tried={tried} held={held}")
