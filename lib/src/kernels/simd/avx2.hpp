// AVX2 backend of the SIMD layer (see simd.hpp). Include only from files compiled with -mavx2
// -mf16c (kernels/avx2/).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd/simd.hpp"

namespace tqkv::detail::simd {

struct Avx2 {
    using V = __m256i;
    using F = __m256;
    static constexpr int kHeadsPerPass = 2, kValueHeadsPerPass = 2;

    static TQKV_SIMD_INLINE V load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
    static TQKV_SIMD_INLINE void store(void* p, V v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
    // A look-up table stored twice (32 bytes): one load, where a broadcast would also take a
    // shuffle µop, and the look-ups are bound by the shuffle port.
    static TQKV_SIMD_INLINE V table(const uint8_t* p) { return load(p); }
    static TQKV_SIMD_INLINE V broadcast16(const uint8_t* p) {
        return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static TQKV_SIMD_INLINE V zero() { return _mm256_setzero_si256(); }
    static TQKV_SIMD_INLINE V set8(int x) { return _mm256_set1_epi8(char(x)); }
    static TQKV_SIMD_INLINE V set16(int x) { return _mm256_set1_epi16(short(x)); }
    static TQKV_SIMD_INLINE V and_(V a, V b) { return _mm256_and_si256(a, b); }
    static TQKV_SIMD_INLINE V or_(V a, V b) { return _mm256_or_si256(a, b); }
    template <int N> static TQKV_SIMD_INLINE V srl16(V a) { return _mm256_srli_epi16(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sll16(V a) { return _mm256_slli_epi16(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sra16(V a) { return _mm256_srai_epi16(a, N); }
    template <int N> static TQKV_SIMD_INLINE V sll32(V a) { return _mm256_slli_epi32(a, N); }
    template <int N> static TQKV_SIMD_INLINE V srl32(V a) { return _mm256_srli_epi32(a, N); }
    static TQKV_SIMD_INLINE V set32(int x) { return _mm256_set1_epi32(x); }
    static TQKV_SIMD_INLINE void store_u8x16(uint8_t* p, V lo, V hi) {
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);  // 16 uint16 in order
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                         _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    }
    static TQKV_SIMD_INLINE V add8(V a, V b) { return _mm256_add_epi8(a, b); }
    static TQKV_SIMD_INLINE V add16(V a, V b) { return _mm256_add_epi16(a, b); }
    static TQKV_SIMD_INLINE V sub16(V a, V b) { return _mm256_sub_epi16(a, b); }
    static TQKV_SIMD_INLINE V add32(V a, V b) { return _mm256_add_epi32(a, b); }
    static TQKV_SIMD_INLINE V packus16(V a, V b) { return _mm256_packus_epi16(a, b); }
    static TQKV_SIMD_INLINE V packs32(V a, V b) { return _mm256_packs_epi32(a, b); }
    static TQKV_SIMD_INLINE V lookup(V t, V idx) { return _mm256_shuffle_epi8(t, idx); }
    static TQKV_SIMD_INLINE V unpacklo16(V a, V b) { return _mm256_unpacklo_epi16(a, b); }
    static TQKV_SIMD_INLINE V unpackhi16(V a, V b) { return _mm256_unpackhi_epi16(a, b); }
    static TQKV_SIMD_INLINE V madd16(V a, V b) { return _mm256_madd_epi16(a, b); }

    static TQKV_SIMD_INLINE F to_float(V a) { return _mm256_cvtepi32_ps(a); }
    // vcvtps2dq rounds by MXCSR, which is round-to-nearest-even unless a caller changed it.
    static TQKV_SIMD_INLINE V round_to_int(F a) { return _mm256_cvtps_epi32(a); }
    static TQKV_SIMD_INLINE F fload(const float* p) { return _mm256_loadu_ps(p); }
    static TQKV_SIMD_INLINE void fstore(float* p, F a) { _mm256_storeu_ps(p, a); }
    static TQKV_SIMD_INLINE F fset(float x) { return _mm256_set1_ps(x); }
    static TQKV_SIMD_INLINE F fadd(F a, F b) { return _mm256_add_ps(a, b); }
    static TQKV_SIMD_INLINE F fmul(F a, F b) { return _mm256_mul_ps(a, b); }
    static TQKV_SIMD_INLINE F fsub(F a, F b) { return _mm256_sub_ps(a, b); }
    static TQKV_SIMD_INLINE F fmin(F a, F b) { return _mm256_min_ps(a, b); }
    static TQKV_SIMD_INLINE float hmin(F a) {
        __m128 q = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        q = _mm_min_ps(q, _mm_movehl_ps(q, q));
        q = _mm_min_ss(q, _mm_movehdup_ps(q));
        return _mm_cvtss_f32(q);
    }
    static TQKV_SIMD_INLINE F fmax(F a, F b) { return _mm256_max_ps(a, b); }
    static TQKV_SIMD_INLINE float hmax(F a) {
        __m128 q = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        q = _mm_max_ps(q, _mm_movehl_ps(q, q));
        q = _mm_max_ss(q, _mm_movehdup_ps(q));
        return _mm_cvtss_f32(q);
    }
    static TQKV_SIMD_INLINE void halves_to_float(const uint16_t* h, float* out, int n) {
        for (int i = 0; i < n; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    }
};

}  // namespace tqkv::detail::simd
