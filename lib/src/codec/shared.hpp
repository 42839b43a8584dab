// Pieces shared by the codecs (internal).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/codec.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv::detail {

// Result of normalize_pow2: the vector's true norm, and the square root of the sum of squares of
// the rescaled buffer (0 for a zero vector).
struct Normalized {
    double norm;
    float root;
};

// Rescales buf (padded floats) by a power of two so that max |x| lands in [1, 2) — exact, and it
// keeps the sum of squares away from overflow and underflow (huge values, denormals) — then
// returns the norm. Every step is a canonical kernel operation, so all kernels agree bit for bit.
Normalized normalize_pow2(float* buf, int padded, const KernelTable& k);

// Norm storage (fp16 or fp32, little-endian).
inline size_t norm_bytes(NormFormat f) { return f == NormFormat::F16 ? 2 : 4; }
// The value a norm is stored as; +inf when it does not fit the format.
float stored_norm(double norm, NormFormat f);
void write_norm(uint8_t* out, double norm, NormFormat f);
float read_norm(const uint8_t* in, NormFormat f);
// Throws std::invalid_argument naming the vector if its norm does not fit the format.
void check_norm_fits(double norm, NormFormat f, size_t vector_index, const char* what);

// The largest |x_i| as a bit pattern (sign cleared); >= 0x7f800000 means an Inf or NaN is present.
uint32_t max_abs_bits(const float* x, size_t n);

// Throws (check_norm_fits) for the first row whose norm the format cannot hold. Only rows with
// max |x| * sqrt(d) beyond the format's range can fail; those get the exact encoder norm.
void check_row_norms(const float* x, size_t n, size_t stride, int dim, NormFormat f, const KernelTable& k);

// A seeded Gaussian matrix S (rows x cols, entries N(0,1)) stored column-major with `padded`
// rows, and its transpose likewise (cols x rows, padded to pad_lanes(cols)).
void gaussian_matrix(uint64_t seed, int rows, int cols, std::vector<float>& s_cols, std::vector<float>& st_cols);

// Per-thread scratch buffers for one vector, reused across calls: after a thread's first call
// at a given dimension, encoding and decoding allocate nothing. A codec function takes it once
// and does not call another codec while holding it.
struct Scratch {
    std::vector<float> buf, tmp, aux, z;
    std::vector<uint8_t> codes;
};
inline Scratch& thread_scratch(int padded) {
    thread_local Scratch s;
    if (s.buf.size() < size_t(padded)) {
        s.buf.resize(padded);
        s.tmp.resize(padded);
        s.aux.resize(padded);
        s.z.resize(padded);
        s.codes.resize(padded);
    }
    return s;
}

// Copies a row into the zero-padded buffer.
inline void load_row(const float* x, int dim, int padded, std::vector<float>& buf) {
    std::memcpy(buf.data(), x, sizeof(float) * dim);
    std::fill(buf.begin() + dim, buf.begin() + padded, 0.0f);
}

}  // namespace tqkv::detail
