// ARM64 NEON (Advanced SIMD) kernels. NEON is part of the ARMv8-A baseline, so this file needs no
// extra compile flags.
//
// Everything that decides a code reproduces kernels/scalar bit for bit (see kernels.hpp):
// multiplies and adds are separate instructions (never vfmaq / vmlaq), sum_squares keeps the
// canonical 16-lane order, matvec accumulates column by column, and quantize counts exact
// compares. Only dot_codes sums in its own order (with FMA); its results are compared with a
// tolerance.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/packing.hpp"

namespace tqkv::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Reductions and element-wise operations

// The reference loop. Only differs from a SIMD max when x holds a signalling NaN (FMAXNM turns it
// into a quiet NaN that the next number then replaces), so it is used only when a NaN is present.
#if defined(__clang__)
float max_abs_sequential(const float* x, int n) {
    float m = 0.0f;
#pragma clang loop vectorize(disable) interleave(disable)
    for (int i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
    return m;
}
#else
__attribute__((optimize("no-tree-vectorize"))) float max_abs_sequential(const float* x, int n) {
    float m = 0.0f;
    for (int i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
    return m;
}
#endif

float max_abs(const float* x, int n) {
    // FMAX (NaN-propagating) equals the reference's FMAXNM on numbers; a NaN anywhere shows up in
    // the result, and then the sequential loop reproduces the reference's NaN handling.
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
        m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
        m2 = vmaxq_f32(m2, vabsq_f32(vld1q_f32(x + i + 8)));
        m3 = vmaxq_f32(m3, vabsq_f32(vld1q_f32(x + i + 12)));
    }
    // max is exact and order-independent on numbers, so any fold gives the reference result.
    float m = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
    for (; i < n; ++i) {
        const float a = std::fabs(x[i]);
        m = a > m ? a : (a == a ? m : a);  // NaN-propagating, like FMAX
    }
    if (m != m) return max_abs_sequential(x, n);
    return m;
}

float sum_squares(const float* x, int n) {
    // acc0..acc3 are the canonical lanes 0-3, 4-7, 8-11, 12-15; separate multiply and add.
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < n; i += kLanes) {
        const float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
        const float32x4_t x2 = vld1q_f32(x + i + 8), x3 = vld1q_f32(x + i + 12);
        a0 = vaddq_f32(a0, vmulq_f32(x0, x0));
        a1 = vaddq_f32(a1, vmulq_f32(x1, x1));
        a2 = vaddq_f32(a2, vmulq_f32(x2, x2));
        a3 = vaddq_f32(a3, vmulq_f32(x3, x3));
    }
    // l += l+8: lanes 0-3 = a0 + a2, lanes 4-7 = a1 + a3; l += l+4; l += l+2; l += l+1.
    const float32x4_t s = vaddq_f32(vaddq_f32(a0, a2), vaddq_f32(a1, a3));
    const float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}

void scale(float* x, int n, float s) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), s));
        vst1q_f32(x + i + 4, vmulq_n_f32(vld1q_f32(x + i + 4), s));
        vst1q_f32(x + i + 8, vmulq_n_f32(vld1q_f32(x + i + 8), s));
        vst1q_f32(x + i + 12, vmulq_n_f32(vld1q_f32(x + i + 12), s));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), s));
    for (; i < n; ++i) x[i] *= s;
}

