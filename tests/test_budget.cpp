// KV caches under a byte budget (tqkv/budget.hpp): the tiered cache's merged softmax against exact
// attention over what it holds, budgets, demotion order, sinks, and what each eviction baseline
// keeps — on synthetic keys/values/queries; a tiny random Llama for the runner; the real model
// (skipped when ../shared/data is absent) for a short ΔNLL comparison.
#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "test_util.hpp"
#include "tqkv/budget.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"

using namespace tqkv;

namespace {

const CacheShape kShape{2, 4, 2, 32};  // layers, query heads, KV heads, head_dim
constexpr size_t kExact = 4 * 32;      // fp16 bytes of one exact token of one KV head (K + V)

// Synthetic rows [n][heads][d]: N(0, sd^2) plus an offset per channel (the means centering removes).
std::vector<float> rows(size_t n, int heads, int d, uint64_t seed, double sd = 1.0, double offset = 0.0) {
    Rng rng(seed);
    std::vector<float> x(n * heads * d);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(rng.normal() * sd + offset * double((i % d) % 3));
    return x;
}

// Exact softmax attention in double precision of one query token [heads][d] of a layer over what
// the cache says it holds (dequantized()), tokens after `limit` masked.
std::vector<float> reference(const BudgetCache& c, int layer, const float* q, int64_t limit) {
    const CacheShape& s = c.shape();
    const int d = s.head_dim, r = s.heads / s.kv_heads;
    std::vector<float> out(size_t(s.heads) * d, 0.0f);
    for (int h = 0; h < s.kv_heads; ++h) {
        std::vector<float> K, V;
        c.dequantized(layer, h, K, V);
        const auto held = c.held(layer, h);
        REQUIRE(K.size() == held.size() * size_t(d));
        for (int hh = 0; hh < r; ++hh) {
            const float* qh = q + size_t(h * r + hh) * d;
            std::vector<double> w(held.size(), 0.0);
            double mx = -1e300, sum = 0;
            for (size_t t = 0; t < held.size(); ++t) {
                if (held[t].position > limit) continue;
                double dot = 0;
                for (int j = 0; j < d; ++j) dot += double(qh[j]) * K[t * d + j];
                w[t] = dot / std::sqrt(double(d));
                mx = std::max(mx, w[t]);
            }
            for (size_t t = 0; t < held.size(); ++t)
                if (held[t].position <= limit) sum += (w[t] = std::exp(w[t] - mx));
                else w[t] = 0;
            for (size_t t = 0; t < held.size(); ++t)
                for (int j = 0; j < d; ++j) out[size_t(h * r + hh) * d + j] += float(w[t] / sum * V[t * d + j]);
        }
    }
    return out;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0, scale = 1e-3;
    for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, double(std::abs(b[i])));
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
    return m / scale;
}

// Bytes per token of one KV head at a tier's rate (as a tier segment is configured).
double tier_bytes(double kb, double vb, int d = 32) {
    CacheConfig c;
    c.heads = 2, c.kv_heads = 1, c.head_dim = d, c.key_bits = kb, c.value_bits = vb, c.block_tokens = 32;
    if (kb != std::floor(kb)) c.key_high_channels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    if (vb != std::floor(vb)) c.value_high_channels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return KVCache(c).compressed_bytes_per_token();
}

// Bytes a (layer, KV head) holds according to held(), for tiers K4V4 then K2V2.
double share_used(const BudgetCache& c, int l, int h) {
    const double cost[] = {double(kExact), tier_bytes(4, 4), tier_bytes(2, 2)};
    double b = 0;
    for (const auto& t : c.held(l, h)) b += cost[t.tier];
    return b;
}

// A calibration with given statistics: per channel, two samples mean +- sd give exactly that mean
// and mean square mean^2 + sd^2.
Calibration fake_calibration(uint64_t seed) {
    Calibration cal(kShape.layers, kShape.kv_heads, kShape.head_dim);
    const size_t row = size_t(kShape.kv_heads) * kShape.head_dim;
    Rng rng(seed);
    for (int l = 0; l < kShape.layers; ++l) {
        std::vector<float> k(2 * row), v(2 * row);
        for (size_t i = 0; i < row; ++i) {
            const size_t c = size_t(l) * row + i;
            const float km = float(rng.normal()), vm = float(rng.normal());
            const float ks = float(std::sqrt(1.0 + double(c % 7))), vs = float(std::sqrt(1.0 + double(c % 5)));
            k[i] = km + ks, k[row + i] = km - ks;
            v[i] = vm + vs, v[row + i] = vm - vs;
        }
        cal.add(l, k, v);
    }
    return cal;
}

