// The Llama runner: forward pass against a plain double-precision reference on a tiny random
// model built in memory, prefill + decode against one full pass, the real model's NLL against
// kv/meta.json, and the loaders' errors on malformed files.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <new>
#include <string>

#include "tqkv/fp16.hpp"
#include "tqkv/kvdump.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"
#include "model/matmul.hpp"
#include "test_util.hpp"
#include "tiny_model.hpp"

using namespace tqkv;
using namespace tqkv_test;

// Counts heap allocations of this thread (the decode loop must make none). Every replaceable
// form except the aligned ones (left to the runtime as a pair) goes through malloc/free, so
// sanitizers see matching allocation and deallocation functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
thread_local size_t g_allocations = 0;
void* counted_malloc(size_t n) noexcept {
    ++g_allocations;
    return std::malloc(n ? n : 1);
}
}  // namespace
void* operator new(size_t n) {
    if (void* p = counted_malloc(n)) return p;
    throw std::bad_alloc();
}
void* operator new[](size_t n) {
    if (void* p = counted_malloc(n)) return p;
    throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

std::string model_dir() {
    if (const char* env = std::getenv("TQKV_MODEL")) return env;
    return TQKV_SHARED_DATA "/tq-ref-128";
}

bool have_model() {
    const std::string d = model_dir();
    if (std::filesystem::exists(d + "/model.safetensors") && std::filesystem::exists(d + "/config.json")) return true;
    WARN("skipped: no model at " << d << " (set TQKV_MODEL to a directory with config.json + model.safetensors)");
    return false;
}


// The textbook forward pass in double precision: logits [n][vocab] for tokens at positions 0..n-1.
std::vector<double> reference_logits(const LlamaModel& m, const std::vector<int32_t>& tokens) {
    const LlamaConfig& c = m.config();
    const int H = c.hidden_size, NH = c.num_attention_heads, KH = c.num_key_value_heads, d = c.head_dim;
    const int I = c.intermediate_size, V = c.vocab_size;
    const size_t n = tokens.size();
    auto matvec = [](const tqkv::WeightMatrix& M, const std::vector<double>& x, int out) {
        const std::vector<float> W = M.to_float();
        std::vector<double> y(size_t(out), 0.0);
        const size_t in = x.size();
        for (int o = 0; o < out; ++o)
            for (size_t i = 0; i < in; ++i) y[size_t(o)] += double(W[size_t(o) * in + i]) * x[i];
        return y;
    };
    auto rms = [&](const std::vector<double>& x, const std::vector<float>& w) {
        double ss = 0;
        for (double v : x) ss += v * v;
        const double inv = 1.0 / std::sqrt(ss / double(x.size()) + c.rms_norm_eps);
        std::vector<double> y(x.size());
        for (size_t j = 0; j < x.size(); ++j) y[j] = x[j] * inv * w[j];
        return y;
    };
    auto rope = [&](std::vector<double>& v, int heads, size_t pos) {
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < d / 2; ++i) {
                const double f = double(pos) * std::pow(c.rope_theta, -2.0 * i / d);
                double& a = v[size_t(h * d + i)];
                double& b = v[size_t(h * d + i + d / 2)];
                const double a0 = a, b0 = b;
                a = a0 * std::cos(f) - b0 * std::sin(f);
                b = b0 * std::cos(f) + a0 * std::sin(f);
            }
    };
    std::vector<std::vector<double>> x(n);
    for (size_t t = 0; t < n; ++t)
        x[t].assign(m.embedding().begin() + long(tokens[t]) * H, m.embedding().begin() + long(tokens[t] + 1) * H);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        const LlamaLayer& L = m.layer(l);
        std::vector<std::vector<double>> q(n), k(n), v(n);
        for (size_t t = 0; t < n; ++t) {
            const auto h = rms(x[t], L.attn_norm);
            q[t] = matvec(L.wq, h, NH * d);
            k[t] = matvec(L.wk, h, KH * d);
            v[t] = matvec(L.wv, h, KH * d);
            rope(q[t], NH, t);
            rope(k[t], KH, t);
        }
        for (size_t t = 0; t < n; ++t) {
            std::vector<double> att(size_t(NH * d), 0.0);
            for (int h = 0; h < NH; ++h) {
                const int g = h / (NH / KH);
                std::vector<double> s(t + 1);
                double mx = -1e300, sum = 0;
                for (size_t u = 0; u <= t; ++u) {
                    double dot = 0;
                    for (int j = 0; j < d; ++j) dot += q[t][size_t(h * d + j)] * k[u][size_t(g * d + j)];
                    s[u] = dot / std::sqrt(double(d));
                    mx = std::max(mx, s[u]);
                }
                for (auto& e : s) sum += (e = std::exp(e - mx));
                for (size_t u = 0; u <= t; ++u)
                    for (int j = 0; j < d; ++j) att[size_t(h * d + j)] += s[u] / sum * v[u][size_t(g * d + j)];
            }
            const auto o = matvec(L.wo, att, H);
            for (int j = 0; j < H; ++j) x[t][size_t(j)] += o[size_t(j)];
            const auto h2 = rms(x[t], L.mlp_norm);
            auto gate = matvec(L.w_gate, h2, I);
            const auto up = matvec(L.w_up, h2, I);
            for (int j = 0; j < I; ++j) gate[size_t(j)] = gate[size_t(j)] / (1.0 + std::exp(-gate[size_t(j)])) * up[size_t(j)];
            const auto down = matvec(L.w_down, gate, H);
            for (int j = 0; j < H; ++j) x[t][size_t(j)] += down[size_t(j)];
        }
    }
    std::vector<double> logits;
    for (size_t t = 0; t < n; ++t) {
        const auto lg = matvec(m.output_weight(), rms(x[t], m.final_norm()), V);
        logits.insert(logits.end(), lg.begin(), lg.end());
    }
    return logits;
}


