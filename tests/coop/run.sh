#!/usr/bin/env bash
# Runs a test binary on the root's Mesa 26 lavapipe (tests/coop/ensure-root.sh): through the root's own dynamic
# loader and libraries, so that its Vulkan loader and driver find the glibc and LLVM they were built for.
set -euo pipefail
root=${1:?usage: run.sh ROOT BINARY [ARGS...]}
shift
triple=$(uname -m)-linux-gnu
case $(uname -m) in
  x86_64) loader=$root/lib64/ld-linux-x86-64.so.2 ;;
  aarch64) loader=$root/lib/ld-linux-aarch64.so.1 ;;
  *) echo "run.sh: no loader known for $(uname -m)" >&2; exit 1 ;;
esac
export VK_ICD_FILENAMES=$root/usr/share/vulkan/icd.d/lvp_icd.json
exec "$loader" --library-path "$root/usr/lib/$triple:$root/lib/$triple" "$@"
