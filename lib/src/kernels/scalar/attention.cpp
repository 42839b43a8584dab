// Reference attention kernels: one token and one coordinate at a time.
#include <cmath>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv::detail {
namespace {

int lut_width(int bits) { return bits <= 4 ? 16 : 1 << bits; }

void group_scores(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out) {
    const int L = lut_width(bits);
    uint8_t c[kGroupTokens * kMaxDim];
    unpack_group(codes, dim, bits, c);
    for (int h = 0; h < heads; ++h)
        for (int t = 0; t < kGroupTokens; ++t) {
            const float* row = lut + size_t(h) * dim * L;
            float s = 0.0f;
            for (int j = 0; j < dim; ++j) s += row[size_t(j) * L + c[t * dim + j]];
            out[h * kGroupTokens + t] = s;
        }
}

void group_accumulate(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int heads,
                      float* acc) {
    uint8_t c[kGroupTokens * kMaxDim];
    unpack_group(codes, dim, bits, c);
    for (int j = 0; j < dim; ++j)
        for (int l = 0; l < 16; ++l) {
            const float lo = table[c[l * dim + j]];
            const float hi = table[c[(l + 16) * dim + j]];
            for (int h = 0; h < heads; ++h)
                acc[(size_t(h) * dim + j) * 16 + l] += w[h * kGroupTokens + l] * lo + w[h * kGroupTokens + 16 + l] * hi;
        }
}

float exp_sum(float* x, int n, float m) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += x[i] = std::exp(x[i] - m);
    return s;
}

float dot_f32(const float* a, const float* b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

void axpy_f32(float a, const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot_f16(const float* a, const uint16_t* b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += a[i] * half_to_float(b[i]);
    return s;
}

void axpy_f16(float a, const uint16_t* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * half_to_float(x[i]);
}

float max_f32(const float* x, int n) {
    float m = x[0];
    for (int i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

}  // namespace

const AttentionKernels& scalar_attention() {
    // No fused forms: the driver composes them, which is the reference behaviour.
    static const AttentionKernels k = {group_scores, group_accumulate, exp_sum, dot_f32, axpy_f32, dot_f16,
                                       axpy_f16,     max_f32,          nullptr,         nullptr,
                                       nullptr,      nullptr,          nullptr,
                                       // the fast path's reference (kernels/scalar/fast.cpp)
                                       fast_scores_table_bytes, scalar_fast_prepare_scores, scalar_fast_chunk_scores,
                                       scalar_fast_chunk_accumulate};
    return k;
}

}  // namespace tqkv::detail
