// Vector codecs of the TurboQuant family: encode float vectors to packed codes + norms, decode
// them, and score a float query against encoded vectors without decoding them.
//
//   TurboQuantMse   b bits per coordinate (1..8): normalize, rotate, Lloyd–Max code per coordinate.
//                   Lowest MSE; inner products shrink by the factor (1 - D_b) on average.
//   TurboQuantProd  b bits (2..8): a (b-1)-bit MSE stage plus a 1-bit QJL sketch of the residual
//                   and its norm; unbiased inner products (DESIGN.md §1).
//   Qjl             1 bit: signs of S x for a Gaussian S, plus the norm (QJL paper's estimator).
//   SplitCodec      fractional rates (2.5, 3.25, ...): a fixed set of "high" channels coded at
//                   more bits, the rest at fewer, each part a codec of its own.
//
// Byte layout of one encoded vector (all integers and floats little-endian; code streams as in
// packing.hpp; a norm is 2 bytes (fp16) or 4 bytes (fp32) per CodecConfig::norm):
//   mse    [norm][codes: d*b bits]
//   prod   [norm][residual norm][codes: d*(b-1) bits][signs: d bits]
//   qjl    [norm][signs: d bits]
//   split  [high part, as its codec][low part, as its codec]
// The same (config, seed) gives the same bytes on every kernel and every target.
// fp16 norms hold 2^-24 .. 65504: encoding a vector with a larger norm is an error (use fp32
// norms), a vector with a smaller norm decodes to zero.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tqkv/rotation.hpp"

namespace tqkv {

namespace detail {
struct KernelTable;
}

enum class Method { Mse, Prod, Qjl };
enum class NormFormat { F16, F32 };
const char* to_string(Method m);
Method method_from_string(const std::string& name);  // "mse", "prod", "qjl"; throws std::invalid_argument

struct CodecConfig {
    int dim = 128;
    // Bits per coordinate. Integers 1..8 (mse), 2..8 (prod), 1 (qjl). A fractional value b
    // (mse, prod) codes high_channels at floor(b) + high_extra_bits bits and the rest at floor(b).
    double bits = 4.0;
    Method method = Method::Mse;
    uint64_t seed = 0x74716b76;  // "tqkv"
    RotationKind rotation = RotationKind::Auto;
    int rotation_rounds = 0;       // 0 = the kind's default
    NormFormat norm = NormFormat::F16;
    // Fractional rates: exactly round((bits - floor(bits)) / high_extra_bits * dim) distinct
    // channels, e.g. from choose_high_channels() on calibration data.
    std::vector<int> high_channels;
    int high_extra_bits = 1;
    std::string kernel;  // "" = best available (or TQKV_KERNEL); "scalar", "avx2", "avx512", "neon"
};

class VectorCodec {
public:
    virtual ~VectorCodec() = default;

    const CodecConfig& config() const { return cfg_; }
    int dim() const { return cfg_.dim; }
    size_t bytes_per_vector() const { return bytes_; }
    // Real storage cost per coordinate, norms and all other per-vector data included.
    double bits_per_coord() const { return 8.0 * double(bytes_) / cfg_.dim; }
    std::string name() const;          // e.g. "mse4", "prod3", "qjl1", "mse2.5"
    const char* kernel() const;        // name of the kernel table in use

    // n = x.size() / dim vectors in, n * bytes_per_vector() bytes out. Throws
    // std::invalid_argument on wrong sizes, NaN/Inf, or a norm the norm format cannot hold;
    // on error nothing has been written to `out`.
    void encode(std::span<const float> x, std::span<uint8_t> out) const;
    std::vector<uint8_t> encode(std::span<const float> x) const;
    // n = codes.size() / bytes_per_vector() vectors to n * dim floats.
    void decode(std::span<const uint8_t> codes, std::span<float> out) const;
    std::vector<float> decode(std::span<const uint8_t> codes) const;
    // scores[v] = estimate of <query, x_v> for each encoded vector, computed from the codes.
    void dot(std::span<const float> query, std::span<const uint8_t> codes, std::span<float> scores) const;

