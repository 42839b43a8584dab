// AVX2 attention kernels (see kernels.hpp for the contract and cache/layout.hpp for the group
// layout of the codes).
//
// A 64-byte chunk of a group is two 256-bit halves: words 0-7 carry tokens 0-7 (low half-words)
// and 16-23 (high half-words), words 8-15 tokens 8-15 and 24-31. Shifted right by a coordinate's
// slot (plus 16 for the high half-words), each half indexes a float table for 8 tokens with one
// vpermps, which reads only the low 3 bits of each index: tables of codes of up to 3 bits repeat
// every 2^bits entries, so their first 8 entries suffice and decoding is shifts only. A 4-bit
// code looks up both 8-entry halves of its 16-entry table and picks one with vblendvps on bit 3
// of the index (moved to the sign bit). So per coordinate four index vectors (tokens 0-7, 8-15,
// 16-23, 24-31) serve every head, and each head keeps four accumulators of 8 tokens.
//
// None of these kernels decides a code: they sum in their own order and use FMA; tests compare
// them with the scalar ones within a tolerance. Codes of 5-8 bits (tables of 2^bits entries) use a
// tree of vpermps + vblendvps (5, 6 bits) or gathers (7, 8 bits).
//
// 4-bit keys, the common case, are scored from fixed-point tables prepared once per query and
// looked up with vpshufb (see "4-bit keys in fixed point"): three byte look-ups of 32 tokens per
// coordinate instead of eight vpermps and four blends. Values stay float (the vpermps path above):
// their per-coordinate cost is already mostly the four FMAs' operands, and fixed-point values or
// weights would not keep the tests' 1e-4 tolerance by a bound.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/codebook.hpp"

#define TQKV_ALWAYS_INLINE inline __attribute__((always_inline))
#define TQKV_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

namespace tqkv::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Decoding a group's codes

