#include <cmath>
#include <stdexcept>

#include "codec/shared.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/packing.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

using namespace detail;

namespace {
constexpr float kSignTable[2] = {-1.0f, 1.0f};
constexpr float kSignBounds[2] = {0.0f, INFINITY};

size_t qjl_bytes(const CodecConfig& cfg) {
    if (cfg.bits != 1.0) throw std::invalid_argument("tqkv: qjl codes 1 bit per coordinate, got bits " +
                                                     std::to_string(cfg.bits));
    return norm_bytes(cfg.norm) + packed_bytes(size_t(cfg.dim), 1);
}
}  // namespace

Qjl::Qjl(const CodecConfig& cfg) : VectorCodec(cfg, qjl_bytes(cfg)) {
    if (cfg.dim < kMinDim || cfg.dim > kMaxDim)
        throw std::invalid_argument("tqkv: dim " + std::to_string(cfg.dim) + " out of range [3, 1024]");
    gaussian_matrix(derive_seed(cfg.seed, 0x514a4c), cfg.dim, cfg.dim, s_cols_, st_cols_);
}

void Qjl::check_rows(const float* x, size_t n, size_t x_stride) const {
    check_row_norms(x, n, x_stride, dim(), cfg_.norm, *k_);
}

void Qjl::encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const {
    const int d = dim(), padded = pad_lanes(d);
    const size_t nb = norm_bytes(cfg_.norm);
    Scratch& s = thread_scratch(padded);
    for (size_t v = 0; v < n; ++v) {
        load_row(x + v * x_stride, d, padded, s.buf);
        const Normalized nz = normalize_pow2(s.buf.data(), padded, *k_);  // signs are scale-free
        k_->matvec(s_cols_.data(), padded, d, s.buf.data(), s.tmp.data());
        k_->quantize(s.tmp.data(), padded, kSignBounds, 1, s.codes.data());
        uint8_t* o = out + v * out_stride;
        write_norm(o, nz.norm, cfg_.norm);
        k_->pack(s.codes.data(), d, 1, o + nb);
    }
}

void Qjl::check_codes(const uint8_t* in, size_t in_stride, size_t n) const {
    for (size_t v = 0; v < n; ++v)
        if (!std::isfinite(read_norm(in + v * in_stride, cfg_.norm)))
            throw std::invalid_argument("tqkv: encoded vector " + std::to_string(v) + " has a non-finite norm");
}

void Qjl::decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const {
    // x̂ = ||x|| sqrt(pi/2)/d S^T sign(S x), unbiased over the draw of S.
    const int d = dim(), padded = pad_lanes(d);
    const size_t nb = norm_bytes(cfg_.norm);
    const double qjl_scale = std::sqrt(M_PI / 2.0) / d;
    Scratch& s = thread_scratch(padded);
    for (size_t v = 0; v < n; ++v) {
        const uint8_t* row = in + v * in_stride;
        k_->unpack(row + nb, d, 1, s.codes.data());
        k_->lookup(s.codes.data(), d, kSignTable, s.buf.data());
        std::fill(s.buf.begin() + d, s.buf.begin() + padded, 0.0f);
        k_->matvec(st_cols_.data(), padded, d, s.buf.data(), s.tmp.data());
        k_->scale(s.tmp.data(), padded, float(read_norm(row, cfg_.norm) * qjl_scale));
        std::copy(s.tmp.begin(), s.tmp.begin() + d, out + v * out_stride);
    }
}

void Qjl::dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const {
    const int d = dim(), padded = pad_lanes(d);
    const size_t nb = norm_bytes(cfg_.norm);
    const double qjl_scale = std::sqrt(M_PI / 2.0) / d;
    Scratch& s = thread_scratch(padded);
    load_row(q, d, padded, s.buf);
    k_->matvec(s_cols_.data(), padded, d, s.buf.data(), s.tmp.data());
    k_->dot_codes(s.tmp.data(), d, kSignTable, 1, in + nb, in_stride, n, scores);
    for (size_t v = 0; v < n; ++v) scores[v] = float(read_norm(in + v * in_stride, cfg_.norm) * qjl_scale * scores[v]);
}

}  // namespace tqkv

namespace tqkv {
size_t Qjl::table_bytes() const { return (s_cols_.size() + st_cols_.size()) * sizeof(float); }
}  // namespace tqkv
