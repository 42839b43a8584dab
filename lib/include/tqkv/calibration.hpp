// Calibration: per-channel statistics of a model's keys and values, which the compressed cache
// uses to precondition them (mean centring, the high channels of fractional rates).
//
//   tqkv::Calibration cal(layers, kv_heads, head_dim);
//   cal.add(layer, keys, values);          // [n][kv_heads][head_dim] each, e.g. the K/V of a prefill
//   auto cache = tqkv::ModelKVCache(shape, tqkv::CacheSpec::parse("K3.5V2.5-w16"), &cal);
//   auto bytes = cal.save();               // versioned, CRC-checked; Calibration::load(bytes)
//
// Why it helps (all of it exact in infinite precision, see DESIGN.md and README "End to end"):
//   - keys are stored minus their channel means: q.mean is the same for every token of a query,
//     and softmax ignores a shift common to all logits; values minus theirs, added back to the
//     output (attention weights sum to 1). What remains to code is smaller, so the codes lose less.
//   - a fractional rate (K3.5) codes the channels with the most energy about the stored offset at
//     one bit more; which channels those are is a property of the model, not of one prompt.
// Statistics are sums, so adding more samples later (or loading and continuing) is exact. The
// samples should come from text that is not evaluated afterwards (a held-out calibration text, or
// the user's own first prefill).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tqkv {

class Calibration {
public:
    Calibration() = default;
    // An empty accumulator; throws std::invalid_argument unless layers in 1..1024, kv_heads in
    // 1..4096, head_dim in 3..1024.
    Calibration(int layers, int kv_heads, int head_dim);

    int layers() const { return layers_; }
    int kv_heads() const { return kv_heads_; }
    int head_dim() const { return head_dim_; }
    bool empty() const { return layers_ == 0; }
    // Tokens added to a layer.
    uint64_t tokens(int layer) const;
    // True when every layer has at least one token (what a cache needs).
    bool complete() const;

    // Adds n tokens of one layer: keys and values [n][kv_heads][head_dim] (keys after RoPE, as the
    // cache receives them). Throws std::invalid_argument on a bad layer, sizes or non-finite
    // values, and then adds nothing.
    void add(int layer, std::span<const float> keys, std::span<const float> values);
    // Optional: the queries of the same tokens, [n][heads][head_dim] with heads a multiple of
    // kv_heads (query head h uses KV head h / (heads / kv_heads)); their per-channel energy is kept
    // per KV head (summed over its query heads). Used to weigh key errors (rate allocation).
    void add_queries(int layer, int heads, std::span<const float> queries);

    // Per (layer, KV head) and channel: mean and mean square E[x^2]; [head_dim] each.
    std::vector<double> key_mean(int layer, int kv_head) const;
    std::vector<double> value_mean(int layer, int kv_head) const;
    std::vector<double> key_mean_square(int layer, int kv_head) const;
    std::vector<double> value_mean_square(int layer, int kv_head) const;
    // E[q_j^2] summed over the KV head's query heads (zeros when no queries were added).
    std::vector<double> query_mean_square(int layer, int kv_head) const;
    uint64_t query_tokens(int layer) const;

    // The `count` channels of a layer with the most energy E[(x - offset)^2], summed over KV heads
    // (kv_head = -1: one choice for the layer, as one codec per side codes all heads) or of one KV
    // head; offset = the channel mean when `centred`, else 0. What a fractional rate codes at +1
    // bit; ascending channel order, ties to the lower channel. keys: key channels, else values.
    std::vector<int> high_channels(int layer, bool keys, int count, bool centred, int kv_head = -1) const;

    // Optional, per layer: how much the model's loss grows with the coding error of this layer's
    // keys and of its values — KL from the exact next-token distribution (nats per token; the
    // expected ΔNLL) per unit of g = D / (1 - D), the relative
    // error variance of debiased MSE codes (D = mse_distortion). Measured by a short probe with the
    // model (tqkv::measure_sensitivity, tqkv/model.hpp); auto rate specs (CacheSpec "auto-<bits>")
    // allocate bits by it. Empty when not measured.
    void set_sensitivity(int layer, double keys, double values);
    bool has_sensitivity() const { return !key_sens_.empty(); }
    double key_sensitivity(int layer) const;
    double value_sensitivity(int layer) const;

    // Serialization: "TQKVCALI", u32 version, shape, per-layer token counts, the sums as f64, CRC-32
    // (little-endian). load() checks every size against the bytes present before allocating, the
    // CRC, and that every statistic is finite and consistent; throws std::invalid_argument.
    std::vector<uint8_t> save() const;
    static Calibration load(std::span<const uint8_t> bytes);

    bool operator==(const Calibration& o) const = default;

private:
    size_t index(int layer, int kv_head) const { return (size_t(layer) * kv_heads_ + size_t(kv_head)) * head_dim_; }
    std::vector<double> average(const std::vector<double>& sums, int layer, int kv_head, uint64_t n) const;
    void check_layer(int layer, const char* what) const;
    int layers_ = 0, kv_heads_ = 0, head_dim_ = 0;
    std::vector<uint64_t> tokens_, query_tokens_;  // [layer]
    // Sums over tokens, [layer][kv_head][head_dim].
    std::vector<double> key_sum_, key_sq_, value_sum_, value_sq_, query_sq_;
    std::vector<double> key_sens_, value_sens_;  // [layer] or empty
};

}  // namespace tqkv