double max_abs_diff(const float* a, const float* b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
    return m;
}

}  // namespace

TEST_CASE("model: the forward pass matches a double-precision reference (tiny random Llama, untied)", "[model]") {
    const LlamaModel m = tiny_model();
    CHECK(!m.tied());
    CHECK(m.parameters() == size_t(2 * 256 * 64 + 64 + 2 * (2 * 64 + 128 * 64 + 2 * 64 * 64 + 64 * 128 + 3 * 96 * 64)));
    const auto tokens = text_tokens("Hello, tqkv! A small model, twelve dozen bytes of text.");
    const auto ref = reference_logits(m, tokens);
    auto cache = make_exact_cache(CacheShape::of(m.config()));
    LlamaRunner run(m, *cache, 16);  // several chunks
    std::vector<float> logits(tokens.size() * 256);
    run.prefill(tokens, logits);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        worst = std::max(worst, std::abs(double(logits[i]) - ref[i]));
        scale = std::max(scale, std::abs(ref[i]));
    }
    INFO("max |logit - reference| = " << worst << ", max |logit| = " << scale);
    CHECK(worst < 2e-4 * std::max(1.0, scale));
}

TEST_CASE("model: prefill + decode gives the logits of one full pass", "[model]") {
    const LlamaModel m = tiny_model(3);
    const auto tokens = text_tokens("The quick brown fox jumps over the lazy dog; then it decodes.");
    const size_t n = tokens.size(), split = 21, V = 256;
    for (const std::string spec : {"fp32", "K4V4", "K3V2-w8", "q4_0", "kivi2"}) {
        INFO("cache " << spec);
        auto full_cache = make_cache(spec, CacheShape::of(m.config()));
        auto step_cache = make_cache(spec, CacheShape::of(m.config()));
        LlamaRunner full(m, *full_cache, 64), step(m, *step_cache, 8);
        // Token-by-token attention inside a chunk (the default) = what decode computes.
        CHECK(full.sequential_attention);
        std::vector<float> all(n * V), part(split * V), one(V);
        full.prefill(tokens, all);
        step.prefill(std::span(tokens).first(split), part);
        CHECK(max_abs_diff(part.data(), all.data(), split * V) < 1e-4);
        for (size_t t = split; t < n; ++t) {
            step.decode(tokens[t], one);
            INFO("position " << t);
            REQUIRE(max_abs_diff(one.data(), &all[t * V], V) < 1e-4);
        }
        CHECK(step.position() == n);
        CHECK(step_cache->tokens(0) == n);
        // Chunked prefill (append the chunk, attend causally) is the same again: each query still
        // sees the window before its position exactly.
        if (spec == "fp32" || spec == "K4V4" || spec == "K3V2-w8") {
            auto c3 = make_cache(spec, CacheShape::of(m.config()));
            LlamaRunner chunked(m, *c3, 16);  // several chunks, each longer than the window
            chunked.sequential_attention = false;
            std::vector<float> lg(n * V);
            chunked.prefill(tokens, lg);
            CHECK(max_abs_diff(lg.data(), all.data(), n * V) < 1e-4);
        }
    }
}

