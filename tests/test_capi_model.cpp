// The C ABI of the Llama runner (tqkv.h: tqkv_model_*, tqkv_calibration_*, tqkv_runner_*): a tiny
// random model built in memory against the C++ runner it wraps, every misuse giving an error code,
// and the real model (../shared/data/tq-ref-128, skipped with a message when absent). With
// TQKV_GOLDEN_DIR set it writes model.json for the wasm tests (web/test/model.test.mjs and
// web/test/demo.browser.test.mjs): the native exact-cache NLL over the first 1024 bytes of
// eval.txt and the greedy continuations the wasm runner must reproduce.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tqkv/fp16.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"
#include "tqkv/tokenizer.hpp"
#include "tqkv/tqkv.h"
#include "tiny_model.hpp"
#include "tokenizer_json.hpp"

namespace {

// The spec as the C ABI's runner reads it: the C++ default precision (fast) unless the spec says
// exact (tqkv.h, precision).
tqkv::CacheSpec c_abi_spec(const std::string& text) { return tqkv::CacheSpec::parse(text); }

// The tiny Llama of tests/tiny_model.hpp (as tests/test_model.cpp uses it).
using tqkv_test::kTinyConfig;
using tqkv_test::make_safetensors;
using tqkv_test::text_tokens;
using tqkv_test::tiny_tensors;
using tqkv_test::Tensor;

bool contains(const char* s, const char* what) { return std::string(s).find(what) != std::string::npos; }

// RAII holders for the handles.
struct Model {
    tqkv_model h = nullptr;
    Model(const std::string& config, const std::vector<uint8_t>& st) {
        const tqkv_status s = tqkv_model_load(config.data(), config.size(), st.data(), st.size(), &h);
        INFO(tqkv_last_error());
        REQUIRE(s == TQKV_OK);
    }
    ~Model() {
        if (h) tqkv_model_destroy(h);
    }
};

struct Runner {
    tqkv_runner h = nullptr;
    Runner(tqkv_model m, const char* spec, tqkv_calibration cal = nullptr, int chunk = 0) {
        const tqkv_status s = tqkv_runner_create(m, spec, cal, chunk, &h);
        INFO(spec << ": " << tqkv_last_error());
        REQUIRE(s == TQKV_OK);
    }
    ~Runner() {
        if (h) tqkv_runner_destroy(h);
    }
    size_t position() const {
        tqkv_runner_stats st;
        st.struct_size = sizeof st;
        REQUIRE(tqkv_runner_get_stats(h, &st) == TQKV_OK);
        return size_t(st.position);
    }
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Greedy continuation of a prompt through the C ABI (decode_s: the seconds of the n - 1 decode steps).
std::vector<int32_t> greedy(tqkv_runner r, const std::vector<int32_t>& prompt, int n, double* decode_s = nullptr) {
    std::vector<int32_t> out;
    int32_t next = -1;
    REQUIRE(tqkv_runner_prefill(r, prompt.data(), prompt.size(), nullptr, 0, &next) == TQKV_OK);
    const double t0 = now();
    for (int i = 0; i < n; ++i) {
        out.push_back(next);
        if (i + 1 < n) REQUIRE(tqkv_runner_decode(r, next, nullptr, 0, &next) == TQKV_OK);
    }
    if (decode_s) *decode_s = now() - t0;
    return out;
}

// The same with the C++ runner.
std::vector<int32_t> greedy_cpp(const tqkv::LlamaModel& m, tqkv::AttentionCache& cache, const std::vector<int32_t>& prompt,
                                int n) {
    tqkv::LlamaRunner run(m, cache);
    std::vector<float> logits(size_t(m.config().vocab_size));
    run.prefill(prompt, logits);
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
        const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        out.push_back(next);
        if (i + 1 < n) run.decode(next, logits);
    }
    return out;
}

std::string model_dir() {
    if (const char* env = std::getenv("TQKV_MODEL")) return env;
    return TQKV_SHARED_DATA "/tq-ref-128";
}

bool have_model() {
    const std::string d = model_dir();
    return std::filesystem::exists(d + "/model.safetensors") && std::filesystem::exists(d + "/config.json") &&
           std::filesystem::exists(d + "/eval.txt");
}

std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// What the wasm tests reproduce (keep in sync with web/test/model.test.mjs and web/demo/demo.js).
const char* kPrompt = "The Python interpreter ";
const size_t kNllBytes = 1024;   // the first 1024 bytes of eval.txt, one segment of the context
const size_t kCalibBytes = 2048; // the demo's calibration = tqkv-run's default: the last 2048 bytes of eval.txt
const int kGreedyBytes = 64;
const char* kDefaultSpec = "K3.5V2.5-w16";  // the calibrated default cache, NLL compared in wasm

}  // namespace

TEST_CASE("C ABI model: load, info, runner, greedy and logits equal the C++ runner", "[capi]") {
    const auto st = make_safetensors(tiny_tensors(7));
    Model m(kTinyConfig, st);
    tqkv_model_info info;
    info.struct_size = sizeof info;
    REQUIRE(tqkv_model_get_info(m.h, &info) == TQKV_OK);
    CHECK(info.layers == 2);
    CHECK(info.hidden == 64);
    CHECK(info.heads == 4);
    CHECK(info.kv_heads == 2);
    CHECK(info.head_dim == 32);
    CHECK(info.intermediate == 96);
    CHECK(info.vocab == 256);
    CHECK(info.context == 256);
    CHECK(info.tied == 0);
    const tqkv::LlamaModel cpp =
        tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse(kTinyConfig), tqkv::Safetensors::parse(st));
    CHECK(info.parameters == cpp.parameters());
    CHECK(std::strlen(tqkv_matmul_kernel()) > 0);

    const auto prompt = text_tokens("Hello, tiny model. ");
    const auto tokens = text_tokens("A prompt of some bytes, scored and continued by the C ABI runner.");
    for (const char* spec : {"fp32", "K4V4", "K3V2-w8", "q4_0", "kivi2"}) {
        INFO("cache " << spec);
        Runner r(m.h, spec);
        // greedy == the C++ runner with the same cache
        auto cache = tqkv::make_cache(c_abi_spec(spec), tqkv::CacheShape::of(cpp.config()));
        CHECK(greedy(r.h, prompt, 40) == greedy_cpp(cpp, *cache, prompt, 40));
        CHECK(r.position() == prompt.size() + 39);
        // every token's logits: prefill(all) == the C++ runner's, bit for bit
        REQUIRE(tqkv_runner_reset(r.h) == TQKV_OK);
        CHECK(r.position() == 0);
        std::vector<float> all(tokens.size() * 256), ref(all.size());
        int32_t next = -1;
        REQUIRE(tqkv_runner_prefill(r.h, tokens.data(), tokens.size(), all.data(), all.size(), &next) == TQKV_OK);
        auto c2 = tqkv::make_cache(c_abi_spec(spec), tqkv::CacheShape::of(cpp.config()));
        tqkv::LlamaRunner run(cpp, *c2);
        run.prefill(tokens, ref);
        CHECK(all == ref);
        CHECK(next == int32_t(std::max_element(all.end() - 256, all.end()) - (all.end() - 256)));
        // prefill of a prefix + decode gives the same logits (token-by-token attention)
        REQUIRE(tqkv_runner_reset(r.h) == TQKV_OK);
        std::vector<float> last(256);
        REQUIRE(tqkv_runner_prefill(r.h, tokens.data(), 20, last.data(), last.size(), nullptr) == TQKV_OK);
        for (size_t t = 20; t < tokens.size(); ++t)
            REQUIRE(tqkv_runner_decode(r.h, tokens[t], last.data(), last.size(), nullptr) == TQKV_OK);
        double worst = 0;
        for (size_t v = 0; v < 256; ++v) worst = std::max(worst, std::abs(double(last[v]) - all[(tokens.size() - 1) * 256 + v]));
        CHECK(worst < 1e-4);
        // NLL == evaluate_nll over the same cache spec
        double nll = 0;
        size_t scored = 0;
        REQUIRE(tqkv_runner_nll(r.h, tokens.data(), tokens.size(), 0, &nll, &scored) == TQKV_OK);
        auto c3 = tqkv::make_cache(c_abi_spec(spec), tqkv::CacheShape::of(cpp.config()));
        const tqkv::NllResult want = tqkv::evaluate_nll(cpp, *c3, tokens, 256, true);
        CHECK(scored == tokens.size() - 1);
        CHECK(nll == want.nll);
        CHECK(r.position() == 0);  // nll resets the runner
        // segments: ctx 16 scores 15 of every 16 tokens
        REQUIRE(tqkv_runner_nll(r.h, tokens.data(), tokens.size(), 16, &nll, &scored) == TQKV_OK);
        CHECK(scored == tokens.size() - (tokens.size() + 15) / 16);
    }
}

