// The relaxed-SIMD operations of the wasm kernels, with their SIMD128 forms.
//
// web/dist/tqkv-relaxed.wasm compiles lib/src/kernels/wasm with clang-16 -mrelaxed-simd, which
// defines __wasm_relaxed_simd__; tqkv.wasm (emscripten's LLVM 14) gets the SIMD128 forms. An engine
// without relaxed SIMD rejects the whole relaxed module, so there is no run-time choice here: the
// loader picks the module. clang-16's wasm_simd128.h has no relaxed intrinsics, so the builtins
// are called directly (clang-19's header names them wasm_i8x16_relaxed_swizzle etc.).
//
// What V8 makes of them on x86-64 (../shared/WASM-TOOLCHAIN.md): i8x16.swizzle is a saturating add
// (so that indices >= 16 give 0) then pshufb; relaxed_swizzle is pshufb alone. f32x4.relaxed_madd
// is one vfmadd231ps where the CPU has FMA (mul + add otherwise; ARM64: fmla).
#pragma once

#include <wasm_simd128.h>

namespace tqkv::detail::wasm {

// t[idx[i]] for byte indices < 16. Exact: relaxed swizzle differs from i8x16.swizzle only for
// indices >= 16 (0 or t[idx % 16], as the engine likes), which no caller passes. So it may serve
// paths whose results must be bit-identical, too.
[[gnu::always_inline]] inline v128_t swizzle16(v128_t t, v128_t idx) {
#if defined(__wasm_relaxed_simd__)
    return v128_t(__builtin_wasm_relaxed_swizzle_i8x16(__i8x16(t), __i8x16(idx)));
#else
    return wasm_i8x16_swizzle(t, idx);
#endif
}

// a * b + c. Relaxed: fused (one rounding) or not, as the engine chooses, so results may differ in
// the last bits between machines: only for attention sums, which are compared with a tolerance,
// never where a code is decided. SIMD128: the product rounded, then added (as with
// -ffp-contract=off everywhere else).
[[gnu::always_inline]] inline v128_t madd(v128_t a, v128_t b, v128_t c) {
#if defined(__wasm_relaxed_simd__)
    return v128_t(__builtin_wasm_relaxed_madd_f32x4(__f32x4(a), __f32x4(b), __f32x4(c)));
#else
    return wasm_f32x4_add(wasm_f32x4_mul(a, b), c);
#endif
}

// c + a0 * b0 + a1 * b1. SIMD128: c + (a0 b0 + a1 b1), the order of the SIMD128 kernels (so
// tqkv.wasm computes what it did before the relaxed variants); relaxed: two madds, c first.
[[gnu::always_inline]] inline v128_t add_products(v128_t c, v128_t a0, v128_t b0, v128_t a1, v128_t b1) {
#if defined(__wasm_relaxed_simd__)
    return madd(a1, b1, madd(a0, b0, c));
#else
    return wasm_f32x4_add(c, wasm_f32x4_add(wasm_f32x4_mul(a0, b0), wasm_f32x4_mul(a1, b1)));
#endif
}

}  // namespace tqkv::detail::wasm
