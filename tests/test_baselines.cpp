// The baseline KV formats (tqkv/baselines.hpp): per-element round-trip bounds derived from each
// format's published rounding rule, storage arithmetic, PolarQuant's MSE against the value
// predicted from its angle codebooks, and scores()/weighted_sum() against the decoded matrix.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <vector>

#include "test_util.hpp"
#include "tqkv/baselines.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/rotation.hpp"

using namespace tqkv;

namespace {

constexpr double kPi = 3.14159265358979323846;

float fp16_round(float x) { return half_to_float(float_to_half(x)); }

BaselineConfig cfg_of(BaselineKind kind, int bits = 4) {
    BaselineConfig c;
    c.kind = kind;
    c.bits = bits;
    return c;
}

std::vector<float> roundtrip(BaselineFormat& f, const std::vector<float>& x, size_t tokens) {
    f.encode(x.data(), tokens);
    REQUIRE(f.tokens() == tokens);
    std::vector<float> y(tokens * f.dim());
    f.decode(y.data());
    return y;
}

// Gaussian data with a different scale per token and a few outlier channels, so block scales vary
// over orders of magnitude (and some fp16 scales are subnormal-free but far from 1).
std::vector<float> varied_data(size_t tokens, int dim, uint64_t seed) {
    std::vector<float> x = tqkv_test::gaussian_vectors(tokens, dim, seed);
    Rng rng(seed + 99);
    for (size_t t = 0; t < tokens; ++t) {
        const float s = float(std::exp(4.0 * rng.uniform() - 2.0));
        for (int j = 0; j < dim; ++j) x[t * dim + j] *= (j % 17 == 3 ? 8.0f : 1.0f) * s;
    }
    return x;
}

double mse(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    return s / double(a.size());
}

double mean_square(const std::vector<float>& a) {
    double s = 0;
    for (float v : a) s += double(v) * v;
    return s / double(a.size());
}

// Test-side Lloyd–Max quantizer for the density ∝ sin^(k-1)(2 psi) on [0, pi/2], by composite
// Simpson integration over each cell (independent of the library's grid-interpolation method), and
// E[cos(psi - Q(psi))] under that density.
double simpson(const std::function<double(double)>& f, double a, double b, int n = 2000) {
    const double h = (b - a) / n;
    double s = f(a) + f(b);
    for (int i = 1; i < n; ++i) s += (i % 2 ? 4.0 : 2.0) * f(a + i * h);
    return s * h / 3;
}

double expected_cos_error_lloyd(int k, int levels_count) {
    auto p = [k](double psi) { return std::pow(std::sin(2 * psi), double(k - 1)); };
    const int n = levels_count;
    std::vector<double> c(n), b(n + 1);
    for (int j = 0; j < n; ++j) c[j] = (j + 0.5) * (kPi / 2) / n;
    for (int iter = 0; iter < 5000; ++iter) {
        b[0] = 0, b[n] = kPi / 2;
        for (int j = 1; j < n; ++j) b[j] = 0.5 * (c[j - 1] + c[j]);
        double change = 0;
        for (int j = 0; j < n; ++j) {
            const double m0 = simpson(p, b[j], b[j + 1], 200);
            if (m0 <= 0) continue;
            const double nc = simpson([&](double s) { return s * p(s); }, b[j], b[j + 1], 200) / m0;
            change = std::max(change, std::fabs(nc - c[j]));
            c[j] = nc;
        }
        if (change < 1e-12) break;
    }
    double num = 0, den = 0;
    for (int j = 0; j < n; ++j) {
        num += simpson([&](double s) { return std::cos(s - c[j]) * p(s); }, b[j], b[j + 1]);
        den += simpson(p, b[j], b[j + 1]);
    }
    return num / den;
}

// Per-coordinate MSE PolarQuant should have on i.i.d. Gaussian data with mean square m2. The
// rotated data is i.i.d. Gaussian; in each block the radius, the angle of each node and the
// directions of its two children are independent, so the cosine between a node's true and
// reconstructed direction has expectation E[cos δ_l] times that of its children, and
// E||y - ŷ||^2 = 2 E[R^2] (1 - prod_l E[cos δ_l]) (fp16 radius rounding adds ~1e-8 relative).
double polar_predicted_mse(int bits, int levels, double m2) {
    const double delta = 2 * kPi / (1 << bits);
    double prod = std::sin(delta / 2) / (delta / 2);  // level 1: uniform error in ±delta/2
    for (int l = 2; l <= levels; ++l) prod *= expected_cos_error_lloyd(1 << (l - 1), 1 << std::max(1, bits - 2));
    return 2 * m2 * (1 - prod);
}

}  // namespace

TEST_CASE("baseline names", "[baselines]") {
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Fp16), 128, true)->name() == "fp16");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Q8_0), 128, true)->name() == "q8_0");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Q4_0), 128, true)->name() == "q4_0");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Kivi, 2), 128, true)->name() == "kivi2");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Kivi, 4), 128, false)->name() == "kivi4");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Polar, 4), 128, true)->name() == "polar4");
}

