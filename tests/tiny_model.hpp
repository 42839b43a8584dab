// A tiny Llama built in memory, shared by the model tests: hidden 64, 2 layers, 4 query heads /
// 2 KV heads of d 32, MLP 96, byte vocabulary, context 256, random fp16 weights.
#pragma once
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tqkv/fp16.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"

namespace tqkv_test {

using namespace tqkv;

// 8-byte little-endian header length, header, data (byte loops: GCC 12 misreads vector::insert here).
inline std::vector<uint8_t> file_bytes(const std::string& header, const std::vector<uint8_t>& data) {
    std::vector<uint8_t> out;
    out.reserve(8 + header.size() + data.size());
    for (int i = 0; i < 8; ++i) out.push_back(uint8_t(uint64_t(header.size()) >> (8 * i)));
    for (char c : header) out.push_back(uint8_t(c));
    for (uint8_t b : data) out.push_back(b);
    return out;
}

struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// A safetensors file from named tensors (dtype "F16" or "F32"), header padded to 8 bytes.
inline std::vector<uint8_t> make_safetensors(const std::map<std::string, Tensor>& ts, const std::string& dtype = "F16",
                                      const std::string& extra_header = "") {
    std::string header = "{";
    std::vector<uint8_t> data;
    const size_t es = dtype == "F32" ? 4 : 2;
    for (const auto& [name, t] : ts) {
        const size_t begin = data.size();
        for (float x : t.data) {
            if (es == 2) {
                const uint16_t h = float_to_half(x);
                data.push_back(uint8_t(h)), data.push_back(uint8_t(h >> 8));
            } else {
                uint32_t u;
                std::memcpy(&u, &x, 4);
                for (int i = 0; i < 4; ++i) data.push_back(uint8_t(u >> (8 * i)));
            }
        }
        std::string shape;
        for (size_t i = 0; i < t.shape.size(); ++i) {
            if (i) shape += ',';
            shape += std::to_string(t.shape[i]);
        }
        if (header.size() > 1) header += ",";
        header += "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shape + "],\"data_offsets\":[" +
                  std::to_string(begin) + "," + std::to_string(data.size()) + "]}";
    }
    header += extra_header + "}";
    while (header.size() % 8) header += ' ';
    return file_bytes(header, data);
}

// A tiny Llama: hidden 64, 2 layers, 4 query heads / 2 KV heads of d 32, MLP 96, byte vocabulary.
inline const char* kTinyConfig = R"({
  "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "head_dim": 32, "intermediate_size": 96, "vocab_size": 256, "rope_theta": 500.0, "rms_norm_eps": 1e-5,
  "tie_word_embeddings": false, "max_position_embeddings": 256, "model_type": "llama", "hidden_act": "silu"
})";

inline std::map<std::string, Tensor> tiny_tensors(uint64_t seed) {
    Rng rng(seed);
    auto mat = [&](int64_t r, int64_t c, double sd) {
        Tensor t{{r, c}, std::vector<float>(size_t(r * c))};
        for (auto& x : t.data) x = float(rng.normal() * sd);
        return t;
    };
    auto norm = [&](int64_t n) {
        Tensor t{{n}, std::vector<float>(size_t(n))};
        for (auto& x : t.data) x = float(1.0 + 0.2 * rng.normal());
        return t;
    };
    std::map<std::string, Tensor> ts;
    ts["model.embed_tokens.weight"] = mat(256, 64, 1.0);
    ts["lm_head.weight"] = mat(256, 64, 0.2);
    ts["model.norm.weight"] = norm(64);
    for (int l = 0; l < 2; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        ts[p + "input_layernorm.weight"] = norm(64);
        ts[p + "post_attention_layernorm.weight"] = norm(64);
        ts[p + "self_attn.q_proj.weight"] = mat(128, 64, 0.3);
        ts[p + "self_attn.k_proj.weight"] = mat(64, 64, 0.3);
        ts[p + "self_attn.v_proj.weight"] = mat(64, 64, 0.2);
        ts[p + "self_attn.o_proj.weight"] = mat(64, 128, 0.1);
        ts[p + "mlp.gate_proj.weight"] = mat(96, 64, 0.15);
        ts[p + "mlp.up_proj.weight"] = mat(96, 64, 0.15);
        ts[p + "mlp.down_proj.weight"] = mat(64, 96, 0.1);
    }
    return ts;
}

inline LlamaModel tiny_model(uint64_t seed = 7) {
    return LlamaModel::from_parts(LlamaConfig::parse(kTinyConfig), Safetensors::parse(make_safetensors(tiny_tensors(seed))));
}

inline std::vector<int32_t> text_tokens(const std::string& s) {
    std::vector<int32_t> t;
    for (unsigned char ch : s) t.push_back(ch);
    return t;
}

}  // namespace tqkv_test
