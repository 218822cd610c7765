#!/usr/bin/env bash
# `make gpu-bundle`: the GPU test suites for a machine with a GPU but no Rust toolchain (a lent machine, see
# tests/gpu/run.sh). Builds the suites' test binaries here, strips them and packs them with xz into OUT, beside
# the tiny-types pack (`make packs`) that tests/gpu_coop.rs reads; the committed fixtures travel with the checkout.
# With them, in OUT/bench/, burn/cubecl's CMMA bench (tests/cmma, built by `make gpu-bundle`) for tests/bench/gpu.sh.
# Usage: tests/gpu/bundle.sh OUT SUITE...
set -euo pipefail
out=$1
shift
rm -rf "$out" && mkdir -p "$out"
for suite in "$@"; do
  binary=$(cargo test --locked --no-run --test "$suite" 2>&1 | sed -n "s/.*Executable tests\/$suite.rs (\(.*\))/\1/p")
  test -x "$binary" || { echo "gpu-bundle: the $suite test binary did not build"; exit 1; }
  strip -o "$out/$suite" "$binary"
  xz -T0 -6 "$out/$suite"
done
mkdir -p "$out/bench"
strip -o "$out/bench/burn-cmma" "${CARGO_TARGET_DIR:-target}/release/burn-cmma"
xz -T0 -6 "$out/bench/burn-cmma"
tar -C "$(dirname "$KONTEXT_TINY_TYPES")" -cJf "$out/tiny_types.tar.xz" "$(basename "$KONTEXT_TINY_TYPES")"
du -sh "$out"/* "$out"/bench/*