TQKV_ALWAYS_INLINE __m256i load8(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
TQKV_ALWAYS_INLINE __m256i shr(__m256i a, int n) { return _mm256_srli_epi32(a, n); }

// Calls f(j, odd, i0, i1, i2, i3) for every coordinate j < dim, in order (odd = j & 1, a constant
// where the loop is unrolled); the low bits of lane l of i0 / i1 / i2 / i3 index the table entry
// of token l / 8 + l / 16 + l / 24 + l: bits 0 to BITS - 1 hold the code and the bits above are
// garbage (which 16-entry tables replicated every 2^BITS entries ignore). Reads only the chunks
// that hold a coordinate < dim.
//
// MUL: shift with vpmulhuw (16-bit lanes: x * 2^(16-k) >> 16 = x >> k) on the high half-words
// moved down once per chunk, instead of vpsrld. Same indexes; on AMD Zen 5 the multiply runs on
// other pipes than the shifts and the float adds of the scores (the accumulation's FMAs want the
// multiply pipes, so it keeps the shifts).
template <int BITS, bool MUL = false, class F>
TQKV_ALWAYS_INLINE void for_each_coordinate(const uint8_t* codes, int dim, F&& f) {
    if constexpr (BITS == 4 || BITS == 2 || BITS == 1) {
        constexpr int per = 16 / BITS;
        for (int j0 = 0; j0 < dim; j0 += per) {
            const uint8_t* p = codes + size_t(j0 / per) * 64;
            const __m256i a = load8(p), b = load8(p + 32);
            if constexpr (MUL) {
                const __m256i ah = shr(a, 16), bh = shr(b, 16);
                auto sh = [](__m256i x, int k) __attribute__((always_inline)) {
                    return k == 0 ? x : _mm256_mulhi_epu16(x, _mm256_set1_epi16(int16_t(1u << (16 - k))));
                };
                if (j0 + per <= dim) {
#pragma GCC unroll 16
                    for (int s = 0; s < per; ++s)
                        f(j0 + s, (s & 1) != 0, sh(a, BITS * s), sh(b, BITS * s), sh(ah, BITS * s), sh(bh, BITS * s));
                } else {
                    for (int s = 0; j0 + s < dim; ++s)
                        f(j0 + s, (s & 1) != 0, shr(a, BITS * s), shr(b, BITS * s), shr(ah, BITS * s), shr(bh, BITS * s));
                }
            } else {
                if (j0 + per <= dim) {
#pragma GCC unroll 16
                    for (int s = 0; s < per; ++s)
                        f(j0 + s, (s & 1) != 0, shr(a, BITS * s), shr(b, BITS * s), shr(a, 16 + BITS * s),
                          shr(b, 16 + BITS * s));
                } else {
                    for (int s = 0; j0 + s < dim; ++s)
                        f(j0 + s, (s & 1) != 0, shr(a, BITS * s), shr(b, BITS * s), shr(a, 16 + BITS * s),
                          shr(b, 16 + BITS * s));
                }
            }
        }
    } else {
        // 3 bits: a 2-bit part (bits 0-1 of the code) and a 1-bit part (bit 2). Each index is
        // (2-bit field at bits 0-1, zeros at 2-3) | (1-bit field at bit 2, zeros at 0-1), with
        // garbage only from bit 3 up, so the OR needs no mask per coordinate: once per chunk
        // the 2-bit words are split into even and odd slots (& 0x33333333 leaves two zero bits
        // above every field) and the 1-bit words into the three residues of the bit position
        // mod 3 (a field then has zeros in the two bits below it).
        const uint8_t* ones = codes + part_bytes(dim, 2);
        const __m256i m3 = _mm256_set1_epi32(0x33333333);
        const __m256i r0 = _mm256_set1_epi32(0x49249249), r1 = _mm256_set1_epi32(int(0x92492492u)),
                      r2 = _mm256_set1_epi32(0x24924924);
        for (int j0 = 0; j0 < dim; j0 += 16) {
            const uint8_t* o = ones + size_t(j0 / 16) * 64;
            const __m256i oa = load8(o), ob = load8(o + 32);
            const __m256i pa0 = _mm256_and_si256(oa, r0), pa1 = _mm256_and_si256(oa, r1), pa2 = _mm256_and_si256(oa, r2);
            const __m256i pb0 = _mm256_and_si256(ob, r0), pb1 = _mm256_and_si256(ob, r1), pb2 = _mm256_and_si256(ob, r2);
            // Bit t (0-31) of the 1-bit words moved to bit 2, bits 0-1 zero.
            auto one = [](__m256i p0, __m256i p1, __m256i p2, int t) __attribute__((always_inline)) {
                const __m256i p = t % 3 == 0 ? p0 : t % 3 == 1 ? p1 : p2;
                return t >= 2 ? _mm256_srli_epi32(p, t - 2) : _mm256_slli_epi32(p, 2 - t);
            };
            // Coordinate j0 + s (s < 16) from the split 2-bit words of its chunk.
            auto coordinate = [&](int s, __m256i ea, __m256i eb, __m256i da, __m256i db) __attribute__((always_inline)) {
                const int k = 4 * ((s % 8) / 2);
                const __m256i ta = s & 1 ? da : ea, tb = s & 1 ? db : eb;
                f(j0 + s, (s & 1) != 0, _mm256_or_si256(shr(ta, k), one(pa0, pa1, pa2, s)),
                  _mm256_or_si256(shr(tb, k), one(pb0, pb1, pb2, s)),
                  _mm256_or_si256(shr(ta, 16 + k), one(pa0, pa1, pa2, 16 + s)),
                  _mm256_or_si256(shr(tb, 16 + k), one(pb0, pb1, pb2, 16 + s)));
            };
            const uint8_t* p = codes + size_t(j0 / 8) * 64;
            const int n = std::min(16, dim - j0);
            for (int h8 = 0; h8 < n; h8 += 8, p += 64) {  // the (up to) two chunks of the 2-bit part
                const __m256i ta = load8(p), tb = load8(p + 32);
                const __m256i ea = _mm256_and_si256(ta, m3), da = _mm256_and_si256(shr(ta, 2), m3);
                const __m256i eb = _mm256_and_si256(tb, m3), db = _mm256_and_si256(shr(tb, 2), m3);
                if (h8 + 8 <= n) {
                    if (h8 == 0) {
#pragma GCC unroll 8
                        for (int s = 0; s < 8; ++s) coordinate(s, ea, eb, da, db);
                    } else {
#pragma GCC unroll 8
                        for (int s = 8; s < 16; ++s) coordinate(s, ea, eb, da, db);
                    }
                } else {
                    for (int s = h8; s < n; ++s) coordinate(s, ea, eb, da, db);
                }
            }
        }
    }
}

// vblendvps: b where the sign bit of mask is set, else a. In asm because GCC folds the intrinsic
// into a select on (mask < 0) and then materializes that with vpxor + vpcmpgtd.
TQKV_ALWAYS_INLINE __m256 blend_sign(__m256 a, __m256 b, __m256i mask) {
    __m256 r;
    asm("vblendvps %3, %2, %1, %0" : "=x"(r) : "x"(a), "x"(b), "x"(mask));
    return r;
}

// Table entries of 8 tokens from the first 8 (lo) and, for 4 bits, the last 8 (hi) entries of a
// 16-entry table: vpermps reads index bits 0-2, bit 3 picks the half.
template <int BITS>
TQKV_ALWAYS_INLINE __m256 lookup(__m256 lo, __m256 hi, __m256i idx) {
    if constexpr (BITS <= 3) {
        (void)hi;
        return _mm256_permutevar8x32_ps(lo, idx);
    } else {
        return blend_sign(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                          _mm256_slli_epi32(idx, 28));
    }
}

// ---------------------------------------------------------------------------------------------
// Scores

// Makes v opaque to the compiler at this point. Without it GCC's expander (TER) would move each
// chain of accumulator adds, a tree of single-use values, down to its last use and issue all the
// table look-ups of a chunk first, spilling them.
TQKV_ALWAYS_INLINE void keep(__m256& v) { asm("" : "+x"(v)); }

// Index shifts by vpmulhuw (see for_each_coordinate) where measured faster: 2 bits, and 4 bits
// with one head.
template <int BITS, int H>
constexpr bool score_mul() {
    return BITS == 2 || H == 1;
}

// out[h][t] = (sum of the U accumulator sets)[h][t] * f[t / 8], for the 32 tokens of a group.
template <int U, int H>
TQKV_ALWAYS_INLINE void store_scores(const __m256 (&acc)[U][H][4], float* out, int stride, const __m256* f) {
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 4; ++k) {
            __m256 v = acc[0][h][k];
            if constexpr (U == 2) v = _mm256_add_ps(v, acc[U - 1][h][k]);
            _mm256_storeu_ps(out + h * stride + 8 * k, _mm256_mul_ps(v, f[k]));
        }
}

// Each pass over the codes is its own function (noinline): one instance per bits x heads, each
// with its accumulators in registers.
template <int BITS, int H>
__attribute__((noinline)) void scores_heads(const uint8_t* codes, int dim, const float* lut, float* out, int stride,
                                            const __m256* f) {
    // With one head, alternate two accumulator sets between even and odd coordinates so the add
    // chains do not wait on each other's latency (not for 3 bits, whose decoding needs the
    // registers; measured).
    constexpr int U = H == 1 && BITS != 3 ? 2 : 1;
    __m256 acc[U][H][4];
    for (int u = 0; u < U; ++u)
        for (int h = 0; h < H; ++h)
            for (int k = 0; k < 4; ++k) acc[u][h][k] = _mm256_setzero_ps();
    constexpr bool mul = score_mul<BITS, H>();
    for_each_coordinate<BITS, mul>(codes, dim, [&](int j, bool odd, __m256i i0, __m256i i1, __m256i i2, __m256i i3)
                                       __attribute__((always_inline)) {
        auto add = [&](auto u) __attribute__((always_inline)) {
            constexpr int v = decltype(u)::value;
            const __m256i idx[4] = {i0, i1, i2, i3};
            // Token block outer, head inner: one index vector (and mask) live at a time.
            for (int k = 0; k < 4; ++k)
                for (int h = 0; h < H; ++h) {
                    const float* t = lut + (size_t(h) * dim + j) * 16;
                    const __m256 lo = _mm256_loadu_ps(t), hi = BITS == 4 ? _mm256_loadu_ps(t + 8) : lo;
                    acc[v][h][k] = _mm256_add_ps(acc[v][h][k], lookup<BITS>(lo, hi, idx[k]));
                    keep(acc[v][h][k]);
                }
        };
        // odd (= j & 1) is a compile-time constant in the unrolled loops
        if (U == 2 && odd)
            add(std::integral_constant<int, U - 1>{});
        else
            add(std::integral_constant<int, 0>{});
    });
    store_scores(acc, out, stride, f);
}