TEST_CASE("fp16 baseline rounds each coordinate to binary16", "[baselines]") {
    const size_t n = 300;
    const int dim = 64;
    auto x = varied_data(n, dim, 1);
    auto f = BaselineFormat::make(cfg_of(BaselineKind::Fp16), dim, true);
    auto y = roundtrip(*f, x, n);
    for (size_t i = 0; i < x.size(); ++i) REQUIRE(y[i] == fp16_round(x[i]));
    CHECK(f->bytes() == n * dim * 2);
    CHECK(f->bits_per_coord() == 16.0);
}

TEST_CASE("q8_0 round trip: |x - x̂| <= d/2 + |q| |d - fp16(d)|", "[baselines]") {
    const size_t n = 1024;
    const int dim = 128;
    auto x = varied_data(n, dim, 2);
    for (int j = 0; j < 32; ++j) x[5 * dim + 32 + j] = 0.0f;  // an all-zero block
    auto f = BaselineFormat::make(cfg_of(BaselineKind::Q8_0), dim, true);
    auto y = roundtrip(*f, x, n);
    double worst = 0;  // max |x - x̂| / (d/2) over blocks
    for (size_t b = 0; b < n * dim / 32; ++b) {
        const float* xb = &x[b * 32];
        const float* yb = &y[b * 32];
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127, dh = fp16_round(d);
        for (int j = 0; j < 32; ++j) {
            if (amax == 0) {
                REQUIRE(yb[j] == 0.0f);
                continue;
            }
            const double q = std::nearbyint(double(yb[j]) / dh);  // x̂ = q * dh exactly
            REQUIRE(std::fabs(q) <= 127);
            REQUIRE(double(yb[j]) == q * dh);
            // x * (1/d) is within a few ulps of x/d, so roundf picks a q with |x/d - q| <= 1/2 + 1e-5.
            const double bound = d * (0.5 + 1e-5) + std::fabs(q) * std::fabs(double(d) - dh);
            REQUIRE(std::fabs(double(xb[j]) - yb[j]) <= bound);
            worst = std::max(worst, std::fabs(double(xb[j]) - yb[j]) / (d / 2));
        }
    }
    INFO("max |x - x̂| / (d/2) = " << worst);
    CHECK(worst > 0.9);  // the bound is attained, not loose
    CHECK(f->bytes() == n * (dim / 32) * 34);
    CHECK(f->bits_per_coord() == 8.5);
}

TEST_CASE("q4_0 round trip: |x - x̂| <= |d|/2 (|d| at the clamped top code) + |q-8| |d - fp16(d)|", "[baselines]") {
    const size_t n = 1024;
    const int dim = 128;
    auto x = varied_data(n, dim, 3);
    for (int j = 0; j < 32; ++j) x[7 * dim + j] = 0.0f;  // an all-zero block
    // A block whose largest-magnitude value is positive, with a near-max negative value (clamped).
    for (int j = 0; j < 32; ++j) x[9 * dim + 64 + j] = 0.1f * float(j) - 1.5f;
    x[9 * dim + 64 + 3] = 4.0f;
    x[9 * dim + 64 + 4] = -3.9f;
    auto f = BaselineFormat::make(cfg_of(BaselineKind::Q4_0), dim, true);
    auto y = roundtrip(*f, x, n);
    size_t clamped = 0;
    double worst = 0;
    for (size_t b = 0; b < n * dim / 32; ++b) {
        const float* xb = &x[b * 32];
        const float* yb = &y[b * 32];
        float amax = 0, max = 0;
        int imax = -1;
        for (int j = 0; j < 32; ++j)
            if (amax < std::fabs(xb[j])) amax = std::fabs(xb[j]), max = xb[j], imax = j;
        if (imax < 0) {
            for (int j = 0; j < 32; ++j) REQUIRE(yb[j] == 0.0f);
            continue;
        }
        const float d = max / -8, dh = fp16_round(d);
        // The largest-magnitude value maps to code 0 exactly: x̂ = -8 d_fp16.
        REQUIRE(yb[imax] == -8.0f * dh);
        for (int j = 0; j < 32; ++j) {
            const double q = std::nearbyint(double(yb[j]) / dh);  // code - 8
            REQUIRE(q >= -8);
            REQUIRE(q <= 7);
            REQUIRE(double(yb[j]) == q * dh);
            const double v = double(xb[j]) / d;  // in [-8, 8]
            const bool top = v > 7.5 - 1e-4;      // floor(v + 8.5) = 16, clamped to 15: error up to |d|
            clamped += top;
            const double bound = std::fabs(d) * ((top ? 1.0 : 0.5) + 1e-5) + std::fabs(q) * std::fabs(double(d) - dh);
            REQUIRE(std::fabs(double(xb[j]) - yb[j]) <= bound);
            if (!top) worst = std::max(worst, std::fabs(double(xb[j]) - yb[j]) / (std::fabs(d) / 2));
        }
    }
    INFO("clamped elements " << clamped << ", max unclamped |x - x̂| / (|d|/2) = " << worst);
    CHECK(clamped >= 1);
    CHECK(worst > 0.9);
    CHECK(f->bytes() == n * (dim / 32) * 18);
    CHECK(f->bits_per_coord() == 4.5);
}

