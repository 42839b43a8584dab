// The baseline KV formats (see tqkv/baselines.hpp), implemented from their published descriptions:
//
//   q8_0 / q4_0  ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref and their dequantizers,
//                block layout as in ggml (fp16 d, then the 32 codes; q4_0 packs value j in the low
//                nibble and value j + 16 in the high nibble of byte j).
//   kivi         KIVI (Liu et al., 2024): per-channel key / per-token value asymmetric quantization
//                with an fp16 scale and zero point per group and an fp16 window of recent tokens.
//   polar        PolarQuant (Han et al., arXiv:2502.02617): random rotation, recursive polar
//                transform of blocks of 2^levels coordinates, per-level angle codebooks.
//   turbo        TurboQuant+'s turbo2/3/4: tqkv's TurboQuant-MSE codes with the stored norm replaced
//                by ||x|| / ||code|| (the fork's norm correction).
//   -rot, -rots  llama.cpp's Hadamard rotation (ggml-org/llama.cpp#21038) around q8_0 / q4_0.
//
// scores() / weighted_sum() work from the stored codes (block scales factored out of the inner
// loops, as the formats' own kernels do); PolarQuant rotates the query once and decodes each token
// in the rotated domain, then rotates the weighted sum back once.
#include "tqkv/baselines.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/rng.hpp"
#include "tqkv/rotation.hpp"

namespace tqkv {

namespace {

constexpr double kPi = 3.14159265358979323846;

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("tqkv baseline: " + msg); }

inline float h2f(uint16_t h) { return half_to_float(h); }

// b-bit codes (b divides 8) packed LSB first into a byte stream.
inline void put_code(uint8_t* p, size_t i, int b, unsigned c) {
    const size_t bit = i * size_t(b);
    p[bit >> 3] |= uint8_t(c << (bit & 7));
}
inline unsigned get_code(const uint8_t* p, size_t i, int b) {
    const size_t bit = i * size_t(b);
    return (p[bit >> 3] >> (bit & 7)) & ((1u << b) - 1u);
}

// ---------------------------------------------------------------------------------------------
// fp16

class Fp16Format final : public BaselineFormat {
public:
    Fp16Format(int dim, bool keys) : BaselineFormat(dim, keys) {}
    std::string name() const override { return "fp16"; }

    void encode(const float* x, size_t tokens) override {
        tokens_ = tokens;
        h_.resize(tokens * dim_);
        for (size_t i = 0; i < h_.size(); ++i) h_[i] = float_to_half(x[i]);
    }
    void decode(float* out) const override {
        for (size_t i = 0; i < h_.size(); ++i) out[i] = h2f(h_[i]);
    }
    size_t bytes() const override { return h_.size() * 2; }

    void scores(const float* q, float* s) const override {
        for (size_t t = 0; t < tokens_; ++t) {
            const uint16_t* row = &h_[t * dim_];
            float acc = 0.0f;
            for (int j = 0; j < dim_; ++j) acc += q[j] * h2f(row[j]);
            s[t] = acc;
        }
    }
    void weighted_sum(const float* w, float* out) const override {
        std::fill(out, out + dim_, 0.0f);
        for (size_t t = 0; t < tokens_; ++t) {
            const uint16_t* row = &h_[t * dim_];
            const float wt = w[t];
            for (int j = 0; j < dim_; ++j) out[j] += wt * h2f(row[j]);
        }
    }

private:
    std::vector<uint16_t> h_;
};

// ---------------------------------------------------------------------------------------------
// q8_0: per block of 32: fp16 d = amax / 127, 32 int8 codes; 34 bytes.

constexpr int kQK = 32;

class Q8_0Format final : public BaselineFormat {
public:
    Q8_0Format(int dim, bool keys) : BaselineFormat(dim, keys), nb_(dim / kQK) {}
    std::string name() const override { return "q8_0"; }

    void encode(const float* x, size_t tokens) override {
        tokens_ = tokens;
        d_.resize(tokens * nb_);
        q_.resize(tokens * dim_);
        for (size_t b = 0; b < tokens * nb_; ++b) {
            const float* xb = x + b * kQK;
            float amax = 0.0f;
            for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
            const float d = amax / ((1 << 7) - 1);
            const float id = d ? 1.0f / d : 0.0f;
            d_[b] = float_to_half(d);
            for (int j = 0; j < kQK; ++j) q_[b * kQK + j] = int8_t(std::roundf(xb[j] * id));
        }
    }
    void decode(float* out) const override {
        for (size_t b = 0; b < d_.size(); ++b) {
            const float d = h2f(d_[b]);
            for (int j = 0; j < kQK; ++j) out[b * kQK + j] = float(q_[b * kQK + j]) * d;
        }
    }
    size_t bytes() const override { return d_.size() * (2 + kQK); }

