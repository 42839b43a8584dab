#include "tqkv/codebook.hpp"

#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace tqkv {

namespace {

double ipow(double x, int k) {  // x^k by squaring: + and * only, identical on every target
    double r = 1.0;
    while (k > 0) {
        if (k & 1) r *= x;
        x *= x;
        k >>= 1;
    }
    return r;
}

constexpr int kGridCells = 1 << 16;

}  // namespace

CoordinateDensity::CoordinateDensity(int dim) : dim_(dim) {
    if (dim < kMinDim || dim > kMaxDim)
        throw std::invalid_argument("tqkv: dimension " + std::to_string(dim) + " out of range [3, 1024]");
    // Beyond 20 standard deviations (sigma ~ 1/sqrt(d)) the density is below e^-200 of its peak.
    limit_ = std::min(1.0, 20.0 / std::sqrt(double(dim)));
    step_ = limit_ / kGridCells;
    for (auto& t : table_) t.assign(kGridCells + 1, 0.0);
    // Composite Simpson per grid cell of [-support, 0], accumulated into prefix sums.
    double acc[3] = {0, 0, 0};
    double x0 = -limit_, f0 = raw(x0);
    for (int i = 0; i < kGridCells; ++i) {
        const double x1 = -limit_ + (i + 1) * step_, xm = 0.5 * (x0 + x1);
        const double f1 = raw(x1), fm = raw(xm);
        acc[0] += step_ / 6.0 * (f0 + 4.0 * fm + f1);
        acc[1] += step_ / 6.0 * (x0 * f0 + 4.0 * xm * fm + x1 * f1);
        acc[2] += step_ / 6.0 * (x0 * x0 * f0 + 4.0 * xm * xm * fm + x1 * x1 * f1);
        for (int k = 0; k < 3; ++k) table_[k][i + 1] = acc[k];
        x0 = x1;
        f0 = f1;
    }
    norm_ = 0.5 / acc[0];  // f is even: the total mass is twice the left half
}

double CoordinateDensity::raw(double t) const {
    const double w = (1.0 - t) * (1.0 + t);
    if (w < 0.0) return 0.0;
    // (1 - t^2)^((d-3)/2): an integer power, times sqrt(w) when d is even.
    if (dim_ % 2 == 1) return ipow(w, (dim_ - 3) / 2);
    return ipow(w, (dim_ - 4) / 2) * std::sqrt(w);
}

double CoordinateDensity::pdf(double t) const { return raw(t) * norm_; }

double CoordinateDensity::left(int k, double t) const {
    if (t <= -limit_) return 0.0;
    if (t >= 0.0) return table_[k][kGridCells] * norm_;
    int i = int((t + limit_) / step_);
    if (i >= kGridCells) i = kGridCells - 1;
    const double x0 = -limit_ + i * step_, xm = 0.5 * (x0 + t), h = t - x0;
    auto g = [k](double x, double f) { return k == 0 ? f : k == 1 ? x * f : x * x * f; };
    const double part = h / 6.0 * (g(x0, raw(x0)) + 4.0 * g(xm, raw(xm)) + g(t, raw(t)));
    return (table_[k][i] + part) * norm_;
}

double CoordinateDensity::integral(int k, double a, double b) const {
    // f is even, so t^k f is even for k = 0, 2 and odd for k = 1: an interval on the right is
    // its mirror image on the left (negated for k = 1).
    const double sign = k == 1 ? -1.0 : 1.0;
    if (b <= 0.0) return left(k, b) - left(k, a);
    if (a >= 0.0) return sign * (left(k, -a) - left(k, -b));
    return (left(k, 0.0) - left(k, a)) + sign * (left(k, 0.0) - left(k, -b));
}

// ---------------------------------------------------------------------------------------------

