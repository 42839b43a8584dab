// AVX-512 attention kernels. One vpermps looks up a 16-entry float table for 16 tokens at once:
// a 64-byte chunk of a group (cache/layout.hpp) loaded as 16 lanes and shifted right by the
// coordinate's slot indexes the table for tokens 0-15, shifted 16 bits further for tokens 16-31.
// vpermps reads only the low 4 bits of each index, so decoding a coordinate is two shifts.
// (GCC 12's AVX-512 headers trip -Wmaybe-uninitialized, GCC bug 105593.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"

namespace tqkv::detail {
namespace {

inline __m512i load_chunk(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline __m512i shr(__m512i a, int n) { return _mm512_srli_epi32(a, unsigned(n)); }

// Calls f(j, idx_lo, idx_hi) for every coordinate j < dim, in order; the low 4 bits of lane l of
// idx_lo / idx_hi index the table entry of token l / l + 16 (bits <= 4).
template <int BITS, class F>
inline void for_each_coordinate(const uint8_t* codes, int dim, F&& f) {
    if constexpr (BITS == 4 || BITS == 2 || BITS == 1) {
        constexpr int per = 16 / BITS;
        for (int j0 = 0; j0 < dim; j0 += per) {
            const __m512i a = load_chunk(codes + size_t(j0 / per) * 64);
            if (j0 + per <= dim) {
#pragma GCC unroll 16
                for (int s = 0; s < per; ++s) f(j0 + s, shr(a, BITS * s), shr(a, 16 + BITS * s));
            } else {
                for (int s = 0; j0 + s < dim; ++s) f(j0 + s, shr(a, BITS * s), shr(a, 16 + BITS * s));
            }
        }
    } else {  // 3 bits: a 2-bit part (bits 0-1) and a 1-bit part (bit 2); bit 3 of an index is garbage
        // (the 16-entry tables repeat every 8). The 1-bit part is shifted straight to bit 2 and one
        // vpternlogd takes bits 0-1 from the 2-bit part, the rest from it: three operations, not five.
        const uint8_t* ones = codes + part_bytes(dim, 2);
        const __m512i three = _mm512_set1_epi32(3);
        auto idx = [&](__m512i two, int s2, __m512i one, int s1) {
            const __m512i at2 = s1 >= 2 ? shr(one, s1 - 2) : _mm512_slli_epi32(one, unsigned(2 - s1));
            return _mm512_ternarylogic_epi32(shr(two, s2), at2, three, 0xE4);  // three ? two : at2, bitwise
        };
        for (int j0 = 0; j0 < dim; j0 += 16) {
            const __m512i one = load_chunk(ones + size_t(j0 / 16) * 64);
            const __m512i two_a = load_chunk(codes + size_t(j0 / 8) * 64);
            const __m512i two_b = j0 + 8 < dim ? load_chunk(codes + size_t(j0 / 8 + 1) * 64) : _mm512_setzero_si512();
            const int n = std::min(16, dim - j0);
#pragma GCC unroll 16
            for (int s = 0; s < 16; ++s) {
                if (s >= n) break;
                const __m512i two = s < 8 ? two_a : two_b;
                f(j0 + s, idx(two, 2 * (s % 8), one, s), idx(two, 16 + 2 * (s % 8), one, 16 + s));
            }
        }
    }
}

// 5-8 bit codes: a 4-bit low part plus a 1-, 2- or 4-bit high part (b = 5, 6, 8) or 2 + 1 bits
// (b = 7). The index is assembled exactly; tables have 2^b entries (vpermt2ps for 32, gathers above).
template <int BITS>
inline void wide_indices(const uint8_t* codes, int dim, int j, __m512i& lo, __m512i& hi) {
    const __m512i low_mask = _mm512_set1_epi32(15);
    const __m512i a = load_chunk(codes + size_t(j / 4) * 64);
    const int s4 = 4 * (j % 4);
    lo = _mm512_and_si512(shr(a, s4), low_mask);
    hi = _mm512_and_si512(shr(a, 16 + s4), low_mask);
    const uint8_t* rest = codes + part_bytes(dim, 4);
    auto add_part = [&](const uint8_t* part, int w, int shift_out) {
        const int per = 16 / w, s = w * (j % per);
        const __m512i m = _mm512_set1_epi32((1 << w) - 1);
        const __m512i b = load_chunk(part + size_t(j / per) * 64);
        lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(shr(b, s), m), unsigned(shift_out)));
        hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(shr(b, 16 + s), m), unsigned(shift_out)));
    };
    if constexpr (BITS == 5) add_part(rest, 1, 4);
    if constexpr (BITS == 6) add_part(rest, 2, 4);
    if constexpr (BITS == 7) {
        add_part(rest, 2, 4);
        add_part(rest + part_bytes(dim, 2), 1, 6);
    }
    if constexpr (BITS == 8) add_part(rest, 4, 4);
}

