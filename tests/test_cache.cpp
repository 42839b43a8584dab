#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "test_util.hpp"
#include "cache/impl.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

namespace {

CacheConfig cache_config(int heads, int kv_heads, int dim, double kb, double vb, int window = 0,
                         Method km = Method::Mse) {
    CacheConfig c;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = dim;
    c.key_bits = kb;
    c.value_bits = vb;
    c.key_method = km;
    c.window = window;
    // These tests hold the exact path to its tolerances (decode-then-exact reference within 1e-4,
    // merges and chunked prefill within float rounding); precision fast, the default, is tested
    // against them with its own bounds in test_fast_kernels.cpp.
    c.precision = Precision::Exact;
    return c;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b, size_t offset, size_t n) {
    double e = 0, s = 0;
    for (size_t i = offset; i < offset + n; ++i) e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), s += double(b[i]) * b[i];
    return std::sqrt(e / s);
}

// Exact softmax attention of one query head over float keys/values (T x d), double precision.
std::vector<double> exact_attention(const float* q, const float* K, const float* V, size_t T, int d, double scale) {
    std::vector<double> p(T), out(d, 0.0);
    double mx = -1e300, sum = 0;
    for (size_t t = 0; t < T; ++t) {
        p[t] = tqkv_test::dot(q, K + t * d, d) * scale;
        mx = std::max(mx, p[t]);
    }
    for (size_t t = 0; t < T; ++t) sum += (p[t] = std::exp(p[t] - mx));
    for (size_t t = 0; t < T; ++t)
        for (int j = 0; j < d; ++j) out[j] += p[t] / sum * V[t * d + j];
    return out;
}

}  // namespace

TEST_CASE("fused attention equals the decode-then-exact reference on every kernel", "[cache][kernels]") {
    // Same decoded keys and values, different arithmetic (float tables, online softmax, fast exp,
    // summation order; fixed-point 4-bit key tables on wasm and AVX2): the outputs agree to float
    // accuracy, far inside 1e-4 (measured up to ~1e-6, and ~6e-6 / ~7e-6 with wasm's / AVX2's
    // fixed-point scores).
    struct Case {
        int heads, kv_heads, dim;
        double kb, vb;
        Method km;
        int window;
        size_t tokens, queries;
    };
    const Case cases[] = {
        {4, 4, 128, 4, 4, Method::Mse, 0, 100, 1},   {8, 2, 128, 4, 2, Method::Mse, 0, 257, 1},
        {8, 1, 64, 3, 3, Method::Mse, 16, 70, 5},    {4, 4, 96, 2, 4, Method::Prod, 0, 33, 1},
        {4, 1, 256, 4, 3, Method::Prod, 8, 64, 3},   {2, 2, 80, 1, 1, Method::Mse, 0, 32, 32},
        {4, 2, 128, 6, 5, Method::Mse, 4, 45, 2},    {4, 4, 64, 8, 7, Method::Prod, 0, 31, 1},
        {1, 1, 128, 4, 4, Method::Mse, 40, 20, 20},  {8, 8, 128, 4, 4, Method::Mse, 0, 1, 1},
        // 9 query heads per KV head (the fused values kernel's batches of 8 + 1) and a head dim
        // that ends in a partial chunk of 4-bit codes (wasm: fixed-point key scores, 4-bit values).
        {9, 1, 66, 4, 4, Method::Mse, 0, 100, 2},
        // GQA groups of 2 and 3 (the value kernels' remainder passes after batches of 4).
        {4, 2, 128, 3, 2, Method::Mse, 16, 90, 3},   {6, 2, 64, 4, 3, Method::Mse, 0, 50, 2},
        {7, 1, 128, 2, 1, Method::Mse, 0, 40, 1},
    };
    for (const auto& kernel : available_kernels())
        for (const auto& cs : cases) {
            CacheConfig cfg = cache_config(cs.heads, cs.kv_heads, cs.dim, cs.kb, cs.vb, cs.window, cs.km);
            cfg.kernel = kernel;
            cfg.block_tokens = 64;
            KVCache cache(cfg);
            const size_t row = size_t(cs.kv_heads) * cs.dim;
            const auto K = tqkv_test::gaussian_vectors(cs.tokens, int(row), 1);
            const auto V = tqkv_test::gaussian_vectors(cs.tokens, int(row), 2);
            // Append in uneven chunks (prefill then decode steps).
            size_t t = 0;
            for (size_t step : {size_t(7), size_t(1), size_t(40), size_t(1000)}) {
                const size_t n = std::min(step, cs.tokens - t);
                if (!n) break;
                cache.append(std::span(K).subspan(t * row, n * row), std::span(V).subspan(t * row, n * row));
                t += n;
            }
            REQUIRE(cache.tokens() == cs.tokens);
            const auto Q = tqkv_test::gaussian_vectors(cs.queries, cs.heads * cs.dim, 3);
            for (bool causal : {true, false}) {
                std::vector<float> fused(Q.size()), ref(Q.size());
                cache.attend(Q, fused, causal);
                cache.attend_reference(Q, ref, causal);
                for (size_t i = 0; i < cs.queries * cs.heads; ++i) {
                    INFO(kernel << " heads " << cs.heads << "/" << cs.kv_heads << " d=" << cs.dim << " K" << cs.kb
                                << (cs.km == Method::Prod ? "prod" : "") << "V" << cs.vb << " W=" << cs.window
                                << " T=" << cs.tokens << " causal=" << causal << " row " << i);
                    CHECK(rel_error(fused, ref, i * cs.dim, cs.dim) < 1e-4);
                }
            }
        }
}

TEST_CASE("fused attention equals the reference on adversarial inputs, on every kernel", "[cache][kernels]") {
    // The shapes of real caches that strain fixed-point or float tables: keys with 4 outlier
    // channels 100x the rest (LLM keys), a query whose one coordinate is 1000x the others (one
    // table entry dominates the scale), all-zero and tiny (1e-6) tokens among normal ones, and
    // large magnitudes (1e3). The reference decodes the same codes, so only the arithmetic differs.
    enum Kind { OutlierKeys, SpikyQuery, ZeroAndTiny, Large };
    for (const auto& kernel : available_kernels())
        for (Kind kind : {OutlierKeys, SpikyQuery, ZeroAndTiny, Large})
            for (double bits : {2.0, 3.0, 4.0}) {
                auto cfg = cache_config(4, 2, 128, bits, bits, 0);
                cfg.kernel = kernel;
                KVCache cache(cfg);
                const size_t T = 300, row = 2 * 128;
                auto K = tqkv_test::gaussian_vectors(T, int(row), 21), V = tqkv_test::gaussian_vectors(T, int(row), 22);
                auto Q = tqkv_test::gaussian_vectors(2, 4 * 128, 23);
                for (size_t t = 0; t < T; ++t)
                    for (size_t j = 0; j < row; ++j) {
                        float& k = K[t * row + j];
                        float& v = V[t * row + j];
                        if (kind == OutlierKeys && j % 128 < 4) k *= 100;
                        if (kind == ZeroAndTiny && t % 5 == 0) k = v = 0;
                        if (kind == ZeroAndTiny && t % 5 == 1) k *= 1e-6f, v *= 1e-6f;
                        if (kind == Large) k *= 1e3f, v *= 1e3f;
                    }
                if (kind == SpikyQuery)
                    for (size_t h = 0; h < 8; ++h) Q[h * 128 + 7] *= 1000;
                if (kind == Large || kind == OutlierKeys)
                    for (auto& q : Q) q *= 0.01f;  // keep the softmax from collapsing onto one token
                cache.append(K, V);
                std::vector<float> fused(Q.size()), ref(Q.size());
                cache.attend(Q, fused, false);
                cache.attend_reference(Q, ref, false);
                for (size_t i = 0; i < 8; ++i) {
                    INFO(kernel << " case " << int(kind) << " bits " << bits << " row " << i);
                    CHECK(rel_error(fused, ref, i * 128, 128) < 1e-4);
                }
            }
}

TEST_CASE("fractional rates in the cache (K3.5 V2.5)", "[cache]") {
    const int d = 128;
    auto cfg = cache_config(4, 2, d, 3.5, 2.5, 8);
    const auto calib = tqkv_test::gaussian_vectors(500, d, 9);
    cfg.key_high_channels = choose_high_channels(calib, d, 64);
    cfg.value_high_channels = choose_high_channels(calib, d, 64);
    for (const auto& kernel : available_kernels()) {
        cfg.kernel = kernel;
        KVCache cache(cfg);
        const auto K = tqkv_test::gaussian_vectors(150, 2 * d, 4), V = tqkv_test::gaussian_vectors(150, 2 * d, 5);
        cache.append(K, V);
        const auto Q = tqkv_test::gaussian_vectors(3, 4 * d, 6);
        std::vector<float> fused(Q.size()), ref(Q.size());
        cache.attend(Q, fused);
        cache.attend_reference(Q, ref);
        for (int i = 0; i < 12; ++i) CHECK(rel_error(fused, ref, size_t(i) * d, d) < 1e-4);
    }
}

