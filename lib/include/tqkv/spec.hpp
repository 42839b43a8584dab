// Cache specs: the one short grammar every caller uses to name a KV cache (tqkv-run --cache,
// tqkv-bench --config, the C ABI's tqkv_cache_create_spec and tqkv_runner_create, npm
// createCache({ spec }) / createCache({ preset })).
//
//   fp32 | exact              exact fp32 cache (the Llama runner's reference)
//   fp16 | q8_0 | q4_0        per-token llama.cpp formats (the runner's emulated baselines)
//   q8_0-rot | q4_0-rot       the same with llama.cpp's Hadamard rotation (ggml-org/llama.cpp#21038:
//                             keys and queries over blocks of the largest power of two dividing
//                             head_dim, values over blocks of 64, output rotated back; no signs)
//   q8_0-rots | q4_0-rots     with random signs before the Hadamard transform (x<seed> optional)
//   turbo2 | turbo3 | turbo4  TurboQuant+'s cache types (one fp16 norm per head vector, norm
//                             corrected; tqkv/baselines.hpp), x<seed> optional
//   kivi2 | kivi4             KIVI, group 32, the last 128 tokens in fp16
//   K<b>V<b>[-opt...]         tqkv: key and value bits (1..8, fractional rates code the channels
//                             with the most calibration energy at one bit more), options:
//       w<N>    the N most recent tokens kept exact          prod   keys with TurboQuant-prod
//       raw     plain TurboQuant: no centring, no debiasing  nc / nck / ncv  no centring (both / keys / values)
//       nta     no logit debiasing    nvd  no value debiasing
//       t<x>    logit scale x         x<seed>  rotation seed
//       l<i>=K<b>V<b>   bits of layer i (layer-adaptive rates); l-<i>=K<b>V<b> the i-th layer
//                       from the end (l-1 = the last, whatever the model's depth)
//       s<N>    N attention-sink tokens kept exact (emulated path)
//       emu     emulated path: quantize-dequantize each token, exact attention over the result
//       exact / fast   attention arithmetic (Precision below)
//   auto-<b>[-opt...]         tqkv with rates chosen per layer by the calibration (plan_rates in
//                             tqkv/cache.hpp) within b bits per coordinate (codes, norms and the exact
//                             window at the model's context); window 16 unless w<N> says otherwise
//   or a preset name (presets()), e.g. "default" = K3.5V2.5-w16.
//
// With a Calibration (tqkv/calibration.hpp) a tqkv cache stores keys and values minus their
// channel means and codes the high channels of fractional rates; without one it is plain
// TurboQuant (fractional rates then pick their high channels from each layer's first append).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tqkv/baselines.hpp"
#include "tqkv/codec.hpp"

namespace tqkv {

// Arithmetic of attention over the codes (CacheConfig::precision, spec options exact / fast).
// Exact: float look-up tables (within 1e-4 of the decode-then-exact reference). Fast: integer
// tables (12-bit key tables for 4-bit codes, 8-bit below; int8 centroids times int16 weights for
// values) for codes of 1-4 bits (wider ones use the exact kernels); its error is bounded
// (lib/src/kernels/simd/fast_attention.hpp derives the bound), and its RMS stays below 1/10 of
// the codec's own error (tests/test_fast_kernels.cpp, on synthetic data and the real dump).
enum class Precision { Exact, Fast };
const char* to_string(Precision p);
Precision precision_from_string(const std::string& name);  // "exact", "fast"; throws std::invalid_argument

struct CacheSpec {
    enum class Format { Exact, Fp16, Q8_0, Q4_0, Kivi2, Kivi4, Turbo, Tqkv };
    Format format = Format::Tqkv;
    std::string text;  // as given (a preset name stays the name)
    BaselineRotation rotation = BaselineRotation::None;  // Q8_0, Q4_0: "-rot" / "-rots"

    // Format::Tqkv (Format::Turbo: its bits, key_bits = value_bits)
    double key_bits = 4, value_bits = 4;
    Method key_method = Method::Mse;
    int window = 0;               // most recent tokens kept exact
    int sinks = 0;                // first tokens kept exact (emulated path)
    bool center_keys = true;      // with a calibration: store k - mean (softmax ignores q.mean)
    bool center_values = true;    // with a calibration: store v - mean, added back to the output
    bool debias_keys = true;      // MSE keys: coded logits / (1 - D_b), D_b the codebook's distortion
    bool debias_values = true;    // coded values / (1 - D_b) (the same shrink, see cache.hpp)
    double logit_scale = 1.0;     // multiplies the attention scale
    uint64_t seed = 0x74716b76;   // also of Turbo's rotation and the signs of "-rots"
    bool emulate = false;         // quantize-dequantize + exact attention (research path)
    std::optional<Precision> precision;  // options exact / fast; none: CacheConfig's default
    struct LayerRate {
        int layer = 0;  // negative: counted from the end (-1 = the last layer)
        double key_bits = 4, value_bits = 4;
        int resolve(int layers) const;  // the layer index in a model of `layers` layers
    };
    std::vector<LayerRate> layer_rates;  // overrides, in the order given (a later one wins)
    double auto_bits = 0;         // auto-<b>: the budget in bits per coordinate (0: fixed rates)

    // Throws std::invalid_argument naming the bad part and giving the grammar.
    static CacheSpec parse(const std::string& spec);
    bool is_tqkv() const { return format == Format::Tqkv; }
    // Rates of layer `layer` of a model of `layers` layers after the overrides (negative layers
    // resolved against `layers`); throws as check_layers.
    double layer_key_bits(int layer, int layers) const;
    double layer_value_bits(int layer, int layers) const;
    // Throws std::invalid_argument if a layer override names a layer outside [0, layers) or, from
    // the end, outside [-layers, -1].
    void check_layers(int layers) const;
};

// Named specs: what a user picks without knowing the grammar. ΔNLL figures in README.md.
struct CachePreset {
    const char* name;
    const char* spec;
    const char* summary;
};
const std::vector<CachePreset>& presets();

// The grammar, for error messages and usage texts.
const char* cache_spec_grammar();

}  // namespace tqkv
