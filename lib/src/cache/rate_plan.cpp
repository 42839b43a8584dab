// plan_rates(): the per-layer K and V rates of an auto spec (see tqkv/cache.hpp for the model).
#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "tqkv/cache.hpp"
#include "tqkv/codebook.hpp"

namespace tqkv {

namespace {

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv rate plan: " + m); }

constexpr double kRates[] = {1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6};
constexpr int kNumRates = int(sizeof kRates / sizeof kRates[0]);

// Relative error variance of debiased MSE codes at this rate.
double g_of(double bits, int d) {
    const double D = mse_distortion(bits, d);
    return D / (1.0 - D);
}

// Bits per coordinate of one side at this rate: the codes plus one fp16 norm per part (a
// fractional rate codes two parts, each with its norm).
double cost_of(double bits, int d) { return bits + (bits != std::floor(bits) ? 32.0 : 16.0) / d; }

}  // namespace

std::string RatePlan::json() const {
    std::ostringstream o;
    o.imbue(std::locale::classic());
    o << "{\"budget\":" << budget << ",\"bits_per_coord\":" << bits_per_coord << ",\"predicted_dnll\":" << predicted
      << ",\"layers\":[";
    for (size_t i = 0; i < layers.size(); ++i) o << (i ? "," : "") << "{\"k\":" << layers[i].key_bits << ",\"v\":" << layers[i].value_bits << "}";
    o << "]}";
    return o.str();
}

RatePlan plan_rates(const CacheSpec& spec, const CacheShape& shape, const Calibration& cal) {
    if (spec.auto_bits <= 0) fail("'" + spec.text + "' is not an auto spec");
    if (cal.empty() || cal.layers() != shape.layers || cal.head_dim() != shape.head_dim)
        fail("'" + spec.text + "' needs a calibration of the cache's shape");
    if (!cal.has_sensitivity())
        fail("'" + spec.text +
             "' needs layer sensitivities in the calibration (measured with the model: tqkv::measure_sensitivity, "
             "tqkv_calibration_measure, npm model.calibrate(..., { sensitivity: true })); use fixed rates otherwise");
    const int L = shape.layers, d = shape.head_dim;
    const double T = double(shape.context ? shape.context : 4096), W = std::min<double>(spec.window, T);
    // What the codes may cost on average: the window's tokens are 16-bit.
    const double budget_codes = (spec.auto_bits * T - 16.0 * W) / std::max(1.0, T - W);
    // Items: (layer, side) with weight = sensitivity.
    const int n = 2 * L;
    std::vector<double> w(static_cast<size_t>(n));
    for (int l = 0; l < L; ++l) w[size_t(2 * l)] = cal.key_sensitivity(l), w[size_t(2 * l + 1)] = cal.value_sensitivity(l);
    std::vector<double> g(kNumRates), c(kNumRates);
    for (int i = 0; i < kNumRates; ++i) g[size_t(i)] = g_of(kRates[i], d), c[size_t(i)] = cost_of(kRates[i], d);
    auto mean_cost = [&](const std::vector<int>& pick) {
        double s = 0;
        for (int p : pick) s += c[size_t(p)];
        return s / n;
    };
    // Trust region: rates within one bit of the uniform rate the budget affords. The sensitivities
    // come from probes of one layer at a time (the rest exact), so the additive model is a
    // first-order one; a plan far from uniform (2-bit keys in a layer, 5 bits elsewhere) leans on
    // it where cross-layer effects (errors of early layers feeding later ones) are largest.
    const double uniform = budget_codes - 16.0 / d;
    int rlo = 0, rhi = kNumRates - 1;
    while (rlo + 1 < kNumRates && kRates[rlo] < uniform - 1.0 - 1e-9) ++rlo;
    while (rhi > rlo && kRates[rhi] > uniform + 1.0 + 1e-9) --rhi;
    if (c[size_t(rlo)] > budget_codes + 1e-12) rlo = 0;
    if (c[0] > budget_codes + 1e-12)
        fail("'" + spec.text + "': even " + std::to_string(kRates[0]) + " bits everywhere exceeds the budget (codes may take " +
             std::to_string(budget_codes) + " bits per coordinate after the window)");
    // For a price lambda per bit, each item's best rate; ties to the cheaper rate.
    auto choose = [&](double lambda) {
        std::vector<int> pick(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
            int best = rlo;
            for (int r = rlo + 1; r <= rhi; ++r)
                if (w[size_t(i)] * g[size_t(r)] + lambda * c[size_t(r)] < w[size_t(i)] * g[size_t(best)] + lambda * c[size_t(best)])
                    best = r;
            pick[size_t(i)] = best;
        }
        return pick;
    };
    double lo = 0, hi = 1;
    while (mean_cost(choose(hi)) > budget_codes && hi < 1e30) hi *= 2;
    for (int it = 0; it < 200; ++it) {
        const double mid = 0.5 * (lo + hi);
        (mean_cost(choose(mid)) > budget_codes ? lo : hi) = mid;
    }
    std::vector<int> pick = choose(hi);
    // Spend what is left: the upgrade that saves the most loss per bit, while it fits.
    for (;;) {
        int best = -1;
        double best_gain = 0;
        for (int i = 0; i < n; ++i) {
            const int r = pick[size_t(i)];
            if (r + 1 > rhi) continue;
            const double extra = (c[size_t(r + 1)] - c[size_t(r)]) / n;
            if (mean_cost(pick) + extra > budget_codes + 1e-12) continue;
            const double gain = w[size_t(i)] * (g[size_t(r)] - g[size_t(r + 1)]) / (c[size_t(r + 1)] - c[size_t(r)]);
            if (gain > best_gain) best_gain = gain, best = i;
        }
        if (best < 0) break;
        ++pick[size_t(best)];
    }
    RatePlan plan;
    plan.budget = spec.auto_bits;
    for (int l = 0; l < L; ++l) {
        plan.layers.push_back({l, kRates[pick[size_t(2 * l)]], kRates[pick[size_t(2 * l + 1)]]});
        plan.predicted += w[size_t(2 * l)] * g[size_t(pick[size_t(2 * l)])] + w[size_t(2 * l + 1)] * g[size_t(pick[size_t(2 * l + 1)])];
    }
    plan.bits_per_coord = (mean_cost(pick) * (T - W) + 16.0 * W) / T;
    return plan;
}

}  // namespace tqkv
