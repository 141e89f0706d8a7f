"""Area 1: every writing CLI command given an output that is one of its inputs.

Forms: same path, ./x, symlink, hard link, inside a folder input (zarr).
Expect exit 2, one stderr line, every file in the work folder unchanged.
"""
import hashlib, os, shutil, subprocess, sys
from pathlib import Path

SRC = "/work/wt-break/src"
BASE = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bk")
W = Path("/tmp/bk1")


def digest(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


def fresh():
    shutil.rmtree(W, ignore_errors=True)
    shutil.copytree(BASE, W)
    import numpy as np, zarr
    x = np.load(W / "x.npy")
    zarr.save_array(str(W / "x.zarr"), x)
    zarr.save_array(str(W / "codes.zarr"), np.load(W / "codes.npy"))


# (command, input role, args builder(input_value, out_value))
def cases():
    I = {"model": "m.safetensors", "data": "x.npy", "codes": "codes.npy", "index": "i.vgindex",
         "queries": "q.npy", "vectors": "x.npy", "ids": "ids.safetensors", "keys": "keys.txt",
         "store": "s.sqlite"}
    yield ("fit", "data", lambda d, o: ["fit", d, "-o", o, "--stages", "1", "--codebook-size", "4"], "x.npy", "x.zarr")
    yield ("encode", "model", lambda m, o: ["encode", m, "x.npy", "-o", o], "m.safetensors", None)
    yield ("encode", "data", lambda d, o: ["encode", "m.safetensors", d, "-o", o], "x.npy", "x.zarr")
    yield ("decode", "model", lambda m, o: ["decode", m, "codes.npy", "-o", o], "m.safetensors", None)
    yield ("decode", "codes", lambda c, o: ["decode", "m.safetensors", c, "-o", o], "codes.npy", "codes.zarr")
    yield ("eval --plot", "model", lambda m, o: ["eval", m, "x.npy", "--plot", o], "m.safetensors", None)
    yield ("eval --plot", "data", lambda d, o: ["eval", "m.safetensors", d, "--plot", o], "x.npy", "x.zarr")
    yield ("index build", "model", lambda m, o: ["index", "build", m, "x.npy", "-o", o], "m.safetensors", None)
    yield ("index build", "data", lambda d, o: ["index", "build", "m.safetensors", d, "-o", o], "x.npy", "x.zarr")
    yield ("index search", "index", lambda i, o: ["index", "search", i, "q.npy", "-o", o], "i.vgindex", None)
    yield ("index search", "queries", lambda q, o: ["index", "search", "i.vgindex", q, "-o", o], "q.npy", "x.zarr")
    yield ("index search", "vectors", lambda v, o: ["index", "search", "i.vgindex", "q.npy", "-o", o, "--rerank", "5", "--vectors", v], "x.npy", "x.zarr")
    yield ("ids fit", "data", lambda d, o: ["ids", "fit", d, "-o", o, "--levels", "1", "--codebook-size", "4"], "x.npy", "x.zarr")
    yield ("ids assign", "model", lambda m, o: ["ids", "assign", m, "x.npy", "-o", o], "ids.safetensors", None)
    yield ("ids assign", "data", lambda d, o: ["ids", "assign", "ids.safetensors", d, "-o", o], "x.npy", "x.zarr")
    yield ("ids assign", "keys", lambda k, o: ["ids", "assign", "ids.safetensors", "x.npy", "-o", o, "--keys", k], "keys.txt", None)
    yield ("ids assign", "store", lambda s, o: ["ids", "assign", "ids.safetensors", "x.npy", "-o", o, "--keys", "keys.txt", "--store", s], "s.sqlite", None)
    # the store is written too: the store may be none of the read-only inputs
    yield ("ids assign --store", "model", lambda m, o: ["ids", "assign", m, "x.npy", "-o", "new.parquet", "--keys", "keys.txt", "--store", o], "ids.safetensors", None)
    yield ("ids assign --store", "data", lambda d, o: ["ids", "assign", "ids.safetensors", d, "-o", "new.parquet", "--keys", "keys.txt", "--store", o], "x.npy", "x.zarr")
    yield ("ids assign --store", "keys", lambda k, o: ["ids", "assign", "ids.safetensors", "x.npy", "-o", "new.parquet", "--keys", k, "--store", o], "keys.txt", None)
    yield ("ids assign --store", "output", lambda p, o: ["ids", "assign", "ids.safetensors", "x.npy", "-o", p, "--keys", "keys.txt", "--store", o], "ids.parquet", None)
    yield ("ids assign --trie", "data", lambda d, o: ["ids", "assign", o, d, "-o", "new.parquet", "--trie"], "x.npy", None)
    yield ("ids eval --plot", "model", lambda m, o: ["ids", "eval", m, "x.npy", "--plot", o], "ids.safetensors", None)
    yield ("ids eval --plot", "data", lambda d, o: ["ids", "eval", "ids.safetensors", d, "--plot", o], "x.npy", "x.zarr")


def forms(inp, folder):
    yield "same", inp, inp, None
    yield "./x", inp, "./" + inp, None
    yield "symlink", inp, "link-" + inp, lambda: os.symlink(W / inp, W / ("link-" + inp))
    yield "hardlink", inp, "hard-" + inp, lambda: os.link(W / inp, W / ("hard-" + inp))
    if folder:
        yield "inside-folder", folder, folder + "/out" + Path(inp).suffix, None


def main():
    env = dict(os.environ, PYTHONPATH=SRC)
    tried = held = 0
    bad = []
    for cmd, role, build, inp, folder in cases():
        for form, in_value, out_value, prep in forms(inp, folder):
            fresh()
            if prep:
                prep()
            # the trie case writes the model: the "input" there is the model; swap roles
            argv = build(in_value, out_value)
            before = digest(W)
            r = subprocess.run([sys.executable, "-m", "viva_glyph", "-q" if False else argv[0], *argv[1:]],
                               cwd=W, env=env, capture_output=True, text=True, timeout=120)
            after = digest(W)
            lines = r.stderr.strip().splitlines()
            ok = r.returncode == 2 and len(lines) == 1 and before == after
            tried += 1
            held += ok
            tag = "HELD" if ok else "FAIL"
            print(f"{tag} {cmd:20s} {role:8s} {form:13s} rc={r.returncode} {lines[-1][:150] if lines else ''}")
            if not ok:
                bad.append((cmd, role, form, r.returncode, r.stderr[-500:], set(before.items()) ^ set(after.items())))
    print(f"tried={tried} held={held}")
    for b in bad:
        print(b)


main()