    void scores(const float* q, float* s) const override {
        for (size_t t = 0; t < tokens_; ++t) {
            float acc = 0.0f;
            for (int b = 0; b < nb_; ++b) {
                const size_t blk = t * nb_ + b;
                const int8_t* c = &q_[blk * kQK];
                const float* qb = q + b * kQK;
                float sb = 0.0f;
                for (int j = 0; j < kQK; ++j) sb += qb[j] * float(c[j]);
                acc += sb * h2f(d_[blk]);
            }
            s[t] = acc;
        }
    }
    void weighted_sum(const float* w, float* out) const override {
        std::fill(out, out + dim_, 0.0f);
        for (size_t t = 0; t < tokens_; ++t)
            for (int b = 0; b < nb_; ++b) {
                const size_t blk = t * nb_ + b;
                const int8_t* c = &q_[blk * kQK];
                const float wd = w[t] * h2f(d_[blk]);
                float* ob = out + b * kQK;
                for (int j = 0; j < kQK; ++j) ob[j] += wd * float(c[j]);
            }
    }

private:
    int nb_;
    std::vector<uint16_t> d_;
    std::vector<int8_t> q_;
};

// ---------------------------------------------------------------------------------------------
// q4_0: per block of 32: fp16 d = max / -8 (max = the value of largest magnitude), 16 bytes of
// nibbles (value j low, value j + 16 high); 18 bytes. Dequantized value (code - 8) * d.

class Q4_0Format final : public BaselineFormat {
public:
    Q4_0Format(int dim, bool keys) : BaselineFormat(dim, keys), nb_(dim / kQK) {}
    std::string name() const override { return "q4_0"; }

    void encode(const float* x, size_t tokens) override {
        tokens_ = tokens;
        d_.resize(tokens * nb_);
        qs_.resize(tokens * nb_ * (kQK / 2));
        for (size_t b = 0; b < tokens * nb_; ++b) {
            const float* xb = x + b * kQK;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < kQK; ++j)
                if (amax < std::fabs(xb[j])) {
                    amax = std::fabs(xb[j]);
                    max = xb[j];
                }
            const float d = max / -8;
            const float id = d ? 1.0f / d : 0.0f;
            d_[b] = float_to_half(d);
            uint8_t* qs = &qs_[b * (kQK / 2)];
            for (int j = 0; j < kQK / 2; ++j) {
                const float x0 = xb[j] * id, x1 = xb[kQK / 2 + j] * id;
                const uint8_t xi0 = uint8_t(std::min<int>(15, int8_t(x0 + 8.5f)));
                const uint8_t xi1 = uint8_t(std::min<int>(15, int8_t(x1 + 8.5f)));
                qs[j] = uint8_t(xi0 | (xi1 << 4));
            }
        }
    }
    void decode(float* out) const override {
        for (size_t b = 0; b < d_.size(); ++b) {
            const float d = h2f(d_[b]);
            const uint8_t* qs = &qs_[b * (kQK / 2)];
            for (int j = 0; j < kQK / 2; ++j) {
                out[b * kQK + j] = float(int(qs[j] & 0x0f) - 8) * d;
                out[b * kQK + kQK / 2 + j] = float(int(qs[j] >> 4) - 8) * d;
            }
        }
    }
    size_t bytes() const override { return d_.size() * (2 + kQK / 2); }

    void scores(const float* q, float* s) const override {
        for (size_t t = 0; t < tokens_; ++t) {
            float acc = 0.0f;
            for (int b = 0; b < nb_; ++b) {
                const size_t blk = t * nb_ + b;
                const uint8_t* qs = &qs_[blk * (kQK / 2)];
                const float* qb = q + b * kQK;
                float sb = 0.0f;
                for (int j = 0; j < kQK / 2; ++j)
                    sb += qb[j] * float(int(qs[j] & 0x0f) - 8) + qb[kQK / 2 + j] * float(int(qs[j] >> 4) - 8);
                acc += sb * h2f(d_[blk]);
            }
            s[t] = acc;
        }
    }
    void weighted_sum(const float* w, float* out) const override {
        std::fill(out, out + dim_, 0.0f);
        for (size_t t = 0; t < tokens_; ++t)
            for (int b = 0; b < nb_; ++b) {
                const size_t blk = t * nb_ + b;
                const uint8_t* qs = &qs_[blk * (kQK / 2)];
                const float wd = w[t] * h2f(d_[blk]);
                float* ob = out + b * kQK;
                for (int j = 0; j < kQK / 2; ++j) {
                    ob[j] += wd * float(int(qs[j] & 0x0f) - 8);
                    ob[kQK / 2 + j] += wd * float(int(qs[j] >> 4) - 8);
                }
            }
    }

private:
    int nb_;
    std::vector<uint16_t> d_;
    std::vector<uint8_t> qs_;
};

