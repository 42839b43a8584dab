// The fast-path kernels (kernels/simd/fast_attention.hpp) on the SIMD128 backend (relaxed swizzle when built with -mrelaxed-simd).
#include "kernels/simd/wasm128.hpp"
#include "kernels/simd/fast_attention.hpp"

TQKV_DEFINE_FAST_KERNELS(wasm128, simd::Wasm128)
