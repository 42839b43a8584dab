// Hugging Face checkpoint conventions: Llama 3 (llama3 rope scaling, attention and MLP biases, tied
// embeddings) in transformers 4.x and 5.x config spellings, linear rope scaling with an explicit
// head_dim, Qwen2 (q/k/v biases), Mistral (sliding window); fp32 / fp16 / bf16 tensors; sharded
// checkpoints; and the refusals of what the runner does not implement.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "hf_checkpoint.hpp"
#include "tqkv/budget.hpp"
#include "tqkv/model.hpp"

using namespace tqkv;
using namespace tqkv_test;

namespace {

std::vector<int32_t> some_tokens(size_t n, int vocab, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = int32_t(rng.uniform() * vocab);
    return t;
}

LlamaModel model_of(const HfCheckpoint& c, const std::string& dtype = "F32") {
    return LlamaModel::from_parts(LlamaConfig::parse(c.config), Safetensors::parse(write_safetensors(c.tensors, dtype)));
}

std::vector<float> runner_logits(const LlamaModel& m, AttentionCache& cache, const std::vector<int32_t>& tokens,
                                 int chunk = 7) {
    LlamaRunner run(m, cache, chunk);
    std::vector<float> lg(tokens.size() * size_t(m.config().vocab_size));
    run.prefill(tokens, lg);
    return lg;
}

double max_diff(const std::vector<float>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
    return m;
}

// Exact attention that honours a sliding window: the runner's part of sliding-window attention
// is checked through it (the library's exact cache does not drop old tokens yet, and the runner
// refuses to pass the window with it; see the test below).
class WindowedExactCache final : public AttentionCache {
public:
    explicit WindowedExactCache(const CacheShape& s) : AttentionCache(s), k_(size_t(s.layers)), v_(size_t(s.layers)) {}
    std::string name() const override { return "windowed-exact"; }
    bool set_attention_window(size_t w) override {
        window_ = w;
        return true;
    }
    void append(int l, std::span<const float> k, std::span<const float> v) override {
        k_[size_t(l)].insert(k_[size_t(l)].end(), k.begin(), k.end());
        v_[size_t(l)].insert(v_[size_t(l)].end(), v.begin(), v.end());
    }
    void attend(int l, std::span<const float> q, std::span<float> out) override {
        const int d = shape_.head_dim, H = shape_.heads, KH = shape_.kv_heads;
        const size_t row = size_t(KH) * d, T = tokens(l), m = q.size() / (size_t(H) * d);
        for (size_t i = 0; i < m; ++i) {
            const size_t last = T - m + i, first = window_ && last + 1 > window_ ? last + 1 - window_ : 0;
            for (int h = 0; h < H; ++h) {
                const int g = h / (H / KH);
                const float* qh = &q[(i * H + h) * size_t(d)];
                std::vector<double> s(last + 1);
                double mx = -1e300, sum = 0;
                for (size_t u = first; u <= last; ++u) {
                    double dot = 0;
                    for (int j = 0; j < d; ++j) dot += double(qh[j]) * k_[size_t(l)][u * row + size_t(g * d + j)];
                    mx = std::max(mx, s[u] = dot / std::sqrt(double(d)));
                }
                for (size_t u = first; u <= last; ++u) sum += (s[u] = std::exp(s[u] - mx));
                for (int j = 0; j < d; ++j) {
                    double acc = 0;
                    for (size_t u = first; u <= last; ++u) acc += s[u] / sum * v_[size_t(l)][u * row + size_t(g * d + j)];
                    out[(i * H + h) * size_t(d) + size_t(j)] = float(acc);
                }
            }
        }
    }
    size_t tokens(int l) const override { return k_[size_t(l)].size() / (size_t(shape_.kv_heads) * shape_.head_dim); }
    void clear() override {
        for (auto& x : k_) x.clear();
        for (auto& x : v_) x.clear();
    }
    double format_bytes() const override { return 0; }
    size_t memory_bytes() const override { return 0; }

private:
    std::vector<std::vector<float>> k_, v_;
    size_t window_ = 0;
};

}  // namespace

