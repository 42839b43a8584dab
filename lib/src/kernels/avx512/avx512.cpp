// AVX-512 kernels (F, BW, VL, DQ; plus AVX2/FMA/F16C). Everything that decides a code reproduces
// the scalar reference bit for bit (see kernels.hpp): element-wise operations in any order, the
// canonical 16-lane reduction (one zmm accumulator), matvec accumulated column by column, and no
// fused multiply-adds outside dot_codes.
//
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*() (GCC bug
// 105593); silence it for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/packing.hpp"

namespace tqkv::detail {
namespace {

inline __mmask16 tail_mask16(int r) { return __mmask16((1u << r) - 1u); }  // r in [0, 16]
inline __mmask16 tail_mask16(size_t r) { return __mmask16((1u << r) - 1u); }
inline __mmask64 tail_mask64(size_t r) { return r >= 64 ? ~__mmask64(0) : (__mmask64(1) << r) - 1; }

// ---------------------------------------------------------------------------------------------
// Reductions and element-wise operations.

float max_abs(const float* x, int n) {
    __m512 m = _mm512_setzero_ps(), m1 = m, m2 = m, m3 = m;
    int i = 0;
    // max(|x|, m) returns m when |x| is NaN, like std::fmax in the reference.
    for (; i + 64 <= n; i += 64) {
        m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
        m1 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 16)), m1);
        m2 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 32)), m2);
        m3 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 48)), m3);
    }
    m = _mm512_max_ps(_mm512_max_ps(m, m1), _mm512_max_ps(m2, m3));
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
    if (i < n) m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask16(n - i), x + i)), m);
    // All lanes are non-negative and not NaN: max is exact in any order.
    __m256 h = _mm256_max_ps(_mm512_castps512_ps256(m), _mm512_extractf32x8_ps(m, 1));
    __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

float sum_squares(const float* x, int n) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
    }
    if (i < n) {
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask16(n - i), x + i);
        acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
    }
    // Fold l += l+8, l += l+4, l += l+2, l += l+1.
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

void scale(float* x, int n, float s) {
    const __m512 sv = _mm512_set1_ps(s);
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), sv));
        _mm512_storeu_ps(x + i + 16, _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), sv));
        _mm512_storeu_ps(x + i + 32, _mm512_mul_ps(_mm512_loadu_ps(x + i + 32), sv));
        _mm512_storeu_ps(x + i + 48, _mm512_mul_ps(_mm512_loadu_ps(x + i + 48), sv));
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), sv));
    if (i < n) {
        const __mmask16 k = tail_mask16(n - i);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), sv));
    }
}

void flip_signs(float* x, const uint32_t* mask, int n) {
    const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const uint32_t w = mask[i / 32];
        __m512i a = _mm512_castps_si512(_mm512_loadu_ps(x + i));
        __m512i b = _mm512_castps_si512(_mm512_loadu_ps(x + i + 16));
        a = _mm512_mask_xor_epi32(a, __mmask16(w), a, sign);
        b = _mm512_mask_xor_epi32(b, __mmask16(w >> 16), b, sign);
        _mm512_storeu_ps(x + i, _mm512_castsi512_ps(a));
        _mm512_storeu_ps(x + i + 16, _mm512_castsi512_ps(b));
    }
    for (; i < n; i += 16) {
        const int r = n - i < 16 ? n - i : 16;
        const __mmask16 k = __mmask16((mask[i / 32] >> (i % 32)) & ((1u << r) - 1u));
        __m512i a = _mm512_castps_si512(_mm512_maskz_loadu_ps(tail_mask16(r), x + i));
        a = _mm512_mask_xor_epi32(a, k, a, sign);
        _mm512_mask_storeu_ps(x + i, tail_mask16(r), _mm512_castsi512_ps(a));
    }
}

// ---------------------------------------------------------------------------------------------
// Walsh–Hadamard transform.