// 1-bit codes: three coordinates share one look-up. Bits s, s + 1, s + 2 of a chunk word hold
// the codes of coordinates j, j + 1, j + 2, so (word >> s) indexes the 8 sums
// t_j[b0] + t_{j+1}[b1] + t_{j+2}[b2], built per head from the three tables (whose entries
// alternate v0 v1): t_j as loaded, t_{j+1} as v0 v0 v1 v1 (vpermilps), t_{j+2} as 4 x v0, 4 x v1.
// A chunk's 16 coordinates take five triples and a single.
template <int H>
__attribute__((noinline)) void scores_heads_1bit(const uint8_t* codes, int dim, const float* lut, float* out, int stride,
                                                 const __m256* f) {
    constexpr int U = H == 1 ? 2 : 1;
    __m256 acc[U][H][4];
    for (int u = 0; u < U; ++u)
        for (int h = 0; h < H; ++h)
            for (int k = 0; k < 4; ++k) acc[u][h][k] = _mm256_setzero_ps();
    for (int j0 = 0; j0 < dim; j0 += 16) {
        const uint8_t* p = codes + size_t(j0 / 16) * 64;
        const __m256i a = load8(p), b = load8(p + 32);
        // Coordinates j0 + s .. j0 + s + m - 1 (m = 1 to 3) into accumulator set u.
        auto group = [&](auto u, int s, int m) __attribute__((always_inline)) {
            constexpr int v = decltype(u)::value;
            const __m256i i0 = shr(a, s), i1 = shr(b, s), i2 = shr(a, 16 + s), i3 = shr(b, 16 + s);
            for (int h = 0; h < H; ++h) {
                const float* t = lut + (size_t(h) * dim + j0 + s) * 16;
                __m256 tab = _mm256_loadu_ps(t);
                if (m >= 2) tab = _mm256_add_ps(tab, _mm256_permute_ps(_mm256_loadu_ps(t + 16), 0x50));
                if (m >= 3)
                    tab = _mm256_add_ps(tab, _mm256_blend_ps(_mm256_broadcast_ss(t + 32), _mm256_broadcast_ss(t + 33), 0xf0));
                acc[v][h][0] = _mm256_add_ps(acc[v][h][0], _mm256_permutevar8x32_ps(tab, i0));
                acc[v][h][1] = _mm256_add_ps(acc[v][h][1], _mm256_permutevar8x32_ps(tab, i1));
                acc[v][h][2] = _mm256_add_ps(acc[v][h][2], _mm256_permutevar8x32_ps(tab, i2));
                acc[v][h][3] = _mm256_add_ps(acc[v][h][3], _mm256_permutevar8x32_ps(tab, i3));
                for (int k = 0; k < 4; ++k) keep(acc[v][h][k]);
            }
        };
        using Even = std::integral_constant<int, 0>;
        using Odd = std::integral_constant<int, U - 1>;
        if (j0 + 16 <= dim) {
            group(Even{}, 0, 3);
            group(Odd{}, 3, 3);
            group(Even{}, 6, 3);
            group(Odd{}, 9, 3);
            group(Even{}, 12, 3);
            group(Odd{}, 15, 1);
        } else {
            for (int s = 0; j0 + s < dim; s += 3) {
                const int m = std::min(3, dim - j0 - s);
                if (U == 2 && (s / 3) % 2)
                    group(Odd{}, s, m);
                else
                    group(Even{}, s, m);
            }
        }
    }
    store_scores(acc, out, stride, f);
}

// 5-8 bit codes: a 4-bit low part plus a 1-, 2- or 4-bit high part (b = 5, 6, 8) or 2 + 1 bits
// (b = 7). The indexes of coordinate j (tokens 0-7, 8-15, 16-23, 24-31) are assembled exactly;
// tables have 2^b entries (wide_lookup).
template <int BITS>
TQKV_ALWAYS_INLINE void wide_indices(const uint8_t* codes, int dim, int j, __m256i idx[4]) {
    const __m256i m15 = _mm256_set1_epi32(15);
    const uint8_t* p = codes + size_t(j / 4) * 64;
    const __m256i a = load8(p), b = load8(p + 32);
    const int s4 = 4 * (j % 4);
    idx[0] = _mm256_and_si256(shr(a, s4), m15);
    idx[1] = _mm256_and_si256(shr(b, s4), m15);
    idx[2] = _mm256_and_si256(shr(a, 16 + s4), m15);
    idx[3] = _mm256_and_si256(shr(b, 16 + s4), m15);
    const uint8_t* rest = codes + part_bytes(dim, 4);
    auto add_part = [&](const uint8_t* part, int w, int shift_out) __attribute__((always_inline)) {
        const int per = 16 / w, s = w * (j % per);
        const __m256i m = _mm256_set1_epi32((1 << w) - 1);
        const uint8_t* q = part + size_t(j / per) * 64;
        const __m256i c = load8(q), d = load8(q + 32);
        auto field = [&](__m256i x, int shift) __attribute__((always_inline)) {
            return _mm256_slli_epi32(_mm256_and_si256(shr(x, shift), m), shift_out);
        };
        idx[0] = _mm256_or_si256(idx[0], field(c, s));
        idx[1] = _mm256_or_si256(idx[1], field(d, s));
        idx[2] = _mm256_or_si256(idx[2], field(c, 16 + s));
        idx[3] = _mm256_or_si256(idx[3], field(d, 16 + s));
    };
    if constexpr (BITS == 5) add_part(rest, 1, 4);
    if constexpr (BITS == 6) add_part(rest, 2, 4);
    if constexpr (BITS == 7) {
        add_part(rest, 2, 4);
        add_part(rest + part_bytes(dim, 2), 1, 6);
    }
    if constexpr (BITS == 8) add_part(rest, 4, 4);
}

