// The C ABI (tqkv.h): every call, and every misuse giving an error code instead of undefined
// behaviour: null / destroyed / wrong-kind handles, wrong buffer lengths, NaN, capacity, bad
// bytes. Also writes the golden files of the wasm tests when TQKV_GOLDEN_DIR is set (see
// web/test/golden.test.mjs): native-coded caches and codec outputs the wasm build must match.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "tqkv/cache.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/rng.hpp"
#include "tqkv/tqkv.h"

namespace {

std::vector<float> gauss(size_t n, uint64_t seed, float scale = 1.0f) {
    tqkv::Rng rng(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = float(rng.normal()) * scale;
    return v;
}

struct Cache {
    tqkv_cache h = nullptr;
    explicit Cache(const tqkv_cache_config& cfg) { REQUIRE(tqkv_cache_create(&cfg, &h) == TQKV_OK); }
    ~Cache() {
        if (h) tqkv_cache_destroy(h);
    }
};

tqkv_cache_config small_config() {
    tqkv_cache_config cfg;
    REQUIRE(tqkv_cache_config_init(&cfg) == TQKV_OK);
    cfg.layers = 2;
    cfg.heads = 4;
    cfg.kv_heads = 2;
    cfg.head_dim = 64;
    cfg.key_bits = 4;
    cfg.value_bits = 3;
    cfg.window = 8;
    cfg.block_tokens = 32;
    return cfg;
}

size_t tokens(tqkv_cache h, int layer) {
    size_t n = 12345;
    REQUIRE(tqkv_cache_tokens(h, layer, &n) == TQKV_OK);
    return n;
}

std::vector<uint8_t> save(tqkv_cache h) {
    size_t size = 0;
    REQUIRE(tqkv_cache_save(h, nullptr, 0, &size) == TQKV_ERR_BUFFER_TOO_SMALL);
    std::vector<uint8_t> bytes(size);
    REQUIRE(tqkv_cache_save(h, bytes.data(), bytes.size(), &size) == TQKV_OK);
    REQUIRE(size == bytes.size());
    return bytes;
}

bool contains(const char* s, const char* what) { return std::string(s).find(what) != std::string::npos; }

}  // namespace

TEST_CASE("C ABI: status names, version, default kernel, config init", "[capi]") {
    CHECK(tqkv_abi_version() == TQKV_ABI_VERSION);
    CHECK(std::string(tqkv_status_name(TQKV_OK)) == "ok");
    CHECK(std::string(tqkv_status_name(TQKV_ERR_BAD_DATA)) == "bad data");
    CHECK(std::string(tqkv_status_name(999)) == "unknown status");
    CHECK(std::strlen(tqkv_default_kernel()) > 0);
    tqkv_cache_config cfg;
    REQUIRE(tqkv_cache_config_init(&cfg) == TQKV_OK);
    CHECK(cfg.struct_size == sizeof cfg);
    CHECK(tqkv_cache_config_size() == sizeof cfg);
    CHECK(cfg.layers == 1);
    CHECK(cfg.heads == 4);
    CHECK(cfg.head_dim == 128);
    CHECK(cfg.key_bits == 4);
    CHECK(cfg.block_tokens == 64);
    CHECK(cfg.kernel == nullptr);
    CHECK(cfg.precision == TQKV_PRECISION_FAST);  // the default, as in C++
    CHECK(tqkv_cache_config_init(nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    tqkv_codec_config cc;
    REQUIRE(tqkv_codec_config_init(&cc) == TQKV_OK);
    CHECK(cc.struct_size == sizeof cc);
    CHECK(tqkv_codec_config_size() == sizeof cc);
    CHECK(cc.dim == 128);
    CHECK(tqkv_codec_config_init(nullptr) == TQKV_ERR_INVALID_ARGUMENT);
}

TEST_CASE("C ABI: cache create, append, attend, tokens, bytes, truncate, clear, destroy", "[capi]") {
    tqkv_cache_config cfg = small_config();
    Cache c(cfg);
    const size_t row = 2 * 64, q = 4 * 64;
    CHECK(tokens(c.h, 0) == 0);
    size_t empty_bytes = 0;
    REQUIRE(tqkv_cache_bytes_used(c.h, &empty_bytes) == TQKV_OK);
    CHECK(empty_bytes > 0);

    const auto k = gauss(100 * row, 1), v = gauss(100 * row, 2);
    for (int layer = 0; layer < 2; ++layer)
        REQUIRE(tqkv_cache_append(c.h, layer, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    CHECK(tokens(c.h, 0) == 100);
    CHECK(tokens(c.h, 1) == 100);
    size_t bytes = 0;
    REQUIRE(tqkv_cache_bytes_used(c.h, &bytes) == TQKV_OK);
    CHECK(bytes > empty_bytes);

    // attend equals the C++ class built the same way (layer l seeds with derive_seed(seed, l)).
    tqkv::CacheConfig cc;
    cc.heads = 4;
    cc.kv_heads = 2;
    cc.head_dim = 64;
    cc.key_bits = 4;
    cc.value_bits = 3;
    cc.window = 8;
    cc.block_tokens = 32;
    cc.seed = tqkv::derive_seed(cfg.seed, 1);
        tqkv::KVCache ref(cc);
    ref.append(k, v);
    const auto qs = gauss(3 * q, 3);
    std::vector<float> out(3 * q), want(3 * q);
    REQUIRE(tqkv_cache_attend(c.h, 1, qs.data(), qs.size(), out.data(), out.size(), 1) == TQKV_OK);
    ref.attend(qs, want, true);
    CHECK(out == want);
    REQUIRE(tqkv_cache_attend(c.h, 1, qs.data(), qs.size(), out.data(), out.size(), 0) == TQKV_OK);
    ref.attend(qs, want, false);
    CHECK(out == want);

    tqkv_cache_config got;
    got.struct_size = sizeof got;
    REQUIRE(tqkv_cache_get_config(c.h, &got) == TQKV_OK);
    CHECK(got.layers == 2);
    CHECK(got.kv_heads == 2);
    CHECK(got.value_bits == 3);
    CHECK(got.window == 8);
    CHECK(got.kernel == nullptr);
    CHECK(tqkv_cache_kernel(c.h) != nullptr);

    REQUIRE(tqkv_cache_truncate(c.h, 40) == TQKV_OK);
    CHECK(tokens(c.h, 0) == 40);
    CHECK(tokens(c.h, 1) == 40);
    REQUIRE(tqkv_cache_clear(c.h) == TQKV_OK);
    CHECK(tokens(c.h, 0) == 0);
    REQUIRE(tqkv_cache_destroy(c.h) == TQKV_OK);
    // Double destroy and use after destroy: errors, never crashes.
    CHECK(tqkv_cache_destroy(c.h) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "invalid handle"));
    CHECK(tqkv_cache_append(c.h, 0, k.data(), row, v.data(), row) == TQKV_ERR_INVALID_HANDLE);
    size_t n = 7;
    CHECK(tqkv_cache_tokens(c.h, 0, &n) == TQKV_ERR_INVALID_HANDLE);
    CHECK(n == 7);
    CHECK(tqkv_cache_kernel(c.h) == nullptr);
    c.h = nullptr;
}

TEST_CASE("C ABI: bad configurations and handles", "[capi][errors]") {
    tqkv_cache_config cfg = small_config();
    tqkv_cache h = nullptr;
    CHECK(tqkv_cache_create(nullptr, &h) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_create(&cfg, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    auto bad = [&](auto&& edit, const char* msg) {
        tqkv_cache_config c = small_config();
        edit(c);
        tqkv_cache out = nullptr;
        CHECK(tqkv_cache_create(&c, &out) == TQKV_ERR_INVALID_ARGUMENT);
        CHECK(out == nullptr);
        CHECK(contains(tqkv_last_error(), msg));
    };
    bad([](auto& c) { c.struct_size = 12; }, "struct_size");
    bad([](auto& c) { c.heads = 3; }, "kv_heads");
    bad([](auto& c) { c.layers = 0; }, "layers");
    bad([](auto& c) { c.head_dim = 2; }, "head_dim");
    bad([](auto& c) { c.key_bits = 9; }, "keys");
    bad([](auto& c) { c.key_bits = std::nan(""); }, "finite");
    bad([](auto& c) { c.value_bits = 2.5; }, "values");  // fractional without high channels
    bad([](auto& c) { c.key_method = 7; }, "method");
    bad([](auto& c) { c.norm_format = 3; }, "norm format");
    bad([](auto& c) { c.block_tokens = 40; }, "block_tokens");
    bad([](auto& c) { c.window = -1; }, "window");
    bad([](auto& c) { c.max_tokens = uint64_t(1) << 40; }, "max_tokens");
    bad([](auto& c) { c.n_key_high_channels = 3; }, "NULL");
    bad([](auto& c) { c.kernel = "sse9"; }, "unknown kernel");

    // Fractional rates through the C ABI.
    std::vector<int32_t> high(32);
    for (int i = 0; i < 32; ++i) high[i] = 2 * i;
    tqkv_cache_config frac = small_config();
    frac.key_bits = 3.5;
    frac.n_key_high_channels = 32;
    frac.key_high_channels = high.data();
    REQUIRE(tqkv_cache_create(&frac, &h) == TQKV_OK);
    REQUIRE(tqkv_cache_destroy(h) == TQKV_OK);

    // Null handles, forged handles, a codec handle where a cache is expected.
    CHECK(tqkv_cache_destroy(nullptr) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "null handle"));
    CHECK(tqkv_cache_clear(reinterpret_cast<tqkv_cache>(uintptr_t(0x12345679))) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_cache_truncate(reinterpret_cast<tqkv_cache>(uintptr_t(8 * 1000 + 1)), 0) == TQKV_ERR_INVALID_HANDLE);
    tqkv_codec_config ccfg;
    tqkv_codec_config_init(&ccfg);
    tqkv_codec codec;
    REQUIRE(tqkv_codec_create(&ccfg, &codec) == TQKV_OK);
    CHECK(tqkv_cache_clear(reinterpret_cast<tqkv_cache>(codec)) == TQKV_ERR_INVALID_HANDLE);
    CHECK(contains(tqkv_last_error(), "not a cache"));
    CHECK(tqkv_codec_destroy(codec) == TQKV_OK);
    CHECK(tqkv_codec_destroy(codec) == TQKV_ERR_INVALID_HANDLE);
}

TEST_CASE("C ABI: wrong lengths, NaN, capacity leave the cache unchanged", "[capi][errors]") {
    tqkv_cache_config cfg = small_config();
    cfg.max_tokens = 64;
    Cache c(cfg);
    const size_t row = 2 * 64, q = 4 * 64;
    const auto k = gauss(50 * row, 5), v = gauss(50 * row, 6);
    REQUIRE(tqkv_cache_append(c.h, 0, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    const auto before = save(c.h);

    CHECK(tqkv_cache_append(c.h, 0, k.data(), row - 1, v.data(), row - 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "kv_heads * head_dim"));
    CHECK(tqkv_cache_append(c.h, 0, k.data(), row, v.data(), 2 * row) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_append(c.h, 0, k.data(), 0, v.data(), 0) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_append(c.h, 0, nullptr, row, v.data(), row) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "NULL"));
    CHECK(tqkv_cache_append(c.h, 2, k.data(), row, v.data(), row) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "layer 2 out of range"));
    CHECK(tqkv_cache_append(c.h, -1, k.data(), row, v.data(), row) == TQKV_ERR_INVALID_ARGUMENT);
    auto nan = k;
    nan[row + 3] = std::numeric_limits<float>::quiet_NaN();
    CHECK(tqkv_cache_append(c.h, 0, nan.data(), 2 * row, v.data(), 2 * row) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "not finite"));
    auto inf = v;
    inf[0] = std::numeric_limits<float>::infinity();
    CHECK(tqkv_cache_append(c.h, 0, k.data(), row, inf.data(), row) == TQKV_ERR_INVALID_ARGUMENT);
    auto huge = k;  // a norm beyond fp16
    for (size_t i = 0; i < 64; ++i) huge[i] = 1e5f;
    CHECK(tqkv_cache_append(c.h, 0, huge.data(), row, v.data(), row) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_append(c.h, 0, k.data(), 20 * row, v.data(), 20 * row) == TQKV_ERR_CAPACITY);
    CHECK(contains(tqkv_last_error(), "capacity"));

    std::vector<float> qs = gauss(q, 7), out(q);
    CHECK(tqkv_cache_attend(c.h, 0, qs.data(), q - 1, out.data(), q - 1, 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_attend(c.h, 0, qs.data(), q, out.data(), q + 4, 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_attend(c.h, 0, qs.data(), q, nullptr, q, 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_attend(c.h, 1, qs.data(), q, out.data(), q, 1) == TQKV_ERR_INVALID_ARGUMENT);  // layer 1 empty
    CHECK(contains(tqkv_last_error(), "empty"));
    qs[5] = std::numeric_limits<float>::quiet_NaN();
    CHECK(tqkv_cache_attend(c.h, 0, qs.data(), q, out.data(), q, 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_truncate(c.h, 51) == TQKV_ERR_INVALID_ARGUMENT);  // layer 1 holds 0 tokens
    CHECK(tqkv_cache_tokens(c.h, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_bytes_used(c.h, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    tqkv_cache_config got;
    got.struct_size = 3;
    CHECK(tqkv_cache_get_config(c.h, &got) == TQKV_ERR_INVALID_ARGUMENT);

    CHECK(save(c.h) == before);
    CHECK(tokens(c.h, 0) == 50);
    // Capacity is per layer: 14 more tokens fit, then nothing.
    REQUIRE(tqkv_cache_append(c.h, 0, k.data(), 14 * row, v.data(), 14 * row) == TQKV_OK);
    CHECK(tqkv_cache_append(c.h, 0, k.data(), row, v.data(), row) == TQKV_ERR_CAPACITY);
}

TEST_CASE("C ABI: release_chunk_rows frees a prefill chunk's exact rows, per layer or all", "[capi][prefill]") {
    const tqkv_cache_config cfg = small_config();  // window 8, 2 layers, 2 KV heads of 64
    const size_t row = 2 * 64, n = 200;
    const auto k = gauss(n * row, 50), v = gauss(n * row, 51);
    Cache c(cfg);
    for (int l = 0; l < 2; ++l) REQUIRE(tqkv_cache_append(c.h, l, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    size_t full = 0, one = 0, both = 0;
    REQUIRE(tqkv_cache_bytes_used(c.h, &full) == TQKV_OK);
    REQUIRE(tqkv_cache_release_chunk_rows(c.h, 1) == TQKV_OK);
    REQUIRE(tqkv_cache_bytes_used(c.h, &one) == TQKV_OK);
    CHECK(full - one == (n - 8) * row * 2 * sizeof(float));
    REQUIRE(tqkv_cache_release_chunk_rows(c.h, -1) == TQKV_OK);
    REQUIRE(tqkv_cache_bytes_used(c.h, &both) == TQKV_OK);
    CHECK(one - both == (n - 8) * row * 2 * sizeof(float));
    CHECK(tqkv_cache_release_chunk_rows(c.h, 2) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "-1: every layer"));
    CHECK(tqkv_cache_release_chunk_rows(nullptr, -1) == TQKV_ERR_INVALID_HANDLE);
}

TEST_CASE("C ABI: precision (config field, spec option, set_precision on a loaded cache)", "[capi][fast]") {
    tqkv_cache_config cfg = small_config();
    cfg.precision = TQKV_PRECISION_EXACT;
    const size_t row = 2 * 64, q = 4 * 64;
    const auto k = gauss(90 * row, 40), v = gauss(90 * row, 41), qs = gauss(q, 42);
    std::vector<float> exact(q), fast(q), out(q);
    Cache e(cfg);
    cfg.precision = TQKV_PRECISION_FAST;
    Cache f(cfg);
    for (tqkv_cache h : {e.h, f.h}) REQUIRE(tqkv_cache_append(h, 0, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(e.h, 0, qs.data(), q, exact.data(), q, 1) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(f.h, 0, qs.data(), q, fast.data(), q, 1) == TQKV_OK);
    CHECK(fast != exact);  // the fast kernels ran
    double err = 0, norm = 0;
    for (size_t i = 0; i < q; ++i) err += (fast[i] - exact[i]) * (fast[i] - exact[i]), norm += exact[i] * exact[i];
    CHECK(std::sqrt(err / norm) < 0.05);
    tqkv_cache_config got;
    REQUIRE(tqkv_cache_config_init(&got) == TQKV_OK);
    REQUIRE(tqkv_cache_get_config(f.h, &got) == TQKV_OK);
    CHECK(got.precision == TQKV_PRECISION_FAST);

    // Not saved: a loaded cache (here of the exact one) is fast, the default, until
    // set_precision; then each precision's bits.
    const auto bytes = save(e.h);
    tqkv_cache h = nullptr;
    REQUIRE(tqkv_cache_load(bytes.data(), bytes.size(), nullptr, &h) == TQKV_OK);
    REQUIRE(tqkv_cache_get_config(h, &got) == TQKV_OK);
    CHECK(got.precision == TQKV_PRECISION_FAST);
    REQUIRE(tqkv_cache_attend(h, 0, qs.data(), q, out.data(), q, 1) == TQKV_OK);
    CHECK(out == fast);
    REQUIRE(tqkv_cache_set_precision(h, TQKV_PRECISION_EXACT) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(h, 0, qs.data(), q, out.data(), q, 1) == TQKV_OK);
    CHECK(out == exact);
    REQUIRE(tqkv_cache_set_precision(h, TQKV_PRECISION_FAST) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(h, 0, qs.data(), q, out.data(), q, 1) == TQKV_OK);
    CHECK(out == fast);
    CHECK(tqkv_cache_set_precision(h, 2) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "0 exact, 1 fast"));
    CHECK(tqkv_cache_destroy(h) == TQKV_OK);
    CHECK(tqkv_cache_set_precision(h, TQKV_PRECISION_FAST) == TQKV_ERR_INVALID_HANDLE);

    // Out of range in the struct: rejected, nothing created.
    cfg.precision = -1;
    tqkv_cache bad = nullptr;
    CHECK(tqkv_cache_create(&cfg, &bad) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(bad == nullptr);

    // Specs: the base's precision unless the spec says exact / fast.
    tqkv_cache_config base = small_config();
    base.precision = TQKV_PRECISION_FAST;
    for (const auto& [spec, want] : {std::pair{"K4V3", TQKV_PRECISION_FAST}, std::pair{"K4V3-exact", TQKV_PRECISION_EXACT}}) {
        tqkv_cache s = nullptr;
        REQUIRE(tqkv_cache_create_spec(spec, &base, nullptr, &s) == TQKV_OK);
        REQUIRE(tqkv_cache_get_config(s, &got) == TQKV_OK);
        CHECK(got.precision == want);
        CHECK(tqkv_cache_destroy(s) == TQKV_OK);
    }
    base.precision = TQKV_PRECISION_EXACT;
    tqkv_cache s = nullptr;
    REQUIRE(tqkv_cache_create_spec("K4V3-fast", &base, nullptr, &s) == TQKV_OK);
    REQUIRE(tqkv_cache_get_config(s, &got) == TQKV_OK);
    CHECK(got.precision == TQKV_PRECISION_FAST);
    CHECK(tqkv_cache_destroy(s) == TQKV_OK);
}

TEST_CASE("C ABI: save and load round-trip; bad bytes are rejected", "[capi][errors]") {
    tqkv_cache_config cfg = small_config();
    Cache c(cfg);
    const size_t row = 2 * 64, q = 4 * 64;
    const auto k = gauss(77 * row, 8), v = gauss(77 * row, 9);
    for (int layer = 0; layer < 2; ++layer)
        REQUIRE(tqkv_cache_append(c.h, layer, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    const auto bytes = save(c.h);
    size_t size = 0;
    std::vector<uint8_t> small(10);
    CHECK(tqkv_cache_save(c.h, small.data(), small.size(), &size) == TQKV_ERR_BUFFER_TOO_SMALL);
    CHECK(size == bytes.size());
    CHECK(tqkv_cache_save(c.h, nullptr, 0, nullptr) == TQKV_ERR_INVALID_ARGUMENT);

    tqkv_cache h2 = nullptr;
    REQUIRE(tqkv_cache_load(bytes.data(), bytes.size(), nullptr, &h2) == TQKV_OK);
    CHECK(save(h2) == bytes);
    const auto qs = gauss(q, 10);
    std::vector<float> o1(q), o2(q);
    REQUIRE(tqkv_cache_attend(c.h, 1, qs.data(), q, o1.data(), q, 1) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(h2, 1, qs.data(), q, o2.data(), q, 1) == TQKV_OK);
    CHECK(o1 == o2);
    tqkv_cache h3 = nullptr;
    REQUIRE(tqkv_cache_load(bytes.data(), bytes.size(), "scalar", &h3) == TQKV_OK);
    CHECK(std::string(tqkv_cache_kernel(h3)) == "scalar");
    CHECK(tqkv_cache_destroy(h3) == TQKV_OK);
    CHECK(tqkv_cache_destroy(h2) == TQKV_OK);

    tqkv_cache out = nullptr;
    CHECK(tqkv_cache_load(bytes.data(), bytes.size(), "sse9", &out) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_load(nullptr, 5, nullptr, &out) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_load(bytes.data(), bytes.size(), nullptr, nullptr) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_load(bytes.data(), 0, nullptr, &out) == TQKV_ERR_BAD_DATA);
    CHECK(tqkv_cache_load(bytes.data(), bytes.size() - 1, nullptr, &out) == TQKV_ERR_BAD_DATA);
    auto flipped = bytes;
    flipped[flipped.size() / 2] ^= 0x10;
    CHECK(tqkv_cache_load(flipped.data(), flipped.size(), nullptr, &out) == TQKV_ERR_BAD_DATA);
    CHECK(contains(tqkv_last_error(), "CRC"));
    auto magic = bytes;
    magic[0] = 'X';
    CHECK(tqkv_cache_load(magic.data(), magic.size(), nullptr, &out) == TQKV_ERR_BAD_DATA);
    CHECK(contains(tqkv_last_error(), "magic"));
    std::vector<uint8_t> junk(1000, 0xab);
    CHECK(tqkv_cache_load(junk.data(), junk.size(), nullptr, &out) == TQKV_ERR_BAD_DATA);
    CHECK(out == nullptr);
}

TEST_CASE("C ABI: codecs encode, decode, dot; misuse", "[capi][errors]") {
    tqkv_codec_config cfg;
    REQUIRE(tqkv_codec_config_init(&cfg) == TQKV_OK);
    cfg.dim = 64;
    cfg.bits = 3;
    tqkv_codec c = nullptr;
    REQUIRE(tqkv_codec_create(&cfg, &c) == TQKV_OK);
    size_t bpv = 0;
    REQUIRE(tqkv_codec_bytes_per_vector(c, &bpv) == TQKV_OK);
    CHECK(bpv == 2 + 64 * 3 / 8);
    const auto x = gauss(5 * 64, 11);
    std::vector<uint8_t> codes(5 * bpv);
    REQUIRE(tqkv_codec_encode(c, x.data(), x.size(), codes.data(), codes.size()) == TQKV_OK);
    tqkv::CodecConfig cc;
    cc.dim = 64;
    cc.bits = 3;
    CHECK(codes == tqkv::make_codec(cc)->encode(x));
    std::vector<float> dec(5 * 64), scores(5);
    REQUIRE(tqkv_codec_decode(c, codes.data(), codes.size(), dec.data(), dec.size()) == TQKV_OK);
    double err = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) err += (x[i] - dec[i]) * (x[i] - dec[i]), norm += x[i] * x[i];
    CHECK(err / norm < 0.05);
    REQUIRE(tqkv_codec_dot(c, x.data(), 64, codes.data(), codes.size(), scores.data(), 5) == TQKV_OK);
    double self = 0;
    for (int i = 0; i < 64; ++i) self += double(x[i]) * dec[i];
    CHECK(scores[0] == Approx(self).epsilon(1e-4));

    CHECK(tqkv_codec_encode(c, x.data(), 63, codes.data(), bpv) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_encode(c, x.data(), 64, codes.data(), bpv + 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_encode(c, nullptr, 64, codes.data(), bpv) == TQKV_ERR_INVALID_ARGUMENT);
    auto nan = x;
    nan[1] = std::numeric_limits<float>::quiet_NaN();
    const auto codes_before = codes;
    CHECK(tqkv_codec_encode(c, nan.data(), 64, codes.data(), bpv) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(codes == codes_before);
    CHECK(tqkv_codec_decode(c, codes.data(), bpv - 1, dec.data(), 64) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_decode(c, codes.data(), bpv, dec.data(), 65) == TQKV_ERR_INVALID_ARGUMENT);
    auto inf_norm = codes;
    inf_norm[0] = 0x00;
    inf_norm[1] = 0x7c;  // fp16 +inf
    CHECK(tqkv_codec_decode(c, inf_norm.data(), bpv, dec.data(), 64) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_dot(c, x.data(), 63, codes.data(), bpv, scores.data(), 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_dot(c, x.data(), 64, codes.data(), bpv, scores.data(), 2) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_dot(c, nan.data(), 64, codes.data(), bpv, scores.data(), 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_codec_bytes_per_vector(c, nullptr) == TQKV_ERR_INVALID_ARGUMENT);

    tqkv_codec_config badc = cfg;
    badc.bits = 0;
    tqkv_codec d = nullptr;
    CHECK(tqkv_codec_create(&badc, &d) == TQKV_ERR_INVALID_ARGUMENT);
    badc = cfg;
    badc.method = 9;
    CHECK(tqkv_codec_create(&badc, &d) == TQKV_ERR_INVALID_ARGUMENT);
    badc = cfg;
    badc.struct_size = 0;
    CHECK(tqkv_codec_create(&badc, &d) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(d == nullptr);
    badc = cfg;
    badc.method = TQKV_METHOD_QJL;
    badc.bits = 1;
    REQUIRE(tqkv_codec_create(&badc, &d) == TQKV_OK);
    CHECK(tqkv_codec_destroy(d) == TQKV_OK);

    REQUIRE(tqkv_codec_destroy(c) == TQKV_OK);
    CHECK(tqkv_codec_encode(c, x.data(), 64, codes.data(), bpv) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_codec_bytes_per_vector(nullptr, &bpv) == TQKV_ERR_INVALID_HANDLE);
    CHECK(tqkv_codec_bytes_per_vector(reinterpret_cast<tqkv_codec>(uintptr_t(1)), &bpv) == TQKV_ERR_INVALID_HANDLE);
}

TEST_CASE("C ABI: dense fp32 baseline", "[capi]") {
    const int H = 4, KH = 2, d = 32;
    const size_t T = 300;
    const auto q = gauss(H * d, 12), k = gauss(KH * T * d, 13), v = gauss(KH * T * d, 14);
    std::vector<float> out(H * d);
    REQUIRE(tqkv_dense_attention_f32(H, KH, d, T, q.data(), q.size(), k.data(), v.data(), k.size(), out.data(),
                                     out.size()) == TQKV_OK);
    // head 0 against a direct softmax
    std::vector<double> p(T);
    double mx = -1e300, sum = 0;
    for (size_t t = 0; t < T; ++t) {
        double s = 0;
        for (int j = 0; j < d; ++j) s += double(q[j]) * k[t * d + j];
        p[t] = s / std::sqrt(double(d));
        mx = std::max(mx, p[t]);
    }
    for (auto& x : p) sum += (x = std::exp(x - mx));
    for (int j = 0; j < d; ++j) {
        double a = 0;
        for (size_t t = 0; t < T; ++t) a += p[t] * v[t * d + j];
        CHECK(out[j] == Approx(a / sum).margin(1e-4));
    }
    CHECK(tqkv_dense_attention_f32(3, KH, d, T, q.data(), q.size(), k.data(), v.data(), k.size(), out.data(),
                                   out.size()) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_dense_attention_f32(H, KH, d, T, q.data(), q.size(), k.data(), v.data(), k.size() - 1, out.data(),
                                   out.size()) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_dense_attention_f32(H, KH, d, T, nullptr, q.size(), k.data(), v.data(), k.size(), out.data(),
                                   out.size()) == TQKV_ERR_INVALID_ARGUMENT);
}

// Golden files for the wasm tests (web/test): TQKV_GOLDEN_DIR=dir writes the native build's
// serialized caches and codec outputs for fixed inputs that web/test/golden.mjs regenerates
// bit for bit in JavaScript (a xorshift32 stream scaled to [-2, 2)).
namespace {

std::vector<float> js_stream(size_t n, uint32_t seed) {
    std::vector<float> v(n);
    uint32_t s = seed ? seed : 1;
    for (auto& x : v) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        x = float(int32_t(s >> 8) - (1 << 23)) / float(1 << 22);  // exact: a 24-bit integer / 2^22
    }
    return v;
}

void write_file(const std::string& path, const void* data, size_t n) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), std::streamsize(n));
    REQUIRE(f.good());
}

}  // namespace

TEST_CASE("C ABI: golden files for the wasm tests (TQKV_GOLDEN_DIR)", "[capi][golden]") {
    const char* dir = std::getenv("TQKV_GOLDEN_DIR");
    if (!dir || !*dir) {
        SUCCEED("TQKV_GOLDEN_DIR not set: nothing to write");
        return;
    }
    // Keep in sync with web/test/golden.mjs.
    struct Case {
        const char* name;
        int layers, heads, kv_heads, dim;
        double kbits, vbits;
        int kmethod, window, block, tokens;
    };
    const Case cases[] = {
        {"k4v4", 2, 4, 2, 128, 4, 4, 0, 0, 64, 150},
        {"k3v2w16", 1, 8, 2, 64, 3, 2, 0, 16, 32, 100},
        {"prod4v3", 1, 2, 1, 96, 4, 3, 1, 8, 64, 70},
        {"k2v1", 1, 2, 2, 80, 2, 1, 0, 0, 32, 90},
    };
    for (const Case& c : cases) {
        tqkv_cache_config cfg;
        tqkv_cache_config_init(&cfg);
        cfg.layers = c.layers;
        cfg.heads = c.heads;
        cfg.kv_heads = c.kv_heads;
        cfg.head_dim = c.dim;
        cfg.key_bits = c.kbits;
        cfg.value_bits = c.vbits;
        cfg.key_method = c.kmethod;
        cfg.window = c.window;
        cfg.block_tokens = c.block;
        cfg.kernel = "scalar";
        Cache cache(cfg);
        const size_t row = size_t(c.kv_heads) * c.dim, q = size_t(c.heads) * c.dim;
        for (int l = 0; l < c.layers; ++l) {
            const auto k = js_stream(size_t(c.tokens) * row, 1000 + 2 * l), v = js_stream(size_t(c.tokens) * row, 1001 + 2 * l);
            REQUIRE(tqkv_cache_append(cache.h, l, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
        }
        const auto bytes = save(cache.h);
        write_file(std::string(dir) + "/" + c.name + ".tqkv", bytes.data(), bytes.size());
        const auto qs = js_stream(4 * q, 77);
        std::vector<float> out(4 * q);
        REQUIRE(tqkv_cache_attend(cache.h, c.layers - 1, qs.data(), qs.size(), out.data(), out.size(), 1) == TQKV_OK);
        write_file(std::string(dir) + "/" + c.name + ".attend.f32", out.data(), out.size() * 4);
    }
    {
        // A calibrated cache from a spec (the npm package's createCache({ spec, calibration })): keys
        // and values with channel offsets (what centring removes), the calibration from other
        // tokens of the same kind. Files: the calibration's bytes, the cache's bytes and the
        // attention of 4 queries (kernel scalar). Keep in sync with web/test/golden.test.mjs.
        const int layers = 2, heads = 4, kv_heads = 2, dim = 128, tokens = 150, calib_tokens = 200;
        const size_t row = size_t(kv_heads) * dim, q = size_t(heads) * dim;
        auto offset_kv = [&](uint32_t seed, size_t n) {
            auto k = js_stream(n * row, seed), v = js_stream(n * row, seed + 1);
            for (size_t i = 0; i < k.size(); ++i) {  // float sums: one rounding, as in JavaScript
                k[i] += float(int(i % row % 7) - 3);
                v[i] += float(int(i % row % 5) - 2) * 0.5f;
            }
            return std::pair{k, v};
        };
        tqkv_calibration cal = nullptr;
        REQUIRE(tqkv_calibration_new(layers, kv_heads, dim, &cal) == TQKV_OK);
        for (int l = 0; l < layers; ++l) {
            const auto [k, v] = offset_kv(3000 + 2 * l, calib_tokens);
            REQUIRE(tqkv_calibration_add(cal, l, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
        }
        size_t n = 0;
        REQUIRE(tqkv_calibration_save(cal, nullptr, 0, &n) == TQKV_ERR_BUFFER_TOO_SMALL);
        std::vector<uint8_t> cal_bytes(n);
        REQUIRE(tqkv_calibration_save(cal, cal_bytes.data(), n, &n) == TQKV_OK);
        write_file(std::string(dir) + "/k35v25w16.calibration", cal_bytes.data(), n);
        tqkv_cache_config base;
        tqkv_cache_config_init(&base);
        base.layers = layers;
        base.heads = heads;
        base.kv_heads = kv_heads;
        base.head_dim = dim;
        base.kernel = "scalar";
        tqkv_cache h = nullptr;
        REQUIRE(tqkv_cache_create_spec("K3.5V2.5-w16", &base, cal, &h) == TQKV_OK);
        tqkv_calibration_destroy(cal);
        for (int l = 0; l < layers; ++l) {
            const auto [k, v] = offset_kv(1000 + 2 * l, tokens);
            REQUIRE(tqkv_cache_append(h, l, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
        }
        const auto bytes = save(h);
        write_file(std::string(dir) + "/k35v25w16.calibrated.tqkv", bytes.data(), bytes.size());
        const auto qs = js_stream(4 * q, 77);
        std::vector<float> out(4 * q);
        REQUIRE(tqkv_cache_attend(h, layers - 1, qs.data(), qs.size(), out.data(), out.size(), 1) == TQKV_OK);
        write_file(std::string(dir) + "/k35v25w16.calibrated.attend.f32", out.data(), out.size() * 4);
        tqkv_cache_destroy(h);
    }
    // Codec outputs: mse 4-bit d=128, prod 3-bit d=64, qjl d=100.
    struct CodecCase {
        const char* name;
        int dim;
        double bits;
        int method;
    };
    for (const CodecCase& cc : {CodecCase{"mse4d128", 128, 4, 0}, CodecCase{"prod3d64", 64, 3, 1}, CodecCase{"qjl1d100", 100, 1, 2}}) {
        tqkv_codec_config cfg;
        tqkv_codec_config_init(&cfg);
        cfg.dim = cc.dim;
        cfg.bits = cc.bits;
        cfg.method = cc.method;
        cfg.kernel = "scalar";
        tqkv_codec codec;
        REQUIRE(tqkv_codec_create(&cfg, &codec) == TQKV_OK);
        size_t bpv = 0;
        tqkv_codec_bytes_per_vector(codec, &bpv);
        const auto x = js_stream(size_t(20) * cc.dim, 4242);
        std::vector<uint8_t> codes(20 * bpv);
        REQUIRE(tqkv_codec_encode(codec, x.data(), x.size(), codes.data(), codes.size()) == TQKV_OK);
        write_file(std::string(dir) + "/" + cc.name + ".codes", codes.data(), codes.size());
        tqkv_codec_destroy(codec);
    }
}

// The reverse direction: caches serialized by the wasm build (web/test/golden.test.mjs writes
// NAME.wasm.tqkv next to the golden files) load natively, hold the native bytes, and attend
// like the native cache.
TEST_CASE("C ABI: caches serialized by the wasm build load natively (TQKV_GOLDEN_DIR)", "[capi][golden-load]") {
    const char* dir = std::getenv("TQKV_GOLDEN_DIR");
    if (!dir || !*dir) {
        SUCCEED("TQKV_GOLDEN_DIR not set: nothing to check");
        return;
    }
    auto read = [](const std::string& path, std::vector<uint8_t>& out) {
        std::ifstream f(path, std::ios::binary);
        if (!f) return false;
        out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
        return true;
    };
    int checked = 0;
    for (const char* name : {"k4v4", "k3v2w16", "prod4v3", "k2v1"}) {
        std::vector<uint8_t> wasm, native, attend;
        if (!read(std::string(dir) + "/" + name + ".wasm.tqkv", wasm)) continue;
        REQUIRE(read(std::string(dir) + "/" + name + ".tqkv", native));
        REQUIRE(read(std::string(dir) + "/" + name + ".attend.f32", attend));
        INFO(name);
        CHECK(wasm == native);
        tqkv_cache h = nullptr;
        // The golden attention was computed with the scalar kernel (the AVX2 default uses fixed-point
        // key tables and differs by more than this tolerance).
        REQUIRE(tqkv_cache_load(wasm.data(), wasm.size(), "scalar", &h) == TQKV_OK);
        tqkv_cache_config cfg;
        cfg.struct_size = sizeof cfg;
        REQUIRE(tqkv_cache_get_config(h, &cfg) == TQKV_OK);
        const size_t q = size_t(cfg.heads) * cfg.head_dim;
        const auto qs = js_stream(4 * q, 77);
        std::vector<float> out(4 * q), want(4 * q);
        std::memcpy(want.data(), attend.data(), want.size() * 4);
        REQUIRE(tqkv_cache_attend(h, cfg.layers - 1, qs.data(), qs.size(), out.data(), out.size(), 1) == TQKV_OK);
        // With a window, the golden attend saw the exact rows of the appended chunk, which the bytes
        // do not keep: only the last query (the next decode step) reads the same tokens exactly.
        const size_t from = cfg.window > 0 ? 3 * q : 0;
        for (size_t i = from; i < out.size(); ++i) CHECK(out[i] == Approx(want[i]).margin(1e-6).epsilon(1e-5));
        tqkv_cache_destroy(h);
        ++checked;
    }
    CHECK(checked == 4);
}

// The block of input formats and attention statistics (tqkv.h, end): fp16 input == the widened
// floats bit for bit, head-major == token-major, attend_stats merged == attend, dot_many == dot.
TEST_CASE("C ABI: fp16 and head-major append, attend_ex, attend_stats, codec_dot_many", "[capi]") {
    const tqkv_cache_config cfg = small_config();
    const size_t row = 2 * 64, q = 4 * 64, n = 45;
    std::vector<uint16_t> kh(n * row), vh(n * row);
    tqkv::Rng rng(5);
    for (auto* h : {&kh, &vh})
        for (auto& x : *h) x = uint16_t(rng.below(0x7c00)) | uint16_t(rng.below(2) << 15);  // finite halves, subnormals too
    auto widen = [](const std::vector<uint16_t>& h) {
        std::vector<float> f(h.size());
        for (size_t i = 0; i < h.size(); ++i) f[i] = tqkv::half_to_float(h[i]);
        return f;
    };
    // keys only up to ~|65504|: scale so the fp16 norm of a vector stays finite
    for (auto* h : {&kh, &vh})
        for (auto& x : *h) x = tqkv::float_to_half(tqkv::half_to_float(x) * 1e-3f);
    const auto kf = widen(kh), vf = widen(vh);
    auto heads_major = [&](const std::vector<float>& x, size_t tokens, size_t heads, size_t dim) {
        std::vector<float> out(x.size());
        for (size_t t = 0; t < tokens; ++t)
            for (size_t h = 0; h < heads; ++h)
                std::copy_n(x.begin() + (t * heads + h) * dim, dim, out.begin() + (h * tokens + t) * dim);
        return out;
    };
    Cache a(cfg), b(cfg), c(cfg);
    REQUIRE(tqkv_cache_append(a.h, 1, kf.data(), kf.size(), vf.data(), vf.size()) == TQKV_OK);
    REQUIRE(tqkv_cache_append_ex(b.h, 1, kh.data(), kh.size(), vh.data(), vh.size(), TQKV_DTYPE_F16, TQKV_LAYOUT_TOKENS) ==
            TQKV_OK);
    const auto kt = heads_major(kf, n, 2, 64), vt = heads_major(vf, n, 2, 64);
    REQUIRE(tqkv_cache_append_ex(c.h, 1, kt.data(), kt.size(), vt.data(), vt.size(), TQKV_DTYPE_F32, TQKV_LAYOUT_HEADS) ==
            TQKV_OK);
    CHECK(save(a.h) == save(b.h));
    CHECK(save(a.h) == save(c.h));
    // errors: unknown dtype / layout, a head-major length that is not whole tokens; nothing changes
    CHECK(tqkv_cache_append_ex(b.h, 1, kh.data(), row, vh.data(), row, 7, TQKV_LAYOUT_TOKENS) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "unknown dtype 7"));
    CHECK(tqkv_cache_append_ex(b.h, 1, kh.data(), row, vh.data(), row, TQKV_DTYPE_F16, 9) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_cache_append_ex(c.h, 1, kt.data(), row - 1, vt.data(), row - 1, TQKV_DTYPE_F32, TQKV_LAYOUT_HEADS) ==
          TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "kv_heads * head_dim = 128"));
    std::vector<uint16_t> inf(kh.begin(), kh.begin() + row);
    inf[3] = 0x7c00;
    CHECK(tqkv_cache_append_ex(b.h, 1, inf.data(), row, vh.data(), row, TQKV_DTYPE_F16, TQKV_LAYOUT_TOKENS) ==
          TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "not finite"));
    CHECK(tokens(b.h, 1) == n);
    CHECK(save(a.h) == save(b.h));

    // attend_ex head-major == attend token-major (transposed)
    const size_t m = 2;
    const auto qs = gauss(m * q, 6);
    std::vector<float> o1(m * q), o2(m * q);
    REQUIRE(tqkv_cache_attend(a.h, 1, qs.data(), qs.size(), o1.data(), o1.size(), 1) == TQKV_OK);
    const auto qt = heads_major(qs, m, 4, 64);
    REQUIRE(tqkv_cache_attend_ex(a.h, 1, qt.data(), qt.size(), o2.data(), o2.size(), 1, TQKV_LAYOUT_HEADS) == TQKV_OK);
    CHECK(heads_major(o1, m, 4, 64) == o2);

    // attend_stats over two caches (tokens split at 20) merged == attend (non-causal) over all
    // (exact precision: the fast path's value weights are scaled per group by the group's largest,
    // so splitting the tokens at 20 moves the rounding, within its bound but past 1e-4)
    tqkv_cache_config cfg0 = cfg;
    cfg0.window = 0;
    cfg0.precision = TQKV_PRECISION_EXACT;
    Cache all(cfg0), first(cfg0), rest(cfg0);
    const size_t n1 = 20;
    REQUIRE(tqkv_cache_append(all.h, 0, kf.data(), kf.size(), vf.data(), vf.size()) == TQKV_OK);
    REQUIRE(tqkv_cache_append(first.h, 0, kf.data(), n1 * row, vf.data(), n1 * row) == TQKV_OK);
    REQUIRE(tqkv_cache_append(rest.h, 0, kf.data() + n1 * row, (n - n1) * row, vf.data() + n1 * row, (n - n1) * row) ==
            TQKV_OK);
    std::vector<float> want(m * q), acc1(m * q), acc2(m * q), m1(m * 4), m2(m * 4), s1(m * 4), s2(m * 4);
    REQUIRE(tqkv_cache_attend(all.h, 0, qs.data(), qs.size(), want.data(), want.size(), 0) == TQKV_OK);
    REQUIRE(tqkv_cache_attend_stats(first.h, 0, qs.data(), qs.size(), TQKV_LAYOUT_TOKENS, acc1.data(), acc1.size(),
                                    m1.data(), m1.size(), s1.data(), s1.size()) == TQKV_OK);
    REQUIRE(tqkv_cache_attend_stats(rest.h, 0, qs.data(), qs.size(), TQKV_LAYOUT_TOKENS, acc2.data(), acc2.size(),
                                    m2.data(), m2.size(), s2.data(), s2.size()) == TQKV_OK);
    for (size_t i = 0; i < m * 4; ++i) {
        const float X = std::max(m1[i], m2[i]);
        const double w1 = std::exp(double(m1[i] - X)), w2 = std::exp(double(m2[i] - X));
        for (size_t j = 0; j < 64; ++j) {
            const double merged = (w1 * acc1[i * 64 + j] + w2 * acc2[i * 64 + j]) / (w1 * s1[i] + w2 * s2[i]);
            CHECK(merged == Approx(want[i * 64 + j]).margin(1e-5).epsilon(1e-4));
        }
    }
    std::vector<float> small(3);
    CHECK(tqkv_cache_attend_stats(first.h, 0, qs.data(), qs.size(), TQKV_LAYOUT_TOKENS, small.data(), small.size(),
                                  m1.data(), m1.size(), s1.data(), s1.size()) == TQKV_ERR_INVALID_ARGUMENT);

    // dot_many == dot per query
    tqkv_codec_config cc;
    REQUIRE(tqkv_codec_config_init(&cc) == TQKV_OK);
    cc.dim = 64;
    tqkv_codec codec;
    REQUIRE(tqkv_codec_create(&cc, &codec) == TQKV_OK);
    size_t bpv = 0;
    REQUIRE(tqkv_codec_bytes_per_vector(codec, &bpv) == TQKV_OK);
    const size_t nv = 30;
    std::vector<uint8_t> codes(nv * bpv);
    REQUIRE(tqkv_codec_encode(codec, kf.data(), nv * 64, codes.data(), codes.size()) == TQKV_OK);
    const auto qq = gauss(3 * 64, 7);
    std::vector<float> many(3 * nv), one(nv);
    REQUIRE(tqkv_codec_dot_many(codec, qq.data(), qq.size(), codes.data(), codes.size(), many.data(), many.size()) == TQKV_OK);
    for (size_t i = 0; i < 3; ++i) {
        REQUIRE(tqkv_codec_dot(codec, qq.data() + i * 64, 64, codes.data(), codes.size(), one.data(), one.size()) == TQKV_OK);
        CHECK(std::equal(one.begin(), one.end(), many.begin() + i * nv));
    }
    CHECK(tqkv_codec_dot_many(codec, qq.data(), qq.size(), codes.data(), codes.size(), many.data(), nv) ==
          TQKV_ERR_INVALID_ARGUMENT);
    tqkv_codec_destroy(codec);
}

TEST_CASE("C ABI: sliding attention window: old tokens dropped, kept by save/load, truncate refused below them", "[capi][swa]") {
    tqkv_cache_config cfg = small_config();
    Cache f(cfg), plain(cfg);
    REQUIRE(tqkv_cache_set_attention_window(f.h, 20) == TQKV_OK);
    const size_t row = 2 * 64, qrow = 4 * 64;
    const auto K = gauss(300 * row, 21), V = gauss(300 * row, 22), Q = gauss(qrow, 23);
    for (int layer = 0; layer < 2; ++layer)
        for (auto* h : {f.h, plain.h}) {
            REQUIRE(tqkv_cache_append(h, layer, K.data(), 200 * row, V.data(), 200 * row) == TQKV_OK);
            for (size_t t = 200; t < 300; ++t)  // decode: the prefill's arena goes once all its tokens are dropped
                REQUIRE(tqkv_cache_append(h, layer, K.data() + t * row, row, V.data() + t * row, row) == TQKV_OK);
        }
    CHECK(tokens(f.h, 0) == 300);
    size_t windowed = 0, full = 0;
    REQUIRE(tqkv_cache_bytes_used(f.h, &windowed) == TQKV_OK);
    REQUIRE(tqkv_cache_bytes_used(plain.h, &full) == TQKV_OK);
    CHECK(2 * windowed < full);  // 280 tokens dropped, their blocks freed
    std::vector<float> a(qrow), b(qrow), c(qrow);
    REQUIRE(tqkv_cache_attend(f.h, 1, Q.data(), qrow, a.data(), qrow, 1) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(plain.h, 1, Q.data(), qrow, b.data(), qrow, 1) == TQKV_OK);
    CHECK(a != b);
    // Saved with the window and the dropped tokens: the loaded cache attends the same.
    const auto bytes = save(f.h);
    CHECK(bytes.size() < save(plain.h).size());
    tqkv_cache h = nullptr;
    REQUIRE(tqkv_cache_load(bytes.data(), bytes.size(), nullptr, &h) == TQKV_OK);
    REQUIRE(tqkv_cache_set_precision(h, cfg.precision) == TQKV_OK);
    REQUIRE(tqkv_cache_attend(h, 1, Q.data(), qrow, c.data(), qrow, 1) == TQKV_OK);
    CHECK(a == c);
    CHECK(tqkv_cache_destroy(h) == TQKV_OK);
    // Refusals, nothing changed.
    CHECK(tqkv_cache_truncate(f.h, 250) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "dropped"));
    CHECK(tokens(f.h, 0) == 300);
    CHECK(tqkv_cache_set_attention_window(f.h, 30) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(save(f.h) == bytes);
    CHECK(tqkv_cache_set_attention_window(plain.h, (size_t(1) << 28) + 1) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "2^28"));
    REQUIRE(tqkv_cache_clear(f.h) == TQKV_OK);
    CHECK(tqkv_cache_set_attention_window(f.h, 30) == TQKV_OK);
}

TEST_CASE("C ABI: set_threads: attention on several threads gives the bits of one; bad counts refused", "[capi][threads]") {
    REQUIRE(tqkv_get_threads() == 1);
    CHECK(tqkv_set_threads(0) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(contains(tqkv_last_error(), "set_threads: 0 is out of range [1, 64]"));
    CHECK(tqkv_set_threads(65) == TQKV_ERR_INVALID_ARGUMENT);
    CHECK(tqkv_get_threads() == 1);

    tqkv_cache_config cfg = small_config();
    Cache c(cfg);
    const size_t row = 2 * 64, q = 4 * 64;
    // 5000 tokens: three work units per KV head (tqkv/cache.hpp AttendOptions::threads).
    const auto k = gauss(5000 * row, 1), v = gauss(5000 * row, 2), qs = gauss(3 * q, 3);
    REQUIRE(tqkv_cache_append(c.h, 0, k.data(), k.size(), v.data(), v.size()) == TQKV_OK);
    std::vector<float> one(3 * q), three(3 * q), acc1(q), acc3(q), m1(4), m3(4), s1(4), s3(4);
    REQUIRE(tqkv_cache_attend(c.h, 0, qs.data(), qs.size(), one.data(), one.size(), 1) == TQKV_OK);
    REQUIRE(tqkv_cache_attend_stats(c.h, 0, qs.data(), q, TQKV_LAYOUT_TOKENS, acc1.data(), q, m1.data(), 4, s1.data(), 4) ==
            TQKV_OK);
    REQUIRE(tqkv_set_threads(3) == TQKV_OK);
    CHECK(tqkv_get_threads() == 3);
    REQUIRE(tqkv_cache_attend(c.h, 0, qs.data(), qs.size(), three.data(), three.size(), 1) == TQKV_OK);
    REQUIRE(tqkv_cache_attend_stats(c.h, 0, qs.data(), q, TQKV_LAYOUT_TOKENS, acc3.data(), q, m3.data(), 4, s3.data(), 4) ==
            TQKV_OK);
#if defined(__wasm__)
    CHECK(tqkv_worker_threads() == 0);  // a WASI program has no workers: the caller ran every piece
#else
    CHECK(tqkv_worker_threads() >= 2);  // the pool started (natively: on first use)
#endif
    REQUIRE(tqkv_set_threads(1) == TQKV_OK);
    CHECK(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(acc1.data(), acc3.data(), acc1.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(m1.data(), m3.data(), m1.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(s1.data(), s3.data(), s1.size() * sizeof(float)) == 0);
}