std::vector<double> LloydMaxCodebook::lloyd_step(const CoordinateDensity& f, const std::vector<double>& c) {
    const size_t n = c.size();
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) {
        const double lo = i == 0 ? -f.support() : 0.5 * (c[i - 1] + c[i]);
        const double hi = i + 1 == n ? f.support() : 0.5 * (c[i] + c[i + 1]);
        const double m = f.mass(lo, hi);
        out[i] = m > 0 ? f.first_moment(lo, hi) / m : 0.5 * (lo + hi);
    }
    return out;
}

double LloydMaxCodebook::expected_mse(const CoordinateDensity& f, const std::vector<double>& c) {
    double mse = 0;
    const size_t n = c.size();
    for (size_t i = 0; i < n; ++i) {
        const double lo = i == 0 ? -f.support() : 0.5 * (c[i - 1] + c[i]);
        const double hi = i + 1 == n ? f.support() : 0.5 * (c[i] + c[i + 1]);
        mse += f.second_moment(lo, hi) - 2.0 * c[i] * f.first_moment(lo, hi) + c[i] * c[i] * f.mass(lo, hi);
    }
    return mse;
}

LloydMaxCodebook::LloydMaxCodebook(int dim, int bits) : dim_(dim), bits_(bits) {
    if (bits < 1 || bits > kMaxBits)
        throw std::invalid_argument("tqkv: bits " + std::to_string(bits) + " out of range [1, 8]");
    const CoordinateDensity f(dim);  // validates dim
    const int levels = 1 << bits, half = levels / 2;

    // Start from the high-resolution optimum: point density ∝ f^(1/3). For f ∝ (1-t^2)^a that
    // is (1-t^2)^(a/3), i.e. the coordinate density of dimension (d-3)/3 + 3; use its quantiles.
    const CoordinateDensity start(std::max(kMinDim, (dim - 3) / 3 + 3));
    std::vector<double> pos(half);  // positive half; the codebook is symmetric by construction
    for (int i = 0; i < half; ++i) {
        const double target = 0.5 + 0.5 * (i + 0.5) / half;
        double lo = 0, hi = start.support();
        for (int it = 0; it < 100; ++it) {
            const double mid = 0.5 * (lo + hi);
            (start.cdf(mid) < target ? lo : hi) = mid;
        }
        pos[i] = std::min(0.5 * (lo + hi), f.support() * (i + 1.0) / (half + 1.0));
    }

    // Lloyd–Max on the positive half: cells [0, b1], [b1, b2], ..., [b_{h-1}, support], b_i the
    // midpoints. The fixed point c = T(c) (T: move each centroid to its cell's mean) is unique for
    // this log-concave density. Plain Lloyd iteration converges linearly and, at 6-8 bits, far too
    // slowly, so we take Newton steps on T(c) - c = 0 (the Jacobian is tridiagonal: cell i only
    // sees its neighbours through its boundaries) and fall back to a Lloyd step whenever a Newton
    // step would break the ordering of the centroids.
    const double sigma = std::sqrt(f.second_moment(-1, 1));
    const double tol = 1e-15 * sigma;
    std::vector<double> t(half), diag(half), lower(half), upper(half), rhs(half), next(half);
    double prev_change = 1e300;
    for (iterations_ = 0; iterations_ < 5000; ++iterations_) {
        for (int i = 0; i < half; ++i) {
            const double lo = i == 0 ? 0.0 : 0.5 * (pos[i - 1] + pos[i]);
            const double hi = i + 1 == half ? f.support() : 0.5 * (pos[i] + pos[i + 1]);
            const double m = f.mass(lo, hi);
            t[i] = m > 0 ? f.first_moment(lo, hi) / m : 0.5 * (lo + hi);
            // dT_i/dlo = f(lo)(T_i - lo)/m, dT_i/dhi = f(hi)(hi - T_i)/m; each boundary moves by
            // half of each neighbouring centroid's move.
            const double dlo = (i > 0 && m > 0) ? 0.5 * f.pdf(lo) * (t[i] - lo) / m : 0.0;
            const double dhi = (i + 1 < half && m > 0) ? 0.5 * f.pdf(hi) * (hi - t[i]) / m : 0.0;
            lower[i] = dlo;
            upper[i] = dhi;
            diag[i] = dlo + dhi - 1.0;
            rhs[i] = pos[i] - t[i];
        }
        // Thomas algorithm for the tridiagonal system J * step = -(T(c) - c).
        for (int i = 1; i < half; ++i) {
            const double w = lower[i] / diag[i - 1];
            diag[i] -= w * upper[i - 1];
            rhs[i] -= w * rhs[i - 1];
        }
        next[half - 1] = rhs[half - 1] / diag[half - 1];
        for (int i = half - 2; i >= 0; --i) next[i] = (rhs[i] - upper[i] * next[i + 1]) / diag[i];
        double change = 0;
        bool ordered = true;
        for (int i = 0; i < half; ++i) {
            next[i] += pos[i];
            ordered = ordered && next[i] > (i == 0 ? 0.0 : next[i - 1]) && next[i] < f.support();
        }
        if (!ordered) next = t;  // Lloyd step
        for (int i = 0; i < half; ++i) change = std::max(change, std::fabs(next[i] - pos[i]));
        pos.swap(next);
        // Newton converges quadratically until the rounding noise of the integrals (~1e-13..1e-10
        // sigma) takes over; stop there, when a step no longer halves the previous one.
        if (change <= tol || (change <= 1e-8 * sigma && change >= 0.5 * prev_change)) break;
        prev_change = change;
    }

    centroids_.resize(levels);
    for (int i = 0; i < half; ++i) {
        centroids_[half + i] = pos[i];
        centroids_[half - 1 - i] = -pos[i];
    }
    boundaries_.resize(levels - 1);
    for (int i = 0; i + 1 < levels; ++i) boundaries_[i] = 0.5 * (centroids_[i] + centroids_[i + 1]);
    boundaries_[half - 1] = 0.0;
    centroids_f_.assign(centroids_.begin(), centroids_.end());
    boundaries_f_.assign(boundaries_.begin(), boundaries_.end());
    boundaries_f_.push_back(std::numeric_limits<float>::infinity());
    mse_coord_ = expected_mse(f, centroids_);
}

