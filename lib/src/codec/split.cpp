#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "codec/shared.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

using namespace detail;

namespace {

struct SplitPlan {
    int low_bits, high_bits, high_count;
};

SplitPlan plan_split(const CodecConfig& cfg) {
    if (cfg.method == Method::Qjl) throw std::invalid_argument("tqkv: qjl has no fractional rates");
    // Range first: the float-to-int conversion below is undefined for huge bits (a hostile
    // serialized cache can carry any float there).
    if (!(cfg.bits > 1 && cfg.bits < 8)) {
        std::ostringstream m;
        m << "tqkv: fractional bits " << cfg.bits << " out of range (1, 8)";
        throw std::invalid_argument(m.str());
    }
    const int lo = int(std::floor(cfg.bits));
    const int min_bits = cfg.method == Method::Prod ? 2 : 1;
    if (cfg.high_extra_bits < 1 || cfg.high_extra_bits > 7)
        throw std::invalid_argument("tqkv: high_extra_bits " + std::to_string(cfg.high_extra_bits) +
                                    " out of range [1, 7]");
    const int hi = lo + cfg.high_extra_bits;
    if (lo < min_bits || hi > 8) {
        std::ostringstream m;
        m << "tqkv: fractional bits " << cfg.bits << " need " << lo << " and " << hi << " bit parts within ["
          << min_bits << ", 8]";
        throw std::invalid_argument(m.str());
    }
    const int count = int(std::lround((cfg.bits - lo) / cfg.high_extra_bits * cfg.dim));
    if (count < kMinDim || cfg.dim - count < kMinDim) {
        std::ostringstream m;
        m << "tqkv: fractional bits " << cfg.bits << " at dim " << cfg.dim << " give " << count
          << " high channels; each part needs at least 3";
        throw std::invalid_argument(m.str());
    }
    if (int(cfg.high_channels.size()) != count) {
        std::ostringstream m;
        m << "tqkv: fractional bits " << cfg.bits << " at dim " << cfg.dim << " need exactly " << count
          << " high_channels (got " << cfg.high_channels.size() << "); use choose_high_channels()";
        throw std::invalid_argument(m.str());
    }
    return {lo, hi, count};
}

}  // namespace

SplitCodec::SplitCodec(const CodecConfig& cfg) : VectorCodec(cfg, 0) {
    const SplitPlan p = plan_split(cfg);
    CodecConfig h = cfg, l = cfg;
    h.high_channels.clear();
    l.high_channels.clear();
    h.dim = p.high_count;
    h.bits = p.high_bits;
    h.seed = derive_seed(cfg.seed, 1);
    l.dim = cfg.dim - p.high_count;
    l.bits = p.low_bits;
    l.seed = derive_seed(cfg.seed, 2);
    hi_ = make_codec(h);
    lo_ = make_codec(l);
    bytes_ = hi_->bytes_per_vector() + lo_->bytes_per_vector();
    std::vector<char> is_high(cfg.dim, 0);
    for (int c : cfg.high_channels) {
        if (c < 0 || c >= cfg.dim)
            throw std::invalid_argument("tqkv: high channel " + std::to_string(c) + " out of range [0, " +
                                        std::to_string(cfg.dim) + ")");
        if (is_high[c]) throw std::invalid_argument("tqkv: high channel " + std::to_string(c) + " listed twice");
        is_high[c] = 1;
    }
    for (int c = 0; c < cfg.dim; ++c) (is_high[c] ? high_ : low_).push_back(c);
}

std::vector<float> SplitCodec::gather(const float* x, size_t n, size_t stride, const std::vector<int>& ch) const {
    std::vector<float> out(n * ch.size());
    for (size_t v = 0; v < n; ++v)
        for (size_t j = 0; j < ch.size(); ++j) out[v * ch.size() + j] = x[v * stride + ch[j]];
    return out;
}

namespace {
// Per-thread scratch for the gathered channels of check_rows / encode_rows: a cache appending one
// token at a time must not allocate per token.
const float* gather_into(const float* x, size_t n, size_t stride, const std::vector<int>& ch) {
    thread_local std::vector<float> buf;
    if (buf.size() < n * ch.size()) buf.resize(n * ch.size());
    for (size_t v = 0; v < n; ++v)
        for (size_t j = 0; j < ch.size(); ++j) buf[v * ch.size() + j] = x[v * stride + ch[j]];
    return buf.data();
}
}  // namespace

void SplitCodec::check_rows(const float* x, size_t n, size_t x_stride) const {
    hi_->check_rows(gather_into(x, n, x_stride, high_), n, high_.size());
    lo_->check_rows(gather_into(x, n, x_stride, low_), n, low_.size());
}

void SplitCodec::encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const {
    hi_->encode_rows(gather_into(x, n, x_stride, high_), n, high_.size(), out, out_stride);
    lo_->encode_rows(gather_into(x, n, x_stride, low_), n, low_.size(), out + hi_->bytes_per_vector(), out_stride);
}

void SplitCodec::check_codes(const uint8_t* in, size_t in_stride, size_t n) const {
    hi_->check_codes(in, in_stride, n);
    lo_->check_codes(in + hi_->bytes_per_vector(), in_stride, n);
}

void SplitCodec::decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const {
    std::vector<float> h(n * high_.size()), l(n * low_.size());
    hi_->decode_rows(in, in_stride, n, h.data(), high_.size());
    lo_->decode_rows(in + hi_->bytes_per_vector(), in_stride, n, l.data(), low_.size());
    for (size_t v = 0; v < n; ++v) {
        for (size_t j = 0; j < high_.size(); ++j) out[v * out_stride + high_[j]] = h[v * high_.size() + j];
        for (size_t j = 0; j < low_.size(); ++j) out[v * out_stride + low_[j]] = l[v * low_.size() + j];
    }
}

void SplitCodec::dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const {
    std::vector<float> part(n);
    hi_->dot_rows(gather(q, 1, 0, high_).data(), in, in_stride, n, scores);
    lo_->dot_rows(gather(q, 1, 0, low_).data(), in + hi_->bytes_per_vector(), in_stride, n, part.data());
    for (size_t v = 0; v < n; ++v) scores[v] += part[v];
}

}  // namespace tqkv

namespace tqkv {
size_t SplitCodec::table_bytes() const {
    return hi_->table_bytes() + lo_->table_bytes() + (high_.size() + low_.size()) * sizeof(int);
}
}  // namespace tqkv