void flip_signs(float* x, const uint32_t* mask, int n) {
    static const uint32_t kBit[16] = {1u << 0, 1u << 1, 1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,
                                      1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};
    const uint32x4_t b0 = vld1q_u32(kBit), b1 = vld1q_u32(kBit + 4), b2 = vld1q_u32(kBit + 8),
                     b3 = vld1q_u32(kBit + 12);
    const uint32x4_t sign = vdupq_n_u32(0x80000000u);
    int i = 0;
    for (; i + 16 <= n; i += 16) {  // i % 32 is 0 or 16: the 16 mask bits of this chunk
        const uint32x4_t m = vdupq_n_u32(mask[i / 32] >> (i % 32));
        auto flip = [&](float* p, uint32x4_t bit) {
            const uint32x4_t v = vreinterpretq_u32_f32(vld1q_f32(p));
            vst1q_f32(p, vreinterpretq_f32_u32(veorq_u32(v, vandq_u32(vtstq_u32(m, bit), sign))));
        };
        flip(x + i, b0);
        flip(x + i + 4, b1);
        flip(x + i + 8, b2);
        flip(x + i + 12, b3);
    }
    for (; i < n; ++i)
        if ((mask[i / 32] >> (i % 32)) & 1) x[i] = -x[i];  // a sign flip, like the XOR above
}

// ---------------------------------------------------------------------------------------------
// Walsh–Hadamard transform. Butterflies are exact element-wise operations, so any order that
// respects the data dependencies gives the scalar bits.

inline void butterfly(float32x4_t& a, float32x4_t& b) {
    const float32x4_t s = vaddq_f32(a, b), d = vsubq_f32(a, b);
    a = s;
    b = d;
}

inline float32x4_t zip1_64(float32x4_t a, float32x4_t b) {
    return vreinterpretq_f32_f64(vzip1q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)));
}
inline float32x4_t zip2_64(float32x4_t a, float32x4_t b) {
    return vreinterpretq_f32_f64(vzip2q_f64(vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b)));
}

// 4x4 transpose: afterwards q_k lane j = (old) q_j lane k.
inline void transpose4(float32x4_t& q0, float32x4_t& q1, float32x4_t& q2, float32x4_t& q3) {
    const float32x4_t t0 = vtrn1q_f32(q0, q1), t1 = vtrn2q_f32(q0, q1);
    const float32x4_t t2 = vtrn1q_f32(q2, q3), t3 = vtrn2q_f32(q2, q3);
    q0 = zip1_64(t0, t2);
    q1 = zip1_64(t1, t3);
    q2 = zip2_64(t0, t2);
    q3 = zip2_64(t1, t3);
}

// The stages h = 1 .. min(Block, 16) / 2 on 16 consecutive floats (which lie in one block or
// hold whole blocks).
template <int Block>
inline void fwht16(float* x) {
    float32x4_t q0 = vld1q_f32(x), q1 = vld1q_f32(x + 4), q2 = vld1q_f32(x + 8), q3 = vld1q_f32(x + 12);
    transpose4(q0, q1, q2, q3);  // q_k lane j = x[4j + k]
    butterfly(q0, q1);           // h = 1
    butterfly(q2, q3);
    if constexpr (Block >= 4) {  // h = 2
        butterfly(q0, q2);
        butterfly(q1, q3);
    }
    transpose4(q0, q1, q2, q3);  // q_k = x[4k .. 4k+3]
    if constexpr (Block >= 8) {  // h = 4
        butterfly(q0, q1);
        butterfly(q2, q3);
    }
    if constexpr (Block >= 16) {  // h = 8
        butterfly(q0, q2);
        butterfly(q1, q3);
    }
    vst1q_f32(x, q0);
    vst1q_f32(x + 4, q1);
    vst1q_f32(x + 8, q2);
    vst1q_f32(x + 12, q3);
}

void fwht_scalar(float* x, int n, int block) {
    for (int base = 0; base < n; base += block)
        for (int h = 1; h < block; h *= 2)
            for (int i = base; i < base + block; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    const float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
}

template <int Block>
int fwht_low(float* x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) fwht16<Block>(x + i);
    return i;
}

