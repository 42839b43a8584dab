// The tiny model and runners of fuzz_runner_load, shared with make_seeds (which writes their saved
// states as seeds): hidden 16, one layer, 2 query heads / 1 KV head of 8 (fractional rates need >= 6), MLP 16,
// vocab 16, context 32.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tiny_model.hpp"
#include "tqkv/model.hpp"

namespace tqkv_fuzz {

struct RunnerFixture {
    // The cache specs of the runners; input byte 0 picks one (fp32 cannot be restored: the refusal).
    static constexpr const char* kSpecs[4] = {"fp32", "K4V4", "K3V2-w4", "K3.5V2.5-w2"};
    tqkv::LlamaModel model;
    tqkv::Calibration cal;
    std::vector<std::unique_ptr<tqkv::AttentionCache>> caches;
    std::vector<std::unique_ptr<tqkv::LlamaRunner>> runners;

    static tqkv::LlamaModel make_model() {
        const std::string config = R"({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 16, "max_position_embeddings": 32,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true})";
        tqkv::Rng rng(3);
        std::map<std::string, tqkv_test::Tensor> ts;
        auto mat = [&](int64_t r, int64_t c) {
            tqkv_test::Tensor t{{r, c}, std::vector<float>(size_t(r * c))};
            for (auto& x : t.data) x = float(0.3 * rng.normal());
            return t;
        };
        ts["model.embed_tokens.weight"] = mat(16, 16);
        ts["model.norm.weight"] = tqkv_test::Tensor{{16}, std::vector<float>(16, 1.0f)};
        const std::string p = "model.layers.0.";
        ts[p + "input_layernorm.weight"] = ts["model.norm.weight"];
        ts[p + "post_attention_layernorm.weight"] = ts["model.norm.weight"];
        ts[p + "self_attn.q_proj.weight"] = mat(16, 16);
        ts[p + "self_attn.k_proj.weight"] = mat(8, 16);
        ts[p + "self_attn.v_proj.weight"] = mat(8, 16);
        ts[p + "self_attn.o_proj.weight"] = mat(16, 16);
        ts[p + "mlp.gate_proj.weight"] = mat(16, 16);
        ts[p + "mlp.up_proj.weight"] = mat(16, 16);
        ts[p + "mlp.down_proj.weight"] = mat(16, 16);
        return tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse(config),
                                            tqkv::Safetensors::parse(tqkv_test::make_safetensors(ts)));
    }

    RunnerFixture() : model(make_model()) {
        const std::vector<int32_t> text = {1, 5, 9, 2, 14, 3, 3, 7, 0, 11, 6, 15};
        cal = tqkv::calibrate_kv(model, text, 32);
        for (const char* spec : kSpecs) {
            caches.push_back(tqkv::make_cache(spec, tqkv::CacheShape::of(model.config()), &cal));
            runners.push_back(std::make_unique<tqkv::LlamaRunner>(model, *caches.back(), 4));
        }
    }
};

}  // namespace tqkv_fuzz