TEST_CASE("attention fidelity against exact fp32 follows the codec MSE", "[cache][stat]") {
    // Derivation (Gaussian q, k, v in R^d, scale 1/sqrt(d), so scores are ~N(0, 1)):
    //  - value errors e_t are independent with E||e_t||^2 = D_v ||v_t||^2, so
    //    E||sum p_t e_t||^2 = D_v sum p_t^2 ||v_t||^2, while ||o||^2 ~ sum p_t^2 ||v_t||^2
    //    (cross terms of independent zero-mean v vanish): relative error^2 ~ D_v;
    //  - key errors shift each score by δ_t with Var δ ~ D_k ||q||^2 ||k||^2 / d^2 ~ D_k, which
    //    perturbs p_t by ~p_t δ_t: relative error^2 ~ D_k.
    // So 1 - cos ~ (D_k + D_v) / 2 to first order (measured: within 5% at K2V2..K4V4). We assert
    // 1 - cos within a factor 1.5 of it on either side: the upper side leaves room for the
    // second-order terms and the 1 - D shrinkage of mse scores; the lower one catches a cache that
    // is not actually compressed.
    const int d = 128, T = 2048, H = 4;
    for (auto [kb, vb] : {std::pair{2, 2}, {3, 3}, {4, 4}, {4, 2}}) {
        KVCache cache(cache_config(H, H, d, kb, vb));
        const auto K = tqkv_test::gaussian_vectors(T, H * d, 11), V = tqkv_test::gaussian_vectors(T, H * d, 12);
        cache.append(K, V);
        // Measured per-vector relative MSE of the keys and values held by the cache.
        double dk = 0, dv = 0;
        for (int h = 0; h < H; ++h) {
            const auto k = cache.decode_keys(h), v = cache.decode_values(h);
            for (int t = 0; t < T; ++t) {
                double ek = 0, nk = 0, ev = 0, nv = 0;
                for (int j = 0; j < d; ++j) {
                    const double a = K[(size_t(t) * H + h) * d + j], b = V[(size_t(t) * H + h) * d + j];
                    ek += (a - k[size_t(t) * d + j]) * (a - k[size_t(t) * d + j]), nk += a * a;
                    ev += (b - v[size_t(t) * d + j]) * (b - v[size_t(t) * d + j]), nv += b * b;
                }
                dk += ek / nk, dv += ev / nv;
            }
        }
        dk /= H * T, dv /= H * T;
        const int nq = 32;
        const auto Q = tqkv_test::gaussian_vectors(nq, H * d, 13);
        std::vector<float> out(Q.size());
        cache.attend(Q, out, false);
        double mean_gap = 0;
        std::vector<float> Kh(size_t(T) * d), Vh(size_t(T) * d);
        for (int h = 0; h < H; ++h) {
            for (int t = 0; t < T; ++t)
                for (int j = 0; j < d; ++j) {
                    Kh[size_t(t) * d + j] = K[(size_t(t) * H + h) * d + j];
                    Vh[size_t(t) * d + j] = V[(size_t(t) * H + h) * d + j];
                }
            for (int qi = 0; qi < nq; ++qi) {
                const float* q = &Q[(size_t(qi) * H + h) * d];
                const auto exact = exact_attention(q, Kh.data(), Vh.data(), T, d, 1 / std::sqrt(double(d)));
                double dot = 0, n1 = 0, n2 = 0;
                for (int j = 0; j < d; ++j) {
                    const double a = out[(size_t(qi) * H + h) * d + j];
                    dot += a * exact[j], n1 += a * a, n2 += exact[j] * exact[j];
                }
                mean_gap += 1 - dot / std::sqrt(n1 * n2);
            }
        }
        mean_gap /= H * nq;
        const double predicted = (dk + dv) / 2;
        INFO("K" << kb << "V" << vb << ": D_k " << dk << " D_v " << dv << " 1-cos " << mean_gap << " predicted "
                 << predicted);
        CHECK(mean_gap < 1.5 * predicted);
        CHECK(mean_gap > predicted / 1.5);
    }
}

TEST_CASE("bytes per token follow the layout arithmetic", "[cache]") {
    // K4 V4, d = 128: per group of 32 tokens and KV head, keys and values each take 32 fp16 norms
    // (64 bytes) + 128 coordinates x 16 bytes of 4-bit codes (2048 bytes).
    KVCache c(cache_config(8, 4, 128, 4, 4, 16));
    CHECK(c.block_bytes() == size_t(4) * (64 / 32) * (2 * (64 + 2048)));
    CHECK(c.compressed_bytes_per_token() == Approx(4 * 2 * (64 + 2048) / 32.0));  // 528 = 4 * 2 * 66
    CHECK(c.fp16_bytes_per_token() == 2 * 4 * 128 * 2);
    // K4 prod (3-bit mse stage: a 2-bit part of 64 chunks + a 1-bit part of 32 chunks of 16 bytes,
    // 1-bit signs, norms and residual norms) with V2 (2-bit part, 64 chunks).
    KVCache p(cache_config(4, 4, 128, 4, 2, 0, Method::Prod));
    CHECK(p.block_bytes() == size_t(4) * 2 * ((64 + 64 + 64 * 16 + 32 * 16 + 32 * 16) + (64 + 64 * 16)));
    // d = 80 at 3 bits: 40 chunks (2-bit part) + 20 chunks (1-bit part).
    KVCache o(cache_config(2, 1, 80, 3, 3));
    CHECK(o.block_bytes() == size_t(1) * 2 * 2 * (64 + 40 * 16 + 20 * 16));

    // bytes_used grows by exactly one block when a block fills, and the window is counted.
    const size_t empty = c.bytes_used();
    const auto K = tqkv_test::gaussian_vectors(16 + 64 + 1, 4 * 128, 1);
    c.append(std::span(K).first(16 * 512), std::span(K).first(16 * 512));  // all 16 in the window
    CHECK(c.bytes_used() == empty);
    CHECK(c.compressed_tokens() == 0);
    // A chunk of 64: one block, and the exact rows of the chunk (and the window before it) until
    // the next append, for the chunk's own queries.
    const size_t exact_row = 2 * 4 * 128 * sizeof(float);  // one token's exact key and value
    c.append(std::span(K).subspan(16 * 512, 64 * 512), std::span(K).subspan(16 * 512, 64 * 512));
    CHECK(c.compressed_tokens() == 64);
    const size_t one_block = c.bytes_used();
    CHECK(one_block - empty >= c.block_bytes() + 64 * exact_row);
    CHECK(one_block - empty <= c.block_bytes() + 64 * exact_row + 64);  // + the block table's slot
    // One token: a second block; the ring shrinks back to window + 1 rows.
    c.append(std::span(K).subspan(80 * 512, 512), std::span(K).subspan(80 * 512, 512));
    const size_t second = c.bytes_used() + 63 * exact_row - one_block;
    CHECK(second >= c.block_bytes());
    CHECK(second <= c.block_bytes() + 128);  // + the block table's slots (one per KV head) and an arena entry
    CHECK(c.bytes_per_token() == Approx(double(c.bytes_used()) / 81));
}

TEST_CASE("storage: a KV head's codes are contiguous in arenas that grow geometrically; old codes never move", "[cache]") {
    for (size_t max_tokens : {size_t(0), size_t(30000)}) {
        auto cfg = cache_config(4, 2, 64, 4, 3);
        cfg.max_tokens = max_tokens;
        KVCache c(cfg);
        const KVCache::Impl& m = CacheInternals::impl(c);
        const auto K = tqkv_test::gaussian_vectors(7, 2 * 64, 1);
        std::vector<const uint8_t*> first;
        size_t moved = 0;
        for (size_t t = 0; t < 20000; t += 7) {  // 313 blocks of 64 tokens, appended 7 tokens at a time
            c.append(K, K);
            if (first.empty()) first = {m.group(0, 0), m.group(1, 0)};
            moved += m.group(0, 0) != first[0] || m.group(1, 0) != first[1];
        }
        CHECK(moved == 0);  // no copy of old codes, ever
        // Per KV head: the groups in token order are contiguous except where an arena ends.
        for (int h = 0; h < 2; ++h) {
            size_t runs = 1;
            for (size_t t = 32; t < c.compressed_tokens(); t += 32) runs += m.group(h, t) != m.group(h, t - 32) + m.group_bytes;
            CHECK(runs <= m.arenas.size());  // (two arenas may happen to be adjacent)
        }
        const size_t blocks = (c.compressed_tokens() + 63) / 64;
        if (max_tokens) {
            CHECK(m.arenas.size() == 1);  // the whole capacity at once
            CHECK(m.allocated_blocks() == (max_tokens + 63) / 64);
        } else {
            // Growth by an eighth of what is held: O(log) arenas, at most 1/8 allocated ahead.
            // 313 blocks: 43 arenas (8 of one block, then ever larger), against 313 with one allocation per block.
            CHECK(m.arenas.size() <= 45);
            CHECK(m.arenas.size() >= 20);
            CHECK(m.allocated_blocks() <= blocks + blocks / 8 + 1);
        }
        // Truncate releases whole arenas past the kept blocks and keeps the block table consistent:
        // appending the same tokens again gives the same bytes.
        const auto before = c.save();
        const size_t n = c.tokens();
        c.truncate(1001);  // 143 appends of the same 7 tokens
        CHECK(m.allocated_blocks() * 64 >= 1001);
        if (!max_tokens) CHECK(m.allocated_blocks() <= 2 * 16);
        for (size_t t = 1001; t < n; t += 7) c.append(K, K);
        CHECK(c.tokens() == n);
        CHECK((c.save() == before));
    }
}