void fwht(float* x, int n, int block) {
    if (block < 2) return;
    // Stages h < 16, 16 floats at a time.
    int done;
    switch (block) {
        case 2: done = fwht_low<2>(x, n); break;
        case 4: done = fwht_low<4>(x, n); break;
        case 8: done = fwht_low<8>(x, n); break;
        default: done = fwht_low<16>(x, n); break;
    }
    // Leftover blocks (block < 16 with n % 16 != 0, e.g. n < 16): whole blocks, scalar loops.
    if (done < n) fwht_scalar(x + done, n - done, block);
    if (block <= 16) return;
    // Stages h >= 16 (block >= 32, so n is a multiple of 32): two stages per pass where possible.
    for (int base = 0; base < n; base += block) {
        float* xb = x + base;
        int h = 16;
        while (h < block) {
            if (4 * h <= block) {  // stages h and 2h together
                for (int i = 0; i < block; i += 4 * h)
                    for (int j = i; j < i + h; j += 4) {
                        float32x4_t a = vld1q_f32(xb + j), b = vld1q_f32(xb + j + h);
                        float32x4_t c = vld1q_f32(xb + j + 2 * h), d = vld1q_f32(xb + j + 3 * h);
                        butterfly(a, b);
                        butterfly(c, d);
                        butterfly(a, c);
                        butterfly(b, d);
                        vst1q_f32(xb + j, a);
                        vst1q_f32(xb + j + h, b);
                        vst1q_f32(xb + j + 2 * h, c);
                        vst1q_f32(xb + j + 3 * h, d);
                    }
                h *= 4;
            } else {
                for (int i = 0; i < block; i += 2 * h)
                    for (int j = i; j < i + h; j += 4) {
                        float32x4_t a = vld1q_f32(xb + j), b = vld1q_f32(xb + j + h);
                        butterfly(a, b);
                        vst1q_f32(xb + j, a);
                        vst1q_f32(xb + j + h, b);
                    }
                h *= 2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// matvec: each output accumulates x[j] * column j in order j = 0, 1, 2, ... (mul, then add).

void matvec(const float* m, int rows, int cols, const float* x, float* y) {
    int i = 0;
    for (; i + 32 <= rows; i += 32) {
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < cols; ++j) {
            const float xj = x[j];
            const float* c = m + size_t(j) * rows + i;
            a0 = vaddq_f32(a0, vmulq_n_f32(vld1q_f32(c), xj));
            a1 = vaddq_f32(a1, vmulq_n_f32(vld1q_f32(c + 4), xj));
            a2 = vaddq_f32(a2, vmulq_n_f32(vld1q_f32(c + 8), xj));
            a3 = vaddq_f32(a3, vmulq_n_f32(vld1q_f32(c + 12), xj));
            a4 = vaddq_f32(a4, vmulq_n_f32(vld1q_f32(c + 16), xj));
            a5 = vaddq_f32(a5, vmulq_n_f32(vld1q_f32(c + 20), xj));
            a6 = vaddq_f32(a6, vmulq_n_f32(vld1q_f32(c + 24), xj));
            a7 = vaddq_f32(a7, vmulq_n_f32(vld1q_f32(c + 28), xj));
        }
        vst1q_f32(y + i, a0);
        vst1q_f32(y + i + 4, a1);
        vst1q_f32(y + i + 8, a2);
        vst1q_f32(y + i + 12, a3);
        vst1q_f32(y + i + 16, a4);
        vst1q_f32(y + i + 20, a5);
        vst1q_f32(y + i + 24, a6);
        vst1q_f32(y + i + 28, a7);
    }
    for (; i + 4 <= rows; i += 4) {
        float32x4_t a = vdupq_n_f32(0.0f);
        for (int j = 0; j < cols; ++j) a = vaddq_f32(a, vmulq_n_f32(vld1q_f32(m + size_t(j) * rows + i), x[j]));
        vst1q_f32(y + i, a);
    }
    for (; i < rows; ++i) {
        float a = 0.0f;
        for (int j = 0; j < cols; ++j) a += x[j] * m[size_t(j) * rows + i];
        y[i] = a;
    }
}

// ---------------------------------------------------------------------------------------------
// quantize: code = number of k < 2^bits - 1 with x >= bounds[k] (the last bound, +inf, is never
// counted, exactly as the scalar binary search never looks at it).

inline uint8_t quantize_one(float x, const float* bounds, int bits) {
    int c = 0;
    for (int step = 1 << (bits - 1); step >= 1; step >>= 1)
        if (x >= bounds[c + step - 1]) c += step;
    return uint8_t(c);
}

template <int Bits>
int quantize_count(const float* x, int n, const float* bounds, uint8_t* codes) {
    constexpr int kBounds = (1 << Bits) - 1;
    float32x4_t b[kBounds];
    for (int k = 0; k < kBounds; ++k) b[k] = vdupq_n_f32(bounds[k]);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
        const float32x4_t x2 = vld1q_f32(x + i + 8), x3 = vld1q_f32(x + i + 12);
        uint32x4_t c0 = vdupq_n_u32(0), c1 = c0, c2 = c0, c3 = c0;
        for (int k = 0; k < kBounds; ++k) {  // a true compare is all ones = -1
            c0 = vsubq_u32(c0, vcgeq_f32(x0, b[k]));
            c1 = vsubq_u32(c1, vcgeq_f32(x1, b[k]));
            c2 = vsubq_u32(c2, vcgeq_f32(x2, b[k]));
            c3 = vsubq_u32(c3, vcgeq_f32(x3, b[k]));
        }
        const uint16x8_t h0 = vcombine_u16(vmovn_u32(c0), vmovn_u32(c1));
        const uint16x8_t h1 = vcombine_u16(vmovn_u32(c2), vmovn_u32(c3));
        vst1q_u8(codes + i, vcombine_u8(vmovn_u16(h0), vmovn_u16(h1)));
    }
    return i;
}

void quantize(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    int i = 0;
    switch (bits) {
        case 1: i = quantize_count<1>(x, n, bounds, codes); break;
        case 2: i = quantize_count<2>(x, n, bounds, codes); break;
        case 3: i = quantize_count<3>(x, n, bounds, codes); break;
        case 4: i = quantize_count<4>(x, n, bounds, codes); break;
        default: break;  // 5..8 bits: the branchless binary search, per element
    }
    for (; i < n; ++i) codes[i] = quantize_one(x[i], bounds, bits);
}

// ---------------------------------------------------------------------------------------------
// Table look-up for tables of up to 16 floats: the table is split into four byte planes
// (plane p = byte p of every entry) and each plane is indexed with one TBL.

struct Planes {
    uint8x16_t p0, p1, p2, p3;
};

// entries <= 16 floats are read from table; the rest of the 16 slots are zero.
inline Planes make_planes(const float* table, int entries) {
    alignas(16) float t[16] = {};
    std::memcpy(t, table, sizeof(float) * size_t(entries));
    const uint8x16x4_t v = vld4q_u8(reinterpret_cast<const uint8_t*>(t));  // val[p][k] = byte p of t[k]
    return {v.val[0], v.val[1], v.val[2], v.val[3]};
}

// The floats table[c_0..c_15] for 16 codes (< 16), in order, as four vectors.
inline void lookup16(const Planes& t, uint8x16_t c, float32x4_t& f0, float32x4_t& f1, float32x4_t& f2,
                     float32x4_t& f3) {
    const uint8x16_t b0 = vqtbl1q_u8(t.p0, c), b1 = vqtbl1q_u8(t.p1, c);
    const uint8x16_t b2 = vqtbl1q_u8(t.p2, c), b3 = vqtbl1q_u8(t.p3, c);
    const uint16x8_t lo01 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), hi01 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
    const uint16x8_t lo23 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), hi23 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
    f0 = vreinterpretq_f32_u16(vzip1q_u16(lo01, lo23));
    f1 = vreinterpretq_f32_u16(vzip2q_u16(lo01, lo23));
    f2 = vreinterpretq_f32_u16(vzip1q_u16(hi01, hi23));
    f3 = vreinterpretq_f32_u16(vzip2q_u16(hi01, hi23));
}

