// The concurrency contract (cache.hpp): const calls may run concurrently. Several threads attend
// the same cache at once and must get exactly the single-threaded results. Run under
// ThreadSanitizer by the test script (build with -DTQKV_TSAN=ON, tests tagged [threads]).
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

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