// ---------------------------------------------------------------------------------------------
// KIVI. Tokens [0, nq) are quantized, nq = the largest multiple of group <= max(0, tokens - residual);
// tokens [nq, tokens) stay fp16.
//   keys:   for each group of `group` tokens and each channel c: fp16 scale and zero (the min) of the
//           group's values of channel c; scale_/zero_ indexed [token group][channel].
//   values: for each token and each group of `group` channels: fp16 scale and zero;
//           scale_/zero_ indexed [token][channel group].
// Codes: round((x - zero) / scale) clamped to [0, 2^bits - 1], computed with the fp16-rounded
// scale and zero that are stored, packed `bits` per code, row-major [token][channel].
// Dequantized value: code * scale + zero.

class KiviFormat final : public BaselineFormat {
public:
    KiviFormat(int dim, bool keys, int bits, int group, int residual)
        : BaselineFormat(dim, keys), bits_(bits), group_(group), residual_(residual) {}
    std::string name() const override { return "kivi" + std::to_string(bits_); }

    void encode(const float* x, size_t tokens) override {
        tokens_ = tokens;
        const size_t G = size_t(group_);
        const size_t avail = tokens > size_t(residual_) ? tokens - size_t(residual_) : 0;
        nq_ = avail / G * G;
        const size_t D = size_t(dim_);
        codes_.assign((nq_ * D * bits_ + 7) / 8, 0);
        if (keys_) {
            scale_.resize(nq_ / G * D);
            zero_.resize(nq_ / G * D);
            for (size_t g = 0; g < nq_ / G; ++g)
                for (size_t c = 0; c < D; ++c) {
                    float mn = x[g * G * D + c], mx = mn;
                    for (size_t i = 1; i < G; ++i) {
                        const float v = x[(g * G + i) * D + c];
                        mn = std::min(mn, v);
                        mx = std::max(mx, v);
                    }
                    const auto [sh, zh] = params(mn, mx, scale_[g * D + c], zero_[g * D + c]);
                    for (size_t i = 0; i < G; ++i) {
                        const size_t idx = (g * G + i) * D + c;
                        put_code(codes_.data(), idx, bits_, quantize(x[idx], sh, zh));
                    }
                }
        } else {
            const size_t ng = D / G;
            scale_.resize(nq_ * ng);
            zero_.resize(nq_ * ng);
            for (size_t t = 0; t < nq_; ++t)
                for (size_t g = 0; g < ng; ++g) {
                    const float* xg = x + t * D + g * G;
                    float mn = xg[0], mx = xg[0];
                    for (size_t i = 1; i < G; ++i) {
                        mn = std::min(mn, xg[i]);
                        mx = std::max(mx, xg[i]);
                    }
                    const auto [sh, zh] = params(mn, mx, scale_[t * ng + g], zero_[t * ng + g]);
                    for (size_t i = 0; i < G; ++i)
                        put_code(codes_.data(), t * D + g * G + i, bits_, quantize(xg[i], sh, zh));
                }
        }
        res_.resize((tokens - nq_) * D);
        for (size_t i = 0; i < res_.size(); ++i) res_[i] = float_to_half(x[nq_ * D + i]);
    }

    void decode(float* out) const override {
        const size_t D = size_t(dim_);
        for (size_t t = 0; t < nq_; ++t)
            for (size_t c = 0; c < D; ++c) {
                const size_t p = param_index(t, c);
                out[t * D + c] = float(get_code(codes_.data(), t * D + c, bits_)) * h2f(scale_[p]) + h2f(zero_[p]);
            }
        for (size_t i = 0; i < res_.size(); ++i) out[nq_ * D + i] = h2f(res_[i]);
    }

    size_t bytes() const override { return codes_.size() + 2 * scale_.size() + 2 * zero_.size() + 2 * res_.size(); }

    void scores(const float* q, float* s) const override {
        const size_t D = size_t(dim_), G = size_t(group_);
        const uint8_t* codes = codes_.data();
        if (keys_) {
            // score_t = sum_c (q_c scale_gc) code_tc + sum_c q_c zero_gc
            std::vector<float> qs(D);
            for (size_t g = 0; g < nq_ / G; ++g) {
                float bias = 0.0f;
                for (size_t c = 0; c < D; ++c) {
                    qs[c] = q[c] * h2f(scale_[g * D + c]);
                    bias += q[c] * h2f(zero_[g * D + c]);
                }
                for (size_t t = g * G; t < (g + 1) * G; ++t) {
                    float acc = 0.0f;
                    for (size_t c = 0; c < D; ++c) acc += qs[c] * float(get_code(codes, t * D + c, bits_));
                    s[t] = acc + bias;
                }
            }
        } else {
            // score_t = sum_g scale_tg sum_{j in g} q_j code_tj + zero_tg sum_{j in g} q_j
            const size_t ng = D / G;
            std::vector<float> qsum(ng, 0.0f);
            for (size_t g = 0; g < ng; ++g)
                for (size_t i = 0; i < G; ++i) qsum[g] += q[g * G + i];
            for (size_t t = 0; t < nq_; ++t) {
                float acc = 0.0f;
                for (size_t g = 0; g < ng; ++g) {
                    float sg = 0.0f;
                    for (size_t i = 0; i < G; ++i) sg += q[g * G + i] * float(get_code(codes, t * D + g * G + i, bits_));
                    acc += sg * h2f(scale_[t * ng + g]) + qsum[g] * h2f(zero_[t * ng + g]);
                }
                s[t] = acc;
            }
        }
        for (size_t t = nq_; t < tokens_; ++t) {
            const uint16_t* row = &res_[(t - nq_) * D];
            float acc = 0.0f;
            for (size_t j = 0; j < D; ++j) acc += q[j] * h2f(row[j]);
            s[t] = acc;
        }
    }