TEST_CASE("serialization round-trips bit-exactly and loads on any kernel", "[cache]") {
    auto cfg = cache_config(4, 2, 96, 3, 2, 5, Method::Prod);
    cfg.kernel = "scalar";
    KVCache a(cfg);
    const auto K = tqkv_test::gaussian_vectors(77, 2 * 96, 1), V = tqkv_test::gaussian_vectors(77, 2 * 96, 2);
    a.append(K, V);
    const auto bytes = a.save();
    const auto Q = tqkv_test::gaussian_vectors(2, 4 * 96, 3);
    std::vector<float> o1(Q.size()), o2(Q.size()), o3(Q.size()), o4(Q.size());
    a.attend(Q, o1, false);
    // Continuing after a load is the same as continuing the original (the exact rows of the last
    // chunk are not saved, so the saved chunk's own causal queries are compared non-causally).
    a.append(std::span(K).first(3 * 192), std::span(V).first(3 * 192));
    a.attend(Q, o3);
    for (const auto& kernel : available_kernels()) {
        KVCache b = KVCache::load(bytes, kernel);
        b.set_precision(cfg.precision);  // not saved (the default after load)
        CHECK(b.save() == bytes);
        CHECK(b.tokens() == 77);
        b.attend(Q, o2, false);
        for (size_t i = 0; i < 8; ++i) CHECK(rel_error(o2, o1, i * 96, 96) < 1e-5);
        b.append(std::span(K).first(3 * 192), std::span(V).first(3 * 192));
        b.attend(Q, o4);
        for (size_t i = 0; i < 8; ++i) CHECK(rel_error(o4, o3, i * 96, 96) < 1e-5);
        // Appending the same tokens on another kernel gives the same bytes.
        cfg.kernel = kernel;
        KVCache c(cfg);
        c.append(K, V);
        CHECK(c.save() == bytes);
    }
    // A whole model.
    ModelKVCache model(3, cache_config(2, 1, 64, 4, 4, 4));
    const auto K2 = tqkv_test::gaussian_vectors(40, 64, 5);
    for (int l = 0; l < 3; ++l) model.append(l, K2, K2);
    const auto mb = model.save();
    CHECK(ModelKVCache::load(mb).save() == mb);
    CHECK_THROWS_WITH(KVCache::load(mb), Catch::Contains("3 layers"));
}