// The runner's matrix kernels: each ISA's fp16 widening is exact for every finite fp16, a product
// over fp16 weights is bit-identical to the same kernel over the widened fp32 weights (blocks of
// rows change nothing: rows are independent), and every kernel agrees with the plain loops to
// float rounding (they sum in other orders).
TEST_CASE("model: matmul kernels: exact fp16 widening, fp16 == fp32 weights, every ISA == plain", "[model][kernels]") {
    const auto kernels = detail::matmul_kernels();
    REQUIRE(!kernels.empty());
    CHECK(std::string(kernels.front().name) == "plain");
    std::vector<uint16_t> finite;
    for (uint32_t h = 0; h < 0x10000; ++h)
        if ((h & 0x7c00) != 0x7c00) finite.push_back(uint16_t(h));
    for (const auto& k : kernels) {
        INFO("kernel " << k.name);
        std::vector<float> f(finite.size());
        k.widen(finite.data(), finite.size(), f.data());
        size_t bad = 0;
        for (size_t i = 0; i < finite.size(); ++i) {
            const float want = half_to_float(finite[i]);
            bad += std::memcmp(&f[i], &want, 4) != 0;  // bitwise: -0 stays -0, subnormals exact
        }
        CHECK(bad == 0);
    }
    Rng rng(11);
    // Adversarial weight values mixed in: zeros of both signs, fp16 subnormals, the largest finite.
    const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x3c00};
    for (size_t in : {1, 3, 15, 16, 17, 33, 64, 100, 1030})
        for (size_t out : {1, 3, 4, 5, 9, 17})
            for (size_t n : {1, 2, 3, 4, 5, 9}) {
                std::vector<uint16_t> w(out * in);
                for (size_t i = 0; i < w.size(); ++i)
                    w[i] = rng.uniform() < 0.1 ? special[i % 9] : float_to_half(float(rng.normal() * 0.5));
                std::vector<float> wf(w.size()), x(n * in);
                for (size_t i = 0; i < w.size(); ++i) wf[i] = half_to_float(w[i]);
                for (auto& v : x) v = float(rng.normal());
                std::vector<float> plain(n * out), y32(n * out), y16(n * out);
                kernels.front().f32(x.data(), n, in, wf.data(), out, plain.data(), out);
                for (const auto& k : kernels) {
                    INFO("kernel " << k.name << ", in " << in << ", out " << out << ", n " << n);
                    std::fill(y32.begin(), y32.end(), -1.f);
                    std::fill(y16.begin(), y16.end(), -2.f);
                    k.f32(x.data(), n, in, wf.data(), out, y32.data(), out);
                    detail::matmul_f16_with(k, x.data(), n, in, w.data(), out, y16.data());
                    REQUIRE(std::memcmp(y32.data(), y16.data(), y32.size() * 4) == 0);
                    for (size_t t = 0; t < n; ++t)
                        for (size_t o = 0; o < out; ++o) {
                            double mag = 0;  // sum |w x|: the scale of the rounding error
                            for (size_t i = 0; i < in; ++i) mag += std::abs(double(wf[o * in + i]) * x[t * in + i]);
                            REQUIRE(std::abs(double(y32[t * out + o]) - plain[t * out + o]) <= 4e-7 * double(in) * mag + 1e-30);
                        }
                }
            }
    // Infinities and NaNs among the weights (AVX2 rebuilds signalling NaNs per group of 8; wasm
    // converts a range holding any of them again with the reference): still the f32 kernel's bits
    // on the widened rows.
    for (size_t in : {8, 21, 64})
        for (size_t n : {1, 2}) {
            const size_t out = 6;
            std::vector<uint16_t> w(out * in);
            for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_half(float(rng.normal() * 0.5));
            w[1] = 0x7c00, w[in + in - 1] = 0xfc00, w[2 * in + 3] = 0x7e01, w[4 * in + in / 2] = 0x7d00;
            std::vector<float> wf(w.size()), x(n * in);
            for (size_t i = 0; i < w.size(); ++i) wf[i] = half_to_float(w[i]);
            for (auto& v : x) v = float(rng.normal());
            for (const auto& k : kernels) {
                INFO("kernel " << k.name << ", in " << in << ", n " << n << ", weights with inf and NaN");
                std::vector<float> y32(n * out), y16(n * out);
                k.f32(x.data(), n, in, wf.data(), out, y32.data(), out);
                detail::matmul_f16_with(k, x.data(), n, in, w.data(), out, y16.data());
                CHECK(std::memcmp(y32.data(), y16.data(), y32.size() * 4) == 0);
                CHECK(std::isinf(y16[0]));
                CHECK(std::isnan(y16[2]));
            }
        }
}

TEST_CASE("model: an fp16 checkpoint and an fp32 one of the same values give identical logits", "[model]") {
    auto ts = tiny_tensors(17);
    for (auto& [name, t] : ts)
        for (auto& v : t.data) v = half_to_float(float_to_half(v));  // values fp16 can hold
    const LlamaConfig cfg = LlamaConfig::parse(kTinyConfig);
    const LlamaModel m16 = LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(ts, "F16")));
    const LlamaModel m32 = LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(ts, "F32")));
    CHECK(m16.layer(0).wq.is_f16());
    CHECK(!m32.layer(0).wq.is_f16());
    CHECK(m16.parameters() == m32.parameters());
    CHECK(m16.weight_bytes() < m32.weight_bytes() * 0.6);  // matrices at 2 bytes, norms and embedding at 4
    const auto tokens = text_tokens("Half the bytes, the same numbers.");
    std::vector<float> a(tokens.size() * 256), b(a.size());
    auto c16 = make_exact_cache(CacheShape::of(cfg)), c32 = make_exact_cache(CacheShape::of(cfg));
    LlamaRunner r16(m16, *c16, 8), r32(m32, *c32, 8);
    r16.prefill(tokens, a);
    r32.prefill(tokens, b);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
    r16.decode(tokens[3], std::span(a).first(256));
    r32.decode(tokens[3], std::span(b).first(256));
    CHECK(std::memcmp(a.data(), b.data(), 256 * 4) == 0);
}