namespace {

// KIVI per-element check: quantized tokens within max(scale/2, clamp error of the fp16 zero/range)
// of x, the residual tokens exactly fp16-rounded. Returns max |x - x̂| / (scale/2).
double check_kivi(const std::vector<float>& x, const std::vector<float>& y, size_t tokens, int dim, int bits,
                  int G, int R, bool keys) {
    const size_t avail = tokens > size_t(R) ? tokens - R : 0;
    const size_t nq = avail / G * G;
    const int top = (1 << bits) - 1;
    double worst = 0;
    for (size_t i = nq * dim; i < tokens * dim; ++i) REQUIRE(y[i] == fp16_round(x[i]));
    // Each quantization group as a list of element indices.
    std::vector<std::vector<size_t>> groups;
    if (keys) {
        for (size_t g = 0; g < nq / G; ++g)
            for (int c = 0; c < dim; ++c) {
                std::vector<size_t> idx;
                for (int i = 0; i < G; ++i) idx.push_back((g * G + i) * dim + c);
                groups.push_back(idx);
            }
    } else {
        for (size_t t = 0; t < nq; ++t)
            for (int g = 0; g < dim / G; ++g) {
                std::vector<size_t> idx;
                for (int i = 0; i < G; ++i) idx.push_back(t * dim + g * G + i);
                groups.push_back(idx);
            }
    }
    for (const auto& idx : groups) {
        float mn = x[idx[0]], mx = x[idx[0]];
        for (size_t i : idx) mn = std::min(mn, x[i]), mx = std::max(mx, x[i]);
        const float sh = fp16_round((mx - mn) / float(top)), zh = fp16_round(mn);
        const double hi = double(zh) + top * double(sh);
        const double bound = std::max({sh / 2.0, double(zh) - mn, mx - hi, 0.0}) +
                             1e-6 * (std::fabs(mn) + std::fabs(mx));
        for (size_t i : idx) {
            // x̂ = code * scale + zero with an integer code in [0, 2^bits - 1].
            if (sh > 0) {
                const double code = std::nearbyint((double(y[i]) - zh) / sh);
                REQUIRE(code >= 0);
                REQUIRE(code <= top);
                REQUIRE(std::fabs(double(y[i]) - (code * sh + zh)) <= 1e-6 * (std::fabs(zh) + top * sh));
            }
            REQUIRE(std::fabs(double(x[i]) - y[i]) <= bound);
            if (sh > 0) worst = std::max(worst, std::fabs(double(x[i]) - y[i]) / (sh / 2.0));
        }
    }
    return worst;
}

}  // namespace

TEST_CASE("kivi round trip: |x - x̂| <= scale/2 + fp16 effects; recent tokens fp16", "[baselines]") {
    const int dim = 128;
    for (int bits : {2, 4})
        for (bool keys : {true, false})
            for (size_t tokens : {size_t(1000), size_t(1024), size_t(150), size_t(100)}) {
                auto x = varied_data(tokens, dim, 10 + tokens);
                BaselineConfig c = cfg_of(BaselineKind::Kivi, bits);
                auto f = BaselineFormat::make(c, dim, keys);
                auto y = roundtrip(*f, x, tokens);
                INFO("bits " << bits << " keys " << keys << " tokens " << tokens);
                const double worst = check_kivi(x, y, tokens, dim, bits, c.group, c.residual, keys);
                const size_t nq = tokens > 128 ? (tokens - 128) / 32 * 32 : 0;
                if (nq) CHECK(worst > 0.9);
                // Storage: packed codes + fp16 scale and zero per group + fp16 residual tokens.
                const size_t groups = nq * dim / 32;
                CHECK(f->bytes() == nq * dim * bits / 8 + 4 * groups + (tokens - nq) * dim * 2);
            }
}

TEST_CASE("kivi residual window: n_quant is the largest multiple of the group <= tokens - residual", "[baselines]") {
    const int dim = 64;
    BaselineConfig c = cfg_of(BaselineKind::Kivi, 4);
    c.group = 16;
    c.residual = 40;
    for (size_t tokens : {size_t(0), size_t(39), size_t(40), size_t(55), size_t(56), size_t(57), size_t(200)}) {
        auto x = tqkv_test::gaussian_vectors(tokens, dim, 5 + tokens);
        auto f = BaselineFormat::make(c, dim, true);
        auto y = roundtrip(*f, x, tokens);
        const size_t nq = tokens > 40 ? (tokens - 40) / 16 * 16 : 0;
        INFO("tokens " << tokens);
        check_kivi(x, y, tokens, dim, 4, 16, 40, true);
        // The first quantized token is not generally fp16-exact; the first residual one is.
        if (nq) {
            size_t exact = 0;
            for (int j = 0; j < dim; ++j) exact += y[(nq - 1) * dim + j] == fp16_round(x[(nq - 1) * dim + j]);
            CHECK(exact < size_t(dim));
        }
        CHECK(f->bytes() == nq * dim / 2 + 4 * (nq / 16) * dim + (tokens - nq) * dim * 2);
    }
}