inline __m512 wide_lookup(__m512i idx, const float* table, int bits) {
    if (bits == 5) return _mm512_permutex2var_ps(_mm512_loadu_ps(table), idx, _mm512_loadu_ps(table + 16));
    return _mm512_i32gather_ps(idx, table, 4);
}

template <int BITS>
void scores_wide(const uint8_t* codes, int dim, const float* lut, int heads, float* out) {
    constexpr int L = 1 << BITS;
    for (int h = 0; h < heads; ++h) {
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int j = 0; j < dim; ++j) {
            __m512i a, b;
            wide_indices<BITS>(codes, dim, j, a, b);
            const float* t = lut + (size_t(h) * dim + j) * L;
            lo = _mm512_add_ps(lo, wide_lookup(a, t, BITS));
            hi = _mm512_add_ps(hi, wide_lookup(b, t, BITS));
        }
        _mm512_storeu_ps(out + h * kGroupTokens, lo);
        _mm512_storeu_ps(out + h * kGroupTokens + 16, hi);
    }
}

template <int BITS>
void accumulate_wide(const uint8_t* codes, int dim, const float* table, const float* w, int heads, float* acc) {
    for (int j = 0; j < dim; ++j) {
        __m512i a, b;
        wide_indices<BITS>(codes, dim, j, a, b);
        const __m512 vlo = wide_lookup(a, table, BITS), vhi = wide_lookup(b, table, BITS);
        for (int h = 0; h < heads; ++h) {
            float* p = acc + (size_t(h) * dim + j) * 16;
            const __m512 wlo = _mm512_loadu_ps(w + h * kGroupTokens), whi = _mm512_loadu_ps(w + h * kGroupTokens + 16);
            _mm512_storeu_ps(p, _mm512_fmadd_ps(wlo, vlo, _mm512_fmadd_ps(whi, vhi, _mm512_loadu_ps(p))));
        }
    }
}

