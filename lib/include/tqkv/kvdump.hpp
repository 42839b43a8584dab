// KV dumps: the keys, values and queries of a model's attention, as NumPy .npy files
// (DESIGN.md §4) — or generated synthetically with the structure of real caches.
//
// A dump directory holds keys.npy and values.npy shaped [layers, kv_heads, tokens, head_dim],
// queries.npy shaped [layers, heads, tokens, head_dim] (float32 or float16, C order, keys and
// queries after RoPE) and optionally meta.json. Anyone can write one from PyTorch with
// numpy.save. Query head h uses KV head h / (heads / kv_heads).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tqkv {

struct NpyArray {
    std::vector<size_t> shape;
    std::vector<float> data;  // converted to float32, C order
    std::string dtype;        // "<f4", "<f2", "<i4" or "<i8" as stored (integers up to 2^24 in magnitude)
};

// Parses .npy bytes (format versions 1.0, 2.0, 3.0). Accepts little-endian float32 / float16 (and
// int32 / int64 of magnitude up to 2^24, e.g. token ids, held exactly as floats) in C order; anything else (bad magic or header, other dtype, Fortran order, a size that does not
// match the shape, truncation) throws std::invalid_argument naming the problem.
NpyArray parse_npy(std::span<const uint8_t> bytes, const std::string& what = "npy");
NpyArray load_npy(const std::string& path);
// A reference writer (version 1.0), float32 or float16.
std::vector<uint8_t> make_npy(const std::vector<size_t>& shape, const float* data, bool float16 = false);

struct KvDump {
    int layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
    size_t tokens = 0;
    std::vector<float> keys, values;  // [layers][kv_heads][tokens][head_dim]
    std::vector<float> queries;       // [layers][heads][tokens][head_dim]
    std::string source;               // directory, or a description of the synthetic generator
    std::string meta_json;            // meta.json verbatim, if present

    const float* key(int layer, int kv_head, size_t t) const {
        return &keys[((size_t(layer) * kv_heads + kv_head) * tokens + t) * head_dim];
    }
    const float* value(int layer, int kv_head, size_t t) const {
        return &values[((size_t(layer) * kv_heads + kv_head) * tokens + t) * head_dim];
    }
    const float* query(int layer, int head, size_t t) const {
        return &queries[((size_t(layer) * heads + head) * tokens + t) * head_dim];
    }
};

// Loads keys.npy, values.npy, queries.npy (+ meta.json) and checks that their shapes agree.
KvDump load_kv_dump(const std::string& dir);

// The built-in data set: keys, values and queries with the structure of real LLM caches,
// deterministic from the seed.
//  - Keys: Gaussian channels with log-normal per-channel scales, plus `outlier_channels` channels
//    carrying a large constant offset (outlier_scale x the typical channel) placed in the
//    low-frequency RoPE pairs, where real key outliers live.
//  - Attention sinks: the first `sinks` tokens' keys point along a direction that every query
//    shares, so they draw a large share of attention, and their values are small.
//  - Queries: Gaussian plus that shared direction, and a component along a recent key, so
//    attention is peaked the way a model's is.
//  - RoPE (HF rotate_half convention, theta = rope_theta) applied to keys and queries by position.
struct SyntheticConfig {
    int layers = 2, heads = 4, kv_heads = 2, head_dim = 128;
    size_t tokens = 1024;
    int outlier_channels = 4;
    float outlier_scale = 6.0f;
    int sinks = 1;
    float rope_theta = 10000.0f;
    uint64_t seed = 1;
};
KvDump make_synthetic(const SyntheticConfig& cfg);
std::string describe(const SyntheticConfig& cfg);

}  // namespace tqkv
