#include "tqkv/dense.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv {

namespace {

template <class T, class Dot, class Axpy>
void dense_attention(const DenseAttentionShape& s, const float* q, const T* keys, const T* values, float* out,
                     const std::string& kernel, Dot dot, Axpy axpy) {
    if (s.heads < 1 || s.kv_heads < 1 || s.heads % s.kv_heads != 0 || s.head_dim < 1 || s.tokens == 0)
        throw std::invalid_argument("tqkv: dense attention: bad shape");
    const auto& ak = detail::attention_for(detail::kernels_by_name(kernel.c_str()));
    const int d = s.head_dim, r = s.heads / s.kv_heads;
    const float scale = s.scale > 0 ? s.scale : float(1.0 / std::sqrt(double(d)));
    constexpr size_t kChunk = 256;
    thread_local std::vector<float> scores, acc;
    scores.resize(size_t(r) * kChunk);
    acc.resize(size_t(r) * d);
    for (int kvh = 0; kvh < s.kv_heads; ++kvh) {
        const T* K = keys + size_t(kvh) * s.tokens * d;
        const T* V = values + size_t(kvh) * s.tokens * d;
        const float* qh = q + size_t(kvh) * r * d;
        std::fill(acc.begin(), acc.end(), 0.0f);
        float m[64], l[64];
        if (r > 64) throw std::invalid_argument("tqkv: dense attention: more than 64 heads per KV head");
        std::fill(m, m + r, -std::numeric_limits<float>::infinity());
        std::fill(l, l + r, 0.0f);
        for (size_t t0 = 0; t0 < s.tokens; t0 += kChunk) {
            const size_t n = std::min(kChunk, s.tokens - t0);
            for (size_t t = 0; t < n; ++t)
                for (int h = 0; h < r; ++h) scores[h * kChunk + t] = (ak.*dot)(qh + size_t(h) * d, K + (t0 + t) * d, d) * scale;
            for (int h = 0; h < r; ++h) {
                float* sc = &scores[h * kChunk];
                const float cmax = ak.max_f32(sc, int(n));
                if (cmax > m[h]) {
                    const float corr = std::exp(m[h] - cmax);
                    l[h] *= corr;
                    for (int j = 0; j < d; ++j) acc[size_t(h) * d + j] *= corr;
                    m[h] = cmax;
                }
                l[h] += ak.exp_sum(sc, int(n), m[h]);
            }
            for (size_t t = 0; t < n; ++t)
                for (int h = 0; h < r; ++h) (ak.*axpy)(scores[h * kChunk + t], V + (t0 + t) * d, &acc[size_t(h) * d], d);
        }
        for (int h = 0; h < r; ++h)
            for (int j = 0; j < d; ++j) out[(size_t(kvh) * r + h) * d + j] = acc[size_t(h) * d + j] / l[h];
    }
}

}  // namespace

void dense_attention_f32(const DenseAttentionShape& shape, const float* query, const float* keys,
                         const float* values, float* out, const std::string& kernel) {
    dense_attention(shape, query, keys, values, out, kernel, &detail::AttentionKernels::dot_f32,
                    &detail::AttentionKernels::axpy_f32);
}

void dense_attention_f16(const DenseAttentionShape& shape, const float* query, const uint16_t* keys,
                         const uint16_t* values, float* out, const std::string& kernel) {
    dense_attention(shape, query, keys, values, out, kernel, &detail::AttentionKernels::dot_f16,
                    &detail::AttentionKernels::axpy_f16);
}

DenseCache make_dense_cache(const float* keys, const float* values, size_t tokens, int kv_heads, int head_dim) {
    DenseCache c;
    const size_t n = tokens * size_t(kv_heads) * head_dim;
    c.keys.resize(n);
    c.values.resize(n);
    c.keys_f16.resize(n);
    c.values_f16.resize(n);
    for (int h = 0; h < kv_heads; ++h)
        for (size_t t = 0; t < tokens; ++t)
            for (int j = 0; j < head_dim; ++j) {
                const size_t src = (t * kv_heads + h) * head_dim + j, dst = (size_t(h) * tokens + t) * head_dim + j;
                c.keys[dst] = keys[src];
                c.values[dst] = values[src];
                c.keys_f16[dst] = float_to_half(keys[src]);
                c.values_f16[dst] = float_to_half(values[src]);
            }
    return c;
}

}  // namespace tqkv
