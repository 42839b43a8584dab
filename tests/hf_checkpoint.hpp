// Small random-weight Hugging Face checkpoints in each convention the runner reads (Llama 3 with
// llama3 rope scaling and biases, linear rope scaling with an explicit head_dim, Qwen2 with q/k/v
// biases, Mistral with a sliding window), written by the tests' own writer, plus a reference
// forward pass in double precision derived from transformers' modeling_llama / modeling_qwen2 /
// modeling_mistral and modeling_rope_utils (not from the runner's code).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tiny_model.hpp"

namespace tqkv_test {

struct HfCheckpoint {
    std::string name;
    std::string config;                  // config.json text
    std::map<std::string, Tensor> tensors;
    // What the reference needs, written independently of LlamaConfig.
    int hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, inter = 0, vocab = 0;
    double theta = 10000, eps = 1e-5;
    std::string rope_type = "default";
    double factor = 1, low = 1, high = 4, original = 8192;
    bool tied = false, qkv_bias = false, o_bias = false, mlp_bias = false;
    int window = 0;
};

// Tensors with the checkpoint's shapes; biases only where the convention has them.
inline void fill_tensors(HfCheckpoint& c, uint64_t seed) {
    Rng rng(seed);
    auto mat = [&](int64_t r, int64_t cols, double sd) {
        Tensor t{{r, cols}, std::vector<float>(size_t(r * cols))};
        for (auto& x : t.data) x = float(rng.normal() * sd);
        return t;
    };
    auto vec = [&](int64_t n, double mean, double sd) {
        Tensor t{{n}, std::vector<float>(size_t(n))};
        for (auto& x : t.data) x = float(mean + sd * rng.normal());
        return t;
    };
    const int64_t H = c.hidden, QD = int64_t(c.heads) * c.head_dim, KD = int64_t(c.kv_heads) * c.head_dim, I = c.inter;
    c.tensors["model.embed_tokens.weight"] = mat(c.vocab, H, 1.0);
    if (!c.tied) c.tensors["lm_head.weight"] = mat(c.vocab, H, 0.2);
    c.tensors["model.norm.weight"] = vec(H, 1.0, 0.2);
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        c.tensors[p + "input_layernorm.weight"] = vec(H, 1.0, 0.2);
        c.tensors[p + "post_attention_layernorm.weight"] = vec(H, 1.0, 0.2);
        c.tensors[p + "self_attn.q_proj.weight"] = mat(QD, H, 0.3);
        c.tensors[p + "self_attn.k_proj.weight"] = mat(KD, H, 0.3);
        c.tensors[p + "self_attn.v_proj.weight"] = mat(KD, H, 0.2);
        c.tensors[p + "self_attn.o_proj.weight"] = mat(H, QD, 0.1);
        c.tensors[p + "mlp.gate_proj.weight"] = mat(I, H, 0.15);
        c.tensors[p + "mlp.up_proj.weight"] = mat(I, H, 0.15);
        c.tensors[p + "mlp.down_proj.weight"] = mat(H, I, 0.1);
        if (c.qkv_bias) {
            c.tensors[p + "self_attn.q_proj.bias"] = vec(QD, 0.0, 0.5);
            c.tensors[p + "self_attn.k_proj.bias"] = vec(KD, 0.0, 0.5);
            c.tensors[p + "self_attn.v_proj.bias"] = vec(KD, 0.0, 0.5);
        }
        if (c.o_bias) c.tensors[p + "self_attn.o_proj.bias"] = vec(H, 0.0, 0.3);
        if (c.mlp_bias) {
            c.tensors[p + "mlp.gate_proj.bias"] = vec(I, 0.0, 0.3);
            c.tensors[p + "mlp.up_proj.bias"] = vec(I, 0.0, 0.3);
            c.tensors[p + "mlp.down_proj.bias"] = vec(H, 0.0, 0.3);
        }
    }
}