// Entry idx (exact, < 2^B) of a 2^B-entry table: for B <= 6 a tree of vpermps on its 8-entry
// blocks and vblendvps on index bits 3, 4, ... (2^(B-3) look-ups and 2^(B-3) - 1 blends, faster
// than a gather up to B = 6, measured); vgatherdps above.
template <int B>
TQKV_ALWAYS_INLINE __m256 wide_lookup(const float* t, __m256i idx) {
    if constexpr (B > 6) {
        return _mm256_i32gather_ps(t, idx, 4);
    } else if constexpr (B == 3) {
        return _mm256_permutevar8x32_ps(_mm256_loadu_ps(t), idx);
    } else {
        return blend_sign(wide_lookup<B - 1>(t, idx), wide_lookup<B - 1>(t + (1 << (B - 1)), idx),
                          _mm256_slli_epi32(idx, 32 - B));
    }
}

template <int BITS, int H>
__attribute__((noinline)) void scores_wide(const uint8_t* codes, int dim, const float* lut, float* out, int stride,
                                           const __m256* f) {
    constexpr int L = 1 << BITS;
    __m256 acc[H][4];
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 4; ++k) acc[h][k] = _mm256_setzero_ps();
    for (int j = 0; j < dim; ++j) {
        __m256i idx[4];
        wide_indices<BITS>(codes, dim, j, idx);
        for (int k = 0; k < 4; ++k)
            for (int h = 0; h < H; ++h) {
                acc[h][k] = _mm256_add_ps(acc[h][k], wide_lookup<BITS>(lut + (size_t(h) * dim + j) * L, idx[k]));
                keep(acc[h][k]);
            }
    }
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + h * stride + 8 * k, _mm256_mul_ps(acc[h][k], f[k]));
}

// Splits `heads` into passes of at most P heads, as even as possible (e.g. 4 = 2 + 2).
template <int P, class F>
TQKV_ALWAYS_INLINE void split_heads(int heads, F&& pass) {
    const int passes = (heads + P - 1) / P;
    for (int p = 0, h = 0; p < passes; ++p) {
        const int n = (heads - h) / (passes - p);  // the remaining heads over the remaining passes
        pass(h, n);
        h += n;
    }
}

// out[h * stride + t] = f[t] * score (f: 1, or norm x attention scale in the fused form), heads
// two per pass (eight accumulators and the four index vectors stay in registers; three heads
// would spill, measured slower).
template <int BITS>
void scores_bits(const uint8_t* codes, int dim, const float* lut, int heads, float* out, int stride, const __m256* f) {
    constexpr int L = BITS <= 4 ? 16 : 1 << BITS;
    split_heads<2>(heads, [&](int h, int n) {
        const float* l = lut + size_t(h) * dim * L;
        float* o = out + h * stride;
        auto run = [&](auto heads_here) __attribute__((always_inline)) {
            constexpr int H = decltype(heads_here)::value;
            if constexpr (BITS == 1)
                scores_heads_1bit<H>(codes, dim, l, o, stride, f);
            else if constexpr (BITS <= 4)
                scores_heads<BITS, H>(codes, dim, l, o, stride, f);
            else
                scores_wide<BITS, H>(codes, dim, l, o, stride, f);
        };
        if (n == 2)
            run(std::integral_constant<int, 2>{});
        else
            run(std::integral_constant<int, 1>{});
    });
}

void scores_any(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out, int stride,
                const __m256* f) {
    switch (bits) {
        case 1: return scores_bits<1>(codes, dim, lut, heads, out, stride, f);
        case 2: return scores_bits<2>(codes, dim, lut, heads, out, stride, f);
        case 3: return scores_bits<3>(codes, dim, lut, heads, out, stride, f);
        case 4: return scores_bits<4>(codes, dim, lut, heads, out, stride, f);
        case 5: return scores_bits<5>(codes, dim, lut, heads, out, stride, f);
        case 6: return scores_bits<6>(codes, dim, lut, heads, out, stride, f);
        case 7: return scores_bits<7>(codes, dim, lut, heads, out, stride, f);
        case 8: return scores_bits<8>(codes, dim, lut, heads, out, stride, f);
        default: break;
    }
}

void group_scores(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out) {
    if (bits < 1 || bits > 8) return scalar_attention().group_scores(codes, dim, bits, lut, heads, out);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 f[4] = {one, one, one, one};
    scores_any(codes, dim, bits, lut, heads, out, kGroupTokens, f);
}

// The 32 fp16 norms of a group as 4 x 8 floats (tokens 0-7, 8-15, 16-23, 24-31).
TQKV_ALWAYS_INLINE void load_norms(const uint16_t* norms, __m256 n[4]) {
    for (int k = 0; k < 4; ++k) n[k] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(norms + 8 * k)));
}