// One butterfly stage of stride H < 16 inside a register: lane l with (l & H) == 0 gets
// x[l] + x[l+H], lane l+H gets x[l] - x[l+H].
template <int H>
inline __m512 stage_in(__m512 v) {
    __m512 p;
    __mmask16 hi;
    if constexpr (H == 1) {
        p = _mm512_permute_ps(v, 0xB1);
        hi = 0xAAAA;
    } else if constexpr (H == 2) {
        p = _mm512_permute_ps(v, 0x4E);
        hi = 0xCCCC;
    } else if constexpr (H == 4) {
        p = _mm512_shuffle_f32x4(v, v, 0xB1);
        hi = 0xF0F0;
    } else {
        p = _mm512_shuffle_f32x4(v, v, 0x4E);
        hi = 0xFF00;
    }
    // low lanes a + b, high lanes a - b; computed side by side (shorter chain than a masked sub
    // that merges into the sum)
    return _mm512_mask_blend_ps(hi, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
}

inline __m512 stages_below(__m512 v, int block) {  // strides 1 .. min(block, 16)/2
    if (block > 1) v = stage_in<1>(v);
    if (block > 2) v = stage_in<2>(v);
    if (block > 4) v = stage_in<4>(v);
    if (block > 8) v = stage_in<8>(v);
    return v;
}

// Register strides H, 2H, ... < R of a transform held in v[0, R).
template <int R, int H>
inline void cross_stages(__m512 (&v)[R]) {
    if constexpr (H < R) {
#pragma GCC unroll 16
        for (int k = 0; k < R / 2; ++k) {
            const int j = (k / H) * 2 * H + k % H;
            const __m512 a = v[j], b = v[j + H];
            v[j] = _mm512_add_ps(a, b);
            v[j + H] = _mm512_sub_ps(a, b);
        }
        cross_stages<R, 2 * H>(v);
    }
}

// A whole transform of 16*R floats held in R registers.
template <int R>
inline void fwht_regs(float* x) {
    __m512 v[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        __m512 t = _mm512_loadu_ps(x + 16 * r);
        t = stage_in<1>(t);
        t = stage_in<2>(t);
        t = stage_in<4>(t);
        v[r] = stage_in<8>(t);
    }
    cross_stages<R, 1>(v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(x + 16 * r, v[r]);
}

// Stages of stride h (>= 16) over one block in memory.
inline void fwht_pass(float* x, int block, int h) {
    for (int i = 0; i < block; i += 2 * h)
        for (int j = i; j < i + h; j += 16) {
            const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);
            _mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
            _mm512_storeu_ps(x + j + h, _mm512_sub_ps(a, b));
        }
}

// Strides h and 2h (>= 16) in one pass.
inline void fwht_pass2(float* x, int block, int h) {
    for (int i = 0; i < block; i += 4 * h)
        for (int j = i; j < i + h; j += 16) {
            const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);
            const __m512 c = _mm512_loadu_ps(x + j + 2 * h), d = _mm512_loadu_ps(x + j + 3 * h);
            const __m512 a1 = _mm512_add_ps(a, b), b1 = _mm512_sub_ps(a, b);
            const __m512 c1 = _mm512_add_ps(c, d), d1 = _mm512_sub_ps(c, d);
            _mm512_storeu_ps(x + j, _mm512_add_ps(a1, c1));
            _mm512_storeu_ps(x + j + 2 * h, _mm512_sub_ps(a1, c1));
            _mm512_storeu_ps(x + j + h, _mm512_add_ps(b1, d1));
            _mm512_storeu_ps(x + j + 3 * h, _mm512_sub_ps(b1, d1));
        }
}

void fwht(float* x, int n, int block) {
    if (block < 2) return;
    if (block < 16) {
        int i = 0;
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, stages_below(_mm512_loadu_ps(x + i), block));
        if (i < n) {  // n - i is a multiple of block: whole blocks only
            const __mmask16 k = tail_mask16(n - i);
            _mm512_mask_storeu_ps(x + i, k, stages_below(_mm512_maskz_loadu_ps(k, x + i), block));
        }
        return;
    }
    for (int base = 0; base < n; base += block) {
        float* b = x + base;
        switch (block) {
            case 16: fwht_regs<1>(b); break;
            case 32: fwht_regs<2>(b); break;
            case 64: fwht_regs<4>(b); break;
            case 128: fwht_regs<8>(b); break;
            case 256: fwht_regs<16>(b); break;
            default: {
                for (int c = 0; c < block; c += 256) fwht_regs<16>(b + c);
                int h = 256;
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
    __m512 acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int j = 0; j < cols; ++j) {
        const __m512 xj = _mm512_set1_ps(x[j]);
        const float* col = m + size_t(j) * rows;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(xj, _mm512_loadu_ps(col + 16 * r)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + 16 * r, acc[r]);
}

void matvec(const float* m, int rows, int cols, const float* x, float* y) {
    int i = 0;
    for (; i + 128 <= rows; i += 128) matvec_rows<8>(m + i, rows, cols, x, y + i);
    for (; i + 64 <= rows; i += 64) matvec_rows<4>(m + i, rows, cols, x, y + i);
    for (; i + 32 <= rows; i += 32) matvec_rows<2>(m + i, rows, cols, x, y + i);
    for (; i + 16 <= rows; i += 16) matvec_rows<1>(m + i, rows, cols, x, y + i);
    for (; i < rows; ++i) {  // rows % 16 == 0 by contract; kept for safety
        float s = 0.0f;
        for (int j = 0; j < cols; ++j) s += x[j] * m[size_t(j) * rows + i];
        y[i] = s;
    }
}

// Table look-up of 16 indices for BITS-bit codes without gathers: bits <= 4 one permutexvar on a
// table replicated across the register; 5 and above one permutex2var per 32-entry sub-table,
// then blends on index bits 5 .. BITS-1. Index bits above BITS-1 are ignored.
template <int BITS>
struct Lut {
    static constexpr int kRegs = BITS <= 4 ? 1 : (1 << BITS) / 16;
    __m512 t[kRegs];
    explicit Lut(const float* table) {
        if constexpr (BITS == 1) t[0] = _mm512_broadcast_f32x2(_mm_castpd_ps(_mm_load_sd((const double*)table)));
        else if constexpr (BITS == 2) t[0] = _mm512_broadcast_f32x4(_mm_loadu_ps(table));
        else if constexpr (BITS == 3) t[0] = _mm512_broadcast_f32x8(_mm256_loadu_ps(table));
        else
            for (int r = 0; r < kRegs; ++r) t[r] = _mm512_loadu_ps(table + 16 * r);
    }
    // v[0, W) -> v[0, W/2) by index bit B, down to one register.
    template <int W, int B>
    static inline void select(__m512* v, __m512i idx) {
        if constexpr (W > 1) {
            const __mmask16 m = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(1 << B));
#pragma GCC unroll 4
            for (int k = 0; k < W / 2; ++k) v[k] = _mm512_mask_blend_ps(m, v[2 * k], v[2 * k + 1]);
            select<W / 2, B + 1>(v, idx);
        }
    }
    inline __m512 operator()(__m512i idx) const {
        if constexpr (BITS <= 4) {
            return _mm512_permutexvar_ps(idx, t[0]);
        } else {
            constexpr int K = kRegs / 2;
            __m512 v[K];
#pragma GCC unroll 8
            for (int k = 0; k < K; ++k) v[k] = _mm512_permutex2var_ps(t[2 * k], idx, t[2 * k + 1]);
            select<K, 5>(v, idx);
            return v[0];
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Quantization: the reference's branchless binary search, 16 lanes at a time. The compare
// x >= bound is false for NaN, as in the reference.

// 64 codes (four registers of 16 dwords, each < 256) to 64 bytes in order: the packs leave
// 128-bit lane k holding [c0_k c1_k c2_k c3_k] (4 bytes each); a dword transpose restores order.
inline __m512i pack_codes64(__m512i c0, __m512i c1, __m512i c2, __m512i c3) {
    const __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(c0, c1), _mm512_packus_epi32(c2, c3));
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), b);
}

inline void store_codes16(uint8_t* out, __m512i c) { _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(c)); }

