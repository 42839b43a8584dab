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
constexpr float kSignBounds[2] = {0.0f, INFINITY};  // 1-bit quantizer: code 1 iff z >= 0

int prod_bits(const CodecConfig& cfg) {
    if (cfg.bits != std::floor(cfg.bits) || cfg.bits < 2 || cfg.bits > 8)
        throw std::invalid_argument("tqkv: prod bits " + std::to_string(cfg.bits) + " out of range [2, 8]");
    return int(cfg.bits);
}

}  // namespace

TurboQuantProd::TurboQuantProd(const CodecConfig& cfg)
    : VectorCodec(cfg, 2 * norm_bytes(cfg.norm) + packed_bytes(size_t(cfg.dim), prod_bits(cfg) - 1) +
                           packed_bytes(size_t(cfg.dim), 1)),
      mse_bits_(int(cfg.bits) - 1),
      rot_(cfg.dim, cfg.rotation, cfg.seed, cfg.rotation_rounds),
      cb_(LloydMaxCodebook::get(cfg.dim, mse_bits_)) {
    // S acts on the residual in the rotated domain; S R is as Gaussian as S, so this is the QJL
    // of the residual in the original domain without a second rotation.
    gaussian_matrix(derive_seed(cfg.seed, 0x514a4c /* "QJL" */), cfg.dim, cfg.dim, s_cols_, st_cols_);
}

void TurboQuantProd::check_rows(const float* x, size_t n, size_t x_stride) const {
    check_row_norms(x, n, x_stride, dim(), cfg_.norm, *k_);
}

void TurboQuantProd::encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const {
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm), code_bytes = packed_bytes(size_t(d), mse_bits_);
    const float* bounds = cb_->boundaries_f().data();
    Scratch& s = thread_scratch(padded);
    std::vector<float>& z = s.z;
    for (size_t v = 0; v < n; ++v) {
        load_row(x + v * x_stride, d, padded, s.buf);
        const Normalized nz = normalize_pow2(s.buf.data(), padded, *k_);
        rot_.forward_unscaled(s.buf.data(), s.tmp.data(), *k_);
        k_->scale(s.buf.data(), padded, nz.root > 0 ? float(1.0 / (rot_.gain() * nz.root)) : 0.0f);
        k_->quantize(s.buf.data(), padded, bounds, mse_bits_, s.codes.data());
        // Residual of the MSE stage (rotated domain), its norm and the signs of S r.
        k_->lookup(s.codes.data(), d, cb_->centroids_f().data(), s.aux.data());
        for (int j = 0; j < d; ++j) s.aux[j] = s.buf[j] - s.aux[j];
        std::fill(s.aux.begin() + d, s.aux.begin() + padded, 0.0f);
        const float gamma = std::sqrt(k_->sum_squares(s.aux.data(), padded));
        k_->matvec(s_cols_.data(), padded, d, s.aux.data(), z.data());
        uint8_t* o = out + v * out_stride;
        write_norm(o, nz.norm, cfg_.norm);
        write_norm(o + nb, gamma, cfg_.norm);
        k_->pack(s.codes.data(), d, mse_bits_, o + 2 * nb);
        k_->quantize(z.data(), padded, kSignBounds, 1, s.codes.data());
        k_->pack(s.codes.data(), d, 1, o + 2 * nb + code_bytes);
    }
}

void TurboQuantProd::check_codes(const uint8_t* in, size_t in_stride, size_t n) const {
    const size_t nb = norm_bytes(cfg_.norm);
    for (size_t v = 0; v < n; ++v)
        if (!std::isfinite(read_norm(in + v * in_stride, cfg_.norm)) ||
            !std::isfinite(read_norm(in + v * in_stride + nb, cfg_.norm)))
            throw std::invalid_argument("tqkv: encoded vector " + std::to_string(v) + " has a non-finite norm");
}

void TurboQuantProd::decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const {
    // x̂ = n R^T (ĉ + gamma sqrt(pi/2)/d S^T sign(S r)): E[x̂] = x over the draw of S.
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm), code_bytes = packed_bytes(size_t(d), mse_bits_);
    const double qjl_scale = std::sqrt(M_PI / 2.0) / d;
    Scratch& s = thread_scratch(padded);
    std::vector<float>& t = s.z;
    for (size_t v = 0; v < n; ++v) {
        const uint8_t* row = in + v * in_stride;
        k_->unpack(row + 2 * nb, d, mse_bits_, s.codes.data());
        k_->lookup(s.codes.data(), d, cb_->centroids_f().data(), s.buf.data());
        k_->unpack(row + 2 * nb + code_bytes, d, 1, s.codes.data());
        k_->lookup(s.codes.data(), d, kSignTable, s.aux.data());
        std::fill(s.aux.begin() + d, s.aux.begin() + padded, 0.0f);
        k_->matvec(st_cols_.data(), padded, d, s.aux.data(), t.data());
        const float g = float(read_norm(row + nb, cfg_.norm) * qjl_scale);
        for (int j = 0; j < d; ++j) s.buf[j] += g * t[j];
        std::fill(s.buf.begin() + d, s.buf.begin() + padded, 0.0f);
        rot_.inverse_unscaled(s.buf.data(), s.tmp.data(), *k_);
        k_->scale(s.buf.data(), padded, float(read_norm(row, cfg_.norm) / rot_.gain()));
        std::copy(s.buf.begin(), s.buf.begin() + d, out + v * out_stride);
    }
}

void TurboQuantProd::dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const {
    // <q, x> ≈ n (<q', ĉ> + gamma sqrt(pi/2)/d <S q', sign(S r)>), q' = R q.
    const int d = dim(), padded = rot_.padded_dim();
    const size_t nb = norm_bytes(cfg_.norm), code_bytes = packed_bytes(size_t(d), mse_bits_);
    const double qjl_scale = std::sqrt(M_PI / 2.0) / d;
    Scratch& s = thread_scratch(padded);
    load_row(q, d, padded, s.buf);
    rot_.forward_unscaled(s.buf.data(), s.tmp.data(), *k_);
    k_->scale(s.buf.data(), padded, float(1.0 / rot_.gain()));
    std::vector<float>& sq = s.z;
    std::vector<float> sketch(n);
    k_->matvec(s_cols_.data(), padded, d, s.buf.data(), sq.data());
    k_->dot_codes(s.buf.data(), d, cb_->centroids_f().data(), mse_bits_, in + 2 * nb, in_stride, n, scores);
    k_->dot_codes(sq.data(), d, kSignTable, 1, in + 2 * nb + code_bytes, in_stride, n, sketch.data());
    for (size_t v = 0; v < n; ++v) {
        const uint8_t* row = in + v * in_stride;
        const double gamma = read_norm(row + nb, cfg_.norm);
        scores[v] = float(read_norm(row, cfg_.norm) * (scores[v] + gamma * qjl_scale * sketch[v]));
    }
}

}  // namespace tqkv

namespace tqkv {
size_t TurboQuantProd::table_bytes() const {
    return rot_.table_bytes() + (cb_->centroids_f().size() + cb_->boundaries_f().size()) * sizeof(float) +
           (s_cols_.size() + st_cols_.size()) * sizeof(float);
}
}  // namespace tqkv