TEST_CASE("model: llama.cpp's rotated caches and TurboQuant+ as emulated caches", "[model]") {
    // d = 64 (llama.cpp rotates only multiples of 64): keys with outlier channels, where the
    // rotation matters. Attention of one query over 300 tokens against the exact cache.
    const CacheShape s{2, 4, 2, 64};
    const size_t n = 300, row = size_t(s.kv_heads) * s.head_dim;
    Rng rng(5);
    std::vector<float> K(n * row), V(n * row), q(size_t(s.heads) * s.head_dim);
    for (size_t i = 0; i < K.size(); ++i) {
        K[i] = float(rng.normal()) * ((i % 64) % 21 == 5 ? 12.0f : 1.0f);
        V[i] = float(rng.normal());
    }
    for (auto& x : q) x = float(rng.normal()) * 0.3f;
    auto attend = [&](const std::string& spec, double* bits) {
        auto c = make_cache(spec, s);
        for (int l = 0; l < s.layers; ++l) c->append(l, K, V);
        std::vector<float> out(q.size());
        c->attend(1, q, out);
        if (bits) *bits = c->bits_per_coord();
        CHECK(c->name() == spec);
        return out;
    };
    const auto exact = attend("fp32", nullptr);
    auto err = [&](const std::vector<float>& o) {
        double e = 0, r = 0;
        for (size_t i = 0; i < o.size(); ++i) e += (o[i] - exact[i]) * double(o[i] - exact[i]), r += exact[i] * double(exact[i]);
        return std::sqrt(e / r);
    };
    double b_plain = 0, b_rot = 0, b_rots = 0, b_turbo = 0;
    const double e_plain = err(attend("q4_0", &b_plain)), e_rot = err(attend("q4_0-rot", &b_rot)),
                 e_rots = err(attend("q4_0-rots", &b_rots)), e_q8 = err(attend("q8_0-rot", nullptr)),
                 e_turbo = err(attend("turbo4", &b_turbo));
    INFO("relative attention error: q4_0 " << e_plain << ", q4_0-rot " << e_rot << ", q4_0-rots " << e_rots << ", q8_0-rot "
                                           << e_q8 << ", turbo4 " << e_turbo);
    CHECK(e_rot < 0.8 * e_plain);
    CHECK(e_rots < 0.8 * e_plain);
    CHECK(e_q8 < 0.1 * e_rot);
    CHECK(e_turbo < e_plain);
    CHECK(b_rot == b_plain);  // the rotation costs no storage
    CHECK(b_rots == Approx(4.5));
    CHECK(b_turbo == Approx(4.25));  // 4-bit codes + one fp16 norm per 64 values
    // Different seeds of -rots and turbo, different results; the same seed, the same.
    CHECK(attend("q4_0-rots-x3", nullptr) != attend("q4_0-rots", nullptr));
    CHECK(attend("turbo4-x3", nullptr) == attend("turbo4-x3", nullptr));
    // The tiny model's d = 32: llama.cpp would not rotate; the cache says why it cannot.
    CHECK_THROWS_WITH(make_cache("q4_0-rot", CacheShape{2, 4, 2, 32}), Catch::Contains("multiple of 64"));
}

TEST_CASE("model: caches report their storage", "[model]") {
    const LlamaModel m = tiny_model(5);
    const auto tokens = text_tokens(std::string(200, 'a') + "bcd");
    struct Case {
        const char* spec;
        double bits;
    };
    // Fewer bits per coordinate down the list; every layer holds every token.
    double prev = 1e9;
    for (const char* spec : {"fp32", "fp16", "q8_0", "K4V4", "K3V3", "K2V2"}) {
        auto cache = make_cache(spec, CacheShape::of(m.config()));
        LlamaRunner run(m, *cache);
        run.prefill(tokens, {});
        INFO(spec << ": " << cache->bits_per_coord() << " bits/coord");
        CHECK(cache->bits_per_coord() < prev);
        CHECK(cache->tokens(1) == tokens.size());
        CHECK(cache->bytes_per_token() * double(tokens.size()) == Approx(cache->format_bytes()));
        prev = cache->bits_per_coord();
    }
    auto exact = make_cache("fp32", CacheShape::of(m.config()));
    CHECK(exact->fp16_bytes_per_token() == 4.0 * 2 * 2 * 32);
}