TEST_CASE("C ABI model: stats, calibration, the runner outlives its model handle", "[capi]") {
    const auto st = make_safetensors(tiny_tensors(3));
    const tqkv::LlamaModel cpp =
        tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse(kTinyConfig), tqkv::Safetensors::parse(st));
    auto m = std::make_unique<Model>(kTinyConfig, st);
    const auto calib = text_tokens("Calibration text: statistics of the keys, values and queries of each layer.");
    tqkv_calibration cal = nullptr;
    REQUIRE(tqkv_calibration_create(m->h, calib.data(), calib.size(), &cal) == TQKV_OK);
    const tqkv::Calibration ref_cal = tqkv::calibrate_kv(cpp, calib, 256);

    const auto prompt = text_tokens("Stats of the cache: ");
    std::map<std::string, double> bytes;
    for (const char* spec : {"fp32", "fp16", "K4V4", "K3.5V2.5-w16"}) {
        INFO(spec);
        Runner r(m->h, spec, cal);
        tqkv_runner_stats s;
        s.struct_size = sizeof s;
        REQUIRE(tqkv_runner_get_stats(r.h, &s) == TQKV_OK);
        CHECK(s.position == 0);
        CHECK(s.cache_bytes == 0);
        CHECK(s.memory_bytes > 0);  // reserved for the context
        const auto out = greedy(r.h, prompt, 30);
        REQUIRE(tqkv_runner_get_stats(r.h, &s) == TQKV_OK);
        CHECK(s.position == prompt.size() + 29);
        CHECK(s.fp16_bytes == double(s.position) * 2 * 2 * 2 * 32 * 2);  // layers * (K+V) * kv_heads * d * 2 bytes
        CHECK(s.bits_per_coord == Approx(s.cache_bytes * 8 / (double(s.position) * 2 * 2 * 2 * 32)));
        bytes[spec] = s.cache_bytes;
        // the calibrated cache == the C++ cache built with calibrate_kv's statistics
        auto cache = tqkv::make_cache(c_abi_spec(spec), tqkv::CacheShape::of(cpp.config()), &ref_cal);
        CHECK(out == greedy_cpp(cpp, *cache, prompt, 30));
    }
    CHECK(bytes["fp32"] == 2 * bytes["fp16"]);
    CHECK(bytes["K4V4"] < bytes["fp16"] / 3);
    CHECK(bytes["K3.5V2.5-w16"] < bytes["fp16"]);

    // The runner keeps the model alive; the calibration is copied into the cache.
    Runner r(m->h, "K4V4", cal);
    m.reset();
    REQUIRE(tqkv_calibration_destroy(cal) == TQKV_OK);
    auto cache = tqkv::make_cache(c_abi_spec("K4V4"), tqkv::CacheShape::of(cpp.config()), &ref_cal);
    CHECK(greedy(r.h, prompt, 20) == greedy_cpp(cpp, *cache, prompt, 20));
}

