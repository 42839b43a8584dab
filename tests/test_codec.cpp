#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "codec/shared.hpp"
#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

namespace {

CodecConfig config(int dim, double bits, Method m = Method::Mse, uint64_t seed = 1) {
    CodecConfig c;
    c.dim = dim;
    c.bits = bits;
    c.method = m;
    c.seed = seed;
    return c;
}

struct Slope {
    double slope, se;
};

// Least-squares slope of est on truth, with a cluster-robust standard error (clusters = codec
// seeds: pairs scored by the same codec share its rotation and QJL matrix, so they are not
// independent; the sandwich estimator over clusters accounts for that).
Slope ls_slope(const std::vector<double>& t, const std::vector<double>& e, size_t cluster) {
    const size_t n = t.size();
    double mt = 0, me = 0;
    for (size_t i = 0; i < n; ++i) mt += t[i], me += e[i];
    mt /= n, me /= n;
    double sxx = 0, sxy = 0;
    for (size_t i = 0; i < n; ++i) sxx += (t[i] - mt) * (t[i] - mt), sxy += (t[i] - mt) * (e[i] - me);
    const double slope = sxy / sxx, icpt = me - slope * mt;
    double meat = 0;
    for (size_t c0 = 0; c0 < n; c0 += cluster) {
        double s = 0;
        for (size_t i = c0; i < std::min(n, c0 + cluster); ++i) s += (t[i] - mt) * (e[i] - icpt - slope * t[i]);
        meat += s * s;
    }
    return {slope, std::sqrt(meat) / sxx};
}

}  // namespace

TEST_CASE("empirical MSE of random unit vectors agrees with the codebook's exact MSE", "[codec][stat]") {
    // Any fixed rotation maps a uniformly random unit vector to a uniformly random unit vector,
    // so E||u - û||^2 is exactly the codebook MSE (up to fp16 norm rounding, ~1e-7 here).
    const size_t n = 10000;
    for (int d : {64, 80, 128, 256})
        for (int b = 1; b <= 4; ++b) {
            const auto codec = make_codec(config(d, b));
            const auto x = tqkv_test::gaussian_vectors(n, d, uint64_t(d * 10 + b), true);
            const auto y = codec->decode(codec->encode(x));
            double sum = 0, sum2 = 0;
            for (size_t v = 0; v < n; ++v) {
                double e = 0;
                for (int j = 0; j < d; ++j) e += (x[v * d + j] - y[v * d + j]) * double(x[v * d + j] - y[v * d + j]);
                sum += e, sum2 += e * e;
            }
            const double mean = sum / n, se = std::sqrt((sum2 / n - mean * mean) / n);
            const double theory = LloydMaxCodebook::get(d, b)->mse();
            INFO("d=" << d << " b=" << b << " empirical " << mean << " theory " << theory << " se " << se);
            CHECK(std::fabs(mean - theory) < 4 * se);
        }
}

TEST_CASE("inner products: mse shrinks by (1 - D_b), prod and qjl are unbiased", "[codec][stat]") {
    // q = rho x + sqrt(1 - rho^2) w with rho uniform in [-1, 1], so true inner products spread
    // over [-1, 1]. Over the random rotation, E[<q, x̂_mse> | <q, x>] = (1 - D_b) <q, x> (the
    // Lloyd–Max centroid condition gives E<y, ĉ(y)> = E||ĉ||^2 = 1 - D_b); prod adds the QJL
    // estimate of <q, r>, which is unbiased over the draw of S, so its slope is 1.
    const int d = 128, seeds = 100, per_seed = 1000;
    for (auto method : {Method::Mse, Method::Prod, Method::Qjl})
        for (int b : {1, 2, 3, 4}) {
            if (method == Method::Prod && b < 2) continue;
            if (method == Method::Qjl && b != 1) continue;
            std::vector<double> truth, est;
            for (int s = 0; s < seeds; ++s) {
                const auto codec = make_codec(config(d, b, method, 5000 + s));
                const auto x = tqkv_test::gaussian_vectors(per_seed, d, 7 * s + 1, true);
                const auto w = tqkv_test::gaussian_vectors(per_seed, d, 7 * s + 2, true);
                const auto codes = codec->encode(x);
                Rng rng(s);
                std::vector<float> q(d), score(1);
                for (int v = 0; v < per_seed; ++v) {
                    const double rho = 2 * rng.uniform() - 1;
                    for (int j = 0; j < d; ++j)
                        q[j] = float(rho * x[v * d + j] + std::sqrt(1 - rho * rho) * w[v * d + j]);
                    codec->dot(q, std::span(codes).subspan(v * codec->bytes_per_vector(), codec->bytes_per_vector()),
                               score);
                    truth.push_back(tqkv_test::dot(q.data(), &x[v * d], d));
                    est.push_back(score[0]);
                }
            }
            const Slope s = ls_slope(truth, est, per_seed);
            const double target =
                method == Method::Mse ? 1.0 - LloydMaxCodebook::get(d, b)->mse() : 1.0;
            INFO(to_string(method) << b << ": slope " << s.slope << " +- " << s.se << ", target " << target);
            CHECK(std::fabs(s.slope - target) < 4 * s.se);
            if (method == Method::Mse) CHECK(std::fabs(s.slope - 1.0) > 4 * s.se);  // the test can tell them apart
        }
}