    // Unchecked strided versions (for composite codecs and caches): inputs already validated.
    // check_rows throws if a (finite) row's norm cannot be stored.
    virtual void check_rows(const float* x, size_t n, size_t x_stride) const = 0;
    virtual void encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const = 0;
    virtual void decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const = 0;
    virtual void dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const = 0;
    // Throws if a stored norm is not finite (hostile bytes).
    virtual void check_codes(const uint8_t* in, size_t in_stride, size_t n) const = 0;
    // Bytes of the codec's fixed tables (rotation, codebook, QJL matrix), shared by all vectors.
    virtual size_t table_bytes() const = 0;

protected:
    VectorCodec(CodecConfig cfg, size_t bytes);
    CodecConfig cfg_;
    size_t bytes_;
    const detail::KernelTable* k_;
};

class LloydMaxCodebook;

// b-bit TurboQuant-MSE.
class TurboQuantMse : public VectorCodec {
public:
    explicit TurboQuantMse(const CodecConfig& cfg);
    const Rotation& rotation() const { return rot_; }
    const LloydMaxCodebook& codebook() const { return *cb_; }

    void check_rows(const float* x, size_t n, size_t x_stride) const override;
    void encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const override;
    void decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const override;
    void dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const override;
    void check_codes(const uint8_t* in, size_t in_stride, size_t n) const override;
    size_t table_bytes() const override;

private:
    int bits_;
    Rotation rot_;
    std::shared_ptr<const LloydMaxCodebook> cb_;
};

// TurboQuant-prod: (b-1)-bit MSE stage + 1-bit QJL of the residual.
class TurboQuantProd : public VectorCodec {
public:
    explicit TurboQuantProd(const CodecConfig& cfg);
    const Rotation& rotation() const { return rot_; }
    const LloydMaxCodebook& codebook() const { return *cb_; }
    int mse_bits() const { return mse_bits_; }
    // S (dim x dim, N(0,1) entries) column-major with padded rows: the QJL projection applied to
    // the rotated residual.
    const std::vector<float>& qjl_columns() const { return s_cols_; }

    void check_rows(const float* x, size_t n, size_t x_stride) const override;
    void encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const override;
    void decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const override;
    void dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const override;
    void check_codes(const uint8_t* in, size_t in_stride, size_t n) const override;
    size_t table_bytes() const override;

private:
    int mse_bits_;
    Rotation rot_;
    std::shared_ptr<const LloydMaxCodebook> cb_;
    std::vector<float> s_cols_, st_cols_;  // S and S^T column-major, padded rows
};

// QJL: signs of S x and ||x||.
class Qjl : public VectorCodec {
public:
    explicit Qjl(const CodecConfig& cfg);

    void check_rows(const float* x, size_t n, size_t x_stride) const override;
    void encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const override;
    void decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const override;
    void dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const override;
    void check_codes(const uint8_t* in, size_t in_stride, size_t n) const override;
    size_t table_bytes() const override;

private:
    std::vector<float> s_cols_, st_cols_;
};

// Fractional rates: high channels and the remaining channels coded by two codecs.
class SplitCodec : public VectorCodec {
public:
    explicit SplitCodec(const CodecConfig& cfg);
    const std::vector<int>& high_channels() const { return high_; }
    const std::vector<int>& low_channels() const { return low_; }
    const VectorCodec& high_codec() const { return *hi_; }
    const VectorCodec& low_codec() const { return *lo_; }

    void check_rows(const float* x, size_t n, size_t x_stride) const override;
    void encode_rows(const float* x, size_t n, size_t x_stride, uint8_t* out, size_t out_stride) const override;
    void decode_rows(const uint8_t* in, size_t in_stride, size_t n, float* out, size_t out_stride) const override;
    void dot_rows(const float* q, const uint8_t* in, size_t in_stride, size_t n, float* scores) const override;
    void check_codes(const uint8_t* in, size_t in_stride, size_t n) const override;
    size_t table_bytes() const override;

private:
    std::vector<float> gather(const float* x, size_t n, size_t stride, const std::vector<int>& ch) const;
    std::vector<int> high_, low_;
    std::unique_ptr<VectorCodec> hi_, lo_;
};

// The codec for a configuration (SplitCodec for fractional bits). Throws std::invalid_argument
// with a message naming the bad field.
std::unique_ptr<VectorCodec> make_codec(const CodecConfig& cfg);

// The `count` channels of highest energy (mean square) over calibration vectors (n * dim floats),
// in ascending order.
std::vector<int> choose_high_channels(std::span<const float> calibration, int dim, int count);

}  // namespace tqkv