TEST_CASE("kivi with every token quantized: 5.0 bits (kivi4), 3.0 bits (kivi2)", "[baselines]") {
    const int dim = 128;
    const size_t n = 1024;
    auto x = tqkv_test::gaussian_vectors(n, dim, 7);
    for (bool keys : {true, false}) {
        BaselineConfig c = cfg_of(BaselineKind::Kivi, 4);
        c.residual = 0;
        auto f4 = BaselineFormat::make(c, dim, keys);
        f4->encode(x.data(), n);
        CHECK(f4->bits_per_coord() == 5.0);
        c.bits = 2;
        auto f2 = BaselineFormat::make(c, dim, keys);
        f2->encode(x.data(), n);
        CHECK(f2->bits_per_coord() == 3.0);
    }
}

TEST_CASE("polar storage: 3.875 bits at the defaults, and the layout arithmetic", "[baselines]") {
    const size_t n = 1024;
    auto x = tqkv_test::gaussian_vectors(n, 128, 8);
    auto f = BaselineFormat::make(cfg_of(BaselineKind::Polar, 4), 128, true);
    f->encode(x.data(), n);
    CHECK(f->bits_per_coord() == 3.875);  // (8*4 + 4*2 + 2*2 + 1*2 + 16) / 16
    // bits 5, levels 2: blocks of 4 -> 2 level-1 angles * 5 + 1 level-2 angle * 3 = 13 bits + fp16
    // radius; 32 blocks -> 416 bits = 52 bytes + 64 bytes of radii per token.
    BaselineConfig c = cfg_of(BaselineKind::Polar, 5);
    c.levels = 2;
    auto g = BaselineFormat::make(c, 128, false);
    g->encode(x.data(), n);
    CHECK(g->bytes() == n * (52 + 64));
    // bits 2, levels 3 (higher levels 1 bit), dim 96: blocks of 8 -> 4*2 + 3*1 = 11 bits; 12 blocks
    // -> 132 bits = 17 bytes (rounded up per token) + 24 bytes of radii.
    c.bits = 2;
    c.levels = 3;
    auto h = BaselineFormat::make(c, 96, true);
    auto x96 = tqkv_test::gaussian_vectors(10, 96, 9);
    h->encode(x96.data(), 10);
    CHECK(h->bytes() == 10 * (17 + 24));
}

TEST_CASE("polar MSE matches the prediction from its angle codebooks", "[baselines]") {
    const size_t n = 1024;
    const int dim = 128;
    auto x = tqkv_test::gaussian_vectors(n, dim, 11);
    const double m2 = mean_square(x);
    struct Case {
        int bits, levels;
    };
    for (Case cs : {Case{4, 4}, Case{3, 2}, Case{5, 3}, Case{6, 4}, Case{2, 5}}) {
        BaselineConfig c = cfg_of(BaselineKind::Polar, cs.bits);
        c.levels = cs.levels;
        auto f = BaselineFormat::make(c, dim, true);
        auto y = roundtrip(*f, x, n);
        const double measured = mse(x, y), predicted = polar_predicted_mse(cs.bits, cs.levels, m2);
        INFO("bits " << cs.bits << " levels " << cs.levels << ": measured " << measured << " predicted " << predicted);
        // 8192 independent blocks; the per-block error's relative spread is ~1, so the sample
        // mean's relative standard error is ~1.1%: 5% is > 4 sigma.
        CHECK(std::fabs(measured / predicted - 1) < 0.05);
    }
}

TEST_CASE("polar: MSE falls ~4x per level-1 angle bit (levels = 1)", "[baselines]") {
    const size_t n = 1024;
    const int dim = 128;
    auto x = tqkv_test::gaussian_vectors(n, dim, 12);
    double prev = 0;
    for (int bits = 3; bits <= 7; ++bits) {
        BaselineConfig c = cfg_of(BaselineKind::Polar, bits);
        c.levels = 1;
        auto f = BaselineFormat::make(c, dim, false);
        const double m = mse(x, roundtrip(*f, x, n));
        if (prev > 0) {
            INFO("bits " << bits << ": ratio " << prev / m);
            CHECK(prev / m > 3.6);
            CHECK(prev / m < 4.4);
        }
        prev = m;
    }
}

