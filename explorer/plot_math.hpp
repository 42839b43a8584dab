// The pure math of the explorer's plotting module: axis mappings (linear and log), "nice" tick
// positions and their labels, data ranges, histogram binning, nearest-point search and the
// colour map. No ImGui, no OpenGL: tests/test_plot.cpp includes this header directly (it also
// runs on ARM under qemu), and explorer/plot.cpp draws with it.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace plotmath {

// ---------------------------------------------------------------------------------------------
// Axis mapping: data [lo, hi] onto pixels [p0, p1] (p1 < p0 is fine: y grows downwards on screen).

struct AxisMap {
    double lo = 0, hi = 1;
    double p0 = 0, p1 = 1;
    bool log = false;  // log10 scale; lo and hi must then be > 0

    double to_px(double v) const {
        double t;
        if (log) {
            const double l = std::log10(lo), h = std::log10(hi);
            t = v > 0 ? (std::log10(v) - l) / (h - l) : -1e9;
        } else {
            t = (v - lo) / (hi - lo);
        }
        return p0 + t * (p1 - p0);
    }
    double to_data(double px) const {
        const double t = (px - p0) / (p1 - p0);
        if (log) {
            const double l = std::log10(lo), h = std::log10(hi);
            return std::pow(10.0, l + t * (h - l));
        }
        return lo + t * (hi - lo);
    }
};

// ---------------------------------------------------------------------------------------------
// Ticks.

struct Ticks {
    std::vector<double> values;  // ascending, all inside [lo, hi] (up to rounding)
    double step = 0;             // linear: spacing; log: 0
    int decimals = 0;            // linear: digits after the point that label every tick exactly
};

// The "nice" step 1, 2 or 5 x 10^k closest to span / target.
inline double nice_step(double span, int target) {
    if (!(span > 0) || !std::isfinite(span)) return 1.0;
    if (target < 1) target = 1;
    const double raw = span / target;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double norm = raw / mag;  // in [1, 10)
    double nice;
    if (norm < 1.5) nice = 1;
    else if (norm < 3.0) nice = 2;
    else if (norm < 7.5) nice = 5;
    else nice = 10;
    return nice * mag;
}

// Digits after the decimal point needed to print multiples of step exactly (0 for step >= 1).
inline int decimals_for_step(double step) {
    if (!(step > 0)) return 0;
    const int d = int(std::ceil(-std::log10(step) - 1e-9));
    return std::clamp(d, 0, 12);
}

// Linear ticks: multiples of a nice step inside [lo, hi], about `target` of them.
inline Ticks linear_ticks(double lo, double hi, int target = 6) {
    Ticks t;
    if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) {
        if (std::isfinite(lo)) t.values.push_back(lo);
        return t;
    }
    t.step = nice_step(hi - lo, target);
    t.decimals = decimals_for_step(t.step);
    const double eps = 1e-9 * t.step;
    const double first = std::ceil((lo - eps) / t.step);
    const double last = std::floor((hi + eps) / t.step);
    for (double k = first; k <= last && t.values.size() < 1000; k += 1) {
        double v = k * t.step;
        if (std::fabs(v) < eps) v = 0.0;  // no "-0" and no 1e-17 labels
        t.values.push_back(v);
    }
    return t;
}

// Log ticks on [lo, hi] (lo > 0): every power of ten inside; when the range spans less than
// two decades, also 2x and 5x; when it spans many decades, every k-th power so at most ~target.
inline Ticks log_ticks(double lo, double hi, int target = 6) {
    Ticks t;
    if (!(lo > 0) || !(hi > lo)) return t;
    const double a = std::log10(lo), b = std::log10(hi);
    const int e0 = int(std::floor(a + 1e-9)), e1 = int(std::ceil(b - 1e-9));
    const double decades = b - a;
    if (decades < 2.0) {
        for (int e = e0; e <= e1; ++e)
            for (double m : {1.0, 2.0, 5.0}) {
                const double v = m * std::pow(10.0, e);
                if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.values.push_back(v);
            }
    } else {
        const int every = std::max(1, int(std::ceil(decades / std::max(1, target))));
        for (int e = e0; e <= e1; ++e) {
            if (e % every != 0) continue;
            const double v = std::pow(10.0, e);
            if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.values.push_back(v);
        }
    }
    return t;
}

