#!/usr/bin/env bash
# `make bench-gpu`: the real-scale benchmark for a machine with a real GPU, in one command, with no build when it
# is given a kontext binary. Writes into OUT (default bench-gpu/), one part after the other, in order of what a
# short lease should not lose:
#   device.json       `kontext device --json`: the adapter, its features and the kernel path of each operation
#   bench-512.json    the 512² Kontext step of a random-weight FLUX.1 Kontext [dev] DiT (Q4_0 blocks; f32 and f16
#                     activations, and streamed), with its kernel launches per step and per block counted
#   bench.json        `kontext bench --preset gpu`: attention at L = 1,024, 4,096 and 8,704 (24 × 128, flash
#                     and, where the adapter has cooperative matrices, coop against the materialised reference)
#                     and matmuls at M = 8,704 (the coop kernel beside the plain ones); each kernel's output is
#                     checked against its reference's, and the part fails when one is off
#   bench-step.json   the same step at 1024² (f32 and f16 compute), on the adapter's kernel path (coop where it
#                     has cooperative matrices)
#   diffusers.json    the same steps through diffusers on the same card (bf16 and f32), where python3 has torch
#                     and diffusers
#   burn-cmma.json    burn/cubecl's own f16 matmul and attention at the matmul and attention shapes of bench.json,
#                     through cubecl's SPIR-V compiler and its CMMA kernels (tests/cmma; BURN_CMMA_BIN, else built
#                     here where cargo is): beside the coop rows of bench.json (the F16 rows for the matmul)
#   bench-step-f32.json  the 1024² step again on the plain f32 kernels (`--kernels f32`), beside it
#   load.json         `kontext make-random` (the same DiT as a Q4_0 GGUF file, 6.7 GB, written into TMPDIR and
#                     deleted after) loaded by `kontext inspect --load --backend wgpu`: device against file bytes
#   flash-R,T,W,S,B.json  attention again with the `flash` kernel in other layouts (KONTEXT_FLASH: rows per
#                     invocation, invocations per row, invocations per workgroup, keys per softmax step,
#                     broadcast reads), to tune it
#   gpu.txt           the card and driver (nvidia-smi, where present), each part's exit status and seconds, and
#                     what the parts printed on stderr
# Exits non-zero when a part failed (a part skipped for lack of time is not a failure).
# Each part has a time limit, so that one that hangs leaves the others their share of a short lease. Optional:
#   BENCH_PARTS    the parts to run, by the names above without .json (`flash` for all layouts, `load` for
#                  make-random and the load); all by default
#   LEASE_UNTIL    a time (seconds since 1970) that no part may run past: each part's limit is cut to what is
#                  left, and a part with less than 20 s left is skipped
#   BENCH_ARCHIVE  a .tar.gz file rewritten with OUT after each part (what a killed run leaves behind)
#   GPU_DRY_RUN    set: the same parts at the `tiny` preset, diffusers on the CPU, to try the script on a
#                  machine without a real GPU (README.md, Tests); on Mesa 26's lavapipe where KONTEXT_COOP_ROOT
#                  names its root (tests/coop/run.sh)
# Usage: [BURN_CMMA_BIN=…] tests/bench/gpu.sh [KONTEXT_BIN] [OUT]
set -uo pipefail
bin=${1:-${KONTEXT_BIN:-}}
out=${2:-bench-gpu}
here=$(cd "$(dirname "$0")" && pwd)
parts=" ${BENCH_PARTS:-device bench-512 bench bench-step diffusers burn-cmma bench-step-f32 load flash} "
if [[ -z "$bin" ]]; then
  cargo build --locked --release --features autotune --bin kontext
  bin=${CARGO_TARGET_DIR:-target}/release/kontext
fi
cmma=${BURN_CMMA_BIN:-}
if [[ -z "$cmma" && $parts == *" burn-cmma "* ]] && command -v cargo >/dev/null; then
  cargo build --locked --release --manifest-path "$here/../cmma/Cargo.toml"
  cmma=${CARGO_TARGET_DIR:-$here/../cmma/target}/release/burn-cmma
fi
# FLUX.1 Kontext [dev]'s DiT (19 double and 38 single blocks of 3072 in 24 heads, text 4096, pooled 768) at 1024²
# and 512², or in a dry run Sizes::tiny's step model (hidden 128 in 2 heads, one block of each kind) on the CPU.
large=gpu small=gpu-512 cmma_args=() runner=()
dit='{"hidden": 3072, "heads": 24, "depth": 19, "single": 38, "context": 4096, "vec_in_dim": 768,
      "in_channels": 64, "axes_dim": [16, 56, 56], "text_tokens": 512, "repeats": 3, "device": "cuda"}'