void group_scores_normed(const uint8_t* codes, int dim, int bits, const float* lut, int heads, const uint16_t* norms,
                         float scale, float* out, int stride) {
    __m256 f[4];
    load_norms(norms, f);
    for (int k = 0; k < 4; ++k) f[k] = _mm256_mul_ps(f[k], _mm256_set1_ps(scale));
    if (bits >= 1 && bits <= 8) return scores_any(codes, dim, bits, lut, heads, out, stride, f);
    alignas(32) float tmp[kGroupTokens], fs[kGroupTokens];
    for (int k = 0; k < 4; ++k) _mm256_store_ps(fs + 8 * k, f[k]);
    for (int h = 0; h < heads; ++h) {
        scalar_attention().group_scores(codes, dim, bits, lut + size_t(h) * dim * (size_t(1) << bits), 1, tmp);
        for (int t = 0; t < kGroupTokens; ++t) out[h * stride + t] = tmp[t] * fs[t];
    }
}

// ---------------------------------------------------------------------------------------------
// 4-bit keys in fixed point (prepare_scores / group_scores_prepared)
//
// A float look-up of 8 tokens in a 16-entry table costs two vpermps, a blend and the shifts of the
// index and of the blend mask: 20 instructions per coordinate for 32 tokens. A byte look-up of 32
// tokens is one vpshufb (a 16-byte table per 128-bit lane, broadcast to both). So, as in the wasm kernels, each head's
// table entry lut[j][k] becomes an integer
//   E[j][k] = round(lut[j][k] / delta)                 (one delta > 0 per head and query)
// written with three byte digits, E = 4096 A + 64 B + C, A = floor(E / 4096) in [-R, R), B and C in
// [0, 64), and a coordinate takes three vpshufb for 32 tokens. A token's score is
// delta * sum_j E[j][code_j], the integer sum exact:
//   - A is stored biased, A' = A + R in [0, 2R), and every coordinate's 32 look-ups are added to
//     uint16 sums right away: the odd bytes (shifted down) to one, the whole 16-bit lanes (even
//     byte + 256 odd byte) to another, from which the even sums are recovered once per group
//     (minus 256 times the odd sums, mod 2^16: exact, as they are below 2^16). With nj = dim
//     rounded up to whole chunks (4 coordinates) and R = min(127, 65535 / (2 nj)), a sum is below
//     2R nj <= 65535. R = 127 up to dim 256, 31 at kMaxDim = 1024.
//   - B and C are added in uint8 over the 4 coordinates of a chunk (<= 4 * 63 = 252), then to
//     uint16 sums the same way (<= 63 nj <= 64512).
//   - The total 4096 (sum A' - R nj) + 64 sum B + sum C is below 4096 * 32768 + 65 * 64512 < 2^28
//     in magnitude: int32, and exact as a float up to a rounding of 2^-24 relative.
// delta = a_max / (4096 R - 2) (rounded up to a float), a_max = max_{j,k} |lut[j][k]|. E is
// rounded to nearest from y = fl(lut * fl(1 / delta)) (two float roundings, and |lut / delta| <=
// 4096 R - 2 < 2^19, so |y - lut / delta| <= 2^19 * 2^-23 = 2^-4 up to a term of 2^-29), hence
// |delta E - lut| <= (1/2 + 2^-4) delta per entry and |E| <= 4096 R - 2 (an integer bound that
// y exceeds by less than 1/2), i.e. A in [-R, R). A score is off by at most
//   dim * 0.5625 delta ~ 1.1e-6 dim a_max (R = 127, dim <= 256; 4.4e-6 dim a_max at dim 1024)
// plus 2^-24 relative for each of the two float roundings of the total (int -> float, times
// delta). Summing the same dim entries in float has the worst-case bound (dim - 1) 2^-24 dim a_max
// (6e-8 dim^2 a_max), larger for every dim >= 19 (7x larger at dim = 128, 14x at 1024): in the
// worst case the fixed point is within the accuracy the float kernels are held to. (Typical errors
// are larger than the float ones, whose roundings mostly cancel: on the cases of the cache test
// "fused attention equals the decode-then-exact reference", relative output errors reach ~7e-6
// against ~1e-6 for the float kernels, the tolerance being 1e-4.) Cases the bound does not cover fall
// back to the float path: prepare_scores returns false for other code widths, dim > kMaxDim, a
// non-finite table, or a delta that is not a normal float.
//
// Codes are read without index shifts per token block: in a chunk (coordinates 4c .. 4c+3) word i
// holds the codes of token i (words 8-15: i + 8) in its low 16 bits and of token i + 16 in its high
// ones, byte 0 / 1 of each half being slots 0-1 / 2-3. Masking (or shifting by 8) the 16-bit halves
// of both 32-byte halves of the chunk and packing them to bytes gives slots 0-1 (2-3) of all 32
// tokens in one vector, token t < 16 in an even byte and t + 16 in the odd byte after it; a nibble
// mask (after a 16-bit shift by 4) then gives each coordinate's indexes. The even / odd split of the
// sums is that of tokens 0-15 / 16-31, and widening the uint16 sums to int32 with vpunpck{l,h}wd
// puts each half back in token order.

constexpr size_t kFixedHeader = 16;   // per head: delta (float), R * nj (int32), padding
constexpr int kFixedEntryBytes = 48;  // per coordinate: the 16 A', the 16 B, the 16 C

int fixed_coords(int dim) { return (dim + 3) / 4 * 4; }  // whole chunks; padded coordinates have E = 0
int fixed_range(int dim) { return std::min(127, 65535 / (2 * fixed_coords(dim))); }

size_t scores_table_bytes(int dim, int bits, int heads) {
    if (bits != 4) return 0;
    return size_t(heads) * (kFixedHeader + size_t(fixed_coords(dim)) * kFixedEntryBytes);
}

// 16 int32 (e0: entries 0-7, e1: 8-15), each in [0, 255], as 16 bytes in order.
TQKV_ALWAYS_INLINE void store_bytes16(uint8_t* p, __m256i e0, __m256i e1) {
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(e0, e1), 0xd8);  // 16 uint16 in order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

