#!/usr/bin/env bash
# Everything of the WebAssembly side, once the Debian packages are present
# (emscripten, clang-16, chromium, nodejs/npm, catch2, plus the native toolchain):
#   1. build web/dist/tqkv.wasm (SIMD128), tqkv-relaxed.wasm and tqkv-scalar.wasm, and the Catch2
#      suite as wasm
#   2. run the Catch2 suite under Node's WASI, SIMD128 and scalar (kernel bit-identity vs scalar),
#      and its kernel and cache tests in the relaxed-SIMD build
#   3. npm ci + tsc in web/
#   4. golden files from the native build (tests/test_capi.cpp and tests/test_capi_model.cpp
#      [golden]; model.json needs ../shared/data/tq-ref-128 or TQKV_MODEL), then node --test web/test:
#      API and error paths, SIMD == scalar, wasm == native both ways, memory growth failure,
#      npm pack into a fresh directory (and refused without a build output), the module builds
#      (relaxed -> SIMD128 -> scalar; relaxed in a child with --experimental-wasm-relaxed-simd),
#      Vite / esbuild / webpack production builds of a tiny app run in Chromium, Chromium
#      (playwright-core) with and without SIMD, the Llama
#      runner in wasm (tiny model; tq-ref-128: exact-cache NLL == native within 1e-4, greedy
#      64 bytes == native) and the demo page web/demo/ in Chromium (exact cache == native, K4V4).
#      The model tests skip with a message when the model is absent.
# Uses the native test binary $TQKV_NATIVE_BUILD/tests/tqkv_tests (default build/, the tree of
# scripts/build.sh; brought up to date here).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
native_build=${TQKV_NATIVE_BUILD:-build}

for tool in em++ node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "wasm/test.sh: $tool not found (apt-get install -y emscripten nodejs npm chromium)" >&2; exit 1; }
done
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  echo "wasm/test.sh: /usr/bin/chromium not found (apt-get install -y chromium)" >&2
  exit 1
fi

echo "== wasm: build (emscripten $(em++ --version | head -1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -1))"
bash wasm/build.sh tests

echo "== wasm: Catch2 suite under node WASI (SIMD128, then scalar)"
# '~[stat]': the long statistical tests check math, not the kernels (they run natively).
for v in simd scalar; do
  node --no-warnings wasm/run-wasi.mjs "build-wasm/tqkv_tests-$v.wasm" '~[stat]'
done
echo "== wasm: kernel and cache tests in the relaxed-SIMD build (~10 s)"
# The relaxed build differs from the SIMD128 one only in lib/src/kernels/wasm: its kernel tests
# (codes == scalar bit for bit) and cache tests (attention within tolerance) are what can differ.
# Node 20 runs relaxed SIMD behind a flag; later versions may not know the flag.
relaxed_flag=()
if node --experimental-wasm-relaxed-simd -e 0 >/dev/null 2>&1; then relaxed_flag=(--experimental-wasm-relaxed-simd); fi
node "${relaxed_flag[@]}" --no-warnings wasm/run-wasi.mjs build-wasm/tqkv_tests-relaxed.wasm '[kernels],[cache]~[stat]'
# ... and the module really holds relaxed instructions (else it would be tqkv.wasm under another
# name): an engine with relaxed SIMD switched off must reject it, and accept tqkv.wasm.
if node --no-experimental-wasm-relaxed-simd -e 0 >/dev/null 2>&1; then
  node --no-experimental-wasm-relaxed-simd -e '
    const { readFileSync } = require("node:fs");
    const ok = (f) => WebAssembly.validate(readFileSync(f));
    if (ok("web/dist/tqkv-relaxed.wasm") || !ok("web/dist/tqkv.wasm")) {
      console.error("wasm/test.sh: web/dist/tqkv-relaxed.wasm has no relaxed-SIMD instruction (or tqkv.wasm does)");
      process.exit(1);
    }
    console.log("tqkv-relaxed.wasm uses relaxed SIMD (rejected without it); tqkv.wasm does not");'
else
  echo "wasm/test.sh: this node cannot switch relaxed SIMD off: not checking that tqkv-relaxed.wasm uses it"
fi

echo "== native test binary (writes the golden files)"
if [ -f "$native_build/CMakeCache.txt" ]; then
  cmake --build "$native_build" --target tqkv_tests -j"$(nproc)" >/dev/null
else
  cmake -S . -B "$native_build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$native_build" --target tqkv_tests -j"$(nproc)" >/dev/null
fi
native_tests="$root/$native_build/tests/tqkv_tests"

echo "== web: npm ci + tsc"
cd web
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
npx tsc -p tsconfig.json
# The bundlers of test/bundlers.test.mjs (Vite, esbuild, webpack; ~20 s to install, lockfile pinned).
(cd test/bundlers && npm ci --no-audit --no-fund --loglevel=error)

echo "== web: node --test (API, SIMD == scalar, wasm == native, memory, npm pack, Chromium, Firefox, model runner, demo page)"
golden=$(mktemp -d)
trap 'rm -rf "$golden"' EXIT
TQKV_GOLDEN_DIR="$golden" "$native_tests" '[golden]' >/dev/null
TQKV_GOLDEN_DIR="$golden" TQKV_NATIVE_TESTS="$native_tests" node --test test/