TEST_CASE("model: a sliding-window cache reports the storage of the tokens it holds", "[model][swa]") {
    // 100 tokens one by one through an attention window of 16: the tqkv cache holds the last 16
    // (the others are dropped, codes included). Its bits per coordinate, bytes per token and fp16
    // equivalent are those of the tokens held, the same as a cache without the window holding 16
    // tokens (same exact window and coded counts) — not spread over the 100 positions. Cost: ~1 ms.
    const CacheShape shape{2, 4, 2, 64, 0};
    const size_t row = 2 * 64, total = 100, W = 16;
    const auto K = tqkv_test::gaussian_vectors(total, int(row), 3), V = tqkv_test::gaussian_vectors(total, int(row), 4);
    for (const char* spec : {"K4V4", "K3V2-w4"}) {
        INFO(spec);
        auto windowed = make_cache(spec, shape), plain = make_cache(spec, shape);
        REQUIRE(windowed->set_attention_window(W));
        for (size_t t = 0; t < total; ++t)
            for (int l = 0; l < shape.layers; ++l)
                windowed->append(l, std::span(K).subspan(t * row, row), std::span(V).subspan(t * row, row));
        for (size_t t = total - W; t < total; ++t)
            for (int l = 0; l < shape.layers; ++l)
                plain->append(l, std::span(K).subspan(t * row, row), std::span(V).subspan(t * row, row));
        CHECK(windowed->tokens(0) == total);  // positions
        CHECK(windowed->format_bytes() == plain->format_bytes());
        CHECK(windowed->held_coords() == 2.0 * W * shape.layers * row);
        CHECK(windowed->bits_per_coord() == plain->bits_per_coord());  // was 16/100 of it
        CHECK(windowed->bits_per_coord() > 2.0);
        CHECK(windowed->bytes_per_token() == plain->bytes_per_token());
        CHECK(windowed->fp16_bytes() == plain->fp16_bytes());
        CHECK(plain->fp16_bytes() == double(W) * plain->fp16_bytes_per_token());
    }
}

// [stat]: a 19 M-parameter forward pass over 1024 tokens checks the math, not the kernels; it runs
// natively (0.5 s) and is left out of the qemu and sanitizer runs.
TEST_CASE("model: the real model reproduces kv/meta.json's exact-cache NLL", "[model][stat]") {
    if (!have_model()) return;
    const std::string dir = model_dir();
    if (!std::filesystem::exists(dir + "/kv/tokens.npy") || !std::filesystem::exists(dir + "/kv/meta.json")) {
        WARN("skipped: no kv/tokens.npy + kv/meta.json in " << dir);
        return;
    }
    const LlamaModel m = LlamaModel::load(dir);
    CHECK(m.config().num_hidden_layers == 6);
    CHECK(m.tied());
    CHECK(m.parameters() == 19012096);
    // tokens.npy is int32, which the float .npy loader does not take: read it directly.
    std::ifstream f(dir + "/kv/tokens.npy", std::ios::binary);
    std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    REQUIRE(b.size() > 10);
    const size_t hl = size_t(b[8]) | size_t(b[9]) << 8;
    REQUIRE(std::string(b.begin() + 10, b.begin() + 10 + long(hl)).find("'<i4'") != std::string::npos);
    std::vector<int32_t> tokens((b.size() - 10 - hl) / 4);
    std::memcpy(tokens.data(), &b[10 + hl], tokens.size() * 4);
    REQUIRE(tokens.size() == 1024);
    std::ifstream mf(dir + "/kv/meta.json");
    const std::string meta((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
    const auto key = meta.find("\"nll_nats_per_byte_fp32_cache\"");
    REQUIRE(key != std::string::npos);
    const double expected = std::stod(meta.substr(meta.find(':', key) + 1));

    auto cache = make_exact_cache(CacheShape::of(m.config()));
    const NllResult r = evaluate_nll(m, *cache, tokens, 1024, false);
    CHECK(r.scored == 1023);
    INFO("NLL " << r.nll << " nats/byte, meta.json " << expected);
    CHECK(std::abs(r.nll - expected) < 2e-3);

    // The first layer's keys after RoPE equal the dump's (fp16-rounded there).
    const NpyArray keys = load_npy(dir + "/kv/keys.npy");  // [6][2][1024][128]
    auto c2 = make_exact_cache(CacheShape::of(m.config()));
    LlamaRunner run(m, *c2);
    double worst = 0;
    run.observer = [&](int layer, size_t n, const float*, const float* k, const float*) {
        if (layer != 0) return;
        for (size_t t = 0; t < n; ++t)
            for (int h = 0; h < 2; ++h)
                for (int j = 0; j < 128; ++j)
                    worst = std::max(worst, std::abs(double(k[(t * 2 + h) * 128 + j]) -
                                                     keys.data[((size_t(h) * 1024) + t) * 128 + size_t(j)]));
    };
    run.prefill(std::span(tokens).first(64), {});
    INFO("max |k - dump| over 64 tokens of layer 0: " << worst);
    CHECK(worst < 0.05);
}

TEST_CASE("model: config.json errors name the problem", "[model]") {
    CHECK_NOTHROW(LlamaConfig::parse(kTinyConfig));
    const LlamaConfig c = LlamaConfig::parse(kTinyConfig);
    CHECK(c.head_dim == 32);
    CHECK(c.rope_theta == 500.0);
    CHECK(c.byte_vocab());
    auto with = [](const std::string& from, const std::string& to) {
        std::string s = kTinyConfig;
        const auto p = s.find(from);
        REQUIRE(p != std::string::npos);
        return s.replace(p, from.size(), to);
    };
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"hidden_size\": 64,", "")), Catch::Contains("missing \"hidden_size\""));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"2\"")),
                      Catch::Contains("\"num_hidden_layers\" must be an integer"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"intermediate_size\": 96", "\"intermediate_size\": 96.5")),
                      Catch::Contains("must be an integer"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3")),
                      Catch::Contains("not a multiple of num_key_value_heads"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"head_dim\": 32", "\"head_dim\": 15")), Catch::Contains("must be even"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"vocab_size\": 256", "\"vocab_size\": -1")), Catch::Contains("out of range"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"silu\"", "\"gelu\"")), Catch::Contains("hidden_act \"gelu\""));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"rope_theta\": 500.0,", "\"rope_scaling\": {\"type\": \"linear\"},")),
                      Catch::Contains("missing \"rope_scaling.factor\""));
    CHECK_NOTHROW(LlamaConfig::parse(with("\"rope_theta\": 500.0,", "\"rope_scaling\": null,")));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"llama\"", "\"gpt2\"")), Catch::Contains("model_type \"gpt2\""));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": 0")),
                      Catch::Contains("true or false"));
    CHECK_THROWS_WITH(LlamaConfig::parse(with("\"hidden_act\": \"silu\"", "\"attention_bias\": 1")),
                      Catch::Contains("\"attention_bias\" must be true or false"));
    CHECK_THROWS_WITH(LlamaConfig::parse("{\"hidden_size\": 64,"), Catch::Contains("invalid JSON"));
    CHECK_THROWS_WITH(LlamaConfig::parse("[1, 2]"), Catch::Contains("not a JSON object"));
    CHECK_THROWS_WITH(LlamaConfig::parse(""), Catch::Contains("invalid JSON"));
    CHECK_THROWS_WITH(LlamaConfig::parse(std::string(kTinyConfig) + "x"), Catch::Contains("trailing"));
    CHECK_THROWS_WITH(LlamaConfig::parse(std::string(200, '[')), Catch::Contains("nesting"));
    CHECK_THROWS_WITH(LlamaConfig::load("/nonexistent/config.json"), Catch::Contains("cannot open"));
}