bool prepare_scores(const float* lut, int dim, int bits, int heads, void* table) {
    if (bits != 4 || dim < 1 || dim > kMaxDim) return false;
    const int nj = fixed_coords(dim), R = fixed_range(dim);
    const float limit = float(4096 * R - 2);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    uint8_t* out = static_cast<uint8_t*>(table);
    for (int h = 0; h < heads; ++h) {
        const float* row = lut + size_t(h) * dim * 16;
        // a_max; bad collects the lanes that saw a NaN or an infinity (|x| <= FLT_MAX false).
        const __m256 big = _mm256_set1_ps(3.4028235e38f);
        __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int i = 0; i < dim * 16; i += 8) {
            const __m256 x = _mm256_and_ps(_mm256_loadu_ps(row + i), abs_mask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, big, _CMP_NLE_UQ));
            m = _mm256_max_ps(x, m);
        }
        if (_mm256_movemask_ps(bad) != 0) return false;
        alignas(32) float mv[8];
        _mm256_store_ps(mv, m);
        float a_max = 0.0f;
        for (float v : mv) a_max = std::max(a_max, v);
        // Rounded up so that |lut / delta| <= limit holds for the delta actually used.
        float delta = a_max > 0.0f ? float(double(a_max) / limit) : 1.0f;
        if (double(delta) * limit < double(a_max)) delta = std::nextafter(delta, 3.4028235e38f);
        if (!std::isnormal(delta)) return false;
        const int32_t bias = R * nj;
        std::memcpy(out, &delta, sizeof delta);
        std::memcpy(out + 4, &bias, sizeof bias);
        std::memset(out + 8, 0, kFixedHeader - 8);
        uint8_t* e = out + kFixedHeader;
        const __m256 inv = _mm256_set1_ps(1.0f / delta);
        const __m256i vR = _mm256_set1_epi32(R), m63 = _mm256_set1_epi32(63);
        for (int j = 0; j < nj; ++j, e += kFixedEntryBytes) {
            __m256i q[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
            if (j < dim)
                for (int k = 0; k < 2; ++k) {
                    const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(row + j * 16 + 8 * k), inv);
                    q[k] = _mm256_cvttps_epi32(_mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                }
            // A' = (E >> 12) + R (floor: arithmetic shift), B = (E >> 6) & 63, C = E & 63.
            store_bytes16(e, _mm256_add_epi32(_mm256_srai_epi32(q[0], 12), vR), _mm256_add_epi32(_mm256_srai_epi32(q[1], 12), vR));
            store_bytes16(e + 16, _mm256_and_si256(_mm256_srai_epi32(q[0], 6), m63),
                          _mm256_and_si256(_mm256_srai_epi32(q[1], 6), m63));
            store_bytes16(e + 32, _mm256_and_si256(q[0], m63), _mm256_and_si256(q[1], m63));
        }
        out = e;
    }
    return true;
}

TQKV_ALWAYS_INLINE __m256i table16(const uint8_t* p) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Integer scores E of the 32 tokens of a group for one head, in token order (t[k]: tokens 8k .. 8k+7).
__attribute__((noinline)) void fixed_scores_head(const uint8_t* codes, int dim, const uint8_t* tab, int32_t bias,
                                                 __m256i t[4]) {
    const __m256i m0f = _mm256_set1_epi8(0x0f), m00ff = _mm256_set1_epi16(0x00ff), zero = _mm256_setzero_si256();
    // uint16 sums of A', B, C; o: tokens 16-31 (odd bytes), e: whole 16-bit lanes until the end of
    // the loop, then tokens 0-15 (even bytes); lane order: see above.
    __m256i ae = zero, ao = zero, be = zero, bo = zero, ce = zero, co = zero;
    const int chunks = fixed_coords(dim) / 4;
    for (int c = 0; c < chunks; ++c, codes += 64, tab += 4 * kFixedEntryBytes) {
        const __m256i a = load8(codes), b = load8(codes + 32);
        const __m256i s01 = _mm256_packus_epi16(_mm256_and_si256(a, m00ff), _mm256_and_si256(b, m00ff));
        const __m256i s23 = _mm256_packus_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
        // A 16-bit shift moves each byte's high nibble down; the mask drops what came from the
        // neighbouring byte.
        const __m256i idx[4] = {_mm256_and_si256(s01, m0f), _mm256_and_si256(_mm256_srli_epi16(s01, 4), m0f),
                                _mm256_and_si256(s23, m0f), _mm256_and_si256(_mm256_srli_epi16(s23, 4), m0f)};
        __m256i b8 = zero, c8 = zero;
        for (int s = 0; s < 4; ++s) {
            const uint8_t* e = tab + s * kFixedEntryBytes;
            const __m256i va = _mm256_shuffle_epi8(table16(e), idx[s]);
            ae = _mm256_add_epi16(ae, va);
            ao = _mm256_add_epi16(ao, _mm256_srli_epi16(va, 8));
            b8 = _mm256_add_epi8(b8, _mm256_shuffle_epi8(table16(e + 16), idx[s]));
            c8 = _mm256_add_epi8(c8, _mm256_shuffle_epi8(table16(e + 32), idx[s]));
            // Opaque here, so the compiler does not hoist all 12 table loads of the chunk and spill.
            asm("" : "+x"(ae), "+x"(ao), "+x"(b8), "+x"(c8));
        }
        be = _mm256_add_epi16(be, b8);
        bo = _mm256_add_epi16(bo, _mm256_srli_epi16(b8, 8));
        ce = _mm256_add_epi16(ce, c8);
        co = _mm256_add_epi16(co, _mm256_srli_epi16(c8, 8));
    }
    // ae, be, ce summed whole 16-bit lanes (even byte + 256 odd byte), mod 2^16: minus 256 times
    // the odd sums they are the even sums mod 2^16, which are below 2^16, so exact.
    ae = _mm256_sub_epi16(ae, _mm256_slli_epi16(ao, 8));
    be = _mm256_sub_epi16(be, _mm256_slli_epi16(bo, 8));
    ce = _mm256_sub_epi16(ce, _mm256_slli_epi16(co, 8));
    const __m256i vbias = _mm256_set1_epi32(bias);
    auto total = [&](__m256i A, __m256i B, __m256i C) __attribute__((always_inline)) {
        return _mm256_add_epi32(_mm256_slli_epi32(_mm256_sub_epi32(A, vbias), 12),
                                _mm256_add_epi32(_mm256_slli_epi32(B, 6), C));
    };
    t[0] = total(_mm256_unpacklo_epi16(ae, zero), _mm256_unpacklo_epi16(be, zero), _mm256_unpacklo_epi16(ce, zero));
    t[1] = total(_mm256_unpackhi_epi16(ae, zero), _mm256_unpackhi_epi16(be, zero), _mm256_unpackhi_epi16(ce, zero));
    t[2] = total(_mm256_unpacklo_epi16(ao, zero), _mm256_unpacklo_epi16(bo, zero), _mm256_unpacklo_epi16(co, zero));
    t[3] = total(_mm256_unpackhi_epi16(ao, zero), _mm256_unpackhi_epi16(bo, zero), _mm256_unpackhi_epi16(co, zero));
}

