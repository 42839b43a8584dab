// The explorer's axis and tick math (explorer/plot_math.hpp: pure C++, no ImGui or OpenGL, so
// it is tested here natively and on ARM under qemu like the rest).
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "../explorer/plot_math.hpp"

using namespace plotmath;

namespace {
bool all_multiples(const Ticks& t) {
    for (double v : t.values) {
        const double k = v / t.step;
        if (std::fabs(k - std::round(k)) > 1e-6) return false;
    }
    return true;
}
}  // namespace

TEST_CASE("plot: nice steps are 1, 2 or 5 times a power of ten", "[plot]") {
    CHECK(nice_step(1.0, 5) == Approx(0.2));
    CHECK(nice_step(10.0, 5) == Approx(2.0));
    CHECK(nice_step(100.0, 4) == Approx(20.0));  // raw 25 -> 2 x 10
    CHECK(nice_step(0.03, 6) == Approx(0.005));
    CHECK(nice_step(7.0, 1) == Approx(5.0));
    CHECK(nice_step(9.0, 1) == Approx(10.0));
    for (double span : {1e-7, 3.3e-4, 0.77, 1.0, 42.0, 1234.5, 9.9e8})
        for (int target : {2, 4, 6, 10}) {
            const double s = nice_step(span, target);
            const double m = s / std::pow(10.0, std::floor(std::log10(s) + 1e-12));
            INFO("span " << span << " target " << target << " step " << s);
            CHECK((std::fabs(m - 1) < 1e-9 || std::fabs(m - 2) < 1e-9 || std::fabs(m - 5) < 1e-9));
            // The step gives between target/2.5 and target*2.5 intervals.
            CHECK(span / s >= target / 2.5 - 1e-9);
            CHECK(span / s <= target * 2.5 + 1e-9);
        }
    // Degenerate spans fall back to 1 instead of NaN.
    CHECK(nice_step(0.0, 5) == 1.0);
    CHECK(nice_step(-1.0, 5) == 1.0);
    CHECK(nice_step(NAN, 5) == 1.0);
}

TEST_CASE("plot: linear ticks lie inside the range on multiples of the step", "[plot]") {
    const auto t = linear_ticks(0.0, 1.0, 5);
    REQUIRE(t.values.size() == 6);
    CHECK(t.values.front() == 0.0);
    CHECK(t.values.back() == Approx(1.0));
    CHECK(t.step == Approx(0.2));
    CHECK(t.decimals == 1);

    const auto n = linear_ticks(-0.37, 0.52, 4);  // crosses zero: 0 must be exactly 0
    CHECK(n.step == Approx(0.2));
    CHECK(all_multiples(n));
    bool has_zero = false;
    for (double v : n.values) {
        CHECK(v >= -0.37);
        CHECK(v <= 0.52);
        if (v == 0.0) has_zero = true;
        CHECK(!(std::fabs(v) < 1e-12 && v != 0.0));  // no 1e-17 "zero"
    }
    CHECK(has_zero);
    CHECK(n.values.size() == 4);  // -0.2 0 0.2 0.4
    CHECK(n.values.front() == Approx(-0.2));
    CHECK(n.values.back() == Approx(0.4));

    const auto big = linear_ticks(1000.0, 65536.0, 5);
    CHECK(big.step == Approx(10000.0));
    CHECK(big.decimals == 0);
    CHECK(big.values.front() == Approx(10000.0));
    CHECK(big.values.back() == Approx(60000.0));
    CHECK(all_multiples(big));

    // Rounding at the ends: 0.1 + 0.2 must still include 0.3.
    const auto e = linear_ticks(0.1, 0.3, 2);
    CHECK(e.values.back() == Approx(0.3));

    // Empty or invalid ranges do not loop or allocate a lot.
    CHECK(linear_ticks(1.0, 1.0).values.size() == 1);
    CHECK(linear_ticks(2.0, 1.0).values.size() == 1);
    CHECK(linear_ticks(NAN, 1.0).values.empty());
}

TEST_CASE("plot: decimals are enough to print every tick exactly", "[plot]") {
    CHECK(decimals_for_step(1.0) == 0);
    CHECK(decimals_for_step(20.0) == 0);
    CHECK(decimals_for_step(0.5) == 1);
    CHECK(decimals_for_step(0.2) == 1);
    CHECK(decimals_for_step(0.05) == 2);
    CHECK(decimals_for_step(0.001) == 3);
    CHECK(decimals_for_step(0.0) == 0);
    const auto t = linear_ticks(-0.125, 0.125, 5);  // step 0.05
    CHECK(format_tick(t.values.front(), t.decimals) == "-0.10");
    CHECK(format_tick(0.0, t.decimals) == "0");
    CHECK(format_tick(0.05, t.decimals) == "0.05");
    CHECK(format_tick(1234.0, 0) == "1234");
    CHECK(format_tick(2.5e7, 0) == "2.5e+07");  // large magnitudes switch to scientific
}