// Appends tokens one at a time (or in chunks) to every layer and attends their queries; calls
// check(step) after each append/attend pair.
template <class F>
void drive(AttentionCache& c, size_t n, size_t chunk, uint64_t seed, F&& check, double key_sd = 1.0) {
    const CacheShape& s = c.shape();
    const auto K = rows(n, s.kv_heads, s.head_dim, seed, key_sd, 0.5);
    const auto V = rows(n, s.kv_heads, s.head_dim, seed + 1, 1.0, 0.5);
    const auto Q = rows(n, s.heads, s.head_dim, seed + 2, 1.0);
    const size_t kr = size_t(s.kv_heads) * s.head_dim, qr = size_t(s.heads) * s.head_dim;
    std::vector<float> out;
    for (size_t t0 = 0; t0 < n; t0 += chunk) {
        const size_t m = std::min(chunk, n - t0);
        out.resize(m * qr);
        for (int l = 0; l < s.layers; ++l) {
            c.append(l, std::span(&K[t0 * kr], m * kr), std::span(&V[t0 * kr], m * kr));
            c.attend(l, std::span(&Q[t0 * qr], m * qr), out);
            check(l, t0, m, std::span<const float>(&Q[t0 * qr], m * qr), out);
        }
    }
}

}  // namespace

TEST_CASE("budget: tiered cache with room for everything equals the fp16 cache", "[budget]") {
    // Exact tokens are held at fp16 (what the budget counts): with every token exact, the tiered
    // cache is an fp16 cache, up to float summation order.
    for (size_t chunk : {size_t(1), size_t(16)}) {
        INFO("chunk " << chunk);
        TieredOptions o;
        o.budget_bytes = fp16_cache_bytes(kShape, 300);
        auto tiered = make_tiered_cache(kShape, o);
        auto exact = make_cache("fp16", kShape);
        const size_t n = 240;
        const auto K = rows(n, 2, 32, 5, 1.0, 0.5), V = rows(n, 2, 32, 6), Q = rows(n, 4, 32, 7);
        double worst = 0;
        for (size_t t0 = 0; t0 < n; t0 += chunk) {
            std::vector<float> a(chunk * 128), b(chunk * 128);
            for (int l = 0; l < 2; ++l) {
                for (AttentionCache* c : {static_cast<AttentionCache*>(tiered.get()), exact.get()}) {
                    c->append(l, std::span(&K[t0 * 64], chunk * 64), std::span(&V[t0 * 64], chunk * 64));
                    c->attend(l, std::span(&Q[t0 * 128], chunk * 128), c == exact.get() ? b : a);
                }
                worst = std::max(worst, max_rel_diff(a, b));
            }
        }
        CHECK(worst < 1e-5);
        CHECK(tiered->tokens(0) == n);
        CHECK(tiered->held_tokens(1, 1) == n);
        CHECK(tiered->evicted() == 0);
        for (const auto& t : tiered->held(0, 0)) CHECK(t.tier == 0);
        CHECK(tiered->format_bytes() == Approx(double(fp16_cache_bytes(kShape, n))));
    }
}

TEST_CASE("budget: attention over all tiers is one softmax over what the cache holds", "[budget][heavy]") {
    const Calibration cal = fake_calibration(3);
    struct Case {
        const char* spec;
        size_t chunk;
        bool calibrated;
        size_t budget_tokens = 40, tokens = 400;
    };
    // -fg: demotion inside append, so that the state after attend is the state attend saw (the
    // background worker demotes right after attend).
    for (const Case& k : {Case{"tiered-fg", 1, false}, Case{"tiered-K4V4-K2V2-w4-s2-g32-fg", 1, true},
                          Case{"tiered-K4V4-K2V2-w8-s2-g32-nvd-fg", 8, true}, Case{"tiered-K3V2.5-K2V2-w4-s1-g48-fg", 1, true},
                          Case{"tiered-K4V4-w4-s2-g32-nd-nvd-fg", 4, false}, Case{"tiered-none-w8-s4-fg", 1, false},
                          // last-tier bins of 3 segments (share / 8 = 120 tokens at 2 bits)
                          Case{"tiered-K4V4-K2V2-w8-s2-g32-fg", 1, true, 150, 1500}}) {
        INFO(k.spec << ", chunk " << k.chunk);
        // Tight: every (layer, KV head) passes tokens through all its tiers and evicts.
        auto c = make_budget_cache(k.spec, kShape, fp16_cache_bytes(kShape, k.budget_tokens), k.calibrated ? &cal : nullptr);
        double worst = 0;
        std::set<int> tiers;
        drive(*c, k.tokens, k.chunk, 11, [&](int l, size_t t0, size_t m, std::span<const float> q, const std::vector<float>& out) {
            const CacheShape& s = c->shape();
            const size_t qr = size_t(s.heads) * s.head_dim;
            // The cache's state after attend = before (attend changes scores only): compare every query.
            for (size_t i = 0; i < m; ++i) {
                const auto ref = reference(*c, l, &q[i * qr], int64_t(t0 + i));
                worst = std::max(worst, max_rel_diff(std::vector<float>(out.begin() + long(i * qr), out.begin() + long((i + 1) * qr)), ref));
            }
            for (const auto& t : c->held(l, 0)) tiers.insert(t.tier);
        });
        INFO("worst relative difference " << worst);
        CHECK(worst < 2e-4);
        CHECK(c->evicted() > 0);
        const int T = std::string(k.spec).find("none") != std::string::npos ? 0
                      : std::string(k.spec).find("K4V4-w4") != std::string::npos ? 1
                                                                                  : 2;
        CHECK(int(tiers.size()) == T + 1);  // every tier was used
    }
}

