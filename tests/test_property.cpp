// Interleaves random valid and invalid calls on a cache; after every call that fails, the cache
// must be byte-for-byte what it was (its serialization), and it must keep working.
#include <catch2/catch.hpp>
#include <cmath>
#include <thread>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

TEST_CASE("random valid and invalid calls: a failed call changes nothing", "[property][errors]") {
    for (uint64_t seed = 1; seed <= 3; ++seed) {
        Rng rng(seed);
        CacheConfig cfg;
        cfg.heads = 4;
        cfg.kv_heads = 2;
        cfg.head_dim = 32;
        cfg.key_bits = 3;
        cfg.value_bits = 2;
        cfg.window = int(rng.below(6));
        cfg.block_tokens = 32;
        cfg.max_tokens = 150;
        cfg.key_method = seed == 2 ? Method::Prod : Method::Mse;
        KVCache c(cfg);
        const size_t row = 2 * 32, qrow = 4 * 32;
        int failures = 0, successes = 0;
        for (int step = 0; step < 400; ++step) {
            const auto before = c.save();
            bool threw = false;
            try {
                switch (rng.below(8)) {
                    case 0: {  // valid append of 1..5 tokens (may exceed the capacity: then it must throw)
                        const size_t n = 1 + rng.below(5);
                        const auto k = tqkv_test::gaussian_vectors(n, int(row), rng.next());
                        c.append(k, k);
                        break;
                    }
                    case 1: {  // NaN / Inf somewhere
                        auto k = tqkv_test::gaussian_vectors(3, int(row), rng.next());
                        k[rng.below(k.size())] = rng.below(2) ? NAN : -INFINITY;
                        c.append(k, k);
                        break;
                    }
                    case 2: {  // wrong sizes
                        const auto k = tqkv_test::gaussian_vectors(1, int(row) + 1 + int(rng.below(10)), rng.next());
                        c.append(k, std::span(k).first(row));
                        break;
                    }
                    case 3: {  // a norm that fp16 cannot hold
                        auto k = tqkv_test::gaussian_vectors(2, int(row), rng.next());
                        for (size_t j = 0; j < 32; ++j) k[row + j] = 3e4f;
                        c.append(k, k);
                        break;
                    }
                    case 4: {  // truncate, sometimes past the end
                        c.truncate(rng.below(c.tokens() + 3));
                        break;
                    }
                    case 5: {  // attend (valid, or too many causal queries)
                        const size_t m = 1 + rng.below(4);
                        const auto q = tqkv_test::gaussian_vectors(m, int(qrow), rng.next());
                        std::vector<float> o(q.size());
                        c.attend(q, o, rng.below(2));
                        for (float v : o) REQUIRE(std::isfinite(v));
                        break;
                    }
                    case 6: {  // attend with bad shapes
                        const auto q = tqkv_test::gaussian_vectors(1, int(qrow), rng.next());
                        std::vector<float> o(q.size() - 1);
                        c.attend(q, o);
                        break;
                    }
                    default: {  // load of corrupted bytes must not touch c
                        auto b = before;
                        b[rng.below(b.size())] ^= 0x40;
                        KVCache other = KVCache::load(b);
                        (void)other;
                        break;
                    }
                }
                ++successes;
            } catch (const std::invalid_argument&) {
                threw = true;
                ++failures;
            }
            if (threw) REQUIRE(c.save() == before);
        }
        INFO("seed " << seed << ": " << successes << " calls succeeded, " << failures << " failed");
        CHECK(failures > 100);
        CHECK(successes > 100);
    }
}
