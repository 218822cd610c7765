#!/usr/bin/env bash
# Runs one kit of tests/gpu/bundle.sh on a lent GPU machine (no Rust, no network) within SECONDS, from the
# repository's root, one call of the device tool per kit (README.md, Tests). Writes into OUT, whose files the tool
# brings back (at most 8):
#   lease.txt    the machine, the loader, what ran and how long, and the figures issue 21 sets targets for
#                (tests/bench/summary.py)
#   suites.txt   check/: the GPU suites' output (tests/gpu/run.sh), written as they run
#   bench.tar.gz bench/: tests/bench/gpu.sh's folder (its BENCH_PARTS), rewritten after each part
#   gpu.txt      bench/: each part's exit status and seconds, and what the parts printed on stderr
# The lent machines have the NVIDIA driver but no Vulkan loader: the kit's libvulkan1 is unpacked where
# `ldconfig` finds none, and the driver's ICD file is named where the loader's folders have none.
# Exits non-zero when the suites or a benchmark part failed. GPU_DRY_RUN (see tests/gpu/run.sh and
# tests/bench/gpu.sh) tries a kit without a GPU: `make gpu-dry-run`.
# Usage: bash tests/gpu/lease.sh KIT OUT SECONDS
set -uo pipefail
kit=$1 out=$2 seconds=$3
LEASE_UNTIL=$(($(date +%s) + seconds))
export LEASE_UNTIL
mkdir -p "$out"
log=$out/lease.txt
failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  date -u
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; fi
  if ! ldconfig -p | grep -q 'libvulkan\.so\.1 '; then
    for deb in "$kit"/loader/*.deb; do dpkg -x "$deb" /; done
    ldconfig
    echo "loader: unpacked $(cd "$kit/loader" && echo *.deb)"
  fi
  nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 && [[ -e $nvidia_icd ]]; then
    export VK_DRIVER_FILES=$nvidia_icd
    echo "loader: VK_DRIVER_FILES=$nvidia_icd"
  fi
} >>"$log" 2>&1

if [[ -e $kit/suites.tar.xz ]]; then
  started=$SECONDS
  bash tests/gpu/run.sh "$kit" >"$out/suites.txt" 2>&1
  status=$?
  echo "suites: exit $status, $((SECONDS - started)) s" >>"$log"
  ((status == 0)) || failed=1
  grep '^== ' "$out/suites.txt" >>"$log"
fi

if [[ -e $kit/kontext.xz ]]; then
  for name in kontext burn-cmma; do
    if [[ -e $kit/$name.xz ]]; then xz -dc "$kit/$name.xz" >"$work/$name" && chmod +x "$work/$name"; fi
  done
  if [[ -e $kit/python-site.tar.xz ]]; then
    mkdir -p "$work/site" && tar -C "$work/site" -xJf "$kit/python-site.tar.xz"
    export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  started=$SECONDS
  BENCH_ARCHIVE=$out/bench.tar.gz BURN_CMMA_BIN=$([[ -x $work/burn-cmma ]] && echo "$work/burn-cmma") \
    bash tests/bench/gpu.sh "$work/kontext" "$work/bench" >/dev/null
  status=$?
  echo "bench: exit $status, $((SECONDS - started)) s" >>"$log"
  ((status == 0)) || failed=1
  cp "$work/bench/gpu.txt" "$out/gpu.txt"
  python3 tests/bench/summary.py "$work/bench" >>"$log" 2>&1
fi
cat "$log"
exit $failed