TEST_CASE("dot equals the inner product with the decoded vector", "[codec]") {
    for (auto method : {Method::Mse, Method::Prod, Method::Qjl})
        for (int d : {64, 80, 128}) {
            const double bits = method == Method::Qjl ? 1 : 3;
            const auto codec = make_codec(config(d, bits, method));
            const auto x = tqkv_test::gaussian_vectors(50, d, 3);
            const auto q = tqkv_test::gaussian_vectors(1, d, 4);
            const auto codes = codec->encode(x);
            const auto y = codec->decode(codes);
            std::vector<float> s(50);
            codec->dot(q, codes, s);
            for (int v = 0; v < 50; ++v) {
                const double ref = tqkv_test::dot(q.data(), &y[v * d], d);
                const double scale = std::sqrt(tqkv_test::dot(q.data(), q.data(), d) *
                                               tqkv_test::dot(&x[v * d], &x[v * d], d));
                CHECK(std::fabs(s[v] - ref) < 1e-4 * scale);
            }
        }
}

TEST_CASE("fractional rates: high channels at more bits, real bits per coordinate reported", "[codec]") {
    const int d = 128;
    // Keys with 8 outlier channels of 10x scale: those are the ones calibration should pick.
    auto x = tqkv_test::gaussian_vectors(2000, d, 11);
    const int outlier[8] = {3, 17, 40, 41, 77, 90, 100, 127};
    for (size_t v = 0; v < 2000; ++v)
        for (int c : outlier) x[v * d + c] *= 10.0f;
    for (double bits : {2.5, 3.25, 3.5}) {
        CodecConfig cfg = config(d, bits);
        const int count = int(std::lround((bits - std::floor(bits)) * d));
        cfg.high_channels = choose_high_channels(x, d, count);
        for (int c : outlier) CHECK(std::find(cfg.high_channels.begin(), cfg.high_channels.end(), c) != cfg.high_channels.end());
        const auto codec = make_codec(cfg);
        INFO(codec->name() << " " << codec->bits_per_coord());
        // Two parts, each with its own fp16 norm: bits*d code bits + 32 norm bits.
        CHECK(codec->bits_per_coord() == Approx((bits * d + 32) / d));
        // Distortion between that of the neighbouring integer rates on the same data.
        auto rel_mse = [&](const VectorCodec& c) {
            const auto y = c.decode(c.encode(x));
            double e = 0, s = 0;
            for (size_t i = 0; i < x.size(); ++i) e += (x[i] - y[i]) * double(x[i] - y[i]), s += double(x[i]) * x[i];
            return e / s;
        };
        const double lo = rel_mse(*make_codec(config(d, std::floor(bits))));
        const double hi = rel_mse(*make_codec(config(d, std::floor(bits) + 1)));
        const double mid = rel_mse(*codec);
        INFO("rel mse lo " << lo << " frac " << mid << " hi " << hi);
        CHECK(mid < lo);
        CHECK(mid > hi);
    }
    // prod at a fractional rate, and the errors for a wrong channel list.
    CodecConfig p = config(d, 3.5, Method::Prod);
    p.high_channels = choose_high_channels(x, d, 64);
    CHECK(make_codec(p)->bits_per_coord() == Approx((3.5 * d + 64) / d));
    CodecConfig bad = config(d, 2.5);
    CHECK_THROWS_WITH(make_codec(bad), Catch::Contains("need exactly 64 high_channels"));
    bad.high_channels = std::vector<int>(64, 0);
    CHECK_THROWS_WITH(make_codec(bad), Catch::Contains("listed twice"));
    bad.high_channels = choose_high_channels(x, d, 64);
    bad.high_channels[0] = 500;
    CHECK_THROWS_WITH(make_codec(bad), Catch::Contains("out of range"));
}

