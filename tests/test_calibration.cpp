// Calibration (statistics, channels, serialization), cache specs, and the calibrated cache: centring
// and debiasing are exact in infinite precision (fused == reference, merged statistics == one
// softmax) and each of them does what it is for (tests that fail when the mechanism is off).
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

namespace {

// Rows [n][kv_heads][d] with channel offsets (what real keys have: RoPE pairs with a constant
// part) and channel scales: x = offset_c + scale_c * N(0, 1).
std::vector<float> offset_rows(size_t n, int kv_heads, int d, uint64_t seed, double offset, double spread = 1.0) {
    auto x = tqkv_test::gaussian_vectors(n, kv_heads * d, seed);
    for (size_t t = 0; t < n; ++t)
        for (int c = 0; c < kv_heads * d; ++c) {
            const int j = c % d;
            const double s = spread * (0.5 + double(j % 5) / 4.0);
            x[t * kv_heads * d + c] = float(offset * std::cos(0.3 * c) + s * x[t * kv_heads * d + c]);
        }
    return x;
}

Calibration calibration_of(const std::vector<float>& k, const std::vector<float>& v, int layers, int kv_heads, int d) {
    Calibration cal(layers, kv_heads, d);
    for (int l = 0; l < layers; ++l) cal.add(l, k, v);
    return cal;
}

double rel_error(const float* a, const float* b, size_t n) {
    double e = 0, s = 0;
    for (size_t i = 0; i < n; ++i) e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), s += double(b[i]) * b[i];
    return std::sqrt(e / s);
}

// Exact softmax attention of one query over K, V [T][d] (double precision): output and logits.
std::vector<double> exact_attention(const float* q, const float* K, const float* V, size_t T, int d, double scale,
                                    std::vector<double>* logits = nullptr) {
    std::vector<double> p(T), out(size_t(d), 0.0);
    double mx = -1e300, sum = 0;
    for (size_t t = 0; t < T; ++t) mx = std::max(mx, p[t] = tqkv_test::dot(q, K + t * d, d) * scale);
    if (logits) *logits = p;
    for (size_t t = 0; t < T; ++t) sum += (p[t] = std::exp(p[t] - mx));
    for (size_t t = 0; t < T; ++t)
        for (int j = 0; j < d; ++j) out[size_t(j)] += p[t] / sum * V[t * d + j];
    return out;
}

// Least-squares slope of y on x through the origin.
double slope(const std::vector<double>& x, const std::vector<double>& y) {
    double xy = 0, xx = 0;
    for (size_t i = 0; i < x.size(); ++i) xy += x[i] * y[i], xx += x[i] * x[i];
    return xy / xx;
}

}  // namespace

TEST_CASE("calibration: statistics, high channels, save and load", "[calibration]") {
    const int L = 2, KH = 2, d = 16;
    Calibration cal(L, KH, d);
    CHECK_FALSE(cal.complete());
    // Two tokens per channel: mean m, mean square m^2 + 1.
    std::vector<float> k(2 * KH * d), v(k.size());
    for (int c = 0; c < KH * d; ++c) {
        const float m = float(c) * 0.25f;
        k[size_t(c)] = m + 1, k[size_t(KH * d + c)] = m - 1;
        v[size_t(c)] = -m + 2, v[size_t(KH * d + c)] = -m - 2;
    }
    cal.add(0, k, v);
    cal.add(1, k, v);
    cal.add(1, k, v);
    CHECK(cal.complete());
    CHECK(cal.tokens(0) == 2);
    CHECK(cal.tokens(1) == 4);
    const auto km = cal.key_mean(1, 1), ks = cal.key_mean_square(1, 1), vs = cal.value_mean_square(0, 0);
    CHECK(km[3] == Approx((16 + 3) * 0.25));
    CHECK(ks[3] == Approx(km[3] * km[3] + 1));
    CHECK(vs[5] == Approx(5 * 0.25 * 5 * 0.25 + 4));
    // Centred, every channel has energy 1 (keys) and 4 (values): ties go to the lower channels;
    // uncentred, the largest means win.
    CHECK(cal.high_channels(0, true, 3, true) == std::vector<int>{0, 1, 2});
    CHECK(cal.high_channels(0, true, 3, false) == std::vector<int>{13, 14, 15});
    CHECK(cal.high_channels(0, false, 2, false, 0) == std::vector<int>{14, 15});
    // Queries: energy per KV head summed over its query heads.
    std::vector<float> q(4 * d, 2.0f);
    cal.add_queries(0, 4, q);
    CHECK(cal.query_mean_square(0, 1)[0] == Approx(8.0));
    CHECK(cal.query_tokens(0) == 1);

    const auto bytes = cal.save();
    const Calibration back = Calibration::load(bytes);
    CHECK(back == cal);
    CHECK(back.save() == bytes);

    // Errors name the problem and leave the statistics unchanged.
    std::vector<float> bad = k;
    bad[7] = std::nanf("");
    CHECK_THROWS_WITH(cal.add(0, bad, v), Catch::Contains("non-finite key"));
    CHECK_THROWS_WITH(cal.add(2, k, v), Catch::Contains("layer 2 out of range"));
    CHECK_THROWS_WITH(cal.add(0, std::span(k).first(5), std::span(v).first(5)), Catch::Contains("multiple of kv_heads"));
    CHECK_THROWS_WITH(cal.add_queries(0, 3, q), Catch::Contains("multiple of kv_heads"));
    CHECK_THROWS_WITH(Calibration(0, 1, 16), Catch::Contains("layers 1..1024"));
    CHECK(cal.save() == bytes);
}

