#include "tqkv/rotation.hpp"

#include <cmath>
#include <stdexcept>

#include "kernels/kernels.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

using detail::KernelTable;

const char* to_string(RotationKind kind) {
    switch (kind) {
        case RotationKind::Auto: return "auto";
        case RotationKind::Hadamard: return "hadamard";
        case RotationKind::Structured: return "structured";
        case RotationKind::Dense: return "dense";
    }
    return "?";
}

RotationKind rotation_kind_from_string(const std::string& name) {
    for (auto k : {RotationKind::Auto, RotationKind::Hadamard, RotationKind::Structured, RotationKind::Dense})
        if (name == to_string(k)) return k;
    throw std::invalid_argument("tqkv: unknown rotation '" + name + "' (auto, hadamard, structured, dense)");
}

namespace {

bool is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

double int_power(double x, int k) {
    double r = 1.0;
    for (int i = 0; i < k; ++i) r *= x;
    return r;
}

}  // namespace

Rotation::Rotation(int dim, RotationKind kind, uint64_t seed, int rounds)
    : dim_(dim), padded_(detail::pad_lanes(dim)), kind_(kind) {
    if (dim < kMinDim || dim > kMaxDim)
        throw std::invalid_argument("tqkv: rotation dimension " + std::to_string(dim) + " out of range [3, 1024]");
    if (kind_ == RotationKind::Auto) kind_ = is_pow2(dim) ? RotationKind::Hadamard : RotationKind::Dense;
    if (rounds < 0 || rounds > 16)
        throw std::invalid_argument("tqkv: rotation rounds " + std::to_string(rounds) + " out of range [0, 16]");
    Rng rng(derive_seed(seed, 0x526f74 /* "Rot" */));
    const int words = padded_ / 32 + 1;

    auto draw_signs = [&](int n_rounds) {
        signs_.assign(size_t(n_rounds) * words, 0u);
        for (int r = 0; r < n_rounds; ++r)
            for (int i = 0; i < dim_; ++i)
                if (rng.next() >> 63) signs_[size_t(r) * words + i / 32] |= 1u << (i % 32);
    };

    if (kind_ == RotationKind::Hadamard) {
        if (!is_pow2(dim))
            throw std::invalid_argument("tqkv: Hadamard rotation needs a power-of-two dimension, got " +
                                        std::to_string(dim) + " (use structured or dense)");
        rounds_ = rounds ? rounds : kDefaultHadamardRounds;
        draw_signs(rounds_);
        gain_ = int_power(std::sqrt(double(dim)), rounds_);
    } else if (kind_ == RotationKind::Structured) {
        block_ = dim & -dim;  // largest power of two dividing dim
        if (block_ < 2)
            throw std::invalid_argument("tqkv: structured rotation needs an even dimension, got " +
                                        std::to_string(dim) + " (use dense)");
        rounds_ = rounds ? rounds : kDefaultStructuredRounds;
        draw_signs(rounds_);
        perm_.resize(size_t(rounds_) * dim);
        inv_perm_.resize(size_t(rounds_) * dim);
        for (int r = 0; r < rounds_; ++r) {
            int32_t* p = &perm_[size_t(r) * dim];
            for (int i = 0; i < dim; ++i) p[i] = i;
            for (int i = dim - 1; i > 0; --i) std::swap(p[i], p[rng.below(uint64_t(i) + 1)]);  // Fisher–Yates
            for (int i = 0; i < dim; ++i) inv_perm_[size_t(r) * dim + p[i]] = i;
        }
        gain_ = int_power(std::sqrt(double(block_)), rounds_);
    } else {
        // Dense: Gram–Schmidt (twice, for full double-precision orthogonality) on the columns of a
        // Gaussian matrix = the Q of its QR with positive diagonal, which is Haar-distributed.
        rounds_ = 0;
        const size_t n = size_t(dim);
        std::vector<double> q(n * n);  // column j at q[j*n ...]
        for (auto& v : q) v = rng.normal();
        for (size_t j = 0; j < n; ++j) {
            double* col = &q[j * n];
            for (int pass = 0; pass < 2; ++pass)
                for (size_t k = 0; k < j; ++k) {
                    const double* prev = &q[k * n];
                    double dot = 0;
                    for (size_t i = 0; i < n; ++i) dot += prev[i] * col[i];
                    for (size_t i = 0; i < n; ++i) col[i] -= dot * prev[i];
                }
            double norm = 0;
            for (size_t i = 0; i < n; ++i) norm += col[i] * col[i];
            norm = std::sqrt(norm);
            for (size_t i = 0; i < n; ++i) col[i] /= norm;
        }
        // Row i of R is orthonormal vector i: R[i][j] = q[i*n + j].
        forward_cols_.assign(size_t(padded_) * n, 0.0f);
        inverse_cols_.assign(size_t(padded_) * n, 0.0f);
        for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < n; ++j) {
                const float r_ij = float(q[i * n + j]);
                forward_cols_[j * padded_ + i] = r_ij;  // column j of R
                inverse_cols_[i * padded_ + j] = r_ij;  // column i of R^T is row i of R
            }
        gain_ = 1.0;
    }
}