TEST_CASE("model: safetensors errors name the problem", "[model]") {
    const LlamaConfig cfg = LlamaConfig::parse(kTinyConfig);
    const auto ts = tiny_tensors(1);
    const auto good = make_safetensors(ts);
    CHECK_NOTHROW(LlamaModel::from_parts(cfg, Safetensors::parse(good)));
    CHECK_NOTHROW(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(ts, "F32"))));
    CHECK_NOTHROW(Safetensors::parse(make_safetensors(ts, "F16", ",\"__metadata__\":{\"format\":\"pt\"}")));

    // Header length.
    auto bad_len = good;
    bad_len[7] = 0x40;  // 2^62
    CHECK_THROWS_WITH(Safetensors::parse(bad_len), Catch::Contains("bad header length"));
    auto zero_len = good;
    std::fill(zero_len.begin(), zero_len.begin() + 8, 0);
    CHECK_THROWS_WITH(Safetensors::parse(zero_len), Catch::Contains("bad header length"));
    CHECK_THROWS_WITH(Safetensors::parse(std::vector<uint8_t>(good.begin(), good.begin() + 5)), Catch::Contains("too short"));
    CHECK_THROWS_WITH(Safetensors::parse(std::vector<uint8_t>(good.begin(), good.begin() + 40)), Catch::Contains("bad header length"));
    auto bad_json = good;
    bad_json[8] = '[';
    CHECK_THROWS_WITH(Safetensors::parse(bad_json), Catch::Contains("invalid JSON"));

    // Truncated data: the last tensor's range runs past the end.
    auto cut = good;
    cut.resize(cut.size() - 2);
    CHECK_THROWS_WITH(Safetensors::parse(cut), Catch::Contains("past the end"));

    // Unsupported dtype, size mismatch, overlap.
    auto one = [](const std::string& entry, size_t data_bytes) {
        std::string h = "{\"w\":" + entry + "}";
        while (h.size() % 8) h += ' ';
        return file_bytes(h, std::vector<uint8_t>(data_bytes, 0));
    };
    CHECK_NOTHROW(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}", 24)));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"I8\",\"shape\":[2,3],\"data_offsets\":[0,6]}", 6)),
                      Catch::Contains("unsupported dtype I8"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}", 16)),
                      Catch::Contains("unsupported dtype F64"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}", 24)),
                      Catch::Contains("needs 24"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,0]}", 24)),
                      Catch::Contains("end < begin"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,24]}", 24)),
                      Catch::Contains("bad shape"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"shape\":[2,3],\"data_offsets\":[0,24]}", 24)), Catch::Contains("missing \"dtype\""));
    // Element counts past size_t (1e36 bytes): rejected with the count in the message, never converted.
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[1000000000000,1000000000000,1000000000000],\"data_offsets\":[0,24]}", 24)),
                      Catch::Contains("needs 4e+36"));
    CHECK_THROWS_WITH(Safetensors::parse(one("{\"dtype\":\"F32\",\"shape\":[6]}", 24)), Catch::Contains("data_offsets"));
    {
        std::string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}";
        while (h.size() % 8) h += ' ';
        CHECK_THROWS_WITH(Safetensors::parse(file_bytes(h, std::vector<uint8_t>(24, 0))), Catch::Contains("overlap"));
    }
    // Non-finite weights.
    {
        auto nan_ts = ts;
        nan_ts["model.norm.weight"].data[3] = NAN;
        CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(nan_ts))),
                          Catch::Contains("non-finite"));
        // In a weight matrix: fp16 (kept as fp16 bits) and fp32.
        auto inf_ts = ts;
        inf_ts["model.layers.1.self_attn.k_proj.weight"].data[77] = -INFINITY;
        CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(inf_ts))),
                          Catch::Contains("k_proj.weight\" holds a non-finite value at element 77"));
        CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(inf_ts, "F32"))),
                          Catch::Contains("non-finite"));
    }

    // Missing tensors and shapes that do not match the config.
    auto missing = ts;
    missing.erase("model.layers.1.mlp.up_proj.weight");
    CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(missing))),
                      Catch::Contains("missing tensor \"model.layers.1.mlp.up_proj.weight\""));
    auto no_head = ts;
    no_head.erase("lm_head.weight");
    CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(no_head))), Catch::Contains("lm_head.weight"));
    LlamaConfig tied = cfg;
    tied.tie_word_embeddings = true;
    CHECK(LlamaModel::from_parts(tied, Safetensors::parse(make_safetensors(no_head))).tied());
    auto wrong = ts;
    wrong["model.layers.0.self_attn.k_proj.weight"].shape = {32, 128};
    CHECK_THROWS_WITH(LlamaModel::from_parts(cfg, Safetensors::parse(make_safetensors(wrong))),
                      Catch::Contains("\"model.layers.0.self_attn.k_proj.weight\" has shape [32, 128], the config implies [64, 64]"));
    LlamaConfig more_layers = cfg;
    more_layers.num_hidden_layers = 3;
    CHECK_THROWS_WITH(LlamaModel::from_parts(more_layers, Safetensors::parse(good)), Catch::Contains("model.layers.2."));
    CHECK_THROWS_WITH(Safetensors::load("/nonexistent/model.safetensors"), Catch::Contains("cannot open"));
    CHECK_THROWS_WITH(LlamaModel::load("/nonexistent"), Catch::Contains("cannot open"));
}

