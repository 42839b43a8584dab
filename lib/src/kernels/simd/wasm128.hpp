// WebAssembly SIMD128 backend of the SIMD layer (see simd.hpp): a V is two v128 (the halves).
// Include only from files compiled with -msimd128 (kernels/wasm/). With -mrelaxed-simd the byte
// look-up is i8x16.relaxed_swizzle (one pshufb in V8 on x86, against pshufb plus a saturating add
// for i8x16.swizzle); the indexes are always below 16, where both give the same bytes.
#pragma once
#include <wasm_simd128.h>

#include <cstdint>

#include "kernels/kernels.hpp"
#include "kernels/simd/simd.hpp"
#include "kernels/wasm/relaxed.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv::detail::simd {

// The integer operations on one v128: one half of Wasm128's V, and a backend of its own for the
// kernels that run each half of a 32-byte row as a separate pass (S::Half in simd.hpp). Wasm128
// applies each of them to both halves.
struct Wasm128Half {
    using V = v128_t;

    // A constant the compiler cannot fold: LLVM would emit a v128.const at every use, which V8
    // (x64) rebuilds each time; this way it is built once and kept in a local.
    static TQKV_SIMD_INLINE int opaque(int x) {
        __asm__("" : "+r"(x));
        return x;
    }
    static TQKV_SIMD_INLINE V load(const void* p) { return wasm_v128_load(p); }
    static TQKV_SIMD_INLINE void store(void* p, V v) { wasm_v128_store(p, v); }
    static TQKV_SIMD_INLINE V table(const uint8_t* p) { return wasm_v128_load(p); }  // the first copy
    static TQKV_SIMD_INLINE V broadcast16(const uint8_t* p) { return wasm_v128_load(p); }
    static TQKV_SIMD_INLINE V zero() { return wasm_i32x4_splat(opaque(0)); }
    static TQKV_SIMD_INLINE V set8(int x) { return wasm_i8x16_splat(opaque(x)); }
    static TQKV_SIMD_INLINE V set16(int x) { return wasm_i16x8_splat(opaque(x)); }
    static TQKV_SIMD_INLINE V set32(int x) { return wasm_i32x4_splat(opaque(x)); }
    static TQKV_SIMD_INLINE V and_(V a, V b) { return wasm_v128_and(a, b); }
    static TQKV_SIMD_INLINE V or_(V a, V b) { return wasm_v128_or(a, b); }
    template <int N> static TQKV_SIMD_INLINE V srl16(V a) { return wasm_u16x8_shr(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sll16(V a) { return wasm_i16x8_shl(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sra16(V a) { return wasm_i16x8_shr(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sll32(V a) { return wasm_i32x4_shl(a, N); }
    template <int N> static TQKV_SIMD_INLINE V srl32(V a) { return wasm_u32x4_shr(a, N); }
    static TQKV_SIMD_INLINE V add8(V a, V b) { return wasm_i8x16_add(a, b); }
    static TQKV_SIMD_INLINE V add16(V a, V b) { return wasm_i16x8_add(a, b); }
    static TQKV_SIMD_INLINE V sub16(V a, V b) { return wasm_i16x8_sub(a, b); }
    static TQKV_SIMD_INLINE V add32(V a, V b) { return wasm_i32x4_add(a, b); }
    static TQKV_SIMD_INLINE V packus16(V a, V b) { return wasm_u8x16_narrow_i16x8(a, b); }
    static TQKV_SIMD_INLINE V packs32(V a, V b) { return wasm_i16x8_narrow_i32x4(a, b); }
    static TQKV_SIMD_INLINE V lookup(V t, V idx) { return wasm::swizzle16(t, idx); }
    static TQKV_SIMD_INLINE V unpacklo16(V a, V b) { return wasm_i16x8_shuffle(a, b, 0, 8, 1, 9, 2, 10, 3, 11); }
    static TQKV_SIMD_INLINE V unpackhi16(V a, V b) { return wasm_i16x8_shuffle(a, b, 4, 12, 5, 13, 6, 14, 7, 15); }
    static TQKV_SIMD_INLINE V madd16(V a, V b) { return wasm_i32x4_dot_i16x8(a, b); }
};

struct Wasm128 {
    // The fast kernels run the two halves as separate passes where both at once would outgrow the
    // registers (16 xmm in V8 on x64): the key sums, the value sums.
    using Half = Wasm128Half;
    struct V {
        v128_t l, h;
    };
    struct F {
        v128_t l, h;
    };
    // Two query heads share each decoded index (GQA), keys and values alike, now that a pass
    // holds one half. Values, measured in Node with A/B builds interleaved (K4V4, 4 query heads,
    // 4096 tokens, one query): 2 KV heads (two heads per pass) relaxed 198 -> 186-194 us, SIMD128
    // 257 -> 244 us; 4 KV heads (one head per pass, unchanged code) equal within noise. (Once,
    // when the two variants spilled more, wasm-opt inlined them into one function that V8 compiled
    // 15% slower for one head; not so in this layout.)
    static constexpr int kHeadsPerPass = 2, kValueHeadsPerPass = 2;

    static TQKV_SIMD_INLINE V join(v128_t l, v128_t h) { return {l, h}; }
    static TQKV_SIMD_INLINE v128_t part(V v, int i) { return i ? v.h : v.l; }
    static TQKV_SIMD_INLINE V load(const void* p) {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        return {Half::load(b), Half::load(b + 16)};
    }
    static TQKV_SIMD_INLINE void store(void* p, V v) {
        uint8_t* b = static_cast<uint8_t*>(p);
        Half::store(b, v.l);
        Half::store(b + 16, v.h);
    }
    static TQKV_SIMD_INLINE V table(const uint8_t* p) {  // the first of the two copies serves both halves
        const v128_t t = Half::table(p);
        return {t, t};
    }
    static TQKV_SIMD_INLINE V broadcast16(const uint8_t* p) { return table(p); }
    static TQKV_SIMD_INLINE V zero() { return twice(Half::zero()); }
    static TQKV_SIMD_INLINE V set8(int x) { return twice(Half::set8(x)); }
    static TQKV_SIMD_INLINE V set16(int x) { return twice(Half::set16(x)); }
    static TQKV_SIMD_INLINE V set32(int x) { return twice(Half::set32(x)); }
    static TQKV_SIMD_INLINE V and_(V a, V b) { return {Half::and_(a.l, b.l), Half::and_(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V or_(V a, V b) { return {Half::or_(a.l, b.l), Half::or_(a.h, b.h)}; }
    template <int N> static TQKV_SIMD_INLINE V srl16(V a) { return {Half::srl16<N>(a.l), Half::srl16<N>(a.h)}; }
    template <int N> static TQKV_SIMD_INLINE V sll16(V a) { return {Half::sll16<N>(a.l), Half::sll16<N>(a.h)}; }
    template <int N> static TQKV_SIMD_INLINE V sra16(V a) { return {Half::sra16<N>(a.l), Half::sra16<N>(a.h)}; }
    template <int N> static TQKV_SIMD_INLINE V sll32(V a) { return {Half::sll32<N>(a.l), Half::sll32<N>(a.h)}; }
    template <int N> static TQKV_SIMD_INLINE V srl32(V a) { return {Half::srl32<N>(a.l), Half::srl32<N>(a.h)}; }
    static TQKV_SIMD_INLINE V add8(V a, V b) { return {Half::add8(a.l, b.l), Half::add8(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V add16(V a, V b) { return {Half::add16(a.l, b.l), Half::add16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V sub16(V a, V b) { return {Half::sub16(a.l, b.l), Half::sub16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V add32(V a, V b) { return {Half::add32(a.l, b.l), Half::add32(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V packus16(V a, V b) { return {Half::packus16(a.l, b.l), Half::packus16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V packs32(V a, V b) { return {Half::packs32(a.l, b.l), Half::packs32(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V lookup(V t, V idx) { return {Half::lookup(t.l, idx.l), Half::lookup(t.h, idx.h)}; }
    static TQKV_SIMD_INLINE V unpacklo16(V a, V b) { return {Half::unpacklo16(a.l, b.l), Half::unpacklo16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V unpackhi16(V a, V b) { return {Half::unpackhi16(a.l, b.l), Half::unpackhi16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V madd16(V a, V b) { return {Half::madd16(a.l, b.l), Half::madd16(a.h, b.h)}; }
    static TQKV_SIMD_INLINE void store_u8x16(uint8_t* p, V lo, V hi) {
        wasm_v128_store(p, wasm_u8x16_narrow_i16x8(wasm_u16x8_narrow_i32x4(lo.l, lo.h), wasm_u16x8_narrow_i32x4(hi.l, hi.h)));
    }

    static TQKV_SIMD_INLINE F to_float(V a) { return {wasm_f32x4_convert_i32x4(a.l), wasm_f32x4_convert_i32x4(a.h)}; }
    // By the magic number 1.5 * 2^23 (|a| < 2^22: the sum's last bit is the unit and its low
    // mantissa bits the integer, rounded to nearest even): two instructions in V8, where
    // f32x4.nearest + i32x4.trunc_sat take about seven.
    static TQKV_SIMD_INLINE v128_t round4(v128_t a) {
        return wasm_i32x4_sub(wasm_f32x4_add(a, wasm_f32x4_splat(0x1.8p23f)), wasm_i32x4_splat(0x4B400000));
    }
    static TQKV_SIMD_INLINE V round_to_int(F a) { return {round4(a.l), round4(a.h)}; }
    static TQKV_SIMD_INLINE F fload(const float* p) { return {wasm_v128_load(p), wasm_v128_load(p + 4)}; }
    static TQKV_SIMD_INLINE void fstore(float* p, F a) {
        wasm_v128_store(p, a.l);
        wasm_v128_store(p + 4, a.h);
    }
    static TQKV_SIMD_INLINE F fset(float x) {
        const v128_t v = wasm_f32x4_splat(x);
        return {v, v};
    }
    static TQKV_SIMD_INLINE F fadd(F a, F b) { return {wasm_f32x4_add(a.l, b.l), wasm_f32x4_add(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fsub(F a, F b) { return {wasm_f32x4_sub(a.l, b.l), wasm_f32x4_sub(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fmul(F a, F b) { return {wasm_f32x4_mul(a.l, b.l), wasm_f32x4_mul(a.h, b.h)}; }
    // a < b ? a : b and a > b ? a : b, as minps / maxps (pmin(x, y) = y < x ? y : x).
    static TQKV_SIMD_INLINE v128_t min4(v128_t a, v128_t b) { return wasm_f32x4_pmin(b, a); }
    static TQKV_SIMD_INLINE v128_t max4(v128_t a, v128_t b) { return wasm_f32x4_pmax(b, a); }
    static TQKV_SIMD_INLINE F fmin(F a, F b) { return {min4(a.l, b.l), min4(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fmax(F a, F b) { return {max4(a.l, b.l), max4(a.h, b.h)}; }
    static TQKV_SIMD_INLINE float hmin(F a) {
        v128_t m = min4(a.l, a.h);
        m = min4(m, wasm_i32x4_shuffle(m, m, 2, 3, 0, 1));
        m = min4(m, wasm_i32x4_shuffle(m, m, 1, 0, 3, 2));
        return wasm_f32x4_extract_lane(m, 0);
    }
    static TQKV_SIMD_INLINE float hmax(F a) {
        v128_t m = max4(a.l, a.h);
        m = max4(m, wasm_i32x4_shuffle(m, m, 2, 3, 0, 1));
        m = max4(m, wasm_i32x4_shuffle(m, m, 1, 0, 3, 2));
        return wasm_f32x4_extract_lane(m, 0);
    }
    // IEEE binary16 -> float, exact. Each half goes to the top of a 32-bit lane (one interleave
    // with zero: sign at bit 31, exponent and mantissa at bits 30..16); an arithmetic shift right
    // by 3 puts exponent and mantissa in a float's place (bits 27..13) and copies the sign into
    // bits 30..28, which the mask clears. The lane then reads as the half's value * 2^-112
    // (subnormal halves land on subnormal floats, zeros on zeros, the sign in place), and one
    // multiply by 2^112 rescales exactly. 4 operations per 4 halves, where zero-extending,
    // masking the magnitude and the sign apart and or-ing them back took 7 (wasm decode of
    // tq-ref-128 spent most of its time here). Wrong for infinities and NaNs, which the shift
    // reads as large finite values: halves_to_float catches them.
    static TQKV_SIMD_INLINE void halves8(v128_t v, v128_t& lo, v128_t& hi) {
        const v128_t zero = wasm_i32x4_splat(0);
        auto widen = [](v128_t top) TQKV_SIMD_LAMBDA {
            const v128_t bits = wasm_v128_and(wasm_i32x4_shr(top, 3), wasm_i32x4_splat(int32_t(0x8fffffffu)));
            return wasm_f32x4_mul(bits, wasm_f32x4_splat(0x1p112f));
        };
        lo = widen(wasm_i16x8_shuffle(zero, v, 0, 8, 1, 9, 2, 10, 3, 11));
        hi = widen(wasm_i16x8_shuffle(zero, v, 4, 12, 5, 13, 6, 14, 7, 15));
    }
    // Infinities and NaNs are caught after the loop: the largest magnitude bits seen (one and and
    // one max per 8 halves, where a test and branch per group took four or five operations); if
    // one of them had an all-ones exponent, the whole range is converted again by the portable
    // function. Inline here (the fast kernels convert 32 norms at a time, where a call through
    // the kernel table cost as much as the conversion); the wasm128 kernel table's from_half is
    // this function.
    static TQKV_SIMD_INLINE void halves_to_float(const uint16_t* h, float* out, size_t n) {
        const v128_t magnitude = wasm_i16x8_splat(0x7fff);
        v128_t largest = wasm_i16x8_splat(0);
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const v128_t v = wasm_v128_load(h + i);
            largest = wasm_u16x8_max(largest, wasm_v128_and(v, magnitude));
            v128_t lo, hi;
            halves8(v, lo, hi);
            wasm_v128_store(out + i, lo);
            wasm_v128_store(out + i + 4, hi);
        }
        for (; i < n; ++i) out[i] = half_to_float(h[i]);
        if (wasm_v128_any_true(wasm_u16x8_gt(largest, wasm_i16x8_splat(0x7bff))))
            for (size_t k = 0; k < n; ++k) out[k] = half_to_float(h[k]);
    }

  private:
    static TQKV_SIMD_INLINE V twice(v128_t x) { return {x, x}; }
};

}  // namespace tqkv::detail::simd