template <int BITS, int H>
void scores_heads(const uint8_t* codes, int dim, const float* lut, float* out, int stride, __m512 f_lo, __m512 f_hi) {
    // With one or two heads, alternate two accumulator sets between even and odd coordinates so
    // the add chains do not wait on each other's latency.
    constexpr int U = H <= 2 ? 2 : 1;
    __m512 lo0[H], hi0[H], lo1[U == 2 ? H : 1], hi1[U == 2 ? H : 1];
    for (int h = 0; h < H; ++h) lo0[h] = hi0[h] = _mm512_setzero_ps();
    for (int h = 0; h < (U == 2 ? H : 1); ++h) lo1[h] = hi1[h] = _mm512_setzero_ps();
    for_each_coordinate<BITS>(codes, dim, [&](int j, __m512i a, __m512i b) {
        for (int h = 0; h < H; ++h) {
            const __m512 t = _mm512_loadu_ps(lut + (size_t(h) * dim + j) * 16);
            if (U == 2 && (j & 1)) {
                lo1[h] = _mm512_add_ps(lo1[h], _mm512_permutexvar_ps(a, t));
                hi1[h] = _mm512_add_ps(hi1[h], _mm512_permutexvar_ps(b, t));
            } else {
                lo0[h] = _mm512_add_ps(lo0[h], _mm512_permutexvar_ps(a, t));
                hi0[h] = _mm512_add_ps(hi0[h], _mm512_permutexvar_ps(b, t));
            }
        }
    });
    for (int h = 0; h < H; ++h) {
        if constexpr (U == 2) {
            lo0[h] = _mm512_add_ps(lo0[h], lo1[h]);
            hi0[h] = _mm512_add_ps(hi0[h], hi1[h]);
        }
        _mm512_storeu_ps(out + h * stride, _mm512_mul_ps(lo0[h], f_lo));
        _mm512_storeu_ps(out + h * stride + 16, _mm512_mul_ps(hi0[h], f_hi));
    }
}

// f_lo / f_hi scale the 32 token scores (1, or norm x attention scale in the fused form).
template <int BITS>
void scores_bits(const uint8_t* codes, int dim, const float* lut, int heads, float* out, int stride, __m512 f_lo,
                 __m512 f_hi) {
    int h = 0;
    auto run = [&](auto heads_here) {
        constexpr int H = decltype(heads_here)::value;
        scores_heads<BITS, H>(codes, dim, lut + size_t(h) * dim * 16, out + h * stride, stride, f_lo, f_hi);
        h += H;
    };
    while (heads - h >= 8) run(std::integral_constant<int, 8>{});
    switch (heads - h) {
        case 7: run(std::integral_constant<int, 7>{}); break;
        case 6: run(std::integral_constant<int, 6>{}); break;
        case 5: run(std::integral_constant<int, 5>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        case 1: run(std::integral_constant<int, 1>{}); break;
        default: break;
    }
}

void group_scores(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out) {
    const __m512 one = _mm512_set1_ps(1.0f);
    switch (bits) {
        case 1: return scores_bits<1>(codes, dim, lut, heads, out, kGroupTokens, one, one);
        case 2: return scores_bits<2>(codes, dim, lut, heads, out, kGroupTokens, one, one);
        case 3: return scores_bits<3>(codes, dim, lut, heads, out, kGroupTokens, one, one);
        case 4: return scores_bits<4>(codes, dim, lut, heads, out, kGroupTokens, one, one);
        case 5: return scores_wide<5>(codes, dim, lut, heads, out);
        case 6: return scores_wide<6>(codes, dim, lut, heads, out);
        case 7: return scores_wide<7>(codes, dim, lut, heads, out);
        case 8: return scores_wide<8>(codes, dim, lut, heads, out);
        default: return scalar_attention().group_scores(codes, dim, bits, lut, heads, out);
    }
}

inline void load_norms(const uint16_t* norms, __m512& lo, __m512& hi) {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(norms)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(norms + 16)));
}

void group_scores_normed(const uint8_t* codes, int dim, int bits, const float* lut, int heads, const uint16_t* norms,
                         float scale, float* out, int stride) {
    __m512 lo, hi;
    load_norms(norms, lo, hi);
    lo = _mm512_mul_ps(lo, _mm512_set1_ps(scale));
    hi = _mm512_mul_ps(hi, _mm512_set1_ps(scale));
    switch (bits) {
        case 1: return scores_bits<1>(codes, dim, lut, heads, out, stride, lo, hi);
        case 2: return scores_bits<2>(codes, dim, lut, heads, out, stride, lo, hi);
        case 3: return scores_bits<3>(codes, dim, lut, heads, out, stride, lo, hi);
        case 4: return scores_bits<4>(codes, dim, lut, heads, out, stride, lo, hi);
        default: {
            float tmp[kGroupTokens * 64];
            alignas(64) float f[kGroupTokens];
            _mm512_storeu_ps(f, lo);
            _mm512_storeu_ps(f + 16, hi);
            for (int h0 = 0; h0 < heads; h0 += 64) {
                const int hn = std::min(64, heads - h0);
                group_scores(codes, dim, bits, lut + size_t(h0) * dim * (1 << bits), hn, tmp);
                for (int h = 0; h < hn; ++h)
                    for (int t = 0; t < kGroupTokens; ++t) out[(h0 + h) * stride + t] = tmp[h * kGroupTokens + t] * f[t];
            }
        }
    }
}