TEST_CASE("polar: angles on the codebook reconstruct exactly up to the fp16 radius", "[baselines]") {
    const int dim = 128;
    const size_t n = 64;
    SECTION("levels = 1, inputs built from centroid angles and fp16 radii") {
        const int bits = 4;
        BaselineConfig c = cfg_of(BaselineKind::Polar, bits);
        c.levels = 1;
        c.seed = 77;
        Rotation rot(dim, RotationKind::Auto, c.seed);
        Rng rng(5);
        std::vector<float> x(n * dim);
        for (size_t t = 0; t < n; ++t) {
            std::vector<float> y(dim);
            for (int i = 0; i < dim / 2; ++i) {
                const float r = fp16_round(float(0.25 + 2 * rng.uniform()));
                const double th = (double(rng.below(1 << bits)) + 0.5) * 2 * kPi / (1 << bits);
                y[2 * i] = r * float(std::cos(th));
                y[2 * i + 1] = r * float(std::sin(th));
            }
            rot.inverse(y);
            std::copy(y.begin(), y.end(), x.begin() + t * dim);
        }
        auto f = BaselineFormat::make(c, dim, true);
        auto y = roundtrip(*f, x, n);
        for (size_t i = 0; i < x.size(); ++i) REQUIRE(std::fabs(y[i] - x[i]) <= 1e-5);
    }
    SECTION("default levels: decode(encode(x̂)) = x̂ (the reconstruction is a fixed point)") {
        auto x = tqkv_test::gaussian_vectors(n, dim, 13);
        auto f = BaselineFormat::make(cfg_of(BaselineKind::Polar, 4), dim, true);
        auto y1 = roundtrip(*f, x, n);
        auto y2 = roundtrip(*f, y1, n);
        for (size_t i = 0; i < x.size(); ++i) REQUIRE(std::fabs(y2[i] - y1[i]) <= 2e-5);
    }
}

TEST_CASE("scores() and weighted_sum() equal the same computations on decode()", "[baselines]") {
    const size_t n = 1000;  // not a multiple of 32: kivi keeps 136 fp16 tokens, 864 quantized
    std::vector<BaselineConfig> cfgs = {cfg_of(BaselineKind::Fp16), cfg_of(BaselineKind::Q8_0),
                                        cfg_of(BaselineKind::Q4_0), cfg_of(BaselineKind::Kivi, 2),
                                        cfg_of(BaselineKind::Kivi, 4), cfg_of(BaselineKind::Polar, 4)};
    for (int dim : {128, 96})  // 96: polar's dense rotation
        for (const auto& c : cfgs)
            for (bool keys : {true, false}) {
                auto x = varied_data(n, dim, 20 + dim);
                auto f = BaselineFormat::make(c, dim, keys);
                auto y = roundtrip(*f, x, n);
                auto q = tqkv_test::gaussian_vectors(1, dim, 21);
                std::vector<float> w(n);
                Rng rng(22);
                for (auto& v : w) v = float(rng.normal());
                std::vector<float> s(n), o(dim);
                f->scores(q.data(), s.data());
                f->weighted_sum(w.data(), o.data());
                INFO(f->name() << " dim " << dim << " keys " << keys);
                const double qn = std::sqrt(tqkv_test::dot(q.data(), q.data(), dim));
                // Relative to the Cauchy–Schwarz scale ||q|| ||x̂_t|| (a score can cancel to ~0).
                for (size_t t = 0; t < n; ++t) {
                    const float* yt = &y[t * dim];
                    const double ref = tqkv_test::dot(q.data(), yt, dim);
                    const double scale = qn * std::sqrt(tqkv_test::dot(yt, yt, dim));
                    REQUIRE(std::fabs(s[t] - ref) <= 1e-5 * scale);
                }
                // Relative to sum_t |w_t x̂_tj|.
                for (int j = 0; j < dim; ++j) {
                    double ref = 0, scale = 0;
                    for (size_t t = 0; t < n; ++t) {
                        ref += double(w[t]) * y[t * dim + j];
                        scale += std::fabs(double(w[t]) * y[t * dim + j]);
                    }
                    REQUIRE(std::fabs(o[j] - ref) <= 1e-5 * scale);
                }
            }
}

TEST_CASE("re-encoding replaces the content", "[baselines]") {
    const int dim = 64;
    for (auto kind : {BaselineKind::Fp16, BaselineKind::Q8_0, BaselineKind::Q4_0, BaselineKind::Kivi, BaselineKind::Polar}) {
        auto f = BaselineFormat::make(cfg_of(kind, 4), dim, true);
        auto a = tqkv_test::gaussian_vectors(300, dim, 30);
        auto b = tqkv_test::gaussian_vectors(50, dim, 31);
        roundtrip(*f, a, 300);
        auto yb = roundtrip(*f, b, 50);
        auto g = BaselineFormat::make(cfg_of(kind, 4), dim, true);
        auto yb2 = roundtrip(*g, b, 50);
        INFO(f->name());
        CHECK(yb == yb2);
        CHECK(f->bytes() == g->bytes());
        f->encode(nullptr, 0);
        CHECK(f->bytes() == 0);
        CHECK(f->bits_per_coord() == 0.0);
    }
}