TEST_CASE("calibration: hostile bytes give clear errors, never crashes", "[calibration][fuzz]") {
    Calibration cal(2, 1, 8);
    const auto k = offset_rows(5, 1, 8, 1, 2.0), v = offset_rows(5, 1, 8, 2, 1.0);
    cal.add(0, k, v);
    cal.add(1, k, v);
    const auto good = cal.save();
    auto fix_crc = [](std::vector<uint8_t> b) {
        uint32_t c = 0xffffffffu;
        for (size_t i = 0; i + 4 < b.size(); ++i) {
            c ^= b[i];
            for (int j = 0; j < 8; ++j) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        c = ~c;
        for (int i = 0; i < 4; ++i) b[b.size() - 4 + i] = uint8_t(c >> (8 * i));
        return b;
    };
    CHECK_THROWS_WITH(Calibration::load(std::vector<uint8_t>(good.begin(), good.begin() + 20)), Catch::Contains("truncated"));
    auto b = good;
    b[0] = 'X';
    CHECK_THROWS_WITH(Calibration::load(b), Catch::Contains("bad magic"));
    b = good;
    b[40] ^= 1;
    CHECK_THROWS_WITH(Calibration::load(b), Catch::Contains("CRC"));
    b = good;
    b[8] = 9;  // version
    CHECK_THROWS_WITH(Calibration::load(fix_crc(b)), Catch::Contains("version 9"));
    b = good;
    b[12] = 0xff, b[13] = 0xff;  // layers
    CHECK_THROWS_WITH(Calibration::load(fix_crc(b)), Catch::Contains("implausible shape"));
    b = good;
    b[20] = 16;  // head_dim 16: the payload no longer matches
    CHECK_THROWS_WITH(Calibration::load(fix_crc(b)), Catch::Contains("payload"));
    // A NaN statistic; a negative sum of squares; statistics without tokens; sum^2 > n * squares.
    const size_t stats = 8 + 16 + 2 * 16;  // first f64 of the key sums
    for (auto [off, val, msg] : {std::tuple{stats, std::nan(""), "non-finite"}, std::tuple{stats + 16 * 8, -1.0, "negative"},
                                 std::tuple{stats, 1e6, "inconsistent"}}) {
        b = good;
        std::memcpy(&b[off], &val, 8);
        CHECK_THROWS_WITH(Calibration::load(fix_crc(b)), Catch::Contains(msg));
    }
    b = good;
    std::memset(&b[24], 0, 8);  // layer 0 has no tokens, but sums
    CHECK_THROWS_WITH(Calibration::load(fix_crc(b)), Catch::Contains("without tokens"));
    // Every single-byte corruption of a valid file: an error or a valid calibration, never a crash.
    for (size_t i = 0; i < good.size(); i += 3) {
        b = good;
        b[i] ^= 0x5a;
        try {
            (void)Calibration::load(fix_crc(b));
        } catch (const std::invalid_argument&) {
        }
    }
}

TEST_CASE("cache specs: grammar, presets, errors", "[calibration][spec]") {
    const CacheSpec s = CacheSpec::parse("K3.5V2.5-w16-l1=K4V3-x7-nvd");
    CHECK(s.is_tqkv());
    CHECK(s.key_bits == 3.5);
    CHECK(s.value_bits == 2.5);
    CHECK(s.window == 16);
    CHECK(s.seed == 7);
    CHECK_FALSE(s.debias_values);
    CHECK(s.debias_keys);
    CHECK(s.layer_key_bits(1, 4) == 4);
    CHECK(s.layer_value_bits(0, 4) == 2.5);
    CHECK(CacheSpec::parse("K4V4-raw").center_keys == false);
    CHECK(CacheSpec::parse("q4_0").format == CacheSpec::Format::Q4_0);
    for (const auto& p : presets()) {
        INFO(p.name);
        const CacheSpec ps = CacheSpec::parse(p.name);
        CHECK(ps.text == p.name);
        CHECK(ps.key_bits == CacheSpec::parse(p.spec).key_bits);
    }
    CHECK(CacheSpec::parse("default").window == 16);
    for (const char* bad : {"", "K9V3", "K4", "K4V3-bogus", "K4V3-w", "K4V4-w2.5", "K4V4-t0", "K4V4-tinf", "K4V4-x-1",
                            "K0x10V4", "K4V4-l2000=K4V4", "K1V4-prod", "defaultx"}) {
        INFO(bad);
        CHECK_THROWS_WITH(CacheSpec::parse(bad), Catch::Contains("cache spec") && Catch::Contains("K<bits>V<bits>"));
    }
    CHECK_THROWS_WITH(CacheSpec::parse("K4V3-sk"), Catch::Contains("unknown option 'sk'"));
    CHECK_THROWS_WITH(CacheSpec::parse("K4V4-l5=K4V4").check_layers(4), Catch::Contains("layer 5 out of range"));
}

TEST_CASE("cache specs: layers counted from the end (l-1 = the last) and the boundary presets", "[calibration][spec]") {
    const CacheSpec s = CacheSpec::parse("K3V2-w16-l0=K4V3-l-1=K4V3.5-x3");
    REQUIRE(s.layer_rates.size() == 2);
    CHECK(s.layer_rates[1].layer == -1);
    CHECK(s.seed == 3);  // the options after it still parse
    // Resolved against the model's depth: the last layer of 6 is 5, of 10 is 9.
    for (int L : {2, 6, 10}) {
        INFO(L << " layers");
        CHECK(s.layer_key_bits(0, L) == 4);
        CHECK(s.layer_value_bits(L - 1, L) == 3.5);
        CHECK(s.layer_key_bits(L - 1, L) == 4);
        for (int l = 1; l < L - 1; ++l) CHECK((s.layer_key_bits(l, L) == 3 && s.layer_value_bits(l, L) == 2));
    }
    // One layer: both overrides name it, the later one wins (overrides apply in the order given).
    CHECK(s.layer_value_bits(0, 1) == 3.5);
    CHECK(CacheSpec::parse("K4V4-l-3=K2V2").layer_key_bits(1, 4) == 2);
    CHECK(CacheSpec::parse("K4V4-l-3=K2V2").layer_key_bits(2, 4) == 4);
    // Out of range for the model: a clear error naming both ways of counting.
    CHECK_THROWS_WITH(CacheSpec::parse("K4V4-l-5=K4V4").check_layers(4),
                      Catch::Contains("layer -5 out of range") && Catch::Contains("-1..-4 from the end"));
    CHECK_THROWS_WITH(CacheSpec::parse("K4V4-l-5=K4V4").layer_key_bits(0, 4), Catch::Contains("layer -5 out of range"));
    CHECK_NOTHROW(CacheSpec::parse("K4V4-l-4=K4V4").check_layers(4));
    for (const char* bad : {"K4V4-l-0=K4V4", "K4V4-l-1025=K4V4", "K4V4-l1024=K4V4", "K4V4-l-=K4V4", "K4V4-l--1=K4V4",
                            "K4V4-l-1", "K4V4-l", "K4V4-l-1.5=K4V4", "K4V4-l-1=K9V4", "l-1=K4V4"}) {
        INFO(bad);
        CHECK_THROWS_WITH(CacheSpec::parse(bad), Catch::Contains("cache spec"));
    }
    CHECK_NOTHROW(CacheSpec::parse("K4V4-l-1024=K4V4"));
    // The boundary presets: layer 0 and the last layer one bit higher than the uniform preset, in
    // the cache that is built, and the bits it stores count them (window and norms included).
    const int L = 6, KH = 2, d = 64;
    const auto K = offset_rows(64, KH, d, 71, 1.0), V = offset_rows(64, KH, d, 72, 1.0);
    const Calibration cal = calibration_of(K, V, L, KH, d);
    const CacheShape shape{L, 4, KH, d, 1024};
    for (auto [boundary, uniform] : {std::pair{"compact-b", "compact"}, std::pair{"balanced-b", "balanced"}}) {
        INFO(boundary);
        ModelKVCache b(shape, CacheSpec::parse(boundary), &cal), u(shape, CacheSpec::parse(uniform), &cal);
        for (int l = 0; l < L; ++l) {
            const double up = l == 0 || l == L - 1 ? 1.0 : 0.0;
            CHECK(b.layer(l).config().key_bits == u.layer(l).config().key_bits + up);
            CHECK(b.layer(l).config().value_bits == u.layer(l).config().value_bits + up);
        }
        const auto rows = offset_rows(200, KH, d, 73, 1.0);
        for (int l = 0; l < L; ++l) b.append(l, rows, rows), u.append(l, rows, rows);
        // Two layers of six one bit higher on both sides: 1/3 bit per coordinate more on the coded
        // tokens (each layer's fractional-rate norms are the same count in both caches).
        const double coded = 200 - 16, coords = 200.0 * L * KH * d * 2;
        CHECK((b.format_bytes() - u.format_bytes()) * 8 / coords == Approx(2.0 / L * coded / 200).epsilon(1e-9));
    }
}

TEST_CASE("cache specs: llama.cpp's rotated formats and TurboQuant+", "[calibration][spec]") {
    CHECK(CacheSpec::parse("q4_0").rotation == BaselineRotation::None);
    const CacheSpec r = CacheSpec::parse("q4_0-rot");
    CHECK(r.format == CacheSpec::Format::Q4_0);
    CHECK(r.rotation == BaselineRotation::Hadamard);
    CHECK(r.text == "q4_0-rot");
    CHECK_FALSE(r.is_tqkv());
    CHECK(CacheSpec::parse("q8_0-rot").format == CacheSpec::Format::Q8_0);
    const CacheSpec rs = CacheSpec::parse("q8_0-rots-x5");
    CHECK(rs.rotation == BaselineRotation::HadamardSigns);
    CHECK(rs.seed == 5);
    const CacheSpec t = CacheSpec::parse("turbo3");
    CHECK(t.format == CacheSpec::Format::Turbo);
    CHECK(t.key_bits == 3);
    CHECK(t.value_bits == 3);
    CHECK(CacheSpec::parse("turbo2-x3").seed == 3);
    CHECK(CacheSpec::parse("turbo4").key_bits == 4);
    for (const char* bad : {"q4_0-rot-rot", "q4_0-rot-rots", "q4_0-bogus", "q4_0-rot-x1", "q4_0-x1", "turbo3-rot", "turbo5",
                            "turbo1", "turbo3-x", "turbo3-x-1", "turbo3-x1-x2", "q5_0-rot", "fp16-rot", "kivi2-rot",
                            "q4_0--rot"}) {
        INFO(bad);
        CHECK_THROWS_WITH(CacheSpec::parse(bad), Catch::Contains("cache spec"));
    }
    CHECK_THROWS_WITH(CacheSpec::parse("turbo3-rot"), Catch::Contains("turbo3 takes x<seed>"));
}

TEST_CASE("calibrated cache: fused attention equals the reference with means and debiasing, on every kernel",
          "[calibration][cache][kernels]") {
    struct Case {
        int heads, kv_heads, dim;
        double kb, vb;
        int window;
        size_t tokens, queries;
    };
    const Case cases[] = {{4, 2, 128, 4, 4, 0, 100, 1}, {8, 2, 64, 3.5, 2.5, 16, 90, 3}, {4, 1, 128, 2, 2, 8, 70, 2},
                          {6, 2, 80, 3, 2.5, 0, 45, 1}};
    for (const auto& kernel : available_kernels())
        for (const auto& cs : cases) {
            const size_t row = size_t(cs.kv_heads) * cs.dim;
            const auto K = offset_rows(cs.tokens, cs.kv_heads, cs.dim, 11, 3.0);
            const auto V = offset_rows(cs.tokens, cs.kv_heads, cs.dim, 12, 2.0);
            const Calibration cal = calibration_of(K, V, 1, cs.kv_heads, cs.dim);
            const std::string spec = "K" + std::to_string(cs.kb) + "V" + std::to_string(cs.vb) + "-w" + std::to_string(cs.window);
            CacheConfig base;
            base.precision = Precision::Exact;  // the exact path's tolerances (fast: test_fast_kernels.cpp)
            base.kernel = kernel;
            CacheConfig c = layer_config(CacheSpec::parse(spec), {1, cs.heads, cs.kv_heads, cs.dim}, 0, &cal, base);
            REQUIRE(c.key_mean.size() == row);
            REQUIRE(c.debias_keys);
            REQUIRE(c.debias_values);
            KVCache cache(c);
            cache.append(std::span(K).first(7 * row), std::span(V).first(7 * row));
            cache.append(std::span(K).subspan(7 * row), std::span(V).subspan(7 * row));
            const auto Q = tqkv_test::gaussian_vectors(cs.queries, cs.heads * cs.dim, 3);
            for (bool causal : {true, false}) {
                std::vector<float> fused(Q.size()), ref(Q.size());
                cache.attend(Q, fused, causal);
                cache.attend_reference(Q, ref, causal);
                for (size_t i = 0; i < cs.queries * cs.heads; ++i) {
                    INFO(kernel << " " << spec << " heads " << cs.heads << "/" << cs.kv_heads << " d=" << cs.dim << " row " << i);
                    CHECK(rel_error(&fused[i * cs.dim], &ref[i * cs.dim], size_t(cs.dim)) < 1e-4);
                }
            }
            // The reference decodes to the original space: the means are added back.
            const auto dk = cache.decode_keys(0);
            double err = 0, norm = 0;
            for (size_t t = 0; t < cs.tokens; ++t)
                for (int j = 0; j < cs.dim; ++j) {
                    const double x = K[t * row + j];
                    err += (dk[t * cs.dim + j] - x) * (dk[t * cs.dim + j] - x), norm += x * x;
                }
            CHECK(err / norm < 0.2);
        }
}

TEST_CASE("calibrated caches merge exactly: attend_stats over caches with different means and debias factors",
          "[calibration][cache][kernels]") {
    const int H = 4, KH = 2, d = 64;
    const size_t row = size_t(KH) * d, n1 = 70, n2 = 45;
    const auto K = offset_rows(n1 + n2, KH, d, 21, 2.5), V = offset_rows(n1 + n2, KH, d, 22, 1.5);
    for (const auto& kernel : available_kernels()) {
        INFO(kernel);
        // Two caches calibrated on different halves (different means), different rates.
        CacheConfig base;
        base.precision = Precision::Exact;  // the exact path's tolerances (fast: test_fast_kernels.cpp)
        base.kernel = kernel;
        const Calibration ca = calibration_of(std::vector<float>(K.begin(), K.begin() + n1 * row),
                                              std::vector<float>(V.begin(), V.begin() + n1 * row), 1, KH, d);
        const Calibration cb = calibration_of(std::vector<float>(K.begin() + n1 * row, K.end()),
                                              std::vector<float>(V.begin() + n1 * row, V.end()), 1, KH, d);
        CacheConfig c1 = layer_config(CacheSpec::parse("K3V2-w8"), {1, H, KH, d}, 0, &ca, base);
        CacheConfig c2 = layer_config(CacheSpec::parse("K4V3"), {1, H, KH, d}, 0, &cb, base);
        c2.seed = c1.seed;  // (the merge allows any seeds; one is enough here)
        KVCache a(c1), b(c2);
        a.append(std::span(K).first(n1 * row), std::span(V).first(n1 * row));
        b.append(std::span(K).subspan(n1 * row), std::span(V).subspan(n1 * row));
        const auto q = tqkv_test::gaussian_vectors(1, H * d, 5);
        std::vector<float> acc(q.size()), mx(H), sum(H), logits(size_t(H) * (n1 + n2));
        const KVCache* parts[] = {&a, &b};
        KVCache::attend_stats(parts, q, acc, mx, sum, logits);
        // Reference: exact softmax over what the two caches hold, decoded (means added back).
        for (int h = 0; h < H; ++h) {
            const int kvh = h / (H / KH);
            std::vector<float> Kd, Vd;
            for (const KVCache* c : parts) {
                const auto k = c->decode_keys(kvh), v = c->decode_values(kvh);
                Kd.insert(Kd.end(), k.begin(), k.end());
                Vd.insert(Vd.end(), v.begin(), v.end());
            }
            std::vector<double> ref_logits;
            const auto ref = exact_attention(&q[size_t(h) * d], Kd.data(), Vd.data(), n1 + n2, d, 1.0 / std::sqrt(double(d)), &ref_logits);
            std::vector<float> out(static_cast<size_t>(d)), want(static_cast<size_t>(d));
            for (int j = 0; j < d; ++j) out[size_t(j)] = acc[size_t(h) * d + j] / sum[size_t(h)], want[size_t(j)] = float(ref[size_t(j)]);
            CHECK(rel_error(out.data(), want.data(), size_t(d)) < 1e-4);
            // The logits are those of the original space (the shift q.mean added back).
            // (logits: [heads][tokens] of each cache, one cache after the other)
            double worst = 0;
            for (size_t t = 0; t < n1 + n2; ++t) {
                const size_t at = t < n1 ? size_t(h) * n1 + t : size_t(H) * n1 + size_t(h) * n2 + (t - n1);
                worst = std::max(worst, std::abs(logits[at] - ref_logits[t]));
            }
            CHECK(worst < 1e-3);
        }
    }
}

TEST_CASE("calibrated cache: save and load keep the means and debias flags; v1 files still load", "[calibration][cache]") {
    const int KH = 2, d = 32;
    const size_t row = size_t(KH) * d;
    const auto K = offset_rows(80, KH, d, 31, 2.0), V = offset_rows(80, KH, d, 32, 1.0);
    const Calibration cal = calibration_of(K, V, 2, KH, d);
    ModelKVCache m({2, 4, KH, d}, CacheSpec::parse("K3.5V2.5-w8"), &cal);
    for (int l = 0; l < 2; ++l) m.append(l, K, V);
    const auto bytes = m.save();
    const ModelKVCache back = ModelKVCache::load(bytes);
    CHECK(back.save() == bytes);
    CHECK(back.layer(1).config().key_mean == m.layer(1).config().key_mean);
    CHECK(back.layer(1).config().debias_values);
    const auto q = tqkv_test::gaussian_vectors(1, 4 * d, 9);
    std::vector<float> o1(q.size()), o2(q.size());
    m.attend(1, q, o1);
    back.attend(1, q, o2);
    CHECK(o1 == o2);
    // A version-1 file (no preconditioning fields) of an uncalibrated cache loads unchanged.
    ModelKVCache plain(2, CacheConfig{.heads = 4, .kv_heads = KH, .head_dim = d});
    for (int l = 0; l < 2; ++l) plain.append(l, std::span(K).first(40 * row), std::span(V).first(40 * row));
    auto v3 = plain.save();
    // v1 = v3 without the flags and two empty mean counts (12 bytes) and the attention window (8)
    // after each layer's channels, and without the dropped count (8) after the token counts.
    std::vector<uint8_t> v1(v3.begin(), v3.begin() + 8);
    v1.insert(v1.end(), {1, 0, 0, 0});
    v1.insert(v1.end(), v3.begin() + 12, v3.begin() + 16);  // layers
    size_t pos = 16;
    const size_t header = 7 * 4 + 8 + 8 + 4 + 8 + 8 + 4 + 4;  // through both empty channel lists
    const size_t payload = (v3.size() - 4 - 16) / 2 - header - 44;
    for (int l = 0; l < 2; ++l) {
        v1.insert(v1.end(), v3.begin() + long(pos), v3.begin() + long(pos + header));
        pos += header + 20;
        v1.insert(v1.end(), v3.begin() + long(pos), v3.begin() + long(pos + 16));  // tokens, compressed
        pos += 24;
        v1.insert(v1.end(), v3.begin() + long(pos), v3.begin() + long(pos + payload));
        pos += payload;
    }
    uint32_t c = 0xffffffffu;
    for (uint8_t byte : v1) {
        c ^= byte;
        for (int j = 0; j < 8; ++j) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    c = ~c;
    for (int i = 0; i < 4; ++i) v1.push_back(uint8_t(c >> (8 * i)));
    const ModelKVCache old = ModelKVCache::load(v1);
    CHECK(old.save() == v3);
}

// The mechanisms, each against its absence (the same data, one switch flipped).

TEST_CASE("centring: keys and values with channel offsets lose far less with the calibration's means",
          "[calibration][mechanism]") {
    const int H = 4, KH = 2, d = 128;
    const size_t T = 512, row = size_t(KH) * d;
    // Offsets several times the spread (tq-ref-128's keys have 4 channels ~6x, values smaller).
    const auto Kc = offset_rows(1024, KH, d, 41, 2.0), Vc = offset_rows(1024, KH, d, 42, 1.5);
    const auto K = offset_rows(T, KH, d, 43, 2.0), V = offset_rows(T, KH, d, 44, 1.5);
    const Calibration cal = calibration_of(Kc, Vc, 1, KH, d);  // calibrated on other samples
    auto error_with = [&](const char* spec) {
        KVCache cache(layer_config(CacheSpec::parse(spec), {1, H, KH, d}, 0, &cal));
        cache.append(K, V);
        double e = 0, s = 0;
        for (int qi = 0; qi < 16; ++qi) {
            const auto q = tqkv_test::gaussian_vectors(1, H * d, 100 + qi);
            std::vector<float> out(q.size());
            cache.attend(q, out, false);
            for (int h = 0; h < H; ++h) {
                std::vector<float> Kh(T * d), Vh(T * d);
                for (size_t t = 0; t < T; ++t)
                    for (int j = 0; j < d; ++j)
                        Kh[t * d + j] = K[t * row + size_t(h / 2) * d + j], Vh[t * d + j] = V[t * row + size_t(h / 2) * d + j];
                const auto ref = exact_attention(&q[size_t(h) * d], Kh.data(), Vh.data(), T, d, 1 / std::sqrt(double(d)));
                for (int j = 0; j < d; ++j) {
                    const double x = out[size_t(h) * d + j] - ref[size_t(j)];
                    e += x * x, s += ref[size_t(j)] * ref[size_t(j)];
                }
            }
        }
        return std::sqrt(e / s);
    };
    const double centred = error_with("K2V2"), plain = error_with("K2V2-nc");
    INFO("relative output error: centred " << centred << ", not centred " << plain);
    CHECK(centred < 0.6 * plain);
}

TEST_CASE("debiasing: coded logits and values are unbiased with it, shrunk by (1 - D_b) without",
          "[calibration][mechanism]") {
    const int H = 1, KH = 1, d = 128;
    const size_t T = 2000;
    const auto K = tqkv_test::gaussian_vectors(T, d, 51), V = tqkv_test::gaussian_vectors(T, d, 52);
    const auto q = tqkv_test::gaussian_vectors(1, d, 53);
    const double D2 = mse_distortion(2, d);
    REQUIRE(D2 == Approx(0.1160).margin(1e-3));
    auto fit = [&](const char* spec, bool values) {
        KVCache cache(layer_config(CacheSpec::parse(spec), {1, H, KH, d}, 0, nullptr));
        cache.append(K, V);
        if (!values) {  // least-squares slope of the cache's logits on the exact ones
            std::vector<float> acc(static_cast<size_t>(d)), mx(1), sum(1), logits(T);
            cache.attend_stats(q, acc, mx, sum, logits);
            std::vector<double> exact(T), approx(T);
            for (size_t t = 0; t < T; ++t) exact[t] = tqkv_test::dot(q.data(), &K[t * d], d) / std::sqrt(double(d)), approx[t] = logits[t];
            return slope(exact, approx);
        }
        // Values: uniform attention (a zero query) averages T values; the slope of the decoded
        // coordinates on the exact ones, over many tokens, is the shrink.
        std::vector<double> exact, approx;
        const auto dv = cache.decode_values(0);
        for (size_t i = 0; i < T * d; ++i) exact.push_back(V[i]), approx.push_back(dv[i]);
        return slope(exact, approx);
    };
    // Keys: the slope is 1 - D with plain codes and 1 with the debias factor.
    CHECK(fit("K2V2-raw", false) == Approx(1 - D2).margin(0.02));
    CHECK(fit("K2V2", false) == Approx(1.0).margin(0.02));
    CHECK(fit("K2V2-nta", false) == Approx(1 - D2).margin(0.02));
    // Values likewise (what attention sees of them: decode_values).
    CHECK(fit("K2V2-raw", true) == Approx(1 - D2).margin(0.01));
    CHECK(fit("K2V2", true) == Approx(1.0).margin(0.01));
    CHECK(fit("K2V2-nvd", true) == Approx(1 - D2).margin(0.01));
}

TEST_CASE("auto rates: the plan meets the budget, follows the sensitivities, and is deterministic", "[calibration][auto]") {
    const int L = 4, KH = 2, d = 64;
    const auto K = offset_rows(64, KH, d, 61, 1.0), V = offset_rows(64, KH, d, 62, 1.0);
    Calibration cal = calibration_of(K, V, L, KH, d);
    const CacheShape shape{L, 4, KH, d, 1024};
    const CacheSpec spec = CacheSpec::parse("auto-3");
    CHECK(spec.auto_bits == 3);
    CHECK(spec.window == 16);
    // Without sensitivities there is nothing to allocate by: a clear error, not a guess.
    CHECK_THROWS_WITH(plan_rates(spec, shape, cal), Catch::Contains("sensitivities"));
    CHECK_THROWS_WITH(KVCache(layer_config(spec, shape, 0, &cal)), Catch::Contains("sensitivities"));
    CHECK_THROWS_WITH(layer_config(spec, shape, 0, nullptr), Catch::Contains("calibration"));
    // Layer 2's keys matter 20x more than anything else; values of layer 0 not at all.
    for (int l = 0; l < L; ++l) cal.set_sensitivity(l, l == 2 ? 20.0 : 1.0, l == 0 ? 0.0 : 1.0);
    const RatePlan p = plan_rates(spec, shape, cal);
    REQUIRE(p.layers.size() == size_t(L));
    CHECK(p.bits_per_coord <= 3.0 + 1e-9);
    CHECK(p.bits_per_coord > 2.8);  // the budget is spent
    for (int l = 0; l < L; ++l)
        if (l != 2) CHECK(p.layers[2].key_bits > p.layers[size_t(l)].key_bits);
    // Unimportant values go to the bottom of the trust region, and no rate leaves it: within one bit
    // of the uniform rate the budget affords (codes: (3 * 1024 - 16 * 16) / 1008 = 2.794 bits with
    // norms, 2.544 without, so rates in [1.544, 3.544]: 2 .. 3.5).
    CHECK(p.layers[0].value_bits == 2.0);
    for (const auto& r : p.layers) {
        CHECK(r.key_bits >= 2.0);
        CHECK(r.key_bits <= 3.5);
        CHECK(r.value_bits >= 2.0);
        CHECK(r.value_bits <= 3.5);
    }
    CHECK(plan_rates(spec, shape, cal).json() == p.json());
    // The plan is what the cache builds, and what it stores matches the plan's count.
    ModelKVCache cache(shape, spec, &cal);
    for (int l = 0; l < L; ++l) {
        CHECK(cache.layer(l).config().key_bits == p.layers[size_t(l)].key_bits);
        CHECK(cache.layer(l).config().value_bits == p.layers[size_t(l)].value_bits);
    }
    // A larger budget never lowers a rate; an impossible one is refused.
    const RatePlan q = plan_rates(CacheSpec::parse("auto-4"), shape, cal);
    for (int l = 0; l < L; ++l) CHECK(q.layers[size_t(l)].key_bits >= p.layers[size_t(l)].key_bits);
    CHECK(q.predicted < p.predicted);
    CHECK_THROWS_WITH(plan_rates(CacheSpec::parse("auto-1.5"), shape, cal), Catch::Contains("exceeds the budget"));
    for (const char* bad : {"auto", "auto-x", "auto-1", "auto-9", "auto-3-prod", "auto-3-l0=K4V4", "auto-3-emu"})
        CHECK_THROWS_WITH(CacheSpec::parse(bad), Catch::Contains("cache spec"));
    // Sensitivities survive save/load; version-1 files (none) still load.
    const Calibration back = Calibration::load(cal.save());
    CHECK(back.key_sensitivity(2) == 20.0);
    CHECK(plan_rates(spec, shape, back).json() == p.json());
    Calibration plain = calibration_of(K, V, L, KH, d);
    auto v2 = plain.save();
    std::vector<uint8_t> v1(v2.begin(), v2.end() - 8);  // without the flag word and the CRC
    v1[8] = 1;
    uint32_t c = 0xffffffffu;
    for (uint8_t byte : v1) {
        c ^= byte;
        for (int j = 0; j < 8; ++j) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    c = ~c;
    for (int i = 0; i < 4; ++i) v1.push_back(uint8_t(c >> (8 * i)));
    CHECK(Calibration::load(v1) == plain);
}