peer_runs='[[8192, "bfloat16"], [8192, "float32"], [2048, "bfloat16"], [2048, "float32"]]'
if [[ -n ${GPU_DRY_RUN:-} ]]; then
  large=tiny small=tiny cmma_args=(--quick)
  dit='{"hidden": 128, "heads": 2, "depth": 1, "single": 1, "context": 64, "vec_in_dim": 64, "in_channels": 64,
        "axes_dim": [8, 28, 28], "text_tokens": 32, "repeats": 2, "device": "cpu"}'
  peer_runs='[[64, "float32"]]'
  # On Mesa 26's lavapipe where KONTEXT_COOP_ROOT names its root: cooperative matrices, and a Mesa that compiles
  # cubecl's SPIR-V (Debian 12's crashes on it).
  if [[ -n ${KONTEXT_COOP_ROOT:-} ]]; then runner=(bash "$here/../coop/run.sh" "$KONTEXT_COOP_ROOT"); fi
fi
kontext=("${runner[@]}" "$bin")
mkdir -p "$out"
failed=0
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
else
  echo "no nvidia-smi" >"$out/gpu.txt"
fi
part() {
  local name=$1 family=$2 limit=$3
  shift 3
  if [[ $parts != *" $family "* ]]; then return; fi
  if [[ -n ${LEASE_UNTIL:-} ]]; then
    local left=$((LEASE_UNTIL - $(date +%s)))
    if ((left < 20)); then
      echo "$name: skipped, ${left} s left" >>"$out/gpu.txt"
      return
    fi
    ((limit > left)) && limit=$left
  fi
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.json" 2>>"$out/gpu.txt"
  local status=$?
  echo "$name: exit $status, $((SECONDS - started)) s (limit $limit s)" >>"$out/gpu.txt"
  ((status == 0)) || failed=1
  if [[ -n ${BENCH_ARCHIVE:-} ]]; then tar -C "$out" -czf "$BENCH_ARCHIVE" .; fi
}
part device device 30 "${kontext[@]}" device --backend wgpu --json
part bench-512 bench-512 150 "${kontext[@]}" bench --backend wgpu --preset "$small" --only step --json
part bench bench 200 "${kontext[@]}" bench --backend wgpu --preset "$large" --only attention,matmul --json
part bench-step bench-step 240 "${kontext[@]}" bench --backend wgpu --preset "$large" --only step --json
part diffusers diffusers 200 python3 - "$here/diffusers_step.py" "$dit" "$peer_runs" <<'PY'
import json, subprocess, sys
dit, rows = json.loads(sys.argv[2]), []
for image_tokens, dtype in json.loads(sys.argv[3]):
    config = dict(dit, image_tokens=image_tokens, dtype=dtype)
    run = subprocess.run([sys.executable, sys.argv[1]], input=json.dumps(config), capture_output=True, text=True)
    row = dict(image_tokens=image_tokens, text_tokens=dit["text_tokens"], dtype=dtype)
    row.update(json.loads(run.stdout) if run.returncode == 0 else {"error": run.stderr.strip().splitlines()[-1:]})
    rows.append(row)
    print(json.dumps(row), file=sys.stderr)
print(json.dumps(rows, indent=1))
PY
if [[ -n "$cmma" ]]; then
  part burn-cmma burn-cmma 200 "${runner[@]}" "$cmma" "${cmma_args[@]}"
elif [[ $parts == *" burn-cmma "* ]]; then
  echo "burn-cmma: no binary (BURN_CMMA_BIN)" >>"$out/gpu.txt"
  failed=1
fi
part bench-step-f32 bench-step-f32 240 "${kontext[@]}" bench --backend wgpu --preset "$large" --only step --kernels f32 --json
random=${TMPDIR:-/tmp}/kontext-random-q4_0-$$.gguf
part make-random load 120 "${kontext[@]}" make-random --preset "$large" --type Q4_0 --out "$random"
part load load 120 "${kontext[@]}" inspect "$random" --load --backend wgpu --json
rm -f "$random"
for layout in 1,4,64,4,0 2,8,64,4,0 4,1,64,4,1; do
  KONTEXT_FLASH=$layout part "flash-$layout" flash 60 "${kontext[@]}" bench --backend wgpu --preset "$large" --only attention --json
done
if [[ -n ${BENCH_ARCHIVE:-} ]]; then tar -C "$out" -czf "$BENCH_ARCHIVE" .; fi
cat "$out/gpu.txt"
exit $failed