TEST_CASE("budget: budgets are never exceeded", "[budget]") {
    for (const char* spec : {"tiered", "tiered-K4V4-K2V2-w4-s2", "tiered-K4V4-K2V2-w16-s4-h4-g64", "tiered-none",
                             "h2o", "h2o-r0.25", "streaming", "snapkv", "snapkv-o8"}) {
        for (size_t tokens : {size_t(24), size_t(60), size_t(150)}) {
            if (tokens < 40 && std::string(spec) == "snapkv") continue;  // the observation window is 32
            for (size_t chunk : {size_t(1), size_t(8)}) {
                INFO(spec << ", budget of " << tokens << " fp16 tokens, chunk " << chunk);
                const size_t budget = fp16_cache_bytes(kShape, tokens) + 100;  // not a multiple of anything
                auto c = make_budget_cache(spec, kShape, budget);
                CHECK(c->share_bytes() == budget / 4);
                bool ok = true;
                drive(*c, 300, chunk, 21, [&](int l, size_t, size_t, std::span<const float>, const std::vector<float>&) {
                    ok = ok && c->format_bytes() <= double(budget);
                    for (int h = 0; h < 2; ++h)
                        if (std::string(spec).rfind("tiered", 0) == 0) ok = ok && share_used(*c, l, h) <= double(c->share_bytes());
                        else ok = ok && c->held_tokens(l, h) * kExact <= c->share_bytes();
                });
                CHECK(ok);
                CHECK(c->peak_bytes() <= double(budget));
                CHECK(c->peak_bytes() > 0.9 * double(budget) - 2 * 64 * 32);  // and it is used
                CHECK(c->tokens(1) == 300);
            }
        }
    }
    // Too small for the protected tokens: at construction, or for a chunk (then nothing changes).
    CHECK_THROWS_WITH(make_budget_cache("tiered-w16-s4", kShape, fp16_cache_bytes(kShape, 19)), Catch::Contains("cannot hold"));
    CHECK_NOTHROW(make_budget_cache("tiered-w16-s4", kShape, fp16_cache_bytes(kShape, 20)));
    CHECK_THROWS_WITH(make_budget_cache("streaming-s4", kShape, fp16_cache_bytes(kShape, 4)), Catch::Contains("fewer than"));
    auto c = make_budget_cache("tiered-w4-s2", kShape, fp16_cache_bytes(kShape, 12));
    const auto K = rows(20, 2, 32, 1), V = rows(20, 2, 32, 2);
    c->append(0, std::span(K.data(), 64), std::span(V.data(), 64));
    CHECK_THROWS_WITH(c->append(0, K, V), Catch::Contains("smaller chunks"));
    CHECK(c->tokens(0) == 1);
    CHECK(c->held_tokens(0, 0) == 1);
    std::vector<float> bad(V.begin(), V.begin() + 64);
    bad[5] = NAN;
    CHECK_THROWS_WITH(c->append(0, std::span(K.data(), 64), bad), Catch::Contains("non-finite"));
    std::vector<float> huge(V.begin(), V.begin() + 64);
    huge[3] = 1e5f;
    CHECK_THROWS_WITH(c->append(0, std::span(K.data(), 64), huge), Catch::Contains("too large"));
    CHECK(c->tokens(0) == 1);
    CHECK(c->held_tokens(0, 0) == 1);
    // SnapKV as published holds the whole prompt until end_prefill(), then fits the budget.
    auto s = make_budget_cache("snapkv-prefill", kShape, fp16_cache_bytes(kShape, 40));
    drive(*s, 100, 1, 5, [](int, size_t, size_t, std::span<const float>, const std::vector<float>&) {});
    CHECK(s->held_tokens(0, 0) == 100);
    CHECK(s->format_bytes() > double(s->budget_bytes()));
    s->end_prefill();
    CHECK(s->held_tokens(0, 0) == 40);
    CHECK(s->format_bytes() <= double(s->budget_bytes()));
}

