// Random rotations of R^d, drawn from a seed.
//
//   Hadamard    (d a power of two): R = (H D_k) ... (H D_1) / d^(k/2), D_i random ±1 diagonals,
//               H the Walsh–Hadamard matrix; O(d log d), in place.
//   Structured  (any d with a power-of-two factor B >= 2): each round applies random signs, a
//               Walsh–Hadamard transform on each block of B = largest power of two dividing d,
//               then a random permutation that spreads the blocks; O(d log B) per round.
//   Dense       (any d): the Q factor of a seeded Gaussian matrix (Haar-distributed); O(d^2).
//   Auto        Hadamard for powers of two, Dense otherwise — the choice the rotation tests
//               measured (tests/test_rotation.cpp: KS distance of rotated one-hot and outlier
//               inputs to the exact coordinate density).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tqkv {

namespace detail {
struct KernelTable;
}

enum class RotationKind { Auto, Hadamard, Structured, Dense };
const char* to_string(RotationKind kind);
RotationKind rotation_kind_from_string(const std::string& name);  // throws std::invalid_argument

constexpr int kDefaultHadamardRounds = 3;
constexpr int kDefaultStructuredRounds = 4;

class Rotation {
public:
    // rounds = 0 picks the default for the kind. Throws std::invalid_argument on bad arguments.
    Rotation(int dim, RotationKind kind, uint64_t seed, int rounds = 0);

    int dim() const { return dim_; }
    int padded_dim() const { return padded_; }  // internal buffer length (multiple of 16)
    RotationKind kind() const { return kind_; }
    int rounds() const { return rounds_; }
    // The unscaled transforms multiply lengths by gain(); forward()/inverse() divide it out.
    double gain() const { return gain_; }

    // y = R x and x = R^T y, in place on dim() floats (convenience API, allocates scratch).
    void forward(std::span<float> x) const;
    void inverse(std::span<float> y) const;
    size_t table_bytes() const {  // memory of the rotation's tables
        return signs_.size() * 4 + (perm_.size() + inv_perm_.size()) * 4 + (forward_cols_.size() + inverse_cols_.size()) * 4;
    }
    // The dense matrix of R (row-major, dim x dim), for inspection and tests.
    std::vector<float> matrix() const;

    // Hot-path versions: x has padded_dim() floats (zeros past dim()), tmp padded_dim() floats;
    // result = gain() * R x (forward) or gain() * R^T x (inverse).
    void forward_unscaled(float* x, float* tmp, const detail::KernelTable& k) const;
    void inverse_unscaled(float* x, float* tmp, const detail::KernelTable& k) const;

private:
    int dim_, padded_, rounds_ = 0, block_ = 0;
    RotationKind kind_;
    double gain_ = 1.0;
    std::vector<uint32_t> signs_;         // rounds * padded/32 words of sign masks
    std::vector<int32_t> perm_, inv_perm_;  // rounds * dim (structured)
    std::vector<float> forward_cols_;     // dense: R column-major, padded rows
    std::vector<float> inverse_cols_;     // dense: R^T column-major, padded rows
};

}  // namespace tqkv
