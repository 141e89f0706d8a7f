"""Area 2 via the CLI: 'info', 'index info', 'index search', 'ids eval' of mutated files exit 0 or 2
with one stderr line (never 1, never a traceback). In-process main(), stderr captured."""
import contextlib, io, os, random, sys, tempfile
sys.path.insert(0, "/work/wt-break/src")
sys.path.insert(0, os.path.dirname(__file__))
from area2_fuzz import mutate
from viva_glyph.cli._main import main

FIX = "/tmp/bk"; N = int(sys.argv[1]) if len(sys.argv) > 1 else 60
rng = random.Random(7)
tmp = tempfile.mkdtemp()
cmds = {"m.safetensors": lambda p: [["info", p], ["encode", "-q", p, f"{FIX}/q.npy", "-o", f"{tmp}/o.npy"]],
        "i.vgindex": lambda p: [["index", "info", p], ["index", "search", "-q", p, f"{FIX}/q.npy", "-o", f"{tmp}/o.npz"]],
        "ivf.vgindex": lambda p: [["index", "search", "-q", p, f"{FIX}/q.npy", "-o", f"{tmp}/o.npz"]],
        "ids.safetensors": lambda p: [["ids", "assign", "-q", p, f"{FIX}/q.npy", "-o", f"{tmp}/o.csv"]],
        "trie.safetensors": lambda p: [["ids", "assign", "-q", p, f"{FIX}/q.npy", "-o", f"{tmp}/o.csv"]]}
tried = held = 0
for name, mk in cmds.items():
    b = open(f"{FIX}/{name}", "rb").read()
    for j in range(N):
        what, mb = mutate(b, rng)
        p = f"{tmp}/{j}{os.path.splitext(name)[1]}"
        open(p, "wb").write(mb)
        for argv in mk(p):
            err, out = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = main(argv)
            lines = err.getvalue().strip().splitlines()
            ok = (rc == 0) or (rc == 2 and len(lines) == 1)
            tried += 1; held += ok
            if not ok:
                print("FAIL", name, what, argv[:2], rc, err.getvalue()[-800:])
print(f"tried={tried} held={held}")