TEST_CASE("budget: specs are validated", "[budget]") {
    for (const char* good : {"tiered", "tiered-K4V4-K2V2", "tiered-K4V3-K3V2-K2V1.5-w8-s2-h4-g64-m128-d0.95-nvd-nd-nc-x7",
                             "tiered-none", "h2o", "h2o-r0.3", "streaming", "streaming-s8", "snapkv", "snapkv-o16-p5-prefill"})
        CHECK_NOTHROW(make_budget_cache(good, kShape, fp16_cache_bytes(kShape, 100)));
    for (const char* bad : {"", "tiered-K9V4", "tiered-bogus", "tiered-w", "tiered-none-K4V4", "tiered-d0", "tiered-d1.5",
                            "tiered-K2V2-K4V4", "h2o-r2", "h2o-s4", "streaming-x", "snapkv-p4", "lru"})
        CHECK_THROWS_AS(make_budget_cache(bad, kShape, fp16_cache_bytes(kShape, 100)), std::invalid_argument);
    CHECK_THROWS_WITH(make_budget_cache("tiered-K2V2-K4V4", kShape, fp16_cache_bytes(kShape, 100)), Catch::Contains("fewer bytes"));
    auto c = make_budget_cache("tiered", kShape, fp16_cache_bytes(kShape, 100));
    CHECK(c->budget_bytes() == fp16_cache_bytes(kShape, 100));
    CHECK(c->name() == "tiered");
    std::vector<float> q(128), out(128);
    CHECK_THROWS_WITH(c->attend(0, q, out), Catch::Contains("last append"));
    CHECK_THROWS_WITH(c->append(2, std::vector<float>(64), std::vector<float>(64)), Catch::Contains("layer"));
    CHECK_THROWS_WITH(c->append(0, std::vector<float>(63), std::vector<float>(63)), Catch::Contains("sizes"));
}

TEST_CASE("budget: demotion follows age when attention is uniform, sinks are never demoted", "[budget]") {
    // Zero keys: every query attends uniformly, every token has importance 1, age decides.
    auto c = make_budget_cache("tiered-K4V4-K2V2-w6-s3-g32", kShape, fp16_cache_bytes(kShape, 30));
    const auto V = rows(500, 2, 32, 3), Q = rows(500, 4, 32, 4);
    std::vector<float> K(64, 0.0f), out(128);
    bool sinks_ok = true, monotone = true;
    for (size_t t = 0; t < 500; ++t)
        for (int l = 0; l < 2; ++l) {
            c->append(l, K, std::span(&V[t * 64], 64));
            c->attend(l, std::span(&Q[t * 128], 128), out);
            for (int h = 0; h < 2; ++h) {
                auto held = c->held(l, h);
                std::sort(held.begin(), held.end(), [](const HeldToken& a, const HeldToken& b) { return a.position < b.position; });
                for (int p = 0; p < std::min<int>(3, int(t) + 1); ++p)
                    sinks_ok = sinks_ok && held.size() > size_t(p) && held[size_t(p)].position == p && held[size_t(p)].tier == 0;
                // Older (non-sink) tokens are in the same or a lower-precision tier than newer ones,
                // and the evicted ones are the oldest: held positions after the sinks are contiguous.
                for (size_t i = 4; i < held.size(); ++i) monotone = monotone && held[i - 1].tier >= held[i].tier;
                if (held.size() > 4) monotone = monotone && held.back().position - held[3].position == int(held.size()) - 4;
            }
        }
    CHECK(sinks_ok);
    CHECK(monotone);
    CHECK(c->evicted() > 0);
    std::map<int, int> per_tier;
    for (const auto& t : c->held(0, 1)) ++per_tier[t.tier];
    CHECK(per_tier[0] >= 9);  // sinks + window
    CHECK(per_tier[2] > 0);
}

