// AVX2 kernels (with FMA, F16C, BMI2). Everything that decides a code reproduces the scalar
// reference bit for bit (see kernels.hpp): element-wise operations in any order, the canonical
// 16-lane reduction (two ymm accumulators for lanes 0-7 and 8-15), matvec accumulated column by
// column, and no fused multiply-adds outside dot_codes.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/packing.hpp"

namespace tqkv::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Reductions and element-wise operations.

float max_abs(const float* x, int n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
    int i = 0;
    // max(|x|, m) returns m when |x| is NaN, like std::fmax in the reference.
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), m0);
        m1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i + 8), absmask), m1);
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), m0);
    // All lanes are non-negative and not NaN: max is exact in any order.
    m0 = _mm256_max_ps(m0, m1);
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 1));
    float m = _mm_cvtss_f32(q);
    for (; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
    return m;
}

float sum_squares(const float* x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  // lanes 0-7 and 8-15
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
    }
    if (i < n) {  // n % 16 == 0 by contract; a partial tail counts as zero-padded
        alignas(32) float t[16] = {};
        std::memcpy(t, x + i, sizeof(float) * size_t(n - i));
        const __m256 v0 = _mm256_load_ps(t), v1 = _mm256_load_ps(t + 8);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
    }
    // Fold l += l+8, l += l+4, l += l+2, l += l+1.
    const __m256 h = _mm256_add_ps(a0, a1);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

void scale(float* x, int n, float s) {
    const __m256 sv = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
        _mm256_storeu_ps(x + i + 8, _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), sv));
        _mm256_storeu_ps(x + i + 16, _mm256_mul_ps(_mm256_loadu_ps(x + i + 16), sv));
        _mm256_storeu_ps(x + i + 24, _mm256_mul_ps(_mm256_loadu_ps(x + i + 24), sv));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
    for (; i < n; ++i) x[i] *= s;
}

// Sign bits for 8 lanes: bit k of `bits` moved to bit 31 of lane k.
inline __m256 sign_lanes(uint32_t bits) {
    const __m256i sh = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i s = _mm256_sllv_epi32(_mm256_set1_epi32(int(bits)), sh);
    return _mm256_castsi256_ps(_mm256_and_si256(s, _mm256_set1_epi32(int(0x80000000u))));
}

void flip_signs(float* x, const uint32_t* mask, int n) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const uint32_t w = mask[i / 32];
        _mm256_storeu_ps(x + i, _mm256_xor_ps(_mm256_loadu_ps(x + i), sign_lanes(w)));
        _mm256_storeu_ps(x + i + 8, _mm256_xor_ps(_mm256_loadu_ps(x + i + 8), sign_lanes(w >> 8)));
        _mm256_storeu_ps(x + i + 16, _mm256_xor_ps(_mm256_loadu_ps(x + i + 16), sign_lanes(w >> 16)));
        _mm256_storeu_ps(x + i + 24, _mm256_xor_ps(_mm256_loadu_ps(x + i + 24), sign_lanes(w >> 24)));
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_xor_ps(_mm256_loadu_ps(x + i), sign_lanes(mask[i / 32] >> (i % 32))));
    for (; i < n; ++i)
        if ((mask[i / 32] >> (i % 32)) & 1) x[i] = -x[i];
}

// ---------------------------------------------------------------------------------------------
// Walsh–Hadamard transform.

// One butterfly stage of stride H < 8 inside a register: lane l with (l & H) == 0 gets
// x[l] + x[l+H], lane l+H gets x[l] - x[l+H].
template <int H>
inline __m256 stage_in(__m256 v) {
    __m256 p;
    if constexpr (H == 1) p = _mm256_permute_ps(v, 0xB1);
    else if constexpr (H == 2) p = _mm256_permute_ps(v, 0x4E);
    else p = _mm256_permute2f128_ps(v, v, 0x01);
    constexpr int hi = H == 1 ? 0xAA : H == 2 ? 0xCC : 0xF0;
    return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), hi);
}

inline __m256 stages_below(__m256 v, int block) {  // strides 1 .. block/2 (block < 8)
    if (block > 1) v = stage_in<1>(v);
    if (block > 2) v = stage_in<2>(v);
    return v;
}

// Register strides H, 2H, ... < R of a transform held in v[0, R).
template <int R, int H>
inline void cross_stages(__m256 (&v)[R]) {
    if constexpr (H < R) {
#pragma GCC unroll 16
        for (int k = 0; k < R / 2; ++k) {
            const int j = (k / H) * 2 * H + k % H;
            const __m256 a = v[j], b = v[j + H];
            v[j] = _mm256_add_ps(a, b);
            v[j + H] = _mm256_sub_ps(a, b);
        }
        cross_stages<R, 2 * H>(v);
    }
}