template <int BITS, int H>
void accumulate_heads(const uint8_t* codes, int dim, const __m512 table, const float* w, int w_stride, __m512 n_lo,
                      __m512 n_hi, float* acc) {
    __m512 wlo[H], whi[H];
    for (int h = 0; h < H; ++h) {
        wlo[h] = _mm512_mul_ps(_mm512_loadu_ps(w + h * w_stride), n_lo);
        whi[h] = _mm512_mul_ps(_mm512_loadu_ps(w + h * w_stride + 16), n_hi);
    }
    for_each_coordinate<BITS>(codes, dim, [&](int j, __m512i a, __m512i b) {
        const __m512 vlo = _mm512_permutexvar_ps(a, table), vhi = _mm512_permutexvar_ps(b, table);
        for (int h = 0; h < H; ++h) {
            float* p = acc + (size_t(h) * dim + j) * 16;
            _mm512_storeu_ps(p, _mm512_fmadd_ps(wlo[h], vlo, _mm512_fmadd_ps(whi[h], vhi, _mm512_loadu_ps(p))));
        }
    });
}

template <int BITS>
void accumulate_bits(const uint8_t* codes, int dim, const float* table, const float* w, int w_stride, int heads,
                     __m512 n_lo, __m512 n_hi, float* acc) {
    const __m512 t = _mm512_loadu_ps(table);
    int h = 0;
    for (; h + 4 <= heads; h += 4)
        accumulate_heads<BITS, 4>(codes, dim, t, w + h * w_stride, w_stride, n_lo, n_hi, acc + size_t(h) * dim * 16);
    // The rest in one pass, so the indices are decoded once (GQA groups of 2 or 3 are common:
    // one head at a time decoded them twice, and was most of the value cost at r = 2).
    switch (heads - h) {
        case 3: return accumulate_heads<BITS, 3>(codes, dim, t, w + h * w_stride, w_stride, n_lo, n_hi, acc + size_t(h) * dim * 16);
        case 2: return accumulate_heads<BITS, 2>(codes, dim, t, w + h * w_stride, w_stride, n_lo, n_hi, acc + size_t(h) * dim * 16);
        case 1: return accumulate_heads<BITS, 1>(codes, dim, t, w + h * w_stride, w_stride, n_lo, n_hi, acc + size_t(h) * dim * 16);
        default: return;
    }
}

void group_accumulate(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int heads,
                      float* acc) {
    const __m512 one = _mm512_set1_ps(1.0f);
    switch (bits) {
        case 1: return accumulate_bits<1>(codes, dim, table, w, kGroupTokens, heads, one, one, acc);
        case 2: return accumulate_bits<2>(codes, dim, table, w, kGroupTokens, heads, one, one, acc);
        case 3: return accumulate_bits<3>(codes, dim, table, w, kGroupTokens, heads, one, one, acc);
        case 4: return accumulate_bits<4>(codes, dim, table, w, kGroupTokens, heads, one, one, acc);
        case 5: return accumulate_wide<5>(codes, dim, table, w, heads, acc);
        case 6: return accumulate_wide<6>(codes, dim, table, w, heads, acc);
        case 7: return accumulate_wide<7>(codes, dim, table, w, heads, acc);
        case 8: return accumulate_wide<8>(codes, dim, table, w, heads, acc);
        default: return scalar_attention().group_accumulate(codes, dim, bits, table, w, heads, acc);
    }
}