TEST_CASE("plot: log ticks are powers of ten (with 2 and 5 on short ranges)", "[plot]") {
    const auto t = log_ticks(1e-4, 1.0);
    REQUIRE(t.values.size() == 5);
    CHECK(t.values[0] == Approx(1e-4));
    CHECK(t.values[4] == Approx(1.0));
    const auto s = log_ticks(0.15, 3.0);  // under two decades: 0.2 0.5 1 2
    REQUIRE(s.values.size() == 4);
    CHECK(s.values[0] == Approx(0.2));
    CHECK(s.values[1] == Approx(0.5));
    CHECK(s.values[3] == Approx(2.0));
    const auto w = log_ticks(1e-12, 1e12, 6);  // 24 decades: every 4th power
    CHECK(w.values.size() <= 7);
    CHECK(w.values.size() >= 5);
    CHECK(log_ticks(0.0, 1.0).values.empty());
    CHECK(log_ticks(-1.0, 1.0).values.empty());
    CHECK(format_tick(1e-6, 0, true) == "1e-6");
    CHECK(format_tick(0.01, 0, true) == "0.01");
    CHECK(format_tick(1000.0, 0, true) == "1000");
    CHECK(format_tick(1e6, 0, true) == "1e6");
}

TEST_CASE("plot: axis maps are inverse of each other, linear and log", "[plot]") {
    AxisMap x{-1.0, 3.0, 100.0, 500.0, false};
    CHECK(x.to_px(-1.0) == Approx(100.0));
    CHECK(x.to_px(3.0) == Approx(500.0));
    CHECK(x.to_px(1.0) == Approx(300.0));
    CHECK(x.to_data(x.to_px(2.25)) == Approx(2.25));
    AxisMap y{0.0, 10.0, 400.0, 0.0, false};  // screen y grows downwards
    CHECK(y.to_px(0.0) == Approx(400.0));
    CHECK(y.to_px(10.0) == Approx(0.0));
    CHECK(y.to_data(100.0) == Approx(7.5));
    AxisMap l{1e-3, 10.0, 0.0, 400.0, true};
    CHECK(l.to_px(1e-3) == Approx(0.0));
    CHECK(l.to_px(1e-1) == Approx(200.0));
    CHECK(l.to_data(300.0) == Approx(1.0));
    CHECK(l.to_px(0.0) < -1e6);  // non-positive values fall far off the plot, not NaN
}

TEST_CASE("plot: ranges, padding and nice bounds", "[plot]") {
    const std::vector<double> v = {3.0, NAN, -2.0, INFINITY, 0.5};
    const auto r = data_range(v);
    CHECK(r.lo == -2.0);
    CHECK(r.hi == 3.0);
    const auto lr = data_range(std::vector<double>{0.0, -1.0, 0.01, 5.0}, true);
    CHECK(lr.lo == 0.01);
    CHECK(lr.hi == 5.0);
    CHECK(data_range(std::vector<double>{}).hi == 1.0);
    const auto p = padded({0.0, 10.0}, 0.1);
    CHECK(p.lo == Approx(-1.0));
    CHECK(p.hi == Approx(11.0));
    const auto flat = padded({2.0, 2.0});
    CHECK(flat.lo < 2.0);
    CHECK(flat.hi > 2.0);
    const auto nb = nice_bounds({0.013, 0.87}, 5);
    CHECK(nb.lo == Approx(0.0));
    CHECK(nb.hi == Approx(1.0));
    const auto lb = nice_bounds({0.003, 0.4}, 5, true);
    CHECK(lb.lo == Approx(1e-3));
    CHECK(lb.hi == Approx(1.0));
}

TEST_CASE("plot: histogram counts, density and out-of-range values", "[plot]") {
    const std::vector<double> v = {0.0, 0.1, 0.5, 0.99, 1.0, -0.5, 2.0, NAN};
    const auto h = histogram(v.data(), v.size(), 0.0, 1.0, 4);
    REQUIRE(h.counts.size() == 4);
    CHECK(h.counts[0] == 2);  // 0.0, 0.1
    CHECK(h.counts[1] == 0);
    CHECK(h.counts[2] == 1);  // 0.5
    CHECK(h.counts[3] == 2);  // 0.99 and the right edge 1.0
    CHECK(h.below == 1);
    CHECK(h.above == 1);
    CHECK(h.total == 7);  // NaN skipped
    double integral = 0;
    for (double d : h.density) integral += d * h.width();
    CHECK(integral == Approx(5.0 / 7.0));
    CHECK(bin_of(h, 0.3) == 1);
    CHECK(bin_of(h, 1.0) == 3);
    CHECK(bin_of(h, 1.5) == -1);
}

