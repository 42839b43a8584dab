#!/usr/bin/env bash
# Builds the WebAssembly modules of the npm package from the same lib/ sources as the native
# library (no copies), with Debian's emscripten (apt package `emscripten`, 3.1.6):
#   web/dist/tqkv.wasm         SIMD128 (-msimd128, kernels in lib/src/kernels/wasm)
#   web/dist/tqkv-scalar.wasm  no SIMD (scalar kernels only), for engines without SIMD128
#   web/dist/tqkv-relaxed.wasm SIMD128 + relaxed SIMD (kernels compiled by clang-16)
#   web/dist/tqkv-mt.wasm, tqkv-relaxed-mt.wasm: the SIMD builds with threads (atomics, a shared
#                              memory; workers started by web/src/threads.ts)
# Both are standalone modules (-sSTANDALONE_WASM, no Emscripten JS glue): they export the C ABI
# of lib/include/tqkv/tqkv.h plus malloc/free, import their memory (env.memory, so the loader
# chooses the maximum) and need only three tiny imports (see web/src/loader.ts). C++ exceptions
# use WebAssembly exception handling (-fwasm-exceptions): none crosses the C ABI.
#
#   bash wasm/build.sh            # both modules
#   bash wasm/build.sh tests      # also build-wasm/tqkv_tests-{relaxed,simd,scalar}.wasm (the Catch2 suite)
# Installs nothing. Objects go to build-wasm/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v em++ >/dev/null 2>&1; then
  echo "wasm/build.sh: em++ not found. Install Debian's emscripten first: apt-get install -y emscripten" >&2
  exit 1
fi
# Debian's emcc runs a few JS helpers with node and needs its packaged node modules.
export NODE_PATH=/usr/share/nodejs${NODE_PATH:+:$NODE_PATH}
# Keep Emscripten's cache where Debian put it (prebuilt, frozen system libraries).
export EM_CACHE=${EM_CACHE:-/usr/share/emscripten/cache}
# The compiler of the relaxed-SIMD kernels: any clang >= 16 (the final relaxed opcodes).
relaxed_cxx=${TQKV_RELAXED_CXX:-clang++-16}
if ! command -v "$relaxed_cxx" >/dev/null 2>&1; then
  echo "wasm/build.sh: $relaxed_cxx not found (the relaxed-SIMD module needs it): apt-get install -y clang-16" >&2
  exit 1
fi

jobs=$(nproc 2>/dev/null || echo 2)
out_dir="$root/web/dist"
obj_root="$root/build-wasm"
mkdir -p "$out_dir" "$obj_root"