    void weighted_sum(const float* w, float* out) const override {
        const size_t D = size_t(dim_), G = size_t(group_);
        const uint8_t* codes = codes_.data();
        std::fill(out, out + D, 0.0f);
        if (keys_) {
            // out_c += scale_gc sum_{t in g} w_t code_tc + zero_gc sum_{t in g} w_t
            std::vector<float> acc(D);
            for (size_t g = 0; g < nq_ / G; ++g) {
                std::fill(acc.begin(), acc.end(), 0.0f);
                float wsum = 0.0f;
                for (size_t t = g * G; t < (g + 1) * G; ++t) {
                    wsum += w[t];
                    for (size_t c = 0; c < D; ++c) acc[c] += w[t] * float(get_code(codes, t * D + c, bits_));
                }
                for (size_t c = 0; c < D; ++c)
                    out[c] += acc[c] * h2f(scale_[g * D + c]) + wsum * h2f(zero_[g * D + c]);
            }
        } else {
            const size_t ng = D / G;
            for (size_t t = 0; t < nq_; ++t)
                for (size_t g = 0; g < ng; ++g) {
                    const float ws = w[t] * h2f(scale_[t * ng + g]), wz = w[t] * h2f(zero_[t * ng + g]);
                    for (size_t i = 0; i < G; ++i)
                        out[g * G + i] += ws * float(get_code(codes, t * D + g * G + i, bits_)) + wz;
                }
        }
        for (size_t t = nq_; t < tokens_; ++t) {
            const uint16_t* row = &res_[(t - nq_) * D];
            for (size_t j = 0; j < D; ++j) out[j] += w[t] * h2f(row[j]);
        }
    }

private:
    struct Params {
        float scale, zero;
    };
    // Stores the fp16 scale and zero of a group with range [mn, mx] and returns their values.
    Params params(float mn, float mx, uint16_t& scale, uint16_t& zero) const {
        scale = float_to_half((mx - mn) / float((1 << bits_) - 1));
        zero = float_to_half(mn);
        return {h2f(scale), h2f(zero)};
    }
    unsigned quantize(float x, float scale, float zero) const {
        if (!(scale > 0.0f)) return 0;
        const float c = std::nearbyint((x - zero) / scale);
        return unsigned(std::clamp(c, 0.0f, float((1 << bits_) - 1)));
    }
    size_t param_index(size_t t, size_t c) const {
        return keys_ ? (t / group_) * size_t(dim_) + c : t * size_t(dim_ / group_) + c / group_;
    }

    int bits_, group_, residual_;
    size_t nq_ = 0;
    std::vector<uint8_t> codes_;
    std::vector<uint16_t> scale_, zero_, res_;
};

// ---------------------------------------------------------------------------------------------
// PolarQuant. Per token: y = R x (seeded rotation), then per block of B = 2^L coordinates:
//   level 1:  pairs (y_2i, y_2i+1) -> radius, angle atan2 in [0, 2pi), uniform, `bits` bits
//             (centroids (k + 1/2) 2pi / 2^bits);
//   level l:  pairs of level l-1 radii (r1, r2) -> radius, angle atan2(r2, r1) in [0, pi/2] with
//             density ∝ sin^(k-1)(2psi), k = 2^(l-1); Lloyd–Max codebook of max(1, bits - 2) bits;
//   the level-L radius in fp16.
// Codes per token: for each block, its level-1 codes, then level-2 codes, ..., the level-L code,
// packed LSB first into ceil(bits per token / 8) bytes; radii in a separate fp16 array.

