#!/usr/bin/env bash
# Stands in for `node` when wasm-bindgen-test-runner runs a wasm test in node (tests/dawn_wasm.rs): the runner's
# folder (its script, the wasm and its glue) is staged in the Debian 13 root (tests/coop/ensure-root.sh) and run
# there through chroot by the root's node, with Dawn as `navigator.gpu` (tests/coop/dawn-globals.mjs).
# KONTEXT_COOP_ROOT names the root. Usage, as the runner calls node: dawn-node.sh [NODE_ARGS...] SCRIPT
set -euo pipefail
root=${KONTEXT_COOP_ROOT:?dawn-node.sh: KONTEXT_COOP_ROOT names the Debian 13 root}
script=${*: -1}
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
dawn=$root/opt/kontext-dawn
if [ ! -e "$dawn/node_modules/webgpu/package.json" ] || [ ! -x "$root/usr/bin/node" ]; then
  echo "dawn-node.sh: $root has no node with npm webgpu (tests/coop/ensure-root.sh installs them)" >&2
  exit 3
fi
stage=$(mktemp -d "$dawn/wasm.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -r "$(dirname "$script")/." "$stage/"
# The runner writes a package.json for ES modules only; its CommonJS glue must not take /opt/kontext-dawn's.
[ -e "$stage/package.json" ] || echo '{"type": "commonjs"}' >"$stage/package.json"
cp "$here/dawn-globals.mjs" "$stage/"
cp "$here/../../www/device-request.js" "$stage/device-request.mjs"
inside=/opt/kontext-dawn/$(basename "$stage")
need_root() { if [ "$(id -u)" != 0 ]; then echo "sudo"; fi; }
status=0
$(need_root) chroot "$root" /usr/bin/node --import "$inside/dawn-globals.mjs" "${@:1:$#-1}" "$inside/$(basename "$script")" ||
  status=$?
exit $status