namespace {

// Queries that look at a few "needle" tokens: needle keys point along u, other keys are small
// noise, every query is strength * u (plus noise). Returns the held map of layer 0 after n tokens.
struct NeedleRun {
    std::vector<std::vector<HeldToken>> held;  // per KV head, layer 0
    size_t evicted = 0;
};
NeedleRun needle_run(BudgetCache& c, size_t n, const std::set<int>& needles, float strength, size_t quiet_until = 0) {
    const CacheShape& s = c.shape();
    const int d = s.head_dim;
    std::vector<float> u(static_cast<size_t>(d));
    Rng rng(99);
    double ss = 0;
    for (auto& x : u) {
        x = float(rng.normal());
        ss += double(x) * x;
    }
    for (auto& x : u) x = float(x / std::sqrt(ss));
    const auto noise_k = rows(n, s.kv_heads, d, 7, 0.3), V = rows(n, s.kv_heads, d, 8), noise_q = rows(n, s.heads, d, 9, 0.3);
    std::vector<float> k(size_t(s.kv_heads) * d), q(size_t(s.heads) * d), out(q.size());
    for (size_t t = 0; t < n; ++t) {
        for (size_t i = 0; i < k.size(); ++i) k[i] = noise_k[t * k.size() + i] + (needles.count(int(t)) ? 4.0f * u[i % d] : 0.0f);
        const float st = t < quiet_until ? 0.0f : strength;
        for (size_t i = 0; i < q.size(); ++i) q[i] = noise_q[t * q.size() + i] + st * u[i % d];
        for (int l = 0; l < s.layers; ++l) {
            c.append(l, k, std::span(&V[t * k.size()], k.size()));
            c.attend(l, q, out);
        }
    }
    NeedleRun r;
    for (int h = 0; h < s.kv_heads; ++h) r.held.push_back(c.held(0, h));
    r.evicted = c.evicted();
    return r;
}

int tier_of(const std::vector<HeldToken>& held, int pos) {
    for (const auto& t : held)
        if (t.position == pos) return t.tier;
    return -1;  // evicted
}

}  // namespace

TEST_CASE("budget: important tokens keep more bits than unimportant ones of the same age", "[budget]") {
    const std::set<int> needles = {40, 41, 90, 150};
    {  // heavy = 4: the needles stay exact
        auto c = make_budget_cache("tiered-K4V4-K2V2-w8-s2-h4", kShape, fp16_cache_bytes(kShape, 40));
        const NeedleRun r = needle_run(*c, 400, needles, 2.0f);
        CHECK(r.evicted > 0);
        for (const auto& held : r.held) {
            for (int p : needles) CHECK(tier_of(held, p) == 0);
            for (int p : {42, 60, 100, 151, 200}) CHECK(tier_of(held, p) != 0);
        }
    }
    {  // no heavy tokens: the needles leave the exact tier last, so they share a segment with younger
       // tokens, which outlives the segments of their own neighbours
        auto c = make_budget_cache("tiered-K4V4-K2V2-w8-s2", kShape, fp16_cache_bytes(kShape, 40));
        const NeedleRun r = needle_run(*c, 400, needles, 2.0f);
        CHECK(r.evicted > 0);
        for (const auto& held : r.held) {
            for (int p : needles) {
                INFO("needle " << p);
                CHECK(tier_of(held, p) >= 0);
            }
            int evicted = 0, others = 0;
            for (int p = 30; p <= 100; ++p)
                if (!needles.count(p)) ++others, evicted += tier_of(held, p) < 0;
            CHECK(evicted * 2 >= others);  // at least half of their neighbours are gone
        }
    }
}

TEST_CASE("budget: each eviction policy keeps what it should", "[budget]") {
    const std::set<int> needles = {30, 31, 120};
    const size_t n = 300, C = 40;  // tokens, capacity per (layer, KV head)
    const size_t budget = fp16_cache_bytes(kShape, C);
    auto positions = [](const std::vector<HeldToken>& held) {
        std::set<int> p;
        for (const auto& t : held) p.insert(t.position);
        return p;
    };
    SECTION("StreamingLLM: the sinks and the most recent tokens") {
        auto c = make_budget_cache("streaming-s4", kShape, budget);
        const NeedleRun r = needle_run(*c, n, needles, 2.0f);
        for (const auto& held : r.held) {
            std::set<int> want = {0, 1, 2, 3};
            for (int p = int(n - (C - 4)); p < int(n); ++p) want.insert(p);
            CHECK(positions(held) == want);
        }
    }
    SECTION("H2O: the most recent half and the heavy hitters") {
        // Strong heavy hitters: H2O's plain accumulated sums favour old tokens, a needle has to
        // collect more attention than they did during its time in the recent half.
        auto c = make_budget_cache("h2o", kShape, budget);
        const NeedleRun r = needle_run(*c, n, needles, 5.0f);
        for (const auto& held : r.held) {
            const auto p = positions(held);
            CHECK(p.size() == C);
            for (int x = int(n - C / 2); x < int(n); ++x) CHECK(p.count(x));
            for (int x : needles) CHECK(p.count(x));
        }
    }
    SECTION("SnapKV: what the observation window votes for, with its neighbours") {
        auto c = make_budget_cache("snapkv-o16-p5", kShape, budget);
        const NeedleRun r = needle_run(*c, n, needles, 2.0f);
        for (const auto& held : r.held) {
            const auto p = positions(held);
            CHECK(p.size() == C);
            for (int x = int(n - 16); x < int(n); ++x) CHECK(p.count(x));
            for (int x : needles) CHECK(p.count(x));
            CHECK(p.count(32));  // pooling keeps neighbours
        }
    }
    SECTION("SnapKV-prefill: the prompt's last queries choose, even what earlier queries ignored") {
        // Queries ignore the needles until the last 10 tokens of a 200-token prompt.
        auto pre = make_budget_cache("snapkv-prefill-o16-p1", kShape, budget);
        auto str = make_budget_cache("snapkv-o16-p1", kShape, budget);
        const NeedleRun a = needle_run(*pre, 200, needles, 3.0f, 190);
        const NeedleRun b = needle_run(*str, 200, needles, 3.0f, 190);
        CHECK(pre->held_tokens(0, 0) == 200);
        pre->end_prefill();
        int kept_pre = 0, kept_str = 0;
        for (int h = 0; h < 2; ++h) {
            const auto p = positions(pre->held(0, h));
            CHECK(p.size() == C);
            for (int x = 200 - 16; x < 200; ++x) CHECK(p.count(x));
            for (int x : needles) kept_pre += p.count(x) ? 1 : 0;
            for (int x : needles) kept_str += positions(b.held[size_t(h)]).count(x) ? 1 : 0;
        }
        CHECK(kept_pre == 6);
        CHECK(kept_str < 6);
        // Decode after the selection: the selected prompt tokens stay, the window slides.
        std::vector<float> k(64, 0.1f), q(128, 0.1f), out(128);
        for (int t = 0; t < 30; ++t)
            for (int l = 0; l < 2; ++l) pre->append(l, k, k), pre->attend(l, q, out);
        const auto p = positions(pre->held(0, 0));
        CHECK(p.size() == C);
        for (int x : needles) CHECK(p.count(x));
        CHECK(p.count(229));
    }
}