// A whole transform of 8*R floats held in R registers.
template <int R>
inline void fwht_regs(float* x) {
    __m256 v[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        __m256 t = _mm256_loadu_ps(x + 8 * r);
        t = stage_in<1>(t);
        t = stage_in<2>(t);
        v[r] = stage_in<4>(t);
    }
    cross_stages<R, 1>(v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(x + 8 * r, v[r]);
}

inline void fwht_pass(float* x, int block, int h) {  // stride h >= 8, in memory
    for (int i = 0; i < block; i += 2 * h)
        for (int j = i; j < i + h; j += 8) {
            const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
            _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
            _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
        }
}

inline void fwht_pass2(float* x, int block, int h) {  // strides h and 2h in one pass
    for (int i = 0; i < block; i += 4 * h)
        for (int j = i; j < i + h; j += 8) {
            const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
            const __m256 c = _mm256_loadu_ps(x + j + 2 * h), d = _mm256_loadu_ps(x + j + 3 * h);
            const __m256 a1 = _mm256_add_ps(a, b), b1 = _mm256_sub_ps(a, b);
            const __m256 c1 = _mm256_add_ps(c, d), d1 = _mm256_sub_ps(c, d);
            _mm256_storeu_ps(x + j, _mm256_add_ps(a1, c1));
            _mm256_storeu_ps(x + j + 2 * h, _mm256_sub_ps(a1, c1));
            _mm256_storeu_ps(x + j + h, _mm256_add_ps(b1, d1));
            _mm256_storeu_ps(x + j + 3 * h, _mm256_sub_ps(b1, d1));
        }
}

void fwht(float* x, int n, int block) {
    if (block < 2) return;
    if (block < 8) {
        int i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, stages_below(_mm256_loadu_ps(x + i), block));
        for (int base = i; base < n; base += block)  // whole blocks left over: the reference loops
            for (int h = 1; h < block; h *= 2)
                for (int k = base; k < base + block; k += 2 * h)
                    for (int j = k; j < k + h; ++j) {
                        const float a = x[j], b = x[j + h];
                        x[j] = a + b;
                        x[j + h] = a - b;
                    }
        return;
    }
    for (int base = 0; base < n; base += block) {
        float* b = x + base;
        switch (block) {
            case 8: fwht_regs<1>(b); break;
            case 16: fwht_regs<2>(b); break;
            case 32: fwht_regs<4>(b); break;
            case 64: fwht_regs<8>(b); break;
            case 128: fwht_regs<16>(b); break;
            default: {
                for (int c = 0; c < block; c += 128) fwht_regs<16>(b + c);
                int h = 128;
                for (; 4 * h <= block; h *= 4) fwht_pass2(b, block, h);
                if (h < block) fwht_pass(b, block, h);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dense rotation: y = sum_j x[j] * column j, accumulated in order of j.

template <int R>
inline void matvec_rows(const float* m, int rows, int cols, const float* x, float* y) {
    __m256 acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int j = 0; j < cols; ++j) {
        const __m256 xj = _mm256_set1_ps(x[j]);
        const float* col = m + size_t(j) * rows;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(xj, _mm256_loadu_ps(col + 8 * r)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + 8 * r, acc[r]);
}

void matvec(const float* m, int rows, int cols, const float* x, float* y) {
    int i = 0;
    for (; i + 64 <= rows; i += 64) matvec_rows<8>(m + i, rows, cols, x, y + i);
    for (; i + 32 <= rows; i += 32) matvec_rows<4>(m + i, rows, cols, x, y + i);
    for (; i + 16 <= rows; i += 16) matvec_rows<2>(m + i, rows, cols, x, y + i);
    for (; i + 8 <= rows; i += 8) matvec_rows<1>(m + i, rows, cols, x, y + i);
    for (; i < rows; ++i) {  // rows % 16 == 0 by contract; kept for safety
        float s = 0.0f;
        for (int j = 0; j < cols; ++j) s += x[j] * m[size_t(j) * rows + i];
        y[i] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization: the reference's branchless binary search, 8 lanes at a time. The compare
// x >= bound is false for NaN, as in the reference.

inline void store_codes8(uint8_t* out, __m256i c) {
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64((__m128i*)out, _mm_packus_epi16(w, w));
}

inline __m256i ge_mask(__m256 v, __m256 b) { return _mm256_castps_si256(_mm256_cmp_ps(v, b, _CMP_GE_OQ)); }

// Tables pre-shifted by step - 1 for each level after the first, so the boundary of index
// c + step - 1 is a permute by c itself (permutevar8x32 uses the low 3 bits).
template <int BITS>
inline __m256i search_small(__m256 v, const __m256* t, __m256 top) {  // BITS <= 3
    constexpr int first = 1 << (BITS - 1);
    __m256i c = _mm256_and_si256(ge_mask(v, top), _mm256_set1_epi32(first));
#pragma GCC unroll 4
    for (int j = 0; j < BITS - 1; ++j)  // step = first >> (j + 1)
        c = _mm256_or_si256(c, _mm256_and_si256(ge_mask(v, _mm256_permutevar8x32_ps(t[j], c)),
                                                _mm256_set1_epi32(first >> (j + 1))));
    return c;
}

// Four bits: the first compare (against bounds[7]) decides which half of the table every later
// index falls in, so that compare's mask selects between the two 8-entry tables (each
// pre-shifted by step - 1 for its level).
struct Search4 {
    __m256 l4, h4, l2, h2, l1, h1, top;
    inline __m256i operator()(__m256 v) const {
        const __m256 hi = _mm256_cmp_ps(v, top, _CMP_GE_OQ);
        __m256i c = _mm256_and_si256(_mm256_castps_si256(hi), _mm256_set1_epi32(8));
        __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(l4, c), _mm256_permutevar8x32_ps(h4, c), hi);
        c = _mm256_or_si256(c, _mm256_and_si256(ge_mask(v, b), _mm256_set1_epi32(4)));
        b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(l2, c), _mm256_permutevar8x32_ps(h2, c), hi);
        c = _mm256_or_si256(c, _mm256_and_si256(ge_mask(v, b), _mm256_set1_epi32(2)));
        b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(l1, c), _mm256_permutevar8x32_ps(h1, c), hi);
        return _mm256_sub_epi32(c, ge_mask(v, b));  // + 1 where v >= b
    }
};

// Five to eight bits. The search's first bits-4 levels only ever read bounds[16k + 15] (their
// index c + step - 1 has c a multiple of 2*step >= 32), so they are a binary search over that node
// table of at most 16 entries (two registers), done with permutes; the last four levels gather.
// Four registers go through the levels side by side, so the gathers' latencies overlap.
void quantize_nodes(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    const int levels = bits - 4, nodes = (1 << levels) - 1;
    const __m256i k0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), k8 = _mm256_add_epi32(k0, _mm256_set1_epi32(8));
    const __m256 lo = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), bounds,
                                               _mm256_add_epi32(_mm256_slli_epi32(k0, 4), _mm256_set1_epi32(15)),
                                               _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nodes), k0)), 4);
    const __m256 hi = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), bounds,
                                               _mm256_add_epi32(_mm256_slli_epi32(k8, 4), _mm256_set1_epi32(15)),
                                               _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nodes), k8)), 4);
    constexpr int G = 4;
    for (int i = 0; i < n; i += 8 * G) {
        alignas(32) float t[8 * G];
        const float* src = x + i;
        if (i + 8 * G > n) {  // last, partial round: zero-padded copy
            std::memset(t, 0, sizeof(t));
            std::memcpy(t, x + i, sizeof(float) * size_t(n - i));
            src = t;
        }
        __m256 v[G];
        __m256i c[G];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            v[g] = _mm256_loadu_ps(src + 8 * g);
            c[g] = _mm256_setzero_si256();
        }
        for (int step = 1 << (levels - 1); step >= 1; step >>= 1)
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                const __m256i idx = _mm256_add_epi32(c[g], _mm256_set1_epi32(step - 1));
                const __m256 b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                                  _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
                c[g] = _mm256_add_epi32(c[g], _mm256_and_si256(ge_mask(v[g], b), _mm256_set1_epi32(step)));
            }
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) c[g] = _mm256_slli_epi32(c[g], 4);
#pragma GCC unroll 4
        for (int step = 8; step >= 1; step >>= 1)
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                const __m256 b = _mm256_i32gather_ps(bounds, _mm256_add_epi32(c[g], _mm256_set1_epi32(step - 1)), 4);
                c[g] = _mm256_add_epi32(c[g], _mm256_and_si256(ge_mask(v[g], b), _mm256_set1_epi32(step)));
            }
        // lane 0: c0..c3 elements 0-3, lane 1: elements 4-7 (4 bytes each); reorder the dwords.
        const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]), _mm256_packus_epi32(c[2], c[3]));
        const __m256i out = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if (i + 8 * G <= n) {
            _mm256_storeu_si256((__m256i*)(codes + i), out);
        } else {
            alignas(32) uint8_t tmp[32];
            _mm256_store_si256((__m256i*)tmp, out);
            std::memcpy(codes + i, tmp, size_t(n - i));
        }
    }
}