// t[j] holds bounds shifted by step - 1 for step = 2^(BITS-2-j), so the boundary of index
// c + step - 1 is permutexvar(c, t[j]) (c < 16 always).
template <int BITS>
inline __m512i search_small(__m512 v, const __m512* t, __m512 top) {  // BITS <= 4
    constexpr int first = 1 << (BITS - 1);
    __m512i c = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(v, top, _CMP_GE_OQ), _mm512_set1_epi32(first));
#pragma GCC unroll 4
    for (int j = 0; j < BITS - 1; ++j)  // step = first >> (j + 1)
        c = _mm512_mask_or_epi32(c, _mm512_cmp_ps_mask(v, _mm512_permutexvar_ps(c, t[j]), _CMP_GE_OQ), c,
                                 _mm512_set1_epi32(first >> (j + 1)));
    return c;
}

template <int BITS>
void quantize_small(const float* x, int n, const float* bounds, uint8_t* codes) {
    constexpr int nb = (1 << BITS) - 1;  // boundaries the search can reach
    __m512 t[BITS > 1 ? BITS - 1 : 1];
    for (int j = 0; j < BITS - 1; ++j) {
        const int step = (1 << (BITS - 1)) >> (j + 1);
        t[j] = _mm512_maskz_loadu_ps(__mmask16((1u << (nb - step + 1)) - 1u), bounds + step - 1);
    }
    const __m512 top = _mm512_set1_ps(bounds[(1 << (BITS - 1)) - 1]);
    int i = 0;
    for (; i + 64 <= n; i += 64) {  // one 64-byte store, so a following wide load can forward from it
        const __m512i c0 = search_small<BITS>(_mm512_loadu_ps(x + i), t, top);
        const __m512i c1 = search_small<BITS>(_mm512_loadu_ps(x + i + 16), t, top);
        const __m512i c2 = search_small<BITS>(_mm512_loadu_ps(x + i + 32), t, top);
        const __m512i c3 = search_small<BITS>(_mm512_loadu_ps(x + i + 48), t, top);
        _mm512_storeu_si512(codes + i, pack_codes64(c0, c1, c2, c3));
    }
    for (; i + 32 <= n; i += 32) {
        const __m512i c0 = search_small<BITS>(_mm512_loadu_ps(x + i), t, top);
        const __m512i c1 = search_small<BITS>(_mm512_loadu_ps(x + i + 16), t, top);
        store_codes16(codes + i, c0);
        store_codes16(codes + i + 16, c1);
    }
    for (; i < n; i += 16) {
        const int r = n - i < 16 ? n - i : 16;
        const __m512i c = search_small<BITS>(_mm512_maskz_loadu_ps(tail_mask16(r), x + i), t, top);
        _mm_mask_storeu_epi8(codes + i, tail_mask16(r), _mm512_cvtepi32_epi8(c));
    }
}