// Lloyd–Max quantizer with n levels for the density ∝ sin^(k-1)(2 psi) on [0, pi/2]: cumulative
// integrals of p and psi p on a fine grid (Simpson per cell), linearly interpolated between nodes,
// so that centroids are smooth functions of the boundaries; starts at the quantiles.
std::vector<double> lloyd_max_angle(int k, int n) {
    const int N = 1 << 15;
    const double h = (kPi / 2) / N;
    auto p = [k](double psi) { return std::pow(std::sin(2.0 * psi), double(k - 1)); };
    std::vector<double> F(N + 1, 0.0), M(N + 1, 0.0);
    for (int i = 0; i < N; ++i) {
        const double a = i * h, m = a + h / 2, b = a + h;
        F[i + 1] = F[i] + h / 6 * (p(a) + 4 * p(m) + p(b));
        M[i + 1] = M[i] + h / 6 * (a * p(a) + 4 * m * p(m) + b * p(b));
    }
    auto interp = [&](const std::vector<double>& v, double psi) {
        const double u = std::clamp(psi / h, 0.0, double(N));
        const int i = std::min(int(u), N - 1);
        return v[i] + (u - i) * (v[i + 1] - v[i]);
    };
    // Quantile initialisation.
    std::vector<double> c(n);
    for (int j = 0, i = 0; j < n; ++j) {
        const double target = (j + 0.5) / n * F[N];
        while (i < N - 1 && F[i + 1] < target) ++i;
        c[j] = (i + (target - F[i]) / std::max(F[i + 1] - F[i], 1e-300)) * h;
    }
    std::vector<double> bounds(n + 1);
    for (int iter = 0; iter < 10000; ++iter) {
        bounds[0] = 0.0;
        bounds[n] = kPi / 2;
        for (int j = 1; j < n; ++j) bounds[j] = 0.5 * (c[j - 1] + c[j]);
        double change = 0.0;
        for (int j = 0; j < n; ++j) {
            const double mass = interp(F, bounds[j + 1]) - interp(F, bounds[j]);
            if (mass <= 0) continue;
            const double nc = (interp(M, bounds[j + 1]) - interp(M, bounds[j])) / mass;
            change = std::max(change, std::fabs(nc - c[j]));
            c[j] = nc;
        }
        if (change < 1e-13) break;
    }
    return c;
}

class PolarFormat final : public BaselineFormat {
public:
    PolarFormat(int dim, bool keys, int bits, int levels, uint64_t seed)
        : BaselineFormat(dim, keys),
          bits_(bits),
          levels_(levels),
          hbits_(std::max(1, bits - 2)),
          block_(1 << levels),
          nblocks_(dim >> levels),
          rot_(dim, RotationKind::Auto, seed) {
        const int n1 = 1 << bits_;
        delta1_ = 2 * kPi / n1;
        for (int i = 0; i < n1; ++i) {
            const double th = (i + 0.5) * delta1_;
            cos1_.push_back(float(std::cos(th)));
            sin1_.push_back(float(std::sin(th)));
        }
        const int nh = 1 << hbits_;
        for (int l = 2; l <= levels_; ++l) {
            const std::vector<double> c = lloyd_max_angle(1 << (l - 1), nh);
            std::vector<double> b;
            std::vector<float> cs, sn;
            for (int j = 0; j < nh; ++j) {
                cs.push_back(float(std::cos(c[j])));
                sn.push_back(float(std::sin(c[j])));
                if (j) b.push_back(0.5 * (c[j - 1] + c[j]));
            }
            centroids_.push_back(c);
            bounds_.push_back(b);
            cosl_.push_back(cs);
            sinl_.push_back(sn);
        }
        block_bits_ = (block_ / 2) * bits_ + (block_ / 2 - 1) * hbits_;  // B/2 level-1, B/2 - 1 higher angles
        row_bytes_ = (size_t(nblocks_) * block_bits_ + 7) / 8;
    }
    std::string name() const override { return "polar" + std::to_string(bits_); }

    void encode(const float* x, size_t tokens) override {
        tokens_ = tokens;
        codes_.assign(tokens * row_bytes_, 0);
        radius_.resize(tokens * nblocks_);
        const int n1 = 1 << bits_;
        std::vector<float> y(dim_);
        std::vector<double> r(block_ / 2);
        for (size_t t = 0; t < tokens; ++t) {
            std::copy(x + t * dim_, x + (t + 1) * dim_, y.begin());
            rot_.forward(y);
            uint8_t* row = &codes_[t * row_bytes_];
            size_t bit = 0;
            auto put = [&](unsigned c, int b) {
                for (int i = 0; i < b; ++i, ++bit)
                    if ((c >> i) & 1u) row[bit >> 3] |= uint8_t(1u << (bit & 7));
            };
            for (int blk = 0; blk < nblocks_; ++blk) {
                const float* yb = &y[size_t(blk) * block_];
                for (int i = 0; i < block_ / 2; ++i) {
                    const double a = yb[2 * i], b = yb[2 * i + 1];
                    r[i] = std::sqrt(a * a + b * b);
                    double th = std::atan2(b, a);
                    if (th < 0) th += 2 * kPi;
                    put(unsigned(std::clamp(int(th / delta1_), 0, n1 - 1)), bits_);
                }
                for (int l = 2; l <= levels_; ++l) {
                    const std::vector<double>& bd = bounds_[l - 2];
                    for (int j = 0; j < (block_ >> l); ++j) {
                        const double r1 = r[2 * j], r2 = r[2 * j + 1];
                        const double psi = std::atan2(r2, r1);
                        put(unsigned(std::upper_bound(bd.begin(), bd.end(), psi) - bd.begin()), hbits_);
                        r[j] = std::sqrt(r1 * r1 + r2 * r2);
                    }
                }
                radius_[t * nblocks_ + blk] = float_to_half(float(r[0]));
            }
        }
    }

