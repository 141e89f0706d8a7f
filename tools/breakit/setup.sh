#!/bin/bash
# Build small fixtures under $1 (default /tmp/bk): vectors, model, index, ids model, store, keys.
set -e
D=${1:-/tmp/bk}; rm -rf "$D"; mkdir -p "$D"; cd "$D"
export PYTHONPATH=/work/wt-break/src
python - <<'PY'
import numpy as np
rng=np.random.default_rng(0)
x=rng.standard_normal((300,8)).astype(np.float32)
np.save("x.npy",x); np.save("q.npy",x[:5])
open("keys.txt","w").write("".join(f"k{i}\n" for i in range(300)))
PY
V="python -m viva_glyph"
$V fit -q x.npy -o m.safetensors --stages 2 --codebook-size 16
$V encode -q m.safetensors x.npy -o codes.npy
$V index build -q m.safetensors x.npy -o i.vgindex
$V ids fit -q x.npy -o ids.safetensors --levels 2 --codebook-size 8 --suffix-size 64
$V ids assign -q ids.safetensors x.npy -o ids.parquet --keys keys.txt --store s.sqlite
ls -la