namespace {

// A tiny Llama (hidden 64, 2 layers, 4/2 heads of d 32) as F32 safetensors built in memory.
LlamaModel tiny_model(uint64_t seed) {
    const char* config = R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "head_dim": 32, "intermediate_size": 96, "vocab_size": 256, "rope_theta": 500.0, "rms_norm_eps": 1e-5,
      "tie_word_embeddings": true, "max_position_embeddings": 512, "model_type": "llama", "hidden_act": "silu"})";
    Rng rng(seed);
    std::string header = "{";
    std::vector<uint8_t> data;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, double sd, double mean) {
        const size_t begin = data.size();
        size_t n = 1;
        for (auto x : shape) n *= size_t(x);
        for (size_t i = 0; i < n; ++i) {
            const float f = float(mean + rng.normal() * sd);
            uint8_t b[4];
            std::memcpy(b, &f, 4);
            data.insert(data.end(), b, b + 4);
        }
        std::string sh;
        for (size_t i = 0; i < shape.size(); ++i) {
            if (i) sh += ',';
            sh += std::to_string(shape[i]);
        }
        if (header.size() > 1) header += ",";
        header += "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + sh + "],\"data_offsets\":[" + std::to_string(begin) +
                  "," + std::to_string(data.size()) + "]}";
    };
    add("model.embed_tokens.weight", {256, 64}, 1.0, 0);
    add("model.norm.weight", {64}, 0.2, 1);
    for (int l = 0; l < 2; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", {64}, 0.2, 1);
        add(p + "post_attention_layernorm.weight", {64}, 0.2, 1);
        add(p + "self_attn.q_proj.weight", {128, 64}, 0.3, 0);
        add(p + "self_attn.k_proj.weight", {64, 64}, 0.3, 0);
        add(p + "self_attn.v_proj.weight", {64, 64}, 0.2, 0);
        add(p + "self_attn.o_proj.weight", {64, 128}, 0.1, 0);
        add(p + "mlp.gate_proj.weight", {96, 64}, 0.15, 0);
        add(p + "mlp.up_proj.weight", {96, 64}, 0.15, 0);
        add(p + "mlp.down_proj.weight", {64, 96}, 0.1, 0);
    }
    header += "}";
    while (header.size() % 8) header += ' ';
    std::vector<uint8_t> file;
    for (int i = 0; i < 8; ++i) file.push_back(uint8_t(uint64_t(header.size()) >> (8 * i)));
    file.insert(file.end(), header.begin(), header.end());
    file.insert(file.end(), data.begin(), data.end());
    return LlamaModel::from_parts(LlamaConfig::parse(config), Safetensors::parse(std::move(file)));
}

std::vector<int32_t> text_tokens(const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); }

}  // namespace