TEST_CASE("C ABI model: a checkpoint in two shards == the single file, bit for bit; bad shard sets refused", "[capi]") {
    // Layer 1 in the second shard, everything else in the first (as HF splits by size). Cost: ~5 ms.
    const std::string cfg = kTinyConfig;
    const auto ts = tiny_tensors(8);
    std::map<std::string, Tensor> first, second;
    std::string map;
    const std::string name1 = "model-00001-of-00002.safetensors", name2 = "model-00002-of-00002.safetensors";
    for (const auto& [name, t] : ts) {
        const bool in2 = name.rfind("model.layers.1.", 0) == 0;
        (in2 ? second : first)[name] = t;
        map += std::string(map.empty() ? "" : ", ") + "\"" + name + "\": \"" + (in2 ? name2 : name1) + "\"";
    }
    const std::string index = "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {" + map + "}}";
    const auto s1 = make_safetensors(first), s2 = make_safetensors(second);
    // In any order, with the index or without.
    const char* names[] = {name2.c_str(), name1.c_str()};
    const uint8_t* blobs[] = {s2.data(), s1.data()};
    const size_t sizes[] = {s2.size(), s1.size()};
    const auto load = [&](const char* idx, size_t nidx, size_t n, const char* const* nm, const uint8_t* const* b,
                          const size_t* sz, tqkv_model* out) {
        return tqkv_model_load_shards(cfg.data(), cfg.size(), idx, nidx, n, nm, b, sz, out);
    };
    tqkv_model sharded = nullptr, merged = nullptr;
    REQUIRE(load(index.data(), index.size(), 2, names, blobs, sizes, &sharded) == TQKV_OK);
    REQUIRE(load(nullptr, 0, 2, nullptr, blobs, sizes, &merged) == TQKV_OK);
    Model single(cfg, make_safetensors(ts));
    const auto prompt = text_tokens("Sharded checkpoints load.");
    const auto logits = [&](tqkv_model m) {
        tqkv_runner r = nullptr;
        REQUIRE(tqkv_runner_create(m, "fp32", nullptr, 0, &r) == TQKV_OK);
        std::vector<float> lg(prompt.size() * 256);
        int32_t next = 0;
        REQUIRE(tqkv_runner_prefill(r, prompt.data(), prompt.size(), lg.data(), lg.size(), &next) == TQKV_OK);
        tqkv_runner_destroy(r);
        return lg;
    };
    const auto want = logits(single.h);
    for (tqkv_model m : {sharded, merged}) {
        const auto got = logits(m);
        CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
    }
    tqkv_model_destroy(merged);

    // Refusals: TQKV_ERR_BAD_DATA naming the problem, no handle, the loaded model unaffected.
    tqkv_model h = nullptr;
    const auto refused = [&](tqkv_status want_status, tqkv_status got, const char* what) {
        INFO(tqkv_last_error());
        CHECK(got == want_status);
        CHECK(contains(tqkv_last_error(), what));
        CHECK(h == nullptr);
    };
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 1, names + 1, blobs + 1, sizes + 1, &h),
            "missing shard \"model-00002-of-00002.safetensors\"");
    const char* other[] = {"model-00003-of-00002.safetensors", name1.c_str()};
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 2, other, blobs, sizes, &h), "does not list the shard");
    const char* twice[] = {name1.c_str(), name1.c_str()};
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 2, twice, blobs, sizes, &h), "given twice");
    // A tensor in both shards (with or without the index), or one the index places in a shard that lacks it.
    auto second_dup = second;
    second_dup["model.norm.weight"] = ts.at("model.norm.weight");
    const auto s2_dup = make_safetensors(second_dup);
    const uint8_t* dup_blobs[] = {s2_dup.data(), s1.data()};
    const size_t dup_sizes[] = {s2_dup.size(), s1.size()};
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 2, names, dup_blobs, dup_sizes, &h),
            "tensor \"model.norm.weight\" is in two shards (model-00002-of-00002.safetensors and model-00001-of-00002.safetensors)");
    refused(TQKV_ERR_BAD_DATA, load(nullptr, 0, 2, nullptr, dup_blobs, dup_sizes, &h), "is in two shards (shard 0 and shard 1)");
    auto second_less = second;
    second_less.erase("model.layers.1.mlp.up_proj.weight");
    const auto s2_less = make_safetensors(second_less);
    const uint8_t* less_blobs[] = {s2_less.data(), s1.data()};
    const size_t less_sizes[] = {s2_less.size(), s1.size()};
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 2, names, less_blobs, less_sizes, &h),
            "lacks tensor \"model.layers.1.mlp.up_proj.weight\"");
    refused(TQKV_ERR_BAD_DATA, load(nullptr, 0, 2, nullptr, less_blobs, less_sizes, &h),
            "missing tensor \"model.layers.1.mlp.up_proj.weight\"");
    const std::string escaping = "{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}";
    refused(TQKV_ERR_BAD_DATA, load(escaping.data(), escaping.size(), 2, names, blobs, sizes, &h), "not a plain file name");
    const std::string no_map = "{\"weight_map\": 3}";
    refused(TQKV_ERR_BAD_DATA, load(no_map.data(), no_map.size(), 2, names, blobs, sizes, &h), "missing object \"weight_map\"");
    const size_t cut_sizes[] = {sizes[0], 5};
    refused(TQKV_ERR_BAD_DATA, load(index.data(), index.size(), 2, names, blobs, cut_sizes, &h), "too short");
    refused(TQKV_ERR_INVALID_ARGUMENT, load(index.data(), index.size(), 0, names, blobs, sizes, &h), "expected 1..4096");
    refused(TQKV_ERR_INVALID_ARGUMENT, load(index.data(), index.size(), 2, nullptr, blobs, sizes, &h), "names");
    refused(TQKV_ERR_INVALID_ARGUMENT, load(index.data(), index.size(), 2, names, nullptr, sizes, &h), "shards");
    const uint8_t* null_blob[] = {nullptr, s1.data()};
    refused(TQKV_ERR_INVALID_ARGUMENT, load(index.data(), index.size(), 2, names, null_blob, sizes, &h), "a shard is NULL");
    CHECK(std::memcmp(logits(sharded).data(), want.data(), want.size() * sizeof(float)) == 0);
    tqkv_model_destroy(sharded);
}