    void decode(float* out) const override {
        for (size_t t = 0; t < tokens_; ++t) {
            std::span<float> y(out + t * dim_, size_t(dim_));
            decode_rotated(t, y.data());
            rot_.inverse(y);
        }
    }

    size_t bytes() const override { return codes_.size() + 2 * radius_.size(); }

    void scores(const float* q, float* s) const override {
        std::vector<float> qr(q, q + dim_), y(dim_);
        rot_.forward(qr);  // <q, R^T y> = <R q, y>
        for (size_t t = 0; t < tokens_; ++t) {
            decode_rotated(t, y.data());
            float acc = 0.0f;
            for (int j = 0; j < dim_; ++j) acc += qr[j] * y[j];
            s[t] = acc;
        }
    }
    void weighted_sum(const float* w, float* out) const override {
        std::vector<float> acc(dim_, 0.0f), y(dim_);
        for (size_t t = 0; t < tokens_; ++t) {
            decode_rotated(t, y.data());
            for (int j = 0; j < dim_; ++j) acc[j] += w[t] * y[j];
        }
        rot_.inverse(acc);  // sum_t w_t R^T y_t = R^T sum_t w_t y_t
        std::copy(acc.begin(), acc.end(), out);
    }

private:
    // Token t's reconstruction in the rotated domain (dim floats).
    void decode_rotated(size_t t, float* y) const {
        const uint8_t* row = &codes_[t * row_bytes_];
        size_t bit = 0;
        auto get = [&](int b) {
            unsigned c = 0;
            for (int i = 0; i < b; ++i, ++bit) c |= unsigned((row[bit >> 3] >> (bit & 7)) & 1u) << i;
            return c;
        };
        unsigned c1[128], ch[128];  // block_ <= 256
        float r[128];
        for (int blk = 0; blk < nblocks_; ++blk) {
            for (int i = 0; i < block_ / 2; ++i) c1[i] = get(bits_);
            for (int i = 0; i < block_ / 2 - 1; ++i) ch[i] = get(hbits_);
            r[0] = h2f(radius_[t * nblocks_ + blk]);
            // Higher-level codes in ch: level 2 first (B/4 of them), ..., level L last (1).
            int off = block_ / 2 - 1;
            for (int l = levels_; l >= 2; --l) {
                const int m = block_ >> l;
                off -= m;
                const std::vector<float>& cs = cosl_[l - 2];
                const std::vector<float>& sn = sinl_[l - 2];
                for (int j = m - 1; j >= 0; --j) {
                    const float rr = r[j];
                    const unsigned c = ch[off + j];
                    r[2 * j] = rr * cs[c];
                    r[2 * j + 1] = rr * sn[c];
                }
            }
            float* yb = y + size_t(blk) * block_;
            for (int i = 0; i < block_ / 2; ++i) {
                yb[2 * i] = r[i] * cos1_[c1[i]];
                yb[2 * i + 1] = r[i] * sin1_[c1[i]];
            }
        }
    }

    int bits_, levels_, hbits_, block_, nblocks_;
    Rotation rot_;
    double delta1_;
    std::vector<float> cos1_, sin1_;
    std::vector<std::vector<double>> centroids_, bounds_;
    std::vector<std::vector<float>> cosl_, sinl_;
    int block_bits_;
    size_t row_bytes_;
    std::vector<uint8_t> codes_;
    std::vector<uint16_t> radius_;
};

// ---------------------------------------------------------------------------------------------
// TurboQuant+ (turbo2/3/4): one TurboQuant-MSE codec per head vector; after encoding, each vector's
// fp16 norm field (the first 2 bytes of its codes, little-endian, codec.hpp) is rewritten to
// ||x|| / ||c||, c the unit-norm reconstruction, so the decoded vector has the input's length.
// ||c|| = ||decode|| / stored norm (the rotation is orthogonal).

class TurboFormat final : public BaselineFormat {
public:
    TurboFormat(int dim, bool keys, int bits, uint64_t seed) : BaselineFormat(dim, keys), bits_(bits) {
        CodecConfig c;
        c.dim = dim;
        c.bits = bits;
        c.method = Method::Mse;
        c.seed = seed;
        codec_ = make_codec(c);
    }
    std::string name() const override { return "turbo" + std::to_string(bits_); }

