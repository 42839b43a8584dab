// Exact attention over a plain fp32 or fp16 cache: the baseline tqkv is measured against, built
// from the same vectorized kernels as the fused attention (same ISA, online softmax over chunks
// of 256 tokens, grouped-query heads sharing each read of a key/value row).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tqkv {

struct DenseAttentionShape {
    int heads = 4, kv_heads = 4, head_dim = 128;
    size_t tokens = 0;
    float scale = 0;  // 0 = 1/sqrt(head_dim)
};

// query [heads][head_dim] -> out [heads][head_dim]; keys and values are head-major
// [kv_heads][tokens][head_dim]. kernel: "" = best available.
void dense_attention_f32(const DenseAttentionShape& shape, const float* query, const float* keys,
                         const float* values, float* out, const std::string& kernel = "");
void dense_attention_f16(const DenseAttentionShape& shape, const float* query, const uint16_t* keys,
                         const uint16_t* values, float* out, const std::string& kernel = "");

// Token-major keys/values ([tokens][kv_heads][head_dim], the way a runtime appends them) laid
// out head-major for the dense baselines, in fp32 and in fp16.
struct DenseCache {
    std::vector<float> keys, values;             // [kv_heads][tokens][head_dim]
    std::vector<uint16_t> keys_f16, values_f16;  // the same, binary16
};
DenseCache make_dense_cache(const float* keys, const float* values, size_t tokens, int kv_heads, int head_dim);

}  // namespace tqkv