uint8_t max_code(const uint8_t* codes, int n) {
    uint8x16_t m = vdupq_n_u8(0);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = vmaxq_u8(m, vld1q_u8(codes + i));
    uint8_t r = vmaxvq_u8(m);
    for (; i < n; ++i) r = std::max(r, codes[i]);
    return r;
}

void lookup(const uint8_t* codes, int n, const float* table, float* out) {
    int i = 0;
    const int mc = max_code(codes, n);
    if (mc < 16) {  // the table has at least mc + 1 entries; read no more
        const Planes t = make_planes(table, mc + 1);
        for (; i + 16 <= n; i += 16) {
            float32x4_t f0, f1, f2, f3;
            lookup16(t, vld1q_u8(codes + i), f0, f1, f2, f3);
            vst1q_f32(out + i, f0);
            vst1q_f32(out + i + 4, f1);
            vst1q_f32(out + i + 8, f2);
            vst1q_f32(out + i + 12, f3);
        }
    }
    for (; i < n; ++i) out[i] = table[codes[i]];
}

// ---------------------------------------------------------------------------------------------
// Packing (layout in packing.hpp). Fast paths for 1, 2, 4 and 8 bits; the rest, and the tails,
// go through the portable pack_codes / unpack_codes (tails start on a byte boundary).