void quantize_5(const float* x, int n, const float* bounds, uint8_t* codes) {
    const __m512 t0 = _mm512_loadu_ps(bounds), t1 = _mm512_loadu_ps(bounds + 16);
    for (int i = 0; i < n; i += 16) {
        const int r = n - i < 16 ? n - i : 16;
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask16(r), x + i);
        __m512i c = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(v, _mm512_set1_ps(bounds[15]), _CMP_GE_OQ),
                                           _mm512_set1_epi32(16));
        for (int step = 8; step >= 1; step >>= 1) {
            const __m512 b = _mm512_permutex2var_ps(t0, _mm512_add_epi32(c, _mm512_set1_epi32(step - 1)), t1);
            c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, b, _CMP_GE_OQ), c, _mm512_set1_epi32(step));
        }
        _mm_mask_storeu_epi8(codes + i, tail_mask16(r), _mm512_cvtepi32_epi8(c));
    }
}

// Six to eight bits. The search's first BITS-4 levels only ever read bounds[16k + 15] (their
// index c + step - 1 has c a multiple of 2*step >= 32), so they are a binary search over that node
// table of at most 16 entries, done with permutes. The last four levels look up the whole table
// with permutex2var over 32-entry slices, blended by index bits 5.. (fixed by then): no gathers.
// Four groups of 16 go through the levels side by side.
template <int BITS>
void quantize_nodes(const float* x, int n, const float* bounds, uint8_t* codes) {
    constexpr int levels = BITS - 4, nodes = (1 << levels) - 1;  // node k = bounds[16k + 15], k < nodes
    constexpr int G = 4;
    const __m512 node = _mm512_mask_i32gather_ps(
        _mm512_setzero_ps(), __mmask16((1u << nodes) - 1u),
        _mm512_add_epi32(_mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 4),
                         _mm512_set1_epi32(15)),
        bounds, 4);
    const Lut<BITS> lut(bounds);  // bounds has 2^BITS entries
    for (int i = 0; i < n; i += 16 * G) {
        __m512 v[G];
        __m512i c[G];
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            const int r = n - i - 16 * g;
            v[g] = _mm512_maskz_loadu_ps(tail_mask16(r <= 0 ? 0 : r < 16 ? r : 16), x + i + 16 * g);
            c[g] = _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int step = 1 << (levels - 1); step >= 1; step >>= 1)
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                const __m512 b = _mm512_permutexvar_ps(_mm512_add_epi32(c[g], _mm512_set1_epi32(step - 1)), node);
                c[g] = _mm512_mask_add_epi32(c[g], _mm512_cmp_ps_mask(v[g], b, _CMP_GE_OQ), c[g], _mm512_set1_epi32(step));
            }
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) c[g] = _mm512_slli_epi32(c[g], 4);
#pragma GCC unroll 4
        for (int step = 8; step >= 1; step >>= 1)
#pragma GCC unroll 4
            for (int g = 0; g < G; ++g) {
                const __m512 b = lut(_mm512_add_epi32(c[g], _mm512_set1_epi32(step - 1)));
                c[g] = _mm512_mask_add_epi32(c[g], _mm512_cmp_ps_mask(v[g], b, _CMP_GE_OQ), c[g], _mm512_set1_epi32(step));
            }
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            const int r = n - i - 16 * g;
            if (r > 0) _mm_mask_storeu_epi8(codes + i + 16 * g, tail_mask16(r < 16 ? r : 16), _mm512_cvtepi32_epi8(c[g]));
        }
    }
}

void quantize(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    switch (bits) {
        case 1: quantize_small<1>(x, n, bounds, codes); break;
        case 2: quantize_small<2>(x, n, bounds, codes); break;
        case 3: quantize_small<3>(x, n, bounds, codes); break;
        case 4: quantize_small<4>(x, n, bounds, codes); break;
        case 5: quantize_5(x, n, bounds, codes); break;
        case 6: quantize_nodes<6>(x, n, bounds, codes); break;
        case 7: quantize_nodes<7>(x, n, bounds, codes); break;
        default: quantize_nodes<8>(x, n, bounds, codes); break;
    }
}

// ---------------------------------------------------------------------------------------------
// Look-up: exact, reads only the table entries the codes name.

