// ARM64 NEON attention kernels (see kernels.hpp for the contract and cache/layout.hpp for the
// group layout of the codes).
//
// Table look-ups of floats with byte shuffles: vld4q_u8 of a 16-float table (64 bytes) splits it
// into four byte planes (plane k = byte k of every entry), so four TBL look-ups with the 16 token
// indices of one chunk (bytes < 16) fetch the four bytes of 16 table values, and two rounds of
// zips put them back together as 4 x float32x4 in token order.
//
// None of these kernels decides a code: they sum in their own order and use FMA; tests compare
// them with the scalar ones within a tolerance. Codes of more than 4 bits use the scalar kernels
// (their tables have 2^bits > 16 entries, beyond what TBL reaches).
#include <arm_neon.h>

#include <cstring>
#include <utility>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"

#if defined(__ARM_BIG_ENDIAN)
#error "the NEON attention kernels assume little-endian byte order"
#endif

#define TQKV_ALWAYS_INLINE inline __attribute__((always_inline))
#define TQKV_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace tqkv::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Decoding a group's codes

// vld4q_u8 of a 64-byte chunk (16 little-endian 32-bit words, one per token pair) gives four byte
// planes: plane k = byte k of every word. Planes 0-1 hold bits 0-15 of the words (tokens 0-15),
// planes 2-3 bits 16-31 (tokens 16-31); slot s of a w-bit part sits in plane (w s) / 8 (+2) at
// bit (w s) % 8. So each coordinate's 16 + 16 token indices are one shift and mask away.

// Slot S of a W-bit part for tokens 0-15 (HI = 0) or 16-31 (HI = 1), shifted down but not masked.
template <int W, int S, int HI>
TQKV_ALWAYS_INLINE uint8x16_t field_raw(const uint8x16x4_t& c) {
    constexpr int plane = 2 * HI + (W * S) / 8, shift = (W * S) % 8;
    if constexpr (shift == 0)
        return c.val[plane];
    else
        return vshrq_n_u8(c.val[plane], shift);
}

// The same, masked to W bits (no mask needed when the field ends at the top of its byte).
template <int W, int S, int HI>
TQKV_ALWAYS_INLINE uint8x16_t field(const uint8x16x4_t& c) {
    const uint8x16_t v = field_raw<W, S, HI>(c);
    if constexpr ((W * S) % 8 + W == 8)
        return v;
    else
        return vandq_u8(v, vdupq_n_u8((1 << W) - 1));
}

// Coordinates per decoded block: one chunk of the (narrowest) part.
template <int BITS>
constexpr int block_coords() {
    return BITS == 4 ? 4 : BITS == 2 ? 8 : 16;  // 3 bits: one chunk of the 1-bit part
}

// Writes the token indices of coordinates j0 .. j0+n-1 (n <= block_coords, j0 a multiple of it)
// to idx[k][0..31] (tokens 0-31, values < 2^BITS). Reads only chunks that hold one of them.
template <int BITS, int... S>
TQKV_ALWAYS_INLINE void decode_block(const uint8_t* codes, int dim, int j0, int n, uint8_t (*idx)[32],
                                     std::integer_sequence<int, S...>) {
    if constexpr (BITS == 3) {
        // Parts [2, 1]: the 2-bit part of coordinate j in slot j % 8 of chunk j / 8, the 1-bit part
        // in slot j % 16 of chunk j / 16 of the second part. vsliq_n_u8(a, b, 2) = (b << 2) | (a & 3).
        const uint8x16x4_t b = vld4q_u8(codes + part_bytes(dim, 2) + size_t(j0 / 16) * 64);
        const uint8_t* pa = codes + size_t(j0 / 8) * 64;
        auto one = [&](auto s, const uint8x16x4_t& a) TQKV_ALWAYS_INLINE_LAMBDA {
            constexpr int T = decltype(s)::value;  // slot in the 1-bit chunk; T % 8 in the 2-bit one
            constexpr bool clean = T % 8 == 7;     // the 1-bit field is the top bit of its byte
            // (clang's arm_neon.h defines the intrinsics as macros: no template commas inside them)
            const uint8x16_t a_lo = field_raw<2, T % 8, 0>(a), a_hi = field_raw<2, T % 8, 1>(a);
            const uint8x16_t b_lo = field_raw<1, T, 0>(b), b_hi = field_raw<1, T, 1>(b);
            uint8x16_t lo = vsliq_n_u8(a_lo, b_lo, 2);
            uint8x16_t hi = vsliq_n_u8(a_hi, b_hi, 2);
            if constexpr (!clean) {
                lo = vandq_u8(lo, vdupq_n_u8(7));
                hi = vandq_u8(hi, vdupq_n_u8(7));
            }
            vst1q_u8(idx[T], lo);
            vst1q_u8(idx[T] + 16, hi);
        };
        {
            const uint8x16x4_t a = vld4q_u8(pa);
            ((S < 8 && S < n ? one(std::integral_constant<int, S>{}, a) : void()), ...);
        }
        if (n > 8) {
            const uint8x16x4_t a = vld4q_u8(pa + 64);
            ((S >= 8 && S < n ? one(std::integral_constant<int, S>{}, a) : void()), ...);
        }
    } else {
        const uint8x16x4_t c = vld4q_u8(codes + size_t(j0 / block_coords<BITS>()) * 64);
        auto one = [&](auto s) TQKV_ALWAYS_INLINE_LAMBDA {
            constexpr int T = decltype(s)::value;
            const uint8x16_t lo = field<BITS, T, 0>(c), hi = field<BITS, T, 1>(c);
            vst1q_u8(idx[T], lo);
            vst1q_u8(idx[T] + 16, hi);
        };
        ((S < n ? one(std::integral_constant<int, S>{}) : void()), ...);
    }
}