TEST_CASE("model: cache specs and runner arguments are validated", "[model]") {
    const LlamaModel m = tiny_model();
    const CacheShape s = CacheShape::of(m.config());
    for (const char* good : {"fp32", "exact", "fp16", "q8_0", "q4_0", "kivi2", "kivi4", "turbo3", "K4V3", "K2.5V2-w32", "K3V3-prod",
                             "K3V3-raw-w8", "K3V3-s4", "K4V4-l0=K8V8"})
        CHECK_NOTHROW(make_cache(good, s));
    // (Fuzz finding: numbers past int range were converted before the range checks.)
    for (const char* bad : {"", "q5_0", "K9V3", "K4", "KxV3", "K4V3-w", "K4V3-bogus", "K4V3-l7=K4V4", "K4V3-w-5",
                            "K3.5V2.5-w1888888888888888888888888888888888888888888888888883", "K4V4-s1e40", "K4V4-w2.5",
                            "K4V4-x-1", "K4V4-x1e300", "K4V4-l1e30=K4V4", "K4V4-t1e300", "K4V4-tinf", "K4V4-t0"})
        CHECK_THROWS_WITH(make_cache(bad, s), Catch::Contains("cache"));
    // Query-aware channel scaling (sk/sv) did not help and is gone: an unknown option now.
    CHECK_THROWS_WITH(make_cache("K4V3-sk", s), Catch::Contains("unknown option 'sk'"));
    // Rates set directly on a spec are checked when the cache is built.
    for (double b : {1.28849e10 + 0.5, -2.5, 0.5, 8.5, double(NAN)}) {
        CacheSpec spec = CacheSpec::parse("K4V4");
        spec.key_bits = b;
        CHECK_THROWS_WITH(make_cache(spec, s), Catch::Contains("bits"));
        spec.key_bits = 4;
        spec.layer_rates.push_back({1, 4, b});
        CHECK_THROWS_WITH(make_cache(spec, s), Catch::Contains("bits"));
    }
    auto cache = make_exact_cache(s);
    LlamaRunner run(m, *cache);
    std::vector<float> logits(256), wrong(100);
    const std::vector<int32_t> bad_token = {300};
    CHECK_THROWS_WITH(run.prefill(bad_token, logits), Catch::Contains("outside the vocabulary"));
    CHECK_THROWS_WITH(run.decode(65, wrong), Catch::Contains("vocab"));
    auto other = make_exact_cache({3, 4, 2, 32});
    CHECK_THROWS_WITH(LlamaRunner(m, *other), Catch::Contains("shape"));
}