void pack(const uint8_t* codes, int n, int bits, uint8_t* out) {
    int i = 0;
    size_t o = 0;
    switch (bits) {
        case 8:
            std::memcpy(out, codes, size_t(n));
            return;
        case 4: {
            const uint8x16_t m4 = vdupq_n_u8(0x0f);
            for (; i + 32 <= n; i += 32, o += 16) {
                const uint8x16x2_t c = vld2q_u8(codes + i);  // even codes, odd codes
                vst1q_u8(out + o, vorrq_u8(vandq_u8(c.val[0], m4), vshlq_n_u8(c.val[1], 4)));
            }
            for (; i + 16 <= n; i += 16, o += 8) {  // u16 lanes c0 | c1 << 8 -> byte c0 | c1 << 4
                uint16x8_t v = vandq_u16(vreinterpretq_u16_u8(vld1q_u8(codes + i)), vdupq_n_u16(0x0f0f));
                v = vorrq_u16(v, vshrq_n_u16(v, 4));
                vst1_u8(out + o, vmovn_u16(v));
            }
            break;
        }
        case 2: {
            const uint8x16_t m2 = vdupq_n_u8(0x03);
            for (; i + 64 <= n; i += 64, o += 16) {
                const uint8x16x4_t c = vld4q_u8(codes + i);  // val[j][k] = code 4k + j
                uint8x16_t r = vandq_u8(c.val[0], m2);
                r = vorrq_u8(r, vshlq_n_u8(vandq_u8(c.val[1], m2), 2));
                r = vorrq_u8(r, vshlq_n_u8(vandq_u8(c.val[2], m2), 4));
                r = vorrq_u8(r, vshlq_n_u8(c.val[3], 6));
                vst1q_u8(out + o, r);
            }
            for (; i + 16 <= n; i += 16, o += 4) {  // u32 lanes of four codes -> one byte each
                uint32x4_t v = vandq_u32(vreinterpretq_u32_u8(vld1q_u8(codes + i)), vdupq_n_u32(0x03030303u));
                v = vorrq_u32(v, vshrq_n_u32(v, 6));
                v = vorrq_u32(v, vshrq_n_u32(v, 12));
                const uint16x4_t h = vmovn_u32(v);
                const uint8x8_t b = vmovn_u16(vcombine_u16(h, h));
                const uint32_t w = vget_lane_u32(vreinterpret_u32_u8(b), 0);
                std::memcpy(out + o, &w, 4);
            }
            break;
        }
        case 1: {
            static const uint8_t kW[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
            const uint8x16_t w = vld1q_u8(kW), one = vdupq_n_u8(1);
            auto bits16 = [&](const uint8_t* c) { return vandq_u8(vtstq_u8(vld1q_u8(c), one), w); };
            for (; i + 128 <= n; i += 128, o += 16) {
                const uint8x16_t p01 = vpaddq_u8(bits16(codes + i), bits16(codes + i + 16));
                const uint8x16_t p23 = vpaddq_u8(bits16(codes + i + 32), bits16(codes + i + 48));
                const uint8x16_t p45 = vpaddq_u8(bits16(codes + i + 64), bits16(codes + i + 80));
                const uint8x16_t p67 = vpaddq_u8(bits16(codes + i + 96), bits16(codes + i + 112));
                vst1q_u8(out + o, vpaddq_u8(vpaddq_u8(p01, p23), vpaddq_u8(p45, p67)));
            }
            for (; i + 16 <= n; i += 16, o += 2) {
                const uint8x16_t v = bits16(codes + i);
                out[o] = vaddv_u8(vget_low_u8(v));
                out[o + 1] = vaddv_u8(vget_high_u8(v));
            }
            break;
        }
        default:
            break;
    }
    if (i < n) pack_codes(codes + i, size_t(n - i), bits, out + o);
}

void unpack(const uint8_t* in, int n, int bits, uint8_t* codes) {
    int i = 0;
    size_t o = 0;  // input bytes consumed
    switch (bits) {
        case 8:
            std::memcpy(codes, in, size_t(n));
            return;
        case 4: {
            const uint8x16_t m4 = vdupq_n_u8(0x0f);
            for (; i + 32 <= n; i += 32, o += 16) {
                const uint8x16_t b = vld1q_u8(in + o);
                vst2q_u8(codes + i, (uint8x16x2_t{{vandq_u8(b, m4), vshrq_n_u8(b, 4)}}));
            }
            for (; i + 16 <= n; i += 16, o += 8) {
                const uint8x8_t b = vld1_u8(in + o);
                vst2_u8(codes + i, (uint8x8x2_t{{vand_u8(b, vdup_n_u8(0x0f)), vshr_n_u8(b, 4)}}));
            }
            break;
        }
        case 2: {
            const uint8x16_t m2 = vdupq_n_u8(0x03);
            for (; i + 64 <= n; i += 64, o += 16) {
                const uint8x16_t b = vld1q_u8(in + o);
                const uint8x16x4_t c = {{vandq_u8(b, m2), vandq_u8(vshrq_n_u8(b, 2), m2),
                                         vandq_u8(vshrq_n_u8(b, 4), m2), vshrq_n_u8(b, 6)}};
                vst4q_u8(codes + i, c);
            }
            static const uint8_t kIdx[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
            static const int8_t kShift[16] = {0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6};
            const uint8x16_t idx = vld1q_u8(kIdx);
            const int8x16_t sh = vld1q_s8(kShift);
            for (; i + 16 <= n; i += 16, o += 4) {
                uint32_t w;
                std::memcpy(&w, in + o, 4);
                const uint8x16_t b = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(w)), idx);
                vst1q_u8(codes + i, vandq_u8(vshlq_u8(b, sh), m2));
            }
            break;
        }
        case 1: {
            static const int8_t kShift[16] = {0, -1, -2, -3, -4, -5, -6, -7, 0, -1, -2, -3, -4, -5, -6, -7};
            static const uint8_t kIdx[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
            const int8x16_t sh = vld1q_s8(kShift);
            const uint8x16_t one = vdupq_n_u8(1), idx0 = vld1q_u8(kIdx), two = vdupq_n_u8(2);
            for (; i + 128 <= n; i += 128, o += 16) {
                const uint8x16_t b = vld1q_u8(in + o);
                uint8x16_t idx = idx0;
                for (int k = 0; k < 8; ++k) {  // bytes 2k, 2k+1 -> codes 16k .. 16k+15
                    vst1q_u8(codes + i + 16 * k, vandq_u8(vshlq_u8(vqtbl1q_u8(b, idx), sh), one));
                    idx = vaddq_u8(idx, two);
                }
            }
            for (; i + 16 <= n; i += 16, o += 2) {
                uint16_t w;
                std::memcpy(&w, in + o, 2);
                const uint8x16_t b = vreinterpretq_u8_u16(vdupq_n_u16(w));
                vst1q_u8(codes + i, vandq_u8(vshlq_u8(vqtbl1q_u8(b, idx0), sh), one));
            }
            break;
        }
        default:
            break;
    }
    if (i < n) unpack_codes(in + o, size_t(n - i), bits, codes + i);
}

// ---------------------------------------------------------------------------------------------
// dot_codes: out[v] = sum_i q[i] * table[code_vi], own summation order, FMA allowed.
//
// Bits 1, 2, 4: 16 packed bytes hold 16 * (8 / bits) codes; code j of each byte (shifted out of
// the 16 bytes at once) gives 16 codes 8/bits apart. The query is permuted once per call to that
// order, so no per-vector interleaving is needed: qp[blk*chunk + j*16 + k] = q[blk*chunk + k*per + j].

template <int Bits>
void dot_fused(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count,
               float* out) {
    constexpr int per = 8 / Bits;     // codes per byte
    constexpr int chunk = 16 * per;   // codes per 16 bytes
    constexpr uint8_t mask = uint8_t((1u << Bits) - 1);
    const int blocks = (n + chunk - 1) / chunk;
    const size_t bytes = packed_bytes(size_t(n), Bits);
    const size_t full = bytes / 16;  // blocks whose 16 bytes all lie inside the vector

    alignas(16) float qbuf[1024];
    std::vector<float> qheap;
    float* qp = qbuf;
    if (size_t(blocks) * chunk > 1024) {
        qheap.resize(size_t(blocks) * chunk);
        qp = qheap.data();
    }
    for (int blk = 0; blk < blocks; ++blk)
        for (int j = 0; j < per; ++j)
            for (int k = 0; k < 16; ++k) {
                const int src = blk * chunk + k * per + j;
                qp[blk * chunk + j * 16 + k] = src < n ? q[src] : 0.0f;
            }

    const Planes t = make_planes(table, 1 << Bits);
    const uint8x16_t m = vdupq_n_u8(mask);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        for (int blk = 0; blk < blocks; ++blk) {
            uint8x16_t b;
            if (size_t(blk) < full) {
                b = vld1q_u8(p + size_t(blk) * 16);
            } else {  // the last, partial 16 bytes: never read past the vector's bytes
                alignas(16) uint8_t tmp[16] = {};
                std::memcpy(tmp, p + size_t(blk) * 16, bytes - size_t(blk) * 16);
                b = vld1q_u8(tmp);
            }
            const float* qb = qp + blk * chunk;
            for (int j = 0; j < per; ++j) {
                const uint8x16_t c = vandq_u8(vshlq_u8(b, vdupq_n_s8(int8_t(-Bits * j))), m);
                float32x4_t f0, f1, f2, f3;
                lookup16(t, c, f0, f1, f2, f3);
                a0 = vfmaq_f32(a0, f0, vld1q_f32(qb + j * 16));
                a1 = vfmaq_f32(a1, f1, vld1q_f32(qb + j * 16 + 4));
                a2 = vfmaq_f32(a2, f2, vld1q_f32(qb + j * 16 + 8));
                a3 = vfmaq_f32(a3, f3, vld1q_f32(qb + j * 16 + 12));
            }
        }
        out[v] = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    }
}