void group_scores_prepared(const uint8_t* codes, int dim, int bits, const void* table, int heads,
                           const uint16_t* norms, float scale, float* out, int stride) {
    (void)bits;  // 4: prepare_scores accepted nothing else
    __m256 f[4];
    load_norms(norms, f);
    for (int k = 0; k < 4; ++k) f[k] = _mm256_mul_ps(f[k], _mm256_set1_ps(scale));
    const uint8_t* tab = static_cast<const uint8_t*>(table);
    const size_t head_bytes = kFixedHeader + size_t(fixed_coords(dim)) * kFixedEntryBytes;
    for (int h = 0; h < heads; ++h, tab += head_bytes) {
        float delta;
        int32_t bias;
        std::memcpy(&delta, tab, sizeof delta);
        std::memcpy(&bias, tab + 4, sizeof bias);
        __m256i t[4];
        fixed_scores_head(codes, dim, tab + kFixedHeader, bias, t);
        const __m256 vd = _mm256_set1_ps(delta);
        for (int k = 0; k < 4; ++k)
            _mm256_storeu_ps(out + size_t(h) * stride + 8 * k, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(t[k]), vd), f[k]));
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted sums of values

// Weights of H heads times the norms: w[h * w_stride + t] * n[t / 8][t % 8].
template <int H>
TQKV_ALWAYS_INLINE void load_weights(const float* w, int w_stride, const __m256* n, __m256 (&wv)[H][4]) {
    for (int h = 0; h < H; ++h)
        for (int k = 0; k < 4; ++k) wv[h][k] = _mm256_mul_ps(_mm256_loadu_ps(w + h * w_stride + 8 * k), n[k]);
}

// acc lanes 0-7 take tokens 0-7 and 16-23, lanes 8-15 tokens 8-15 and 24-31.
template <int H>
TQKV_ALWAYS_INLINE void accumulate_coordinate(float* acc, int dim, int j, const __m256 (&wv)[H][4], __m256 v0, __m256 v1,
                                              __m256 v2, __m256 v3) {
    for (int h = 0; h < H; ++h) {
        float* p = acc + (size_t(h) * dim + j) * 16;
        _mm256_storeu_ps(p, _mm256_fmadd_ps(wv[h][0], v0, _mm256_fmadd_ps(wv[h][2], v2, _mm256_loadu_ps(p))));
        _mm256_storeu_ps(p + 8, _mm256_fmadd_ps(wv[h][1], v1, _mm256_fmadd_ps(wv[h][3], v3, _mm256_loadu_ps(p + 8))));
    }
}

template <int BITS, int H>
__attribute__((noinline)) void accumulate_heads(const uint8_t* codes, int dim, const float* table, const float* w,
                                                int w_stride, const __m256* n, float* acc) {
    __m256 wv[H][4];
    load_weights<H>(w, w_stride, n, wv);
    if constexpr (BITS <= 4) {
        const __m256 tlo = _mm256_loadu_ps(table), thi = BITS == 4 ? _mm256_loadu_ps(table + 8) : tlo;
        for_each_coordinate<BITS>(codes, dim, [&](int j, bool /*odd*/, __m256i i0, __m256i i1, __m256i i2, __m256i i3)
                                                  __attribute__((always_inline)) {
            accumulate_coordinate<H>(acc, dim, j, wv, lookup<BITS>(tlo, thi, i0), lookup<BITS>(tlo, thi, i1),
                                     lookup<BITS>(tlo, thi, i2), lookup<BITS>(tlo, thi, i3));
        });
    } else {
        for (int j = 0; j < dim; ++j) {
            __m256i idx[4];
            wide_indices<BITS>(codes, dim, j, idx);
            accumulate_coordinate<H>(acc, dim, j, wv, wide_lookup<BITS>(table, idx[0]), wide_lookup<BITS>(table, idx[1]),
                                     wide_lookup<BITS>(table, idx[2]), wide_lookup<BITS>(table, idx[3]));
        }
    }
}

// Two heads per pass: their eight weight vectors, the table and the four looked-up values fill
// the registers.
template <int BITS>
void accumulate_bits(const uint8_t* codes, int dim, const float* table, const float* w, int w_stride, int heads,
                     const __m256* n, float* acc) {
    split_heads<2>(heads, [&](int h, int hn) {
        const float* wh = w + h * w_stride;
        float* a = acc + size_t(h) * dim * 16;
        if (hn == 2)
            accumulate_heads<BITS, 2>(codes, dim, table, wh, w_stride, n, a);
        else
            accumulate_heads<BITS, 1>(codes, dim, table, wh, w_stride, n, a);
    });
}