# The library sources the C ABI needs: lib/CMakeLists.txt's list minus the .npy loader, plus the
# Llama runner (every lib/src/model/*.cpp, as CMake globs them) with the baseline formats its
# cache specs use (q8_0, q4_0, KIVI).
core=(
  lib/src/codec/codebook.cpp lib/src/codec/rotation.cpp lib/src/codec/packing.cpp lib/src/codec/codec.cpp
  lib/src/codec/mse.cpp lib/src/codec/prod.cpp lib/src/codec/qjl.cpp lib/src/codec/split.cpp
  lib/src/kernels/dispatch.cpp lib/src/cache/storage.cpp lib/src/cache/attention.cpp
  lib/src/cache/serialize.cpp lib/src/cache/calibration.cpp lib/src/cache/spec.cpp lib/src/cache/model_cache.cpp lib/src/cache/rate_plan.cpp lib/src/budget/budget.cpp lib/src/util/thread_pool.cpp lib/src/util/wasm_heap.cpp lib/src/baselines/dense.cpp
  lib/src/baselines/formats.cpp lib/src/capi/c_api.cpp
)
for src in lib/src/model/*.cpp; do core+=("$src"); done
scalar_kernels=(lib/src/kernels/scalar/scalar.cpp lib/src/kernels/scalar/attention.cpp lib/src/kernels/scalar/fast.cpp)
simd_kernels=(lib/src/kernels/wasm/wasm128.cpp lib/src/kernels/wasm/attention.cpp lib/src/kernels/wasm/fast.cpp)

common=(-std=c++20 -O3 -ffp-contract=off -fno-fast-math -fwasm-exceptions -Wall -Wextra
        -Ilib/include -Ilib/src -DNDEBUG)

# compile VARIANT FLAGS... -- SOURCES...: objects in build-wasm/VARIANT/ compiled by em++ (or by
# $CXX_OF_VARIANT when set), rebuilt when the source or any lib header is newer.
compile() {
  local variant=$1; shift
  local cxx=${CXX_OF_VARIANT:-em++}
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  local dir="$obj_root/$variant"
  mkdir -p "$dir"
  local newest_header
  newest_header=$(find lib/include lib/src -name '*.hpp' -o -name '*.h' | xargs ls -t | head -1)
  local todo=()
  for src in "$@"; do
    local obj="$dir/$(echo "$src" | tr '/' '_').o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$newest_header" -nt "$obj" ] || [ "$0" -nt "$obj" ]; then
      todo+=("$src")
    fi
  done
  [ ${#todo[@]} -eq 0 ] && return 0
  echo "  ${cxx%% *} [$variant] ${#todo[@]} file(s)" >&2
  printf '%s\n' "${todo[@]}" | CXX="$cxx" xargs -P "$jobs" -I{} sh -c '
    src="$1"; shift; obj="$0/$(echo "$src" | tr / _).o"
    extra=""
    case "$src" in
      lib/src/kernels/scalar/*) extra="-fno-vectorize -fno-slp-vectorize" ;;  # keep the reference scalar
    esac
    $CXX "$@" $extra -c "$src" -o "$obj"' "$dir" {} "${common[@]}" "${flags[@]}"
}

# The relaxed-SIMD kernels: clang-16 with the exact flags em++ gives its own clang (target, sysroot,
# defines; `em++ --cflags`), plus -mrelaxed-simd (which defines __wasm_relaxed_simd__, the switch of
# the relaxed variants in lib/src/kernels/wasm).
relaxed_flags=(-msimd128 -DTQKV_HAVE_WASM_KERNELS=1)
compile_relaxed() {
  CXX_OF_VARIANT="$relaxed_cxx $(em++ -msimd128 -fwasm-exceptions --cflags)" \
    compile relaxed "${relaxed_flags[@]}" -mrelaxed-simd -- "${simd_kernels[@]}"
}

objects() {  # objects VARIANT SOURCES...
  local variant=$1; shift
  for src in "$@"; do echo "$obj_root/$variant/$(echo "$src" | tr '/' '_').o"; done
}

# The exported C ABI: every TQKV_API function of tqkv.h, plus malloc and free.
exports=$(grep -o '^TQKV_API [^(]*(' lib/include/tqkv/tqkv.h | sed -E 's/.*[ *]([a-z0-9_]+)\($/_\1/' | sort -u | tr '\n' ',')
exports_abi="${exports%,}"
exports="${exports}_malloc,_free"

link_flags=(-fwasm-exceptions -sSTANDALONE_WASM --no-entry -sIMPORTED_MEMORY=1 -sALLOW_MEMORY_GROWTH=1
            -sINITIAL_MEMORY=4MB -sMAXIMUM_MEMORY=4GB -sTOTAL_STACK=1MB -sERROR_ON_UNDEFINED_SYMBOLS=1
            -sEXPORTED_FUNCTIONS="$exports")

# The relaxed module is linked without optimizing (-O0) so that emscripten runs no wasm-opt: Debian's
# binaryen 108 cannot parse relaxed opcodes (see ../shared/WASM-TOOLCHAIN.md); -sWASM_BIGINT and
# -sERROR_ON_WASM_CHANGES_AFTER_LINK make sure nothing else rewrites the module after wasm-ld, and
# the objects themselves are -O3. -O0 would add a stack-overflow check, assertions and a name
# section; they are turned off so the module's imports and exports are those of tqkv.wasm.
relaxed_link=(-O0 -sERROR_ON_WASM_CHANGES_AFTER_LINK -sWASM_BIGINT -sASSERTIONS=0 -sSTACK_OVERFLOW_CHECK=0
              -Wl,--strip-all)

build_variant() {  # build_variant NAME OUTPUT FLAGS... -- SOURCES...
  local variant=$1 output=$2; shift 2
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  compile "$variant" "${flags[@]}" -- "$@"
  # shellcheck disable=SC2046
  em++ -O3 "${link_flags[@]}" "${flags[@]}" $(objects "$variant" "$@") -o "$output"
  echo "  built ${output#$root/} ($(wc -c <"$output") bytes)" >&2
}

echo "wasm/build.sh: $(em++ --version | head -1); relaxed kernels: $("$relaxed_cxx" --version | head -1)" >&2
build_variant simd "$out_dir/tqkv.wasm" -msimd128 -DTQKV_HAVE_WASM_KERNELS=1 -- \
  "${core[@]}" "${scalar_kernels[@]}" "${simd_kernels[@]}"
build_variant scalar "$out_dir/tqkv-scalar.wasm" -- "${core[@]}" "${scalar_kernels[@]}"
# Relaxed: the objects of tqkv.wasm, but the SIMD kernels from build-wasm/relaxed/.
compile_relaxed
# shellcheck disable=SC2046
em++ "${link_flags[@]}" "${relaxed_link[@]}" "${relaxed_flags[@]}" $(objects simd "${core[@]}" "${scalar_kernels[@]}") \
  $(objects relaxed "${simd_kernels[@]}") -o "$out_dir/tqkv-relaxed.wasm"
echo "  built web/dist/tqkv-relaxed.wasm ($(wc -c <"$out_dir/tqkv-relaxed.wasm") bytes)" >&2

# The threaded modules: the library compiled again with atomics and bulk memory (its
# thread_locals become real thread-local storage and util/thread_pool.cpp gets its wasm pool),
# linked on a shared memory. A module without a pthread runtime: each worker instance sets its own
# stack (stackRestore) and thread-local storage (__wasm_init_tls of __tls_size bytes, aligned to
# __tls_align) before it enters tqkv_worker_main (web/src/threads.ts). Emscripten's C++ runtime
# of its pthread builds comes before the archives em++ adds (shared memory forbids objects built
# without atomics), and the heap goes through one lock: --wrap routes malloc & co. to
# lib/src/util/wasm_heap.cpp, whose wrappers export themselves as malloc and free.
mt_flags=(-msimd128 -matomics -mbulk-memory -DTQKV_HAVE_WASM_KERNELS=1)
em_lib=$EM_CACHE/sysroot/lib/wasm32-emscripten
mt_link=(-Wl,--shared-memory,--export=__wasm_init_tls,--export=__tls_size,--export=__tls_align
         -Wl,--wrap=malloc,--wrap=free,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,--wrap=aligned_alloc
         "$em_lib/libc++-mt-except.a" "$em_lib/libc++abi-mt-except.a" "$em_lib/libunwind-mt-except.a"
         "$em_lib/libcompiler_rt-mt.a" -sEXPORTED_FUNCTIONS="$exports_abi")
# Compiled by clang-16 (with em++'s flags, as the relaxed kernels): Emscripten's clang 14 keeps
# the landing-pad context of wasm exceptions (__wasm_lpad_context) a plain global, while the
# pthread build of libunwind has it thread-local, and C++ catch clauses then never match a type
# (every exception would reach catch (...)); clang >= 15 makes it thread-local as well.
mt_cxx="$relaxed_cxx $(em++ "${mt_flags[@]}" -fwasm-exceptions --cflags)"
CXX_OF_VARIANT="$mt_cxx" compile mt "${mt_flags[@]}" -- "${core[@]}" "${scalar_kernels[@]}" "${simd_kernels[@]}"
CXX_OF_VARIANT="$mt_cxx" compile relaxed-mt "${mt_flags[@]}" -mrelaxed-simd -- "${simd_kernels[@]}"
# shellcheck disable=SC2046
em++ -O3 "${link_flags[@]}" "${mt_link[@]}" "${mt_flags[@]}" \
  $(objects mt "${core[@]}" "${scalar_kernels[@]}" "${simd_kernels[@]}") -o "$out_dir/tqkv-mt.wasm"
# shellcheck disable=SC2046
em++ "${link_flags[@]}" "${relaxed_link[@]}" "${mt_link[@]}" "${mt_flags[@]}" \
  $(objects mt "${core[@]}" "${scalar_kernels[@]}") $(objects relaxed-mt "${simd_kernels[@]}") -o "$out_dir/tqkv-relaxed-mt.wasm"
echo "  built web/dist/tqkv-mt.wasm ($(wc -c <"$out_dir/tqkv-mt.wasm") bytes), web/dist/tqkv-relaxed-mt.wasm ($(wc -c <"$out_dir/tqkv-relaxed-mt.wasm") bytes)" >&2

if [ "${1:-}" = "tests" ]; then
  # The Catch2 suite (tests/*.cpp, Debian's header-only catch2) as WASI programs, run by
  # wasm/run-wasi.mjs under node: the kernel tests compare wasm128 with scalar bit for bit.
  tests=(tests/test_kernels.cpp tests/test_fast_kernels.cpp tests/test_cache.cpp tests/test_codec.cpp tests/test_packing.cpp
         tests/test_main.cpp tests/test_capi.cpp tests/test_capi_model.cpp tests/test_model.cpp tests/test_tokenizer.cpp
         tests/test_calibration.cpp)
  # Only Catch2 from the system include directory (its other headers are glibc's).
  catch_hpp=/usr/include/catch2/catch.hpp
  if [ ! -f "$catch_hpp" ]; then echo "wasm/build.sh: $catch_hpp missing (apt-get install -y catch2)" >&2; exit 1; fi
  mkdir -p "$obj_root/include/catch2"
  ln -sf "$catch_hpp" "$obj_root/include/catch2/catch.hpp"
  test_flags=(-Itests -I"$obj_root/include" -DCATCH_CONFIG_NO_POSIX_SIGNALS -DTQKV_SHARED_DATA=\"/nonexistent\")
  lib_srcs=("${core[@]}" lib/src/data/kvdump.cpp "${scalar_kernels[@]}")  # what the tests link besides the kernels
  for variant in simd scalar; do
    vflags=()
    srcs=("${lib_srcs[@]}")
    vtests=("${tests[@]}")
    if [ $variant = simd ]; then vflags=(-msimd128 -DTQKV_HAVE_WASM_KERNELS=1); srcs+=("${simd_kernels[@]}"); fi
    # The scalar module differs from SIMD128 only in its kernels: its suite is the kernel, codec and
    # cache tests (the C ABI, model and tokenizer tests run in the SIMD128 suite and under npm).
    if [ $variant = scalar ]; then
      vtests=(tests/test_main.cpp tests/test_kernels.cpp tests/test_fast_kernels.cpp tests/test_cache.cpp
              tests/test_codec.cpp tests/test_packing.cpp)
    fi
    compile "$variant" "${vflags[@]}" -- "${srcs[@]}"
    compile "tests-$variant" "${vflags[@]}" "${test_flags[@]}" -- "${vtests[@]}"
    # shellcheck disable=SC2046
    em++ -O2 -fwasm-exceptions -sSTANDALONE_WASM -sALLOW_MEMORY_GROWTH=1 -sINITIAL_MEMORY=64MB \
      -sTOTAL_STACK=4MB "${vflags[@]}" $(objects "$variant" "${srcs[@]}") $(objects "tests-$variant" "${vtests[@]}") \
      -o "$root/build-wasm/tqkv_tests-$variant.wasm"
    echo "  built build-wasm/tqkv_tests-$variant.wasm" >&2
  done
  # Relaxed: the SIMD build's objects with the relaxed kernels, linked as the relaxed module is.
  # shellcheck disable=SC2046
  em++ "${relaxed_link[@]}" -fwasm-exceptions -sSTANDALONE_WASM -sALLOW_MEMORY_GROWTH=1 -sINITIAL_MEMORY=64MB \
    -sTOTAL_STACK=4MB "${relaxed_flags[@]}" $(objects simd "${lib_srcs[@]}") \
    $(objects relaxed "${simd_kernels[@]}") $(objects tests-simd "${tests[@]}") -o "$root/build-wasm/tqkv_tests-relaxed.wasm"
  echo "  built build-wasm/tqkv_tests-relaxed.wasm" >&2
fi