void group_accumulate_normed(const uint8_t* codes, int dim, int bits, const float* table, const float* p,
                             int p_stride, const uint16_t* norms, int heads, float* acc) {
    __m512 lo, hi;
    load_norms(norms, lo, hi);
    switch (bits) {
        case 1: return accumulate_bits<1>(codes, dim, table, p, p_stride, heads, lo, hi, acc);
        case 2: return accumulate_bits<2>(codes, dim, table, p, p_stride, heads, lo, hi, acc);
        case 3: return accumulate_bits<3>(codes, dim, table, p, p_stride, heads, lo, hi, acc);
        case 4: return accumulate_bits<4>(codes, dim, table, p, p_stride, heads, lo, hi, acc);
        default: {
            float w[kGroupTokens * 64];
            alignas(64) float n[kGroupTokens];
            _mm512_storeu_ps(n, lo);
            _mm512_storeu_ps(n + 16, hi);
            for (int h0 = 0; h0 < heads; h0 += 64) {
                const int hn = std::min(64, heads - h0);
                for (int h = 0; h < hn; ++h)
                    for (int t = 0; t < kGroupTokens; ++t) w[h * kGroupTokens + t] = p[(h0 + h) * p_stride + t] * n[t];
                group_accumulate(codes, dim, bits, table, w, hn, acc + size_t(h0) * dim * 16);
            }
        }
    }
}

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r
// (relative error ~1e-7), times 2^n by vscalefps. Below ln(FLT_MIN) = -87.3365 the result would be
// subnormal: 0.
__m512 exp_ps(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
    return _mm512_maskz_scalef_ps(_knot_mask16(tiny), p, n);
}

inline __mmask16 tail_mask(int left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

// x_i = exp(x_i - m), returning their sum in the order of the other reductions (two accumulators
// over blocks of 32, then masked blocks of 16).
float exp_sum(float* x, int n, float m) {
    const __m512 vm = _mm512_set1_ps(m);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 a = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        const __m512 b = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
        _mm512_storeu_ps(x + i, a);
        _mm512_storeu_ps(x + i + 16, b);
        s0 = _mm512_add_ps(s0, a);
        s1 = _mm512_add_ps(s1, b);
    }
    for (; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 v = _mm512_maskz_mov_ps(k, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm)));
        _mm512_mask_storeu_ps(x + i, k, v);
        s0 = _mm512_add_ps(s0, v);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

float dot_f32(const float* a, const float* b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void axpy_f32(float a, const float* x, float* y, int n) {
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

inline __m512 load_half(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

float dot_f16(const float* a, const uint16_t* b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_half(b + i, 0xffff), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), load_half(b + i + 16, 0xffff), s1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_half(b + i, m), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void axpy_f16(float a, const uint16_t* x, float* y, int n) {
    const __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, load_half(x + i, m), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

float max_f32(const float* x, int n) {
    __m512 m = _mm512_set1_ps(x[0]);
    for (int i = 0; i < n; i += 16) m = _mm512_mask_max_ps(m, tail_mask(n - i), m, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    return _mm512_reduce_max_ps(m);
}

}  // namespace

const AttentionKernels& avx512_attention() {
    static const AttentionKernels k = {group_scores, group_accumulate,    exp_sum,             dot_f32,
                                       axpy_f32,     dot_f16,             axpy_f16,            max_f32,
                                       group_scores_normed, group_accumulate_normed,
                                       nullptr,      nullptr,             nullptr,
                                       // the fast path: the AVX2 kernels (kernels/avx2/fast.cpp)
                                       fast_scores_table_bytes, avx2_fast_prepare_scores, avx2_fast_chunk_scores,
                                       avx2_fast_chunk_accumulate};
    return k;
}

}  // namespace tqkv::detail
