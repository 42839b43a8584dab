// The concurrency contract (cache.hpp): const calls may run concurrently. Several threads attend
// the same cache at once and must get exactly the single-threaded results. Run under
// ThreadSanitizer by the test script (build with -DTQKV_TSAN=ON, tests tagged [threads]).
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "test_util.hpp"
#include "tiny_model.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;
using namespace tqkv_test;

TEST_CASE("concurrent attend on a shared cache gives the single-threaded results", "[threads]") {
    CacheConfig cfg;
    cfg.heads = 8;
    cfg.kv_heads = 2;
    cfg.head_dim = 64;
    cfg.key_bits = 4;
    cfg.value_bits = 3;
    cfg.window = 16;
    KVCache cache(cfg);
    const auto K = tqkv_test::gaussian_vectors(300, 2 * 64, 1);
    cache.append(K, K);
    const int threads = 4, per_thread = 20;
    std::vector<std::vector<float>> queries, expected;
    for (int i = 0; i < threads * per_thread; ++i) {
        queries.push_back(tqkv_test::gaussian_vectors(2, 8 * 64, 100 + i));
        expected.emplace_back(queries.back().size());
        cache.attend(queries.back(), expected.back());
    }
    std::vector<int> mismatches(threads, 0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            std::vector<float> out(2 * 8 * 64);
            for (int i = t; i < threads * per_thread; i += threads) {
                cache.attend(queries[i], out);
                if (out != expected[i]) ++mismatches[t];
                // Other const calls at the same time.
                (void)cache.bytes_used();
                (void)cache.decode_keys(i % 2);
            }
        });
    for (auto& th : pool) th.join();
    for (int t = 0; t < threads; ++t) CHECK(mismatches[t] == 0);
}

// The library's thread pool (tqkv/threads.hpp).
TEST_CASE("parallel_for runs every piece once, in parallel, nested and from several callers", "[threads]") {
    for (int threads : {1, 2, 4, 8})
        for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(1000)}) {
            std::vector<std::atomic<int>> runs(n);
            parallel_for(n, threads, [&](size_t i) { runs[i].fetch_add(1); });
            for (size_t i = 0; i < n; ++i) CHECK(runs[i].load() == 1);
        }
    // Two pieces on two threads really run at the same time: each waits (up to 10 s) until both
    // have started; on one thread the first would wait in vain.
    std::atomic<int> started{0};
    std::atomic<int> met{0};
    parallel_for(2, 2, [&](size_t) {
        started.fetch_add(1);
        for (int i = 0; i < 10000 && started.load() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (started.load() == 2) met.fetch_add(1);
    });
    CHECK(met.load() == 2);
    CHECK(pool_workers() >= 1);
    // Nested calls and several callers at once (under ThreadSanitizer in the test script).
    std::atomic<size_t> total{0};
    std::vector<std::thread> callers;
    for (int c = 0; c < 3; ++c)
        callers.emplace_back([&] {
            parallel_for(8, 3, [&](size_t) { parallel_for(50, 2, [&](size_t) { total.fetch_add(1); }); });
        });
    for (auto& t : callers) t.join();
    CHECK(total.load() == 3 * 8 * 50);
    // A piece that throws: the others still run, the first exception reaches the caller.
    for (int threads : {1, 3}) {
        std::atomic<int> ran{0};
        CHECK_THROWS_WITH(parallel_for(20, threads,
                                       [&](size_t i) {
                                           ran.fetch_add(1);
                                           if (i % 5 == 0) throw std::runtime_error("piece " + std::to_string(i));
                                       }),
                          Catch::Contains("piece"));
        CHECK(ran.load() == 20);
    }
}