TEST_CASE("C ABI model: malformed files, bad arguments and handles give error codes", "[capi][errors]") {
    const auto ts = tiny_tensors(5);
    const auto st = make_safetensors(ts);
    const std::string cfg = kTinyConfig;
    tqkv_model h = nullptr;
    // config.json
    CHECK(tqkv_model_load("{", 1, st.data(), st.size(), &h) == TQKV_ERR_BAD_DATA);
    CHECK(contains(tqkv_last_error(), "config.json"));
    {
        std::string no_hidden = cfg;
        no_hidden.replace(no_hidden.find("\"hidden_size\": 64,"), 18, "");
        CHECK(tqkv_model_load(no_hidden.data(), no_hidden.size(), st.data(), st.size(), &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "missing \"hidden_size\""));
    }
    // safetensors: header length, truncation, missing tensor, shape, dtype
    {
        auto bad = st;
        bad[7] = 0x40;
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), bad.data(), bad.size(), &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "bad header length"));
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), st.data(), 5, &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "too short"));
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), st.data(), st.size() - 2, &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "past the end"));
        auto missing = ts;
        missing.erase("model.layers.1.mlp.up_proj.weight");
        const auto ms = make_safetensors(missing);
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), ms.data(), ms.size(), &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "missing tensor \"model.layers.1.mlp.up_proj.weight\""));
        auto wrong = ts;
        wrong["model.layers.0.self_attn.k_proj.weight"].shape = {32, 128};
        const auto ws = make_safetensors(wrong);
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), ws.data(), ws.size(), &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "the config implies [64, 64]"));
        std::string hdr = "{\"w\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
        while (hdr.size() % 8) hdr += ' ';
        std::vector<uint8_t> i8;
        for (int i = 0; i < 8; ++i) i8.push_back(uint8_t(uint64_t(hdr.size()) >> (8 * i)));
        for (char c : hdr) i8.push_back(uint8_t(c));
        i8.push_back(1), i8.push_back(2);
        CHECK(tqkv_model_load(cfg.data(), cfg.size(), i8.data(), i8.size(), &h) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "unsupported dtype I8"));
    }
    CHECK(h == nullptr);  // no handle was created by a failed load
    CHECK(tqkv_model_load(nullptr, 3, st.data(), st.size(), &h) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_model_load(cfg.data(), cfg.size(), nullptr, 10, &h) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_model_load(cfg.data(), cfg.size(), st.data(), st.size(), nullptr) == TQKV_ERR_INVALID_ARGUMENT);

    Model m(cfg, st);
    tqkv_model_info info;
    info.struct_size = 12;
    CHECK(tqkv_model_get_info(m.h, &info) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "struct_size"));
    CHECK(tqkv_model_get_info(m.h, nullptr) == TQKV_ERR_INVALID_ARGUMENT);

    // runner_create: spec, chunk, handles
    tqkv_runner r = nullptr;
    CHECK(tqkv_runner_create(m.h, "K9V3", nullptr, 0, &r) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "cache spec"));
    CHECK(tqkv_runner_create(m.h, "K4V3-sk", nullptr, 0, &r) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "unknown option 'sk'"));
    CHECK(tqkv_runner_create(m.h, nullptr, nullptr, 0, &r) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_create(m.h, "fp32", nullptr, -1, &r) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_create(m.h, "fp32", nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_create(nullptr, "fp32", nullptr, 0, &r) == TQKV_ERR_INVALID_HANDLE);
    CHECK(r == nullptr);

    // handles of the wrong kind, forged, destroyed
    tqkv_cache_config cc;
    tqkv_cache_config_init(&cc);
    tqkv_cache cache = nullptr;
    REQUIRE(tqkv_cache_create(&cc, &cache) == TQKV_OK);
    CHECK(tqkv_runner_create(reinterpret_cast<tqkv_model>(cache), "fp32", nullptr, 0, &r) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "not a model handle"));
    CHECK(tqkv_runner_create(m.h, "fp32", reinterpret_cast<tqkv_calibration>(cache), 0, &r) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_cache_clear(reinterpret_cast<tqkv_cache>(m.h)) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_model_destroy(reinterpret_cast<tqkv_model>(uintptr_t(8 * 4321 + 3))) == TQKV_ERR_INVALID_HANDLE);
    tqkv_cache_destroy(cache);

    Runner run(m.h, "fp32");
    CHECK(tqkv_runner_reset(reinterpret_cast<tqkv_runner>(m.h)) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_model_destroy(reinterpret_cast<tqkv_model>(run.h)) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_runner_decode(nullptr, 1, nullptr, 0, nullptr) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "null handle"));

    // calibration: empty, out-of-vocabulary tokens, another model's shape
    tqkv_calibration cal = nullptr;
    const std::vector<int32_t> oov = {1, 2, 256};
    CHECK(tqkv_calibration_create(m.h, oov.data(), 0, &cal) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_calibration_create(m.h, oov.data(), oov.size(), &cal) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "outside the vocabulary"));
    CHECK(cal == nullptr);
    {
        std::string cfg3 = cfg;
        cfg3.replace(cfg3.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 1");
        Model m1(cfg3, st);  // the tensors of layer 1 are extra (ignored)
        const auto tk = text_tokens("other model");
        REQUIRE(tqkv_calibration_create(m1.h, tk.data(), tk.size(), &cal) == TQKV_OK);
        CHECK(tqkv_runner_create(m.h, "K4V4", cal, 0, &r) == TQKV_ERR_INVALID_ARGUMENT);
        CHECK(contains(tqkv_last_error(), "another shape"));
        CHECK(tqkv_calibration_destroy(cal) == TQKV_OK);
        CHECK(tqkv_calibration_destroy(cal) == TQKV_ERR_INVALID_HANDLE);  // double destroy
    }

    // prefill / decode / nll arguments: nothing runs, the position stays
    const auto tokens = text_tokens("some tokens");
    std::vector<float> logits(256);
    REQUIRE(tqkv_runner_prefill(run.h, tokens.data(), tokens.size(), nullptr, 0, nullptr) == TQKV_OK);
    CHECK(run.position() == tokens.size());
    const std::vector<int32_t> bad = {65, 66, -1};
    CHECK(tqkv_runner_prefill(run.h, bad.data(), bad.size(), nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "token 2 = -1 outside the vocabulary"));
    CHECK(tqkv_runner_decode(run.h, 256, logits.data(), logits.size(), nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_decode(run.h, 65, logits.data(), 255, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_prefill(run.h, tokens.data(), tokens.size(), logits.data(), 257, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_prefill(run.h, tokens.data(), 0, nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_prefill(run.h, nullptr, 4, nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_decode(run.h, 65, nullptr, 256, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(run.position() == tokens.size());
    // the context (256 tokens) is a capacity
    const std::vector<int32_t> long_text(256 - tokens.size() + 1, 'a');
    CHECK(tqkv_runner_prefill(run.h, long_text.data(), long_text.size(), nullptr, 0, nullptr) == TQKV_ERR_CAPACITY);
    CHECK(contains(tqkv_last_error(), "context of 256 tokens"));
    CHECK(run.position() == tokens.size());
    REQUIRE(tqkv_runner_prefill(run.h, long_text.data(), long_text.size() - 1, nullptr, 0, nullptr) == TQKV_OK);
    CHECK(run.position() == 256);
    CHECK(tqkv_runner_decode(run.h, 65, nullptr, 0, nullptr) == TQKV_ERR_CAPACITY);
    // the runner still works after the failures: the same logits as a fresh one
    REQUIRE(tqkv_runner_reset(run.h) == TQKV_OK);
    std::vector<float> a(256), b(256);
    REQUIRE(tqkv_runner_prefill(run.h, tokens.data(), tokens.size(), a.data(), a.size(), nullptr) == TQKV_OK);
    Runner fresh(m.h, "fp32");
    REQUIRE(tqkv_runner_prefill(fresh.h, tokens.data(), tokens.size(), b.data(), b.size(), nullptr) == TQKV_OK);
    CHECK(a == b);
    double nll = 0;
    CHECK(tqkv_runner_nll(run.h, tokens.data(), 1, 0, &nll, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_nll(run.h, tokens.data(), tokens.size(), 1, &nll, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_nll(run.h, tokens.data(), tokens.size(), 257, &nll, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_nll(run.h, tokens.data(), tokens.size(), 0, nullptr, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_nll(run.h, bad.data(), bad.size(), 0, &nll, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(run.position() == tokens.size());
    tqkv_runner_stats s;
    s.struct_size = sizeof s - 8;
    CHECK(tqkv_runner_get_stats(run.h, &s) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_get_stats(run.h, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    // destroy
    tqkv_runner tmp = nullptr;
    REQUIRE(tqkv_runner_create(m.h, "fp32", nullptr, 0, &tmp) == TQKV_OK);
    CHECK(tqkv_runner_destroy(tmp) == TQKV_OK);
    CHECK(tqkv_runner_destroy(tmp) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_runner_decode(tmp, 65, nullptr, 0, nullptr) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "destroyed"));
}

// The real model through the C ABI, from bytes in memory as the wasm build receives them.
// [stat]: 19 M parameters over 1024 tokens checks the math, not the kernels (left out of the
// qemu, sanitizer and wasm Catch2 runs; the wasm side is web/test/model.test.mjs).
TEST_CASE("C ABI model: the real model from memory: NLL and greedy text equal the C++ runner", "[capi][stat]") {
    if (!have_model()) {
        WARN("skipped: no model at " << model_dir() << " (config.json, model.safetensors, eval.txt)");
        return;
    }
    const std::string dir = model_dir();
    const auto cfg = read_bytes(dir + "/config.json");
    const auto st = read_bytes(dir + "/model.safetensors");
    const auto text = read_bytes(dir + "/eval.txt");
    Model m(std::string(cfg.begin(), cfg.end()), st);
    const tqkv::LlamaModel cpp = tqkv::LlamaModel::load(dir);
    const std::vector<int32_t> tokens(text.begin(), text.begin() + long(kNllBytes));
    Runner r(m.h, "fp32");
    double nll = 0;
    size_t scored = 0;
    REQUIRE(tqkv_runner_nll(r.h, tokens.data(), tokens.size(), 0, &nll, &scored) == TQKV_OK);
    auto exact = tqkv::make_exact_cache(tqkv::CacheShape::of(cpp.config()));
    const tqkv::NllResult want = tqkv::evaluate_nll(cpp, *exact, tokens, 1024, true);
    CHECK(scored == kNllBytes - 1);
    CHECK(nll == want.nll);
    CHECK(nll > 0.5);
    CHECK(nll < 1.5);
    const auto prompt = text_tokens(kPrompt);
    auto exact2 = tqkv::make_exact_cache(tqkv::CacheShape::of(cpp.config()));
    CHECK(greedy(r.h, prompt, kGreedyBytes) == greedy_cpp(cpp, *exact2, prompt, kGreedyBytes));
}

TEST_CASE("C ABI model: golden values for the wasm tests (TQKV_GOLDEN_DIR)", "[capi][golden]") {
    const char* gdir = std::getenv("TQKV_GOLDEN_DIR");
    if (!gdir || !*gdir) {
        SUCCEED("TQKV_GOLDEN_DIR not set: nothing to write");
        return;
    }
    if (!have_model()) {
        WARN("skipped: no model at " << model_dir() << ": model.json not written (the wasm model tests skip)");
        return;
    }
    const std::string dir = model_dir();
    const auto cfg = read_bytes(dir + "/config.json");
    const auto st = read_bytes(dir + "/model.safetensors");
    const auto text = read_bytes(dir + "/eval.txt");
    REQUIRE(text.size() >= kNllBytes + kCalibBytes);
    Model m(std::string(cfg.begin(), cfg.end()), st);
    const std::vector<int32_t> tokens(text.begin(), text.begin() + long(kNllBytes));
    const std::vector<int32_t> calib(text.end() - long(kCalibBytes), text.end());
    const auto prompt = text_tokens(kPrompt);

    Runner exact(m.h, "fp32");
    double nll = 0;
    size_t scored = 0;
    REQUIRE(tqkv_runner_nll(exact.h, tokens.data(), tokens.size(), 0, &nll, &scored) == TQKV_OK);
    greedy(exact.h, prompt, kGreedyBytes);  // warm-up (first touch of the weights)
    REQUIRE(tqkv_runner_reset(exact.h) == TQKV_OK);
    double exact_s = 0, k4_s = 0;
    const auto g_exact = greedy(exact.h, prompt, kGreedyBytes, &exact_s);
    tqkv_calibration cal = nullptr;
    REQUIRE(tqkv_calibration_create(m.h, calib.data(), calib.size(), &cal) == TQKV_OK);
    Runner k4(m.h, "K4V4", cal);
    const auto g_k4 = greedy(k4.h, prompt, kGreedyBytes, &k4_s);
    tqkv_runner_stats s;
    s.struct_size = sizeof s;
    REQUIRE(tqkv_runner_get_stats(k4.h, &s) == TQKV_OK);
    // The default cache with the same calibration: its NLL over the same bytes, what
    // `tqkv-bench ppl --bytes 1024 --calib-bytes 2048 --config K3.5V2.5-w16` reports (the same
    // calibrate_kv and evaluate_nll, token by token).
    Runner kd(m.h, kDefaultSpec, cal);
    double nll_default = 0;
    REQUIRE(tqkv_runner_nll(kd.h, tokens.data(), tokens.size(), 0, &nll_default, &scored) == TQKV_OK);
    tqkv_calibration_destroy(cal);

    auto list = [](const std::vector<int32_t>& v) {
        std::string out = "[";
        for (size_t i = 0; i < v.size(); ++i) {
            if (i) out += ',';
            out += std::to_string(v[i]);
        }
        return out + "]";
    };
    // Decode speed: the n - 1 decode steps after the prompt.
    std::ofstream f(std::string(gdir) + "/model.json");
    char num[64], num_default[64];
    std::snprintf(num, sizeof num, "%.17g", nll);
    std::snprintf(num_default, sizeof num_default, "%.17g", nll_default);
    f << "{\"model_dir\":\"" << std::filesystem::absolute(dir).string() << "\",\"prompt\":\"" << kPrompt
      << "\",\"nll_bytes\":" << kNllBytes << ",\"nll_exact\":" << num << ",\"scored\":" << scored
      << ",\"default_spec\":\"" << kDefaultSpec << "\",\"nll_default\":" << num_default
      << ",\"calib_bytes\":" << kCalibBytes << ",\"greedy_bytes\":" << kGreedyBytes
      << ",\"greedy_exact\":" << list(g_exact) << ",\"greedy_K4V4\":" << list(g_k4)
      << ",\"K4V4_cache_bytes\":" << s.cache_bytes << ",\"K4V4_fp16_bytes\":" << s.fp16_bytes
      << ",\"native_decode_tokens_per_s_exact\":" << (kGreedyBytes - 1) / exact_s
      << ",\"native_decode_tokens_per_s_K4V4\":" << (kGreedyBytes - 1) / k4_s
      << ",\"matmul\":\"" << tqkv_matmul_kernel() << "\",\"kernel\":\"" << tqkv_default_kernel() << "\"}\n";
    REQUIRE(f.good());
}

namespace {

std::vector<uint8_t> save_runner(tqkv_runner r) {
    size_t n = 0;
    REQUIRE(tqkv_runner_save(r, nullptr, 0, &n) == TQKV_ERR_BUFFER_TOO_SMALL);
    std::vector<uint8_t> b(n);
    size_t n2 = 0;
    REQUIRE(tqkv_runner_save(r, b.data(), b.size() - 1, &n2) == TQKV_ERR_BUFFER_TOO_SMALL);
    CHECK(n2 == n);
    REQUIRE(tqkv_runner_save(r, b.data(), b.size(), &n2) == TQKV_OK);
    CHECK(n2 == n);
    return b;
}

// The logits of decoding `tokens` one by one (all of them, concatenated).
std::vector<float> decode_logits(tqkv_runner r, const std::vector<int32_t>& tokens) {
    std::vector<float> out(tokens.size() * 256);
    for (size_t i = 0; i < tokens.size(); ++i)
        REQUIRE(tqkv_runner_decode(r, tokens[i], out.data() + i * 256, 256, nullptr) == TQKV_OK);
    return out;
}

}  // namespace

// tqkv_runner_save / tqkv_runner_load (the block at the end of tqkv.h): a restored runner decodes
// exactly as the saved one would have (logits bit for bit), for every tqkv cache; everything
// else is refused with the runner unchanged.
TEST_CASE("C ABI model: a saved runner restores and continues bit for bit; bad bytes are refused", "[capi][runner-state]") {
    const auto st = make_safetensors(tiny_tensors(11));
    Model m(kTinyConfig, st);
    const auto calib = text_tokens("Calibration text for saving runners: keys, values and queries of each layer.");
    tqkv_calibration cal = nullptr, cal2 = nullptr;
    REQUIRE(tqkv_calibration_create(m.h, calib.data(), calib.size(), &cal) == TQKV_OK);
    const auto calib2 = text_tokens("Another calibration text, other statistics, other means and channels.");
    REQUIRE(tqkv_calibration_create(m.h, calib2.data(), calib2.size(), &cal2) == TQKV_OK);
    const auto prompt = text_tokens("A conversation that goes on after a reload: ");
    const auto more = text_tokens("and continues here, the same as before.");
    struct Case {
        const char* spec;
        tqkv_calibration cal;
    };
    // K3.5V2.5 without a calibration: the restoring runner's layers are not built yet (lazy).
    for (const Case& c : {Case{"K4V4", nullptr}, Case{"K3V2-w8", cal},
                          Case{"K3.5V2.5-w16", cal}, Case{"default", cal}, Case{"K3.5V2.5", nullptr},
                          Case{"K3.5V2.5-w16-fast", cal}}) {
        INFO(c.spec);
        Runner a(m.h, c.spec, c.cal), b(m.h, c.spec, c.cal);
        int32_t next = -1;
        REQUIRE(tqkv_runner_prefill(a.h, prompt.data(), prompt.size(), nullptr, 0, &next) == TQKV_OK);
        REQUIRE(tqkv_runner_decode(a.h, next, nullptr, 0, &next) == TQKV_OK);
        const auto bytes = save_runner(a.h);
        CHECK(save_runner(a.h) == bytes);  // saving changes nothing
        REQUIRE(tqkv_runner_load(b.h, bytes.data(), bytes.size()) == TQKV_OK);
        CHECK(b.position() == prompt.size() + 1);
        CHECK(save_runner(b.h) == bytes);
        tqkv_runner_stats sa, sb;
        sa.struct_size = sb.struct_size = sizeof sa;
        REQUIRE(tqkv_runner_get_stats(a.h, &sa) == TQKV_OK);
        REQUIRE(tqkv_runner_get_stats(b.h, &sb) == TQKV_OK);
        CHECK(sa.cache_bytes == sb.cache_bytes);
        const auto la = decode_logits(a.h, more), lb = decode_logits(b.h, more);
        CHECK(std::memcmp(la.data(), lb.data(), la.size() * 4) == 0);
        CHECK(save_runner(a.h) == save_runner(b.h));
        // a tqkv cache's bytes: codes (and a window of fp32 rows), less than the fp32 rows
        CHECK(bytes.size() < size_t(prompt.size() + 1) * 2 * 2 * 2 * 32 * 4);
    }

    Runner a(m.h, "K3.5V2.5-w16", cal);
    int32_t next = -1;
    REQUIRE(tqkv_runner_prefill(a.h, prompt.data(), prompt.size(), nullptr, 0, &next) == TQKV_OK);
    const auto bytes = save_runner(a.h);
    // A runner that refuses keeps its own state: the same logits as an untouched twin afterwards.
    Runner r(m.h, "K3.5V2.5-w16", cal), twin(m.h, "K3.5V2.5-w16", cal);
    const auto other = text_tokens("Something else entirely. ");
    for (tqkv_runner x : {r.h, twin.h}) REQUIRE(tqkv_runner_prefill(x, other.data(), other.size(), nullptr, 0, nullptr) == TQKV_OK);
    auto refused = [&](const std::vector<uint8_t>& b, const char* what) {
        INFO(what);
        CHECK(tqkv_runner_load(r.h, b.data(), b.size()) == TQKV_ERR_BAD_DATA);
        INFO(tqkv_last_error());
        CHECK(r.position() == other.size());
    };
    auto flipped = bytes;
    flipped[bytes.size() / 2] ^= 0x10;
    refused(flipped, "a flipped byte");
    refused(std::vector<uint8_t>(bytes.begin(), bytes.end() - 1), "truncated");
    refused(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 20), "header only");
    refused(std::vector<uint8_t>(100, 0x41), "not a saved runner");
    CHECK(contains(tqkv_last_error(), "TQKVRUNR"));
    {
        Runner c2(m.h, "K3.5V2.5-w16", cal2), k4(m.h, "K4V4", cal), f(m.h, "fp32");
        for (tqkv_runner x : {c2.h, k4.h}) {  // another calibration, another spec
            CHECK(tqkv_runner_load(x, bytes.data(), bytes.size()) == TQKV_ERR_BAD_DATA);
            CHECK(contains(tqkv_last_error(), "coded differently"));
        }
        CHECK(tqkv_runner_load(f.h, bytes.data(), bytes.size()) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "cannot be restored"));
        CHECK(f.position() == 0);
    }
    {   // a model of another shape (3 layers)
        std::string cfg3 = kTinyConfig;
        cfg3.replace(cfg3.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
        auto ts3 = tiny_tensors(11);
        for (const auto& [name, t] : tiny_tensors(12))
            if (name.rfind("model.layers.1.", 0) == 0) ts3["model.layers.2." + name.substr(15)] = t;
        Model m3(cfg3, make_safetensors(ts3));
        Runner r3(m3.h, "K3.5V2.5-w16");
        CHECK(tqkv_runner_load(r3.h, bytes.data(), bytes.size()) == TQKV_ERR_BAD_DATA);
        CHECK(contains(tqkv_last_error(), "another model"));
    }
    const auto want = decode_logits(twin.h, more), got = decode_logits(r.h, more);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * 4) == 0);
    // Caches that cannot be saved; arguments.
    size_t n = 0;
    for (const char* spec : {"kivi2", "fp32", "q8_0"}) {
        INFO(spec);
        Runner x(m.h, spec);
        REQUIRE(tqkv_runner_prefill(x.h, prompt.data(), prompt.size(), nullptr, 0, nullptr) == TQKV_OK);
        CHECK(tqkv_runner_save(x.h, nullptr, 0, &n) == TQKV_ERR_INVALID_ARGUMENT);
        CHECK(contains(tqkv_last_error(), "cannot be saved"));
        CHECK(tqkv_runner_load(x.h, bytes.data(), bytes.size()) == TQKV_ERR_BAD_DATA);
        CHECK(x.position() == prompt.size());
    }
    CHECK(tqkv_runner_save(a.h, nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_load(a.h, nullptr, 5) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_runner_load(nullptr, bytes.data(), bytes.size()) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_runner_save(nullptr, nullptr, 0, &n) == TQKV_ERR_INVALID_HANDLE);
    tqkv_calibration_destroy(cal);
    tqkv_calibration_destroy(cal2);
}

TEST_CASE("C ABI tokenizer: load, encode, decode, capacity and errors", "[capi]") {
    const std::string json = tqkv_test::byte_level_json(tqkv_test::kGpt2Pre, tqkv_test::kMerges, false);
    tqkv_tokenizer tok = nullptr;
    REQUIRE(tqkv_tokenizer_load(json.data(), json.size(), nullptr, 0, &tok) == TQKV_OK);
    int32_t vocab = 0, bos = 0, eos = 0;
    REQUIRE(tqkv_tokenizer_get_info(tok, &vocab, &bos, &eos) == TQKV_OK);
    CHECK(vocab == 265);
    CHECK(bos == -1);
    CHECK(eos == -1);
    const std::string text = "the the<|endoftext|> h\xc3\xa9";
    int32_t ids[64];
    size_t n = 0;
    REQUIRE(tqkv_tokenizer_encode(tok, text.data(), text.size(), 0, ids, 64, &n) == TQKV_OK);
    // the | " the" | <|endoftext|> | " hé"  (ids derived in test_tokenizer.cpp)
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{116, 257, 258, 264, 32, 104, 195, 169});
    size_t need = 0;
    CHECK(tqkv_tokenizer_encode(tok, text.data(), text.size(), 0, ids, 3, &need) == TQKV_ERR_CAPACITY);
    CHECK(need == n);
    char buf[64];
    size_t nb = 0;
    REQUIRE(tqkv_tokenizer_decode(tok, ids, n, buf, sizeof buf, &nb) == TQKV_OK);
    CHECK(std::string(buf, nb) == text);
    CHECK(tqkv_tokenizer_decode(tok, ids, n, buf, 4, &nb) == TQKV_ERR_CAPACITY);
    CHECK(nb == text.size());
    const int32_t bad = 265;
    CHECK(tqkv_tokenizer_decode(tok, &bad, 1, buf, sizeof buf, &nb) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(std::string(tqkv_last_error()).find("outside the vocabulary") != std::string::npos);
    REQUIRE(tqkv_tokenizer_destroy(tok) == TQKV_OK);
    CHECK(tqkv_tokenizer_encode(tok, text.data(), text.size(), 0, ids, 64, &n) == TQKV_ERR_INVALID_HANDLE);
    const std::string unsupported = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}";
    CHECK(tqkv_tokenizer_load(unsupported.data(), unsupported.size(), nullptr, 0, &tok) == TQKV_ERR_BAD_DATA);
    CHECK(std::string(tqkv_last_error()).find("unsupported: model.type \"WordPiece\"") != std::string::npos);
    // The SentencePiece-style one with a tokenizer_config.json: BOS from the config.
    const std::string sp = tqkv_test::sentencepiece_json(), cfg = R"({"add_bos_token": true, "bos_token": "<s>"})";
    REQUIRE(tqkv_tokenizer_load(sp.data(), sp.size(), cfg.data(), cfg.size(), &tok) == TQKV_OK);
    REQUIRE(tqkv_tokenizer_encode(tok, "hi hi!", 6, 1, ids, 64, &n) == TQKV_OK);
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{1, 263, 263, 264});
    REQUIRE(tqkv_tokenizer_destroy(tok) == TQKV_OK);
    // The same call reads a tokenizer.model (tests/test_tokenizer.cpp derives these ids).
    const std::string model = tqkv_test::spm_bpe_model();
    REQUIRE(tqkv_tokenizer_load(model.data(), model.size(), nullptr, 0, &tok) == TQKV_OK);
    REQUIRE(tqkv_tokenizer_encode(tok, "the cab", 7, 1, ids, 64, &n) == TQKV_OK);
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{1, 261, 264, 3 + 'c', 263});
    REQUIRE(tqkv_tokenizer_destroy(tok) == TQKV_OK);
}

TEST_CASE("C ABI model: end-of-sequence ids are tqkv::end_of_sequence_ids; capacity and handle errors", "[capi]") {
    // config.json's ids, one twice and one outside the 256-id vocabulary.
    const std::string config = std::string("{\"eos_token_id\": [9, 300, 9, 2],") + (std::strchr(kTinyConfig, '{') + 1);
    Model m(config, make_safetensors(tiny_tensors(7)));
    int32_t ids[8];
    size_t n = 0;
    REQUIRE(tqkv_model_end_of_sequence(m.h, nullptr, ids, 8, &n) == TQKV_OK);  // no tokenizer: the config's
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{9, 9, 2});
    const std::string json = tqkv_test::byte_level_json(tqkv_test::kGpt2Pre, tqkv_test::kMerges, false);
    const std::string tcfg = R"({"eos_token": "<|endoftext|>"})";
    tqkv_tokenizer tok = nullptr;
    REQUIRE(tqkv_tokenizer_load(json.data(), json.size(), tcfg.data(), tcfg.size(), &tok) == TQKV_OK);
    REQUIRE(tqkv_model_end_of_sequence(m.h, tok, ids, 8, &n) == TQKV_OK);
    const auto cpp = tqkv::end_of_sequence_ids(tqkv::LlamaConfig::parse(config),
                                               tqkv::Tokenizer::from_json(json, tcfg));
    CHECK(std::vector<int32_t>(ids, ids + n) == cpp);
    CHECK(cpp == std::vector<int32_t>{9, 2});  // <|endoftext|> (258) is outside the model's vocabulary
    ids[0] = -7;
    CHECK(tqkv_model_end_of_sequence(m.h, tok, ids, 1, &n) == TQKV_ERR_CAPACITY);
    CHECK(n == 2);
    CHECK(ids[0] == -7);
    CHECK(tqkv_model_end_of_sequence(m.h, tok, ids, 8, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    REQUIRE(tqkv_tokenizer_destroy(tok) == TQKV_OK);
    CHECK(tqkv_model_end_of_sequence(m.h, tok, ids, 8, &n) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_model_end_of_sequence(nullptr, nullptr, ids, 8, &n) == TQKV_ERR_INVALID_HANDLE);
}

TEST_CASE("C ABI token stream: the text of tqkv::TokenStream; short buffers, bad ids and handles leave it unchanged", "[capi]") {
    const std::string model = tqkv_test::spm_bpe_model();
    const tqkv::Tokenizer cpp = tqkv::Tokenizer::from_sentencepiece(model);
    tqkv_tokenizer tok = nullptr;
    REQUIRE(tqkv_tokenizer_load(model.data(), model.size(), nullptr, 0, &tok) == TQKV_OK);
    // "the cab" (BOS, ▁the, ▁, <0x63>, ab) as context, then ▁, the bytes of 日 and of 🙂, ab, ▁the.
    const std::vector<int32_t> context = {1, 261, 264, 3 + 'c', 263};
    const std::vector<int32_t> ids = {264, 3 + 0xe6, 3 + 0x97, 3 + 0xa5, 3 + 0xf0, 3 + 0x9f, 3 + 0x99, 3 + 0x82, 263, 261};
    tqkv_token_stream s = nullptr;
    REQUIRE(tqkv_token_stream_create(tok, context.data(), context.size(), &s) == TQKV_OK);
    tqkv::TokenStream want(cpp, context);
    char buf[64];
    size_t n = 99;
    // A short buffer: the length needed, the stream unchanged (the same id again gives its text).
    CHECK(tqkv_token_stream_push(s, 264, nullptr, 0, &n) == TQKV_ERR_CAPACITY);
    CHECK(n == 1);
    CHECK(contains(tqkv_last_error(), "capacity"));
    std::string got;
    for (int32_t id : ids) {
        INFO(id);
        REQUIRE(tqkv_token_stream_push(s, id, buf, sizeof buf, &n) == TQKV_OK);
        const std::string piece(buf, n);
        CHECK(piece == want.push(id));
        got += piece;
        // An id outside the vocabulary: an error naming it, the stream unchanged.
        CHECK(tqkv_token_stream_push(s, 271, buf, sizeof buf, &n) == TQKV_ERR_INVALID_ARGUMENT);
        CHECK(contains(tqkv_last_error(), "outside the vocabulary of 271"));
        CHECK(tqkv_token_stream_push(s, -1, buf, sizeof buf, &n) == TQKV_ERR_INVALID_ARGUMENT);
    }
    REQUIRE(tqkv_token_stream_flush(s, buf, sizeof buf, &n) == TQKV_OK);
    got += std::string(buf, n);
    CHECK(got == " \xe6\x97\xa5\xf0\x9f\x99\x82" "ab the");
    // An unfinished character: U+FFFD only when flushed (and a short buffer keeps it).
    REQUIRE(tqkv_token_stream_push(s, 3 + 0xe6, buf, sizeof buf, &n) == TQKV_OK);
    CHECK(n == 0);
    CHECK(tqkv_token_stream_flush(s, buf, 2, &n) == TQKV_ERR_CAPACITY);
    CHECK(n == 3);
    REQUIRE(tqkv_token_stream_flush(s, buf, sizeof buf, &n) == TQKV_OK);
    CHECK(std::string(buf, n) == "\xef\xbf\xbd");
    // NULL pointers and bad handles: errors, never a crash.
    CHECK(tqkv_token_stream_push(s, 263, nullptr, 5, &n) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_token_stream_push(s, 263, buf, sizeof buf, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_token_stream_flush(s, buf, sizeof buf, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    tqkv_token_stream none = nullptr;
    CHECK(tqkv_token_stream_create(tok, nullptr, 3, &none) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_token_stream_create(tok, context.data(), context.size(), nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    const int32_t bad_context[] = {1, 300};
    CHECK(tqkv_token_stream_create(tok, bad_context, 2, &none) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "context id 300"));
    CHECK(none == nullptr);
    CHECK(tqkv_token_stream_create(nullptr, nullptr, 0, &none) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_token_stream_push(nullptr, 263, buf, sizeof buf, &n) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_token_stream_push(reinterpret_cast<tqkv_token_stream>(tok), 263, buf, sizeof buf, &n) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "not a token stream handle"));
    CHECK(tqkv_token_stream_create(reinterpret_cast<tqkv_tokenizer>(s), nullptr, 0, &none) == TQKV_ERR_INVALID_HANDLE);
    // The stream keeps its tokenizer: destroying the tokenizer first is fine.
    REQUIRE(tqkv_token_stream_create(tok, nullptr, 0, &none) == TQKV_OK);
    REQUIRE(tqkv_tokenizer_destroy(tok) == TQKV_OK);
    REQUIRE(tqkv_token_stream_push(none, 261, buf, sizeof buf, &n) == TQKV_OK);
    CHECK(std::string(buf, n) == "the");  // the first piece's space dropped: no context
    REQUIRE(tqkv_token_stream_destroy(none) == TQKV_OK);
    REQUIRE(tqkv_token_stream_destroy(s) == TQKV_OK);
    CHECK(tqkv_token_stream_destroy(s) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_token_stream_flush(s, buf, sizeof buf, &n) == TQKV_ERR_INVALID_HANDLE);
}

TEST_CASE("C ABI model: sensitivity probe, rate plans, auto specs; calibrations from samples and their bytes", "[capi][auto]") {
    const auto st = make_safetensors(tiny_tensors(5));
    const tqkv::LlamaModel cpp =
        tqkv::LlamaModel::from_parts(tqkv::LlamaConfig::parse(kTinyConfig), tqkv::Safetensors::parse(st));
    auto m = std::make_unique<Model>(kTinyConfig, st);
    std::string text;
    for (int i = 0; i < 4; ++i) text += "Calibration text: statistics of the keys, values and queries of each layer. ";
    const auto calib = text_tokens(text);
    tqkv_calibration cal = nullptr;
    REQUIRE(tqkv_calibration_create(m->h, calib.data(), calib.size(), &cal) == TQKV_OK);
    tqkv_cache_config base;
    tqkv_cache_config_init(&base);
    base.layers = 2, base.heads = 4, base.kv_heads = 2, base.head_dim = 32, base.max_tokens = 256;
    char json[512];
    size_t size = 0;
    // No sensitivities yet: a clear error.
    CHECK(tqkv_rate_plan("auto-4", &base, cal, json, sizeof json, &size) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "sensitivities"));
    CHECK(tqkv_calibration_measure_sensitivity(cal, m->h, calib.data(), 1) == TQKV_ERR_INVALID_ARGUMENT);
    REQUIRE(tqkv_calibration_measure_sensitivity(cal, m->h, calib.data(), calib.size()) == TQKV_OK);
    tqkv::Calibration ref = tqkv::calibrate_kv(cpp, calib, 256);
    tqkv::measure_sensitivity(cpp, ref, calib, 256);
    tqkv::CacheShape shape = tqkv::CacheShape::of(cpp.config());
    const std::string want = tqkv::plan_rates(tqkv::CacheSpec::parse("auto-4"), shape, ref).json();
    REQUIRE(tqkv_rate_plan("auto-4", &base, cal, nullptr, 0, &size) == TQKV_ERR_BUFFER_TOO_SMALL);
    CHECK(size == want.size() + 1);
    REQUIRE(tqkv_rate_plan("auto-4", &base, cal, json, sizeof json, &size) == TQKV_OK);
    CHECK(std::string(json) == want);
    // The calibration's bytes carry the sensitivities; a cache from the spec uses the plan's rates.
    size_t n = 0;
    REQUIRE(tqkv_calibration_save(cal, nullptr, 0, &n) == TQKV_ERR_BUFFER_TOO_SMALL);
    std::vector<uint8_t> bytes(n);
    REQUIRE(tqkv_calibration_save(cal, bytes.data(), n, &n) == TQKV_OK);
    CHECK(bytes == ref.save());
    tqkv_calibration back = nullptr;
    REQUIRE(tqkv_calibration_load(bytes.data(), bytes.size(), &back) == TQKV_OK);
    tqkv_cache c = nullptr;
    REQUIRE(tqkv_cache_create_spec("auto-4", &base, back, &c) == TQKV_OK);
    tqkv_cache_config got;
    got.struct_size = sizeof got;
    REQUIRE(tqkv_cache_get_config(c, &got) == TQKV_OK);
    CHECK(got.key_bits == tqkv::plan_rates(tqkv::CacheSpec::parse("auto-4"), shape, ref).layers[0].key_bits);
    tqkv_cache_destroy(c);
    // Runners take auto specs with a calibration that has sensitivities.
    Runner r(m->h, "auto-5", cal);
    auto cache = tqkv::make_cache(c_abi_spec("auto-5"), shape, &ref);
    const auto prompt = text_tokens("Auto: ");
    CHECK(greedy(r.h, prompt, 12) == greedy_cpp(cpp, *cache, prompt, 12));
    // Hostile calibration bytes: BAD_DATA, nothing created.
    bytes[20] ^= 0xff;
    tqkv_calibration bad = nullptr;
    CHECK(tqkv_calibration_load(bytes.data(), bytes.size(), &bad) == TQKV_ERR_BAD_DATA);
    CHECK(bad == nullptr);
    // Samples: a calibration from K/V the caller has, then a spec cache; fractional rates need it.
    tqkv_calibration s = nullptr;
    REQUIRE(tqkv_calibration_new(2, 2, 32, &s) == TQKV_OK);
    std::vector<float> k(3 * 2 * 32, 0.5f), v(k.size(), -1.0f);
    k[5] = 2.0f;
    for (int l = 0; l < 2; ++l) REQUIRE(tqkv_calibration_add(s, l, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    CHECK(tqkv_calibration_add(s, 2, k.data(), k.size(), v.data(), v.size()) == TQKV_ERR_INVALID_ARGUMENT);
    k[0] = std::nanf("");
    CHECK(tqkv_calibration_add(s, 0, k.data(), k.size(), v.data(), v.size()) == TQKV_ERR_INVALID_ARGUMENT);
    int32_t L = 0, KH = 0, D = 0;
    uint64_t mn = 0;
    REQUIRE(tqkv_calibration_get_info(s, &L, &KH, &D, &mn) == TQKV_OK);
    CHECK((L == 2 && KH == 2 && D == 32 && mn == 3));
    CHECK(tqkv_cache_create_spec("K3.5V2.5-w16", &base, nullptr, &c) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "calibration"));
    CHECK(tqkv_cache_create_spec("q4_0", &base, s, &c) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_create_spec("K4V3-bogus", &base, s, &c) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "unknown option 'bogus'"));
    REQUIRE(tqkv_cache_create_spec("default", &base, s, &c) == TQKV_OK);
    REQUIRE(tqkv_cache_get_config(c, &got) == TQKV_OK);
    CHECK(got.key_bits == 3.5);
    CHECK(got.window == 16);
    CHECK(got.scale == Approx(1 / std::sqrt(32.0)));
    tqkv_cache_destroy(c);
    CHECK(tqkv_preset_count() >= 5);
    CHECK(std::string(tqkv_preset_name(0)) == "default");
    CHECK(std::string(tqkv_preset_spec(0)) == "K3.5V2.5-w16");
    CHECK(tqkv_preset_name(-1) == nullptr);
    CHECK(tqkv_preset_name(tqkv_preset_count()) == nullptr);
    for (auto* h : {cal, back, s}) tqkv_calibration_destroy(h);
}