TEST_CASE("hf: both config.json spellings of Llama 3 parse to the same model", "[hf][model]") {
    const LlamaConfig a = LlamaConfig::parse(hf_checkpoint("llama3").config);
    const LlamaConfig b = LlamaConfig::parse(hf_checkpoint("llama3-v5").config);
    for (const LlamaConfig* c : {&a, &b}) {
        CHECK(c->rope_scaling.type == "llama3");
        CHECK(c->rope_scaling.factor == 8.0);
        CHECK(c->rope_scaling.low_freq_factor == 1.0);
        CHECK(c->rope_scaling.high_freq_factor == 4.0);
        CHECK(c->rope_scaling.original_max_position_embeddings == 256);
        CHECK(c->rope_theta == 10000.0);
        CHECK(c->dtype == "float32");
        CHECK(c->attention_bias);
        CHECK(c->mlp_bias);
        CHECK(c->tie_word_embeddings);
        CHECK(c->head_dim == 16);
        CHECK(c->bos_token_id == 1);
        CHECK(c->eos_token_ids == std::vector<int>{2, 3});
    }
    CHECK(a.rope_inv_freq() == b.rope_inv_freq());
    const LlamaConfig q = LlamaConfig::parse(hf_checkpoint("qwen2").config);
    CHECK(q.model_type == "qwen2");
    CHECK(q.qkv_bias);
    CHECK(!q.attention_bias);
    CHECK(q.sliding_window == 0);  // use_sliding_window false: the window key is ignored, as transformers does
    CHECK(LlamaConfig::parse(hf_checkpoint("mistral").config).sliding_window == 5);
    const LlamaConfig lin = LlamaConfig::parse(hf_checkpoint("linear").config);
    CHECK(lin.head_dim == 20);
    CHECK(lin.rope_scaling.type == "linear");  // the older "type" key
}

TEST_CASE("hf: rope scaling frequencies follow modeling_rope_utils", "[hf][model]") {
    for (const char* conv : {"llama3", "linear", "qwen2", "mistral"}) {
        INFO(conv);
        const HfCheckpoint c = hf_checkpoint(conv);
        const auto got = LlamaConfig::parse(c.config).rope_inv_freq();
        const auto want = reference_inv_freq(c);
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) CHECK(std::abs(got[i] - want[i]) <= 1e-6 * want[i]);
    }
    // llama3 with these numbers: the three highest frequencies kept, the fourth interpolated, the
    // rest divided by the factor (so the rule is exercised, not only the plain formula).
    const HfCheckpoint c = hf_checkpoint("llama3");
    HfCheckpoint plain = c;
    plain.rope_type = "default";
    const auto scaled = reference_inv_freq(c), base = reference_inv_freq(plain);
    for (size_t i = 0; i < 3; ++i) CHECK(scaled[i] == base[i]);
    CHECK(scaled[3] < base[3]);
    CHECK(scaled[3] > base[3] / 8);
    for (size_t i = 4; i < 8; ++i) CHECK(scaled[i] == Approx(base[i] / 8).epsilon(1e-12));
}

TEST_CASE("hf: logits of each convention match the reference within 1e-3 (fp32 weights)", "[hf][model]") {
    for (const char* conv : {"llama3", "llama3-v5", "linear", "qwen2", "mistral"}) {
        INFO("convention " << conv);
        const HfCheckpoint c = hf_checkpoint(conv, 11);
        const LlamaModel m = model_of(c);
        const auto tokens = some_tokens(23, c.vocab, 5);  // > the Mistral window of 5
        const auto ref = hf_reference_logits(c, tokens);
        WindowedExactCache cache(CacheShape::of(m.config()));
        const auto got = runner_logits(m, cache, tokens);
        const double diff = max_diff(got, ref);
        INFO("max |logit - reference| = " << diff);
        CHECK(diff < 1e-3);
        // The library's exact cache gives the same (it honours the sliding window too).
        auto exact = make_exact_cache(CacheShape::of(m.config()));
        CHECK(max_diff(runner_logits(m, *exact, tokens), ref) < 1e-3);
    }
    // The features matter: dropping the biases, the rope scaling or the window changes the logits.
    const auto tokens = some_tokens(23, 300, 5);
    for (const char* conv : {"llama3", "qwen2", "mistral"}) {
        HfCheckpoint c = hf_checkpoint(conv, 11);
        const auto ref = hf_reference_logits(c, tokens);
        if (c.window) c.window = 0;
        else if (c.rope_type == "llama3") c.rope_type = "default";
        else c.qkv_bias = false;
        INFO(conv);
        double d = 0;
        const auto other = hf_reference_logits(c, tokens);
        for (size_t i = 0; i < ref.size(); ++i) d = std::max(d, std::abs(ref[i] - other[i]));
        CHECK(d > 1e-2);
    }
}