uint32_t max_code(const uint8_t* codes, int n) {
    __m512i m = _mm512_setzero_si512();
    int i = 0;
    for (; i + 64 <= n; i += 64) m = _mm512_max_epu8(m, _mm512_loadu_si512(codes + i));
    if (i < n) m = _mm512_max_epu8(m, _mm512_maskz_loadu_epi8(tail_mask64(size_t(n - i)), codes + i));
    __m256i h = _mm256_max_epu8(_mm512_castsi512_si256(m), _mm512_extracti64x4_epi64(m, 1));
    __m128i q = _mm_max_epu8(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
    q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
    return uint32_t(_mm_cvtsi128_si32(q) & 0xff);
}

void lookup(const uint8_t* codes, int n, const float* table, float* out) {
    if (n <= 0) return;
    const uint32_t mx = max_code(codes, n);
    if (mx < 16) {
        const __m512 t = _mm512_maskz_loadu_ps(__mmask16((2u << mx) - 1u), table);
        int i = 0;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(out + i, _mm512_permutexvar_ps(
                                          _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(codes + i))), t));
        if (i < n) {
            const __mmask16 k = tail_mask16(n - i);
            _mm512_mask_storeu_ps(out + i, k, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, codes + i)), t));
        }
    } else if (mx < 32) {
        const __m512 t0 = _mm512_loadu_ps(table);
        const __m512 t1 = _mm512_maskz_loadu_ps(__mmask16((2u << (mx - 16)) - 1u), table + 16);
        for (int i = 0; i < n; i += 16) {
            const __mmask16 k = tail_mask16(n - i < 16 ? n - i : 16);
            _mm512_mask_storeu_ps(out + i, k,
                                  _mm512_permutex2var_ps(t0, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, codes + i)), t1));
        }
    } else {
        for (int i = 0; i < n; i += 16) {
            const __mmask16 k = tail_mask16(n - i < 16 ? n - i : 16);
            const __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, codes + i));
            _mm512_mask_storeu_ps(out + i, k, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, table, 4));
        }
    }
}

// Loads `bytes` (<= 16) bytes without touching memory beyond them.
inline __m128i load_upto16(const uint8_t* p, size_t bytes) {
    return bytes >= 16 ? _mm_loadu_si128((const __m128i*)p) : _mm_maskz_loadu_epi8(tail_mask16(bytes), p);
}

// ---------------------------------------------------------------------------------------------
// Packing (layout of packing.hpp). SIMD for 1, 2, 4, 8 bits; SWAR for the others.

// 8 codes of B bits <-> B bytes, in 64-bit registers.
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
    alignas(64) uint8_t shuf[9][64];
    alignas(64) uint32_t shifts[9][16];
};
constexpr Split16Tables make_split16() {
    Split16Tables t{};
    for (int bits = 1; bits <= 8; ++bits)
        for (int k = 0; k < 16; ++k) {
            const int s = bits * k, lane = k / 4, slot = k % 4;
            t.shuf[bits][16 * lane + 4 * slot + 0] = uint8_t(s / 8);
            t.shuf[bits][16 * lane + 4 * slot + 1] = s / 8 + 1 < 16 ? uint8_t(s / 8 + 1) : 0x80;
            t.shuf[bits][16 * lane + 4 * slot + 2] = 0x80;
            t.shuf[bits][16 * lane + 4 * slot + 3] = 0x80;
            t.shifts[bits][k] = uint32_t(s % 8);
        }
    return t;
}
alignas(64) constexpr Split16Tables kSplit16 = make_split16();

struct FieldSplit16 {
    __m512i sh, sv, mask;
    explicit FieldSplit16(int bits)
        : sh(_mm512_load_si512(kSplit16.shuf[bits])),
          sv(_mm512_load_si512(kSplit16.shifts[bits])),
          mask(_mm512_set1_epi32((1 << bits) - 1)) {}
    // Unmasked fields (higher bits hold the next code's bits).
    inline __m512i raw(__m128i bytes) const { return _mm512_srlv_epi32(_mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), sh), sv); }
    inline __m512i operator()(__m128i bytes) const { return _mm512_and_si512(raw(bytes), mask); }
};

// Widths 3, 5, 6, 7: 16 codes span 2*bits bytes; each dword lane picks the two bytes that hold
// its code (pshufb on a broadcast), shifts it down and masks it.
void unpack_fields(const uint8_t* in, int n, int bits, uint8_t* codes) {
    const FieldSplit16 split(bits);
    const size_t nbytes = packed_bytes(size_t(n), bits), gbytes = size_t(2 * bits);
    for (int g = 0; 16 * g < n; ++g) {
        const size_t off = gbytes * size_t(g);
        const __m128i c = _mm512_cvtepi32_epi8(split(load_upto16(in + off, nbytes - off)));
        if (16 * g + 16 <= n) _mm_storeu_si128((__m128i*)(codes + 16 * g), c);
        else _mm_mask_storeu_epi8(codes + 16 * g, tail_mask16(n - 16 * g), c);
    }
}

