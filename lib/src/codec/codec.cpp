#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "codec/shared.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

using detail::KernelTable;

const char* to_string(Method m) {
    switch (m) {
        case Method::Mse: return "mse";
        case Method::Prod: return "prod";
        case Method::Qjl: return "qjl";
    }
    return "?";
}

Method method_from_string(const std::string& name) {
    for (auto m : {Method::Mse, Method::Prod, Method::Qjl})
        if (name == to_string(m)) return m;
    throw std::invalid_argument("tqkv: unknown method '" + name + "' (mse, prod, qjl)");
}

namespace detail {

Normalized normalize_pow2(float* buf, int padded, const KernelTable& k) {
    const float m = k.max_abs(buf, padded);
    if (m == 0.0f) return {0.0, 0.0f};
    int e;
    std::frexp(m, &e);        // m = f * 2^e, f in [0.5, 1)
    int shift = 1 - e;        // m * 2^shift in [1, 2)
    const int total = shift;
    while (shift != 0) {      // at most two steps, each factor a normal float
        const int s = std::clamp(shift, -126, 127);
        k.scale(buf, padded, std::ldexp(1.0f, s));
        shift -= s;
    }
    const float root = std::sqrt(k.sum_squares(buf, padded));
    return {double(root) * std::ldexp(1.0, -total), root};
}

float stored_norm(double norm, NormFormat f) {
    const float nf = float(norm);
    if (f == NormFormat::F32) return nf;
    return half_to_float(float_to_half(nf));
}

void write_norm(uint8_t* out, double norm, NormFormat f) {
    if (f == NormFormat::F16) {
        const uint16_t h = float_to_half(float(norm));
        out[0] = uint8_t(h);
        out[1] = uint8_t(h >> 8);
    } else {
        const float nf = float(norm);
        uint32_t u;
        std::memcpy(&u, &nf, 4);
        for (int i = 0; i < 4; ++i) out[i] = uint8_t(u >> (8 * i));
    }
}

float read_norm(const uint8_t* in, NormFormat f) {
    if (f == NormFormat::F16) return half_to_float(uint16_t(in[0] | (in[1] << 8)));
    const uint32_t u = uint32_t(in[0]) | uint32_t(in[1]) << 8 | uint32_t(in[2]) << 16 | uint32_t(in[3]) << 24;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
}

void check_norm_fits(double norm, NormFormat f, size_t vector_index, const char* what) {
    if (std::isfinite(stored_norm(norm, f))) return;
    std::ostringstream msg;
    msg << "tqkv: vector " << vector_index << ": " << what << " " << norm << " does not fit "
        << (f == NormFormat::F16 ? "fp16 (max 65504); use NormFormat::F32" : "fp32");
    throw std::invalid_argument(msg.str());
}

uint32_t max_abs_bits(const float* x, size_t n) {
    // For finite floats, |x| orders like its bit pattern with the sign cleared; any bit pattern
    // at or above 0x7f800000 is Inf or NaN. Integer max vectorizes without -ffast-math.
    // Signed compares on the sign-cleared bits (< 2^31): SSE2 has those, not unsigned max.
    // Blocks of 16 independent lanes: a fixed trip count the compiler vectorizes at -O2 (this
    // check runs before every encode; a plain loop made it a fifth of AVX-512 encode time).
    int32_t lanes[16] = {};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; ++j) {
            int32_t u;
            std::memcpy(&u, x + i + size_t(j), 4);
            u &= 0x7fffffff;
            lanes[j] = u > lanes[j] ? u : lanes[j];
        }
    for (; i < n; ++i) {
        int32_t u;
        std::memcpy(&u, x + i, 4);
        u &= 0x7fffffff;
        lanes[0] = u > lanes[0] ? u : lanes[0];
    }
    int32_t m = 0;
    for (int32_t v : lanes) m = v > m ? v : m;
    return uint32_t(m);
}

void check_row_norms(const float* x, size_t n, size_t stride, int dim, NormFormat f, const KernelTable& k) {
    const float limit = float((f == NormFormat::F16 ? 65504.0 : 3.0e38) / std::sqrt(double(dim)));
    uint32_t limit_bits;
    std::memcpy(&limit_bits, &limit, 4);
    std::vector<float> buf;
    for (size_t v = 0; v < n; ++v) {
        const float* row = x + v * stride;
        if (max_abs_bits(row, size_t(dim)) < limit_bits) continue;  // max|x| sqrt(d) below the format's range
        const int padded = pad_lanes(dim);
        buf.resize(padded);
        load_row(row, dim, padded, buf);
        check_norm_fits(normalize_pow2(buf.data(), padded, k).norm, f, v, "norm");
    }
}

void gaussian_matrix(uint64_t seed, int rows, int cols, std::vector<float>& s_cols, std::vector<float>& st_cols) {
    const int rp = pad_lanes(rows), cp = pad_lanes(cols);
    s_cols.assign(size_t(rp) * cols, 0.0f);
    st_cols.assign(size_t(cp) * rows, 0.0f);
    Rng rng(seed);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const float v = float(rng.normal());
            s_cols[size_t(j) * rp + i] = v;   // column j of S
            st_cols[size_t(i) * cp + j] = v;  // column i of S^T = row i of S
        }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------

VectorCodec::VectorCodec(CodecConfig cfg, size_t bytes)
    : cfg_(std::move(cfg)), bytes_(bytes), k_(&detail::kernels_by_name(cfg_.kernel.c_str())) {}

const char* VectorCodec::kernel() const { return k_->name; }

std::string VectorCodec::name() const {
    std::ostringstream s;
    s << to_string(cfg_.method) << cfg_.bits;
    return s.str();
}

