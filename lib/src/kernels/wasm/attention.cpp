// WebAssembly SIMD128 attention kernels (see kernels.hpp for the contract and cache/layout.hpp
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
//
// 4-bit codes, the common case, have faster paths (see "4-bit keys in fixed point" and "4-bit
// values" below): V8 (x64) lowers each i8x16.swizzle to three instructions and rematerializes
// every v128 constant at each use, so those paths keep to two or three swizzles per 16 look-ups,
// read the code bytes with and / 16-bit shifts / narrowing instead of byte shuffles, and keep
// their constants in locals.
//
// Relaxed SIMD (web/dist/tqkv-relaxed.wasm, see relaxed.hpp): every table look-up uses
// relaxed_swizzle (exact: the indices are < 16), and the value sums, the dense dot products and
// axpy, and exp's polynomial use relaxed_madd (fused where the engine fuses: results differ in
// the last bits, within the tolerance these kernels are tested to).
#include <wasm_simd128.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "kernels/simd/wasm128.hpp"
#include "kernels/wasm/relaxed.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/fp16.hpp"

#define TQKV_ALWAYS_INLINE inline __attribute__((always_inline))
#define TQKV_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace tqkv::detail {
namespace {

using wasm::add_products;
using wasm::madd;
using wasm::swizzle16;

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
    const v128_t b0 = swizzle16(t.p[0], idx), b1 = swizzle16(t.p[1], idx);
    const v128_t b2 = swizzle16(t.p[2], idx), b3 = swizzle16(t.p[3], idx);
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
                store(a + 4 * k, add_products(load(a + 4 * k), wl[k], vl[k], wh[k], vh[k]));
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
                store(a + 4 * k, add_products(load(a + 4 * k), load(wp + 4 * k), vl[k], load(wp + 16 + 4 * k), vh[k]));
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
// Helpers of the 4-bit paths

// A splat the compiler cannot constant-fold: LLVM would emit a v128.const at every use, which V8
// (x64) rebuilds each time (3-4 instructions); this way it is built once and kept in a local.
TQKV_ALWAYS_INLINE v128_t splat_u8(int x) {
    __asm__("" : "+r"(x));
    return wasm_i8x16_splat(x);
}
TQKV_ALWAYS_INLINE v128_t splat_u16(int x) {
    __asm__("" : "+r"(x));
    return wasm_i16x8_splat(x);
}

// Byte interleaves (one punpck{l,h}bw each): bytes 0-7 / 8-15 of a and b as 16-bit lanes a + 256 b.
TQKV_ALWAYS_INLINE v128_t interleave_lo8(v128_t a, v128_t b) {
    return wasm_i8x16_shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
TQKV_ALWAYS_INLINE v128_t interleave_hi8(v128_t a, v128_t b) {
    return wasm_i8x16_shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

// ---------------------------------------------------------------------------------------------
// 4-bit keys in fixed point (prepare_scores / group_scores_prepared)
//
// A float look-up of 16 tokens takes four swizzles and eight interleaves; an int16 one takes two
// swizzles and two interleaves. So each head's table entry lut[j][k] becomes an integer
//   E[j][k] = round(lut[j][k] / delta)          (one delta > 0 per head and query)
// split as E = 64 H + L, H = floor(E / 64) an int16 (two byte planes), L in [0, 64) (one byte
// plane). A token's score is delta * sum_j E[j][code_j], the integer sum exact:
//   - H is summed in int16 over blocks of 8 coordinates, then added to int32 sums. With
//     a_j = max_k |lut[j][k]| and delta = max over blocks B of (sum_{j in B} a_j) / (64 * 32751),
//     |H| <= |E| / 64 + 1 <= a_j / (64 delta) + 1 (|E| <= a_j / delta + 1/2), so a block sums to at
//     most 32751 + 8 < 32767 in magnitude.
//   - L is summed in uint8 over the 4 coordinates of a chunk (<= 4 * 63 = 252), then in uint16
//     (<= 63 * dim <= 64512 for dim <= kMaxDim = 1024).
//   - 64 * sum H + sum L < 2^28, so the int32 totals never overflow.
// Error: E is rounded from the float entry times 1 / delta in double precision (|lut / delta| <
// 2^22 and two roundings of 2^-53, so within 2^-30 of exact), hence |delta E - lut| <= 0.5 delta
// (+ 2^-30 delta) per entry, and a score is off by at most
//   dim * delta / 2 <= dim * 8 a_max / (2 * 64 * 32751) ~ 1.9e-6 dim a_max    (a_max = max_j a_j)
// plus 2^-24 relative for each of the two float roundings of the total (int -> float, times
// delta). Summing the same dim entries in float has the worst-case bound
//   (dim - 1) 2^-24 sum_j |entry_j| <= (dim - 1) 6e-8 dim a_max,
// larger from dim = 33 on (4x larger at dim = 128): in the worst case the fixed-point scores are
// within the accuracy the float kernels are already held to. (Typical errors are larger than the float
// ones, whose roundings mostly cancel: on the cases of the cache test "fused attention equals the
// decode-then-exact reference", relative output errors reach ~6e-6 against ~1e-6 for the float
// kernels, the tolerance being 1e-4.) Cases the bound does not cover fall back to the float path:
// prepare_scores returns false for other code widths, dim > kMaxDim, a non-finite table, or a
// delta that is not a normal float.
//
// Codes are read without byte shuffles: in a chunk (coordinates 4c .. 4c+3) word i holds the
// 4-bit codes of token i in its low 16 bits and of token i + 16 in its high ones, byte 0 / 1 of
// each half being slots 0-1 / 2-3. Masking the 16-bit halves of words 0-7 (and shifting them by
// 8) and narrowing to bytes gives slots 0-1 (2-3) of tokens {0-7, 16-23} in one vector, in the
// token order 0, 16, 1, 17, ..., 7, 23; words 8-15 give tokens {8-15, 24-31}. The sums are
// computed in that order and put back in token order once per group.

constexpr int kFixedBlock = 8;         // coordinates per int16 block of H
constexpr int kFixedHLimit = 32751;    // 32767 - 2 * kFixedBlock
constexpr int kFixedEntryBytes = 48;   // per coordinate: H low bytes, H high bytes, L
constexpr size_t kFixedHeader = 16;    // per head: delta (float), padding

int fixed_coords(int dim) { return (dim + 3) / 4 * 4; }  // whole chunks; padded tables are zero

size_t scores_table_bytes(int dim, int bits, int heads) {
    if (bits != 4) return 0;
    return size_t(heads) * (kFixedHeader + size_t(fixed_coords(dim)) * kFixedEntryBytes);
}

// Entries 4k .. 4k+3 of a coordinate as E = round(x / delta), x * inv in double precision.
TQKV_ALWAYS_INLINE v128_t fixed_entries(v128_t x, v128_t inv) {
    const v128_t lo = wasm_f64x2_nearest(wasm_f64x2_mul(wasm_f64x2_promote_low_f32x4(x), inv));
    const v128_t hi = wasm_f64x2_nearest(wasm_f64x2_mul(wasm_f64x2_promote_low_f32x4(wasm_i64x2_shuffle(x, x, 1, 0)), inv));
    return wasm_i32x4_shuffle(wasm_i32x4_trunc_sat_f64x2_zero(lo), wasm_i32x4_trunc_sat_f64x2_zero(hi), 0, 1, 4, 5);
}

bool prepare_scores(const float* lut, int dim, int bits, int heads, void* table) {
    if (bits != 4 || dim > kMaxDim) return false;
    const int nj = fixed_coords(dim);
    uint8_t* out = static_cast<uint8_t*>(table);
    for (int h = 0; h < heads; ++h) {
        const float* row = lut + size_t(h) * dim * 16;
        // a_j = max_k |lut[j][k]|; a NaN or infinity anywhere fails the isfinite test below.
        float a[kMaxDim + 4];
        for (int j = 0; j < nj; ++j) {
            if (j >= dim) {
                a[j] = 0.0f;
                continue;
            }
            const float* x = row + j * 16;
            const v128_t m = wasm_f32x4_max(wasm_f32x4_max(wasm_f32x4_abs(load(x)), wasm_f32x4_abs(load(x + 4))),
                                            wasm_f32x4_max(wasm_f32x4_abs(load(x + 8)), wasm_f32x4_abs(load(x + 12))));
            const v128_t m2 = wasm_f32x4_max(m, wasm_i32x4_shuffle(m, m, 2, 3, 0, 1));
            // f32x4.max propagates NaN; std::fmax would drop it, so test both lanes before it.
            const float l0 = wasm_f32x4_extract_lane(m2, 0), l1 = wasm_f32x4_extract_lane(m2, 1);
            if (!std::isfinite(l0) || !std::isfinite(l1)) return false;
            a[j] = std::fmax(l0, l1);
        }
        double block_max = 0.0;
        for (int j0 = 0; j0 < nj; j0 += kFixedBlock) {
            double sum = 0.0;
            for (int j = j0; j < nj && j < j0 + kFixedBlock; ++j) sum += a[j];
            block_max = std::fmax(block_max, sum);
        }
        // Rounded up to a float so that the bound above holds for the delta actually used.
        float delta = block_max > 0.0 ? float(block_max / (64.0 * kFixedHLimit)) : 1.0f;
        if (double(delta) < block_max / (64.0 * kFixedHLimit)) delta = std::nextafter(delta, INFINITY);
        if (!std::isnormal(delta)) return false;
        std::memcpy(out, &delta, sizeof delta);
        std::memset(out + sizeof delta, 0, kFixedHeader - sizeof delta);
        uint8_t* e = out + kFixedHeader;
        const v128_t inv = wasm_f64x2_splat(1.0 / double(delta));  // a multiply, not a division
        const v128_t m00ff = wasm_i16x8_splat(0x00ff), m63 = wasm_i32x4_splat(63);
        for (int j = 0; j < nj; ++j, e += kFixedEntryBytes) {
            if (j >= dim) {
                std::memset(e, 0, kFixedEntryBytes);
                continue;
            }
            const float* x = row + j * 16;
            v128_t q[4];
            for (int k = 0; k < 4; ++k) q[k] = fixed_entries(load(x + 4 * k), inv);
            // H = q >> 6 (floor: arithmetic shift) fits int16; its low bytes, its high bytes, L = q & 63.
            const v128_t h0 = wasm_i16x8_narrow_i32x4(wasm_i32x4_shr(q[0], 6), wasm_i32x4_shr(q[1], 6));
            const v128_t h1 = wasm_i16x8_narrow_i32x4(wasm_i32x4_shr(q[2], 6), wasm_i32x4_shr(q[3], 6));
            store(e, wasm_u8x16_narrow_i16x8(wasm_v128_and(h0, m00ff), wasm_v128_and(h1, m00ff)));
            store(e + 16, wasm_i8x16_narrow_i16x8(wasm_i16x8_shr(h0, 8), wasm_i16x8_shr(h1, 8)));
            const v128_t l0 = wasm_i16x8_narrow_i32x4(wasm_v128_and(q[0], m63), wasm_v128_and(q[1], m63));
            const v128_t l1 = wasm_i16x8_narrow_i32x4(wasm_v128_and(q[2], m63), wasm_v128_and(q[3], m63));
            store(e + 32, wasm_u8x16_narrow_i16x8(l0, l1));
        }
        out = e;
    }
    return true;
}

// Adds the look-ups of one coordinate for 16 tokens: H to h16[0] (byte lanes 0-7) and h16[1]
// (8-15), L to l8.
TQKV_ALWAYS_INLINE void fixed_step(const uint8_t* t, v128_t idx, v128_t h16[2], v128_t& l8) {
    const v128_t lo = swizzle16(load(t), idx), hi = swizzle16(load(t + 16), idx);
    h16[0] = wasm_i16x8_add(h16[0], interleave_lo8(lo, hi));
    h16[1] = wasm_i16x8_add(h16[1], interleave_hi8(lo, hi));
    l8 = wasm_i8x16_add(l8, swizzle16(load(t + 32), idx));
}

// Integer scores of the 16 tokens of token set X (0: words 0-7 of each chunk, 1: words 8-15):
// hs[0..3] (int32 sums of H) and ls[0..1] (uint16 sums of L), in the lane order above. They live
// in memory: held in locals they would not fit V8's 16 registers next to the look-ups.
TQKV_ALWAYS_INLINE void fixed_scores_set(const uint8_t* codes, int chunks, const uint8_t* tab, int X, int32_t* hs,
                                         uint16_t* ls) {
    const v128_t m0f = splat_u8(0x0f), m00ff = splat_u16(0x00ff), zero = wasm_i32x4_splat(0);
    for (int k = 0; k < 16; k += 4) store(hs + k, zero);
    store(ls, zero);
    store(ls + 8, zero);
    for (int c0 = 0; c0 < chunks; c0 += kFixedBlock / 4) {
        v128_t h16[2] = {zero, zero};
        const int c1 = chunks - c0 < kFixedBlock / 4 ? chunks : c0 + kFixedBlock / 4;
        for (int c = c0; c < c1; ++c) {
            const uint8_t* p = codes + size_t(c) * 64 + 32 * X;
            const v128_t v0 = load(p), v1 = load(p + 16);
            const v128_t s01 = wasm_u8x16_narrow_i16x8(wasm_v128_and(v0, m00ff), wasm_v128_and(v1, m00ff));
            const v128_t s23 = wasm_u8x16_narrow_i16x8(wasm_u16x8_shr(v0, 8), wasm_u16x8_shr(v1, 8));
            const uint8_t* t = tab + size_t(c) * 4 * kFixedEntryBytes;
            v128_t l8 = zero;
            // A 16-bit shift moves each byte's high nibble down; the mask drops what came from
            // the neighbouring byte.
            fixed_step(t, wasm_v128_and(s01, m0f), h16, l8);
            fixed_step(t + kFixedEntryBytes, wasm_v128_and(wasm_u16x8_shr(s01, 4), m0f), h16, l8);
            fixed_step(t + 2 * kFixedEntryBytes, wasm_v128_and(s23, m0f), h16, l8);
            fixed_step(t + 3 * kFixedEntryBytes, wasm_v128_and(wasm_u16x8_shr(s23, 4), m0f), h16, l8);
            store(ls, wasm_i16x8_add(load(ls), wasm_u16x8_extend_low_u8x16(l8)));
            store(ls + 8, wasm_i16x8_add(load(ls + 8), wasm_u16x8_extend_high_u8x16(l8)));
        }
        store(hs, wasm_i32x4_add(load(hs), wasm_i32x4_extend_low_i16x8(h16[0])));
        store(hs + 4, wasm_i32x4_add(load(hs + 4), wasm_i32x4_extend_high_i16x8(h16[0])));
        store(hs + 8, wasm_i32x4_add(load(hs + 8), wasm_i32x4_extend_low_i16x8(h16[1])));
        store(hs + 12, wasm_i32x4_add(load(hs + 12), wasm_i32x4_extend_high_i16x8(h16[1])));
    }
}

// The opaque pointer keeps the sums in memory (see fixed_scores_set).
__attribute__((noinline)) void fixed_scores_head(const uint8_t* codes, int dim, const uint8_t* tab, int32_t* hs,
                                                 uint16_t* ls) {
    const int chunks = fixed_coords(dim) / 4;
    fixed_scores_set(codes, chunks, tab, 0, hs, ls);
    fixed_scores_set(codes, chunks, tab, 1, hs + 16, ls + 16);
}

void group_scores_prepared(const uint8_t* codes, int dim, int bits, const void* table, int heads,
                           const uint16_t* norms, float scale, float* out, int out_stride) {
    (void)bits;  // 4: prepare_scores accepted nothing else
    alignas(16) float n[kGroupTokens];
    alignas(16) int32_t hs[32];
    alignas(16) uint16_t ls[32];
    wasm128_kernels().from_half(norms, kGroupTokens, n);
    const v128_t vs = wasm_f32x4_splat(scale);
    const uint8_t* tab = static_cast<const uint8_t*>(table);
    const size_t head_bytes = kFixedHeader + size_t(fixed_coords(dim)) * kFixedEntryBytes;
    for (int h = 0; h < heads; ++h, tab += head_bytes) {
        float delta;
        std::memcpy(&delta, tab, sizeof delta);
        fixed_scores_head(codes, dim, tab + kFixedHeader, hs, ls);
        const v128_t vd = wasm_f32x4_splat(delta);
        float* o = out + size_t(h) * out_stride;
        for (int X = 0; X < 2; ++X) {
            // Lanes of set X: [t0 t16 t1 t17] [t2 t18 t3 t19] [t4 t20 t5 t21] [t6 t22 t7 t23] (+ 8X).
            v128_t e[4];
            for (int k = 0; k < 4; ++k) {
                const v128_t l16 = load(ls + 16 * X + 8 * (k / 2));
                const v128_t l = k % 2 ? wasm_u32x4_extend_high_u16x8(l16) : wasm_u32x4_extend_low_u16x8(l16);
                e[k] = wasm_i32x4_add(wasm_i32x4_shl(load(hs + 16 * X + 4 * k), 6), l);
            }
            const int t0 = 8 * X;
            const v128_t s[4] = {wasm_i32x4_shuffle(e[0], e[1], 0, 2, 4, 6), wasm_i32x4_shuffle(e[2], e[3], 0, 2, 4, 6),
                                 wasm_i32x4_shuffle(e[0], e[1], 1, 3, 5, 7), wasm_i32x4_shuffle(e[2], e[3], 1, 3, 5, 7)};
            const int at[4] = {t0, t0 + 4, t0 + 16, t0 + 20};
            for (int k = 0; k < 4; ++k) {  // (norm * raw) * scale, as the driver computes it
                const v128_t raw = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s[k]), vd);
                store(o + at[k], wasm_f32x4_mul(wasm_f32x4_mul(load(n + at[k]), raw), vs));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit values (group_accumulate_normed)
//
// The value table is the same for every coordinate, so an index vector may mix coordinates: the
// 16 code bytes of words 4m .. 4m+3 of a chunk, masked to their low (high) nibbles, index slots
// 0 and 2 (1 and 3) of tokens 4m+i and 4m+i+16 directly, with no decoding shuffles. Look-up
// result i (4 floats) is then [slot 0 or 1 of token t, slot 2 or 3 of token t, the same of
// token t + 16], t = 4m + i, and is multiplied by [w_t, w_t, w_t+16, w_t+16]. Lane 0 and 2 of
// every product belong to one coordinate, lanes 1 and 3 to another, so a chunk's 32 tokens sum
// in registers and reach the accumulators once per group: 4 of each row's 16 lanes.

// Row updates of one nibble: lanes 0 and 2 of a0 and a1 belong to slot 0 (nibble 1: slot 1), lanes
// 1 and 3 to slot 2 (3). r2 is null when that slot is past dim.
TQKV_ALWAYS_INLINE void values4_rows(v128_t a0, v128_t a1, float* r0, float* r2) {
    store(r0, wasm_f32x4_add(load(r0), wasm_i32x4_shuffle(a0, a1, 0, 2, 4, 6)));
    if (r2) store(r2, wasm_f32x4_add(load(r2), wasm_i32x4_shuffle(a0, a1, 1, 3, 5, 7)));
}

// The weights of one head in the lane order of the look-ups: W[4m + i] = [w_t, w_t, w_t+16, w_t+16]
// for t = 4m + i.
TQKV_ALWAYS_INLINE void values4_weights(const float* w, v128_t W[16]) {
    for (int q = 0; q < 4; ++q) {
        const v128_t lo = load(w + 4 * q), hi = load(w + 16 + 4 * q);
        W[4 * q + 0] = wasm_i32x4_shuffle(lo, hi, 0, 0, 4, 4);
        W[4 * q + 1] = wasm_i32x4_shuffle(lo, hi, 1, 1, 5, 5);
        W[4 * q + 2] = wasm_i32x4_shuffle(lo, hi, 2, 2, 6, 6);
        W[4 * q + 3] = wasm_i32x4_shuffle(lo, hi, 3, 3, 7, 7);
    }
}

// One head (several heads share the look-ups of group_accumulate better: its per-head work is
// smaller, and this layout's would be spilled). The products are summed as they are looked up.
void values4_one_head(const uint8_t* codes, int dim, const float* table, const float* w, float* acc) {
    const Planes pl = table_planes<4>(table);
    const v128_t m0f = splat_u8(0x0f);
    alignas(16) v128_t W[16];
    values4_weights(w, W);
    for (int j0 = 0; j0 < dim; j0 += 4) {
        const uint8_t* chunk = codes + size_t(j0 / 4) * 64;
        for (int nibble = 0; nibble < 2 && j0 + nibble < dim; ++nibble) {
            v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0;
            // Not unrolled: unrolled, LLVM hoists all loads to the top and V8 then spills registers
            // (V8 unrolls the loop itself, keeping each iteration's values local).
#pragma clang loop unroll(disable)
            for (int m = 0; m < 4; ++m) {
                v128_t f[4];
                lookup16(pl, wasm_v128_and(wasm_u16x8_shr(load(chunk + 16 * m), 4 * nibble), m0f), f);
                a0 = add_products(a0, f[0], W[4 * m], f[2], W[4 * m + 2]);
                a1 = add_products(a1, f[1], W[4 * m + 1], f[3], W[4 * m + 3]);
            }
            float* r = acc + size_t(j0 + nibble) * 16;
            values4_rows(a0, a1, r, j0 + nibble + 2 < dim ? r + 32 : nullptr);
        }
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
        if (bits == 4 && nh == 1)
            values4_one_head(codes, dim, table, w, acc + size_t(h0) * dim * 16);
        else
            group_accumulate(codes, dim, bits, table, w, nh, acc + size_t(h0) * dim * 16);
    }
}

// ---------------------------------------------------------------------------------------------
// exp for x <= 0: x = n ln2 + r, |r| <= ln2/2, ln2 = C1 + C2 (C1 has 9 significant bits, so
// n * C1 and x - n * C1 are exact); exp(r) = 1 + r + r^2 P(r) (degree-5 Chebyshev fit of
// (e^r - 1 - r) / r^2); 2^n applied as 2^(n - n/2) * 2^(n/2) so both factors are normal. x is
// clamped to -105 first (exp(-105) rounds to 0), which maps -inf to 0; NaN stays NaN.
TQKV_ALWAYS_INLINE v128_t exp4(v128_t x) {
    // pmax(x, c) = x < c ? c : x: one maxps in V8 (f32x4.max is about ten instructions for its NaN
    // and signed-zero rules), and a NaN x stays x.
    x = wasm_f32x4_pmax(x, wasm_f32x4_splat(-105.0f));
    // n = round(x log2 e) to nearest even (|x log2 e| <= 152): Wasm128::round4's magic number, two
    // instructions where f32x4.nearest + i32x4.trunc_sat are about seven; nf = n exactly.
    const v128_t n = simd::Wasm128::round4(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)));
    const v128_t nf = wasm_f32x4_convert_i32x4(n);
    v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(nf, wasm_f32x4_splat(0.693359375f)));
    r = wasm_f32x4_sub(r, wasm_f32x4_mul(nf, wasm_f32x4_splat(-2.12194440e-4f)));
    v128_t p = wasm_f32x4_splat(1.989098091e-04f);
    p = madd(p, r, wasm_f32x4_splat(1.393364160e-03f));
    p = madd(p, r, wasm_f32x4_splat(8.333310485e-03f));
    p = madd(p, r, wasm_f32x4_splat(4.166646674e-02f));
    p = madd(p, r, wasm_f32x4_splat(1.666666716e-01f));
    p = madd(p, r, wasm_f32x4_splat(0.5f));
    p = wasm_f32x4_add(wasm_f32x4_add(r, wasm_f32x4_mul(p, wasm_f32x4_mul(r, r))), wasm_f32x4_splat(1.0f));
    const v128_t n1 = wasm_i32x4_shr(n, 1), n2 = wasm_i32x4_sub(n, n1);  // both in [-76, 64]
    const v128_t bias = wasm_i32x4_splat(127);
    const v128_t s1 = wasm_i32x4_shl(wasm_i32x4_add(n1, bias), 23);
    const v128_t s2 = wasm_i32x4_shl(wasm_i32x4_add(n2, bias), 23);
    return wasm_f32x4_mul(wasm_f32x4_mul(p, s1), s2);
}

TQKV_ALWAYS_INLINE float hsum(v128_t s) {
    const v128_t t = wasm_f32x4_add(s, wasm_i32x4_shuffle(s, s, 2, 3, 0, 1));
    return wasm_f32x4_extract_lane(t, 0) + wasm_f32x4_extract_lane(t, 1);
}

// x_i = exp(x_i - m), returning their sum (in sum order of the other reductions: four
// accumulators over blocks of 16, then blocks of 4, then one at a time).
float exp_sum(float* x, int n, float m) {
    const v128_t vm = wasm_f32x4_splat(m);
    auto e = [&](int i) TQKV_ALWAYS_INLINE_LAMBDA {
        const v128_t v = exp4(wasm_f32x4_sub(load(x + i), vm));
        store(x + i, v);
        return v;
    };
    v128_t s0 = wasm_f32x4_splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = wasm_f32x4_add(s0, e(i));
        s1 = wasm_f32x4_add(s1, e(i + 4));
        s2 = wasm_f32x4_add(s2, e(i + 8));
        s3 = wasm_f32x4_add(s3, e(i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = wasm_f32x4_add(s0, e(i));
    float s = hsum(wasm_f32x4_add(wasm_f32x4_add(s0, s1), wasm_f32x4_add(s2, s3)));
    if (i < n) {
        alignas(16) float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k = i; k < n; ++k) t[k - i] = x[k] - m;
        store(t, exp4(load(t)));
        for (int k = i; k < n; ++k) s += x[k] = t[k - i];
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// Dense fp32 / fp16

float dot_f32(const float* a, const float* b, int n) {
    v128_t s0 = wasm_f32x4_splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = madd(load(a + i), load(b + i), s0);
        s1 = madd(load(a + i + 4), load(b + i + 4), s1);
        s2 = madd(load(a + i + 8), load(b + i + 8), s2);
        s3 = madd(load(a + i + 12), load(b + i + 12), s3);
    }
    for (; i + 4 <= n; i += 4) s0 = madd(load(a + i), load(b + i), s0);
    float s = hsum(wasm_f32x4_add(wasm_f32x4_add(s0, s1), wasm_f32x4_add(s2, s3)));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

void axpy_f32(float a, const float* x, float* y, int n) {
    const v128_t va = wasm_f32x4_splat(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k += 4)
            store(y + i + k, madd(va, load(x + i + k), load(y + i + k)));
    for (; i + 4 <= n; i += 4) store(y + i, madd(va, load(x + i), load(y + i)));
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
        // pmax(m, v) = m < v ? v : m (one maxps, see exp4): like the scalar loop below, a NaN
        // element is passed over.
        v128_t m0 = load(x), m1 = m0, m2 = m0, m3 = m0;
        for (i = 4; i + 16 <= n; i += 16) {
            m0 = wasm_f32x4_pmax(m0, load(x + i));
            m1 = wasm_f32x4_pmax(m1, load(x + i + 4));
            m2 = wasm_f32x4_pmax(m2, load(x + i + 8));
            m3 = wasm_f32x4_pmax(m3, load(x + i + 12));
        }
        for (; i + 4 <= n; i += 4) m0 = wasm_f32x4_pmax(m0, load(x + i));
        const v128_t v = wasm_f32x4_pmax(wasm_f32x4_pmax(m0, m1), wasm_f32x4_pmax(m2, m3));
        const v128_t t = wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
        const float a = wasm_f32x4_extract_lane(t, 0), b = wasm_f32x4_extract_lane(t, 1);
        m = b > a ? b : a;
    } else {
        m = x[0];
        i = 1;
    }
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}


}  // namespace

const AttentionKernels& wasm128_attention() {
    static const AttentionKernels k = {group_scores, group_accumulate, exp_sum, dot_f32, axpy_f32,
                                       dot_f16,      axpy_f16,         max_f32,
                                       group_scores_normed, group_accumulate_normed,
                                       scores_table_bytes,  prepare_scores,         group_scores_prepared,
                                       fast_scores_table_bytes, wasm128_fast_prepare_scores, wasm128_fast_chunk_scores,
                                       wasm128_fast_chunk_accumulate};
    return k;
}

}  // namespace tqkv::detail