std::shared_ptr<const LloydMaxCodebook> LloydMaxCodebook::get(int dim, int bits) {
    if (dim < kMinDim || dim > kMaxDim)
        throw std::invalid_argument("tqkv: dimension " + std::to_string(dim) + " out of range [3, 1024]");
    if (bits < 1 || bits > kMaxBits)
        throw std::invalid_argument("tqkv: bits " + std::to_string(bits) + " out of range [1, 8]");
    static std::mutex mutex;
    static std::map<std::pair<int, int>, std::shared_ptr<const LloydMaxCodebook>> cache;
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = cache[{dim, bits}];
    if (!slot) slot = std::make_shared<const LloydMaxCodebook>(dim, bits);
    return slot;
}

double gaussian_limit_mse(int bits) {
    // Lloyd–Max distortion of the unit Gaussian (Max 1960), which is E||u-û||^2 as d → ∞.
    static const double table[] = {0.3633802276, 0.1174820726, 0.03454397, 0.009497};
    if (bits < 1 || bits > 4) throw std::invalid_argument("tqkv: gaussian_limit_mse tabulated for bits 1..4");
    return table[bits - 1];
}

double mse_distortion(double bits, int dim) {
    if (!(bits >= 1 && bits <= 8) || dim < 2)
        throw std::invalid_argument("mse_distortion: bits must be in [1, 8] and dim >= 2");
    const int lo = int(std::floor(bits));
    const double frac = bits - lo;
    const int hc = frac > 0 ? int(std::lround(frac * dim)) : 0;
    if (hc == 0 || lo == 8) return LloydMaxCodebook::get(dim, lo)->mse();
    const double low = dim - hc > 0 ? LloydMaxCodebook::get(dim - hc, lo)->mse() : 0.0;
    return (double(hc) * LloydMaxCodebook::get(hc, lo + 1)->mse() + double(dim - hc) * low) / dim;
}

}  // namespace tqkv