TEST_CASE("bits per coordinate include norms", "[codec]") {
    CHECK(make_codec(config(128, 4))->bits_per_coord() == Approx(4.125));
    CHECK(make_codec(config(128, 2))->bits_per_coord() == Approx(2.125));
    CHECK(make_codec(config(128, 4, Method::Prod))->bits_per_coord() == Approx(4.25));
    CHECK(make_codec(config(128, 1, Method::Qjl))->bits_per_coord() == Approx(1.125));
    CodecConfig f32 = config(128, 4);
    f32.norm = NormFormat::F32;
    CHECK(make_codec(f32)->bits_per_coord() == Approx(4.25));
    CHECK(make_codec(config(80, 3))->bytes_per_vector() == 2 + 30);
}

TEST_CASE("the same (config, seed) gives the same codes; another seed gives others", "[codec]") {
    const auto x = tqkv_test::gaussian_vectors(100, 96, 5);
    CHECK(make_codec(config(96, 3, Method::Prod, 7))->encode(x) == make_codec(config(96, 3, Method::Prod, 7))->encode(x));
    CHECK(make_codec(config(96, 3, Method::Prod, 7))->encode(x) != make_codec(config(96, 3, Method::Prod, 8))->encode(x));
}

TEST_CASE("zero, denormal and large vectors", "[codec]") {
    for (auto method : {Method::Mse, Method::Prod, Method::Qjl})
        for (auto norm : {NormFormat::F16, NormFormat::F32}) {
            CodecConfig cfg = config(64, method == Method::Qjl ? 1 : 4, method);
            cfg.norm = norm;
            const auto codec = make_codec(cfg);
            std::vector<float> x(3 * 64, 0.0f);
            for (int j = 0; j < 64; ++j) {
                x[64 + j] = (j % 2 ? 1 : -1) * 1e-40f * (j + 1);  // denormals
                x[128 + j] = 1000.0f * (j % 3 - 1);
            }
            const auto y = codec->decode(codec->encode(x));
            auto rel_err = [&](int row) {
                double e = 0, s = 0;
                for (int j = 0; j < 64; ++j) {
                    const double a = x[row * 64 + j], b = y[row * 64 + j];
                    e += (a - b) * (a - b), s += a * a;
                }
                return std::sqrt(e / s);
            };
            INFO(to_string(method) << (norm == NormFormat::F16 ? " f16" : " f32"));
            for (int j = 0; j < 64; ++j) CHECK(y[j] == 0.0f);
            // Expected relative error sqrt(D_b) = 0.096 for mse4; prod4 adds the QJL variance of its
            // residual; QJL's unbiased reconstruction has E||x̂ - x||^2 / ||x||^2 = pi/2 - 1/d, i.e.
            // 1.25 at d = 64. Bounds leave ~30% for the spread of a single vector.
            const double bound = method == Method::Qjl ? 1.6 : method == Method::Mse ? 0.13 : 0.4;
            CHECK(rel_err(2) < bound);
            if (norm == NormFormat::F32) {
                CHECK(rel_err(1) < bound);  // denormals are coded like any vector: scale-free
            } else {
                // An fp16 norm underflows below 2^-24: such vectors decode to zero.
                for (int j = 0; j < 64; ++j) CHECK(y[64 + j] == 0.0f);
            }
        }
}

TEST_CASE("max_abs_bits: the largest |x| as bits, NaN and Inf above every finite value", "[codec][errors]") {
    // The validation pass before every encode: blocks of 16 lanes plus a tail, so every length
    // and position matters.
    tqkv::Rng rng(5);
    for (size_t n : {size_t(1), size_t(3), size_t(15), size_t(16), size_t(17), size_t(31), size_t(32), size_t(47), size_t(128), size_t(130)})
        for (size_t p = 0; p < n; ++p) {
            std::vector<float> x(n);
            for (auto& v : x) v = float(rng.normal());
            for (float special : {-1000.0f, 1000.0f, INFINITY, -INFINITY, NAN}) {
                std::vector<float> y = x;
                y[p] = special;
                float expect = 0;
                for (float v : y) expect = std::isnan(v) ? v : std::max(expect, std::fabs(v));
                uint32_t e;
                const float ae = std::fabs(expect);
                std::memcpy(&e, &ae, 4);
                const uint32_t got = tqkv::detail::max_abs_bits(y.data(), n);
                INFO("n " << n << ", position " << p << ", value " << special);
                if (std::isfinite(special)) CHECK(got == e);
                else CHECK(got >= 0x7f800000u);
            }
        }
}