TEST_CASE("hf: a sliding-window model refuses to pass its window with a cache that cannot drop tokens", "[hf][model]") {
    const HfCheckpoint c = hf_checkpoint("mistral", 3);
    const LlamaModel m = model_of(c);
    const auto tokens = some_tokens(8, c.vocab, 2);
    // (the dense, emulated and tqkv caches honour the window; the budgeted ones do not)
    auto cache = make_budget_cache("streaming", CacheShape::of(m.config()), size_t(1) << 20);
    LlamaRunner run(m, *cache, 4);
    std::vector<float> lg(size_t(c.vocab));
    run.prefill(std::span(tokens).first(5), lg);  // within the window: fine
    CHECK_THROWS_WITH(run.decode(tokens[5], lg), Catch::Contains("sliding window of 5"));
    CHECK(run.position() == 5);
    CHECK(cache->tokens(0) == 5);
    run.reset();
    CHECK_THROWS_WITH(run.prefill(tokens, lg), Catch::Contains("cannot drop older tokens"));
    CHECK(run.position() == 0);
    CHECK(cache->tokens(0) == 0);
}

TEST_CASE("hf: Mistral past its sliding window with the compressed tqkv cache follows the windowed reference", "[hf][model][swa]") {
    // 40 tokens through a window of 5: the compressed cache drops what leaves the window. Against
    // the emulated path (the same codes decoded, exact attention masked to the window): float
    // rounding apart, the same logits; so its distance to the exact reference is the codec's error.
    // Cost: ~0.1 s natively.
    const HfCheckpoint c = hf_checkpoint("mistral", 11);
    const LlamaModel m = model_of(c);
    const CacheShape shape = CacheShape::of(m.config());
    const auto tokens = some_tokens(40, c.vocab, 5);
    const auto ref = hf_reference_logits(c, tokens);
    auto diff = [](const std::vector<float>& a, const std::vector<float>& b) {
        double d = 0;
        for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - b[i]));
        return d;
    };
    for (const std::string spec : {"K8V8-exact", "K4V4-exact", "K3V2-w2-exact"}) {
        INFO(spec);
        auto tq = make_cache(spec, shape), emu = make_cache(spec + "-emu", shape);
        const auto a = runner_logits(m, *tq, tokens), b = runner_logits(m, *emu, tokens);
        const double vs_emu = diff(a, b), a_ref = max_diff(a, ref), emu_ref = max_diff(b, ref);
        INFO("max |logit difference|: tqkv vs emulated " << vs_emu << ", tqkv vs reference " << a_ref
                                                        << ", emulated vs reference " << emu_ref);
        CHECK(vs_emu < 5e-4);  // measured 3e-6 (K8V8), 4e-5 (K4V4); the codec's own error: 0.07 (K8V8) to 1.5 (K4V4)
        CHECK(a_ref <= emu_ref + 5e-4);
        CHECK(tq->tokens(0) == 40);
        // Chunked prefill attended as a batch (chunk 7 > window 5): each query its own window.
        auto tq2 = make_cache(spec, shape);
        LlamaRunner run(m, *tq2, 7);
        run.sequential_attention = false;
        std::vector<float> lg(tokens.size() * size_t(c.vocab));
        run.prefill(tokens, lg);
        CHECK(diff(lg, a) < 5e-4);
    }
    // Switched off (the same model without its window): far from the reference, while 8-bit codes
    // with the window are as close to it as their codec error (emulated path, measured 0.071; 5.7
    // without the window).
    auto tq = make_cache("K8V8-exact", shape);
    const double with_window = max_diff(runner_logits(m, *tq, tokens), ref);
    LlamaConfig no_window = LlamaConfig::parse(c.config);
    no_window.sliding_window = 0;
    const LlamaModel m0 = LlamaModel::from_parts(no_window, Safetensors::parse(write_safetensors(c.tensors, "F32")));
    auto tq0 = make_cache("K8V8-exact", shape);
    const double without = max_diff(runner_logits(m0, *tq0, tokens), ref);
    INFO("K8V8 vs the reference: with the window " << with_window << ", without " << without);
    CHECK(without > 20 * with_window);
}