TEST_CASE("model: calibration statistics and preconditioned caches stay exact in high precision", "[model]") {
    const LlamaModel m = tiny_model(11);
    const auto calib = text_tokens("Calibration text: the statistics of keys, values and queries of every layer.");
    const Calibration cal = calibrate_kv(m, calib, 256);
    CHECK(cal.tokens(0) == calib.size());
    CHECK(cal.query_tokens(1) == calib.size());
    CHECK(cal.key_mean(1, 1).size() == size_t(32));
    const auto tokens = text_tokens("Preconditioning must not change attention: shifts and scales cancel.");
    auto exact = make_exact_cache(CacheShape::of(m.config()));
    const NllResult ref = evaluate_nll(m, *exact, tokens, 256, true);
    // 8-bit codes with centring and debiasing: close to exact.
    for (const char* spec : {"K8V8", "K8V8-nc", "K8V8-emu-s2", "K7.5V7.5-w4"}) {
        auto c = make_cache(spec, CacheShape::of(m.config()), &cal);
        const NllResult r = evaluate_nll(m, *c, tokens, 256, true);
        INFO(spec << ": NLL " << r.nll << " vs exact " << ref.nll);
        CHECK(std::abs(r.nll - ref.nll) < 2e-3 * ref.nll);
    }
}

TEST_CASE("model: token-by-token decode allocates nothing", "[model]") {
    const LlamaModel m = tiny_model(13);
    const auto calib = text_tokens("Some calibration text for the statistics of the tiny model's keys and values.");
    const Calibration cal = calibrate_kv(m, calib, 256);
    std::string text;
    for (int i = 0; i < 8; ++i) text += "Decoding must not touch the allocator. ";
    const auto tokens = text_tokens(text);
    for (const char* spec : {"fp32", "K4V4", "K3V2-w16", "K2.5V2"}) {
        INFO("cache " << spec);
        auto cache = make_cache(spec, CacheShape::of(m.config()), &cal);
        cache->reserve(256);
        LlamaRunner run(m, *cache);
        std::vector<float> logits(256);
        run.prefill(std::span(tokens).first(81), logits);
        run.decode(tokens[81], logits);  // warm-up: thread-local attention buffers
        // Compressed tokens stay inside the second block of 64 (KVCache allocates a block per 64).
        const size_t before = g_allocations;
        for (size_t t = 82; t < 128; ++t) run.decode(tokens[t], logits);
        CHECK(g_allocations - before == 0);
    }
}

TEST_CASE("model: the sensitivity probe fills the calibration and auto specs run through the runner", "[model][auto]") {
    const LlamaModel m = tiny_model(17);
    std::string text;
    for (int i = 0; i < 6; ++i) text += "Calibration text for the probe: keys and values of every layer. ";
    const auto calib = text_tokens(text);
    Calibration cal = calibrate_kv(m, calib, 256);
    CHECK_FALSE(cal.has_sensitivity());
    measure_sensitivity(m, cal, calib, 256);
    REQUIRE(cal.has_sensitivity());
    double total = 0;
    for (int l = 0; l < m.config().num_hidden_layers; ++l) {
        CHECK(std::isfinite(cal.key_sensitivity(l)));
        CHECK(cal.key_sensitivity(l) > 0);  // floored at a tenth of the mean: never starved on noise
        CHECK(cal.value_sensitivity(l) > 0);
        total += cal.key_sensitivity(l) + cal.value_sensitivity(l);
    }
    CHECK(total > 0);
    // Any thread count: the same sensitivities.
    Calibration cal2 = calibrate_kv(m, calib, 256);
    measure_sensitivity(m, cal2, calib, 256, 2);
    CHECK(cal2 == cal);
    // The probe sees what a layer's attention is worth: with layer 1's output projection zeroed its
    // keys and values change nothing downstream (KL exactly 0), so both sit at the floor, a tenth
    // of their side's mean (layer 0's sensitivity / 20), and a plan gives them the fewest bits.
    {
        auto ts = tiny_tensors(17);
        for (float& w : ts["model.layers.1.self_attn.o_proj.weight"].data) w = 0;
        const LlamaModel mute = LlamaModel::from_parts(LlamaConfig::parse(kTinyConfig), Safetensors::parse(make_safetensors(ts)));
        Calibration c = calibrate_kv(mute, calib, 256);
        measure_sensitivity(mute, c, calib, 256);
        CHECK(c.key_sensitivity(0) > 0);
        CHECK(c.value_sensitivity(0) > 0);
        CHECK(c.key_sensitivity(1) == Approx(c.key_sensitivity(0) / 20).epsilon(1e-12));
        CHECK(c.value_sensitivity(1) == Approx(c.value_sensitivity(0) / 20).epsilon(1e-12));
        const RatePlan p = plan_rates(CacheSpec::parse("auto-4"), CacheShape::of(mute.config()), c);
        CHECK(p.layers[1].key_bits < p.layers[0].key_bits);
        CHECK(p.layers[1].value_bits < p.layers[0].value_bits);
    }
    const auto tokens = text_tokens("Auto rates follow the probe; the runner does not care how they were chosen.");
    auto exact = make_exact_cache(CacheShape::of(m.config()));
    const NllResult ref = evaluate_nll(m, *exact, tokens, 256, true);
    auto c = make_cache("auto-6", CacheShape::of(m.config()), &cal);
    const NllResult r = evaluate_nll(m, *c, tokens, 256, true);
    CHECK(std::abs(r.nll - ref.nll) < 1e-2 * ref.nll);
    CHECK_THROWS_WITH(make_cache("auto-3", CacheShape::of(m.config())), Catch::Contains("calibration"));
}
