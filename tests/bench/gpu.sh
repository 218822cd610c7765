#!/usr/bin/env bash
# `make bench-gpu`: the real-scale benchmark for a machine with a real GPU, in one command, with no build when it
# is given a kontext binary. Writes into OUT (default bench-gpu/):
#   gpu.txt           the card and driver (nvidia-smi, where present) and the Vulkan adapter wgpu opened
#   bench.json        `kontext bench --preset gpu`: attention at L = 1,024, 4,096 and 8,704 (24 × 128, flash
#                     and, where the adapter has cooperative matrices, coop against the materialised reference)
#                     and matmuls at M = 8,704 (the coop kernel beside the plain ones)
#   bench-512.json    the 512² Kontext step of a random-weight FLUX.1 Kontext [dev] DiT (Q4_0 blocks; f32 and f16
#                     activations, and streamed), with its kernel launches per step and per block counted
#   bench-step.json   the same step at 1024² (f32 and f16 compute), on the adapter's kernel path (coop where it
#                     has cooperative matrices)
#   bench-step-f32.json  the 1024² step again on the plain f32 kernels (`--kernels f32`), beside it
#   burn-cmma.json    burn/cubecl's own f16 matmul and attention at the matmul and attention shapes of bench.json,
#                     through cubecl's SPIR-V compiler and its CMMA kernels (tests/cmma; BURN_CMMA_BIN, else built
#                     here where cargo is): beside the coop rows of bench.json (the F16 rows for the matmul)
#   diffusers.json    the same steps through diffusers on the same card (bf16 and f32), where python3 has torch
#                     and diffusers
#   load.json         `kontext make-random` (the same DiT as a Q4_0 GGUF file, 6.7 GB, written into OUT and
#                     deleted after) loaded by `kontext inspect --load --backend wgpu`: device against file bytes
#   flash-R,T,W,S,B.json  attention again with the `flash` kernel in other layouts (KONTEXT_FLASH: rows per
#                     invocation, invocations per row, invocations per workgroup, keys per softmax step,
#                     broadcast reads), to tune it
# Usage: [BURN_CMMA_BIN=…] tests/bench/gpu.sh [KONTEXT_BIN] [OUT]
set -uo pipefail
bin=${1:-${KONTEXT_BIN:-}}
out=${2:-bench-gpu}
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z "$bin" ]]; then
  cargo build --locked --release --features autotune --bin kontext
  bin=${CARGO_TARGET_DIR:-target}/release/kontext
fi
cmma=${BURN_CMMA_BIN:-}
if [[ -z "$cmma" ]] && command -v cargo >/dev/null; then
  cargo build --locked --release --manifest-path "$here/../cmma/Cargo.toml"
  cmma=${CARGO_TARGET_DIR:-$here/../cmma/target}/release/burn-cmma
fi
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true; } >"$out/gpu.txt"
# Each part has a time limit, so that one that hangs leaves the others their share of a short lease.
part() {
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.json" 2>>"$out/gpu.txt"
  echo "$name: exit $?, $((SECONDS - started)) s" >>"$out/gpu.txt"
}
# In order of what a short lease should not lose: the parts after the first ones may be cut off.
part bench-512 150 "$bin" bench --backend wgpu --preset gpu-512 --only step --json
part bench 200 "$bin" bench --backend wgpu --preset gpu --only attention,matmul --json
part bench-step 240 "$bin" bench --backend wgpu --preset gpu --only step --json
if [[ -n "$cmma" ]]; then part burn-cmma 200 "$cmma"; else echo "burn-cmma: no binary (BURN_CMMA_BIN)" >>"$out/gpu.txt"; fi
part diffusers 200 python3 - "$here/diffusers_step.py" <<'PY'
import json, subprocess, sys
# FLUX.1 Kontext [dev]'s DiT: 19 double and 38 single blocks of 3072 in 24 heads, text 4096, pooled 768.
dit = dict(hidden=3072, heads=24, depth=19, single=38, context=4096, vec_in_dim=768, in_channels=64,
           axes_dim=[16, 56, 56], text_tokens=512, repeats=3, device="cuda")
rows = []
for image_tokens, dtype in [(8192, "bfloat16"), (8192, "float32"), (2048, "bfloat16"), (2048, "float32")]:
    config = dict(dit, image_tokens=image_tokens, dtype=dtype)
    run = subprocess.run([sys.executable, sys.argv[1]], input=json.dumps(config), capture_output=True, text=True)
    row = dict(image_tokens=image_tokens, text_tokens=512, dtype=dtype)
    row.update(json.loads(run.stdout) if run.returncode == 0 else {"error": run.stderr.strip().splitlines()[-1:]})
    rows.append(row)
    print(json.dumps(row), file=sys.stderr)
print(json.dumps(rows, indent=1))
PY
part make-random 120 "$bin" make-random --preset gpu --type Q4_0 --out "$out/random-q4_0.gguf"
part load 120 "$bin" inspect "$out/random-q4_0.gguf" --load --backend wgpu --json
rm -f "$out/random-q4_0.gguf"
part bench-step-f32 240 "$bin" bench --backend wgpu --preset gpu --only step --kernels f32 --json
for layout in 1,4,64,4,0 2,8,64,4,0 4,1,64,4,1; do
  KONTEXT_FLASH=$layout part "flash-$layout" 60 "$bin" bench --backend wgpu --preset gpu --only attention --json
done
cat "$out/gpu.txt"
