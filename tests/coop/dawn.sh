#!/usr/bin/env bash
# Runs tests/coop/dawn-run.mjs (probe or run) over a folder of cases on Dawn, the WebGPU implementation inside
# Chromium, in the Debian 13 root (tests/coop/ensure-root.sh: its node, npm `webgpu` in /opt/kontext-dawn and Mesa
# 26's lavapipe): the runner, www/device-request.js and the cases are staged in the root, run there through
# chroot, and what the runner wrote comes back into the folder.
set -euo pipefail
root=${1:?usage: dawn.sh ROOT probe|run DIR}
command=${2:?usage: dawn.sh ROOT probe|run DIR}
dir=${3:?usage: dawn.sh ROOT probe|run DIR}
here=$(cd "$(dirname "$0")" && pwd)
dawn=$root/opt/kontext-dawn
if [ ! -e "$dawn/node_modules/webgpu/package.json" ] || [ ! -x "$root/usr/bin/node" ]; then
  echo "dawn.sh: $root has no node with npm webgpu (tests/coop/ensure-root.sh installs them)" >&2
  exit 3
fi
need_root() { if [ "$(id -u)" != 0 ]; then echo "sudo"; fi; }
stage=$(mktemp -d "$dawn/run.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$here/dawn-run.mjs" "$here/../../www/device-request.js" "$stage/"
mkdir "$stage/cases"
cp -r "$dir/." "$stage/cases/"
inside=/opt/kontext-dawn/$(basename "$stage")
$(need_root) chroot "$root" /usr/bin/node "$inside/dawn-run.mjs" "$command" "$inside/cases"
cp -r "$stage/cases/." "$dir/"
