#!/usr/bin/env bash
# README command 2: set up, build, and run every test:
#   1. native Catch2 suite (all kernels this CPU has: scalar, AVX2, AVX-512)
#   2. the same suite under AddressSanitizer + UndefinedBehaviorSanitizer, built with clang
#   3. the concurrency tests under ThreadSanitizer
#   4. libFuzzer targets (cache deserialization, .npy parser, SIMD-vs-scalar differential)
#   5. ARM64 NEON build, run under qemu-aarch64
#   6. the explorer: every panel rendered headless under Xvfb, the PNGs checked
#   7. WebAssembly: the suite in wasm (SIMD128 and scalar), the npm package's node tests
#      (wasm == native codes both ways), npm pack, and Chromium through playwright-core
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
jobs=$(nproc)
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start ))s)"; }
# background NAME TITLE CMD...: runs a single-threaded step beside the next ones (output in
# build/NAME.log); finish NAME waits for it, prints its output and fails the run if it failed.
declare -A bg_pid bg_title
background() {
  local name=$1 title=$2; shift 2
  step "$title: started in the background"
  "$@" >"build/$name.log" 2>&1 &
  bg_pid[$name]=$! bg_title[$name]=$title
}
finish() {
  local name=$1 rc=0
  wait "${bg_pid[$name]}" || rc=$?
  step "${bg_title[$name]}: output"
  cat "build/$name.log"
  if [ "$rc" != 0 ]; then echo "== FAILED: ${bg_title[$name]} (exit $rc)"; exit "$rc"; fi
}

step "native tests"
ctest --test-dir build --output-on-failure -j"$jobs"

step "install + find_package(tqkv) from another CMake project"
rm -rf build/install-test build/prefix
cmake --install build --prefix build/prefix >/dev/null
cmake -S tests/install -B build/install-test -DCMAKE_PREFIX_PATH="$PWD/build/prefix" >/dev/null
cmake --build build/install-test -j"$jobs" >/dev/null
./build/install-test/install_test

step "AddressSanitizer + UBSan tests (built with clang: library, tests, bench, tools, fuzz targets)"
# The native tree above is GCC; this one is clang (Debian's clang 14, sanitizer runtimes from
# libclang-rt-14-dev), so every test run also proves the project builds with both compilers.
# One tree serves the tests and the fuzzing step: TQKV_FUZZ compiles everything with
# -fsanitize=fuzzer-no-link,address,undefined (coverage hooks are no-ops outside a fuzz target),
# so the library is compiled with sanitizers once, not twice. bench and tools are built (not run).
cmake -S . -B build-asan -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_FUZZ=ON >/dev/null
cmake --build build-asan -j"$jobs"
# The test program and the fuzzers run one thread each: the fuzzing step runs beside the tests,
# its output kept in a log and shown when both are done.
background FUZZ "fuzzing (the targets of the sanitizer tree)" env FUZZ_BUILD=build-asan bash fuzz/run.sh
# [heavy]: long cases that run natively above (and under TSan for the threaded ones).
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-asan/tests/tqkv_tests '~[stat]~[heavy]'
finish FUZZ

step "ThreadSanitizer concurrency tests"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_TSAN=ON -DTQKV_BUILD_BENCH=OFF -DTQKV_BUILD_TOOLS=OFF >/dev/null
cmake --build build-tsan -j"$jobs"
TSAN_OPTIONS=halt_on_error=1 ./build-tsan/tests/tqkv_tests '[threads]'

step "ARM64 NEON tests under qemu-aarch64"
# The test files with per-ISA code paths (kernels, fast kernels, codecs, packing, rotation, the
# cache's attention, calibrated caches, the model's fp16 matrix products): the rest (C ABI, budget
# policies, baselines, tokenizers, HF configs) is the same portable C++ the native and sanitizer
# runs above cover, and compiling it for ARM cost minutes of CI.
cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DTQKV_BUILD_BENCH=OFF -DTQKV_BUILD_TOOLS=OFF \
  -DTQKV_TEST_FILES="kernels;fast_kernels;codec;codebook;packing;rotation;cache;calibration;model" >/dev/null
cmake --build build-arm64 -j"$jobs"
# Everything but the long statistical tests and the [heavy] ones (math and cache logic that take
# minutes under emulation; they run natively above, and the NEON kernels they call have their own
# [kernels] tests here).
# One emulated thread: it runs beside the explorer and WebAssembly steps, checked at the end.
background QEMU "ARM64 NEON tests under qemu-aarch64 (run)" \
  qemu-aarch64 -L /usr/aarch64-linux-gnu build-arm64/tests/tqkv_tests '~[stat]~[heavy]'

step "explorer: render every panel headless under Xvfb and check the PNGs"
# In the native tree (its library is built already: only the explorer's own files compile).
cmake -S . -B build -DTQKV_BUILD_EXPLORER=ON >/dev/null
cmake --build build -j"$jobs" --target tqkv-explorer tqkv-explorer-pngcheck tqkv-explorer-testmodel
bash explorer/test.sh build

step "WebAssembly + npm package"
bash wasm/test.sh
finish QEMU

step "all tests passed"
