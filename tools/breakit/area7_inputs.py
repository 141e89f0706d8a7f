"""Area 7: hostile input values to every entry point. Held: a ValueError/TypeError, or a
result of the right shape (finite where floats); anything else is listed."""
import sys, warnings
sys.path.insert(0, "/work/wt-break/src")
import numpy as np
import viva_glyph as vg
from viva_glyph import index as vgi
from viva_glyph.sklearn import ResidualQuantizer

x = np.load("/tmp/bk/x.npy")
enc = vg.load("/tmp/bk/m.safetensors")
np.save("/tmp/bk/mm.npy", x)
mm = np.load("/tmp/bk/mm.npy", mmap_mode="r")
row = x[0]
nanm = x.copy(); nanm[3, 2] = np.nan
infm = x.copy(); infm[5, 1] = np.inf
MAT = {
    "nan": nanm, "inf": infm, "empty(0,8)": np.empty((0, 8), np.float32), "empty(0,)": np.empty(0),
    "bool": x > 0, "str": x.astype(str), "object": x.astype(object), "complex": x.astype(np.complex64),
    "huge 1e30": x * 1e30, "huge 1e300 f64": x.astype(np.float64) * 1e300, "float16": x.astype(np.float16),
    "0-d": np.float32(1.0), "3-D": x.reshape(30, 10, 8), "memmap": mm, "wrong D": x[:, :5],
    "int64": (x * 10).astype(np.int64), "uint8": (np.abs(x) * 10).astype(np.uint8), "list": x[:4].tolist(),
    "None": None, "dict": {"a": 1}, "tiny 1e-40": x * 1e-40, "float128": x.astype(np.longdouble),
    "F-order": np.asfortranarray(x), "strided": x[::2, :], "readonly": np.require(x, requirements="C").copy(),
}
MAT["readonly"].setflags(write=False)
VEC = {k: (v[0] if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] else v) for k, v in MAT.items()}
codes = enc.encode(x[:10])
CODES = {"neg": -np.ones((3, 2), np.int64), "too big": np.full((3, 2), 99), "float": codes.astype(float),
         "float nan": np.full((3, 2), np.nan), "bool": codes.astype(bool), "3 cols": np.zeros((3, 3), np.int64),
         "empty": np.empty((0, 2), np.int64), "str": codes.astype(str), "uint64 huge": np.full((3, 2), 2**63, np.uint64),
         "1-D": codes[0], "0-d": np.int64(1), "object": codes.astype(object), "3-D": codes.reshape(5, 2, 2)}
idx = vgi.load("/tmp/bk/i.vgindex")
rq = ResidualQuantizer(num_stages=2, codebook_size=4).fit(x)
CALLS = [
    ("vg.encode", MAT, lambda a: vg.encode(enc, a) if hasattr(vg, "encode") else enc.encode(a)),
    ("enc.encode", MAT, enc.encode), ("enc.encode_vector", VEC, enc.encode_vector),
    ("enc.decode", CODES, enc.decode), ("enc.decode_vector", {k: v for k, v in CODES.items()}, enc.decode_vector),
    ("vg.fit", MAT, lambda a: vg.fit(a, num_stages=1, codebook_size=4)),
    ("sklearn.fit", MAT, lambda a: ResidualQuantizer(num_stages=1, codebook_size=4).fit(a)),
    ("sklearn.transform", MAT, rq.transform),
    ("index.search", MAT, lambda a: idx.search(a, k=3)),
    ("index.add", MAT, lambda a: vgi.load("/tmp/bk/i.vgindex").add(a)),
]
tried = held = 0
bad = []
for name, inputs, f in CALLS:
    for label, a in inputs.items():
        tried += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = f(a)
        except (ValueError, TypeError) as e:
            held += 1
            msg = str(e)
            if len(msg) > 400 or "\n" in msg:
                print("LONG", name, label, msg[:200])
            continue
        except BaseException as e:
            bad.append((name, label, f"{type(e).__name__}: {str(e)[:200]}"))
            continue
        arrs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, np.ndarray)]
        if any(o.dtype.kind == "f" and not np.isfinite(o).all() for o in arrs):
            bad.append((name, label, "non-finite result"))
        else:
            held += 1
            print("accepted", name, label, [o.shape for o in arrs][:2])
print(f"tried={tried} held={held}")
for b in bad:
    print("BAD", b)