void pack(const uint8_t* codes, int n, int bits, uint8_t* out) {
    switch (bits) {
        case 8: std::memcpy(out, codes, size_t(n)); return;
        case 4: {
            const __m512i m = _mm512_set1_epi8(0x0f), mul = _mm512_set1_epi16(0x1001);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const __m512i c = _mm512_and_si512(_mm512_maskz_loadu_epi8(tail_mask64(r), codes + i), m);
                const __m256i b = _mm512_cvtepi16_epi8(_mm512_maddubs_epi16(c, mul));  // c0 + 16 c1
                _mm256_mask_storeu_epi8(out + i / 2, __mmask32(tail_mask64((r + 1) / 2)), b);
            }
            return;
        }
        case 2: {
            const __m512i m = _mm512_set1_epi8(0x03), mul1 = _mm512_set1_epi16(0x0401), mul2 = _mm512_set1_epi32(0x00100001);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const __m512i c = _mm512_and_si512(_mm512_maskz_loadu_epi8(tail_mask64(r), codes + i), m);
                const __m512i w = _mm512_madd_epi16(_mm512_maddubs_epi16(c, mul1), mul2);  // c0 + 4c1 + 16c2 + 64c3
                _mm_mask_storeu_epi8(out + i / 4, tail_mask16((r + 3) / 4), _mm512_cvtepi32_epi8(w));
            }
            return;
        }
        case 1: {
            const __m512i one = _mm512_set1_epi8(1);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const uint64_t bitsv = _mm512_test_epi8_mask(_mm512_maskz_loadu_epi8(tail_mask64(r), codes + i), one);
                _mm_mask_storeu_epi8(out + i / 8, tail_mask16((r + 7) / 8), _mm_cvtsi64_si128(int64_t(bitsv)));
            }
            return;
        }
        case 3: pack_swar<3>(codes, n, out); return;
        case 5: pack_swar<5>(codes, n, out); return;
        case 6: pack_swar<6>(codes, n, out); return;
        case 7: pack_swar<7>(codes, n, out); return;
        default: pack_codes(codes, size_t(n), bits, out);
    }
}

void unpack(const uint8_t* in, int n, int bits, uint8_t* codes) {
    switch (bits) {
        case 8: std::memcpy(codes, in, size_t(n)); return;
        case 4: {
            const __m512i lo = _mm512_set1_epi16(0x000f), hi = _mm512_set1_epi16(0x0f00);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const __m512i x = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(__mmask32(tail_mask64((r + 1) / 2)), in + i / 2));
                const __m512i c = _mm512_or_si512(_mm512_and_si512(x, lo), _mm512_and_si512(_mm512_slli_epi16(x, 4), hi));
                _mm512_mask_storeu_epi8(codes + i, tail_mask64(r), c);
            }
            return;
        }
        case 2: {
            const __m512i m = _mm512_set1_epi8(0x03);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const __m512i x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(tail_mask16((r + 3) / 4), in + i / 4));
                __m512i c = _mm512_or_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 6)),
                                            _mm512_or_si512(_mm512_slli_epi32(x, 12), _mm512_slli_epi32(x, 18)));
                c = _mm512_and_si512(c, m);
                _mm512_mask_storeu_epi8(codes + i, tail_mask64(r), c);
            }
            return;
        }
        case 1: {
            const __m512i one = _mm512_set1_epi8(1);
            for (int i = 0; i < n; i += 64) {
                const size_t r = size_t(n - i) < 64 ? size_t(n - i) : 64;
                const uint64_t bitsv = uint64_t(_mm_cvtsi128_si64(_mm_maskz_loadu_epi8(tail_mask16((r + 7) / 8), in + i / 8)));
                _mm512_mask_storeu_epi8(codes + i, tail_mask64(r), _mm512_maskz_mov_epi8(bitsv, one));
            }
            return;
        }
        case 3:
        case 5:
        case 6:
        case 7: unpack_fields(in, n, bits, codes); return;
        default: unpack_codes(in, size_t(n), bits, codes);
    }
}

// ---------------------------------------------------------------------------------------------
// Scores against packed codes: fused unpack + centroid look-up + multiply-accumulate.
// The query is first copied into a layout that matches how codes come out of the bytes.

constexpr int kMaxDotDim = 1024;

inline float hsum(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

// Four-bit codes: 16 bytes = 32 codes; low nibbles are the even codes, high nibbles the odd ones.
void dot4(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(64) float qp[kMaxDotDim + 64];
    const int chunks = (n + 31) / 32;
    for (int c = 0; c < chunks; ++c)
        for (int k = 0; k < 16; ++k) {
            const int e = 32 * c + 2 * k;
            qp[32 * c + k] = e < n ? q[e] : 0.0f;
            qp[32 * c + 16 + k] = e + 1 < n ? q[e + 1] : 0.0f;
        }
    const __m512 t = _mm512_loadu_ps(table);
    const size_t nbytes = packed_bytes(size_t(n), 4);
    const int full = int(nbytes / 16);
    const size_t rem = nbytes - size_t(full) * 16;
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int c = 0;
        for (; c + 2 <= full; c += 2) {
            const __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * c)));
            const __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * c + 16)));
            a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(b0, t), _mm512_load_ps(qp + 32 * c), a0);
            a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b0, 4), t), _mm512_load_ps(qp + 32 * c + 16), a1);
            a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(b1, t), _mm512_load_ps(qp + 32 * c + 32), a0);
            a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b1, 4), t), _mm512_load_ps(qp + 32 * c + 48), a1);
        }
        for (; c < chunks; ++c) {
            const __m128i raw = c < full ? _mm_loadu_si128((const __m128i*)(p + 16 * c)) : _mm_maskz_loadu_epi8(tail_mask16(rem), p + 16 * c);
            const __m512i b = _mm512_cvtepu8_epi32(raw);
            a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(b, t), _mm512_load_ps(qp + 32 * c), a0);
            a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), t), _mm512_load_ps(qp + 32 * c + 16), a1);
        }
        out[v] = hsum(_mm512_add_ps(a0, a1));
    }
}