// Other widths: unpack, look up (TBL for 3 bits, scalar for 5..8), then a SIMD dot product.
void dot_generic(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
                 size_t count, float* out) {
    const int padded = pad_lanes(n);
    std::vector<uint8_t> codes(size_t(padded), 0);
    std::vector<float> vals(size_t(padded), 0.0f);
    const bool small = bits <= 4;
    const Planes t = make_planes(table, small ? (1 << bits) : 0);
    for (size_t v = 0; v < count; ++v) {
        unpack(packed + v * stride, n, bits, codes.data());
        int i = 0;
        if (small)
            for (; i + 16 <= n; i += 16) {
                float32x4_t f0, f1, f2, f3;
                lookup16(t, vld1q_u8(codes.data() + i), f0, f1, f2, f3);
                vst1q_f32(vals.data() + i, f0);
                vst1q_f32(vals.data() + i + 4, f1);
                vst1q_f32(vals.data() + i + 8, f2);
                vst1q_f32(vals.data() + i + 12, f3);
            }
        for (; i < n; ++i) vals[size_t(i)] = table[codes[size_t(i)]];  // vals[n, padded) stays 0
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        for (i = 0; i < padded; i += 16) {
            a0 = vfmaq_f32(a0, vld1q_f32(vals.data() + i), vld1q_f32(q + i));
            a1 = vfmaq_f32(a1, vld1q_f32(vals.data() + i + 4), vld1q_f32(q + i + 4));
            a2 = vfmaq_f32(a2, vld1q_f32(vals.data() + i + 8), vld1q_f32(q + i + 8));
            a3 = vfmaq_f32(a3, vld1q_f32(vals.data() + i + 12), vld1q_f32(q + i + 12));
        }
        out[v] = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    }
}