TEST_CASE("bad baseline configurations throw std::invalid_argument", "[baselines]") {
    auto make = [](BaselineConfig c, int dim, bool keys = true) { return BaselineFormat::make(c, dim, keys); };
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Fp16), 0), std::invalid_argument);
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Q8_0), 100), std::invalid_argument);
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Q4_0), 48), std::invalid_argument);
    CHECK_NOTHROW(make(cfg_of(BaselineKind::Q4_0), 96));
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Kivi, 3), 128), std::invalid_argument);
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Kivi, 8), 128), std::invalid_argument);
    BaselineConfig k = cfg_of(BaselineKind::Kivi, 2);
    k.group = 0;
    CHECK_THROWS_AS(make(k, 128), std::invalid_argument);
    k.group = 32;
    k.residual = -1;
    CHECK_THROWS_AS(make(k, 128), std::invalid_argument);
    k.residual = 128;
    CHECK_THROWS_AS(make(k, 100, false), std::invalid_argument);  // values group over channels
    CHECK_NOTHROW(make(k, 100, true));                            // keys group over tokens
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Polar, 4), 100), std::invalid_argument);  // not a multiple of 16
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Polar, 0), 128), std::invalid_argument);
    CHECK_THROWS_AS(make(cfg_of(BaselineKind::Polar, 9), 128), std::invalid_argument);
    BaselineConfig p = cfg_of(BaselineKind::Polar, 4);
    p.levels = 0;
    CHECK_THROWS_AS(make(p, 128), std::invalid_argument);
    p.levels = 1;
    CHECK_THROWS_AS(make(p, 2), std::invalid_argument);     // below the rotation's range
    CHECK_THROWS_AS(make(p, 2048), std::invalid_argument);  // above it
    p.levels = 8;
    CHECK_THROWS_AS(make(p, 128), std::invalid_argument);  // block of 256 > dim
    CHECK_NOTHROW(make(p, 256));
    try {
        make(cfg_of(BaselineKind::Q8_0), 100);
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("multiple of 32") != std::string::npos);
    }
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's Hadamard rotation (-rot, -rots) and TurboQuant+ (turbo2/3/4).

namespace {

BaselineConfig rotated(BaselineKind kind, BaselineRotation r, uint64_t seed = 1) {
    BaselineConfig c = cfg_of(kind, kind == BaselineKind::Q8_0 ? 8 : 4);
    c.rotation = r;
    c.seed = seed;
    return c;
}

// The orthonormal Walsh–Hadamard matrix of size n (row-major) built the way llama.cpp's
// ggml_gen_hadamard builds it: H_1 = 1/sqrt(n), then [[H, H], [H, -H]] doubling up to n.
std::vector<double> ggml_hadamard(int n) {
    std::vector<double> h(size_t(n) * n, 0.0);
    h[0] = 1.0 / std::sqrt(double(n));
    for (int s = 1; s < n; s *= 2)
        for (int i = 0; i < s; ++i)
            for (int j = 0; j < s; ++j) {
                const double v = h[size_t(i) * n + j];
                h[size_t(i + s) * n + j] = v;
                h[size_t(i) * n + j + s] = v;
                h[size_t(i + s) * n + j + s] = -v;
            }
    return h;
}

// y = H_block x on each block of `block` coordinates of each row.
std::vector<float> block_rotate(const std::vector<float>& x, int dim, int block) {
    const std::vector<double> h = ggml_hadamard(block);
    std::vector<float> y(x.size());
    for (size_t r = 0; r < x.size() / dim; ++r)
        for (int b0 = 0; b0 < dim; b0 += block)
            for (int i = 0; i < block; ++i) {
                double s = 0;
                for (int j = 0; j < block; ++j) s += h[size_t(i) * block + j] * x[r * dim + b0 + j];
                y[r * dim + b0 + i] = float(s);
            }
    return y;
}

}  // namespace

TEST_CASE("hadamard rotation: llama.cpp's block sizes", "[baselines][rotation]") {
    // Keys: the largest power of two dividing head_dim (from 64 up); values: 64; none unless 64 | dim.
    CHECK(hadamard_key_block(64) == 64);
    CHECK(hadamard_key_block(128) == 128);
    CHECK(hadamard_key_block(192) == 64);
    CHECK(hadamard_key_block(256) == 256);
    CHECK(hadamard_key_block(320) == 64);
    CHECK(hadamard_key_block(96) == 0);
    CHECK(hadamard_key_block(32) == 0);
    CHECK(hadamard_value_block(128) == 64);
    CHECK(hadamard_value_block(64) == 64);
    CHECK(hadamard_value_block(96) == 0);
    CHECK(BaselineFormat::make(rotated(BaselineKind::Q4_0, BaselineRotation::Hadamard), 128, true)->name() == "q4_0-rot");
    CHECK(BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::HadamardSigns), 128, false)->name() == "q8_0-rots");
    CHECK(BaselineFormat::make(cfg_of(BaselineKind::Turbo, 3), 128, true)->name() == "turbo3");
}