TEST_CASE("budget: the Llama runner over budgeted caches (tiny random model)", "[budget]") {
    const LlamaModel m = tiny_model(17);
    const CacheShape shape = CacheShape::of(m.config());
    std::string text;
    for (int i = 0; i < 6; ++i) text += "Budgeted caches keep the recent and the important tokens; the rest ages. ";
    const auto tokens = text_tokens(text.substr(0, 400));
    const size_t V = 256, n = tokens.size();
    auto exact = make_exact_cache(shape);
    LlamaRunner ref(m, *exact, 64);
    std::vector<float> want(n * V), got(n * V);
    ref.prefill(tokens, want);
    // A budget for everything: every token stays exact, held at fp16 (what the budget counts),
    // in prefill (sequential) and decode. Through the layers, float-order differences of 1e-7
    // flip fp16 roundings now and then, so the logits are not bit-equal to an fp16 cache's; what
    // holds is that the tiered cache is as far from exact fp32 as fp16 storage is (checked
    // directly at the cache level to 1e-5 in the test above), and far closer than 4-bit codes.
    auto worst_vs_exact = [&](AttentionCache& cache, bool decode_tail) {
        LlamaRunner run(m, cache, 64);
        const size_t pre = decode_tail ? 300 : n;
        run.prefill(std::span(tokens).first(pre), std::span(got.data(), pre * V));
        std::vector<float> one(V);
        for (size_t t = pre; t < n; ++t) {
            run.decode(tokens[t], one);
            std::copy(one.begin(), one.end(), &got[t * V]);
        }
        double w = 0;
        for (size_t i = 0; i < n * V; ++i) w = std::max(w, std::abs(double(got[i]) - want[i]));
        return w;
    };
    {
        auto half = make_cache("fp16", shape), k4 = make_cache("K4V4", shape);
        auto c = make_budget_cache("tiered", shape, fp16_cache_bytes(shape, n));
        const double w16 = worst_vs_exact(*half, false), w4 = worst_vs_exact(*k4, false);
        const double wt = worst_vs_exact(*c, true);
        INFO("max |logit - exact|: fp16 " << w16 << ", tiered " << wt << ", K4V4 " << w4);
        CHECK(c->evicted() == 0);
        CHECK(wt <= 1.5 * w16);
        CHECK(w4 > 3 * w16);  // the check above can tell fp16 from 4-bit codes
    }
    // Tight budgets: sequential and chunked prefill run within budget, and the tiered cache
    // predicts the exact cache's next byte more often than StreamingLLM at the same budget.
    const size_t budget = fp16_cache_bytes(shape, 64);
    std::map<std::string, double> agree;
    for (const char* spec : {"tiered", "streaming", "h2o", "snapkv"}) {
        for (bool sequential : {true, false}) {
            INFO(spec << (sequential ? " sequential" : " chunked"));
            auto c = make_budget_cache(spec, shape, budget);
            LlamaRunner run(m, *c, 16);
            run.sequential_attention = sequential;
            run.prefill(tokens, got);
            CHECK(c->peak_bytes() <= double(budget));
            CHECK(c->tokens(0) == n);
            size_t same = 0;
            for (size_t t = 0; t < n; ++t)
                same += std::max_element(&got[t * V], &got[(t + 1) * V]) - &got[t * V] ==
                        std::max_element(&want[t * V], &want[(t + 1) * V]) - &want[t * V];
            if (sequential) agree[spec] = double(same) / double(n);
        }
    }
    INFO("argmax agreement: tiered " << agree["tiered"] << ", streaming " << agree["streaming"] << ", h2o " << agree["h2o"]
                                    << ", snapkv " << agree["snapkv"]);
    CHECK(agree["tiered"] > agree["streaming"]);
}

