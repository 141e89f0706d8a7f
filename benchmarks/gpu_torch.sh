#!/usr/bin/env bash
# One prepared GPU run of benchmarks/bench_torch.py (viva_glyph.torch vs vector-quantize-pytorch).
# Run from the repository root on a CUDA machine; writes everything to $OUT/gpu.txt too.
# vector-quantize-pytorch and its needs may travel as wheels in .whl/ (installed when present).
set -uo pipefail
OUT=${OUT:-/tmp}
LOG=$OUT/gpu.txt
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"

# 1. device checks: no host-device sync in the eval forward (check_finite=False), same
#    codes as on the CPU
timeout 120 python3 - <<'PY' 2>&1 | tee -a "$LOG"
import torch
from viva_glyph.torch import ResidualVQ
print("torch", torch.__version__, torch.cuda.get_device_name())
g = torch.Generator(device="cuda").manual_seed(0)
vq = ResidualVQ(128, 8, 256, dead_after=5, check_finite=False).cuda()  # no input check: no sync
for _ in range(5):
    vq(torch.randn(8192, 128, device="cuda", generator=g))
vq.eval()
x = torch.randn(65536, 128, device="cuda", generator=g)
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")  # raises on any host-device sync
with torch.no_grad():
    out = vq(x)
    out_bf16 = vq(x.bfloat16())
    codes = vq.encode(x)
torch.cuda.set_sync_debug_mode(0)
print("eval forward float32 + bfloat16 + encode: no host-device sync")
cpu_codes = vq.cpu().encode(x.cpu())
same = (cpu_codes == codes.cpu()).all(1).float().mean().item()
print(f"rows whose codes equal the CPU's: {same:.5f}; bf16 out dtype {out_bf16.quantized.dtype}")
PY

# 2. the benchmark, short settings
timeout 330 python3 benchmarks/bench_torch.py --device cuda --runs 3 --steps 100 \
  --batch 8192 --eval-rows 262144 --eval-repeats 10 2>&1 | tee -a "$LOG"