TEST_CASE("plot: nearest point for hover read-outs", "[plot]") {
    const std::vector<double> xs = {0.0, 1.0, 2.0, 10.0};
    CHECK(nearest_sorted(xs.data(), xs.size(), -5.0) == 0);
    CHECK(nearest_sorted(xs.data(), xs.size(), 0.4) == 0);
    CHECK(nearest_sorted(xs.data(), xs.size(), 0.6) == 1);
    CHECK(nearest_sorted(xs.data(), xs.size(), 5.9) == 2);
    CHECK(nearest_sorted(xs.data(), xs.size(), 6.1) == 3);
    CHECK(nearest_sorted(xs.data(), xs.size(), 99.0) == 3);
    CHECK(nearest_sorted(xs.data(), 0, 1.0) == -1);
}

TEST_CASE("plot: colour map ends and clamping", "[plot]") {
    const auto a = viridis(0.0), b = viridis(1.0), mid = viridis(0.5);
    CHECK(a[0] == Approx(0.267f));
    CHECK(b[1] == Approx(0.906f));
    CHECK(viridis(-3.0) == a);
    CHECK(viridis(NAN) == a);
    CHECK(viridis(7.0) == b);
    // Lightness grows along the map (the property that makes it readable in grey scale).
    auto lum = [](std::array<float, 3> c) { return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]; };
    CHECK(lum(a) < lum(mid));
    CHECK(lum(mid) < lum(b));
    CHECK(normalize(5.0, 0.0, 10.0) == Approx(0.5));
    CHECK(normalize(50.0, 0.0, 10.0) == 1.0);
    CHECK(normalize(0.01, 0.001, 0.1, true) == Approx(0.5));
    CHECK(format_bytes(512) == "512 B");
    CHECK(format_bytes(66.0 * 1024) == "66.0 KiB");
}

TEST_CASE("plot: diverging colour map is light at 0, darker and apart towards the ends", "[plot]") {
    auto lum = [](std::array<float, 3> c) { return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]; };
    const auto lo = diverging(-1.0), mid = diverging(0.0), hi = diverging(1.0);
    CHECK(lum(mid) > 0.9);
    // Darker the further from 0 on both sides (what makes |ΔNLL| readable), monotonically.
    for (double t = 0.1; t <= 1.0001; t += 0.1) {
        CHECK(lum(diverging(t)) < lum(diverging(t - 0.1)));
        CHECK(lum(diverging(-t)) < lum(diverging(-(t - 0.1))));
    }
    // The sign is the hue: blue below 0, red above.
    CHECK(lo[2] > lo[0]);
    CHECK(hi[0] > hi[2]);
    CHECK(diverging(-5.0) == lo);
    CHECK(diverging(5.0) == hi);
    CHECK(diverging(NAN) == mid);
}

TEST_CASE("plot: runs of equal labels cover every position once, in order", "[plot]") {
    CHECK(runs(std::vector<int>{}).empty());
    const std::vector<int> labels = {0, 0, 2, 2, 2, 1, 0, 0, 3};
    const auto r = runs(labels);
    REQUIRE(r.size() == 5);
    CHECK((r[0].begin == 0 && r[0].end == 2 && r[0].label == 0));
    CHECK((r[1].begin == 2 && r[1].end == 5 && r[1].label == 2));
    CHECK((r[2].begin == 5 && r[2].end == 6 && r[2].label == 1));
    CHECK((r[3].begin == 6 && r[3].end == 8 && r[3].label == 0));
    CHECK((r[4].begin == 8 && r[4].end == 9 && r[4].label == 3));
    // Property: on random labels, runs tile [0, n), neighbours differ, each run is constant.
    uint64_t s = 12345;
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<int> l(size_t(trial % 37));
        for (auto& x : l) x = int((s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 62);
        const auto rr = runs(l);
        size_t pos = 0;
        for (size_t i = 0; i < rr.size(); ++i) {
            REQUIRE(rr[i].begin == pos);
            REQUIRE(rr[i].end > rr[i].begin);
            if (i) REQUIRE(rr[i].label != rr[i - 1].label);
            for (size_t t = rr[i].begin; t < rr[i].end; ++t) REQUIRE(l[t] == rr[i].label);
            pos = rr[i].end;
        }
        REQUIRE(pos == l.size());
    }
}