void accumulate_any(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int w_stride, int heads,
                    const __m256* n, float* acc) {
    switch (bits) {
        case 1: return accumulate_bits<1>(codes, dim, table, w, w_stride, heads, n, acc);
        case 2: return accumulate_bits<2>(codes, dim, table, w, w_stride, heads, n, acc);
        case 3: return accumulate_bits<3>(codes, dim, table, w, w_stride, heads, n, acc);
        case 4: return accumulate_bits<4>(codes, dim, table, w, w_stride, heads, n, acc);
        case 5: return accumulate_bits<5>(codes, dim, table, w, w_stride, heads, n, acc);
        case 6: return accumulate_bits<6>(codes, dim, table, w, w_stride, heads, n, acc);
        case 7: return accumulate_bits<7>(codes, dim, table, w, w_stride, heads, n, acc);
        case 8: return accumulate_bits<8>(codes, dim, table, w, w_stride, heads, n, acc);
        default: break;
    }
}

void group_accumulate(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int heads,
                      float* acc) {
    if (bits < 1 || bits > 8) return scalar_attention().group_accumulate(codes, dim, bits, table, w, heads, acc);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 n[4] = {one, one, one, one};
    accumulate_any(codes, dim, bits, table, w, kGroupTokens, heads, n, acc);
}

void group_accumulate_normed(const uint8_t* codes, int dim, int bits, const float* table, const float* p,
                             int p_stride, const uint16_t* norms, int heads, float* acc) {
    __m256 n[4];
    load_norms(norms, n);
    if (bits >= 1 && bits <= 8) return accumulate_any(codes, dim, bits, table, p, p_stride, heads, n, acc);
    alignas(32) float w[kGroupTokens], ns[kGroupTokens];
    for (int k = 0; k < 4; ++k) _mm256_store_ps(ns + 8 * k, n[k]);
    for (int h = 0; h < heads; ++h) {
        for (int t = 0; t < kGroupTokens; ++t) w[t] = p[h * p_stride + t] * ns[t];
        scalar_attention().group_accumulate(codes, dim, bits, table, w, 1, acc + size_t(h) * dim * 16);
    }
}

// ---------------------------------------------------------------------------------------------
// exp

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r (relative
// error ~1e-7), times 2^n built in the exponent field. n = round(x / ln2) comes from adding
// 1.5 * 2^23 (the float's low mantissa bits then hold n). Below ln(FLT_MIN) = -87.3365 (and at
// -inf) the result would be under FLT_MIN: 0.
TQKV_ALWAYS_INLINE __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3365447f);  // ln(FLT_MIN) = -87.33654475 as a float (just below)
    const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    // Clamped so n stays in [-126, 0] (maxps returns its second operand for NaN: NaN stays NaN).
    const __m256 xc = _mm256_max_ps(lo, x);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // The low bits of t are 0x400000 + n; shifted left by 23 after adding 127 they are the exponent
    // field of 2^n (the bits above shift out).
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// Masks of the first k lanes: mask_from(k) loads 8 ints from kMaskTable + 8 - k.
alignas(64) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
TQKV_ALWAYS_INLINE __m256i tail_mask(int k) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - k));
}

TQKV_ALWAYS_INLINE float hsum(__m256 v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

// x_i = exp(x_i - m), returning their sum in the order of the other reductions (four
// accumulators over blocks of 32, then blocks of 8, then a masked tail).
float exp_sum(float* x, int n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    auto e = [&](int i) TQKV_ALWAYS_INLINE_LAMBDA {
        const __m256 v = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, v);
        return v;
    };
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, e(i));
        s1 = _mm256_add_ps(s1, e(i + 8));
        s2 = _mm256_add_ps(s2, e(i + 16));
        s3 = _mm256_add_ps(s3, e(i + 24));
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(s0, e(i));
    if (i < n) {
        // Lanes past n: exp(0 - m) computed but neither stored nor summed.
        const __m256i k = tail_mask(n - i);
        const __m256 v = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), vm));
        _mm256_maskstore_ps(x + i, k, v);
        s1 = _mm256_add_ps(s1, _mm256_and_ps(v, _mm256_castsi256_ps(k)));
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

// ---------------------------------------------------------------------------------------------
// Dense building blocks


TQKV_ALWAYS_INLINE float hmax(__m256 v) {
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

float dot_f32(const float* a, const float* b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void axpy_f32(float a, const float* x, float* y, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

TQKV_ALWAYS_INLINE __m256 load_half8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The first k < 8 halves at p, zero-padded to 8.
TQKV_ALWAYS_INLINE __m256 load_half_tail(const uint16_t* p, int k) {
    alignas(16) uint16_t t[8] = {};
    std::memcpy(t, p, sizeof(uint16_t) * size_t(k));
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

float dot_f16(const float* a, const uint16_t* b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_half8(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_half8(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), load_half8(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), load_half8(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_half8(b + i), s0);
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), load_half_tail(b + i, n - i), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void axpy_f16(float a, const uint16_t* x, float* y, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_half8(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, load_half8(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_half8(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(va, load_half_tail(x + i, n - i), _mm256_maskload_ps(y + i, m)));
    }
}

float max_f32(const float* x, int n) {
    if (n < 8) {
        float m = x[0];
        for (int i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
        return m;
    }
    __m256 m0 = _mm256_loadu_ps(x), m1 = m0;
    int i = 8;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    if (i < n) m1 = _mm256_max_ps(_mm256_loadu_ps(x + n - 8), m1);  // overlaps: max does not mind
    return hmax(_mm256_max_ps(m0, m1));
}

}  // namespace

const AttentionKernels& avx2_attention() {
    static const AttentionKernels k = {group_scores, group_accumulate,    exp_sum,             dot_f32,
                                       axpy_f32,     dot_f16,             axpy_f16,            max_f32,
                                       group_scores_normed, group_accumulate_normed,
                                       scores_table_bytes, prepare_scores,  group_scores_prepared,
                                       fast_scores_table_bytes, avx2_fast_prepare_scores, avx2_fast_chunk_scores,
                                       avx2_fast_chunk_accumulate};
    return k;
}

}  // namespace tqkv::detail