// Two-bit codes: 16 bytes = 64 codes; phase j (0..3) holds codes 4k + j.
void dot2(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(64) float qp[kMaxDotDim + 64];
    const int chunks = (n + 63) / 64;
    for (int c = 0; c < chunks; ++c)
        for (int j = 0; j < 4; ++j)
            for (int k = 0; k < 16; ++k) {
                const int e = 64 * c + 4 * k + j;
                qp[64 * c + 16 * j + k] = e < n ? q[e] : 0.0f;
            }
    const __m512 t = _mm512_broadcast_f32x4(_mm_loadu_ps(table));  // index bits 2..3 pick a copy
    const size_t nbytes = packed_bytes(size_t(n), 2);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int c = 0; c < chunks; ++c) {
            const __m512i b = _mm512_cvtepu8_epi32(load_upto16(p + 16 * c, nbytes - 16 * size_t(c)));
            const float* qc = qp + 64 * c;
            a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(b, t), _mm512_load_ps(qc), a0);
            a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 2), t), _mm512_load_ps(qc + 16), a1);
            a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), t), _mm512_load_ps(qc + 32), a0);
            a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 6), t), _mm512_load_ps(qc + 48), a1);
        }
        out[v] = hsum(_mm512_add_ps(a0, a1));
    }
}

// One-bit codes: 2 bytes = 16 codes, a mask register picks table[0] or table[1].
void dot1(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(64) float qp[kMaxDotDim + 64];
    const int groups = (n + 15) / 16;
    for (int i = 0; i < 16 * groups; ++i) qp[i] = i < n ? q[i] : 0.0f;
    const __m512 t0 = _mm512_set1_ps(table[0]), t1 = _mm512_set1_ps(table[1]);
    const size_t nbytes = packed_bytes(size_t(n), 1);
    const int full64 = int(nbytes / 8);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int g = 0;
        for (int w = 0; w < full64; ++w, g += 4) {
            uint64_t m;
            std::memcpy(&m, p + 8 * w, 8);
            a0 = _mm512_fmadd_ps(_mm512_mask_blend_ps(__mmask16(m), t0, t1), _mm512_load_ps(qp + 16 * g), a0);
            a1 = _mm512_fmadd_ps(_mm512_mask_blend_ps(__mmask16(m >> 16), t0, t1), _mm512_load_ps(qp + 16 * g + 16), a1);
            a0 = _mm512_fmadd_ps(_mm512_mask_blend_ps(__mmask16(m >> 32), t0, t1), _mm512_load_ps(qp + 16 * g + 32), a0);
            a1 = _mm512_fmadd_ps(_mm512_mask_blend_ps(__mmask16(m >> 48), t0, t1), _mm512_load_ps(qp + 16 * g + 48), a1);
        }
        if (g < groups) {
            uint64_t m = uint64_t(_mm_cvtsi128_si64(
                _mm_maskz_loadu_epi8(tail_mask16(nbytes - 8 * size_t(full64)), p + 8 * size_t(full64))));
            for (; g < groups; ++g, m >>= 16)
                a0 = _mm512_fmadd_ps(_mm512_mask_blend_ps(__mmask16(m), t0, t1), _mm512_load_ps(qp + 16 * g), a0);
        }
        out[v] = hsum(_mm512_add_ps(a0, a1));
    }
}

// Eight-bit codes: one byte per code.
void dot8(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count, float* out) {
    alignas(64) float qp[kMaxDotDim + 64];
    const int groups = (n + 15) / 16;
    for (int i = 0; i < 16 * groups; ++i) qp[i] = i < n ? q[i] : 0.0f;
    const Lut<8> lut(table);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int g = 0;
        for (; 16 * g + 32 <= n; g += 2) {
            const __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * g)));
            const __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16 * g + 16)));
            a0 = _mm512_fmadd_ps(lut(i0), _mm512_load_ps(qp + 16 * g), a0);
            a1 = _mm512_fmadd_ps(lut(i1), _mm512_load_ps(qp + 16 * g + 16), a1);
        }
        for (; g < groups; ++g) {  // codes beyond n read as 0; q there is 0
            const __m512i idx = _mm512_cvtepu8_epi32(load_upto16(p + 16 * g, size_t(n - 16 * g)));
            a0 = _mm512_fmadd_ps(lut(idx), _mm512_load_ps(qp + 16 * g), a0);
        }
        out[v] = hsum(_mm512_add_ps(a0, a1));
    }
}