template <class Search>
inline void quantize_loop(const float* x, int n, uint8_t* codes, const Search& search) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {  // one 32-byte store, so a following wide load can forward from it
        const __m256i c0 = search(_mm256_loadu_ps(x + i)), c1 = search(_mm256_loadu_ps(x + i + 8));
        const __m256i c2 = search(_mm256_loadu_ps(x + i + 16)), c3 = search(_mm256_loadu_ps(x + i + 24));
        // lane 0: c0..c3 elements 0-3, lane 1: elements 4-7 (4 bytes each); reorder the dwords.
        const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
        _mm256_storeu_si256((__m256i*)(codes + i), _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    for (; i + 16 <= n; i += 16) {
        const __m256i c0 = search(_mm256_loadu_ps(x + i)), c1 = search(_mm256_loadu_ps(x + i + 8));
        const __m256i w = _mm256_packus_epi32(c0, c1);  // words: c0[0..3] c1[0..3] | c0[4..7] c1[4..7]
        const __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08);
        _mm_storeu_si128((__m128i*)(codes + i), _mm256_castsi256_si128(_mm256_shuffle_epi8(
                                                    b, _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15,
                                                                        0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15))));
    }
    for (; i + 8 <= n; i += 8) store_codes8(codes + i, search(_mm256_loadu_ps(x + i)));
    if (i < n) {
        alignas(32) float t[8] = {};
        std::memcpy(t, x + i, sizeof(float) * size_t(n - i));
        uint8_t c[8];
        store_codes8(c, search(_mm256_load_ps(t)));
        std::memcpy(codes + i, c, size_t(n - i));
    }
}

// Up to 8 floats from p, lanes >= valid zero (and never read).
inline __m256 load_upto8(const float* p, int valid) {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_ps(p, live);
}

template <int BITS>
void quantize_small(const float* x, int n, const float* bounds, uint8_t* codes) {
    constexpr int entries = 1 << BITS;
    __m256 t[BITS > 1 ? BITS - 1 : 1];
    for (int j = 0; j < BITS - 1; ++j) {
        const int step = (1 << (BITS - 1)) >> (j + 1);
        t[j] = load_upto8(bounds + step - 1, entries - step + 1);
    }
    const __m256 top = _mm256_set1_ps(bounds[(1 << (BITS - 1)) - 1]);
    quantize_loop(x, n, codes, [&](__m256 v) { return search_small<BITS>(v, t, top); });
}

