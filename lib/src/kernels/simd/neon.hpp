// NEON (ARM64) backend of the SIMD layer (see simd.hpp): a V is two 128-bit registers (the halves).
#pragma once
#include <arm_neon.h>

#include <cstdint>
#include <type_traits>

#include "kernels/simd/simd.hpp"

namespace tqkv::detail::simd {

struct Neon {
    struct V {
        uint8x16_t l, h;
    };
    struct F {
        float32x4_t l, h;
    };
    static constexpr int kHeadsPerPass = 2, kValueHeadsPerPass = 2;

  private:
    static TQKV_SIMD_INLINE int16x8_t s16(uint8x16_t v) { return vreinterpretq_s16_u8(v); }
    static TQKV_SIMD_INLINE uint16x8_t u16(uint8x16_t v) { return vreinterpretq_u16_u8(v); }
    static TQKV_SIMD_INLINE int32x4_t s32(uint8x16_t v) { return vreinterpretq_s32_u8(v); }
    static TQKV_SIMD_INLINE uint32x4_t u32(uint8x16_t v) { return vreinterpretq_u32_u8(v); }
    template <class T>
    static TQKV_SIMD_INLINE uint8x16_t b8(T v) {
        if constexpr (sizeof(T) == 16 && std::is_same_v<T, int16x8_t>) return vreinterpretq_u8_s16(v);
        else if constexpr (std::is_same_v<T, uint16x8_t>) return vreinterpretq_u8_u16(v);
        else if constexpr (std::is_same_v<T, int32x4_t>) return vreinterpretq_u8_s32(v);
        else if constexpr (std::is_same_v<T, uint32x4_t>) return vreinterpretq_u8_u32(v);
        else return v;
    }
    static TQKV_SIMD_INLINE int32x4_t madd4(int16x8_t a, int16x8_t b) {
        return vpaddq_s32(vmull_s16(vget_low_s16(a), vget_low_s16(b)), vmull_high_s16(a, b));
    }
    static TQKV_SIMD_INLINE float32x4_t min4(float32x4_t a, float32x4_t b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
    static TQKV_SIMD_INLINE float32x4_t max4(float32x4_t a, float32x4_t b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }

  public:
    static TQKV_SIMD_INLINE V load(const void* p) {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        return {vld1q_u8(b), vld1q_u8(b + 16)};
    }
    static TQKV_SIMD_INLINE void store(void* p, V v) {
        uint8_t* b = static_cast<uint8_t*>(p);
        vst1q_u8(b, v.l);
        vst1q_u8(b + 16, v.h);
    }
    static TQKV_SIMD_INLINE V table(const uint8_t* p) {
        const uint8x16_t t = vld1q_u8(p);
        return {t, t};
    }
    static TQKV_SIMD_INLINE V broadcast16(const uint8_t* p) { return table(p); }
    static TQKV_SIMD_INLINE V zero() { return {vdupq_n_u8(0), vdupq_n_u8(0)}; }
    static TQKV_SIMD_INLINE V set8(int x) { return {vdupq_n_u8(uint8_t(x)), vdupq_n_u8(uint8_t(x))}; }
    static TQKV_SIMD_INLINE V set16(int x) {
        const uint8x16_t v = b8(vdupq_n_u16(uint16_t(x)));
        return {v, v};
    }
    static TQKV_SIMD_INLINE V set32(int x) {
        const uint8x16_t v = b8(vdupq_n_s32(x));
        return {v, v};
    }
    static TQKV_SIMD_INLINE V and_(V a, V b) { return {vandq_u8(a.l, b.l), vandq_u8(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V or_(V a, V b) { return {vorrq_u8(a.l, b.l), vorrq_u8(a.h, b.h)}; }
    // (The immediate forms take shift counts from 1.)
    template <int N> static TQKV_SIMD_INLINE V srl16(V a) {
        if constexpr (N == 0) return a;
        else return {b8(vshrq_n_u16(u16(a.l), N)), b8(vshrq_n_u16(u16(a.h), N))};
    }
    template <int N> static TQKV_SIMD_INLINE V sll16(V a) {
        if constexpr (N == 0) return a;
        else return {b8(vshlq_n_u16(u16(a.l), N)), b8(vshlq_n_u16(u16(a.h), N))};
    }
    template <int N> static TQKV_SIMD_INLINE V sra16(V a) {
        if constexpr (N == 0) return a;
        else return {b8(vshrq_n_s16(s16(a.l), N)), b8(vshrq_n_s16(s16(a.h), N))};
    }
    template <int N> static TQKV_SIMD_INLINE V sll32(V a) {
        if constexpr (N == 0) return a;
        else return {b8(vshlq_n_u32(u32(a.l), N)), b8(vshlq_n_u32(u32(a.h), N))};
    }
    template <int N> static TQKV_SIMD_INLINE V srl32(V a) {
        if constexpr (N == 0) return a;
        else return {b8(vshrq_n_u32(u32(a.l), N)), b8(vshrq_n_u32(u32(a.h), N))};
    }
    static TQKV_SIMD_INLINE V add8(V a, V b) { return {vaddq_u8(a.l, b.l), vaddq_u8(a.h, b.h)}; }
    static TQKV_SIMD_INLINE V add16(V a, V b) {
        return {b8(vaddq_u16(u16(a.l), u16(b.l))), b8(vaddq_u16(u16(a.h), u16(b.h)))};
    }
    static TQKV_SIMD_INLINE V sub16(V a, V b) {
        return {b8(vsubq_u16(u16(a.l), u16(b.l))), b8(vsubq_u16(u16(a.h), u16(b.h)))};
    }
    static TQKV_SIMD_INLINE V add32(V a, V b) {
        return {b8(vaddq_u32(u32(a.l), u32(b.l))), b8(vaddq_u32(u32(a.h), u32(b.h)))};
    }
    static TQKV_SIMD_INLINE V packus16(V a, V b) {
        return {vcombine_u8(vqmovun_s16(s16(a.l)), vqmovun_s16(s16(b.l))), vcombine_u8(vqmovun_s16(s16(a.h)), vqmovun_s16(s16(b.h)))};
    }
    static TQKV_SIMD_INLINE V packs32(V a, V b) {
        return {b8(vcombine_s16(vqmovn_s32(s32(a.l)), vqmovn_s32(s32(b.l)))),
                b8(vcombine_s16(vqmovn_s32(s32(a.h)), vqmovn_s32(s32(b.h))))};
    }
    static TQKV_SIMD_INLINE V lookup(V t, V idx) { return {vqtbl1q_u8(t.l, idx.l), vqtbl1q_u8(t.h, idx.h)}; }
    static TQKV_SIMD_INLINE V unpacklo16(V a, V b) {
        return {b8(vzip1q_u16(u16(a.l), u16(b.l))), b8(vzip1q_u16(u16(a.h), u16(b.h)))};
    }
    static TQKV_SIMD_INLINE V unpackhi16(V a, V b) {
        return {b8(vzip2q_u16(u16(a.l), u16(b.l))), b8(vzip2q_u16(u16(a.h), u16(b.h)))};
    }
    static TQKV_SIMD_INLINE V madd16(V a, V b) { return {b8(madd4(s16(a.l), s16(b.l))), b8(madd4(s16(a.h), s16(b.h)))}; }
    static TQKV_SIMD_INLINE void store_u8x16(uint8_t* p, V lo, V hi) {
        // int32 -> uint16 -> uint8 with unsigned saturation (inputs in [0, 32767]: as the other backends).
        const uint16x8_t a = vcombine_u16(vqmovun_s32(s32(lo.l)), vqmovun_s32(s32(lo.h)));
        const uint16x8_t b = vcombine_u16(vqmovun_s32(s32(hi.l)), vqmovun_s32(s32(hi.h)));
        vst1q_u8(p, vcombine_u8(vqmovn_u16(a), vqmovn_u16(b)));
    }

    static TQKV_SIMD_INLINE F to_float(V a) { return {vcvtq_f32_s32(s32(a.l)), vcvtq_f32_s32(s32(a.h))}; }
    static TQKV_SIMD_INLINE V round_to_int(F a) { return {b8(vcvtnq_s32_f32(a.l)), b8(vcvtnq_s32_f32(a.h))}; }
    static TQKV_SIMD_INLINE F fload(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
    static TQKV_SIMD_INLINE void fstore(float* p, F a) {
        vst1q_f32(p, a.l);
        vst1q_f32(p + 4, a.h);
    }
    static TQKV_SIMD_INLINE F fset(float x) { return {vdupq_n_f32(x), vdupq_n_f32(x)}; }
    static TQKV_SIMD_INLINE F fadd(F a, F b) { return {vaddq_f32(a.l, b.l), vaddq_f32(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fsub(F a, F b) { return {vsubq_f32(a.l, b.l), vsubq_f32(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fmul(F a, F b) { return {vmulq_f32(a.l, b.l), vmulq_f32(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fmin(F a, F b) { return {min4(a.l, b.l), min4(a.h, b.h)}; }
    static TQKV_SIMD_INLINE F fmax(F a, F b) { return {max4(a.l, b.l), max4(a.h, b.h)}; }
    static TQKV_SIMD_INLINE float hmin(F a) {
        float32x4_t m = min4(a.l, a.h);
        m = min4(m, vextq_f32(m, m, 2));
        m = min4(m, vextq_f32(m, m, 1));
        return vgetq_lane_f32(m, 0);
    }
    static TQKV_SIMD_INLINE float hmax(F a) {
        float32x4_t m = max4(a.l, a.h);
        m = max4(m, vextq_f32(m, m, 2));
        m = max4(m, vextq_f32(m, m, 1));
        return vgetq_lane_f32(m, 0);
    }
    static TQKV_SIMD_INLINE void halves_to_float(const uint16_t* h, float* out, int n) {
        for (int i = 0; i < n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
    }
};

}  // namespace tqkv::detail::simd
