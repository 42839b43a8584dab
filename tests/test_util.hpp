// Helpers shared by the tests.
#pragma once
#include <cmath>
#include <vector>

#include "tqkv/rng.hpp"

namespace tqkv_test {

// n vectors of dim i.i.d. N(0, 1) coordinates (or unit vectors when unit = true).
inline std::vector<float> gaussian_vectors(size_t n, int dim, uint64_t seed, bool unit = false) {
    tqkv::Rng rng(seed);
    std::vector<float> x(n * dim);
    for (size_t v = 0; v < n; ++v) {
        double ss = 0;
        for (int j = 0; j < dim; ++j) {
            const double g = rng.normal();
            x[v * dim + j] = float(g);
            ss += g * g;
        }
        if (unit)
            for (int j = 0; j < dim; ++j) x[v * dim + j] = float(x[v * dim + j] / std::sqrt(ss));
    }
    return x;
}

inline double dot(const float* a, const float* b, int n) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
    return s;
}

}  // namespace tqkv_test