// A tick label. Linear: fixed point with `decimals` digits, switching to scientific notation for
// very large or very small magnitudes. Log: "1e-3" style below 0.001 or above 10^5, plain otherwise.
inline std::string format_tick(double v, int decimals, bool log = false) {
    char buf[64];
    const double a = std::fabs(v);
    if (v == 0) return "0";
    if (log) {
        if (a >= 1e-3 && a < 1e5) std::snprintf(buf, sizeof buf, "%g", v);
        else {
            const int e = int(std::lround(std::log10(a)));
            const double m = v / std::pow(10.0, e);
            if (std::fabs(m - 1.0) < 1e-9) std::snprintf(buf, sizeof buf, "1e%d", e);
            else std::snprintf(buf, sizeof buf, "%ge%d", m, e);
        }
        return buf;
    }
    if (a >= 1e6 || decimals > 6) {
        std::snprintf(buf, sizeof buf, "%.3g", v);
        return buf;
    }
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

// A value for read-outs: about `sig` significant digits, no trailing noise.
inline std::string format_value(double v, int sig = 4) {
    char buf[64];
    if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
    std::snprintf(buf, sizeof buf, "%.*g", sig, v);
    return buf;
}

// Bytes as B / KiB / MiB / GiB.
inline std::string format_bytes(double bytes) {
    char buf[64];
    const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (std::fabs(bytes) >= 1024 && u < 4) bytes /= 1024, ++u;
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, unit[u]);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Ranges.

struct Range {
    double lo = 0, hi = 1;
};

// Min and max of the finite values (log: of the positive ones); {0, 1} when there are none.
inline Range data_range(const double* v, size_t n, bool log = false) {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(v[i]) || (log && !(v[i] > 0))) continue;
        lo = std::min(lo, v[i]);
        hi = std::max(hi, v[i]);
    }
    if (!(lo <= hi)) return log ? Range{0.1, 1.0} : Range{0.0, 1.0};
    return {lo, hi};
}
inline Range data_range(const std::vector<double>& v, bool log = false) { return data_range(v.data(), v.size(), log); }

inline Range merge(Range a, Range b) { return {std::min(a.lo, b.lo), std::max(a.hi, b.hi)}; }

// Widens [lo, hi] by `frac` of its span on each side (log: in decades); an empty range
// (lo == hi) becomes a unit-sized one around the value.
inline Range padded(Range r, double frac = 0.05, bool log = false) {
    if (log) {
        double a = std::log10(r.lo), b = std::log10(r.hi);
        if (!(b > a)) a -= 0.5, b += 0.5;
        const double s = (b - a) * frac;
        return {std::pow(10.0, a - s), std::pow(10.0, b + s)};
    }
    if (!(r.hi > r.lo)) {
        const double w = r.lo == 0 ? 1.0 : 0.1 * std::fabs(r.lo);
        return {r.lo - w, r.hi + w};
    }
    const double s = (r.hi - r.lo) * frac;
    return {r.lo - s, r.hi + s};
}

// Widens [lo, hi] outwards to the nearest multiples of the nice tick step (linear), or to
// whole decades (log).
inline Range nice_bounds(Range r, int target = 6, bool log = false) {
    if (log) {
        if (!(r.lo > 0) || !(r.hi > r.lo)) return r;
        return {std::pow(10.0, std::floor(std::log10(r.lo) + 1e-9)), std::pow(10.0, std::ceil(std::log10(r.hi) - 1e-9))};
    }
    if (!(r.hi > r.lo)) r = padded(r);
    const double s = nice_step(r.hi - r.lo, target);
    return {std::floor(r.lo / s + 1e-9) * s, std::ceil(r.hi / s - 1e-9) * s};
}

// ---------------------------------------------------------------------------------------------
// Histograms.

struct Histogram {
    double lo = 0, hi = 1;
    std::vector<double> counts;   // per bin
    std::vector<double> density;  // counts / (n_total * bin width): integrates to the in-range share
    size_t below = 0, above = 0, total = 0;
    double width() const { return counts.empty() ? 0 : (hi - lo) / counts.size(); }
};

// Equal-width bins on [lo, hi); the last bin includes hi. NaNs are skipped.
inline Histogram histogram(const double* v, size_t n, double lo, double hi, int bins) {
    Histogram h;
    h.lo = lo, h.hi = hi;
    bins = std::max(1, bins);
    h.counts.assign(size_t(bins), 0.0);
    const double w = (hi - lo) / bins;
    for (size_t i = 0; i < n; ++i) {
        const double x = v[i];
        if (std::isnan(x)) continue;
        ++h.total;
        if (x < lo) { ++h.below; continue; }
        if (x > hi) { ++h.above; continue; }
        int b = int((x - lo) / w);
        if (b >= bins) b = bins - 1;
        h.counts[size_t(b)] += 1;
    }
    h.density.resize(h.counts.size());
    for (size_t b = 0; b < h.counts.size(); ++b) h.density[b] = h.total ? h.counts[b] / (double(h.total) * w) : 0.0;
    return h;
}

