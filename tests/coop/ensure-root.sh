#!/usr/bin/env bash
# Makes, once, a Debian 13 root (outside the clone) holding Mesa 26's lavapipe from trixie-backports: a software
# Vulkan device with cooperative matrices (VK_KHR_cooperative_matrix), which Debian 12's Mesa 22 lacks. `make
# test-coop` runs the coop suite through that root's loader (tests/coop/run.sh); nothing is installed on the host
# but debootstrap. The root also gets node and npm `webgpu` (Dawn, the WebGPU implementation inside Chromium) in
# /opt/kontext-dawn, which run the coop kernels in Chromium's dialect there (tests/coop/dawn.sh).
set -euo pipefail
root=${1:?usage: ensure-root.sh DIR}
stamp=$root/.kontext-coop-root
dawn=$root/opt/kontext-dawn
# The Dawn build the subgroup-matrix tests run (its adapter offers Chromium's subgroup matrices on lavapipe).
dawn_package=webgpu@0.6.2
say() { printf '\033[1m[coop]\033[0m %s\n' "$*"; }
need_root() { if [ "$(id -u)" != 0 ]; then echo "sudo"; fi; }

ensure_dawn() {
  if [ ! -x "$root/usr/bin/node" ]; then
    say "installing node in $root"
    $(need_root) chroot "$root" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $(need_root) chroot "$root" apt-get install -y -qq nodejs >/dev/null
  fi
  if [ ! -e "$dawn/.installed-$dawn_package" ]; then
    say "installing npm $dawn_package (Dawn) in $dawn"
    $(need_root) rm -rf "$dawn"
    $(need_root) mkdir -p "$dawn"
    echo '{ "private": true, "type": "module" }' | $(need_root) tee "$dawn/package.json" >/dev/null
    $(need_root) npm install --prefix "$dawn" --ignore-scripts --no-audit --no-fund --silent "$dawn_package"
    $(need_root) touch "$dawn/.installed-$dawn_package"
  fi
}

if [ -e "$stamp" ]; then
  ensure_dawn
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive $(need_root) apt-get install -y -qq debootstrap >/dev/null
fi
say "making a Debian 13 root with Mesa 26's lavapipe in $root (a few minutes, once)"
$(need_root) rm -rf "$root"
$(need_root) debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >/dev/null
echo "deb http://deb.debian.org/debian trixie-backports main" | $(need_root) tee "$root/etc/apt/sources.list.d/backports.list" >/dev/null
$(need_root) chroot "$root" apt-get update -qq
DEBIAN_FRONTEND=noninteractive $(need_root) chroot "$root" apt-get install -y -qq -t trixie-backports \
  mesa-vulkan-drivers libvulkan1 >/dev/null
$(need_root) touch "$stamp"
ensure_dawn
