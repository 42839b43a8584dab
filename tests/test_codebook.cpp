#include <catch2/catch.hpp>
#include <cmath>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

TEST_CASE("codebook MSE matches the exact Beta-density values within 0.5%", "[codebook]") {
    // Converged Lloyd–Max distortion E||u - û||^2 for the exact coordinate density (issue #3).
    const struct {
        int dim;
        double mse[4];
    } expected[] = {{64, {0.35839, 0.11453, 0.03339, 0.00913}},
                    {128, {0.36089, 0.11600, 0.03397, 0.00931}},
                    {256, {0.36214, 0.11674, 0.03426, 0.00941}}};
    for (const auto& e : expected)
        for (int b = 1; b <= 4; ++b) {
            const auto cb = LloydMaxCodebook::get(e.dim, b);
            INFO("d=" << e.dim << " b=" << b << " mse=" << cb->mse());
            CHECK(std::fabs(cb->mse() / e.mse[b - 1] - 1.0) < 0.005);
        }
}

TEST_CASE("codebook MSE approaches the Gaussian limit from below as d grows", "[codebook]") {
    for (int b = 1; b <= 4; ++b) {
        const double m64 = LloydMaxCodebook::get(64, b)->mse();
        const double m128 = LloydMaxCodebook::get(128, b)->mse();
        const double m256 = LloydMaxCodebook::get(256, b)->mse();
        const double m1024 = LloydMaxCodebook::get(1024, b)->mse();
        INFO("b=" << b);
        CHECK(m64 < m128);
        CHECK(m128 < m256);
        CHECK(m256 < m1024);
        CHECK(m1024 < gaussian_limit_mse(b));
        // ... and gets close: the finite-d correction is O(1/d).
        CHECK(gaussian_limit_mse(b) - m1024 < 0.01 * gaussian_limit_mse(b));
        // Never below the Shannon bound, never above the paper's upper bound.
        CHECK(m64 > shannon_bound(b));
        CHECK(m1024 < std::sqrt(3.0) * M_PI / 2.0 * shannon_bound(b));
    }
}

TEST_CASE("d = 3: coordinates are uniform on [-1, 1] (Archimedes), so the codebook is uniform", "[codebook]") {
    // Uniform density on [-1, 1] with 2^b levels: step 2/2^b, per-coordinate error step^2/12,
    // so E||u - û||^2 = 3 * (2/2^b)^2 / 12 = 4^-b exactly.
    for (int b = 1; b <= 6; ++b) {
        const auto cb = LloydMaxCodebook::get(3, b);
        CHECK(cb->mse() == Approx(shannon_bound(b)).epsilon(1e-6));
        const double step = 2.0 / cb->levels();
        for (int i = 0; i < cb->levels(); ++i) CHECK(cb->centroids()[i] == Approx(-1 + (i + 0.5) * step).margin(1e-9));
    }
}

TEST_CASE("codebook structure: symmetric, sorted, boundaries at midpoints, centroids at cell means", "[codebook]") {
    for (int d : {5, 64, 80, 128, 1024})
        for (int b = 1; b <= 8; ++b) {
            const auto cb = LloydMaxCodebook::get(d, b);
            const auto& c = cb->centroids();
            const auto& t = cb->boundaries();
            INFO("d=" << d << " b=" << b);
            REQUIRE(int(c.size()) == 1 << b);
            REQUIRE(int(cb->boundaries_f().size()) == 1 << b);
            CHECK(std::isinf(cb->boundaries_f().back()));
            for (size_t i = 0; i < c.size(); ++i) CHECK(c[i] == -c[c.size() - 1 - i]);
            for (size_t i = 0; i + 1 < c.size(); ++i) {
                CHECK(c[i] < c[i + 1]);
                CHECK(t[i] == Approx(0.5 * (c[i] + c[i + 1])));
            }
            // Converged: one more Lloyd step moves no centroid by more than 1e-11 sigma.
            const CoordinateDensity f(d);
            const auto next = LloydMaxCodebook::lloyd_step(f, c);
            const double sigma = 1.0 / std::sqrt(double(d));
            for (size_t i = 0; i < c.size(); ++i) CHECK(std::fabs(next[i] - c[i]) < 1e-11 * sigma);
        }
}

TEST_CASE("codebook cache returns one instance per (d, b) and rejects bad arguments", "[codebook]") {
    CHECK(LloydMaxCodebook::get(128, 4).get() == LloydMaxCodebook::get(128, 4).get());
    CHECK_THROWS_AS(LloydMaxCodebook::get(2, 4), std::invalid_argument);
    CHECK_THROWS_AS(LloydMaxCodebook::get(1025, 4), std::invalid_argument);
    CHECK_THROWS_AS(LloydMaxCodebook::get(128, 0), std::invalid_argument);
    CHECK_THROWS_AS(LloydMaxCodebook::get(128, 9), std::invalid_argument);
}

TEST_CASE("coordinate density is normalized with variance 1/d", "[codebook]") {
    for (int d : {3, 4, 64, 97, 128, 1024}) {
        const CoordinateDensity f(d);
        CHECK(f.mass(-1, 1) == Approx(1.0).epsilon(1e-12));
        // Simpson converges as h^1.5 near the sqrt endpoints of even d (h = 2^-16): 1e-7.
        CHECK(f.second_moment(-1, 1) == Approx(1.0 / d).epsilon(1e-7));
        CHECK(f.cdf(0) == Approx(0.5).epsilon(1e-12));
    }
}