// Widths 3, 5, 6, 7: 16 codes span 2*BITS bytes; each dword lane picks the two bytes that hold
// its code (pshufb on a broadcast), then shifts it down.
template <int BITS>
void dot_fields(const float* q, int n, const float* table, const uint8_t* packed, size_t stride, size_t count,
                float* out) {
    alignas(64) float qp[kMaxDotDim + 64];
    const int groups = (n + 15) / 16;
    for (int i = 0; i < 16 * groups; ++i) qp[i] = i < n ? q[i] : 0.0f;
    const FieldSplit16 split(BITS);
    const size_t nbytes = packed_bytes(size_t(n), BITS);
    constexpr size_t gbytes = 2 * BITS;
    const Lut<BITS> lut(table);
    for (size_t v = 0; v < count; ++v) {
        const uint8_t* p = packed + v * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int g = 0;
        for (; gbytes * size_t(g + 1) + 16 <= nbytes; g += 2) {  // both groups' 16-byte loads inside
            const __m512i r0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)(p + gbytes * g)));
            const __m512i r1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)(p + gbytes * (g + 1))));
            a0 = _mm512_fmadd_ps(lut(_mm512_srlv_epi32(_mm512_shuffle_epi8(r0, split.sh), split.sv)), _mm512_load_ps(qp + 16 * g), a0);
            a1 = _mm512_fmadd_ps(lut(_mm512_srlv_epi32(_mm512_shuffle_epi8(r1, split.sh), split.sv)), _mm512_load_ps(qp + 16 * g + 16), a1);
        }
        for (; g < groups; ++g) {
            const size_t off = gbytes * size_t(g);
            a0 = _mm512_fmadd_ps(lut(split.raw(load_upto16(p + off, nbytes - off))), _mm512_load_ps(qp + 16 * g), a0);
        }
        out[v] = hsum(_mm512_add_ps(a0, a1));
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
        case 2: dot2(q, n, table, packed, stride, count, out); break;
        case 1: dot1(q, n, table, packed, stride, count, out); break;
        case 8: dot8(q, n, table, packed, stride, count, out); break;
        case 3: dot_fields<3>(q, n, table, packed, stride, count, out); break;
        case 5: dot_fields<5>(q, n, table, packed, stride, count, out); break;
        case 6: dot_fields<6>(q, n, table, packed, stride, count, out); break;
        case 7: dot_fields<7>(q, n, table, packed, stride, count, out); break;
        default: scalar_kernels().dot_codes(q, n, table, bits, packed, stride, count, out); break;
    }
}

// ---------------------------------------------------------------------------------------------
// Half precision. F16C rounds to nearest even like float_to_half; only NaNs differ (F16C keeps
// payload bits), so NaN lanes are patched to the reference's 0x7e00 | sign.

inline __m256i to_half16(__m512 v) {
    __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    if (nan) {
        const __m256i fix = _mm256_or_si256(
            _mm256_set1_epi16(0x7e00),
            _mm256_and_si256(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)), _mm256_set1_epi16(int16_t(0x8000))));
        h = _mm256_mask_mov_epi16(h, nan, fix);
    }
    return h;
}

void to_half(const float* x, size_t n, uint16_t* out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i*)(out + i), to_half16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 k = tail_mask16(n - i);
        _mm256_mask_storeu_epi16(out + i, k, to_half16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

// F16C quiets signaling NaNs; the reference keeps their bits, so those lanes are rebuilt.
inline __m512 from_half16(__m256i h) {
    __m512 f = _mm512_cvtph_ps(h);
    const __m512i w = _mm512_cvtepu16_epi32(h);
    const __m512i e = _mm512_and_si512(w, _mm512_set1_epi32(0x7fff));
    const __mmask16 snan = _mm512_cmpgt_epi32_mask(e, _mm512_set1_epi32(0x7c00)) &
                           _mm512_cmplt_epi32_mask(e, _mm512_set1_epi32(0x7e00));
    if (snan) {
        const __m512i bitsv = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16),
                                              _mm512_or_si512(_mm512_slli_epi32(e, 13), _mm512_set1_epi32(0x70000000)));
        f = _mm512_mask_mov_ps(f, snan, _mm512_castsi512_ps(bitsv));
    }
    return f;
}

void from_half(const uint16_t* h, size_t n, float* out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, from_half16(_mm256_loadu_si256((const __m256i*)(h + i))));
    if (i < n) {
        const __mmask16 k = tail_mask16(n - i);
        _mm512_mask_storeu_ps(out + i, k, from_half16(_mm256_maskz_loadu_epi16(k, h + i)));
    }
}

}  // namespace

const KernelTable& avx512_kernels() {
    static const KernelTable table = {"avx512", max_abs, sum_squares, scale,     flip_signs, fwht,     matvec,
                                      quantize, lookup,  pack,        unpack,    dot_codes,  to_half,  from_half};
    return table;
}

}  // namespace tqkv::detail
