#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

namespace {

std::vector<RotationKind> kinds_for(int d) {
    std::vector<RotationKind> k;
    if ((d & (d - 1)) == 0) k.push_back(RotationKind::Hadamard);
    if (d % 2 == 0) k.push_back(RotationKind::Structured);
    k.push_back(RotationKind::Dense);
    return k;
}

// Kolmogorov–Smirnov distance between the pooled coordinates of R x / ||x|| over `seeds`
// independently drawn rotations and the exact coordinate density (1 - t^2)^((d-3)/2).
double ks_distance(int d, RotationKind kind, int rounds, const std::vector<float>& input, int seeds) {
    const CoordinateDensity f(d);
    std::vector<double> t;
    t.reserve(size_t(seeds) * d);
    double norm = 0;
    for (float v : input) norm += double(v) * v;
    norm = std::sqrt(norm);
    for (int s = 0; s < seeds; ++s) {
        const Rotation r(d, kind, 1000 + s, rounds);
        std::vector<float> y = input;
        r.forward(y);
        for (float v : y) t.push_back(v / norm);
    }
    std::sort(t.begin(), t.end());
    double ks = 0;
    const double n = double(t.size());
    for (size_t i = 0; i < t.size(); ++i) {
        const double F = f.cdf(t[i]);
        ks = std::max({ks, std::fabs(F - i / n), std::fabs((i + 1) / n - F)});
    }
    return ks;
}

std::vector<float> one_hot(int d, int i) {
    std::vector<float> x(d, 0.0f);
    x[i] = 1.0f;
    return x;
}

// A key-like vector: 4 channels 100x larger than the rest.
std::vector<float> outliers(int d) {
    auto x = tqkv_test::gaussian_vectors(1, d, 77);
    for (int c : {1, d / 3, d / 2 + 1, d - 2}) x[c] = (c % 2 ? 100.0f : -100.0f);
    return x;
}

}  // namespace

TEST_CASE("rotations are orthogonal: norm kept, inverse recovers the input", "[rotation]") {
    for (int d : {64, 80, 96, 128, 256})
        for (auto kind : kinds_for(d)) {
            INFO("d=" << d << " kind=" << to_string(kind));
            const Rotation r(d, kind, 42);
            const auto xs = tqkv_test::gaussian_vectors(20, d, 5);
            for (int v = 0; v < 20; ++v) {
                std::vector<float> x(xs.begin() + v * d, xs.begin() + (v + 1) * d), y = x;
                r.forward(y);
                const double nx = std::sqrt(tqkv_test::dot(x.data(), x.data(), d));
                const double ny = std::sqrt(tqkv_test::dot(y.data(), y.data(), d));
                // float rounding: ~log2(d) rounds of relative error 2^-24 per coordinate
                CHECK(std::fabs(ny / nx - 1) < 1e-5);
                r.inverse(y);
                for (int j = 0; j < d; ++j) CHECK(std::fabs(y[j] - x[j]) < 1e-5 * nx);
            }
            // R R^T = I.
            const auto m = r.matrix();
            double worst = 0;
            for (int i = 0; i < d; ++i)
                for (int j = 0; j < d; ++j) {
                    const double g = tqkv_test::dot(&m[size_t(i) * d], &m[size_t(j) * d], d);
                    worst = std::max(worst, std::fabs(g - (i == j)));
                }
            CHECK(worst < 1e-5);
        }
}

TEST_CASE("rotations bring adversarial inputs to the exact coordinate density; defaults chosen from it",
          "[rotation][ks][heavy]") {
    // Pooled over S = 64 independent rotations, n = 64 d coordinates. For a Haar rotation the
    // coordinates of one vector are exchangeable and only weakly (negatively) dependent, so the
    // KS distance stays below the 99.9% Kolmogorov quantile 1.95 / sqrt(n) of i.i.d. samples.
    const int seeds = 64;
    for (int d : {64, 80, 96, 128, 256}) {
        const double crit = 1.95 / std::sqrt(double(seeds) * d);
        const std::vector<std::pair<const char*, std::vector<float>>> inputs = {
            {"one-hot", one_hot(d, 3)}, {"4 outliers", outliers(d)}};
        for (const auto& [label, x] : inputs) {
            char line[200];
            std::string report;
            for (auto kind : kinds_for(d)) {
                const double ks = ks_distance(d, kind, 0, x, seeds);
                std::snprintf(line, sizeof line, "d=%d %-10s %-10s KS=%.4f (crit %.4f)\n", d, label,
                              to_string(kind), ks, crit);
                report += line;
                INFO(line);
                // The default of each kind passes...
                if (kind != RotationKind::Structured) CHECK(ks < crit);
            }
            // ... the Auto choice passes, and too few Hadamard rounds visibly fail on one-hot inputs.
            CHECK(ks_distance(d, RotationKind::Auto, 0, x, seeds) < crit);
            if ((d & (d - 1)) == 0 && std::string(label) == "one-hot") {
                const double one = ks_distance(d, RotationKind::Hadamard, 1, x, seeds);
                const double two = ks_distance(d, RotationKind::Hadamard, 2, x, seeds);
                std::snprintf(line, sizeof line, "d=%d one-hot hadamard 1 round KS=%.4f, 2 rounds KS=%.4f\n", d,
                              one, two);
                report += line;
                CHECK(one > 10 * crit);  // all coordinates are exactly +-1/sqrt(d)
                CHECK(two > crit);       // a lattice of spacing 2/d: atoms of size ~ sqrt(2/(pi d))
            }
            WARN(report);
        }
    }
}

TEST_CASE("rotation rejects bad arguments", "[rotation]") {
    CHECK_THROWS_AS(Rotation(2, RotationKind::Auto, 1), std::invalid_argument);
    CHECK_THROWS_AS(Rotation(2000, RotationKind::Auto, 1), std::invalid_argument);
    CHECK_THROWS_AS(Rotation(80, RotationKind::Hadamard, 1), std::invalid_argument);
    CHECK_THROWS_AS(Rotation(81, RotationKind::Structured, 1), std::invalid_argument);
    CHECK_THROWS_AS(Rotation(64, RotationKind::Hadamard, 1, 17), std::invalid_argument);
    const Rotation r(64, RotationKind::Auto, 1);
    CHECK(r.kind() == RotationKind::Hadamard);
    std::vector<float> wrong(63);
    CHECK_THROWS_AS(r.forward(wrong), std::invalid_argument);
    CHECK(Rotation(80, RotationKind::Auto, 1).kind() == RotationKind::Dense);
}
