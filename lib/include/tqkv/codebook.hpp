// The density of one coordinate of a rotated unit vector, and its Lloyd–Max codebook.
//
// If u is uniform on the unit sphere of R^d, each coordinate t = u_j has density
//     f(t) = (1 - t^2)^((d-3)/2) / Z   on [-1, 1]   (≈ N(0, 1/d) for large d).
// After a random rotation every unit vector looks like that, so one scalar codebook per (d, b),
// solved once, quantizes every coordinate near-optimally.
//
// Everything here uses + - * / and sqrt in double precision only (no pow/exp/lgamma), so the
// solved centroids and boundaries are bit-identical on every target (x86, ARM, wasm).
#pragma once
#include <memory>
#include <vector>

namespace tqkv {

constexpr int kMinDim = 3;
constexpr int kMaxDim = 1024;
constexpr int kMaxBits = 8;

// f(t) tabulated on a fine grid of [-support, 0], with prefix integrals of f, t f and t^2 f
// accumulated from the far left tail, so the mass and moments of any interval cost O(1) and keep
// full relative precision even for tail cells of mass 1e-6 (the positive half is taken by
// symmetry instead of as a difference of two numbers close to 1).
class CoordinateDensity {
public:
    explicit CoordinateDensity(int dim);

    int dim() const { return dim_; }
    double pdf(double t) const;  // normalized
    double cdf(double t) const { return mass(-1.0, t); }
    // Integrals over [a, b] (a <= b) of f, t f, t^2 f (normalized f).
    double mass(double a, double b) const { return integral(0, a, b); }
    double first_moment(double a, double b) const { return integral(1, a, b); }
    double second_moment(double a, double b) const { return integral(2, a, b); }
    double support() const { return limit_; }  // f is below e^-200 of its peak outside [-support, support]

private:
    double raw(double t) const;                        // unnormalized (1 - t^2)^((d-3)/2)
    double left(int k, double t) const;                // integral of t^k f over [-support, t], t <= 0
    double integral(int k, double a, double b) const;
    int dim_;
    double limit_, step_, norm_;
    std::vector<double> table_[3];                     // left(k, grid point i)
};

class LloydMaxCodebook {
public:
    // Solves the b-bit codebook for dimension d to convergence. Prefer get(), which caches.
    LloydMaxCodebook(int dim, int bits);
    // Cached per (dim, bits); thread-safe. Throws std::invalid_argument outside d 3..1024, b 1..8.
    static std::shared_ptr<const LloydMaxCodebook> get(int dim, int bits);

    int dim() const { return dim_; }
    int bits() const { return bits_; }
    int levels() const { return 1 << bits_; }
    // 2^b centroids, ascending, symmetric about 0.
    const std::vector<double>& centroids() const { return centroids_; }
    // 2^b - 1 decision boundaries (midpoints of neighbouring centroids), ascending.
    const std::vector<double>& boundaries() const { return boundaries_; }
    // Float copies used by the kernels. boundaries_f has 2^b entries: the last is +inf, so a
    // branchless binary search can always read index c + step - 1.
    const std::vector<float>& centroids_f() const { return centroids_f_; }
    const std::vector<float>& boundaries_f() const { return boundaries_f_; }

    // Exact expected squared error of one coordinate, E (t - q(t))^2 under f.
    double mse_per_coordinate() const { return mse_coord_; }
    // Exact E ||u - û||^2 for a unit vector u: d times the per-coordinate value.
    double mse() const { return mse_coord_ * dim_; }
    int iterations() const { return iterations_; }

    // One Lloyd–Max step from given centroids (for the explorer's step-by-step view):
    // boundaries at midpoints, then each centroid moved to the mean of its cell.
    static std::vector<double> lloyd_step(const CoordinateDensity& f, const std::vector<double>& centroids);
    static double expected_mse(const CoordinateDensity& f, const std::vector<double>& centroids);

private:
    int dim_, bits_, iterations_ = 0;
    double mse_coord_ = 0;
    std::vector<double> centroids_, boundaries_;
    std::vector<float> centroids_f_, boundaries_f_;
};

// Reference distortions E||u - û||^2 of the Lloyd–Max quantizer for the Gaussian limit (d → ∞),
// b = 1..4, and the Shannon lower bound 4^-b.
double gaussian_limit_mse(int bits);
inline double shannon_bound(int bits) { return 1.0 / double(1ull << (2 * bits)); }

// E||u - û||^2 of a unit vector coded by TurboQuant-MSE at `bits` per coordinate in dimension
// `dim` (Lloyd–Max on the exact coordinate density); for a fractional rate, the channel-count mix
// of its two parts (round(frac * dim) channels at floor(bits) + 1 bits, the rest at floor(bits)),
// as SplitCodec codes them. MSE codes shrink inner products by (1 - this) on average: the cache's
// debias factor is 1 / (1 - mse_distortion(bits, dim)).
double mse_distortion(double bits, int dim);

}  // namespace tqkv