    void encode(const float* x, size_t tokens) override {
        const size_t D = size_t(dim_), bpv = codec_->bytes_per_vector();
        std::vector<uint8_t> codes = codec_->encode(std::span(x, tokens * D));
        std::vector<float> dec = codec_->decode(codes);
        for (size_t t = 0; t < tokens; ++t) {
            uint8_t* p = &codes[t * bpv];
            const float stored = h2f(uint16_t(p[0] | (p[1] << 8)));
            double xx = 0, dd = 0;
            for (size_t j = 0; j < D; ++j) xx += double(x[t * D + j]) * x[t * D + j], dd += double(dec[t * D + j]) * dec[t * D + j];
            if (stored == 0.0f || dd == 0.0) continue;  // a (near-)zero vector decodes to zero either way
            const float corrected = float(std::sqrt(xx) * stored / std::sqrt(dd));
            const uint16_t h = float_to_half(corrected);
            if (!std::isfinite(h2f(h)))
                fail(name() + ": vector " + std::to_string(t) + "'s corrected norm does not fit fp16");
            p[0] = uint8_t(h & 0xff), p[1] = uint8_t(h >> 8);
        }
        codes_ = std::move(codes);
        decoded_ = codec_->decode(codes_);
        tokens_ = tokens;
    }
    void decode(float* out) const override { std::copy(decoded_.begin(), decoded_.end(), out); }
    size_t bytes() const override { return codes_.size(); }
    void scores(const float* q, float* s) const override { codec_->dot(std::span(q, size_t(dim_)), codes_, std::span(s, tokens_)); }
    void weighted_sum(const float* w, float* out) const override {
        std::vector<double> acc(size_t(dim_), 0.0);
        for (size_t t = 0; t < tokens_; ++t)
            for (int j = 0; j < dim_; ++j) acc[size_t(j)] += double(w[t]) * decoded_[t * dim_ + j];
        for (int j = 0; j < dim_; ++j) out[j] = float(acc[size_t(j)]);
    }

private:
    int bits_;
    std::unique_ptr<VectorCodec> codec_;
    std::vector<uint8_t> codes_;
    std::vector<float> decoded_;
};

// ---------------------------------------------------------------------------------------------
// llama.cpp's rotation around a row format. Keys: the format stores H x; scores(q) = the format's
// scores of H q (<H q, H x> = <q, x>). Values: the format stores H x; the weighted sum of the
// stored rows is rotated back once (H H = I). decode() rotates every row back. With signs,
// H becomes H D (D = diag(±1)) and its inverse D H.

class RotatedFormat final : public BaselineFormat {
public:
    RotatedFormat(std::unique_ptr<BaselineFormat> inner, bool keys, int block, bool signs, uint64_t seed)
        : BaselineFormat(inner->dim(), keys),
          inner_(std::move(inner)),
          block_(block),
          norm_(float(1.0 / std::sqrt(double(block)))),
          fwht_(detail::kernels_by_name("").fwht) {
        if (signs) {
            Rng rng(seed);
            for (int j = 0; j < dim_; ++j) signs_.push_back(rng.next() >> 63 ? -1.0f : 1.0f);
        }
    }
    std::string name() const override { return inner_->name() + (signs_.empty() ? "-rot" : "-rots"); }

    void encode(const float* x, size_t tokens) override {
        std::vector<float> y(x, x + tokens * size_t(dim_));
        for (size_t t = 0; t < tokens; ++t) forward(&y[t * dim_]);
        inner_->encode(y.data(), tokens);
        tokens_ = tokens;
    }
    void decode(float* out) const override {
        inner_->decode(out);
        for (size_t t = 0; t < tokens_; ++t) inverse(out + t * dim_);
    }
    size_t bytes() const override { return inner_->bytes(); }
    void scores(const float* q, float* s) const override {
        std::vector<float> qr(q, q + dim_);
        forward(qr.data());
        inner_->scores(qr.data(), s);
    }
    void weighted_sum(const float* w, float* out) const override {
        inner_->weighted_sum(w, out);
        inverse(out);
    }

private:
    // Unnormalized butterflies (kernels.hpp fwht: the Sylvester matrix, symmetric), then 1/sqrt(n).
    void hadamard(float* x) const {
        fwht_(x, dim_, block_);
        for (int j = 0; j < dim_; ++j) x[j] *= norm_;
    }
    void forward(float* x) const {
        for (size_t j = 0; j < signs_.size(); ++j) x[j] *= signs_[j];
        hadamard(x);
    }
    void inverse(float* x) const {
        hadamard(x);
        for (size_t j = 0; j < signs_.size(); ++j) x[j] *= signs_[j];
    }

    std::unique_ptr<BaselineFormat> inner_;
    int block_;
    float norm_;
    void (*fwht_)(float*, int, int);
    std::vector<float> signs_;  // empty: no signs
};

}  // namespace

int hadamard_key_block(int dim) {
    if (dim <= 0 || dim % 64 != 0) return 0;
    int n = 64;
    while (dim % (2 * n) == 0) n *= 2;
    return n;
}

int hadamard_value_block(int dim) { return dim > 0 && dim % 64 == 0 ? 64 : 0; }

