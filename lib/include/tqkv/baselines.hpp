// The KV-cache formats tqkv is compared against, implemented from their published descriptions,
// for the report (tqkv-bench report) and the explorer. A format holds the keys or the values of
// one attention head: a [tokens][dim] matrix, encoded all at once.
//
//   fp16        IEEE binary16 per coordinate.
//   q8_0, q4_0  llama.cpp / ggml block formats: 32 values + an fp16 scale per block
//               (8.5 and 4.5 bits per coordinate), ggml's reference rounding.
//   kivi        KIVI (Liu et al., 2024): asymmetric uniform int2/int4; keys quantized per channel
//               over groups of `group` tokens, values per token over groups of `group` channels,
//               fp16 scale and zero point per group; the most recent `residual` tokens (at least
//               the incomplete key group) stay in fp16.
//   polar       PolarQuant (Han et al., arXiv:2502.02617): random rotation, then a recursive polar
//               transform of blocks of 2^levels coordinates; angles quantized per level with
//               codebooks for their known distributions, the block radius kept in fp16.
//   turbo       TurboQuant+ (the llama.cpp fork TheTom/llama-cpp-turboquant, cache types turbo3 /
//               turbo4): per head vector a random Walsh–Hadamard rotation, `bits`-bit Lloyd–Max
//               codes of the rotated coordinates and ONE fp16 norm per vector (the fork's block of
//               128 values = one d128 head: 3.125 / 4.125 bits per coordinate). Stored norm
//               ||x|| / ||code||, so a decoded vector keeps its length (the fork's "norm
//               correction"). Codes and rotation are tqkv's TurboQuant-MSE codec, so the layout is
//               exactly tqkv's K<b>V<b>-raw; only the stored norm differs (tqkv keeps ||x|| and
//               divides logits and values by 1 - D_b instead, see cache.hpp).
//
// Rotation (q8_0 and q4_0 only), what llama.cpp does since ggml-org/llama.cpp#21038 for every
// quantized KV cache whose head dimension is a multiple of 64:
//   Hadamard       keys (and the queries scored against them) multiplied by H_n = the Sylvester
//                  Walsh–Hadamard matrix / sqrt(n) on each block of n coordinates, n = the largest
//                  power of two dividing dim (128 for d = 128, 64 for d = 64); values by H_64 on
//                  each block of 64, the attention output multiplied by H_64 again (H symmetric,
//                  H H = I). No random signs. Names "q4_0-rot", "q8_0-rot".
//   HadamardSigns  the same with random ±1 signs first (x -> H D x, D drawn from `seed`), the
//                  randomized Hadamard transform of QuaRot / TurboQuant; not what llama.cpp does.
//                  Names "q4_0-rots", "q8_0-rots".
// Storage is the rotated data's format: rotation adds no bytes.
#pragma once
#include <cstdint>
#include <memory>

#include "tqkv/codec.hpp"
#include <string>
#include <vector>

namespace tqkv {

enum class BaselineKind { Fp16, Q8_0, Q4_0, Kivi, Polar, Turbo };
enum class BaselineRotation { None, Hadamard, HadamardSigns };

struct BaselineConfig {
    BaselineKind kind = BaselineKind::Q4_0;
    int bits = 4;        // kivi: 2 or 4; polar: bits of the level-1 angles (higher levels use bits - 2,
                         // at least 1); turbo: 2, 3 or 4
    int group = 32;      // kivi group size
    int residual = 128;  // kivi: recent tokens kept in fp16
    int levels = 4;      // polar: recursion depth (blocks of 2^levels coordinates)
    uint64_t seed = 1;   // polar, turbo: the random rotation; HadamardSigns: the signs
    BaselineRotation rotation = BaselineRotation::None;  // q8_0 / q4_0 only
};

// The block sizes of llama.cpp's rotation for a head dimension: keys (and queries) and values.
// 0 when llama.cpp does not rotate (dim not a multiple of 64).
int hadamard_key_block(int dim);
int hadamard_value_block(int dim);

class BaselineFormat {
public:
    virtual ~BaselineFormat() = default;
    // Throws std::invalid_argument for unsupported (config, dim) combinations.
    static std::unique_ptr<BaselineFormat> make(const BaselineConfig& cfg, int dim, bool keys);

    virtual std::string name() const = 0;  // "fp16", "q8_0", "q4_0", "kivi2", "kivi4", "polar4", "turbo3", "q4_0-rot"
    int dim() const { return dim_; }
    size_t tokens() const { return tokens_; }
    // Replaces the content with x: tokens x dim floats (finite).
    virtual void encode(const float* x, size_t tokens) = 0;
    // The dequantized matrix, tokens x dim.
    virtual void decode(float* out) const = 0;
    // Storage in bytes, every scale, zero point, norm and fp16 residual token included.
    virtual size_t bytes() const = 0;
    double bits_per_coord() const { return tokens_ ? 8.0 * double(bytes()) / (double(tokens_) * dim_) : 0.0; }
    // Attention building blocks computed from the stored format (no full decode):
    // scores[t] = <q, x̂_t>; out[j] = sum_t w[t] x̂_t[j].
    virtual void scores(const float* q, float* scores) const = 0;
    virtual void weighted_sum(const float* w, float* out) const = 0;

protected:
    BaselineFormat(int dim, bool keys) : dim_(dim), keys_(keys) {}
    int dim_;
    bool keys_;
    size_t tokens_ = 0;
};

// tqkv's own codecs behind the same interface, for side-by-side comparisons (QJL keys in the
// report, every codec in the explorer): scores through VectorCodec::dot (unbiased for prod and
// QJL), weighted sums over the decoded vectors.
class CodecFormat : public BaselineFormat {
public:
    CodecFormat(const CodecConfig& cfg, bool keys);
    std::string name() const override;
    void encode(const float* x, size_t tokens) override;
    void decode(float* out) const override;
    size_t bytes() const override { return codes_.size(); }
    void scores(const float* q, float* scores) const override;
    void weighted_sum(const float* w, float* out) const override;

private:
    std::unique_ptr<VectorCodec> codec_;
    std::vector<uint8_t> codes_;
    std::vector<float> decoded_;
};

}  // namespace tqkv
