"""Area 2: hostile model, index and semantic-ID files.

Each mutation is loaded in a worker process with a 1.5 GiB address-space limit and
a timeout: a load must succeed or raise the documented error type (ModelFormatError for
models and semantic-ID files, IndexFormatError for indexes); a successful load must
hold finite values and work (encode/search/codes of a few rows).
Usage: area2_fuzz.py FIXTURES N_PER_KIND SEED
"""
import json, os, random, resource, struct, sys, multiprocessing as mp, traceback

sys.path.insert(0, "/work/wt-break/src")
import numpy as np

FIX = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bk"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 0


def header(b):
    n = struct.unpack("<Q", b[:8])[0]
    return n, json.loads(b[8:8 + n])


def rebuild(h, data):
    hb = json.dumps(h).encode()
    return struct.pack("<Q", len(hb)) + hb + data


HOSTILE_VALUES = [None, True, -1, 0, 1, 2**31, 2**63, 2**64 + 5, -2**63, 1e308, float("nan"), float("inf"),
                  "x", "", [], {}, [1], [-1, 5], [0, 2**62], [2**40, 2**40, 2**40], 1.5, "1e9", "-3", "NaN"]


def mutate(b, rng):
    n, h = header(b)
    data = b[8 + n:]
    kind = rng.randrange(9)
    if kind == 0:  # byte flips anywhere
        arr = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(arr))
            arr[i] ^= 1 << rng.randrange(8)
        return "flip", bytes(arr)
    if kind == 1:
        return "truncate", b[: rng.randrange(len(b))]
    if kind == 2:  # tensor entry field
        names = [k for k in h if k != "__metadata__"]
        t = rng.choice(names)
        field = rng.choice(["dtype", "shape", "data_offsets"])
        v = rng.choice(HOSTILE_VALUES + ["F64", "F16", "U8", "I64", "BOOL", "BF16", "I8", "U64"])
        h[t][field] = v
        return f"tensor.{t}.{field}={v!r}", rebuild(h, data)
    if kind == 3:  # metadata string value replaced
        meta = h.get("__metadata__", {})
        k = rng.choice(list(meta))
        meta[k] = json.dumps(rng.choice(HOSTILE_VALUES)) if rng.random() < .5 else str(rng.choice(HOSTILE_VALUES))
        return f"meta.{k}={meta[k]!r}", rebuild(h, data)
    if kind == 4:  # nested config JSON key edited
        meta = h["__metadata__"]
        cands = [k for k, v in meta.items() if isinstance(v, str) and v.startswith("{")]
        k = rng.choice(cands)
        inner = json.loads(meta[k])
        ik = rng.choice(list(inner))
        v = rng.choice(HOSTILE_VALUES)
        inner[ik] = v
        meta[k] = json.dumps(inner)
        return f"meta.{k}.{ik}={v!r}", rebuild(h, data)
    if kind == 5:  # NaN / inf / huge inside a float tensor
        names = [k for k, v in h.items() if k != "__metadata__" and v["dtype"] in ("F32", "F64")]
        t = rng.choice(names)
        lo, hi = h[t]["data_offsets"]
        size = 4 if h[t]["dtype"] == "F32" else 8
        arr = bytearray(data)
        i = lo + size * rng.randrange(max(1, (hi - lo) // size))
        val = rng.choice([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-45])
        arr[i:i + size] = struct.pack("<f" if size == 4 else "<d", val)
        return f"value.{t}={val}", rebuild(h, bytes(arr))
    if kind == 6:  # integer tensor: out of range, negative, duplicates
        names = [k for k, v in h.items() if k != "__metadata__" and v["dtype"] in ("U8", "U16", "I64", "I32", "U32", "I16")]
        if not names:
            return mutate(b, rng)
        t = rng.choice(names)
        dt = {"U8": "<u1", "U16": "<u2", "I64": "<i8", "I32": "<i4", "U32": "<u4", "I16": "<i2"}[h[t]["dtype"]]
        lo, hi = h[t]["data_offsets"]
        a = np.frombuffer(data[lo:hi], dtype=dt).copy()
        if len(a) == 0:
            return mutate(b, rng)
        op = rng.randrange(3)
        if op == 0 and len(a) > 1:
            a[rng.randrange(len(a))] = a[rng.randrange(len(a))]
            what = f"dup{len(set(a.tolist())) < len(a)}"
        elif op == 1:
            a[rng.randrange(len(a))] = np.iinfo(a.dtype).max
            what = "max"
        else:
            a[rng.randrange(len(a))] = np.iinfo(a.dtype).min if a.dtype.kind == "i" else 255 % (np.iinfo(a.dtype).max + 1)
            what = "min"
        arr = bytearray(data); arr[lo:hi] = a.tobytes()
        return f"int.{t}.{what}", rebuild(h, bytes(arr))
    if kind == 7:  # header length field
        v = rng.choice([0, 1, 7, n - 1, n + 1, len(b), 2**63, 2**64 - 1, 10**9])
        return f"hlen={v}", struct.pack("<Q", v % 2**64) + b[8:]
    # kind 8: drop / add / rename a tensor or metadata key; duplicate JSON key
    op = rng.randrange(4)
    names = [k for k in h if k != "__metadata__"]
    if op == 0:
        t = rng.choice(names); del h[t]; return f"drop.{t}", rebuild(h, data)
    if op == 1:
        k = rng.choice(list(h["__metadata__"])); del h["__metadata__"][k]; return f"dropmeta.{k}", rebuild(h, data)
    if op == 2:
        t = rng.choice(names); h["extra"] = dict(h[t]); return "extra-tensor", rebuild(h, data)
    t = rng.choice(names)
    hb = json.dumps(h).encode()
    dup = json.dumps({t: h[t]})[1:-1].encode()
    hb = hb[:-1] + b", " + dup.replace(b"data_offsets\": [", b"data_offsets\": [1, ") .replace(b", 1, ", b", ") + b"}"
    hb = json.dumps(h).encode()[:-1] + b", \"" + t.encode() + b"\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}"
    return f"dupkey.{t}", struct.pack("<Q", len(hb)) + hb + data


def check_loaded(kind, obj, x):
    if kind == "model":
        for cb in obj.codebooks:
            assert np.isfinite(np.asarray(cb.vectors)).all(), "non-finite codebooks loaded"
        c = obj.encode(x[:4]); obj.decode(c)
    elif kind.startswith("index"):
        obj.search(x[:3], k=5)
    else:
        obj.codes(x[:4])


def load(kind, path):
    if kind == "model":
        from viva_glyph.core.encoder import load as f
    elif kind.startswith("index"):
        from viva_glyph.index import load as f
    else:
        from viva_glyph.semantic import load as f
    return f(path)


def worker(job):
    kind, path, what = job
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from viva_glyph.core import ModelFormatError
    from viva_glyph.index import IndexFormatError
    expected = IndexFormatError if kind.startswith("index") else ModelFormatError
    x = np.load(os.path.join(FIX, "x.npy"))
    try:
        obj = load(kind, path)
    except expected as e:
        msg = str(e)
        if "\n" in msg or len(msg) > 2000:
            return ("badmsg", kind, what, msg[:300])
        return ("refused", kind, what, "")
    except BaseException as e:
        return ("WRONGTYPE", kind, what, f"{type(e).__name__}: {str(e)[:300]}\n{traceback.format_exc()[-1500:]}")
    try:
        check_loaded(kind, obj, x)
    except BaseException as e:
        return ("USEFAIL", kind, what, f"{type(e).__name__}: {str(e)[:300]}\n{traceback.format_exc()[-1200:]}")
    return ("loaded", kind, what, "")


def main():
    import tempfile
    rng = random.Random(SEED)
    srcs = {"model": "m.safetensors", "index-flat": "i.vgindex", "index-ivf": "ivf.vgindex",
            "semantic": "ids.safetensors", "semantic-trie": "trie.safetensors"}
    tmp = tempfile.mkdtemp(prefix="fuzz")
    jobs = []
    for kind, name in srcs.items():
        b = open(os.path.join(FIX, name), "rb").read()
        for j in range(N):
            what, mb = mutate(b, rng)
            p = os.path.join(tmp, f"{kind}-{j}{os.path.splitext(name)[1]}")
            open(p, "wb").write(mb)
            jobs.append((kind, p, what))
    counts = {}
    bad = []
    loaded_what = {}
    ctx = mp.get_context("fork")
    with ctx.Pool(1, maxtasksperchild=200) as pool:
        for job in jobs:
            r = pool.apply_async(worker, (job,))
            try:
                res = r.get(timeout=20)
            except mp.TimeoutError:
                res = ("HANG", job[0], job[2], "")
                pool.terminate(); pool = ctx.Pool(1, maxtasksperchild=200)
            except Exception as e:
                res = ("CRASH", job[0], job[2], repr(e))
            key = (res[1], res[0])
            counts[key] = counts.get(key, 0) + 1
            if res[0] == "loaded":
                key2 = res[2] if os.environ.get("FULL") else res[2].split("=")[0]
                loaded_what.setdefault(res[1], {}).setdefault(key2, 0)
                loaded_what[res[1]][key2] += 1
            if res[0] not in ("refused", "loaded"):
                bad.append((res, job[1]))
    for k in sorted(counts):
        print(k, counts[k])
    for (res, p) in bad[:40]:
        print("BAD", res[0], res[1], res[2], p, "\n   ", res[3][:1500])
    for k, v in loaded_what.items():
        print("loaded", k, sorted(v.items(), key=lambda t: -t[1]))
    print("total", len(jobs), "bad", len(bad))


if __name__ == "__main__":
    main()