void quantize(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    switch (bits) {
        case 1: quantize_small<1>(x, n, bounds, codes); break;
        case 2: quantize_small<2>(x, n, bounds, codes); break;
        case 3: quantize_small<3>(x, n, bounds, codes); break;
        case 4: {  // bounds has 16 entries
            const Search4 s4{_mm256_loadu_ps(bounds + 3), load_upto8(bounds + 11, 5), _mm256_loadu_ps(bounds + 1),
                             load_upto8(bounds + 9, 7),   _mm256_loadu_ps(bounds),   _mm256_loadu_ps(bounds + 8),
                             _mm256_set1_ps(bounds[7])};
            quantize_loop(x, n, codes, s4);
            break;
        }
        default: quantize_nodes(x, n, bounds, bits, codes);
    }
}

// ---------------------------------------------------------------------------------------------
// Look-up: exact, reads only the table entries the codes name.

uint32_t max_code(const uint8_t* codes, int n) {
    __m256i m = _mm256_setzero_si256();
    int i = 0;
    for (; i + 32 <= n; i += 32) m = _mm256_max_epu8(m, _mm256_loadu_si256((const __m256i*)(codes + i)));
    __m128i q = _mm_max_epu8(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
    uint32_t mx = uint32_t(_mm_cvtsi128_si32(q) & 0xff);
    for (; i < n; ++i) mx = codes[i] > mx ? codes[i] : mx;
    return mx;
}

inline __m256i load_idx8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }

inline __m256 load_table8(const float* table, uint32_t entries) {  // entries <= 8, rest zero
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(entries)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_ps(table, live);
}

void lookup(const uint8_t* codes, int n, const float* table, float* out) {
    if (n <= 0) return;
    const uint32_t mx = max_code(codes, n);
    int i = 0;
    if (mx < 8) {
        const __m256 t = load_table8(table, mx + 1);
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_permutevar8x32_ps(t, load_idx8(codes + i)));
    } else if (mx < 16) {
        const __m256 t0 = _mm256_loadu_ps(table), t1 = load_table8(table + 8, mx - 7);
        for (; i + 8 <= n; i += 8) {
            const __m256i idx = load_idx8(codes + i);
            const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
            _mm256_storeu_ps(out + i, _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx), sel));
        }
    } else {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_i32gather_ps(table, load_idx8(codes + i), 4));
    }
    for (; i < n; ++i) out[i] = table[codes[i]];
}

// The `len` bytes at p (len <= 16, zero-extended), where p sits `off` bytes into its vector:
// without touching memory outside [p - off, p + len). When the vector has 16 bytes up to p + len,
// one overlapping load and a pshufb; otherwise a byte loop.
inline __m128i load_upto16(const uint8_t* p, size_t len, size_t off) {
    alignas(16) static const uint8_t window[32] = {0,    1,    2,    3,    4,    5,    6,    7,    8,    9,    10,
                                                   11,   12,   13,   14,   15,   0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                                   0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    if (len >= 16) return _mm_loadu_si128((const __m128i*)p);
    if (off + len >= 16) {
        const __m128i raw = _mm_loadu_si128((const __m128i*)(p + len - 16));
        return _mm_shuffle_epi8(raw, _mm_loadu_si128((const __m128i*)(window + 16 - len)));
    }
    alignas(16) uint8_t buf[16] = {};
    for (size_t i = 0; i < len; ++i) buf[i] = p[i];
    return _mm_load_si128((const __m128i*)buf);
}

// ---------------------------------------------------------------------------------------------
// Packing (layout of packing.hpp). SIMD for 1, 2, 4, 8 bits; SWAR for the others.

template <int B>
inline uint64_t swar_pack8(uint64_t w) {
    constexpr uint64_t m1 = 0x0101010101010101ull * ((1u << B) - 1u);
    w &= m1;
    w = (w & 0x00ff00ff00ff00ffull) | ((w >> 8) & 0x00ff00ff00ff00ffull) << B;
    w = (w & 0x0000ffff0000ffffull) | ((w >> 16) & 0x0000ffff0000ffffull) << (2 * B);
    w = (w & 0x00000000ffffffffull) | (w >> 32) << (4 * B);
    return w;
}
// Whole 64-bit stores wherever the stream has room for them (the next group overwrites the
// excess); exact-width stores for the last groups, the portable code for the last codes.
template <int B>
void pack_swar(const uint8_t* codes, int n, uint8_t* out) {
    const size_t nbytes = packed_bytes(size_t(n), B);
    int i = 0;
    size_t o = 0;
    for (; i + 8 <= n; i += 8, o += B) {
        uint64_t w;
        std::memcpy(&w, codes + i, 8);
        w = swar_pack8<B>(w);
        if (o + 8 <= nbytes) std::memcpy(out + o, &w, 8);
        else std::memcpy(out + o, &w, B);  // little-endian target
    }
    if (i < n) pack_codes(codes + i, size_t(n - i), B, out + o);
}

// pshufb / shift patterns per width, built at compile time (built on the stack, they would be
// reloaded as vectors right after byte stores: a store-forwarding stall per call).
struct Split16Tables {
    alignas(32) uint8_t shuf[9][2][32];
    alignas(32) uint32_t shifts[9][2][8];
};
constexpr Split16Tables make_split16() {
    Split16Tables t{};
    for (int bits = 1; bits <= 8; ++bits)
        for (int r = 0; r < 2; ++r)
            for (int lane = 0; lane < 2; ++lane)
                for (int slot = 0; slot < 4; ++slot) {
                    const int k = 8 * lane + 4 * r + slot, s = bits * k;
                    t.shuf[bits][r][16 * lane + 4 * slot + 0] = uint8_t(s / 8);
                    t.shuf[bits][r][16 * lane + 4 * slot + 1] = s / 8 + 1 < 16 ? uint8_t(s / 8 + 1) : 0x80;
                    t.shuf[bits][r][16 * lane + 4 * slot + 2] = 0x80;
                    t.shuf[bits][r][16 * lane + 4 * slot + 3] = 0x80;
                    t.shifts[bits][r][4 * lane + slot] = uint32_t(s % 8);
                }
    return t;
}
alignas(32) constexpr Split16Tables kSplit16 = make_split16();

// Widths 3, 5, 6, 7: 16 codes span 2*bits bytes, read with one 16-byte load; each dword lane
// picks the two bytes that hold its code (pshufb on a broadcast), shifts it down and masks it.
// Register 0 holds codes 0-3 | 8-11, register 1 codes 4-7 | 12-15, so two packs give 0..15.
void unpack_fields(const uint8_t* in, int n, int bits, uint8_t* codes) {
    const __m256i sh0 = _mm256_load_si256((const __m256i*)kSplit16.shuf[bits][0]);
    const __m256i sh1 = _mm256_load_si256((const __m256i*)kSplit16.shuf[bits][1]);
    const __m256i sv0 = _mm256_load_si256((const __m256i*)kSplit16.shifts[bits][0]);
    const __m256i sv1 = _mm256_load_si256((const __m256i*)kSplit16.shifts[bits][1]);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    const size_t nbytes = packed_bytes(size_t(n), bits), gbytes = size_t(2 * bits);
    int g = 0;
    for (; 16 * g + 16 <= n; ++g) {
        const size_t off = gbytes * size_t(g);
        const __m256i b = _mm256_broadcastsi128_si256(load_upto16(in + off, nbytes - off, off));
        const __m256i x0 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh0), sv0), mask);
        const __m256i x1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh1), sv1), mask);
        const __m256i w = _mm256_packus_epi32(x0, x1);  // words: codes 0-7 | 8-15
        const __m256i c = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08);
        _mm_storeu_si128((__m128i*)(codes + 16 * g), _mm256_castsi256_si128(c));
    }
    if (16 * g < n) unpack_codes(in + gbytes * size_t(g), size_t(n - 16 * g), bits, codes + 16 * g);
}

