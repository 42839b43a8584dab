#include <cmath>
#include <stdexcept>

#include "codec/shared.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/packing.hpp"

namespace tqkv {

using namespace detail;

namespace {

int integer_bits(const CodecConfig& cfg, int lo, int hi, const char* method) {
    if (cfg.bits != std::floor(cfg.bits) || cfg.bits < lo || cfg.bits > hi)
        throw std::invalid_argument(std::string("tqkv: ") + method + " bits " + std::to_string(cfg.bits) +
                                    " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return int(cfg.bits);
}

}  // namespace

TurboQuantMse::TurboQuantMse(const CodecConfig& cfg)
    : VectorCodec(cfg, norm_bytes(cfg.norm) + packed_bytes(size_t(cfg.dim), integer_bits(cfg, 1, 8, "mse"))),
      bits_(int(cfg.bits)),
      rot_(cfg.dim, cfg.rotation, cfg.seed, cfg.rotation_rounds),
      cb_(LloydMaxCodebook::get(cfg.dim, bits_)) {}

void TurboQuantMse::check_rows(const float* x, size_t n, size_t x_stride) const {
    check_row_norms(x, n, x_stride, dim(), cfg_.norm, *k_);
}

void TurboQuantMse::encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const {
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm);
    const float* bounds = cb_->boundaries_f().data();
    Scratch& s = thread_scratch(padded);
    for (size_t v = 0; v < n; ++v) {
        load_row(x + v * x_stride, d, padded, s.buf);
        const Normalized nz = normalize_pow2(s.buf.data(), padded, *k_);
        rot_.forward_unscaled(s.buf.data(), s.tmp.data(), *k_);
        // One multiply takes the rotated coordinates to those of the unit vector.
        k_->scale(s.buf.data(), padded, nz.root > 0 ? float(1.0 / (rot_.gain() * nz.root)) : 0.0f);
        k_->quantize(s.buf.data(), padded, bounds, bits_, s.codes.data());
        uint8_t* o = out + v * out_stride;
        write_norm(o, nz.norm, cfg_.norm);
        k_->pack(s.codes.data(), d, bits_, o + nb);
    }
}

void TurboQuantMse::check_codes(const uint8_t* in, size_t in_stride, size_t n) const {
    for (size_t v = 0; v < n; ++v)
        if (!std::isfinite(read_norm(in + v * in_stride, cfg_.norm)))
            throw std::invalid_argument("tqkv: encoded vector " + std::to_string(v) + " has a non-finite norm");
}

void TurboQuantMse::decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const {
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm);
    Scratch& s = thread_scratch(padded);
    for (size_t v = 0; v < n; ++v) {
        const uint8_t* row = in + v * in_stride;
        k_->unpack(row + nb, d, bits_, s.codes.data());
        k_->lookup(s.codes.data(), d, cb_->centroids_f().data(), s.buf.data());
        std::fill(s.buf.begin() + d, s.buf.begin() + padded, 0.0f);
        rot_.inverse_unscaled(s.buf.data(), s.tmp.data(), *k_);
        k_->scale(s.buf.data(), padded, float(read_norm(row, cfg_.norm) / rot_.gain()));
        std::copy(s.buf.begin(), s.buf.begin() + d, out + v * out_stride);
    }
}

void TurboQuantMse::dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const {
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm);
    Scratch& s = thread_scratch(padded);
    load_row(q, d, padded, s.buf);  // rotate the query once: <q, R^T c> = <R q, c>
    rot_.forward_unscaled(s.buf.data(), s.tmp.data(), *k_);
    k_->scale(s.buf.data(), padded, float(1.0 / rot_.gain()));
    k_->dot_codes(s.buf.data(), d, cb_->centroids_f().data(), bits_, in + nb, in_stride, n, scores);
    for (size_t v = 0; v < n; ++v) scores[v] *= read_norm(in + v * in_stride, cfg_.norm);
}

}  // namespace tqkv

namespace tqkv {
size_t TurboQuantMse::table_bytes() const {
    return rot_.table_bytes() + (cb_->centroids_f().size() + cb_->boundaries_f().size()) * sizeof(float);
}
}  // namespace tqkv