namespace {

uint32_t crc32_ref(const uint8_t* p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

void fix_crc(std::vector<uint8_t>& b) {
    const uint32_t c = crc32_ref(b.data(), b.size() - 4);
    for (int i = 0; i < 4; ++i) b[b.size() - 4 + i] = uint8_t(c >> (8 * i));
}

}  // namespace

TEST_CASE("hostile serialized caches: errors, never crashes", "[cache][fuzz]") {
    auto cfg = cache_config(4, 2, 64, 4, 3, 6, Method::Prod);
    KVCache a(cfg);
    const auto K = tqkv_test::gaussian_vectors(50, 128, 1);
    a.append(K, K);
    const auto good = a.save();
    Rng rng(12345);
    int rejected = 0, accepted = 0;
    for (int i = 0; i < 12000; ++i) {
        std::vector<uint8_t> b = good;
        switch (i % 4) {
            case 0: b.resize(rng.below(b.size())); break;                          // truncated
            case 1: b[rng.below(b.size())] ^= uint8_t(1 + rng.below(255)); break;  // corrupted, CRC catches
            case 2:                                                               // corrupted header, valid CRC
                for (int k = 0; k < 3; ++k) b[8 + rng.below(std::min<size_t>(120, b.size() - 12))] = uint8_t(rng.next());
                fix_crc(b);
                break;
            default: {                                                             // hostile sizes, valid CRC
                const size_t pos = 8 + 4 * rng.below(30);
                const uint32_t v = rng.below(2) ? 0xffffffffu : uint32_t(rng.below(1u << 20));
                for (int k = 0; k < 4 && pos + k < b.size() - 4; ++k) b[pos + k] = uint8_t(v >> (8 * k));
                fix_crc(b);
            }
        }
        try {
            KVCache c = KVCache::load(b);
            // Whatever loads must be usable.
            std::vector<float> q(size_t(c.config().heads) * c.config().head_dim, 0.5f), o(q.size());
            if (c.tokens()) c.attend(q, o, false);
            ++accepted;
        } catch (const std::invalid_argument&) {
            ++rejected;
        }
    }
    INFO("rejected " << rejected << " accepted " << accepted);
    CHECK(rejected > 11000);
    CHECK(KVCache::load(good).save() == good);
}

TEST_CASE("empty_like shares the codecs and codes exactly as a fresh cache", "[cache]") {
    for (double kb : {4.0, 2.5}) {
        auto cfg = cache_config(4, 2, 64, kb, 3, 8, Method::Prod);
        if (kb != std::floor(kb))
            for (int j = 0; j < 32; ++j) cfg.key_high_channels.push_back(2 * j + 1);
        KVCache a(cfg);
        const auto K = tqkv_test::gaussian_vectors(70, 128, 3), V = tqkv_test::gaussian_vectors(70, 128, 4);
        a.append(K, V);
        KVCache b = a.empty_like(), fresh(a.config());
        CHECK(b.tokens() == 0);
        CHECK(b.same_codes(a));
        CHECK(b.table_bytes() == fresh.table_bytes());
        CHECK(b.table_bytes() > 0);
        CHECK(b.bytes_used() == fresh.bytes_used());
        b.append(K, V);
        fresh.append(K, V);
        CHECK(b.save() == fresh.save());
        CHECK(b.save() == a.save());
        // Independent storage: changing one leaves the other as it was.
        const auto before = a.save();
        b.truncate(10);
        b.append(V, K);
        CHECK(a.save() == before);
        // The shared tables outlive the cache they came from.
        KVCache c = KVCache(a.config()).empty_like();
        c.append(K, V);
        CHECK(c.save() == before);
    }
}

TEST_CASE("hostile bit rates in a serialized header: clear errors", "[cache][fuzz]") {
    // Fuzz finding: a header whose key bits were 1.29e10 (fractional) reached a float-to-int
    // conversion before any range check.
    auto cfg = cache_config(4, 2, 64, 4, 3, 6, Method::Prod);
    KVCache a(cfg);
    const auto K = tqkv_test::gaussian_vectors(40, 128, 2);
    a.append(K, K);
    const auto good = a.save();
    // The two f64 rates sit next to each other in the header: find them by value.
    uint8_t pattern[16];
    std::memcpy(pattern, &cfg.key_bits, 8);
    std::memcpy(pattern + 8, &cfg.value_bits, 8);
    const auto at = std::search(good.begin(), good.end(), pattern, pattern + 16);
    REQUIRE(at != good.end());
    const size_t pos = size_t(at - good.begin());
    for (double hostile : {1.28849e10 + 0.5, 1.5e10, -1e300, 0.5, 8.5, 9.0, double(NAN), double(INFINITY)})
        for (size_t field : {pos, pos + 8}) {
            std::vector<uint8_t> b = good;
            std::memcpy(&b[field], &hostile, 8);
            fix_crc(b);
            INFO("bits " << hostile << " at offset " << field);
            CHECK_THROWS_WITH(KVCache::load(b), Catch::Contains("bits"));
        }
}

TEST_CASE("errors leave the cache exactly as it was", "[cache][errors]") {
    auto cfg = cache_config(4, 2, 64, 4, 4, 4);
    cfg.max_tokens = 40;
    KVCache c(cfg);
    const auto K = tqkv_test::gaussian_vectors(45, 128, 1);
    c.append(std::span(K).first(30 * 128), std::span(K).first(30 * 128));
    const auto before = c.save();
    auto unchanged = [&] { CHECK(c.save() == before); };

    CHECK_THROWS_WITH(c.append(std::span(K).first(100), std::span(K).first(100)), Catch::Contains("multiple"));
    unchanged();
    CHECK_THROWS_WITH(c.append(std::span(K).first(128), std::span(K).first(256)), Catch::Contains("values"));
    unchanged();
    auto bad = std::vector<float>(K.begin(), K.begin() + 256);
    bad[200] = NAN;
    CHECK_THROWS_WITH(c.append(bad, bad), Catch::Contains("token 1, head 1, channel 8"));
    unchanged();
    bad[200] = 1e6f;  // norm beyond fp16
    CHECK_THROWS_WITH(c.append(bad, bad), Catch::Contains("fp16"));
    unchanged();
    CHECK_THROWS_WITH(c.append(std::span(K).first(11 * 128), std::span(K).first(11 * 128)), Catch::Contains("capacity"));
    unchanged();
    std::vector<float> q(4 * 64, 0.1f), o(4 * 64);
    CHECK_THROWS_WITH(c.attend(std::span(q).first(100), o), Catch::Contains("queries"));
    CHECK_THROWS_WITH(c.attend(q, std::span(o).first(10)), Catch::Contains("out"));
    q[3] = INFINITY;
    CHECK_THROWS_WITH(c.attend(q, o), Catch::Contains("query"));
    std::vector<float> many(31 * 4 * 64, 0.1f), many_out(many.size());
    CHECK_THROWS_WITH(c.attend(many, many_out, true), Catch::Contains("causal"));
    CHECK_THROWS_WITH(c.truncate(31), Catch::Contains("holds 30"));
    unchanged();
    // Filling to capacity works; one more token does not.
    c.append(std::span(K).first(10 * 128), std::span(K).first(10 * 128));
    CHECK(c.tokens() == 40);
    const auto full = c.save();
    CHECK_THROWS_WITH(c.append(std::span(K).first(128), std::span(K).first(128)), Catch::Contains("capacity"));
    CHECK(c.save() == full);

    KVCache empty(cache_config(4, 2, 64, 4, 4));
    std::vector<float> q2(4 * 64, 0.1f);
    CHECK_THROWS_WITH(empty.attend(q2, o), Catch::Contains("empty"));
    CHECK_THROWS_WITH(KVCache(cache_config(4, 3, 64, 4, 4)), Catch::Contains("must divide"));
    CHECK_THROWS_WITH(KVCache(cache_config(4, 4, 64, 9, 4)), Catch::Contains("keys"));
    CHECK_THROWS_WITH(KVCache(cache_config(4, 4, 64, 4, 2.5)), Catch::Contains("values"));
    CacheConfig blk = cache_config(4, 4, 64, 4, 4);
    blk.block_tokens = 48;
    CHECK_THROWS_WITH(KVCache(blk), Catch::Contains("multiple of 32"));
}

TEST_CASE("truncate rolls back; appending again gives the same cache as never having gone further", "[cache]") {
    for (int window : {0, 8}) {
        auto cfg = cache_config(2, 1, 64, 3, 3, window);
        cfg.block_tokens = 32;
        const auto K = tqkv_test::gaussian_vectors(100, 64, 1), V = tqkv_test::gaussian_vectors(100, 64, 2);
        KVCache a(cfg), b(cfg);
        a.append(K, V);
        a.truncate(45);
        CHECK(a.tokens() == 45);
        b.append(std::span(K).first(45 * 64), std::span(V).first(45 * 64));
        const auto Q = tqkv_test::gaussian_vectors(1, 2 * 64, 3);
        std::vector<float> oa(Q.size()), ob(Q.size());
        a.attend(Q, oa);
        b.attend(Q, ob);
        // Rolled back within the last appended chunk: the cache still holds the exact rows of
        // tokens 37..44, which go back into the window.
        CHECK(a.compressed_tokens() == b.compressed_tokens());
        CHECK(a.save() == b.save());
        CHECK(oa == ob);
        if (window > 0) {
            // Rolled back past the last chunk (99 tokens, then 1): tokens 37..44 are codes only now;
            // the window restarts empty and refills with the next appends.
            KVCache c(cfg);
            c.append(std::span(K).first(99 * 64), std::span(V).first(99 * 64));
            c.append(std::span(K).subspan(99 * 64), std::span(V).subspan(99 * 64));
            c.truncate(45);
            CHECK(c.compressed_tokens() == 45);
            std::vector<float> oc(Q.size());
            c.attend(Q, oc);
            CHECK(rel_error(oc, ob, 0, 128) < 0.2);
            CHECK(rel_error(oc, ob, 0, 128) > 1e-4);
            c.append(std::span(K).subspan(45 * 64, 10 * 64), std::span(V).subspan(45 * 64, 10 * 64));
            CHECK(c.compressed_tokens() == 47);  // 55 tokens, 8 in the window
        }
        a.clear();
        CHECK(a.tokens() == 0);
        a.append(std::span(K).first(45 * 64), std::span(V).first(45 * 64));
        a.attend(Q, oa);
        CHECK(oa == ob);
    }
}

TEST_CASE("chunked prefill: each query sees what token-by-token decode would", "[cache][prefill]") {
    // Cache a gets the tokens in chunks and attends each chunk's queries causally; cache b gets them
    // one at a time and attends each query right after its token (decode). Query i of a chunk must
    // see the window before its position exactly even where appending the chunk already compressed
    // it. The queries point at recent keys (attention peaked on the window), so reading those
    // tokens as codes instead shows up as a relative error of ~1e-2, against float rounding here.
    struct Case {
        int heads, kv_heads, dim;
        double kb, vb;
        Method km;
        int window;
        std::vector<size_t> chunks;
    };
    const Case cases[] = {
        {4, 2, 64, 3, 2, Method::Mse, 8, {5, 40, 1, 1, 70, 3}},     // chunks longer and shorter than the window
        {2, 1, 128, 4, 4, Method::Mse, 1, {33, 2, 64}},             // window of one token
        {4, 4, 96, 3, 3, Method::Prod, 16, {100, 16, 17, 1}},       // prod keys, chunk == window
        {8, 2, 64, 2.5, 3.5, Method::Mse, 40, {20, 300, 1, 64}},    // fractional rates, chunk > 256 (exact rows in chunks)
        {2, 2, 64, 4, 4, Method::Mse, 0, {50, 7}},                  // no window: codes only, both ways
    };
    for (const auto& kernel : available_kernels())
        for (const auto& cs : cases) {
            CacheConfig cfg = cache_config(cs.heads, cs.kv_heads, cs.dim, cs.kb, cs.vb, cs.window, cs.km);
            auto high = [&](double bits) {
                std::vector<int> h(size_t(std::lround((bits - std::floor(bits)) * cs.dim)));
                for (size_t i = 0; i < h.size(); ++i) h[i] = int(3 * i % cs.dim);
                return h;
            };
            if (cs.kb != std::floor(cs.kb)) cfg.key_high_channels = high(cs.kb);
            if (cs.vb != std::floor(cs.vb)) cfg.value_high_channels = high(cs.vb);
            cfg.kernel = kernel;
            cfg.block_tokens = 64;
            KVCache a(cfg), b(cfg);
            size_t total = 0;
            for (size_t n : cs.chunks) total += n;
            const size_t row = size_t(cs.kv_heads) * cs.dim, qrow = size_t(cs.heads) * cs.dim;
            const auto K = tqkv_test::gaussian_vectors(total, int(row), 1);
            const auto V = tqkv_test::gaussian_vectors(total, int(row), 2);
            auto Q = tqkv_test::gaussian_vectors(total, int(qrow), 3);
            const int r = cs.heads / cs.kv_heads;
            for (size_t t = 0; t < total; ++t)  // query head h of token t points at the key of token t - 1 - h % 5
                for (int h = 0; h < cs.heads; ++h) {
                    const size_t src = t >= size_t(1 + h % 5) ? t - 1 - h % 5 : 0;
                    for (int j = 0; j < cs.dim; ++j)
                        Q[t * qrow + size_t(h) * cs.dim + j] = 0.3f * Q[t * qrow + size_t(h) * cs.dim + j] +
                                                               2.0f * K[src * row + size_t(h / r) * cs.dim + j];
                }
            size_t t0 = 0;
            double worst = 0;
            for (size_t n : cs.chunks) {
                a.append(std::span(K).subspan(t0 * row, n * row), std::span(V).subspan(t0 * row, n * row));
                std::vector<float> chunk_out(n * qrow), ref(n * qrow);
                a.attend(std::span(Q).subspan(t0 * qrow, n * qrow), chunk_out, true);
                a.attend_reference(std::span(Q).subspan(t0 * qrow, n * qrow), ref, true);
                for (size_t i = 0; i < n; ++i) {
                    const size_t t = t0 + i;
                    b.append(std::span(K).subspan(t * row, row), std::span(V).subspan(t * row, row));
                    std::vector<float> one(qrow);
                    b.attend(std::span(Q).subspan(t * qrow, qrow), one, true);
                    for (int h = 0; h < cs.heads; ++h) {
                        INFO(kernel << " case W=" << cs.window << " d=" << cs.dim << " token " << t << " head " << h);
                        std::vector<float> x(chunk_out.begin() + long(i * qrow + size_t(h) * cs.dim),
                                             chunk_out.begin() + long(i * qrow + size_t(h + 1) * cs.dim));
                        std::vector<float> y(one.begin() + long(size_t(h) * cs.dim), one.begin() + long(size_t(h + 1) * cs.dim));
                        std::vector<float> z(ref.begin() + long(i * qrow + size_t(h) * cs.dim),
                                             ref.begin() + long(i * qrow + size_t(h + 1) * cs.dim));
                        const double err = rel_error(x, y, 0, size_t(cs.dim));
                        worst = std::max(worst, err);
                        CHECK(rel_error(x, z, 0, size_t(cs.dim)) < 1e-4);  // the reference reads the same rows
                    }
                }
                t0 += n;
            }
            CHECK(a.tokens() == b.tokens());
            CHECK(a.compressed_tokens() == b.compressed_tokens());
            CHECK(a.save() == b.save());  // codes do not depend on the chunking
            CHECK(worst < 2e-5);  // measured: 0 (the same operations in the same order)
        }
}

TEST_CASE("release_chunk_rows: a prefill chunk's exact rows go, decode sees what it did before", "[cache][prefill]") {
    // append keeps the exact rows of the chunk (and the window before it) for the chunk's causal
    // queries; release_chunk_rows frees them. After it the chunk's tokens read as codes, as in a
    // cache loaded from save() (which does not store those rows), while decode steps, whose window
    // is exact either way, get the bits they would have got without the release.
    for (const auto& kernel : available_kernels()) {
        INFO(kernel);
        CacheConfig cfg = cache_config(4, 2, 64, 4, 3, 8);
        cfg.kernel = kernel;
        cfg.block_tokens = 64;
        cfg.precision = Precision::Exact;
        const size_t row = 2 * 64, qrow = 4 * 64, chunk = 300, W = 8;
        const auto K = tqkv_test::gaussian_vectors(chunk + 5, int(row), 1);
        const auto V = tqkv_test::gaussian_vectors(chunk + 5, int(row), 2);
        const auto Q = tqkv_test::gaussian_vectors(chunk + 5, int(qrow), 3);
        KVCache a(cfg), b(cfg);
        for (KVCache* c : {&a, &b}) c->append(std::span(K).first(chunk * row), std::span(V).first(chunk * row));
        const size_t before = a.bytes_used();
        a.release_chunk_rows();
        CHECK(before - a.bytes_used() == (chunk - W) * row * 2 * sizeof(float));  // the ring: chunk rows -> window rows
        a.release_chunk_rows();                                                  // a second call: nothing left to free
        CHECK(before - a.bytes_used() == (chunk - W) * row * 2 * sizeof(float));
        // The chunk's queries now read its tokens as codes: as a loaded cache does, not as b.
        std::vector<float> oa(chunk * qrow), ob(chunk * qrow), ol(chunk * qrow);
        a.attend(std::span(Q).first(chunk * qrow), oa, true);
        b.attend(std::span(Q).first(chunk * qrow), ob, true);
        KVCache loaded = KVCache::load(b.save(), kernel);
        loaded.set_precision(Precision::Exact);  // (not saved)
        loaded.attend(std::span(Q).first(chunk * qrow), ol, true);
        CHECK(oa == ol);
        CHECK(rel_error(oa, ob, 0, oa.size()) > 1e-3);
        // Decode steps: the same bits with and without the release, then the same codes.
        for (size_t t = chunk; t < chunk + 5; ++t) {
            std::vector<float> da(qrow), db(qrow);
            for (KVCache* c : {&a, &b}) c->append(std::span(K).subspan(t * row, row), std::span(V).subspan(t * row, row));
            a.attend(std::span(Q).subspan(t * qrow, qrow), da, true);
            b.attend(std::span(Q).subspan(t * qrow, qrow), db, true);
            CHECK(da == db);
            a.release_chunk_rows();  // after a decode step: keeps the ring (window + 1 rows), frees nothing
        }
        CHECK(a.save() == b.save());
        CHECK(a.bytes_used() == b.bytes_used());
    }
    // Without a window nothing is kept, nothing to free.
    KVCache c(cache_config(4, 2, 64, 4, 3, 0));
    const auto K = tqkv_test::gaussian_vectors(100, 128, 4);
    c.append(K, K);
    const size_t before = c.bytes_used();
    c.release_chunk_rows();
    CHECK(c.bytes_used() == before);
}

TEST_CASE("skipped values: groups of negligible weight are skipped, within the derived bound", "[cache][skip]") {
    // cache/attention.cpp derives: a skipped token's final softmax weight p_t is below ε, so the
    // output moves by at most sum over skipped tokens of p_t |v_t| < ε |S| max |v|. Checked here
    // per channel against the exact weights (attend_stats' logits, no skipping) and the decoded
    // values: the change must be explained by tokens of groups whose weights are all below ε.
    for (const auto& kernel : available_kernels()) {
        INFO("kernel " << kernel);
        auto cfg = cache_config(2, 1, 64, 4, 4);
        cfg.kernel = kernel;
        KVCache cache(cfg);
        const size_t T = 4200;  // three units (2048 tokens each, the last one short)
        const uint64_t groups = (T + 31) / 32;  // per query and KV head: 132
        const auto K = tqkv_test::gaussian_vectors(T, 64, 1), V = tqkv_test::gaussian_vectors(T, 64, 2);
        cache.append(K, V);
        const std::vector<float> Vd = cache.decode_values(0);
        std::vector<float> q(2 * 64);
        auto attend = [&](float eps, std::vector<float>& out, AttendCounters& counters) {
            AttendOptions o;
            o.skip_values = eps;
            o.counters = &counters;
            cache.attend(q, out, false, o);
        };
        // 1. A query that points at token 100 (an attention sink, in the first unit): every other
        // group's weights are far below 1e-6 of the sum, so nearly every group is skipped, in the
        // later units too (they compare with the first unit's floor). Skipping switched off: none.
        for (int j = 0; j < 64; ++j) q[j] = q[64 + j] = 8.0f * K[100 * 64 + j];
        std::vector<float> skip(q.size()), full(q.size()), ref(q.size());
        AttendCounters on, off;
        attend(1e-6f, skip, on);
        attend(0, full, off);
        cache.attend_reference(q, ref, false);
        CHECK(on.value_groups == groups);
        CHECK(off.value_groups == groups);
        CHECK(off.skipped_value_groups == 0);
        CHECK(on.skipped_value_groups >= groups - 4);  // all but the group of token 100 and a few at unit starts
        for (size_t i = 0; i < q.size(); ++i) CHECK(std::abs(full[i] - ref[i]) < 1e-3);

        // 2. A moderately peaked query and a large ε: the skipped weight is far from negligible,
        // and the change must stay within what the groups of small weight can explain.
        for (float eps : {1e-4f, 1e-3f}) {
            INFO("eps " << eps);
            for (int j = 0; j < 64; ++j) q[j] = 2.0f * K[100 * 64 + j], q[64 + j] = 1.5f * K[4100 * 64 + j];
            AttendCounters c1, c0;
            attend(eps, skip, c1);
            attend(0, full, c0);
            REQUIRE(c1.skipped_value_groups > 0);
            // Exact final weights per head, from the logits of one unskipped pass.
            std::vector<float> acc(q.size()), mx(2), sum(2), lg(2 * T);
            AttendOptions o;
            o.skip_values = 0;
            cache.attend_stats(q, acc, mx, sum, lg, o);
            std::vector<double> bound(q.size(), 0.0);
            size_t small_groups = 0;
            double vmax = 0;
            for (size_t g = 0; g < groups; ++g) {
                const size_t t0 = g * 32, t1 = std::min(T, t0 + 32);
                bool small = true;
                for (int h = 0; h < 2; ++h)
                    for (size_t t = t0; t < t1; ++t) small = small && std::exp(double(lg[h * T + t]) - mx[h]) / sum[h] < eps;
                if (!small) continue;
                ++small_groups;
                for (int h = 0; h < 2; ++h)
                    for (size_t t = t0; t < t1; ++t) {
                        const double p = std::exp(double(lg[h * T + t]) - mx[h]) / sum[h];
                        for (int j = 0; j < 64; ++j) bound[h * 64 + j] += p * std::abs(Vd[t * 64 + j]);
                    }
            }
            for (float v : Vd) vmax = std::max(vmax, double(std::abs(v)));
            CHECK(c1.skipped_value_groups <= small_groups);  // only groups whose final weights are all < ε
            double moved = 0;
            for (size_t i = 0; i < q.size(); ++i) {
                const double delta = std::abs(double(skip[i]) - full[i]);
                moved = std::max(moved, delta);
                CHECK(delta <= bound[i] * 1.001 + 1e-6);                                // per channel
                CHECK(delta <= eps * 32.0 * double(c1.skipped_value_groups) * vmax + 1e-6);  // the stated bound
            }
            CHECK(moved > 1e-6);  // the case really drops weight (else it tests nothing)
        }

        // 3. Nearly uniform attention: no weight is below 1e-6 of the sum, nothing is skipped.
        for (float& x : q) x *= 1e-3f;
        AttendCounters flat;
        attend(1e-6f, skip, flat);
        CHECK(flat.skipped_value_groups == 0);
        // Bad options are rejected.
        AttendOptions o;
        o.skip_values = 1.0f;
        CHECK_THROWS_WITH(cache.attend(q, skip, false, o), Catch::Contains("skip_values"));
        o.skip_values = std::nanf("");
        CHECK_THROWS_WITH(cache.attend(q, skip, false, o), Catch::Contains("skip_values"));
        o.skip_values = 0;
        o.threads = 0;
        CHECK_THROWS_WITH(cache.attend(q, skip, false, o), Catch::Contains("threads"));
    }
}

TEST_CASE("attend_stats: two caches merged into one softmax equal one cache over all tokens", "[cache]") {
    // Tokens 0..59 in one cache (split at 40 into two caches): with the same codes (same seed,
    // same config), merging the statistics of the two halves must reproduce attention over all.
    auto cfg = cache_config(4, 2, 64, 4, 3, 0);
    const auto K = tqkv_test::gaussian_vectors(60, 128, 1), V = tqkv_test::gaussian_vectors(60, 128, 2);
    KVCache all(cfg), first(cfg), second(cfg);
    all.append(K, V);
    first.append(std::span(K).first(40 * 128), std::span(V).first(40 * 128));
    second.append(std::span(K).subspan(40 * 128), std::span(V).subspan(40 * 128));
    const auto q = tqkv_test::gaussian_vectors(1, 4 * 64, 3);
    std::vector<float> expect(q.size()), a1(q.size()), a2(q.size()), m1(4), m2(4), l1(4), l2(4), lg(4 * 40);
    all.attend(q, expect, false);
    first.attend_stats(q, a1, m1, l1, lg);
    second.attend_stats(q, a2, m2, l2);
    for (int h = 0; h < 4; ++h) {
        const float M = std::max(m1[h], m2[h]), e1 = std::exp(m1[h] - M), e2 = std::exp(m2[h] - M);
        std::vector<float> merged(64);
        for (int j = 0; j < 64; ++j) merged[j] = (e1 * a1[h * 64 + j] + e2 * a2[h * 64 + j]) / (e1 * l1[h] + e2 * l2[h]);
        // Codes are per token, so both halves hold exactly the codes of the whole: the merge
        // differs from one pass only in float summation order.
        std::vector<float> ref(expect.begin() + h * 64, expect.begin() + (h + 1) * 64);
        CHECK(rel_error(merged, ref, 0, 64) < 1e-5);
        // The logits reproduce the statistics: m = max, l = sum exp(s - m).
        double sum = 0;
        float mx = -INFINITY;
        for (int t = 0; t < 40; ++t) mx = std::max(mx, lg[h * 40 + t]);
        for (int t = 0; t < 40; ++t) sum += std::exp(double(lg[h * 40 + t]) - mx);
        CHECK(mx == Approx(m1[h]));
        CHECK(sum == Approx(l1[h]).epsilon(1e-5));
    }
    CHECK_THROWS_WITH(first.attend_stats(std::span(q).first(10), a1, m1, l1), Catch::Contains("query"));
}

TEST_CASE("attend_stats over several caches equals one cache over all their tokens, on every kernel", "[cache][kernels]") {
    // Four caches of 40, 0, 75 and 33 tokens (the empty one is skipped; the third has an exact
    // window of 8): one query rotation and one set of tables must score them all as if they were
    // one cache, up to float summation order; logits come out per cache, one after the other.
    for (const std::string& kern : available_kernels()) {
        CAPTURE(kern);
        for (const double bits : {2.0, 4.0}) {
            auto cfg = cache_config(4, 2, 64, bits, bits, 0);
            cfg.kernel = kern;
            const size_t sizes[] = {40, 0, 75, 33}, total = 148;
            const auto K = tqkv_test::gaussian_vectors(total, 128, 11), V = tqkv_test::gaussian_vectors(total, 128, 12);
            std::vector<KVCache> parts;
            KVCache all(cfg);
            all.append(K, V);
            size_t t0 = 0;
            for (size_t i = 0; i < 4; ++i) {
                auto c = cfg;
                c.window = i == 2 ? 8 : 0;  // windows may differ; the codes must not
                parts.emplace_back(c);
                if (sizes[i])
                    parts.back().append(std::span(K).subspan(t0 * 128, sizes[i] * 128), std::span(V).subspan(t0 * 128, sizes[i] * 128));
                t0 += sizes[i];
            }
            // The reference: the whole sequence with the same 8 tokens exact (positions 107..114)
            // is not one KVCache, so compare against merging the single-cache statistics.
            const auto q = tqkv_test::gaussian_vectors(1, 4 * 64, 13);
            std::vector<const KVCache*> ptrs;
            for (auto& p : parts) ptrs.push_back(&p);
            std::vector<float> acc(q.size()), mx(4), sum(4), lg(4 * total);
            KVCache::attend_stats(ptrs, q, acc, mx, sum, lg);
            std::vector<float> M(4, -INFINITY), L(4, 0), A(q.size(), 0), lg_ref;
            for (auto& p : parts) {
                if (p.tokens() == 0) continue;
                std::vector<float> a(q.size()), m(4), l(4), g(4 * p.tokens());
                p.attend_stats(q, a, m, l, g);
                lg_ref.insert(lg_ref.end(), g.begin(), g.end());
                for (int h = 0; h < 4; ++h) {
                    const float nm = std::max(M[h], m[h]), c_old = std::exp(M[h] - nm), c_new = std::exp(m[h] - nm);
                    for (int j = 0; j < 64; ++j) A[h * 64 + j] = A[h * 64 + j] * c_old + a[h * 64 + j] * c_new;
                    L[h] = L[h] * c_old + l[h] * c_new;
                    M[h] = nm;
                }
            }
            REQUIRE(lg.size() == lg_ref.size());
            for (size_t i = 0; i < lg.size(); ++i) REQUIRE(lg[i] == Approx(lg_ref[i]).margin(1e-5));
            for (int h = 0; h < 4; ++h) {
                CHECK(mx[h] == Approx(M[h]).margin(1e-5));
                CHECK(sum[h] == Approx(L[h]).epsilon(1e-5));
                CHECK(rel_error(acc, A, h * 64, 64) < 1e-5);
            }
            // Without windows the parts are exactly the tokens of `all`: normalized outputs agree.
            if (bits == 4.0) {
                std::vector<const KVCache*> no_window = {&parts[0], &parts[3]};
                std::vector<float> a(q.size()), m(4), l(4), expect(q.size());
                KVCache::attend_stats(no_window, q, a, m, l);
                KVCache both(cfg);
                both.append(std::span(K).first(40 * 128), std::span(V).first(40 * 128));
                both.append(std::span(K).subspan(115 * 128), std::span(V).subspan(115 * 128));
                both.attend(q, expect, false);
                for (int h = 0; h < 4; ++h) {
                    for (int j = 0; j < 64; ++j) a[h * 64 + j] /= l[h];
                    CHECK(rel_error(a, expect, h * 64, 64) < 1e-5);
                }
            }
        }
    }
    // Errors: different shapes, all empty, null, wrong sizes. None changes a cache.
    auto cfg = cache_config(4, 2, 64, 4, 4, 0);
    KVCache a(cfg), empty(cfg);
    auto other = cfg;
    other.seed ^= 1;
    other.head_dim = 32;
    other.heads = 8;  // the same floats per token, another shape
    KVCache b(other);
    const auto K = tqkv_test::gaussian_vectors(10, 128, 1);
    a.append(K, K);
    b.append(K, K);
    const auto before = a.save();
    const auto q = tqkv_test::gaussian_vectors(1, 4 * 64, 3);
    std::vector<float> acc(q.size()), mx(4), sum(4);
    std::vector<const KVCache*> differ = {&a, &b}, none = {&empty}, null = {&a, nullptr}, ok = {&a, &empty};
    CHECK_FALSE(a.same_codes(b));
    CHECK(a.same_codes(empty));
    CHECK_THROWS_WITH(KVCache::attend_stats(differ, q, acc, mx, sum), Catch::Contains("differ"));
    const float bad_scales[] = {1.0f, NAN}, two_scales[] = {1.0f, 2.0f}, one_scale[] = {1.0f};
    CHECK_THROWS_WITH(KVCache::attend_stats(ok, q, acc, mx, sum, {}, bad_scales), Catch::Contains("value scale"));
    CHECK_THROWS_WITH(KVCache::attend_stats(ok, q, acc, mx, sum, {}, one_scale), Catch::Contains("value_scales"));
    std::fill(mx.begin(), mx.end(), NAN);
    CHECK_THROWS_WITH(KVCache::attend_stats(ok, q, acc, mx, sum, {}, two_scales, true), Catch::Contains("continue"));
    CHECK_THROWS_WITH(KVCache::attend_stats(none, q, acc, mx, sum), Catch::Contains("empty"));
    CHECK_THROWS_WITH(KVCache::attend_stats(null, q, acc, mx, sum), Catch::Contains("null"));
    CHECK_THROWS_WITH(KVCache::attend_stats({}, q, acc, mx, sum), Catch::Contains("no caches"));
    std::vector<float> lg_bad(4 * 9);
    CHECK_THROWS_WITH(KVCache::attend_stats(ok, q, acc, mx, sum, lg_bad), Catch::Contains("logits"));
    std::vector<float> acc_bad(5);
    CHECK_THROWS_WITH(KVCache::attend_stats(ok, q, acc_bad, mx, sum), Catch::Contains("acc"));
    KVCache::attend_stats(ok, q, acc, mx, sum);
    CHECK(a.save() == before);
}

// The tiers of a budgeted cache: caches of different bit widths (integer, fractional with high
// channels, prod keys), seeds, scales and norm formats, scored in one online softmax that starts
// from statistics computed elsewhere, each cache's values times its own factor. The reference merges
// each cache's own single-cache statistics by hand.
TEST_CASE("attend_stats over caches of mixed bit widths: one online softmax, value scales, continued statistics", "[cache][kernels]") {
    const int H = 4, KH = 1, D = 64, r = H / KH;
    const auto K = tqkv_test::gaussian_vectors(300, KH * D, 21), V = tqkv_test::gaussian_vectors(300, KH * D, 22);
    const auto q = tqkv_test::gaussian_vectors(1, H * D, 23);
    for (const std::string& kern : available_kernels()) {
        CAPTURE(kern);
        struct Part {
            double kb, vb;
            Method km;
            int window;
            float scale, vscale;
            NormFormat norm;
            uint64_t seed;
            size_t tokens;
        };
        const Part spec[] = {
            {4, 4, Method::Mse, 0, 0.f, 1.0f, NormFormat::F16, 1, 70},      // tier 1
            {4, 4, Method::Mse, 0, 0.f, 1.0f, NormFormat::F16, 1, 33},      // tier 1 again: shares its tables
            {3.5, 2.5, Method::Mse, 0, 0.14f, 1.1f, NormFormat::F16, 2, 64},  // fractional: two segments per side
            {2, 2, Method::Mse, 8, 0.15f, 1.3f, NormFormat::F16, 3, 45},    // with an exact window
            {3, 1, Method::Prod, 0, 0.f, 1.2f, NormFormat::F32, 4, 40},     // prod keys, fp32 norms
            {2, 2, Method::Mse, 0, 0.15f, 1.3f, NormFormat::F16, 3, 0},     // empty: skipped
            {1, 3, Method::Mse, 0, 0.f, 0.9f, NormFormat::F16, 5, 48},
        };
        std::vector<KVCache> caches;
        std::vector<float> vscales;
        size_t t0 = 0, total = 0;
        for (const Part& p : spec) {
            auto c = cache_config(H, KH, D, p.kb, p.vb, p.window, p.km);
            c.scale = p.scale;
            c.norm = p.norm;
            c.seed = p.seed;
            c.kernel = kern;
            if (p.kb != std::floor(p.kb)) c.key_high_channels = {0, 5, 9, 10, 11, 20, 30, 31, 40, 41, 50, 52, 60, 61, 62, 63,
                                                                 1, 2, 3, 4, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18, 19, 21};
            if (p.vb != std::floor(p.vb)) c.value_high_channels = {63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 51, 49, 48, 47, 46,
                                                                   45, 44, 43, 42, 39, 38, 37, 36, 35, 34, 33, 32, 29, 28, 27, 26};
            caches.emplace_back(c);
            if (p.tokens)
                caches.back().append(std::span(K).subspan(t0 * D, p.tokens * D), std::span(V).subspan(t0 * D, p.tokens * D));
            t0 += p.tokens, total += p.tokens;
            vscales.push_back(p.vscale);
        }
        // Statistics of 5 "exact" tokens attended elsewhere, to continue from.
        std::vector<float> A0(size_t(r) * D, 0.f), M0(r), L0(r, 0.f);
        for (int h = 0; h < r; ++h) {
            M0[h] = -1e30f;
            std::vector<float> s(5);
            for (int t = 0; t < 5; ++t) {
                double dot = 0;
                for (int j = 0; j < D; ++j) dot += double(q[size_t(h) * D + j]) * K[(295 + t) * D + j];
                s[t] = float(dot / 8.0);
                M0[h] = std::max(M0[h], s[t]);
            }
            for (int t = 0; t < 5; ++t) {
                const float w = std::exp(s[t] - M0[h]);
                L0[h] += w;
                for (int j = 0; j < D; ++j) A0[size_t(h) * D + j] += w * V[(295 + t) * D + j];
            }
        }
        std::vector<const KVCache*> ptrs;
        for (auto& c : caches) ptrs.push_back(&c);
        for (const bool cont : {false, true}) {
            CAPTURE(cont);
            std::vector<float> acc = A0, mx = M0, sum = L0, lg(size_t(r) * total);
            if (!cont) std::fill(acc.begin(), acc.end(), 0.f), std::fill(mx.begin(), mx.end(), -INFINITY), std::fill(sum.begin(), sum.end(), 0.f);
            std::vector<float> M = mx, L = sum, A = acc, lg_ref;
            KVCache::attend_stats(ptrs, q, acc, mx, sum, lg, vscales, cont);
            for (size_t i = 0; i < caches.size(); ++i) {
                const KVCache& p = caches[i];
                if (p.tokens() == 0) continue;
                std::vector<float> a(q.size()), m(r), l(r), g(size_t(r) * p.tokens());
                p.attend_stats(q, a, m, l, g);
                lg_ref.insert(lg_ref.end(), g.begin(), g.end());
                for (int h = 0; h < r; ++h) {
                    const float nm = std::max(M[h], m[h]), c_old = std::exp(M[h] - nm), c_new = std::exp(m[h] - nm);
                    for (int j = 0; j < D; ++j) A[h * D + j] = A[h * D + j] * c_old + vscales[i] * a[h * D + j] * c_new;
                    L[h] = L[h] * c_old + l[h] * c_new;
                    M[h] = nm;
                }
            }
            REQUIRE(lg.size() == lg_ref.size());
            for (size_t i = 0; i < lg.size(); ++i) REQUIRE(lg[i] == Approx(lg_ref[i]).margin(1e-5));
            for (int h = 0; h < r; ++h) {
                CHECK(mx[h] == Approx(M[h]).margin(1e-5));
                CHECK(sum[h] == Approx(L[h]).epsilon(1e-5));
                CHECK(rel_error(acc, A, size_t(h) * D, D) < 1e-5);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The attention window (CacheConfig::attention_window: Mistral's sliding_window)

namespace {

// Fractional rates' high channels for the window tests (any fixed choice).
std::vector<int> some_high_channels(double bits, int dim) {
    std::vector<int> h(size_t(std::lround((bits - std::floor(bits)) * dim)));
    for (size_t i = 0; i < h.size(); ++i) h[i] = int(3 * i % size_t(dim));
    return h;
}

}  // namespace

TEST_CASE("attention window: a query sees exactly the last W tokens, on every kernel and both precisions", "[cache][swa]") {
    // Caches with the window, and a twin without: the same codes (a token's codes depend neither on
    // its position nor on the kernel). Query head h of token t points at the key of token t - W, the
    // newest one outside the window, so attending to one token too many moves the output far
    // (checked against the twin's unwindowed attention). The references are computed once per case
    // (scalar tables, decode-then-exact in double); each kernel and precision then runs only the
    // fused path. Cost: 0.1 s natively, ~2 s under qemu.
    struct Case {
        int heads, kv_heads, dim;
        double kb, vb;
        Method km;
        int window;   // exact recent window (not the attention window)
        size_t aw;    // attention window
        std::vector<size_t> chunks;
    };
    const Case cases[] = {
        {4, 2, 64, 4, 4, Method::Mse, 0, 40, {5, 45, 1, 1, 20, 1}},      // codes only: against the twin's decoded tokens too
        {2, 1, 64, 3, 2, Method::Mse, 0, 1, {33, 2, 1, 10}},             // W = 1: each query sees its own token
        {4, 2, 64, 3, 3, Method::Prod, 8, 33, {40, 1, 1, 6}},            // prod keys, exact window < W
        {8, 2, 64, 2.5, 3.5, Method::Mse, 40, 5, {20, 60, 1, 8}},        // fractional rates, exact window > W
    };
    for (const auto& cs : cases) {
        CacheConfig cfg = cache_config(cs.heads, cs.kv_heads, cs.dim, cs.kb, cs.vb, cs.window, cs.km);
        if (cs.kb != std::floor(cs.kb)) cfg.key_high_channels = some_high_channels(cs.kb, cs.dim);
        if (cs.vb != std::floor(cs.vb)) cfg.value_high_channels = some_high_channels(cs.vb, cs.dim);
        cfg.kernel = "scalar";
        cfg.block_tokens = 32;
        size_t total = 0;
        for (size_t n : cs.chunks) total += n;
        const size_t row = size_t(cs.kv_heads) * cs.dim, qrow = size_t(cs.heads) * cs.dim;
        const int d = cs.dim, r = cs.heads / cs.kv_heads;
        const auto K = tqkv_test::gaussian_vectors(total, int(row), 1);
        const auto V = tqkv_test::gaussian_vectors(total, int(row), 2);
        auto Q = tqkv_test::gaussian_vectors(total, int(qrow), 3);
        for (size_t t = cs.aw; t < total; ++t)
            for (int h = 0; h < cs.heads; ++h)
                for (int j = 0; j < d; ++j) {
                    float& q = Q[t * qrow + size_t(h) * d + j];
                    q = 0.3f * q + 2.0f * K[(t - cs.aw) * row + size_t(h / r) * d + j];
                }
        // The references, per chunk: the windowed cache's decode-then-exact path, and (every token
        // coded) exact attention over the twin's decoded last W tokens.
        std::vector<float> ref(total * qrow), twin_ref(total * qrow);
        double unwindowed = 0;
        {
            CacheConfig wcfg = cfg;
            wcfg.attention_window = cs.aw;
            KVCache a(wcfg), twin = a.empty_like();  // (empty_like: the codecs built once)
            twin.set_attention_window(0);
            size_t t0 = 0;
            for (size_t n : cs.chunks) {
                const auto keys = std::span(K).subspan(t0 * row, n * row), values = std::span(V).subspan(t0 * row, n * row);
                a.append(keys, values);
                twin.append(keys, values);
                CHECK(a.dropped_tokens() == (t0 + 1 > cs.aw ? t0 + 1 - cs.aw : 0));  // the chunk's first query's window
                a.attend_reference(std::span(Q).subspan(t0 * qrow, n * qrow), std::span(ref).subspan(t0 * qrow, n * qrow), true);
                for (int kvh = 0; kvh < cs.kv_heads && cs.window == 0; ++kvh) {
                    const auto DK = twin.decode_keys(kvh), DV = twin.decode_values(kvh);
                    for (size_t t = t0; t < t0 + n; ++t) {
                        const size_t first = t + 1 > cs.aw ? t + 1 - cs.aw : 0;
                        for (int hh = 0; hh < r; ++hh) {
                            const size_t at = t * qrow + size_t(kvh * r + hh) * d;
                            const auto want = exact_attention(&Q[at], &DK[first * d], &DV[first * d], t + 1 - first, d, a.scale());
                            const auto all = exact_attention(&Q[at], DK.data(), DV.data(), t + 1, d, a.scale());
                            std::copy(want.begin(), want.end(), twin_ref.begin() + long(at));
                            std::vector<float> w(want.begin(), want.end()), wall(all.begin(), all.end());
                            unwindowed = std::max(unwindowed, rel_error(wall, w, 0, size_t(d)));
                        }
                    }
                }
                t0 += n;
            }
            CHECK(twin.dropped_tokens() == 0);
        }
        if (cs.window == 0) CHECK(unwindowed > 0.3);  // the window matters for these queries
        for (const auto& kernel : available_kernels()) {
            CacheConfig wcfg = cfg;
            wcfg.kernel = kernel;
            wcfg.attention_window = cs.aw;
            const KVCache proto(wcfg);
            for (Precision prec : {Precision::Exact, Precision::Fast}) {
                KVCache a = proto.empty_like();
                a.set_precision(prec);
                // exact: the fused path's 1e-4 (measured up to 2.4e-5, AVX2's fixed-point 4-bit key
                // tables); fast: integer tables (measured up to 0.0067, K4V4).
                const double tol = prec == Precision::Exact ? 1e-4 : 0.03;
                double worst_ref = 0, worst_twin = 0;
                size_t t0 = 0;
                for (size_t n : cs.chunks) {
                    a.append(std::span(K).subspan(t0 * row, n * row), std::span(V).subspan(t0 * row, n * row));
                    std::vector<float> out(n * qrow);
                    a.attend(std::span(Q).subspan(t0 * qrow, n * qrow), out, true);
                    for (size_t i = 0; i < n * size_t(cs.heads); ++i) {
                        std::vector<float> o(out.begin() + long(i * d), out.begin() + long(i * d) + d);
                        std::vector<float> x(ref.begin() + long(t0 * qrow + i * d), ref.begin() + long(t0 * qrow + i * d) + d);
                        worst_ref = std::max(worst_ref, rel_error(o, x, 0, size_t(d)));
                        if (cs.window == 0) {
                            std::vector<float> y(twin_ref.begin() + long(t0 * qrow + i * d), twin_ref.begin() + long(t0 * qrow + i * d) + d);
                            worst_twin = std::max(worst_twin, rel_error(o, y, 0, size_t(d)));
                        }
                    }
                    t0 += n;
                }
                INFO(kernel << (prec == Precision::Exact ? " exact" : " fast") << " d=" << d << " K" << cs.kb << "V" << cs.vb
                            << " w=" << cs.window << " W=" << cs.aw << ": vs the reference " << worst_ref
                            << ", vs the twin's last W tokens " << worst_twin << ", unwindowed vs windowed " << unwindowed);
                CHECK(worst_ref < tol);
                CHECK(worst_twin < tol);
                CHECK(a.tokens() == total);
            }
        }
    }
}

TEST_CASE("attention window: larger than the context changes nothing, bit for bit", "[cache][swa]") {
    for (const auto& kernel : available_kernels())
        for (Precision prec : {Precision::Exact, Precision::Fast}) {
            CacheConfig cfg = cache_config(4, 2, 64, 4, 3, 16);
            cfg.kernel = kernel;
            cfg.precision = prec;
            KVCache plain(cfg);
            cfg.attention_window = 101;  // the last query (position 100) sees all 101 tokens
            KVCache a(cfg);
            const auto K = tqkv_test::gaussian_vectors(101, 128, 4), V = tqkv_test::gaussian_vectors(101, 128, 5);
            const auto Q = tqkv_test::gaussian_vectors(30, 256, 6);
            for (auto [from, n] : {std::pair{size_t(0), size_t(71)}, std::pair{size_t(71), size_t(30)}}) {
                a.append(std::span(K).subspan(from * 128, n * 128), std::span(V).subspan(from * 128, n * 128));
                plain.append(std::span(K).subspan(from * 128, n * 128), std::span(V).subspan(from * 128, n * 128));
            }
            std::vector<float> x(Q.size()), y(Q.size());
            a.attend(Q, x, true);
            plain.attend(Q, y, true);
            CHECK(x == y);
            CHECK(a.dropped_tokens() == 0);
            CHECK(a.bytes_used() == plain.bytes_used());
        }
}

TEST_CASE("attention window: memory stays bounded as tokens stream past it", "[cache][swa]") {
    // Decode 3000 tokens through W = 100 (block 32): the cache holds the window's blocks, not the
    // context's. Cost: 0.02 s natively, ~1 s under qemu.
    CacheConfig cfg = cache_config(4, 2, 64, 4, 4, 16);
    cfg.block_tokens = 32;
    KVCache plain(cfg);
    cfg.attention_window = 100;
    KVCache a(cfg);
    const size_t row = 128, total = 3000;
    const auto K = tqkv_test::gaussian_vectors(total, int(row), 7);
    const auto V = tqkv_test::gaussian_vectors(total, int(row), 8);
    a.append(std::span(K).first(400 * row), std::span(V).first(400 * row));  // a prefill chunk longer than W
    plain.append(K, V);  // the same tokens without the window (in one chunk: the same codes)
    size_t most = 0, most_blocks = 0;
    const auto& m = CacheInternals::impl(a);
    for (size_t t = 400; t < total; ++t) {
        a.append(std::span(K).subspan(t * row, row), std::span(V).subspan(t * row, row));
        CHECK(a.dropped_tokens() == t + 1 - 100);
        if (t >= 1000) most = std::max(most, a.bytes_used()), most_blocks = std::max(most_blocks, m.held_blocks());
    }
    // Held: the window (100 tokens, 4 blocks of 32 when it straddles them) and the block being
    // filled, plus arena growth of an eighth of what is held (one block at this size).
    CHECK(most_blocks <= 6);
    size_t arena_blocks = 0;
    for (const auto& ar : m.arenas) arena_blocks += ar.blocks;
    CHECK(arena_blocks <= 6);
    CHECK(most <= a.table_bytes() + 6 * a.block_bytes() + 64 * 1024);  // (+ ring, block table)
    CHECK(CacheInternals::impl(plain).held_blocks() > 10 * most_blocks);  // the same tokens without the window
    // The codes of dropped tokens still held (in the first block) are zeros.
    for (size_t t = m.first_block * 32; t < a.dropped_tokens(); ++t)
        for (int h = 0; h < 2; ++h) {
            const uint8_t* g = m.group(h, t);
            for (auto* side : {&m.keys(), &m.values()})
                for (const auto& s : side->segs) {
                    const uint8_t* norm = g + s.norm_off + (t % 32) * m.norm_bytes;
                    CHECK((norm[0] | norm[1]) == 0);
                }
        }
    CHECK(a.format_bytes() < 0.1 * plain.format_bytes());
    // Per token held (the window's 100), not per position: at least a coded token's bytes.
    CHECK(a.bytes_per_token() == Approx(double(a.bytes_used()) / 100));
    CHECK(a.bytes_per_token() > a.compressed_bytes_per_token());
}

TEST_CASE("attention window: truncate, save/load after dropping, refusals", "[cache][swa][errors]") {
    CacheConfig cfg = cache_config(4, 2, 64, 3, 3, 8, Method::Prod);
    cfg.block_tokens = 32;
    cfg.attention_window = 20;
    const size_t row = 128, qrow = 256;
    const auto K = tqkv_test::gaussian_vectors(200, int(row), 9), V = tqkv_test::gaussian_vectors(200, int(row), 10);
    const auto Q = tqkv_test::gaussian_vectors(200, int(qrow), 11);
    auto feed = [&](KVCache& c, size_t from, size_t n) {
        c.append(std::span(K).subspan(from * row, n * row), std::span(V).subspan(from * row, n * row));
    };
    auto attend_last = [&](const KVCache& c, size_t n) {  // the queries of the last n tokens
        std::vector<float> out(n * qrow);
        c.attend(std::span(Q).subspan((c.tokens() - n) * qrow, n * qrow), out, true);
        return out;
    };
    KVCache a(cfg);
    feed(a, 0, 100);
    feed(a, 100, 10);  // drops the tokens before 100 + 1 - 20 = 81
    REQUIRE(a.dropped_tokens() == 81);
    const auto before = a.save();

    SECTION("truncate across the dropped point: a clear error, nothing changed") {
        CHECK_THROWS_WITH(a.truncate(99), Catch::Contains("dropped") && Catch::Contains("keep at least 100"));
        CHECK_THROWS_WITH(a.truncate(0), Catch::Contains("attention window of 20"));
        CHECK(a.save() == before);
        // Queries further back than the last chunk need dropped tokens: refused.
        CHECK_THROWS_WITH(attend_last(a, 11), Catch::Contains("dropped"));
        std::vector<float> ref(11 * qrow);
        CHECK_THROWS_WITH(a.attend_reference(std::span(Q).subspan(99 * qrow, 11 * qrow), ref), Catch::Contains("dropped"));
    }
    SECTION("a rollback within the last chunk: the same cache as never having gone further") {
        a.truncate(101);  // the earliest allowed: the next query (position 101) sees tokens from 82 > 81
        KVCache b(cfg);
        feed(b, 0, 100);
        feed(b, 100, 1);
        CHECK(a.save() == b.save());
        feed(a, 101, 30);
        feed(b, 101, 30);
        CHECK(attend_last(a, 30) == attend_last(b, 30));
        CHECK(a.dropped_tokens() == 82);
        a.truncate(101);  // back to the start of the last chunk
        CHECK_THROWS_WITH(a.truncate(100), Catch::Contains("keep at least 101"));
    }
    SECTION("save/load after dropping: the same attention and the same future") {
        KVCache b = KVCache::load(before);
        CHECK(b.dropped_tokens() == 81);
        CHECK(b.config().attention_window == 20);
        CHECK(b.save() == before);
        b.set_precision(Precision::Exact);
        CHECK(attend_last(a, 1) == attend_last(b, 1));  // (the exact rows of the last chunk are not saved)
        feed(a, 110, 50);
        feed(b, 110, 50);
        CHECK(attend_last(a, 50) == attend_last(b, 50));
        CHECK(a.save() == b.save());
        // Dropped tokens are not in the file: far smaller than the same cache without the window.
        CacheConfig plain_cfg = cfg;
        plain_cfg.attention_window = 0;
        KVCache plain(plain_cfg);
        feed(plain, 0, 160);
        CHECK(a.save().size() < plain.save().size());
    }
    SECTION("hostile window fields: clear errors") {
        // Offsets in a one-layer file without high channels or means: attention_window at 100,
        // tokens 108, compressed 116, dropped 124.
        auto put = [](std::vector<uint8_t> b, size_t at, uint64_t v) {
            for (int i = 0; i < 8; ++i) b[at + size_t(i)] = uint8_t(v >> (8 * i));
            fix_crc(b);
            return b;
        };
        CHECK_THROWS_WITH(KVCache::load(put(before, 100, 0)), Catch::Contains("inconsistent dropped"));   // no window
        CHECK_THROWS_WITH(KVCache::load(put(before, 100, 40)), Catch::Contains("inconsistent dropped"));  // the next query needs more
        CHECK_THROWS_WITH(KVCache::load(put(before, 100, uint64_t(1) << 40)), Catch::Contains("2^28"));
        CHECK_THROWS_WITH(KVCache::load(put(before, 124, 111)), Catch::Contains("inconsistent dropped"));
        CHECK_THROWS_WITH(KVCache::load(put(before, 124, 30)), Catch::Contains("truncated"));  // promises more groups than present
        CHECK_THROWS_WITH(KVCache::load(put(before, 124, 96)), Catch::Contains("load"));  // consistent counts, fewer groups than the bytes hold
    }
    SECTION("refusals") {
        CHECK_THROWS_WITH(a.set_attention_window(30), Catch::Contains("dropped"));
        a.set_attention_window(20);  // the same window: fine
        std::vector<float> acc(qrow), mx(4), se(4);
        CHECK_THROWS_WITH(a.attend_stats(std::span(Q).first(qrow), acc, mx, se), Catch::Contains("attention window"));
        CacheConfig cap = cfg;
        cap.max_tokens = 1000;
        CHECK_THROWS_WITH(KVCache(cap), Catch::Contains("max_tokens"));
        cap.attention_window = 0;
        KVCache c(cap);
        CHECK_THROWS_WITH(c.set_attention_window(5), Catch::Contains("max_tokens"));
        a.clear();
        CHECK(a.dropped_tokens() == 0);
        a.set_attention_window(30);
        feed(a, 0, 40);
        CHECK(a.dropped_tokens() == 0);
        feed(a, 40, 1);
        CHECK(a.dropped_tokens() == 11);
    }
}
