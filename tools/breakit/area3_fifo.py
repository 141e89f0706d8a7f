"""Area 3: named pipes and devices as every file argument (and as outputs).
Each special file carries the suffix the argument expects (a FIFO of that name, or a
symlink of that name to /dev/zero or /dev/urandom). Expect exit 2, one line, within 20 s."""
import os, shutil, subprocess, sys, time
from pathlib import Path

W = Path("/tmp/bk3"); SRC = "/work/wt-break/src"
shutil.rmtree(W, ignore_errors=True); shutil.copytree("/tmp/bk", W)
env = dict(os.environ, PYTHONPATH=SRC)

def special(kind, name):
    p = W / f"{kind}-{name}"
    if p.exists() or p.is_symlink():
        p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    else:
        os.symlink(f"/dev/{kind}", p)
    return p.name

# (label, argv template with {} for the special file, suffix name for it)
T = [
    ("fit data", ["fit", "{}", "-o", "o.safetensors", "--stages", "1", "--codebook-size", "4"], "d.npy"),
    ("fit data csv", ["fit", "{}", "-o", "o.safetensors", "--stages", "1", "--codebook-size", "4"], "d.csv"),
    ("fit data fvecs", ["fit", "{}", "-o", "o.safetensors", "--stages", "1", "--codebook-size", "4"], "d.fvecs"),
    ("fit data parquet", ["fit", "{}", "-o", "o.safetensors", "--stages", "1", "--codebook-size", "4"], "d.parquet"),
    ("encode model", ["encode", "{}", "x.npy", "-o", "o.npy"], "m.safetensors"),
    ("encode data", ["encode", "m.safetensors", "{}", "-o", "o.npy"], "d.npy"),
    ("encode data npz", ["encode", "m.safetensors", "{}", "-o", "o.npy"], "d.npz"),
    ("decode model", ["decode", "{}", "codes.npy", "-o", "o.npy"], "m.safetensors"),
    ("decode codes", ["decode", "m.safetensors", "{}", "-o", "o.npy"], "c.npy"),
    ("decode codes csv", ["decode", "m.safetensors", "{}", "-o", "o.npy"], "c.csv"),
    ("eval model", ["eval", "{}", "x.npy"], "m.safetensors"),
    ("eval data", ["eval", "m.safetensors", "{}"], "d.npy"),
    ("info model", ["info", "{}"], "m.safetensors"),
    ("index build model", ["index", "build", "{}", "x.npy", "-o", "o.vgindex"], "m.safetensors"),
    ("index build data", ["index", "build", "m.safetensors", "{}", "-o", "o.vgindex"], "d.npy"),
    ("index search index", ["index", "search", "{}", "q.npy", "-o", "o.npz"], "i.vgindex"),
    ("index search queries", ["index", "search", "i.vgindex", "{}", "-o", "o.npz"], "d.npy"),
    ("index search vectors", ["index", "search", "i.vgindex", "q.npy", "-o", "o.npz", "--rerank", "5", "--vectors", "{}"], "v.npy"),
    ("index info", ["index", "info", "{}"], "i.vgindex"),
    ("ids fit data", ["ids", "fit", "{}", "-o", "o.safetensors"], "d.npy"),
    ("ids assign model", ["ids", "assign", "{}", "x.npy", "-o", "o.csv"], "ids.safetensors"),
    ("ids assign data", ["ids", "assign", "ids.safetensors", "{}", "-o", "o.csv"], "d.npy"),
    ("ids assign keys", ["ids", "assign", "ids.safetensors", "x.npy", "-o", "o.csv", "--keys", "{}"], "k.txt"),
    ("ids assign store", ["ids", "assign", "ids.safetensors", "x.npy", "-o", "o.csv", "--keys", "keys.txt", "--store", "{}"], "s.sqlite"),
    ("ids eval model", ["ids", "eval", "{}", "x.npy"], "ids.safetensors"),
    ("ids eval data", ["ids", "eval", "ids.safetensors", "{}"], "d.npy"),
    ("ids lookup store", ["ids", "lookup", "{}", "k1"], "s.sqlite"),
    # outputs
    ("fit -o", ["fit", "x.npy", "-o", "{}", "--stages", "1", "--codebook-size", "4"], "o.safetensors"),
    ("encode -o", ["encode", "m.safetensors", "x.npy", "-o", "{}"], "o.npy"),
    ("decode -o", ["decode", "m.safetensors", "codes.npy", "-o", "{}"], "o.npy"),
    ("eval --plot", ["eval", "m.safetensors", "x.npy", "--plot", "{}"], "o.png"),
    ("index build -o", ["index", "build", "m.safetensors", "x.npy", "-o", "{}"], "o.vgindex"),
    ("index search -o", ["index", "search", "i.vgindex", "q.npy", "-o", "{}"], "o.npz"),
    ("ids fit -o", ["ids", "fit", "x.npy", "-o", "{}"], "o.safetensors"),
    ("ids assign -o", ["ids", "assign", "ids.safetensors", "x.npy", "-o", "{}"], "o.csv"),
    ("ids eval --plot", ["ids", "eval", "ids.safetensors", "x.npy", "--plot", "{}"], "o.png"),
]
tried = held = 0
for label, argv, name in T:
    for kind in ("fifo", "zero", "urandom"):
        s = special(kind, name)
        args = [a.replace("{}", s) for a in argv]
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, "-m", "viva_glyph", *args], cwd=W, env=env,
                               capture_output=True, text=True, timeout=20)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired:
            rc, err = "HANG", ""
        dt = time.time() - t0
        lines = err.strip().splitlines()
        ok = rc == 2 and len(lines) == 1
        tried += 1; held += ok
        print(f"{'HELD' if ok else 'FAIL'} {label:22s} {kind:8s} rc={rc} {dt:4.1f}s {lines[-1][:140] if lines else ''}")
print(f"tried={tried} held={held}")