TEST_CASE("hf: a Mistral runner past its window saves and restores its tqkv cache", "[hf][model][swa]") {
    const HfCheckpoint c = hf_checkpoint("mistral", 12);
    const LlamaModel m = model_of(c);
    const auto tokens = some_tokens(30, c.vocab, 6);
    auto c1 = make_cache("K4V4", CacheShape::of(m.config())), c2 = make_cache("K4V4", CacheShape::of(m.config()));
    LlamaRunner r1(m, *c1, 8), r2(m, *c2, 8);
    std::vector<float> l1(size_t(c.vocab)), l2(l1.size());
    r1.prefill(std::span(tokens).first(20), l1);
    r2.load(r1.save());
    CHECK(r2.position() == 20);
    for (size_t t = 20; t < 30; ++t) {
        r1.decode(tokens[t], l1);
        r2.decode(tokens[t], l2);
        CHECK(l1 == l2);
    }
    // A cache with another window (or none) does not take the bytes.
    const LlamaConfig mc = LlamaConfig::parse(c.config);
    LlamaConfig other = mc;
    other.sliding_window = 7;
    const LlamaModel m7 = LlamaModel::from_parts(other, Safetensors::parse(write_safetensors(c.tensors, "F32")));
    auto c3 = make_cache("K4V4", CacheShape::of(m.config()));
    LlamaRunner r3(m7, *c3, 8);
    CHECK_THROWS_WITH(r3.load(r1.save()), Catch::Contains("coded differently"));
}

TEST_CASE("hf: fp16 and bf16 tensors load as their values", "[hf][model]") {
    HfCheckpoint c = hf_checkpoint("qwen2", 4);
    for (auto& [name, t] : c.tensors)
        for (auto& v : t.data) v = bf16_round(v);
    const auto tokens = some_tokens(9, c.vocab, 8);
    auto e1 = make_exact_cache(CacheShape::of(LlamaConfig::parse(c.config)));
    auto e2 = make_exact_cache(CacheShape::of(LlamaConfig::parse(c.config)));
    const auto a = runner_logits(model_of(c, "BF16"), *e1, tokens);
    const auto b = runner_logits(model_of(c, "F32"), *e2, tokens);
    CHECK(a == b);
    CHECK(max_diff(a, hf_reference_logits(c, tokens)) < 1e-3);
    HfCheckpoint h = hf_checkpoint("llama3", 4);
    for (auto& [name, t] : h.tensors)
        for (auto& v : t.data) v = half_to_float(float_to_half(v));
    auto e3 = make_exact_cache(CacheShape::of(LlamaConfig::parse(h.config)));
    CHECK(max_diff(runner_logits(model_of(h, "F16"), *e3, tokens), hf_reference_logits(h, tokens)) < 1e-3);
}

TEST_CASE("hf: a sharded checkpoint loads like the single file", "[hf][model]") {
    const HfCheckpoint c = hf_checkpoint("llama3", 6);
    const auto dir = std::filesystem::temp_directory_path() / ("tqkv_hf_shards_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto write = [&](const std::string& name, const std::string& text) { std::ofstream(dir / name, std::ios::binary) << text; };
    write("config.json", c.config);
    // Two shards: layer 1 in the second file, everything else in the first.
    std::map<std::string, Tensor> s1, s2;
    std::string map;
    for (const auto& [name, t] : c.tensors) {
        const bool second = name.rfind("model.layers.1.", 0) == 0;
        (second ? s2 : s1)[name] = t;
        map += std::string(map.empty() ? "" : ",") + "\"" + name + "\": \"model-0000" + (second ? "2" : "1") + "-of-00002.safetensors\"";
    }
    auto bytes = [](const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); };
    write("model-00001-of-00002.safetensors", bytes(write_safetensors(s1, "BF16")));
    write("model-00002-of-00002.safetensors", bytes(write_safetensors(s2, "BF16")));
    write("model.safetensors.index.json", "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {" + map + "}}");
    const LlamaModel sharded = LlamaModel::load(dir.string());
    const LlamaModel single = model_of(c, "BF16");
    CHECK(sharded.parameters() == single.parameters());
    const auto tokens = some_tokens(6, c.vocab, 1);
    auto e1 = make_exact_cache(CacheShape::of(sharded.config())), e2 = make_exact_cache(CacheShape::of(single.config()));
    CHECK(runner_logits(sharded, *e1, tokens) == runner_logits(single, *e2, tokens));
    // A shard path that leaves the directory is refused; a missing shard is named.
    write("model.safetensors.index.json", "{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}");
    CHECK_THROWS_WITH(LlamaModel::load(dir.string()), Catch::Contains("not a plain file name"));
    write("model.safetensors.index.json", "{\"weight_map\": {\"model.norm.weight\": \"gone.safetensors\"}}");
    CHECK_THROWS_WITH(LlamaModel::load(dir.string()), Catch::Contains("gone.safetensors"));
    // The index must say where each tensor is: a tensor it puts in a shard that lacks it is named.
    write("model.safetensors.index.json", "{\"weight_map\": {\"model.norm.weight\": \"model-00002-of-00002.safetensors\", "
                                          "\"model.layers.1.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\"}}");
    CHECK_THROWS_WITH(LlamaModel::load(dir.string()), Catch::Contains("shard \"model-00002-of-00002.safetensors\" lacks tensor \"model.norm.weight\""));
    std::filesystem::remove_all(dir);
}

