// The concurrency contract (cache.hpp): const calls may run concurrently. Several threads attend
// the same cache at once and must get exactly the single-threaded results. Run under
// ThreadSanitizer by the test script (build with -DTQKV_TSAN=ON, tests tagged [threads]).
#include <catch2/catch.hpp>
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
