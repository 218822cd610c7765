#!/usr/bin/env bash
# `make gpu-bundle`: what a lent GPU machine (no Rust toolchain, no network, no Vulkan loader) needs to run the GPU
# suites and the real-scale benchmark, as two kits in OUT. Each kit travels with the checkout in one call of the
# device tool, which takes 64 MiB in all; tests/gpu/lease.sh runs one kit per call (README.md, Tests):
#   OUT/check/  the GPU suites SUITE... (their test binaries stripped, in one xz archive), the files of the
#               tiny-types pack (`make packs`) that tests/gpu_coop.rs reads, and Debian's Vulkan loader
#   OUT/bench/  `kontext` (release, --features autotune) and burn/cubecl's CMMA bench (tests/cmma), stripped and
#               packed with xz, diffusers (DIFFUSERS, e.g. diffusers==0.42.1: the wheel unpacked, to run on the
#               machine's own torch) and the loader
# The downloads are kept in ~/.cache/kontext-web/gpu-kit. Fails when a kit and the checkout's tracked files
# together would not travel.
# Usage: DIFFUSERS=diffusers==VERSION tests/gpu/bundle.sh OUT SUITE...
set -euo pipefail
out=$1
shift
target=${CARGO_TARGET_DIR:-target}
downloads=$HOME/.cache/kontext-web/gpu-kit
rm -rf "$out" && mkdir -p "$out/check/loader" "$out/bench/loader"
mkdir -p "$downloads/loader" "$downloads/wheels/$DIFFUSERS"
# The loader: the lent machines have the NVIDIA driver and its Vulkan ICD, but no libvulkan.so.1.
ls "$downloads"/loader/libvulkan1_*_amd64.deb >/dev/null 2>&1 ||
  (cd "$downloads/loader" && apt-get -o APT::Architecture=amd64 download libvulkan1:amd64)
cp "$downloads"/loader/libvulkan1_*_amd64.deb "$out/check/loader/"
cp "$downloads"/loader/libvulkan1_*_amd64.deb "$out/bench/loader/"

binaries=$(mktemp -d)
trap 'rm -rf "$binaries"' EXIT
for suite in "$@"; do
  binary=$(cargo test --locked --no-run --test "$suite" 2>&1 | sed -n "s/.*Executable tests\/$suite.rs (\(.*\))/\1/p")
  test -x "$binary" || { echo "gpu-bundle: the $suite test binary did not build"; exit 1; }
  strip -o "$binaries/$suite" "$binary"
done
# One archive with a dictionary that spans all of them: the suites share most of their code.
tar -C "$binaries" -cf - "$@" | xz -T1 --lzma2=preset=9e,dict=192MiB >"$out/check/suites.tar.xz"
pack=$(dirname "$KONTEXT_TINY_TYPES") name=$(basename "$KONTEXT_TINY_TYPES")
(cd "$pack" && tar -cJf - "$name/FLUX.1-Kontext-dev-tiny/transformer/config.json" "$name/golden/golden_run.safetensors" \
  "$name/bfl_gguf/golden_gguf_step0.safetensors" "$name"/bfl_gguf/transformer_bfl-*.gguf) >"$out/check/tiny_types.tar.xz"

cargo build --locked --release --features autotune --bin kontext
for binary in "$target/release/kontext" "$target/release/burn-cmma"; do
  strip -o "$binaries/$(basename "$binary")" "$binary"
  xz -T0 -9 -c "$binaries/$(basename "$binary")" >"$out/bench/$(basename "$binary").xz"
done
wheels=$downloads/wheels/$DIFFUSERS
ls "$wheels"/*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any -d "$wheels" \
    "$DIFFUSERS" importlib_metadata
mkdir "$binaries/site"
for wheel in "$wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$binaries/site"; done
tar -C "$binaries/site" -cf - . | xz -T0 -9 >"$out/bench/python-site.tar.xz"

tracked=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
for kit in check bench; do
  bytes=$((tracked + $(du -cb "$out/$kit" | tail -n 1 | cut -f1)))
  awk -v kit="$out/$kit" -v bytes="$bytes" 'BEGIN { printf "gpu-bundle: %s travels with the checkout as %.1f MiB of 64\n", kit, bytes / 1048576 }'
  ((bytes < 63 * 1048576)) || { echo "gpu-bundle: $out/$kit would not travel (over 63 MiB with the checkout)"; exit 1; }
done
du -sh "$out"/*/*
