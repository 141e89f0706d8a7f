"""Area 6: huge parameters bounded or refused; peak RSS of each case (child ru_maxrss)."""
import os, resource, subprocess, sys, textwrap
SRC = "/work/wt-break/src"
PRE = """
import numpy as np, resource, sys
import viva_glyph as vg
from viva_glyph import index as vgi, semantic
x = np.load('/tmp/bk/x.npy')
"""
CASES = {
 "baseline import+load": "enc = vg.load('/tmp/bk/m.safetensors')",
 "encode beam 1e9": "enc = vg.load('/tmp/bk/m.safetensors'); enc.encode(x, beam_size=10**9)",
 "encode beam 2**64": "enc = vg.load('/tmp/bk/m.safetensors'); enc.encode(x, beam_size=2**64)",
 "encode num_stages 1e9": "enc = vg.load('/tmp/bk/m.safetensors'); enc.encode(x, num_stages=10**9)",
 "fit codebook_size 1e9": "vg.fit(x, num_stages=1, codebook_size=10**9)",
 "fit num_stages 1e9": "vg.fit(x, num_stages=10**9, codebook_size=4)",
 "fit beam 1e9": "vg.fit(x, num_stages=2, codebook_size=4, beam_size=10**9)",
 "search k 1e9": "i = vgi.load('/tmp/bk/i.vgindex'); r = i.search(x[:5], k=10**9); print([a.shape for a in r] if isinstance(r, tuple) else type(r))",
 "search k 1e6 rerank 1e9": "i = vgi.load('/tmp/bk/i.vgindex'); i.search(x[:5], k=10**6, rerank=10**9, vectors=x)",
 "search k 300 rerank 300, 2000 q": "i = vgi.load('/tmp/bk/i.vgindex'); q = np.tile(x, (7, 1)); i.search(q, k=300, rerank=300, vectors=x)",
 "search ivf nprobe 1e9": "i = vgi.load('/tmp/bk/ivf.vgindex'); i.search(x[:5], k=10, nprobe=10**9)",
 "fit num_stages 1e3 (fits)": "vg.fit(x, num_stages=10**3, codebook_size=4, iterations=1)",
 "semantic fit K 1e9": "semantic.fit(x, levels=2, codebook_size=10**9)",
 "semantic beam 1e9": "semantic.fit(x, levels=2, codebook_size=4, beam_size=10**9)",
 "semantic suffix 1e18": "semantic.fit(x, levels=2, codebook_size=4, suffix_size=10**18)",
}
for name, body in CASES.items():
    code = PRE + body + "\nprint('OK')"
    wrap = f"""
import resource, subprocess, sys
r = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, text=True, timeout=120)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(ru.ru_maxrss // 1024, r.returncode, (r.stdout.strip().splitlines() or [''])[-1][:80], '|', (r.stderr.strip().splitlines() or [''])[-1][:170])
"""
    try:
        out = subprocess.run([sys.executable, "-c", wrap], capture_output=True, text=True, timeout=150,
                             env=dict(os.environ, PYTHONPATH=SRC)).stdout.strip()
    except subprocess.TimeoutExpired:
        out = "TIMEOUT"
    print(f"{name:34s} peakMiB rc out|err: {out}")