// attend split over threads: KV heads x fixed token ranges, merged in a fixed order, so any thread
// count gives the same bits; also attend_stats over several caches and a ModelKVCache layer.
// [heavy]: natively, under ASan and under TSan; not again under qemu (the unit split and merge are
// the same code on every ISA, and the NEON kernels have their own [kernels] tests there).
TEST_CASE("attend on several threads gives the one-thread bits", "[threads][heavy]") {
    CacheConfig cfg;
    cfg.heads = 4;
    cfg.kv_heads = 2;
    cfg.head_dim = 64;
    cfg.key_bits = 3;
    cfg.value_bits = 2;
    cfg.window = 16;
    KVCache cache(cfg);
    const size_t T = 5000;  // three token ranges of 2048 per KV head
    const auto K = tqkv_test::gaussian_vectors(T, 2 * 64, 1), V = tqkv_test::gaussian_vectors(T, 2 * 64, 2);
    cache.append(std::span(K).first((T - 40) * 128), std::span(V).first((T - 40) * 128));
    cache.append(std::span(K).subspan((T - 40) * 128), std::span(V).subspan((T - 40) * 128));  // a chunk of 40
    const auto Q = tqkv_test::gaussian_vectors(40, 4 * 64, 3);
    std::vector<float> one(Q.size()), many(Q.size());
    AttendOptions o;
    cache.attend(Q, one, true, o);
    for (int threads : {2, 3, 4, 8}) {
        o.threads = threads;
        cache.attend(Q, many, true, o);
        CHECK(many == one);
    }
    // Skipped values decide per unit against the first unit's floor: the same groups, the same
    // bits on any thread count (queries peaked at a token each, so that many groups are skipped).
    auto peaked = Q;
    for (size_t i = 0; i < 40; ++i)
        for (int h = 0; h < 4; ++h)
            for (int j = 0; j < 64; ++j) peaked[(i * 4 + h) * 64 + j] = 6.0f * K[((i * 97) % T * 2 + h / 2) * 64 + j];
    AttendCounters c1, cn;
    o.threads = 1;
    o.skip_values = 1e-4f;
    o.counters = &c1;
    cache.attend(peaked, one, true, o);
    CHECK(c1.skipped_value_groups > c1.value_groups / 2);
    for (int threads : {2, 5}) {
        cn = {};
        o.threads = threads;
        o.counters = &cn;
        cache.attend(peaked, many, true, o);
        CHECK(many == one);
        CHECK(cn.skipped_value_groups == c1.skipped_value_groups);
    }
    o = AttendOptions{};
    // precision fast (integer key tables built per thread): the same bits on any thread count too.
    cache.set_precision(Precision::Fast);
    cache.attend(Q, one, true, o);
    o.threads = 3;
    cache.attend(Q, many, true, o);
    CHECK(many == one);
    cache.set_precision(Precision::Exact);
    o = AttendOptions{};
    // attend_stats over three caches (a tier split) with logits, continued from given statistics.
    KVCache a(cfg), b = cache.empty_like(), c2 = cache.empty_like();
    a.append(std::span(K).first(3000 * 128), std::span(V).first(3000 * 128));
    b.append(std::span(K).subspan(3000 * 128, 100 * 128), std::span(V).subspan(3000 * 128, 100 * 128));
    c2.append(std::span(K).subspan(3100 * 128, 1900 * 128), std::span(V).subspan(3100 * 128, 1900 * 128));
    const KVCache* caches[] = {&a, &b, &c2};
    const float scales[] = {1.0f, 0.5f, 1.0f};
    const auto q1 = tqkv_test::gaussian_vectors(1, 4 * 64, 4);
    std::vector<float> acc1(256, 0.1f), mx1(4, 0.5f), sum1(4, 2.0f), lg1(4 * T), acc2, mx2, sum2, lg2(4 * T);
    acc2 = acc1, mx2 = mx1, sum2 = sum1;
    o.threads = 1;
    KVCache::attend_stats(caches, q1, acc1, mx1, sum1, lg1, scales, true, o);
    o.threads = 4;
    KVCache::attend_stats(caches, q1, acc2, mx2, sum2, lg2, scales, true, o);
    CHECK(acc1 == acc2);
    CHECK(mx1 == mx2);
    CHECK(sum1 == sum2);
    CHECK(lg1 == lg2);
}

TEST_CASE("model: the runner on several threads gives the one-thread logits", "[threads]") {
    // Matrix products split over output rows (large enough ones only: 2^18 multiply-adds) and
    // attention split over KV heads and token ranges: the same bits for any thread count.
    tqkv::Rng rng(5);
    for (bool f16 : {false, true}) {
        WeightMatrix W;
        W.rows = 1000 + 7, W.cols = 300;  // rows not a multiple of the pieces
        std::vector<float> w(W.rows * W.cols);
        for (auto& x : w) x = float(rng.normal());
        if (f16) {
            W.f16.resize(w.size());
            for (size_t i = 0; i < w.size(); ++i) W.f16[i] = float_to_half(w[i]);
        } else {
            W.f32 = w;
        }
        std::vector<float> X(3 * W.cols), y1(3 * W.rows), y3(3 * W.rows);
        for (auto& x : X) x = float(rng.normal());
        matmul(X.data(), 3, W, y1.data(), 1);
        matmul(X.data(), 3, W, y3.data(), 3);
        CHECK(y1 == y3);
    }
    const LlamaModel m = tiny_model(3);
    const auto tokens = text_tokens("The quick brown fox jumps over the lazy dog; then it decodes.");
    for (const std::string spec : {"fp32", "K3V2-w8"}) {
        INFO("cache " << spec);
        auto c1 = make_cache(spec, CacheShape::of(m.config()));
        auto c3 = make_cache(spec, CacheShape::of(m.config()));
        LlamaRunner one(m, *c1, 16), three(m, *c3, 16);
        one.sequential_attention = three.sequential_attention = false;
        three.threads = 3;
        std::vector<float> a(tokens.size() * 256), b(a.size());
        one.prefill(tokens, a);
        three.prefill(tokens, b);
        CHECK(a == b);
        CHECK(c3->attend_options().threads == 3);
    }
    auto c = make_cache("fp32", CacheShape::of(m.config()));
    LlamaRunner bad(m, *c);
    bad.threads = 0;
    std::vector<float> lg(256);
    CHECK_THROWS_WITH(bad.prefill(std::span(tokens).first(3), lg), Catch::Contains("threads"));
}