TEST_CASE("q4_0-rot / q8_0-rot store the plain format of H x and decode to H (decoded)", "[baselines][rotation]") {
    const size_t n = 200;
    for (int dim : {64, 128, 192})
        for (auto kind : {BaselineKind::Q4_0, BaselineKind::Q8_0})
            for (bool keys : {true, false}) {
                const int block = keys ? hadamard_key_block(dim) : hadamard_value_block(dim);
                auto x = varied_data(n, dim, 40 + dim);
                auto rot = BaselineFormat::make(rotated(kind, BaselineRotation::Hadamard), dim, keys);
                auto plain = BaselineFormat::make(cfg_of(kind, kind == BaselineKind::Q8_0 ? 8 : 4), dim, keys);
                const auto y = roundtrip(*rot, x, n);
                // The plain format of the rotated rows, rotated back with the explicit matrix (H^T = H).
                const auto hx = block_rotate(x, dim, block);
                const auto expect = block_rotate(roundtrip(*plain, hx, n), dim, block);
                INFO(rot->name() << " dim " << dim << " keys " << keys << " block " << block);
                CHECK(rot->bytes() == plain->bytes());
                CHECK(rot->bits_per_coord() == plain->bits_per_coord());
                double worst = 0, scale = 0;
                for (size_t i = 0; i < y.size(); ++i) {
                    worst = std::max(worst, std::fabs(double(y[i]) - expect[i]));
                    scale = std::max(scale, std::fabs(double(expect[i])));
                }
                // Float rounding of two transforms; a code off by one step would be ~1e-2 of scale.
                CHECK(worst <= 2e-5 * scale);
            }
}

TEST_CASE("hadamard rotation spreads outlier channels: q4_0-rot beats q4_0", "[baselines][rotation]") {
    // Keys with a few channels 20x the others (as RoPE'd keys have): a q4_0 block holding an outlier
    // spends its scale on it; after the rotation the energy is spread over the block.
    const size_t n = 512;
    const int dim = 128;
    auto x = tqkv_test::gaussian_vectors(n, dim, 50);
    for (size_t t = 0; t < n; ++t)
        for (int j : {3, 40, 77, 100}) x[t * dim + j] *= 20.0f;
    for (auto kind : {BaselineKind::Q4_0, BaselineKind::Q8_0}) {
        auto plain = BaselineFormat::make(cfg_of(kind, kind == BaselineKind::Q8_0 ? 8 : 4), dim, true);
        auto rot = BaselineFormat::make(rotated(kind, BaselineRotation::Hadamard), dim, true);
        auto rots = BaselineFormat::make(rotated(kind, BaselineRotation::HadamardSigns), dim, true);
        const double e_plain = mse(roundtrip(*plain, x, n), x), e_rot = mse(roundtrip(*rot, x, n), x),
                     e_rots = mse(roundtrip(*rots, x, n), x);
        INFO(plain->name() << ": plain " << e_plain << ", rot " << e_rot << ", rots " << e_rots);
        CHECK(e_rot < 0.5 * e_plain);
        CHECK(e_rots < 0.5 * e_plain);
    }
}

TEST_CASE("rotated baselines with random signs (-rots): the signs come from the seed, and the round trip stays within the format's error", "[baselines][rotation]") {
    const size_t n = 100;
    const int dim = 128;
    auto x = varied_data(n, dim, 60);
    auto a = BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::HadamardSigns, 1), dim, true);
    auto a2 = BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::HadamardSigns, 1), dim, true);
    auto b = BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::HadamardSigns, 2), dim, true);
    auto r = BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::Hadamard), dim, true);
    const auto ya = roundtrip(*a, x, n), ya2 = roundtrip(*a2, x, n), yb = roundtrip(*b, x, n), yr = roundtrip(*r, x, n);
    CHECK(ya == ya2);
    CHECK(ya != yb);
    CHECK(ya != yr);
    // q8_0 of an orthonormal transform: relative error ~ 1/254 per block, far below 1e-4 in MSE terms.
    for (const auto* y : {&ya, &yb, &yr}) CHECK(mse(*y, x) < 1e-4 * mean_square(x));
}