TEST_CASE("budget: the real model at 1/6 of the fp16 cache (tq-ref-128)", "[budget][stat]") {
    const std::string dir = std::getenv("TQKV_MODEL") ? std::getenv("TQKV_MODEL") : TQKV_SHARED_DATA "/tq-ref-128";
    if (!std::filesystem::exists(dir + "/model.safetensors") || !std::filesystem::exists(dir + "/eval.txt")) {
        WARN("skipped: no model at " << dir << " (set TQKV_MODEL)");
        return;
    }
    const LlamaModel m = LlamaModel::load(dir);
    std::ifstream f(dir + "/eval.txt", std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const std::vector<int32_t> tokens(text.begin(), text.begin() + 512);
    const std::vector<int32_t> calib(text.end() - 4096, text.end());
    const CacheShape shape = CacheShape::of(m.config());
    const Calibration cal = calibrate_kv(m, calib, 1024);
    auto exact = make_exact_cache(shape);
    const double base = evaluate_nll(m, *exact, tokens, 512, true).nll;
    const size_t budget = fp16_cache_bytes(shape, 512) / 6;
    std::map<std::string, double> delta;
    for (const char* spec : {"tiered", "streaming"}) {
        auto c = make_budget_cache(spec, shape, budget, &cal);
        delta[spec] = 100.0 * (evaluate_nll(m, *c, tokens, 512, true).nll / base - 1.0);
        CHECK(c->peak_bytes() <= double(budget));
    }
    INFO("ΔNLL at 1/6 of the fp16 cache over 512 bytes: tiered " << delta["tiered"] << "%, streaming " << delta["streaming"] << "%");
    CHECK(delta["tiered"] < 2.0);
    CHECK(delta["tiered"] < delta["streaming"]);
}

TEST_CASE("budget: a prefill's exact-tier peak is given back", "[budget]") {
    // The prefill chunk is held exact until demoted (up to the whole share); afterwards memory
    // follows the held tokens down. Bound, per (layer, KV head): the format bytes; room for at
    // most 1.5 (1.25 n + 8) exact tokens (n held exact; shrink_exact) at 4 d + 12 bytes each; 12
    // bytes of bookkeeping per quantized token, x2 for vector growth; the codec tables of each
    // tier; and two partly filled 32-token blocks per tier (the open segment, the last bin).
    // head_dim 128, one KV head: exact tokens (512 bytes) dominate what the bound leaves loose.
    const CacheShape shape{1, 2, 1, 128};
    const size_t exact_bytes = 4 * 128;
    const size_t budget = fp16_cache_bytes(shape, 120);
    auto c = make_budget_cache("tiered-K4V4-K2V2-w4-s2", shape, budget);
    auto nothing = [](int, size_t, size_t, std::span<const float>, const std::vector<float>&) {};
    drive(*c, 110, 110, 31, nothing);
    const size_t after_prefill = c->memory_bytes();
    drive(*c, 600, 1, 32, nothing);
    size_t tables = 0, partial = 0;
    for (int bits : {4, 2}) {
        CacheConfig cfg;
        cfg.heads = shape.heads / shape.kv_heads;
        cfg.kv_heads = 1;
        cfg.head_dim = shape.head_dim;
        cfg.key_bits = cfg.value_bits = bits;
        cfg.block_tokens = 32;
        KVCache proto(cfg);
        tables += proto.table_bytes();
        partial += 2 * proto.block_bytes();
    }
    double bound = c->format_bytes();
    size_t exact_held = 0;
    for (int l = 0; l < shape.layers; ++l)
        for (int h = 0; h < shape.kv_heads; ++h) {
            size_t n = 0, quantized = 0;
            for (const auto& t : c->held(l, h)) (t.tier == 0 ? n : quantized)++;
            exact_held += n;
            bound += (1.5 * (1.25 * double(n) + 8) - double(n)) * double(exact_bytes + 12) + 12.0 * double(n) +
                     24.0 * double(quantized) + double(tables + partial);
        }
    INFO("memory after prefill " << after_prefill << ", at the end " << c->memory_bytes() << ", bound " << bound
                                 << " (budget " << budget << ", exact tokens held " << exact_held << ")");
    CHECK(exact_held < 110 / 2);  // most of the prefill was demoted
    CHECK(double(c->memory_bytes()) <= bound);
}

TEST_CASE("budget: background demotion gives the same results whatever its timing", "[budget][threads]") {
    // The worker demotes layer l between attend(l) and the next append(l); what it does depends
    // only on that state. Two runs, one of them with the caller stalling after each attend (the
    // worker then finishes before the next layer starts), must agree bit for bit; and they hold
    // what the budget allows after every append, as the foreground cache does.
    const Calibration cal = fake_calibration(3);
    for (const char* spec : {"tiered-K4V4-K2V2-w4-s2-g32", "tiered-K3V2.5-K2V2-w4-s1-g48"}) {
        for (size_t chunk : {size_t(1), size_t(8)}) {
            INFO(spec << ", chunk " << chunk);
            const size_t budget = fp16_cache_bytes(kShape, 40);
            std::vector<float> outs[2];
            std::vector<size_t> evicted(2);
            for (int run = 0; run < 2; ++run) {
                auto c = make_budget_cache(spec, kShape, budget, &cal);
                bool ok = true;
                drive(*c, 400, chunk, 11, [&](int, size_t, size_t, std::span<const float>, const std::vector<float>& out) {
                    outs[run].insert(outs[run].end(), out.begin(), out.end());
                    if (run == 1) std::this_thread::sleep_for(std::chrono::microseconds(200));
                    ok = ok && c->peak_bytes() <= double(budget);
                });
                CHECK(ok);
                CHECK(c->format_bytes() <= double(budget));
                evicted[size_t(run)] = c->evicted();
            }
            CHECK(outs[0] == outs[1]);
            CHECK(evicted[0] == evicted[1]);
            CHECK(evicted[0] > 0);
        }
    }
}