void pack(const uint8_t* codes, int n, int bits, uint8_t* out) {
    int i = 0;
    switch (bits) {
        case 8: std::memcpy(out, codes, size_t(n)); return;
        case 4: {
            const __m256i m = _mm256_set1_epi8(0x0f), mul = _mm256_set1_epi16(0x1001);
            for (; i + 32 <= n; i += 32) {
                const __m256i c = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(codes + i)), m);
                const __m256i w = _mm256_maddubs_epi16(c, mul);  // c0 + 16 c1 per word
                const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
                _mm_storeu_si128((__m128i*)(out + i / 2), b);
            }
            break;
        }
        case 2: {
            const __m256i m = _mm256_set1_epi8(0x03), mul1 = _mm256_set1_epi16(0x0401), mul2 = _mm256_set1_epi32(0x00100001);
            for (; i + 32 <= n; i += 32) {
                const __m256i c = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(codes + i)), m);
                const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(c, mul1), mul2);  // one byte per dword
                const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
                _mm_storel_epi64((__m128i*)(out + i / 4), _mm_packus_epi16(w, w));
            }
            break;
        }
        case 1:
            for (; i + 32 <= n; i += 32) {
                const __m256i c = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i*)(codes + i)), 7);
                const uint32_t b = uint32_t(_mm256_movemask_epi8(c));
                std::memcpy(out + i / 8, &b, 4);
            }
            break;
        case 3: pack_swar<3>(codes, n, out); return;
        case 5: pack_swar<5>(codes, n, out); return;
        case 6: pack_swar<6>(codes, n, out); return;
        case 7: pack_swar<7>(codes, n, out); return;
        default: pack_codes(codes, size_t(n), bits, out); return;
    }
    if (i < n) pack_codes(codes + i, size_t(n - i), bits, out + size_t(i) * size_t(bits) / 8);
}

void unpack(const uint8_t* in, int n, int bits, uint8_t* codes) {
    int i = 0;
    switch (bits) {
        case 8: std::memcpy(codes, in, size_t(n)); return;
        case 4: {
            const __m256i lo = _mm256_set1_epi16(0x000f), hi = _mm256_set1_epi16(0x0f00);
            for (; i + 32 <= n; i += 32) {
                const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(in + i / 2)));
                const __m256i c = _mm256_or_si256(_mm256_and_si256(x, lo), _mm256_and_si256(_mm256_slli_epi16(x, 4), hi));
                _mm256_storeu_si256((__m256i*)(codes + i), c);
            }
            break;
        }
        case 2: {
            const __m256i m = _mm256_set1_epi8(0x03);
            for (; i + 32 <= n; i += 32) {
                const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(in + i / 4)));
                __m256i c = _mm256_or_si256(_mm256_or_si256(x, _mm256_slli_epi32(x, 6)),
                                            _mm256_or_si256(_mm256_slli_epi32(x, 12), _mm256_slli_epi32(x, 18)));
                _mm256_storeu_si256((__m256i*)(codes + i), _mm256_and_si256(c, m));
            }
            break;
        }
        case 1: {
            const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
            const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
            const __m256i one = _mm256_set1_epi8(1);
            for (; i + 32 <= n; i += 32) {
                uint32_t w;
                std::memcpy(&w, in + i / 8, 4);
                const __m256i x = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(w)), rep), bit);
                _mm256_storeu_si256((__m256i*)(codes + i), _mm256_min_epu8(x, one));
            }
            break;
        }
        case 3:
        case 5:
        case 6:
        case 7: unpack_fields(in, n, bits, codes); return;
        default: unpack_codes(in, size_t(n), bits, codes); return;
    }
    if (i < n) unpack_codes(in + size_t(i) * size_t(bits) / 8, size_t(n - i), bits, codes + i);
}