TEST_CASE("rotated formats and turbo: scores() and weighted_sum() equal the same computations on decode()",
          "[baselines][rotation]") {
    const size_t n = 300;
    BaselineConfig turbo = cfg_of(BaselineKind::Turbo, 3);
    const std::vector<BaselineConfig> cfgs = {rotated(BaselineKind::Q4_0, BaselineRotation::Hadamard),
                                              rotated(BaselineKind::Q8_0, BaselineRotation::Hadamard),
                                              rotated(BaselineKind::Q4_0, BaselineRotation::HadamardSigns), turbo,
                                              cfg_of(BaselineKind::Turbo, 2), cfg_of(BaselineKind::Turbo, 4)};
    for (int dim : {64, 128})
        for (const auto& c : cfgs)
            for (bool keys : {true, false}) {
                auto x = varied_data(n, dim, 70 + dim);
                auto f = BaselineFormat::make(c, dim, keys);
                auto y = roundtrip(*f, x, n);
                auto q = tqkv_test::gaussian_vectors(1, dim, 71);
                std::vector<float> w(n);
                Rng rng(72);
                for (auto& v : w) v = float(rng.normal());
                std::vector<float> s(n), o(dim);
                f->scores(q.data(), s.data());
                f->weighted_sum(w.data(), o.data());
                INFO(f->name() << " dim " << dim << " keys " << keys);
                const double qn = std::sqrt(tqkv_test::dot(q.data(), q.data(), dim));
                for (size_t t = 0; t < n; ++t) {
                    const float* yt = &y[t * dim];
                    REQUIRE(std::fabs(s[t] - tqkv_test::dot(q.data(), yt, dim)) <= 1e-5 * qn * std::sqrt(tqkv_test::dot(yt, yt, dim)));
                }
                for (int j = 0; j < dim; ++j) {
                    double ref = 0, scale = 0;
                    for (size_t t = 0; t < n; ++t) {
                        ref += double(w[t]) * y[t * dim + j];
                        scale += std::fabs(double(w[t]) * y[t * dim + j]);
                    }
                    REQUIRE(std::fabs(o[j] - ref) <= 1e-5 * scale);
                }
            }
}

TEST_CASE("turbo: tqkv's MSE codes with the norm corrected so decoded vectors keep their length", "[baselines][rotation]") {
    const size_t n = 400;
    for (int dim : {64, 128})
        for (int bits : {2, 3, 4}) {
            auto x = varied_data(n, dim, 80 + bits);
            BaselineConfig c = cfg_of(BaselineKind::Turbo, bits);
            c.seed = 9;
            auto f = BaselineFormat::make(c, dim, true);
            const auto y = roundtrip(*f, x, n);
            INFO("turbo" << bits << " dim " << dim);
            // One fp16 norm per vector: turbo3 at d = 128 is 3.125 bits per coordinate, as the fork's block_turbo3_0.
            CHECK(f->bytes() == n * (2 + size_t(dim) * bits / 8));
            // The same codes as tqkv's codec with the same seed; only the norm field differs.
            CodecConfig cc;
            cc.dim = dim;
            cc.bits = bits;
            cc.seed = 9;
            const auto codec = make_codec(cc);
            const auto plain = codec->decode(codec->encode(x));
            double worst_len = 0, plain_len_err = 0;
            for (size_t t = 0; t < n; ++t) {
                const double nx = std::sqrt(tqkv_test::dot(&x[t * dim], &x[t * dim], dim));
                const double ny = std::sqrt(tqkv_test::dot(&y[t * dim], &y[t * dim], dim));
                const double np = std::sqrt(tqkv_test::dot(&plain[t * dim], &plain[t * dim], dim));
                worst_len = std::max(worst_len, std::fabs(ny / nx - 1));
                plain_len_err += 1 - np / nx;
                // Same direction as the plain codec's reconstruction (same codes).
                const double cosv = tqkv_test::dot(&y[t * dim], &plain[t * dim], dim) / (ny * np);
                REQUIRE(cosv > 1 - 1e-5);
            }
            CHECK(worst_len < 1.5e-3);          // fp16 rounding of the corrected norm (2^-11) + float sums
            CHECK(plain_len_err / n > 2e-3);    // the plain codec's reconstructions are shorter (MSE shrink)
        }
}

TEST_CASE("bad rotation and turbo configurations throw std::invalid_argument", "[baselines][rotation]") {
    for (auto kind : {BaselineKind::Fp16, BaselineKind::Kivi, BaselineKind::Polar, BaselineKind::Turbo}) {
        BaselineConfig c = cfg_of(kind, kind == BaselineKind::Turbo ? 3 : 4);
        c.rotation = BaselineRotation::Hadamard;
        CHECK_THROWS_WITH(BaselineFormat::make(c, 128, true), Catch::Contains("q8_0 and q4_0 only"));
    }
    CHECK_THROWS_WITH(BaselineFormat::make(rotated(BaselineKind::Q4_0, BaselineRotation::Hadamard), 96, true),
                      Catch::Contains("multiple of 64"));
    CHECK_THROWS_WITH(BaselineFormat::make(rotated(BaselineKind::Q8_0, BaselineRotation::HadamardSigns), 32, false),
                      Catch::Contains("multiple of 64"));
    for (int bits : {1, 5}) CHECK_THROWS_WITH(BaselineFormat::make(cfg_of(BaselineKind::Turbo, bits), 128, true), Catch::Contains("turbo"));
    CHECK_THROWS_AS(BaselineFormat::make(cfg_of(BaselineKind::Turbo, 3), 2, true), std::invalid_argument);
    // A norm fp16 cannot hold: the codec's error, nothing stored.
    auto f = BaselineFormat::make(cfg_of(BaselineKind::Turbo, 3), 64, true);
    std::vector<float> big(64, 1e5f);
    CHECK_THROWS_AS(f->encode(big.data(), 1), std::invalid_argument);
}
