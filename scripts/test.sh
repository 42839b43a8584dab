#!/usr/bin/env bash
# README command 2: set up, build, and run every test — native (all kernels this CPU has) and
# ARM64 NEON cross-built and run under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh

echo "== native tests"
ctest --test-dir build --output-on-failure -j"$(nproc)"

echo "== ARM64 NEON tests under qemu-aarch64"
cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DTQKV_BUILD_BENCH=OFF >/dev/null
cmake --build build-arm64 -j"$(nproc)"
# Everything but the long statistical tests (those check math, not the kernels, and run natively).
qemu-aarch64 -L /usr/aarch64-linux-gnu build-arm64/tests/tqkv_tests '~[stat]'
echo "== all tests passed"