// ---------------------------------------------------------------------------------------------
// Scores against packed codes: fused unpack + centroid look-up + multiply-accumulate.
// The query is first copied into a layout that matches how codes come out of the bytes.

constexpr int kMaxDotDim = 1024;

inline float hsum(__m256 v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

// The `len` bytes at p (len <= 8, zero-extended), where p sits `off` bytes into its vector:
// without touching memory outside [p - off, p + len). When the vector has 8 bytes up to p + len,
// one overlapping load and a shift; otherwise a byte loop.
inline uint64_t load_upto8(const uint8_t* p, size_t len, size_t off = 0) {
    uint64_t w = 0;
    if (len >= 8) {
        std::memcpy(&w, p, 8);
    } else if (off + len >= 8) {
        std::memcpy(&w, p + len - 8, 8);
        w >>= 8 * (8 - len);
    } else {
        for (size_t i = 0; i < len; ++i) w |= uint64_t(p[i]) << (8 * i);
    }
    return w;
}


// Four-bit codes: 8 bytes = 16 codes; low nibbles are the even codes, high nibbles the odd ones.
// Bit 3 of a code picks the upper half of the table.
void dot4(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int chunks = (n + 15) / 16;
    for (int c = 0; c < chunks; ++c)
        for (int k = 0; k < 8; ++k) {
            const int e = 16 * c + 2 * k;
            qp[16 * c + k] = e < n ? q[e] : 0.0f;
            qp[16 * c + 8 + k] = e + 1 < n ? q[e + 1] : 0.0f;
        }
    const __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
    const size_t nbytes = packed_bytes(size_t(n), 4);
    const int full = int(nbytes / 8);
    auto step = [&](__m256i b, const float* qc, __m256& a0, __m256& a1) {
        const __m256 e = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, b), _mm256_permutevar8x32_ps(thi, b),
                                          _mm256_castsi256_ps(_mm256_slli_epi32(b, 28)));
        const __m256i bo = _mm256_srli_epi32(b, 4);
        const __m256 o = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, bo), _mm256_permutevar8x32_ps(thi, bo),
                                          _mm256_castsi256_ps(_mm256_slli_epi32(b, 24)));
        a0 = _mm256_fmadd_ps(e, _mm256_load_ps(qc), a0);
        a1 = _mm256_fmadd_ps(o, _mm256_load_ps(qc + 8), a1);
    };
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int c = 0;
        for (; c + 2 <= full; c += 2) {
            step(load_idx8(p + 8 * c), qp + 16 * c, a0, a1);
            step(load_idx8(p + 8 * c + 8), qp + 16 * c + 16, a2, a3);
        }
        for (; c < chunks; ++c) {
            const uint64_t w = load_upto8(p + 8 * c, nbytes - 8 * size_t(c), 8 * size_t(c));
            step(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(w))), qp + 16 * c, a0, a1);
        }
        out[v] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

// Two-bit codes: 8 bytes = 32 codes; phase j (0..3) holds codes 4k + j. The 4-entry table is
// stored twice, so index bit 2 does not matter.
void dot2(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int chunks = (n + 31) / 32;
    for (int c = 0; c < chunks; ++c)
        for (int j = 0; j < 4; ++j)
            for (int k = 0; k < 8; ++k) {
                const int e = 32 * c + 4 * k + j;
                qp[32 * c + 8 * j + k] = e < n ? q[e] : 0.0f;
            }
    const __m128 t4 = _mm_loadu_ps(table);
    const __m256 t = _mm256_set_m128(t4, t4);
    const size_t nbytes = packed_bytes(size_t(n), 2);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int c = 0; c < chunks; ++c) {
            const uint64_t w = load_upto8(p + 8 * c, nbytes - 8 * size_t(c), 8 * size_t(c));
            const __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(w)));
            const float* qc = qp + 32 * c;
            a0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, b), _mm256_load_ps(qc), a0);
            a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srli_epi32(b, 2)), _mm256_load_ps(qc + 8), a1);
            a0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srli_epi32(b, 4)), _mm256_load_ps(qc + 16), a0);
            a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srli_epi32(b, 6)), _mm256_load_ps(qc + 24), a1);
        }
        out[v] = hsum(_mm256_add_ps(a0, a1));
    }
}

