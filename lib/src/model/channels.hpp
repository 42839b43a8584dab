// Shared by the model's caches (model/caches.cpp) and the budgeted caches (budget/budget.cpp): channel choices
// and the numbers of their spec strings.
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

namespace tqkv::detail {

// Channels a fractional rate codes at one bit more: round(frac(bits) * d).
inline int high_count(double bits, int d) {
    const double frac = bits - std::floor(bits);
    return frac > 0 ? int(std::lround(frac * d)) : 0;
}

// The `count` highest of per-channel energies, ascending channel order.
inline std::vector<int> top_channels(const std::vector<double>& energy, int count) {
    std::vector<int> idx(energy.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return energy[size_t(a)] > energy[size_t(b)]; });
    idx.resize(size_t(count));
    std::sort(idx.begin(), idx.end());
    return idx;
}

// The number s[from..] of a spec option such as "w16" or "d0.99": false unless all of it parses.
inline bool spec_number(const std::string& s, size_t from, double& x) {
    if (s.size() <= from) return false;
    size_t pos = 0;
    try {
        x = std::stod(s.substr(from), &pos);
    } catch (...) {
        return false;
    }
    return pos == s.size() - from;
}

}  // namespace tqkv::detail
