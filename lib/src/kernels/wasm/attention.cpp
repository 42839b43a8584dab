// WebAssembly SIMD128 attention kernels (see kernels.hpp for the contract and cache_layout.hpp
// for the group layout of the codes).
//
// Float table look-ups with byte shuffles, as in the NEON kernels: a 16-float table (64 bytes)
// is split into four byte planes (plane p = byte p of every entry); i8x16.swizzle with the 16
// token indices of a coordinate fetches one byte of 16 table values per plane, and two rounds
// of interleaves (which V8 turns into punpck* on x86) put the floats back together in token
// order. A 64-byte chunk of codes is split into byte planes the same way, so the indices of one
// coordinate for tokens 0-15 (planes 0-1) and 16-31 (planes 2-3) are a shift and a mask away.
//
// None of these kernels decides a code: they sum in their own order (SIMD128 has no FMA; the
// products are rounded, then added); tests compare them with the scalar ones within a
// tolerance. Codes of more than 4 bits use the scalar kernels.
#include <wasm_simd128.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "cache_layout.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"

#define TQKV_ALWAYS_INLINE inline __attribute__((always_inline))
#define TQKV_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace tqkv::detail {
namespace {

TQKV_ALWAYS_INLINE v128_t load(const void* p) { return wasm_v128_load(p); }
TQKV_ALWAYS_INLINE void store(void* p, v128_t v) { wasm_v128_store(p, v); }

struct Planes {
    v128_t p[4];
};

// 64 bytes (16 little-endian words) -> plane k = byte k of every word: a byte transpose inside
// each vector, then a 4x4 transpose of 32-bit lanes.
TQKV_ALWAYS_INLINE Planes planes_of(const void* src) {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    auto bt = [](v128_t v) TQKV_ALWAYS_INLINE_LAMBDA {
        return wasm_i8x16_shuffle(v, v, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    };
    const v128_t t0 = bt(load(s)), t1 = bt(load(s + 16)), t2 = bt(load(s + 32)), t3 = bt(load(s + 48));
    const v128_t a = wasm_i32x4_shuffle(t0, t1, 0, 4, 1, 5), b = wasm_i32x4_shuffle(t0, t1, 2, 6, 3, 7);
    const v128_t c = wasm_i32x4_shuffle(t2, t3, 0, 4, 1, 5), d = wasm_i32x4_shuffle(t2, t3, 2, 6, 3, 7);
    return {{wasm_i64x2_shuffle(a, c, 0, 2), wasm_i64x2_shuffle(a, c, 1, 3), wasm_i64x2_shuffle(b, d, 0, 2),
             wasm_i64x2_shuffle(b, d, 1, 3)}};
}

// Planes of a table whose 16 entries repeat every 4 (codes of 1 or 2 bits): only the first
// f32x4 is read; plane k = byte k of entries 0-3, four times.
TQKV_ALWAYS_INLINE Planes planes_of4(const float* t) {
    const v128_t v = load(t);
    return {{wasm_i8x16_shuffle(v, v, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12),
             wasm_i8x16_shuffle(v, v, 1, 5, 9, 13, 1, 5, 9, 13, 1, 5, 9, 13, 1, 5, 9, 13),
             wasm_i8x16_shuffle(v, v, 2, 6, 10, 14, 2, 6, 10, 14, 2, 6, 10, 14, 2, 6, 10, 14),
             wasm_i8x16_shuffle(v, v, 3, 7, 11, 15, 3, 7, 11, 15, 3, 7, 11, 15, 3, 7, 11, 15)}};
}

// ... repeating every 8 (3-bit codes): the first two f32x4.
TQKV_ALWAYS_INLINE Planes planes_of8(const float* t) {
    const v128_t v = load(t), w = load(t + 4);
    return {{wasm_i8x16_shuffle(v, w, 0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
             wasm_i8x16_shuffle(v, w, 1, 5, 9, 13, 17, 21, 25, 29, 1, 5, 9, 13, 17, 21, 25, 29),
             wasm_i8x16_shuffle(v, w, 2, 6, 10, 14, 18, 22, 26, 30, 2, 6, 10, 14, 18, 22, 26, 30),
             wasm_i8x16_shuffle(v, w, 3, 7, 11, 15, 19, 23, 27, 31, 3, 7, 11, 15, 19, 23, 27, 31)}};
}

template <int BITS>
TQKV_ALWAYS_INLINE Planes table_planes(const float* t) {
    if constexpr (BITS <= 2)
        return planes_of4(t);
    else if constexpr (BITS == 3)
        return planes_of8(t);
    else
        return planes_of(t);
}

// f[k] = table[idx[4k .. 4k+3]] for 16 indices < 16.
TQKV_ALWAYS_INLINE void lookup16(const Planes& t, v128_t idx, v128_t f[4]) {
    const v128_t b0 = wasm_i8x16_swizzle(t.p[0], idx), b1 = wasm_i8x16_swizzle(t.p[1], idx);
    const v128_t b2 = wasm_i8x16_swizzle(t.p[2], idx), b3 = wasm_i8x16_swizzle(t.p[3], idx);
    const v128_t l01 = wasm_i8x16_shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const v128_t h01 = wasm_i8x16_shuffle(b0, b1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const v128_t l23 = wasm_i8x16_shuffle(b2, b3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const v128_t h23 = wasm_i8x16_shuffle(b2, b3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    f[0] = wasm_i16x8_shuffle(l01, l23, 0, 8, 1, 9, 2, 10, 3, 11);
    f[1] = wasm_i16x8_shuffle(l01, l23, 4, 12, 5, 13, 6, 14, 7, 15);
    f[2] = wasm_i16x8_shuffle(h01, h23, 0, 8, 1, 9, 2, 10, 3, 11);
    f[3] = wasm_i16x8_shuffle(h01, h23, 4, 12, 5, 13, 6, 14, 7, 15);
}

// ---------------------------------------------------------------------------------------------
// Decoding a group's codes

// Slot S of a W-bit part for tokens 0-15 (HI = 0) or 16-31 (HI = 1), as indices < 16 whose low
// W bits are the field (bits above it up to bit 3 may be garbage: the tables repeat every 2^W).
template <int W, int S, int HI>
TQKV_ALWAYS_INLINE v128_t field(const Planes& c) {
    constexpr int plane = 2 * HI + (W * S) / 8, shift = (W * S) % 8;
    v128_t v = c.p[plane];
    if constexpr (shift != 0) v = wasm_u8x16_shr(v, shift);
    if constexpr (shift < 4) v = wasm_v128_and(v, wasm_i8x16_splat(0x0f));
    return v;
}

// The 3-bit index from the 2-bit part (slot A of its chunk) and the 1-bit part (slot B).
template <int A, int B, int HI>
TQKV_ALWAYS_INLINE v128_t field3(const Planes& two, const Planes& one) {
    constexpr int pa = 2 * HI + (2 * A) / 8, sa = (2 * A) % 8;
    constexpr int pb = 2 * HI + B / 8, sb = B % 8;
    v128_t a = two.p[pa], b = one.p[pb];
    if constexpr (sa != 0) a = wasm_u8x16_shr(a, sa);
    a = wasm_v128_and(a, wasm_i8x16_splat(3));
    if constexpr (sb > 2)
        b = wasm_u8x16_shr(b, sb - 2);
    else if constexpr (sb < 2)
        b = wasm_i8x16_shl(b, 2 - sb);
    return wasm_v128_or(a, wasm_v128_and(b, wasm_i8x16_splat(4)));
}

constexpr int block_coords(int bits) { return bits == 4 ? 4 : bits == 2 ? 8 : 16; }

// idx[k][0..31]: the indices of coordinate j0 + k for tokens 0-31 (k < n <= block_coords).
template <int BITS, int... S>
TQKV_ALWAYS_INLINE void decode_block(const uint8_t* codes, int dim, int j0, int n, uint8_t (*idx)[32],
                                     std::integer_sequence<int, S...>) {
    if constexpr (BITS == 3) {
        const Planes one = planes_of(codes + part_bytes(dim, 2) + size_t(j0 / 16) * 64);
        const uint8_t* pa = codes + size_t(j0 / 8) * 64;
        {
            const Planes two = planes_of(pa);
            ((S < 8 && S < n ? (store(idx[S], field3<S % 8, S, 0>(two, one)), store(idx[S] + 16, field3<S % 8, S, 1>(two, one)))
                             : void()),
             ...);
        }
        if (n > 8) {
            const Planes two = planes_of(pa + 64);
            ((S >= 8 && S < n ? (store(idx[S], field3<S % 8, S, 0>(two, one)), store(idx[S] + 16, field3<S % 8, S, 1>(two, one)))
                              : void()),
             ...);
        }
    } else {
        const Planes c = planes_of(codes + size_t(j0 / block_coords(BITS)) * 64);
        ((S < n ? (store(idx[S], field<BITS, S, 0>(c)), store(idx[S] + 16, field<BITS, S, 1>(c))) : void()), ...);
    }
}

// Calls f(j, lo, hi) for j = 0 .. dim-1: lo / hi the indices of coordinate j for tokens 0-15 /
// 16-31. Reads exactly the group's chunks.
template <int BITS, class F>
TQKV_ALWAYS_INLINE void for_each_coordinate(const uint8_t* codes, int dim, F&& f) {
    constexpr int K = block_coords(BITS);
    alignas(16) uint8_t idx[K][32];
    for (int j0 = 0; j0 < dim; j0 += K) {
        const int n = dim - j0 < K ? dim - j0 : K;
        decode_block<BITS>(codes, dim, j0, n, idx, std::make_integer_sequence<int, K>{});
        for (int k = 0; k < n; ++k) f(j0 + k, load(idx[k]), load(idx[k] + 16));
    }
}

// ---------------------------------------------------------------------------------------------
// Scores: one head per pass (8 accumulators of 4 tokens); more heads decode the codes again
// (a few instructions per coordinate against ~40 of look-ups per head).

template <int BITS>
void scores_head(const uint8_t* codes, int dim, const float* lut, float* out) {
    v128_t acc[8];
    for (auto& a : acc) a = wasm_f32x4_splat(0.0f);
    for_each_coordinate<BITS>(codes, dim, [&](int j, v128_t lo, v128_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
        const Planes pl = table_planes<BITS>(lut + size_t(j) * 16);
        v128_t v[4];
        lookup16(pl, lo, v);
        for (int k = 0; k < 4; ++k) acc[k] = wasm_f32x4_add(acc[k], v[k]);
        lookup16(pl, hi, v);
        for (int k = 0; k < 4; ++k) acc[4 + k] = wasm_f32x4_add(acc[4 + k], v[k]);
    });
    for (int k = 0; k < 8; ++k) store(out + 4 * k, acc[k]);
}

template <int BITS>
void scores_bits(const uint8_t* codes, int dim, const float* lut, int heads, float* out) {
    for (int h = 0; h < heads; ++h) scores_head<BITS>(codes, dim, lut + size_t(h) * dim * 16, out + h * kGroupTokens);
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
// Weighted sums of values: the 32 table values of a coordinate are looked up once, then every
// head adds w_lo * lo + w_hi * hi to its 16 partial sums.

template <int BITS>
void accumulate_bits(const uint8_t* codes, int dim, const float* table, const float* w, int heads, float* acc) {
    const Planes pl = table_planes<BITS>(table);
    if (heads == 1) {
        v128_t wl[4], wh[4];
        for (int k = 0; k < 4; ++k) {
            wl[k] = load(w + 4 * k);
            wh[k] = load(w + 16 + 4 * k);
        }
        for_each_coordinate<BITS>(codes, dim, [&](int j, v128_t lo, v128_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
            v128_t vl[4], vh[4];
            lookup16(pl, lo, vl);
            lookup16(pl, hi, vh);
            float* a = acc + size_t(j) * 16;
            for (int k = 0; k < 4; ++k)
                store(a + 4 * k, wasm_f32x4_add(load(a + 4 * k), wasm_f32x4_add(wasm_f32x4_mul(wl[k], vl[k]),
                                                                                 wasm_f32x4_mul(wh[k], vh[k]))));
        });
        return;
    }
    for_each_coordinate<BITS>(codes, dim, [&](int j, v128_t lo, v128_t hi) TQKV_ALWAYS_INLINE_LAMBDA {
        v128_t vl[4], vh[4];
        lookup16(pl, lo, vl);
        lookup16(pl, hi, vh);
        for (int h = 0; h < heads; ++h) {
            const float* wp = w + h * kGroupTokens;
            float* a = acc + (size_t(h) * dim + j) * 16;
            for (int k = 0; k < 4; ++k)
                store(a + 4 * k, wasm_f32x4_add(load(a + 4 * k), wasm_f32x4_add(wasm_f32x4_mul(load(wp + 4 * k), vl[k]),
                                                                                 wasm_f32x4_mul(load(wp + 16 + 4 * k), vh[k]))));
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
// Fused forms (one segment, fp16 norms): the norms are converted and applied here, so the driver
// makes one call per group instead of a call and three passes over the scores.

void group_scores_normed(const uint8_t* codes, int dim, int bits, const float* lut, int heads, const uint16_t* norms,
                         float scale, float* out, int out_stride) {
    alignas(16) float n[kGroupTokens], raw[kGroupTokens];
    wasm128_kernels().from_half(norms, kGroupTokens, n);
    const v128_t vs = wasm_f32x4_splat(scale);
    const int L = bits <= 4 ? 16 : 1 << bits;
    for (int h = 0; h < heads; ++h) {
        group_scores(codes, dim, bits, lut + size_t(h) * dim * L, 1, raw);
        float* o = out + size_t(h) * out_stride;
        for (int t = 0; t < kGroupTokens; t += 4)  // (norm * raw) * scale, as the driver computes it
            store(o + t, wasm_f32x4_mul(wasm_f32x4_mul(load(n + t), load(raw + t)), vs));
    }
}

void group_accumulate_normed(const uint8_t* codes, int dim, int bits, const float* table, const float* p, int p_stride,
                             const uint16_t* norms, int heads, float* acc) {
    constexpr int kBatch = 8;  // heads per accumulate call (the weights live on the stack)
    alignas(16) float n[kGroupTokens], w[kBatch * kGroupTokens];
    wasm128_kernels().from_half(norms, kGroupTokens, n);
    for (int h0 = 0; h0 < heads; h0 += kBatch) {
        const int nh = heads - h0 < kBatch ? heads - h0 : kBatch;
        for (int h = 0; h < nh; ++h) {
            const float* ph = p + size_t(h0 + h) * p_stride;
            for (int t = 0; t < kGroupTokens; t += 4)
                store(w + h * kGroupTokens + t, wasm_f32x4_mul(load(ph + t), load(n + t)));
        }
        group_accumulate(codes, dim, bits, table, w, nh, acc + size_t(h0) * dim * 16);
    }
}

// ---------------------------------------------------------------------------------------------
// exp for x <= 0: x = n ln2 + r, |r| <= ln2/2, ln2 = C1 + C2 (C1 has 9 significant bits, so
// n * C1 and x - n * C1 are exact); exp(r) = 1 + r + r^2 P(r) (degree-5 Chebyshev fit of
// (e^r - 1 - r) / r^2); 2^n applied as 2^(n - n/2) * 2^(n/2) so both factors are normal. x is
// clamped to -105 first (exp(-105) rounds to 0), which maps -inf to 0; NaN stays NaN.
TQKV_ALWAYS_INLINE v128_t exp4(v128_t x) {
    x = wasm_f32x4_max(x, wasm_f32x4_splat(-105.0f));
    const v128_t nf = wasm_f32x4_nearest(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)));
    const v128_t n = wasm_i32x4_trunc_sat_f32x4(nf);
    v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(nf, wasm_f32x4_splat(0.693359375f)));
    r = wasm_f32x4_sub(r, wasm_f32x4_mul(nf, wasm_f32x4_splat(-2.12194440e-4f)));
    v128_t p = wasm_f32x4_splat(1.989098091e-04f);
    p = wasm_f32x4_add(wasm_f32x4_splat(1.393364160e-03f), wasm_f32x4_mul(p, r));
    p = wasm_f32x4_add(wasm_f32x4_splat(8.333310485e-03f), wasm_f32x4_mul(p, r));
    p = wasm_f32x4_add(wasm_f32x4_splat(4.166646674e-02f), wasm_f32x4_mul(p, r));
    p = wasm_f32x4_add(wasm_f32x4_splat(1.666666716e-01f), wasm_f32x4_mul(p, r));
    p = wasm_f32x4_add(wasm_f32x4_splat(0.5f), wasm_f32x4_mul(p, r));
    p = wasm_f32x4_add(wasm_f32x4_add(r, wasm_f32x4_mul(p, wasm_f32x4_mul(r, r))), wasm_f32x4_splat(1.0f));
    const v128_t n1 = wasm_i32x4_shr(n, 1), n2 = wasm_i32x4_sub(n, n1);  // both in [-76, 64]
    const v128_t bias = wasm_i32x4_splat(127);
    const v128_t s1 = wasm_i32x4_shl(wasm_i32x4_add(n1, bias), 23);
    const v128_t s2 = wasm_i32x4_shl(wasm_i32x4_add(n2, bias), 23);
    return wasm_f32x4_mul(wasm_f32x4_mul(p, s1), s2);
}

void exp_nonpositive(float* x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        store(x + i, exp4(load(x + i)));
        store(x + i + 4, exp4(load(x + i + 4)));
    }
    for (; i + 4 <= n; i += 4) store(x + i, exp4(load(x + i)));
    if (i < n) {
        alignas(16) float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        std::memcpy(t, x + i, sizeof(float) * size_t(n - i));
        store(t, exp4(load(t)));
        std::memcpy(x + i, t, sizeof(float) * size_t(n - i));
    }
}

// ---------------------------------------------------------------------------------------------
// Dense fp32 / fp16

TQKV_ALWAYS_INLINE float hsum(v128_t s) {
    const v128_t t = wasm_f32x4_add(s, wasm_i32x4_shuffle(s, s, 2, 3, 0, 1));
    return wasm_f32x4_extract_lane(t, 0) + wasm_f32x4_extract_lane(t, 1);
}

float dot_f32(const float* a, const float* b, int n) {
    v128_t s0 = wasm_f32x4_splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = wasm_f32x4_add(s0, wasm_f32x4_mul(load(a + i), load(b + i)));
        s1 = wasm_f32x4_add(s1, wasm_f32x4_mul(load(a + i + 4), load(b + i + 4)));
        s2 = wasm_f32x4_add(s2, wasm_f32x4_mul(load(a + i + 8), load(b + i + 8)));
        s3 = wasm_f32x4_add(s3, wasm_f32x4_mul(load(a + i + 12), load(b + i + 12)));
    }
    for (; i + 4 <= n; i += 4) s0 = wasm_f32x4_add(s0, wasm_f32x4_mul(load(a + i), load(b + i)));
    float s = hsum(wasm_f32x4_add(wasm_f32x4_add(s0, s1), wasm_f32x4_add(s2, s3)));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

void axpy_f32(float a, const float* x, float* y, int n) {
    const v128_t va = wasm_f32x4_splat(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k += 4)
            store(y + i + k, wasm_f32x4_add(load(y + i + k), wasm_f32x4_mul(va, load(x + i + k))));
    for (; i + 4 <= n; i += 4) store(y + i, wasm_f32x4_add(load(y + i), wasm_f32x4_mul(va, load(x + i))));
    for (; i < n; ++i) y[i] += a * x[i];
}

// fp16 rows are converted 64 values at a time with the wasm128 kernel table's conversion.
float dot_f16(const float* a, const uint16_t* b, int n) {
    alignas(16) float buf[64];
    float s = 0.0f;
    for (int i = 0; i < n; i += 64) {
        const int m = n - i < 64 ? n - i : 64;
        wasm128_kernels().from_half(b + i, size_t(m), buf);
        s += dot_f32(a + i, buf, m);
    }
    return s;
}

void axpy_f16(float a, const uint16_t* x, float* y, int n) {
    alignas(16) float buf[64];
    for (int i = 0; i < n; i += 64) {
        const int m = n - i < 64 ? n - i : 64;
        wasm128_kernels().from_half(x + i, size_t(m), buf);
        axpy_f32(a, buf, y + i, m);
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions of the online softmax

float max_f32(const float* x, int n) {
    int i = 0;
    float m;
    if (n >= 4) {
        v128_t m0 = load(x), m1 = m0, m2 = m0, m3 = m0;
        for (i = 4; i + 16 <= n; i += 16) {
            m0 = wasm_f32x4_max(m0, load(x + i));
            m1 = wasm_f32x4_max(m1, load(x + i + 4));
            m2 = wasm_f32x4_max(m2, load(x + i + 8));
            m3 = wasm_f32x4_max(m3, load(x + i + 12));
        }
        for (; i + 4 <= n; i += 4) m0 = wasm_f32x4_max(m0, load(x + i));
        const v128_t v = wasm_f32x4_max(wasm_f32x4_max(m0, m1), wasm_f32x4_max(m2, m3));
        const v128_t t = wasm_f32x4_max(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
        const float a = wasm_f32x4_extract_lane(t, 0), b = wasm_f32x4_extract_lane(t, 1);
        m = b > a ? b : a;
    } else {
        m = x[0];
        i = 1;
    }
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

float sum_f32(const float* x, int n) {
    v128_t s0 = wasm_f32x4_splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = wasm_f32x4_add(s0, load(x + i));
        s1 = wasm_f32x4_add(s1, load(x + i + 4));
        s2 = wasm_f32x4_add(s2, load(x + i + 8));
        s3 = wasm_f32x4_add(s3, load(x + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = wasm_f32x4_add(s0, load(x + i));
    float s = hsum(wasm_f32x4_add(wasm_f32x4_add(s0, s1), wasm_f32x4_add(s2, s3)));
    for (; i < n; ++i) s += x[i];
    return s;
}

}  // namespace

const AttentionKernels& wasm128_attention() {
    static const AttentionKernels k = {group_scores, group_accumulate, exp_nonpositive, dot_f32, axpy_f32,
                                       dot_f16,      axpy_f16,         max_f32,         sum_f32,
                                       group_scores_normed, group_accumulate_normed};
    return k;
}

}  // namespace tqkv::detail