// One-bit codes: 4 bytes = 32 codes; each code's bit is shifted to its lane's sign bit, which
// picks table[1] over table[0].
void dot1(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int chunks = (n + 31) / 32;
    for (int i = 0; i < 32 * chunks; ++i) qp[i] = i < n ? q[i] : 0.0f;
    const __m256 t0 = _mm256_set1_ps(table[0]), t1 = _mm256_set1_ps(table[1]);
    const __m256i s0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i s1 = _mm256_sub_epi32(s0, _mm256_set1_epi32(8)), s2 = _mm256_sub_epi32(s0, _mm256_set1_epi32(16)),
                  s3 = _mm256_sub_epi32(s0, _mm256_set1_epi32(24));
    const size_t nbytes = packed_bytes(size_t(n), 1);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int c = 0; c < chunks; ++c) {
            const size_t left = nbytes - 4 * size_t(c);
            uint32_t w;
            if (left >= 4) std::memcpy(&w, p + 4 * c, 4);
            else w = uint32_t(load_upto8(p + 4 * c, left, 4 * size_t(c)));
            const __m256i b = _mm256_set1_epi32(int(w));
            const float* qc = qp + 32 * c;
            a0 = _mm256_fmadd_ps(_mm256_blendv_ps(t0, t1, _mm256_castsi256_ps(_mm256_sllv_epi32(b, s0))), _mm256_load_ps(qc), a0);
            a1 = _mm256_fmadd_ps(_mm256_blendv_ps(t0, t1, _mm256_castsi256_ps(_mm256_sllv_epi32(b, s1))), _mm256_load_ps(qc + 8), a1);
            a0 = _mm256_fmadd_ps(_mm256_blendv_ps(t0, t1, _mm256_castsi256_ps(_mm256_sllv_epi32(b, s2))), _mm256_load_ps(qc + 16), a0);
            a1 = _mm256_fmadd_ps(_mm256_blendv_ps(t0, t1, _mm256_castsi256_ps(_mm256_sllv_epi32(b, s3))), _mm256_load_ps(qc + 24), a1);
        }
        out[v] = hsum(_mm256_add_ps(a0, a1));
    }
}

// Eight-bit codes: one byte per code, gathered from the table.
void dot8(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int groups = (n + 7) / 8;
    for (int i = 0; i < 8 * groups; ++i) qp[i] = i < n ? q[i] : 0.0f;
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int g = 0;
        for (; 8 * g + 16 <= n; g += 2) {
            a0 = _mm256_fmadd_ps(_mm256_i32gather_ps(table, load_idx8(p + 8 * g), 4), _mm256_load_ps(qp + 8 * g), a0);
            a1 = _mm256_fmadd_ps(_mm256_i32gather_ps(table, load_idx8(p + 8 * g + 8), 4), _mm256_load_ps(qp + 8 * g + 8), a1);
        }
        for (; g < groups; ++g) {
            const uint64_t w = load_upto8(p + 8 * g, size_t(n - 8 * g), 8 * size_t(g));  // codes beyond n read as 0, q there is 0
            a0 = _mm256_fmadd_ps(_mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(w))), 4),
                                 _mm256_load_ps(qp + 8 * g), a0);
        }
        out[v] = hsum(_mm256_add_ps(a0, a1));
    }
}

// Three-bit codes: 12 bytes = 32 codes, read with one 16-byte load; group g (codes 8g..8g+7)
// sits in bytes 3g..3g+2, and each dword lane picks its two bytes with pshufb, then shifts.
void dot3(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int chunks = (n + 31) / 32;
    for (int i = 0; i < 32 * chunks; ++i) qp[i] = i < n ? q[i] : 0.0f;
    alignas(32) uint8_t shuf[4][32];
    alignas(32) uint32_t shifts[8];
    for (int g = 0; g < 4; ++g)
        for (int k = 0; k < 8; ++k) {
            const int s = 3 * k, lane = k / 4, slot = k % 4;
            shuf[g][16 * lane + 4 * slot + 0] = uint8_t(3 * g + s / 8);
            shuf[g][16 * lane + 4 * slot + 1] = uint8_t(3 * g + s / 8 + 1);
            shuf[g][16 * lane + 4 * slot + 2] = 0x80;
            shuf[g][16 * lane + 4 * slot + 3] = 0x80;
            shifts[k] = uint32_t(s % 8);
        }
    const __m256i sh0 = _mm256_load_si256((const __m256i*)shuf[0]), sh1 = _mm256_load_si256((const __m256i*)shuf[1]),
                  sh2 = _mm256_load_si256((const __m256i*)shuf[2]), sh3 = _mm256_load_si256((const __m256i*)shuf[3]);
    const __m256i sv = _mm256_load_si256((const __m256i*)shifts);
    const __m256 t = _mm256_loadu_ps(table);  // 8 entries; permutevar8x32 uses the low 3 index bits
    const size_t nbytes = packed_bytes(size_t(n), 3);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int c = 0; c < chunks; ++c) {
            const size_t off = 12 * size_t(c);
            const __m256i b = _mm256_broadcastsi128_si256(load_upto16(p + off, nbytes - off, off));
            const float* qc = qp + 32 * c;
            a0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh0), sv)), _mm256_load_ps(qc), a0);
            a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh1), sv)), _mm256_load_ps(qc + 8), a1);
            a0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh2), sv)), _mm256_load_ps(qc + 16), a0);
            a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(t, _mm256_srlv_epi32(_mm256_shuffle_epi8(b, sh3), sv)), _mm256_load_ps(qc + 24), a1);
        }
        out[v] = hsum(_mm256_add_ps(a0, a1));
    }
}