// Calls f(j, lo, hi) for j = 0 .. dim-1, where lo / hi hold the BITS-bit codes of coordinate j for
// tokens 0-15 / 16-31, one per byte. Decodes a chunk's coordinates into a small buffer first, so
// the callers' accumulators and tables keep the registers. Reads exactly the group's chunks
// (group_code_bytes(dim, BITS) bytes), nothing beyond.
template <int BITS, class F>
TQKV_ALWAYS_INLINE void for_each_coordinate(const uint8_t* codes, int dim, F&& f) {
    constexpr int K = block_coords<BITS>();
    alignas(16) uint8_t idx[K][32];
    int j0 = 0;
    for (; j0 + K <= dim; j0 += K) {
        decode_block<BITS>(codes, dim, j0, K, idx, std::make_integer_sequence<int, K>{});
        for (int k = 0; k < K; ++k) f(j0 + k, vld1q_u8(idx[k]), vld1q_u8(idx[k] + 16));
    }
    if (j0 < dim) {
        const int n = dim - j0;
        decode_block<BITS>(codes, dim, j0, n, idx, std::make_integer_sequence<int, K>{});
        for (int k = 0; k < n; ++k) f(j0 + k, vld1q_u8(idx[k]), vld1q_u8(idx[k] + 16));
    }
}

// ---------------------------------------------------------------------------------------------
// Float table look-up

// The byte planes of a 16-float table.
TQKV_ALWAYS_INLINE uint8x16x4_t load_planes(const float* table) {
    return vld4q_u8(reinterpret_cast<const uint8_t*>(table));
}

// v[k] = table[idx[4k .. 4k+3]] for 16 indices < 16.
TQKV_ALWAYS_INLINE void lookup16(const uint8x16x4_t& pl, uint8x16_t idx, float32x4_t v[4]) {
    const uint8x16_t b0 = vqtbl1q_u8(pl.val[0], idx), b1 = vqtbl1q_u8(pl.val[1], idx);
    const uint8x16_t b2 = vqtbl1q_u8(pl.val[2], idx), b3 = vqtbl1q_u8(pl.val[3], idx);
    const uint16x8_t l0 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), l1 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
    const uint16x8_t h0 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), h1 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
    v[0] = vreinterpretq_f32_u16(vzip1q_u16(l0, h0));
    v[1] = vreinterpretq_f32_u16(vzip2q_u16(l0, h0));
    v[2] = vreinterpretq_f32_u16(vzip1q_u16(l1, h1));
    v[3] = vreinterpretq_f32_u16(vzip2q_u16(l1, h1));
}

// ---------------------------------------------------------------------------------------------
// Scores

// H heads (lut and out already offset to the first): 8 accumulators of 4 tokens per head, kept
// in registers across the coordinates. H = 2 nearly fills the 32 registers with the look-up
// temporaries (GCC 12 keeps 12 of the 16 accumulators in registers), so more heads take several
// passes, each decoding the codes again (a few instructions per coordinate, against ~32 per head).
template <int BITS, int H>
void scores_block(const uint8_t* codes, int dim, const float* lut, float* out) {
    float32x4_t acc[H][8];
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 8; ++k) acc[h][k] = vdupq_n_f32(0.0f);
    for_each_coordinate<BITS>(codes, dim, [&](int j, uint8x16_t lo, uint8x16_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
        for (int h = 0; h < H; ++h) {
            const uint8x16x4_t pl = load_planes(lut + (size_t(h) * dim + j) * 16);
            float32x4_t v[4];
            lookup16(pl, lo, v);
            for (int k = 0; k < 4; ++k) acc[h][k] = vaddq_f32(acc[h][k], v[k]);
            lookup16(pl, hi, v);
            for (int k = 0; k < 4; ++k) acc[h][4 + k] = vaddq_f32(acc[h][4 + k], v[k]);
        }
    });
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 8; ++k) vst1q_f32(out + h * kGroupTokens + 4 * k, acc[h][k]);
}