TEST_CASE("hf: what the runner does not implement is refused by name", "[hf][model]") {
    const std::string base = hf_checkpoint("llama3").config;
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = base;
        const auto p = s.find(from);
        REQUIRE(p != std::string::npos);
        return s.replace(p, from.size(), to);
    };
    auto refused = [](const std::string& cfg, const std::string& what) {
        INFO(what);
        CHECK_THROWS_WITH(LlamaConfig::parse(cfg), Catch::Contains("unsupported: " + what));
    };
    refused(with("\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\""), "rope_scaling.rope_type \"yarn\"");
    refused(with("\"rope_type\": \"llama3\"", "\"rope_type\": \"dynamic\""), "rope_scaling.rope_type \"dynamic\"");
    refused(with("\"model_type\": \"llama\"", "\"model_type\": \"gemma\""), "model_type \"gemma\"");
    refused(with("\"model_type\": \"llama\"", "\"model_type\": \"mixtral\""), "model_type \"mixtral\"");
    refused(with("\"head_dim\": 16,", "\"num_local_experts\": 8,"), "num_local_experts");
    refused(with("\"head_dim\": 16,", "\"head_dim\": 16, \"kv_lora_rank\": 512,"), "kv_lora_rank");
    refused(with("\"silu\"", "\"gelu_pytorch_tanh\""), "hidden_act \"gelu_pytorch_tanh\"");
    refused(with("\"head_dim\": 16,", "\"head_dim\": 16, \"partial_rotary_factor\": 0.5,"), "partial_rotary_factor");
    refused(with("\"head_dim\": 16,", "\"head_dim\": 16, \"quantization_config\": {\"quant_method\": \"gptq\"},"),
            "quantization_config");
    refused(with("\"torch_dtype\": \"float32\"", "\"torch_dtype\": \"float8_e4m3fn\""), "dtype \"float8_e4m3fn\"");
    refused(with("\"head_dim\": 16,", "\"head_dim\": 16, \"layer_types\": [\"sliding_attention\", \"full_attention\"],"),
            "layer_types");
    const std::string qwen = hf_checkpoint("qwen2").config;
    std::string q = qwen;
    q.replace(q.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
    refused(q, "use_sliding_window");
    // Malformed rope keys and disagreeing spellings are errors naming the key.
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"low_freq_factor\": 1.0,", "")), Catch::Contains("rope_scaling.low_freq_factor"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"factor\": 8.0,", "\"factor\": \"8\",")), Catch::Contains("must be a number"));
    const std::string v5 = hf_checkpoint("llama3-v5").config;
    std::string both = v5;
    both.replace(both.find("\"dtype\""), 7, "\"rope_theta\": 500000.0, \"dtype\"");
    CHECK_THROWS_WITH(LlamaConfig::parse(both), Catch::Contains("disagree"));
    // A bias tensor the config does not announce is refused rather than ignored.
    HfCheckpoint c = hf_checkpoint("mistral");
    c.tensors["model.layers.0.self_attn.q_proj.bias"] = Tensor{{48}, std::vector<float>(48, 1.f)};
    CHECK_THROWS_WITH(model_of(c), Catch::Contains("announces no such bias"));
    // Missing bias tensors are named.
    HfCheckpoint d = hf_checkpoint("qwen2");
    d.tensors.erase("model.layers.1.self_attn.k_proj.bias");
    CHECK_THROWS_WITH(model_of(d), Catch::Contains("missing tensor \"model.layers.1.self_attn.k_proj.bias\""));
}
