#!/usr/bin/env bash
# Installs what tqkv needs from Debian 12's packages, only if something is missing.
set -euo pipefail
packages=(build-essential cmake catch2 pkg-config
          g++-aarch64-linux-gnu qemu-user                   # NEON build, run under qemu
          clang libclang-rt-14-dev                          # libFuzzer targets, the clang ASan/UBSan build
          libimgui-dev libglfw3-dev libgl-dev libstb-dev    # the explorer
          xvfb xauth libgl1-mesa-dri fonts-dejavu-core      # its headless screenshots
          emscripten chromium firefox-esr                   # the wasm build, the browser tests
          webkit2gtk-driver                                 # ... and WebKit (Safari's engine), under xvfb
          clang-16                                          # relaxed-SIMD wasm kernels (tqkv-relaxed.wasm)
          libsentencepiece-dev                              # tests: the oracle of our tokenizer.model reader
          unicode-data bzip2)                               # tests: the tokenizer's Unicode tables and NFC vs Unicode's files
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node.js + npm for the npm package (web/): Debian's only when none is installed (a NodeSource
# nodejs bundles npm, and Debian's npm package conflicts with it).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