// Any width (3, 5, 6, 7): 8 codes span `bits` bytes; each dword lane picks the two bytes that
// hold its code (pshufb on a broadcast), then shifts it down.
void dot_generic(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
                 size_t count, float* out) {
    alignas(32) float qp[kMaxDotDim + 32];
    const int groups = (n + 7) / 8;
    for (int i = 0; i < 8 * groups; ++i) qp[i] = i < n ? q[i] : 0.0f;
    alignas(32) uint8_t shuf[32];
    alignas(32) uint32_t shifts[8];
    for (int k = 0; k < 8; ++k) {
        const int s = bits * k, lane = k / 4, slot = k % 4;
        shuf[16 * lane + 4 * slot + 0] = uint8_t(s / 8);
        shuf[16 * lane + 4 * slot + 1] = uint8_t(s / 8 + 1);
        shuf[16 * lane + 4 * slot + 2] = 0x80;
        shuf[16 * lane + 4 * slot + 3] = 0x80;
        shifts[k] = uint32_t(s % 8);
    }
    const __m256i sh = _mm256_load_si256((const __m256i*)shuf), sv = _mm256_load_si256((const __m256i*)shifts);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    const size_t nbytes = packed_bytes(size_t(n), bits);
    const __m256 t = bits <= 3 ? load_table8(table, 1u << bits) : _mm256_loadu_ps(table);
    // Five bits: four 8-entry tables, picked by index bits 3 and 4 (moved to the sign bit).
    const __m256 t1 = bits == 5 ? _mm256_loadu_ps(table + 8) : t, t2 = bits == 5 ? _mm256_loadu_ps(table + 16) : t,
                 t3 = bits == 5 ? _mm256_loadu_ps(table + 24) : t;
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m256 a0 = _mm256_setzero_ps();
        for (int g = 0; g < groups; ++g) {
            const size_t off = size_t(bits) * size_t(g);
            const __m128i raw = _mm_cvtsi64_si128(int64_t(load_upto8(p + off, nbytes - off, off)));
            const __m256i idx = _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw), sh), sv), mask);
            __m256 tv;
            if (bits <= 3) {
                tv = _mm256_permutevar8x32_ps(t, idx);
            } else if (bits == 5) {
                const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
                const __m256 lo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t, idx), _mm256_permutevar8x32_ps(t1, idx), b3);
                const __m256 hi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t2, idx), _mm256_permutevar8x32_ps(t3, idx), b3);
                tv = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
            } else {
                tv = _mm256_i32gather_ps(table, idx, 4);
            }
            a0 = _mm256_fmadd_ps(tv, _mm256_load_ps(qp + 8 * g), a0);
        }
        out[v] = hsum(a0);
    }
}

void dot_codes(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
               size_t count, float* out) {
    if (n > kMaxDotDim) {
        scalar_kernels().dot_codes(q, n, table, bits, packed, stride, count, out);
        return;
    }
    switch (bits) {
        case 4: dot4(q, n, table, packed, stride, count, out); break;
        case 3: dot3(q, n, table, packed, stride, count, out); break;
        case 2: dot2(q, n, table, packed, stride, count, out); break;
        case 1: dot1(q, n, table, packed, stride, count, out); break;
        case 8: dot8(q, n, table, packed, stride, count, out); break;
        default: dot_generic(q, n, table, bits, packed, stride, count, out); break;
    }
}

// ---------------------------------------------------------------------------------------------
// Half precision. F16C rounds to nearest even like float_to_half; only NaNs differ (F16C keeps
// payload bits), so NaN lanes are patched to the reference's 0x7e00 | sign.

inline __m128i to_half8(__m256 v) {
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (_mm256_movemask_ps(nan)) {
        const __m256i hi = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
        const __m128i hw = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
        const __m128i fix = _mm_or_si128(_mm_and_si128(hw, _mm_set1_epi16(int16_t(0x8000))), _mm_set1_epi16(0x7e00));
        const __m256i nm = _mm256_castps_si256(nan);
        const __m128i m16 = _mm_packs_epi32(_mm256_castsi256_si128(nm), _mm256_extracti128_si256(nm, 1));
        h = _mm_blendv_epi8(h, fix, m16);
    }
    return h;
}

void to_half(const float* x, size_t n, uint16_t* out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i*)(out + i), to_half8(_mm256_loadu_ps(x + i)));
    for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

// F16C quiets signaling NaNs; the reference keeps their bits, so those lanes are rebuilt.
inline __m256 from_half8(__m128i h) {
    __m256 f = _mm256_cvtph_ps(h);
    const __m256i w = _mm256_cvtepu16_epi32(h);
    const __m256i e = _mm256_and_si256(w, _mm256_set1_epi32(0x7fff));
    const __m256i snan = _mm256_and_si256(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(0x7c00)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7e00), e));
    if (!_mm256_testz_si256(snan, snan)) {
        const __m256i bitsv = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                                              _mm256_or_si256(_mm256_slli_epi32(e, 13), _mm256_set1_epi32(0x70000000)));
        f = _mm256_blendv_ps(f, _mm256_castsi256_ps(bitsv), _mm256_castsi256_ps(snan));
    }
    return f;
}

void from_half(const uint16_t* h, size_t n, float* out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, from_half8(_mm_loadu_si128((const __m128i*)(h + i))));
    for (; i < n; ++i) out[i] = half_to_float(h[i]);
}

}  // namespace

const KernelTable& avx2_kernels() {
    static const KernelTable table = {"avx2",   max_abs, sum_squares, scale,     flip_signs, fwht,     matvec,
                                      quantize, lookup,  pack,        unpack,    dot_codes,  to_half,  from_half};
    return table;
}

}  // namespace tqkv::detail