void dot_codes(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
               size_t count, float* out) {
    switch (bits) {
        case 1: dot_fused<1>(q, n, table, packed, stride, count, out); break;
        case 2: dot_fused<2>(q, n, table, packed, stride, count, out); break;
        case 4: dot_fused<4>(q, n, table, packed, stride, count, out); break;
        default: dot_generic(q, n, table, bits, packed, stride, count, out); break;
    }
}

// ---------------------------------------------------------------------------------------------
// fp16. FCVTN / FCVTL round to nearest even under the default FPCR, which is what
// tqkv::float_to_half computes for every non-NaN; NaNs are patched to the reference's bits
// (0x7e00 | sign one way, the payload kept unquieted the other way).

void to_half(const float* x, size_t n, uint16_t* out) {
    size_t i = 0;
    const uint16x8_t sign = vdupq_n_u16(0x8000), qnan = vdupq_n_u16(0x7e00);
    for (; i + 8 <= n; i += 8) {
        const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        const uint16x8_t h = vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(a), b));
        const uint16x8_t ordered = vcombine_u16(vmovn_u32(vceqq_f32(a, a)), vmovn_u32(vceqq_f32(b, b)));
        const uint16x8_t nan = vorrq_u16(vandq_u16(h, sign), qnan);
        vst1q_u16(out + i, vbslq_u16(ordered, h, nan));
    }
    for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

void from_half(const uint16_t* h, size_t n, float* out) {
    size_t i = 0;
    const uint16x8_t abs = vdupq_n_u16(0x7fff), inf = vdupq_n_u16(0x7c00);
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t v = vld1q_u16(h + i);
        const float16x8_t f = vreinterpretq_f16_u16(v);
        vst1q_f32(out + i, vcvt_f32_f16(vget_low_f16(f)));
        vst1q_f32(out + i + 4, vcvt_high_f32_f16(f));
        if (vmaxvq_u16(vcgtq_u16(vandq_u16(v, abs), inf)))  // a NaN: keep its payload as is
            for (size_t k = i; k < i + 8; ++k) out[k] = half_to_float(h[k]);
    }
    for (; i < n; ++i) out[i] = half_to_float(h[i]);
}

}  // namespace

const KernelTable& neon_kernels() {
    static const KernelTable table = {"neon",   max_abs, sum_squares, scale,  flip_signs, fwht,    matvec,
                                      quantize, lookup,  pack,        unpack, dot_codes,  to_half, from_half};
    return table;
}

}  // namespace tqkv::detail