namespace {

std::unique_ptr<BaselineFormat> make_unrotated(const BaselineConfig& cfg, int dim, bool keys) {
    switch (cfg.kind) {
        case BaselineKind::Fp16:
            return std::make_unique<Fp16Format>(dim, keys);
        case BaselineKind::Q8_0:
        case BaselineKind::Q4_0: {
            const char* nm = cfg.kind == BaselineKind::Q8_0 ? "q8_0" : "q4_0";
            if (dim % kQK != 0)
                fail(std::string(nm) + " needs a dimension that is a multiple of 32 (its block size), got " +
                     std::to_string(dim));
            if (cfg.kind == BaselineKind::Q8_0) return std::make_unique<Q8_0Format>(dim, keys);
            return std::make_unique<Q4_0Format>(dim, keys);
        }
        case BaselineKind::Kivi:
            if (cfg.bits != 2 && cfg.bits != 4) fail("kivi supports 2 or 4 bits, got " + std::to_string(cfg.bits));
            if (cfg.group < 1) fail("kivi group size must be >= 1, got " + std::to_string(cfg.group));
            if (cfg.residual < 0) fail("kivi residual length must be >= 0, got " + std::to_string(cfg.residual));
            if (!keys && dim % cfg.group != 0)
                fail("kivi values are grouped over channels: dimension " + std::to_string(dim) +
                     " is not a multiple of the group size " + std::to_string(cfg.group));
            return std::make_unique<KiviFormat>(dim, keys, cfg.bits, cfg.group, cfg.residual);
        case BaselineKind::Polar: {
            if (cfg.bits < 1 || cfg.bits > 8) fail("polar angle bits must be in [1, 8], got " + std::to_string(cfg.bits));
            if (cfg.levels < 1 || cfg.levels > 8) fail("polar levels must be in [1, 8], got " + std::to_string(cfg.levels));
            const int block = 1 << cfg.levels;
            if (dim % block != 0)
                fail("polar with " + std::to_string(cfg.levels) + " levels needs a dimension that is a multiple of " +
                     std::to_string(block) + ", got " + std::to_string(dim));
            if (dim < 3 || dim > 1024) fail("polar dimension must be in [3, 1024] (rotation), got " + std::to_string(dim));
            return std::make_unique<PolarFormat>(dim, keys, cfg.bits, cfg.levels, cfg.seed);
        }
        case BaselineKind::Turbo:
            if (cfg.bits < 2 || cfg.bits > 4) fail("turbo supports 2, 3 or 4 bits (turbo2/3/4), got " + std::to_string(cfg.bits));
            if (dim < 3 || dim > 1024) fail("turbo dimension must be in [3, 1024] (rotation), got " + std::to_string(dim));
            return std::make_unique<TurboFormat>(dim, keys, cfg.bits, cfg.seed);
    }
    fail("unknown baseline kind");
}

}  // namespace

std::unique_ptr<BaselineFormat> BaselineFormat::make(const BaselineConfig& cfg, int dim, bool keys) {
    if (dim <= 0) fail("dimension must be positive, got " + std::to_string(dim));
    if (cfg.rotation == BaselineRotation::None) return make_unrotated(cfg, dim, keys);
    if (cfg.kind != BaselineKind::Q8_0 && cfg.kind != BaselineKind::Q4_0)
        fail("the Hadamard rotation (-rot, -rots) applies to q8_0 and q4_0 only");
    const int block = keys ? hadamard_key_block(dim) : hadamard_value_block(dim);
    if (block == 0)
        fail("the Hadamard rotation needs a head dimension that is a multiple of 64 (llama.cpp rotates only then), got " +
             std::to_string(dim));
    return std::make_unique<RotatedFormat>(make_unrotated(cfg, dim, keys), keys, block,
                                           cfg.rotation == BaselineRotation::HadamardSigns, derive_seed(cfg.seed, keys ? 1 : 2));
}

// ---------------------------------------------------------------------------------------------

CodecFormat::CodecFormat(const CodecConfig& cfg, bool keys) : BaselineFormat(cfg.dim, keys), codec_(make_codec(cfg)) {}

std::string CodecFormat::name() const { return codec_->name(); }

void CodecFormat::encode(const float* x, size_t tokens) {
    codes_ = codec_->encode(std::span(x, tokens * size_t(dim_)));
    decoded_ = codec_->decode(codes_);
    tokens_ = tokens;
}

void CodecFormat::decode(float* out) const { std::copy(decoded_.begin(), decoded_.end(), out); }

void CodecFormat::scores(const float* q, float* s) const {
    codec_->dot(std::span(q, size_t(dim_)), codes_, std::span(s, tokens_));
}

void CodecFormat::weighted_sum(const float* w, float* out) const {
    std::vector<double> acc(size_t(dim_), 0.0);
    for (size_t t = 0; t < tokens_; ++t)
        if (w[t] != 0)
            for (int j = 0; j < dim_; ++j) acc[size_t(j)] += double(w[t]) * decoded_[t * dim_ + j];
    for (int j = 0; j < dim_; ++j) out[j] = float(acc[size_t(j)]);
}

}  // namespace tqkv