// convention: "llama3" (transformers 4.x keys), "llama3-v5" (the same model in 5.x keys),
// "linear", "qwen2", "mistral".
inline HfCheckpoint hf_checkpoint(const std::string& convention, uint64_t seed = 1) {
    HfCheckpoint c;
    c.name = convention;
    c.hidden = 48, c.layers = 2, c.heads = 4, c.kv_heads = 2, c.head_dim = 16, c.inter = 80, c.vocab = 300;
    const std::string shape = R"("hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 80, "vocab_size": 300, "rms_norm_eps": 1e-05,
      "max_position_embeddings": 4096, "hidden_act": "silu", )";
    if (convention == "llama3" || convention == "llama3-v5") {
        // head_dim 16, theta 10000: wavelengths 6.3 .. 19869; original 256 puts frequencies in
        // all three regimes of the llama3 rule (kept, interpolated, divided).
        c.rope_type = "llama3", c.factor = 8, c.low = 1, c.high = 4, c.original = 256;
        c.tied = true, c.qkv_bias = true, c.o_bias = true, c.mlp_bias = true;
        const std::string common = shape + R"("head_dim": 16, "model_type": "llama", "tie_word_embeddings": true,
          "attention_bias": true, "mlp_bias": true, "bos_token_id": 1, "eos_token_id": [2, 3], )";
        if (convention == "llama3")
            c.config = "{" + common + R"("rope_theta": 10000.0, "torch_dtype": "float32", "rope_scaling": {"factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256,
              "rope_type": "llama3"}, "transformers_version": "4.45.0"})";
        else
            c.config = "{" + common + R"("dtype": "float32", "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0,
              "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
              "transformers_version": "5.0.0"})";
    } else if (convention == "linear") {
        // An explicit head_dim that is not hidden / heads (4 x 20 = 80 != 48).
        c.head_dim = 20, c.theta = 500, c.rope_type = "linear", c.factor = 4;
        c.config = "{" + shape + R"("head_dim": 20, "model_type": "llama", "rope_theta": 500.0,
          "rope_scaling": {"type": "linear", "factor": 4.0}, "tie_word_embeddings": false, "torch_dtype": "float32"})";
    } else if (convention == "qwen2") {
        c.head_dim = 12, c.theta = 1000000, c.tied = true, c.qkv_bias = true;  // head_dim = hidden / heads
        c.config = "{" + shape + R"("model_type": "qwen2", "rope_theta": 1000000.0, "tie_word_embeddings": true,
          "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21, "torch_dtype": "bfloat16",
          "rope_scaling": null, "bos_token_id": 151643, "eos_token_id": 151645})";
    } else if (convention == "mistral") {
        c.head_dim = 12, c.window = 5;
        c.config = "{" + shape + R"("model_type": "mistral", "rope_theta": 10000.0, "sliding_window": 5,
          "tie_word_embeddings": false, "torch_dtype": "float32", "head_dim": null})";
    } else {
        throw std::invalid_argument("hf_checkpoint: unknown convention " + convention);
    }
    fill_tensors(c, seed);
    return c;
}

// The RoPE inverse frequencies of modeling_rope_utils, in double.
inline std::vector<double> reference_inv_freq(const HfCheckpoint& c) {
    const int d = c.head_dim;
    std::vector<double> inv(size_t(d / 2));
    for (int i = 0; i < d / 2; ++i) inv[size_t(i)] = 1.0 / std::pow(c.theta, double(2 * i) / d);
    if (c.rope_type == "linear")
        for (auto& f : inv) f /= c.factor;
    if (c.rope_type == "llama3")
        for (auto& f : inv) {
            const double wavelen = 2 * M_PI / f;
            if (wavelen < c.original / c.high) continue;                  // high frequency: kept
            if (wavelen > c.original / c.low) { f /= c.factor; continue; }  // low frequency: divided
            const double s = (c.original / wavelen - c.low) / (c.high - c.low);
            f = (1 - s) * f / c.factor + s * f;
        }
    return inv;
}