TEST_CASE("bad input: clear errors, nothing written", "[codec][errors]") {
    CHECK_THROWS_WITH(make_codec(config(2, 4)), Catch::Contains("dim 2 out of range"));
    CHECK_THROWS_WITH(make_codec(config(2048, 4)), Catch::Contains("out of range"));
    CHECK_THROWS_WITH(make_codec(config(64, 0)), Catch::Contains("bits"));
    CHECK_THROWS_WITH(make_codec(config(64, 9)), Catch::Contains("bits"));
    CHECK_THROWS_WITH(make_codec(config(64, 1, Method::Prod)), Catch::Contains("prod bits"));
    CHECK_THROWS_WITH(make_codec(config(64, 2, Method::Qjl)), Catch::Contains("qjl"));
    CHECK_THROWS_WITH(make_codec(config(64, NAN)), Catch::Contains("finite"));
    // Fractional and far out of int range (fuzz finding: a loaded cache header carried 1.29e10).
    CHECK_THROWS_WITH(make_codec(config(64, 1.28849e10f + 0.5f)), Catch::Contains("bits"));
    CHECK_THROWS_WITH(make_codec(config(64, 1.5e10f)), Catch::Contains("bits"));
    CHECK_THROWS_WITH(make_codec(config(64, -3.5f)), Catch::Contains("bits"));
    CHECK_THROWS_WITH(make_codec(config(64, 8.5f)), Catch::Contains("bits"));
    CHECK_NOTHROW(make_codec(config(80, 4, Method::Mse)));
    CodecConfig had = config(80, 4);
    had.rotation = RotationKind::Hadamard;
    CHECK_THROWS_WITH(make_codec(had), Catch::Contains("power-of-two"));

    for (auto method : {Method::Mse, Method::Prod, Method::Qjl}) {
        const auto codec = make_codec(config(64, method == Method::Qjl ? 1 : 3, method));
        const size_t bpv = codec->bytes_per_vector();
        auto x = tqkv_test::gaussian_vectors(4, 64, 1);
        std::vector<uint8_t> out(4 * bpv, 0xAB);
        const std::vector<uint8_t> untouched = out;
        // Wrong sizes.
        CHECK_THROWS_WITH(codec->encode(std::span(x).first(100), out), Catch::Contains("not a multiple of dim"));
        std::vector<uint8_t> small(3 * bpv);
        CHECK_THROWS_WITH(codec->encode(x, small), Catch::Contains("expected"));
        // NaN / Inf in the last vector: nothing written, even for the valid vectors before it.
        for (float bad : {NAN, INFINITY, -INFINITY}) {
            auto y = x;
            y[3 * 64 + 17] = bad;
            CHECK_THROWS_WITH(codec->encode(y, out), Catch::Contains("vector 3") && Catch::Contains("channel 17"));
            CHECK(out == untouched);
        }
        // A norm fp16 cannot hold.
        auto big = x;
        for (int j = 0; j < 64; ++j) big[2 * 64 + j] = 1e5f;
        CHECK_THROWS_WITH(codec->encode(big, out), Catch::Contains("vector 2") && Catch::Contains("fp16"));
        CHECK(out == untouched);
        // Decode / dot size checks and hostile norms.
        codec->encode(x, out);
        std::vector<float> dec(4 * 64), s(4);
        CHECK_THROWS_AS(codec->decode(std::span(out).first(out.size() - 1), dec), std::invalid_argument);
        CHECK_THROWS_AS(codec->decode(out, std::span(dec).first(10)), std::invalid_argument);
        CHECK_THROWS_AS(codec->dot(std::span(x).first(63), out, s), std::invalid_argument);
        CHECK_THROWS_AS(codec->dot(std::span(x).first(64), out, std::span(s).first(3)), std::invalid_argument);
        auto q = std::vector<float>(x.begin(), x.begin() + 64);
        q[5] = NAN;
        CHECK_THROWS_WITH(codec->dot(q, out, s), Catch::Contains("query"));
        auto hostile = out;
        hostile[bpv + 0] = 0x00;
        hostile[bpv + 1] = 0x7c;  // fp16 +inf norm in vector 1
        std::fill(dec.begin(), dec.end(), 1.0f);
        CHECK_THROWS_WITH(codec->decode(hostile, dec), Catch::Contains("vector 1"));
        CHECK(std::all_of(dec.begin(), dec.end(), [](float v) { return v == 1.0f; }));
    }
    // fp32 norms hold what fp16 cannot.
    CodecConfig f32 = config(64, 4);
    f32.norm = NormFormat::F32;
    std::vector<float> big(64, 1e5f);
    const auto c = make_codec(f32);
    const auto y = c->decode(c->encode(big));
    CHECK(y[0] == Approx(1e5f).epsilon(0.2));
}