template <int BITS>
void scores_bits(const uint8_t* codes, int dim, const float* lut, int heads, float* out) {
    int h = 0;
    for (; h + 2 <= heads; h += 2) scores_block<BITS, 2>(codes, dim, lut + size_t(h) * dim * 16, out + h * kGroupTokens);
    if (h < heads) scores_block<BITS, 1>(codes, dim, lut + size_t(h) * dim * 16, out + h * kGroupTokens);
}

void group_scores(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out) {
    switch (bits) {
        case 1: return scores_bits<1>(codes, dim, lut, heads, out);
        case 2: return scores_bits<2>(codes, dim, lut, heads, out);
        case 3: return scores_bits<3>(codes, dim, lut, heads, out);
        case 4: return scores_bits<4>(codes, dim, lut, heads, out);
        default: return scalar_attention().group_scores(codes, dim, bits, lut, heads, out);
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted sums of values

// Decodes the 32 table values of each coordinate once, then for each head
// acc[(h * dim + j) * 16 + l] += w[h * 32 + l] * lo[l] + w[h * 32 + 16 + l] * hi[l].
template <int BITS>
void accumulate_bits(const uint8_t* codes, int dim, const float* table, const float* w, int heads, float* acc) {
    const uint8x16x4_t pl = load_planes(table);
    if (heads == 1) {
        // The weights stay in registers.
        float32x4_t wl[4], wh[4];
        for (int k = 0; k < 4; ++k) {
            wl[k] = vld1q_f32(w + 4 * k);
            wh[k] = vld1q_f32(w + 16 + 4 * k);
        }
        for_each_coordinate<BITS>(codes, dim, [&](int j, uint8x16_t lo, uint8x16_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
            float32x4_t vl[4], vh[4];
            lookup16(pl, lo, vl);
            lookup16(pl, hi, vh);
            float* a = acc + size_t(j) * 16;
            for (int k = 0; k < 4; ++k)
                vst1q_f32(a + 4 * k, vfmaq_f32(vfmaq_f32(vld1q_f32(a + 4 * k), wl[k], vl[k]), wh[k], vh[k]));
        });
        return;
    }
    for_each_coordinate<BITS>(codes, dim, [&](int j, uint8x16_t lo, uint8x16_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
        float32x4_t vl[4], vh[4];
        lookup16(pl, lo, vl);
        lookup16(pl, hi, vh);
        for (int h = 0; h < heads; ++h) {
            const float* wp = w + h * kGroupTokens;
            float* a = acc + (size_t(h) * dim + j) * 16;
            for (int k = 0; k < 4; ++k) {
                float32x4_t s = vfmaq_f32(vld1q_f32(a + 4 * k), vld1q_f32(wp + 4 * k), vl[k]);
                vst1q_f32(a + 4 * k, vfmaq_f32(s, vld1q_f32(wp + 16 + 4 * k), vh[k]));
            }
        }
    });
}

void group_accumulate(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int heads,
                      float* acc) {
    switch (bits) {
        case 1: return accumulate_bits<1>(codes, dim, table, w, heads, acc);
        case 2: return accumulate_bits<2>(codes, dim, table, w, heads, acc);
        case 3: return accumulate_bits<3>(codes, dim, table, w, heads, acc);
        case 4: return accumulate_bits<4>(codes, dim, table, w, heads, acc);
        default: return scalar_attention().group_accumulate(codes, dim, bits, table, w, heads, acc);
    }
}

// ---------------------------------------------------------------------------------------------
// exp for x <= 0

// x = n ln2 + r, |r| <= ln2/2, with ln2 split as C1 + C2 (C1 has 9 significant bits, so n * C1 and
// x - n * C1 are exact for the n that occur); exp(r) = 1 + r + r^2 P(r), P of degree 5 (Chebyshev
// fit of (e^r - 1 - r) / r^2, error 7e-10 relative to e^r); 2^n applied as 2^(n - n/2) * 2^(n/2)
// so both factors are normal and results in the subnormal range round once, like expf.
// x is clamped to -105 first (exp(-105) rounds to 0), which also maps -inf to 0; NaN stays NaN.
TQKV_ALWAYS_INLINE float32x4_t exp4(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-105.0f));
    const int32x4_t n = vcvtnq_s32_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    const float32x4_t nf = vcvtq_f32_s32(n);
    float32x4_t r = vfmsq_f32(x, nf, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, nf, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.989098091e-04f);
    p = vfmaq_f32(vdupq_n_f32(1.393364160e-03f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.333310485e-03f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.166646674e-02f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.666666716e-01f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    const int32x4_t n1 = vshrq_n_s32(n, 1), n2 = vsubq_s32(n, n1);  // both in [-76, 64]
    const int32x4_t bias = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}

// x_i = exp(x_i - m), returning their sum in the order of the other reductions (four
// accumulators over blocks of 16, then blocks of 4, then one at a time).
float exp_sum(float* x, int n, float m) {
    const float32x4_t vm = vdupq_n_f32(m);
    auto e = [&](int i) TQKV_ALWAYS_INLINE_LAMBDA {
        const float32x4_t v = exp4(vsubq_f32(vld1q_f32(x + i), vm));
        vst1q_f32(x + i, v);
        return v;
    };
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vaddq_f32(s0, e(i));
        s1 = vaddq_f32(s1, e(i + 4));
        s2 = vaddq_f32(s2, e(i + 8));
        s3 = vaddq_f32(s3, e(i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vaddq_f32(s0, e(i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    if (i < n) {
        float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k = i; k < n; ++k) t[k - i] = x[k] - m;
        vst1q_f32(t, exp4(vld1q_f32(t)));
        for (int k = i; k < n; ++k) s += x[k] = t[k - i];
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// Dense fp32 / fp16

float dot_f32(const float* a, const float* b, int n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

void axpy_f32(float a, const float* x, float* y, int n) {
    const float32x4_t va = vdupq_n_f32(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
        vst1q_f32(y + i + 4, vfmaq_f32(vld1q_f32(y + i + 4), va, vld1q_f32(x + i + 4)));
        vst1q_f32(y + i + 8, vfmaq_f32(vld1q_f32(y + i + 8), va, vld1q_f32(x + i + 8)));
        vst1q_f32(y + i + 12, vfmaq_f32(vld1q_f32(y + i + 12), va, vld1q_f32(x + i + 12)));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
    for (; i < n; ++i) y[i] += a * x[i];
}

TQKV_ALWAYS_INLINE float32x4_t load_half4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

float dot_f16(const float* a, const uint16_t* b, int n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), load_half4(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), load_half4(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), load_half4(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), load_half4(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), load_half4(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; ++i) s += a[i] * half_to_float(b[i]);
    return s;
}

void axpy_f16(float a, const uint16_t* x, float* y, int n) {
    const float32x4_t va = vdupq_n_f32(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, load_half4(x + i)));
        vst1q_f32(y + i + 4, vfmaq_f32(vld1q_f32(y + i + 4), va, load_half4(x + i + 4)));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, load_half4(x + i)));
    for (; i < n; ++i) y[i] += a * half_to_float(x[i]);
}

// ---------------------------------------------------------------------------------------------
// Reductions of the online softmax

// max_i x_i, n >= 1. FMAX propagates NaN (the scalar loop skips a NaN after x[0]); the scores the
// cache feeds it are never NaN (-inf marks the tokens past the end).
float max_f32(const float* x, int n) {
    int i = 0;
    float m;
    if (n >= 4) {
        float32x4_t m0 = vld1q_f32(x), m1 = m0, m2 = m0, m3 = m0;
        for (i = 4; i + 16 <= n; i += 16) {
            m0 = vmaxq_f32(m0, vld1q_f32(x + i));
            m1 = vmaxq_f32(m1, vld1q_f32(x + i + 4));
            m2 = vmaxq_f32(m2, vld1q_f32(x + i + 8));
            m3 = vmaxq_f32(m3, vld1q_f32(x + i + 12));
        }
        for (; i + 4 <= n; i += 4) m0 = vmaxq_f32(m0, vld1q_f32(x + i));
        m = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
    } else {
        m = x[0];
        i = 1;
    }
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

}  // namespace

const AttentionKernels& neon_attention() {
    static const AttentionKernels k = {group_scores, group_accumulate, exp_sum, dot_f32, axpy_f32, dot_f16,
                                       axpy_f16,     max_f32,          nullptr, nullptr,
                                       nullptr,      nullptr,          nullptr,
                                       fast_scores_table_bytes, neon_fast_prepare_scores, neon_fast_chunk_scores,
                                       neon_fast_chunk_accumulate};
    return k;
}

}  // namespace tqkv::detail