namespace {

// One pass over x: throws for the first non-finite value; returns max |x_i| as a bit pattern.
uint32_t check_finite(std::span<const float> x, int dim, const char* what) {
    const uint32_t m = detail::max_abs_bits(x.data(), x.size());
    if (m < 0x7f800000u) return m;
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i])) {
            std::ostringstream msg;
            msg << "tqkv: " << what << " " << i / dim << " has a non-finite value (" << x[i] << ") at channel "
                << i % dim;
            throw std::invalid_argument(msg.str());
        }
    return m;
}

}  // namespace

void VectorCodec::encode(std::span<const float> x, std::span<uint8_t> out) const {
    const size_t d = size_t(dim());
    if (x.size() % d != 0)
        throw std::invalid_argument("tqkv: encode input has " + std::to_string(x.size()) +
                                    " floats, not a multiple of dim " + std::to_string(d));
    const size_t n = x.size() / d;
    if (out.size() != n * bytes_)
        throw std::invalid_argument("tqkv: encode output has " + std::to_string(out.size()) + " bytes, expected " +
                                    std::to_string(n * bytes_) + " (" + std::to_string(n) + " vectors x " +
                                    std::to_string(bytes_) + ")");
    // A norm is at most max|x| sqrt(d); only when that could exceed the norm format do the rows
    // need the exact check (which also covers the parts of a split codec).
    const uint32_t max_bits = check_finite(x, dim(), "input vector");
    float max_abs;
    std::memcpy(&max_abs, &max_bits, 4);
    const double limit = cfg_.norm == NormFormat::F16 ? 65504.0 : 3.0e38;
    if (double(max_abs) * std::sqrt(double(dim())) >= limit) check_rows(x.data(), n, d);
    encode_rows(x.data(), n, d, out.data(), bytes_);
}

std::vector<uint8_t> VectorCodec::encode(std::span<const float> x) const {
    std::vector<uint8_t> out(x.size() / size_t(dim()) * bytes_);
    encode(x, out);
    return out;
}

void VectorCodec::decode(std::span<const uint8_t> codes, std::span<float> out) const {
    if (codes.size() % bytes_ != 0)
        throw std::invalid_argument("tqkv: decode input has " + std::to_string(codes.size()) +
                                    " bytes, not a multiple of " + std::to_string(bytes_) + " bytes per vector");
    const size_t n = codes.size() / bytes_;
    if (out.size() != n * size_t(dim()))
        throw std::invalid_argument("tqkv: decode output has " + std::to_string(out.size()) + " floats, expected " +
                                    std::to_string(n * dim()));
    check_codes(codes.data(), bytes_, n);
    decode_rows(codes.data(), bytes_, n, out.data(), size_t(dim()));
}

std::vector<float> VectorCodec::decode(std::span<const uint8_t> codes) const {
    std::vector<float> out(codes.size() / bytes_ * size_t(dim()));
    decode(codes, out);
    return out;
}

void VectorCodec::dot(std::span<const float> query, std::span<const uint8_t> codes, std::span<float> scores) const {
    if (query.size() != size_t(dim()))
        throw std::invalid_argument("tqkv: dot query has " + std::to_string(query.size()) + " floats, expected " +
                                    std::to_string(dim()));
    if (codes.size() % bytes_ != 0)
        throw std::invalid_argument("tqkv: dot codes have " + std::to_string(codes.size()) +
                                    " bytes, not a multiple of " + std::to_string(bytes_));
    const size_t n = codes.size() / bytes_;
    if (scores.size() != n)
        throw std::invalid_argument("tqkv: dot scores have " + std::to_string(scores.size()) +
                                    " floats, expected " + std::to_string(n));
    check_finite(query, dim(), "query");
    check_codes(codes.data(), bytes_, n);
    dot_rows(query.data(), codes.data(), bytes_, n, scores.data());
}

// ---------------------------------------------------------------------------------------------

std::unique_ptr<VectorCodec> make_codec(const CodecConfig& cfg) {
    if (cfg.dim < kMinDim || cfg.dim > kMaxDim)
        throw std::invalid_argument("tqkv: dim " + std::to_string(cfg.dim) + " out of range [3, 1024]");
    if (!std::isfinite(cfg.bits))
        throw std::invalid_argument("tqkv: bits must be a finite number");
    if (cfg.bits != std::floor(cfg.bits)) return std::make_unique<SplitCodec>(cfg);
    switch (cfg.method) {
        case Method::Mse: return std::make_unique<TurboQuantMse>(cfg);
        case Method::Prod: return std::make_unique<TurboQuantProd>(cfg);
        case Method::Qjl: return std::make_unique<Qjl>(cfg);
    }
    throw std::invalid_argument("tqkv: unknown method");
}

std::vector<int> choose_high_channels(std::span<const float> calibration, int dim, int count) {
    if (dim <= 0 || calibration.size() % size_t(dim) != 0 || calibration.empty())
        throw std::invalid_argument("tqkv: calibration data must be a non-empty multiple of dim floats");
    if (count < 0 || count > dim)
        throw std::invalid_argument("tqkv: cannot choose " + std::to_string(count) + " of " + std::to_string(dim) +
                                    " channels");
    // Energy (mean square = variance + mean^2) rather than variance alone: the outlier channels of
    // real key caches often carry a large constant offset, which costs bits just the same.
    const size_t n = calibration.size() / dim;
    std::vector<double> energy(dim, 0.0);
    for (size_t v = 0; v < n; ++v)
        for (int j = 0; j < dim; ++j) energy[j] += double(calibration[v * dim + j]) * calibration[v * dim + j];
    std::vector<int> idx(dim);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return energy[a] > energy[b]; });
    idx.resize(count);
    std::sort(idx.begin(), idx.end());
    return idx;
}

}  // namespace tqkv