// Index of the bin containing x, or -1 outside [lo, hi].
inline int bin_of(const Histogram& h, double x) {
    if (h.counts.empty() || !(x >= h.lo) || !(x <= h.hi)) return -1;
    const int b = int((x - h.lo) / h.width());
    return std::min(b, int(h.counts.size()) - 1);
}

// ---------------------------------------------------------------------------------------------
// Hover: the index of the value in ascending xs nearest to x (-1 if empty).

inline int nearest_sorted(const double* xs, size_t n, double x) {
    if (n == 0) return -1;
    const double* it = std::lower_bound(xs, xs + n, x);
    if (it == xs) return 0;
    if (it == xs + n) return int(n - 1);
    return (x - *(it - 1) <= *it - x) ? int(it - 1 - xs) : int(it - xs);
}

// ---------------------------------------------------------------------------------------------
// Runs: the maximal stretches of equal labels, [begin, end) in index order — a categorical strip
// (e.g. each position's cache tier) is drawn as one rectangle per run, not one per position.

struct Run {
    size_t begin = 0, end = 0;
    int label = 0;
};

inline std::vector<Run> runs(const int* labels, size_t n) {
    std::vector<Run> out;
    for (size_t i = 0; i < n; ++i) {
        if (out.empty() || out.back().label != labels[i]) out.push_back({i, i + 1, labels[i]});
        else out.back().end = i + 1;
    }
    return out;
}
inline std::vector<Run> runs(const std::vector<int>& labels) { return runs(labels.data(), labels.size()); }

// ---------------------------------------------------------------------------------------------
// Colour map: viridis (perceptually uniform, readable in grey scale), t in [0, 1] -> RGB in [0, 1].

inline std::array<float, 3> viridis(double t) {
    static const float c[9][3] = {{0.267f, 0.005f, 0.329f}, {0.283f, 0.141f, 0.458f}, {0.254f, 0.265f, 0.530f},
                                  {0.207f, 0.372f, 0.553f}, {0.164f, 0.471f, 0.558f}, {0.128f, 0.567f, 0.551f},
                                  {0.135f, 0.659f, 0.518f}, {0.478f, 0.821f, 0.318f}, {0.993f, 0.906f, 0.144f}};
    if (!(t > 0)) t = 0;  // NaN -> 0
    if (t > 1) t = 1;
    const double x = t * 8;
    const int i = std::min(7, int(x));
    const float f = float(x - i);
    return {c[i][0] + f * (c[i + 1][0] - c[i][0]), c[i][1] + f * (c[i + 1][1] - c[i][1]),
            c[i][2] + f * (c[i + 1][2] - c[i][2])};
}

// Diverging colour map for signed differences (ColorBrewer RdBu's ends): t in [-1, 1] -> RGB in
// [0, 1]; -1 blue, 0 near white, +1 red, so "better" and "worse" read apart and 0 disappears
// into the page. NaN -> 0.
inline std::array<float, 3> diverging(double t) {
    static const float blue[3] = {0.129f, 0.400f, 0.675f}, mid[3] = {0.969f, 0.969f, 0.969f},
                       red[3] = {0.698f, 0.094f, 0.169f};
    if (!(t == t)) t = 0;
    t = std::clamp(t, -1.0, 1.0);
    const float* end = t < 0 ? blue : red;
    const float f = float(std::fabs(t));
    return {mid[0] + f * (end[0] - mid[0]), mid[1] + f * (end[1] - mid[1]), mid[2] + f * (end[2] - mid[2])};
}

// Normalized position of v in [lo, hi] (log: in log space), clamped to [0, 1].
inline double normalize(double v, double lo, double hi, bool log = false) {
    if (log) {
        if (!(v > 0) || !(lo > 0)) return 0;
        v = std::log10(v), lo = std::log10(lo), hi = std::log10(hi);
    }
    if (!(hi > lo)) return 0.5;
    return std::clamp((v - lo) / (hi - lo), 0.0, 1.0);
}

}  // namespace plotmath
