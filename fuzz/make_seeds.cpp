// Writes the seed corpora of the fuzz targets: valid serialized caches of several configurations
// and valid .npy files, so the fuzzers start from deep inside the parsers. Generated at build /
// test time, never committed.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "hf_checkpoint.hpp"
#include "runner_model.hpp"
#include "tiny_model.hpp"
#include "tokenizer_json.hpp"
#include "tqkv/tokenizer.hpp"
#include "tqkv/tqkv.hpp"

namespace fs = std::filesystem;

static void write(const fs::path& p, const std::vector<uint8_t>& b) {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const fs::path root = argv[1];
    fs::create_directories(root / "cache");
    fs::create_directories(root / "npy");
    fs::create_directories(root / "kernels");
    fs::create_directories(root / "model");
    fs::create_directories(root / "spec");
    fs::create_directories(root / "tokenizer");
    fs::create_directories(root / "calibration");
    fs::create_directories(root / "runner");
    tqkv::Rng rng(1);
    int i = 0;
    for (auto [heads, kv, dim, kb, vb, window, prod] :
         {std::tuple{2, 1, 16, 4.0, 4.0, 0, false}, {4, 2, 32, 3.0, 2.0, 3, true}, {1, 1, 8, 2.0, 1.0, 2, false},
          {2, 2, 64, 4.5, 3.0, 0, false}}) {
        tqkv::CacheConfig c;
        c.heads = heads;
        c.kv_heads = kv;
        c.head_dim = dim;
        c.key_bits = kb;
        c.value_bits = vb;
        c.window = window;
        c.block_tokens = 32;
        c.key_method = prod ? tqkv::Method::Prod : tqkv::Method::Mse;
        if (kb != int(kb)) {
            c.key_high_channels.clear();
            for (int j = 0; j < int((kb - int(kb)) * dim + 0.5); ++j) c.key_high_channels.push_back(j);
        }
        tqkv::KVCache cache(c);
        std::vector<float> k(size_t(kv) * dim * 40), v(k.size());
        for (auto& x : k) x = float(rng.normal());
        for (auto& x : v) x = float(rng.normal());
        cache.append(k, v);
        write(root / "cache" / ("seed" + std::to_string(i++)), cache.save());
        tqkv::ModelKVCache model(2, c);
        model.append(0, std::span(k).first(size_t(kv) * dim * 5), std::span(v).first(size_t(kv) * dim * 5));
        model.append(1, std::span(k).first(size_t(kv) * dim * 3), std::span(v).first(size_t(kv) * dim * 3));
        write(root / "cache" / ("seed" + std::to_string(i++)), model.save());
    }
    {  // A sliding attention window that has dropped tokens (format version 3: window, dropped count).
        tqkv::CacheConfig c;
        c.heads = 2;
        c.kv_heads = 1;
        c.head_dim = 16;
        c.window = 2;
        c.block_tokens = 32;
        c.attention_window = 7;
        tqkv::KVCache cache(c);
        std::vector<float> k(16 * 45), v(k.size());
        for (auto& x : k) x = float(rng.normal());
        for (auto& x : v) x = float(rng.normal());
        cache.append(std::span(k).first(16 * 40), std::span(v).first(16 * 40));
        cache.append(std::span(k).subspan(16 * 40), std::span(v).subspan(16 * 40));  // drops tokens 0..33
        write(root / "cache" / ("seed" + std::to_string(i++)), cache.save());
    }
    // Calibrations, and caches built with them (means and debias flags in the header).
    for (auto [layers, kv, dim] : {std::tuple{1, 1, 8}, {2, 2, 16}, {2, 1, 32}}) {
        tqkv::Calibration cal(layers, kv, dim);
        std::vector<float> k(size_t(kv) * dim * 6), v(k.size());
        for (auto& x : k) x = float(rng.normal() + 2.0);
        for (auto& x : v) x = float(rng.normal() - 1.0);
        for (int l = 0; l < layers; ++l) cal.add(l, k, v);
        write(root / "calibration" / ("seed" + std::to_string(i++)), cal.save());
        tqkv::ModelKVCache m({layers, kv, kv, dim}, tqkv::CacheSpec::parse("K3.5V2.5-w2"), &cal);
        for (int l = 0; l < layers; ++l) m.append(l, k, v);
        write(root / "cache" / ("seed" + std::to_string(i++)), m.save());
    }
    std::vector<float> x(2 * 3 * 8);
    for (auto& f : x) f = float(rng.normal());
    write(root / "npy" / "f32", tqkv::make_npy({2, 3, 8}, x.data()));
    write(root / "npy" / "f16", tqkv::make_npy({6, 8}, x.data(), true));
    write(root / "npy" / "v1d", tqkv::make_npy({48}, x.data()));
    std::vector<uint8_t> k(300);
    for (auto& b : k) b = uint8_t(rng.next());
    write(root / "kernels" / "random", k);
    // Cache specs (fuzz_spec: first byte even = make_cache, odd = make_budget_cache with that
    // many KiB).
    int si = 0;
    for (const char* spec : {"K4V4", "K3.5V2.5-w16", "K3V3-prod-w8", "K4V4-l0=K8V8", "K3V3-s4", "K4V3-raw-x7", "fp16",
                             "q4_0", "q8_0", "kivi2", "exact", "q4_0-rot", "q8_0-rots-x3", "turbo3", "turbo2-x5",
                             "K3V2-w16-l0=K4V3-l-1=K4V3.5", "compact-b", "K4V4-l-2=K2V2-x3"}) {
        std::vector<uint8_t> b = {0x40};
        b.insert(b.end(), spec, spec + std::strlen(spec));
        write(root / "spec" / ("seed" + std::to_string(si++)), b);
    }
    for (const char* spec : {"tiered", "tiered-K4V4-K2V2-w4-s2", "tiered-K3V2.5-K2V2-g48-fg", "tiered-none-w8", "h2o-r0.25",
                             "snapkv-o8", "snapkv-prefill", "streaming-s4"}) {
        std::vector<uint8_t> b = {0x41};
        b.insert(b.end(), spec, spec + std::strlen(spec));
        write(root / "spec" / ("seed" + std::to_string(si++)), b);
    }
    // Models small enough for -max_len: hidden 8, 2 heads of 4 (1 KV head), MLP 8, vocab 16, one
    // layer; tied and untied embeddings.
    for (bool tied : {true, false}) {
        const std::string config = std::string(R"({"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 1, "intermediate_size": 8, "vocab_size": 16, "max_position_embeddings": 32,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": )") + (tied ? "true}" : "false}");
        std::map<std::string, tqkv_test::Tensor> ts;
        auto mat = [&](int64_t r, int64_t c) {
            tqkv_test::Tensor t{{r, c}, std::vector<float>(size_t(r * c))};
            for (auto& x : t.data) x = float(0.3 * rng.normal());
            return t;
        };
        ts["model.embed_tokens.weight"] = mat(16, 8);
        if (!tied) ts["lm_head.weight"] = mat(16, 8);
        ts["model.norm.weight"] = tqkv_test::Tensor{{8}, std::vector<float>(8, 1.0f)};
        const std::string p = "model.layers.0.";
        ts[p + "input_layernorm.weight"] = ts["model.norm.weight"];
        ts[p + "post_attention_layernorm.weight"] = ts["model.norm.weight"];
        ts[p + "self_attn.q_proj.weight"] = mat(8, 8);
        ts[p + "self_attn.k_proj.weight"] = mat(4, 8);
        ts[p + "self_attn.v_proj.weight"] = mat(4, 8);
        ts[p + "self_attn.o_proj.weight"] = mat(8, 8);
        ts[p + "mlp.gate_proj.weight"] = mat(8, 8);
        ts[p + "mlp.up_proj.weight"] = mat(8, 8);
        ts[p + "mlp.down_proj.weight"] = mat(8, 8);
        // Checked here so that a seed that does not load fails the build step, not the fuzzer.
        const auto st = tqkv_test::make_safetensors(ts);
        const tqkv::Safetensors parsed = tqkv::Safetensors::parse(st);
        tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse(config), parsed);
        std::vector<uint8_t> seed = {uint8_t(config.size()), uint8_t(config.size() >> 8)};
        seed.insert(seed.end(), config.begin(), config.end());
        seed.insert(seed.end(), st.begin(), st.end());
        write(root / "model" / (tied ? "tied" : "untied"), seed);
        if (tied) continue;
        // The same file behind a model.safetensors.index.json (fuzz_model reads the JSON as one too).
        std::string index = R"({"metadata": {"total_size": 1}, "weight_map": {)";
        for (const auto& [name, t] : ts) index += "\"" + name + "\": \"model.safetensors\", ";
        index.resize(index.size() - 2);
        index += "}}";
        const std::string shard_name = "model.safetensors";
        tqkv::SafetensorsIndex::parse(index).check(std::span<const tqkv::Safetensors>(&parsed, 1),
                                                   std::span<const std::string>(&shard_name, 1));
        std::vector<uint8_t> indexed = {uint8_t(index.size()), uint8_t(index.size() >> 8)};
        indexed.insert(indexed.end(), index.begin(), index.end());
        indexed.insert(indexed.end(), st.begin(), st.end());
        write(root / "model" / "index", indexed);
    }
    // Hugging Face conventions on the same tiny shape: llama3 rope scaling in both config spellings
    // with attention and MLP biases, linear scaling, Qwen2 q/k/v biases, Mistral's sliding window.
    const std::string shape = R"("hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 1, "intermediate_size": 8, "vocab_size": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, )";
    const struct {
        const char* name;
        std::string config;
        bool qkv_bias, o_bias, mlp_bias;
    } hf[] = {
        {"llama3", shape + R"("model_type": "llama", "tie_word_embeddings": true, "attention_bias": true, "mlp_bias": true,
 "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
 "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, "torch_dtype": "bfloat16"})", true, true, true},
        {"llama3v5", shape + R"("model_type": "llama", "tie_word_embeddings": true, "dtype": "float16",
 "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
 "high_freq_factor": 4.0, "original_max_position_embeddings": 16}})", false, false, false},
        {"linear", shape + R"("model_type": "llama", "tie_word_embeddings": true, "head_dim": 4,
 "rope_scaling": {"type": "linear", "factor": 2.0}})", false, false, false},
        {"qwen2", shape + R"("model_type": "qwen2", "tie_word_embeddings": true, "use_sliding_window": false,
 "sliding_window": 4096, "rope_theta": 1000000.0})", true, false, false},
        {"mistral", shape + R"("model_type": "mistral", "tie_word_embeddings": true, "sliding_window": 8})", false, false, false},
    };
    for (const auto& h : hf) {
        tqkv_test::HfCheckpoint c;
        c.hidden = 8, c.layers = 1, c.heads = 2, c.kv_heads = 1, c.head_dim = 4, c.inter = 8, c.vocab = 16, c.tied = true;
        c.qkv_bias = h.qkv_bias, c.o_bias = h.o_bias, c.mlp_bias = h.mlp_bias;
        tqkv_test::fill_tensors(c, 3);
        const auto st = tqkv_test::write_safetensors(c.tensors, "BF16");
        tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse("{" + h.config), tqkv::Safetensors::parse(st));
        const std::string config = "{" + h.config;
        std::vector<uint8_t> seed = {uint8_t(config.size()), uint8_t(config.size() >> 8)};
        seed.insert(seed.end(), config.begin(), config.end());
        seed.insert(seed.end(), st.begin(), st.end());
        write(root / "model" / h.name, seed);
    }
    // Tokenizers (fuzz_tokenizer: 2-byte length, tokenizer.json, then the text to encode).
    const std::string llama3_pre = std::string(R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":")") +
                                   tqkv_test::json_escape(tqkv_test::kLlama3) +
                                   R"("},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]})";
    const std::string smol_pre = R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)"
                                 R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true}]})";
    const std::string texts[] = {"Hello world's  123 !!\n\n  x<|endoftext|>", "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac 12345 IT'S",
                                 "hi hi! \xff\xfe\t\r\n",
                                 // marks to compose and reorder, Hangul jamo, a composition exclusion (NFC)
                                 "e\xcc\x81 \xe1\x84\x80\xe1\x85\xa1 a\xcc\x81\xcc\xa3 \xe0\xa5\x98"};
    std::string nfc_json = tqkv_test::byte_level_json(tqkv_test::kGpt2Pre, tqkv_test::kMerges, false);
    nfc_json.replace(nfc_json.find("\"normalizer\":null"), 17, "\"normalizer\":{\"type\":\"NFC\"}");
    // A tokenizer seed: 2-byte little-endian length of the tokenizer file, the file, then text.
    int ti = 0;
    auto tokenizer_seeds = [&](const std::string& file) {
        for (const std::string& text : texts) {
            std::vector<uint8_t> seed = {uint8_t(file.size()), uint8_t(file.size() >> 8)};
            seed.insert(seed.end(), file.begin(), file.end());
            seed.insert(seed.end(), text.begin(), text.end());
            write(root / "tokenizer" / ("seed" + std::to_string(ti++)), seed);
        }
    };
    for (const std::string& json : {tqkv_test::byte_level_json(tqkv_test::kGpt2Pre, tqkv_test::kMerges, false), nfc_json,
                                    tqkv_test::byte_level_json(llama3_pre, tqkv_test::kMerges, true),
                                    tqkv_test::byte_level_json(smol_pre, tqkv_test::kMerges, false), tqkv_test::sentencepiece_json()}) {
        tqkv::Tokenizer::from_json(json);  // a seed that does not load fails here
        tokenizer_seeds(json);
    }
    // tokenizer.model files (our protobuf reader) in the same seed format.
    for (const std::string& model : {tqkv_test::spm_bpe_model(), tqkv_test::spm_unigram_model(),
                                     tqkv_test::spm_unigram_model() + tqkv_test::pb_bytes(3, tqkv_test::pb_bytes(2, tqkv_test::spm_charsmap_a()))}) {
        tqkv::Tokenizer::from_bytes(model);  // a seed that does not load fails here
        tokenizer_seeds(model);
    }
    // Saved runners (fuzz_runner_load: byte 0 picks the runner of runner_model.hpp, then its bytes)
    // after 0, 3 and 9 tokens, for each runner whose cache can be saved.
    {
        tqkv_fuzz::RunnerFixture fx;
        std::vector<float> logits(16);
        for (size_t k = 0; k < fx.runners.size(); ++k)
            for (size_t n : {0, 3, 9}) {
                tqkv::LlamaRunner& run = *fx.runners[k];
                run.reset();
                for (size_t t = 0; t < n; ++t) run.decode(int32_t((t * 5 + k) % 16), logits);
                std::vector<uint8_t> seed = {uint8_t(k)};
                try {
                    const std::vector<uint8_t> b = run.save();
                    seed.insert(seed.end(), b.begin(), b.end());
                } catch (const std::invalid_argument&) {
                    continue;  // fp32: cannot be saved
                }
                write(root / "runner" / ("seed" + std::to_string(k) + "_" + std::to_string(n)), seed);
            }
    }
    return 0;
}