// logits [n][vocab] of tokens at positions 0..n-1, in double: RMSNorm, q/k/v (+ biases), rotate_half
// RoPE, causal softmax attention (sliding window: key position > query position - window), o (+
// bias), SwiGLU (+ biases), final norm, lm_head or the tied embedding.
inline std::vector<double> hf_reference_logits(const HfCheckpoint& c, const std::vector<int32_t>& tokens) {
    const auto& T = c.tensors;
    const int H = c.hidden, NH = c.heads, KH = c.kv_heads, d = c.head_dim, I = c.inter, V = c.vocab;
    const size_t n = tokens.size();
    auto W = [&](const std::string& name) -> const std::vector<float>& { return T.at(name).data; };
    auto linear = [&](const std::string& p, const std::vector<double>& x, int out, bool bias) {
        const auto& w = W(p + ".weight");
        std::vector<double> y(size_t(out), 0.0);
        for (int o = 0; o < out; ++o) {
            for (size_t i = 0; i < x.size(); ++i) y[size_t(o)] += double(w[size_t(o) * x.size() + i]) * x[i];
            if (bias) y[size_t(o)] += W(p + ".bias")[size_t(o)];
        }
        return y;
    };
    auto rms = [&](const std::vector<double>& x, const std::vector<float>& w) {
        double ss = 0;
        for (double v : x) ss += v * v;
        const double inv = 1.0 / std::sqrt(ss / double(x.size()) + c.eps);
        std::vector<double> y(x.size());
        for (size_t j = 0; j < x.size(); ++j) y[j] = w[j] * (x[j] * inv);
        return y;
    };
    const auto inv_freq = reference_inv_freq(c);
    auto rope = [&](std::vector<double>& v, int heads, size_t pos) {
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < d / 2; ++i) {
                const double a = v[size_t(h * d + i)], b = v[size_t(h * d + i + d / 2)];
                const double ang = double(pos) * inv_freq[size_t(i)];
                v[size_t(h * d + i)] = a * std::cos(ang) - b * std::sin(ang);
                v[size_t(h * d + i + d / 2)] = b * std::cos(ang) + a * std::sin(ang);
            }
    };
    const auto& emb = W("model.embed_tokens.weight");
    std::vector<std::vector<double>> x(n);
    for (size_t t = 0; t < n; ++t) x[t].assign(emb.begin() + long(tokens[t]) * H, emb.begin() + long(tokens[t] + 1) * H);
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        std::vector<std::vector<double>> q(n), k(n), v(n);
        for (size_t t = 0; t < n; ++t) {
            const auto h = rms(x[t], W(p + "input_layernorm.weight"));
            q[t] = linear(p + "self_attn.q_proj", h, NH * d, c.qkv_bias);
            k[t] = linear(p + "self_attn.k_proj", h, KH * d, c.qkv_bias);
            v[t] = linear(p + "self_attn.v_proj", h, KH * d, c.qkv_bias);
            rope(q[t], NH, t);
            rope(k[t], KH, t);
        }
        for (size_t t = 0; t < n; ++t) {
            std::vector<double> att(size_t(NH * d), 0.0);
            const size_t first = c.window > 0 && t + 1 > size_t(c.window) ? t + 1 - size_t(c.window) : 0;
            for (int h = 0; h < NH; ++h) {
                const int g = h / (NH / KH);
                std::vector<double> s(t + 1, 0.0);
                double mx = -1e300, sum = 0;
                for (size_t u = first; u <= t; ++u) {
                    double dot = 0;
                    for (int j = 0; j < d; ++j) dot += q[t][size_t(h * d + j)] * k[u][size_t(g * d + j)];
                    s[u] = dot / std::sqrt(double(d));
                    mx = std::max(mx, s[u]);
                }
                for (size_t u = first; u <= t; ++u) sum += (s[u] = std::exp(s[u] - mx));
                for (size_t u = first; u <= t; ++u)
                    for (int j = 0; j < d; ++j) att[size_t(h * d + j)] += s[u] / sum * v[u][size_t(g * d + j)];
            }
            const auto o = linear(p + "self_attn.o_proj", att, H, c.o_bias);
            for (int j = 0; j < H; ++j) x[t][size_t(j)] += o[size_t(j)];
            const auto h2 = rms(x[t], W(p + "post_attention_layernorm.weight"));
            auto gate = linear(p + "mlp.gate_proj", h2, I, c.mlp_bias);
            const auto up = linear(p + "mlp.up_proj", h2, I, c.mlp_bias);
            for (int j = 0; j < I; ++j) gate[size_t(j)] = gate[size_t(j)] / (1.0 + std::exp(-gate[size_t(j)])) * up[size_t(j)];
            const auto down = linear(p + "mlp.down_proj", gate, H, c.mlp_bias);
            for (int j = 0; j < H; ++j) x[t][size_t(j)] += down[size_t(j)];
        }
    }
    std::vector<double> logits;
    const std::string out = c.tied ? "model.embed_tokens" : "lm_head";
    for (size_t t = 0; t < n; ++t) {
        const auto lg = linear(out, rms(x[t], W("model.norm.weight")), V, false);
        logits.insert(logits.end(), lg.begin(), lg.end());
    }
    return logits;
}

// A safetensors file in F32, F16 or BF16 (round to nearest even), header padded to 8 bytes.
inline std::vector<uint8_t> write_safetensors(const std::map<std::string, Tensor>& ts, const std::string& dtype) {
    if (dtype != "BF16") return make_safetensors(ts, dtype);
    std::string header = "{";
    std::vector<uint8_t> data;
    for (const auto& [name, t] : ts) {
        const size_t begin = data.size();
        for (float x : t.data) {
            uint32_t u;
            std::memcpy(&u, &x, 4);
            const uint16_t b = uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            data.push_back(uint8_t(b)), data.push_back(uint8_t(b >> 8));
        }
        std::string shape;
        for (size_t i = 0; i < t.shape.size(); ++i) {
            if (i) shape += ',';
            shape += std::to_string(t.shape[i]);
        }
        if (header.size() > 1) header += ",";
        header += "\"" + name + "\":{\"dtype\":\"BF16\",\"shape\":[" + shape + "],\"data_offsets\":[" +
                  std::to_string(begin) + "," + std::to_string(data.size()) + "]}";
    }
    header += "}";
    while (header.size() % 8) header += ' ';
    return file_bytes(header, data);
}

inline float bf16_round(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = ((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16;
    std::memcpy(&x, &u, 4);
    return x;
}

}  // namespace tqkv_test