void Rotation::forward_unscaled(float* x, float* tmp, const KernelTable& k) const {
    const int words = padded_ / 32 + 1;
    switch (kind_) {
        case RotationKind::Hadamard:
            for (int r = 0; r < rounds_; ++r) {
                k.flip_signs(x, &signs_[size_t(r) * words], padded_);
                k.fwht(x, dim_, dim_);
            }
            break;
        case RotationKind::Structured:
            for (int r = 0; r < rounds_; ++r) {
                k.flip_signs(x, &signs_[size_t(r) * words], padded_);
                k.fwht(x, dim_, block_);
                const int32_t* p = &perm_[size_t(r) * dim_];
                for (int i = 0; i < dim_; ++i) tmp[i] = x[p[i]];
                for (int i = 0; i < dim_; ++i) x[i] = tmp[i];
            }
            break;
        default:
            k.matvec(forward_cols_.data(), padded_, dim_, x, tmp);
            for (int i = 0; i < padded_; ++i) x[i] = tmp[i];
    }
}

void Rotation::inverse_unscaled(float* x, float* tmp, const KernelTable& k) const {
    const int words = padded_ / 32 + 1;
    switch (kind_) {
        case RotationKind::Hadamard:
            for (int r = rounds_ - 1; r >= 0; --r) {
                k.fwht(x, dim_, dim_);
                k.flip_signs(x, &signs_[size_t(r) * words], padded_);
            }
            break;
        case RotationKind::Structured:
            for (int r = rounds_ - 1; r >= 0; --r) {
                const int32_t* p = &perm_[size_t(r) * dim_];
                for (int i = 0; i < dim_; ++i) tmp[p[i]] = x[i];
                for (int i = 0; i < dim_; ++i) x[i] = tmp[i];
                k.fwht(x, dim_, block_);
                k.flip_signs(x, &signs_[size_t(r) * words], padded_);
            }
            break;
        default:
            k.matvec(inverse_cols_.data(), padded_, dim_, x, tmp);
            for (int i = 0; i < padded_; ++i) x[i] = tmp[i];
    }
}

void Rotation::forward(std::span<float> x) const {
    if (x.size() != size_t(dim_))
        throw std::invalid_argument("tqkv: Rotation::forward expects " + std::to_string(dim_) + " floats, got " +
                                    std::to_string(x.size()));
    std::vector<float> buf(padded_, 0.0f), tmp(padded_);
    std::copy(x.begin(), x.end(), buf.begin());
    const auto& k = detail::kernels_by_name("");
    forward_unscaled(buf.data(), tmp.data(), k);
    k.scale(buf.data(), padded_, float(1.0 / gain_));
    std::copy(buf.begin(), buf.begin() + dim_, x.begin());
}

void Rotation::inverse(std::span<float> y) const {
    if (y.size() != size_t(dim_))
        throw std::invalid_argument("tqkv: Rotation::inverse expects " + std::to_string(dim_) + " floats, got " +
                                    std::to_string(y.size()));
    std::vector<float> buf(padded_, 0.0f), tmp(padded_);
    std::copy(y.begin(), y.end(), buf.begin());
    const auto& k = detail::kernels_by_name("");
    inverse_unscaled(buf.data(), tmp.data(), k);
    k.scale(buf.data(), padded_, float(1.0 / gain_));
    std::copy(buf.begin(), buf.begin() + dim_, y.begin());
}

std::vector<float> Rotation::matrix() const {
    std::vector<float> m(size_t(dim_) * dim_), e(dim_);
    for (int j = 0; j < dim_; ++j) {
        std::fill(e.begin(), e.end(), 0.0f);
        e[j] = 1.0f;
        forward(e);
        for (int i = 0; i < dim_; ++i) m[size_t(i) * dim_ + j] = e[i];
    }
    return m;
}

}  // namespace tqkv
