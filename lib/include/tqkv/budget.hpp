// KV caches under a byte budget, for the Llama runner (tqkv/model.hpp): a tiered cache that keeps
// recent and important tokens exact and ages the rest to fewer bits (tqkv::KVCache tiers, one
// softmax over all of them), and the eviction baselines it is compared with (H2O, SnapKV,
// StreamingLLM), all behind the runner's AttentionCache interface.
//
//   tqkv::TieredOptions o;
//   o.budget_bytes = 1 << 20;                          // keys + values of every layer and KV head
//   auto cache = tqkv::make_tiered_cache(shape, o, &calibration);
//   tqkv::LlamaRunner run(model, *cache);              // append/attend as any other cache
//   // or by spec: make_budget_cache("tiered-K4V4-K2V2-w16", shape, 1 << 20, &calibration)
//
// What the budget counts (format_bytes(), the same convention as every cache of model.hpp): the
// storage of the held tokens — codes and norms of quantized tokens, exact tokens at fp16 — summed
// over layers and KV heads. Each (layer, KV head) gets an equal share, budget / (layers *
// kv_heads), and never holds more after an append returns. Per-token bookkeeping (position and
// importance, 12 bytes per token and KV head) and the codec tables (one set per tier and (layer,
// KV head), shared by the tier's segments: KVCache::empty_like) are memory_bytes(), not budget.
//
// Tiered cache, per (layer, KV head):
//   exact tier   protected tokens: the first `sinks` positions (attention sinks: never demoted or
//                evicted) and the most recent `window` positions (and the whole last appended
//                chunk); while the budget allows, older tokens stay exact too.
//   tiers 1..T   tqkv::KVCache objects ("segments" of up to segment_tokens tokens, heads = the
//                query heads of the KV head, kv_heads = 1) at the configured rates, e.g. K4V4 then
//                K2V2; segments reaching the last tier are merged into bins (the eviction unit).
// When an append takes the share over its budget, moves run until it fits again. Among the moves
// that keep a token — the exact token of lowest importance to the open segment of tier 1 (encoded
// once), or the tier-t segment of lowest mean importance decoded and re-encoded whole at tier t+1
// — the cheapest: importance x (distortion after - before) / bytes saved, distortion D =
// (D_key + D_value) / 2 of the tier's codebooks (0 exact). Under uniform importance that is a
// cascade by age (exact -> 4 bits first, then 4 -> 2 bits); an important segment keeps its bits
// while less important ones go down. Only when no such move is left is the last tier's bin of
// lowest mean importance evicted: attention before a question is asked does not predict what the
// question needs (a passkey nobody attended to yet), and a demoted token can still be found.
// `heavy` exact tokens of highest importance are demoted only when nothing else is left.
// Importance of a token: the decayed mean of its attention weight relative to a uniform share,
// score = decay * score + w * visible / heads_of_kv_head, norm = decay * norm + 1 per query,
// importance = score / norm (1 = average; uniform attention ties every token, whatever its age,
// and ties go to the oldest), from the per-token logits KVCache::attend_stats returns. Segments
// move whole, so a token is re-encoded at most once per tier and never at the same rate (a
// KVCache cannot drop a token from the middle without re-encoding the others, which would
// compound the error). Re-encoding never happens in attend(), which reads the tiers and updates
// the scores: it runs on a background worker after attend(layer), making room for the layer's
// next chunk while the caller goes on (TieredOptions::background), and in append() for whatever
// is still needed.
//
// Attention: for each query, one online softmax over every tier: the exact tier (held at fp16,
// attended in fp32) gives the starting statistics (max logit, sum of exp, unnormalized output),
// then one KVCache::attend_stats call over the segments of all quantized tiers continues from
// them, each 32-token block scored and accumulated by the fused kernels of its own tier's bit
// widths (one query rotation and table set per tier) and each tier's values times its debias
// factor. Keys are stored after RoPE, so decode
// needs no positions. Every token keeps its position: it decides protection (sinks, window) and,
// in chunked prefill (LlamaRunner::sequential_attention = false: append a chunk, then attend its
// queries causally), the causal mask of the exact tier — the whole chunk is protected until the
// next append, so all of it is exact and every older token is visible to all of its queries
// (append throws if the budget cannot hold sinks + max(window, chunk) exact tokens; attend takes
// at most the last append's tokens as queries).
//
// Preconditioning (with calibration statistics, as make_turbo_cache): keys and values are stored
// minus their per-channel calibration means in every tier (one softmax shift, added back to the
// output); tier logits are divided by (1 - D_b) (debias_keys) and tier values too
// (debias_values): MSE codes shrink a vector by sqrt(1 - D) on average in every direction, and a
// softmax-weighted sum of many tokens keeps that shrink while their noise averages out. A segment
// moving to the next tier is re-encoded from its debiased decode.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tqkv/model.hpp"

namespace tqkv {

// One held token of a (layer, KV head): its position, its tier (0 = exact, t = the t-th quantized
// tier of a tiered cache) and its importance score.
struct HeldToken {
    int32_t position = 0;
    int tier = 0;
    float score = 0;
};

class BudgetCache : public AttentionCache {
public:
    size_t budget_bytes() const { return budget_; }
    // The budget of one (layer, KV head): budget_bytes() / (layers * kv_heads).
    size_t share_bytes() const { return share_; }
    // The most format_bytes() held after any append since construction or reset_peak().
    double peak_bytes() const { return peak_; }
    void reset_peak() { peak_ = format_bytes(); }
    // tokens(layer) is the context length (positions appended since clear()); the tokens a
    // (layer, KV head) still holds:
    virtual size_t held_tokens(int layer, int kv_head) const = 0;
    // Held tokens in storage order (the order of dequantized()).
    virtual std::vector<HeldToken> held(int layer, int kv_head) const = 0;
    // What attention sees, per held token: keys and values [held][head_dim] such that exact
    // softmax attention over them (scale 1/sqrt(head_dim)) is what attend() computes — decoded
    // codes with the preconditioning undone and the debiasing applied.
    virtual void dequantized(int layer, int kv_head, std::vector<float>& keys, std::vector<float>& values) const = 0;
    // Tokens evicted so far (all layers and KV heads), since clear().
    virtual size_t evicted() const = 0;
    // The prompt is complete (SnapKV-prefill compresses here; a no-op for the others).
    virtual void end_prefill() {}

protected:
    BudgetCache(const CacheShape& s, size_t budget);
    void note_bytes();  // after every append: tracks the peak
    size_t budget_ = 0, share_ = 0;
    double peak_ = 0;
};

struct TierRate {
    double key_bits = 4, value_bits = 4;  // 1..8, fractional rates code high channels at +1 bit
};

struct TieredOptions {
    size_t budget_bytes = 0;                      // see the top of this file
    std::vector<TierRate> tiers = {{4, 4}, {2, 2}};  // quantized tiers, most bits first; empty = exact + eviction
    int window = 16;           // most recent positions kept exact
    int sinks = 4;             // first positions kept exact, never demoted or evicted
    int heavy = 0;             // exact tokens of highest importance demoted only when nothing else is left
    int segment_tokens = 32;   // tokens per segment (demotion unit below the exact tier), 1..4096
    int last_tier_tokens = 256;  // segments reaching the last tier are merged into bins of up to this
                                 // many tokens and 1/8 of a share (the eviction unit), at least
                                 // segment_tokens
    double decay = 0.99;       // importance: decay per query of the running mean (1 = mean over the token's life)
    bool center = true;        // with calibration: store k - mean, v - mean
    bool debias_keys = true;   // tier logits / (1 - D_b)
    bool debias_values = true;   // tier values / (1 - D_b): MSE codes shrink values as they shrink
                                 // inner products; a weighted sum of many tokens keeps the shrink
                                 // and loses the noise (passkey at 1/6: 4/6 -> 6/6 of the exact
                                 // cache's retrievals, ΔNLL unchanged)
    uint64_t seed = 0x74716b76;
    std::string kernel;        // "" = best available
    // Demotion on a worker thread: after attend(layer), it re-encodes that layer's tokens to make
    // room for the next chunk while the caller goes on; append(layer) waits for it (and demotes
    // itself whatever is still needed: the budget holds after every append either way). Results
    // do not depend on the worker's timing. false: demotion inside append only. Ignored (false)
    // where there are no threads (the wasm build).
    bool background = true;
};

// Throws std::invalid_argument when the options are inconsistent or the budget cannot hold the
// protected exact tokens (sinks + window) of every (layer, KV head).
std::unique_ptr<BudgetCache> make_tiered_cache(const CacheShape& shape, const TieredOptions& opt,
                                               const Calibration* calibration = nullptr);

enum class EvictionPolicy {
    StreamingLLM,  // the first `sinks` tokens + the most recent ones (Xiao et al. 2023)
    H2O,           // heavy hitters by accumulated attention + the most recent ones (Zhang et al. 2023)
    SnapKV,        // tokens voted for by the last `observation` queries (max-pooled over neighbours) +
                   // the observation window (Li et al. 2024)
};

// Exact tokens only, held at fp16 (like the exact tier of the tiered cache): a (layer, KV head)
// holds capacity = share / (4 * head_dim) tokens and evicts one per token beyond it.
struct EvictionOptions {
    EvictionPolicy policy = EvictionPolicy::H2O;
    size_t budget_bytes = 0;
    int sinks = 4;                  // StreamingLLM
    double recent_fraction = 0.5;   // H2O: share of the capacity for the most recent tokens (the paper's 50/50)
    int observation = 32;           // SnapKV: voting queries, and the most recent tokens always kept
    int pool = 7;                   // SnapKV: max-pool kernel over neighbouring held positions (odd)
    // SnapKV as published: no eviction until end_prefill() (the prompt is held whole, over budget),
    // then one vote by the prompt's last `observation` queries selects capacity - observation
    // prompt tokens; afterwards those stay and the rest of the capacity is a recent window.
    // false: the budget holds from the first token; each eviction is voted by the most recent
    // `observation` queries (a streaming SnapKV).
    bool prefill_unbounded = false;
};

std::unique_ptr<BudgetCache> make_eviction_cache(const CacheShape& shape, const EvictionOptions& opt);

// A budgeted cache from a short spec (tqkv-bench budget --policies):
//   tiered[-K<b>V<b>...][-w<N>][-s<N>][-h<N>][-g<N>][-m<N>][-d<decay>][-nvd][-nd][-nc][-x<seed>]
//        quantized tiers in order (default K4V4-K2V2; "-none" for no tiers), window, sinks, heavy
//        exact tokens, segment tokens, last-tier bin tokens, importance decay, no value debiasing, no key debiasing,
//        no centering
//   h2o[-r<fraction>]   streaming[-s<N>]   snapkv[-o<N>][-p<N>][-prefill]
// Throws std::invalid_argument with the grammar on a bad spec.
std::unique_ptr<BudgetCache> make_budget_cache(const std::string& spec, const CacheShape& shape, size_t budget_bytes,
                                               const Calibration* calibration = nullptr);

// Bytes of an fp16 cache (keys and values, every layer and KV head) holding `tokens` tokens.
inline size_t fp16_cache_bytes(const CacheShape& s, size_t tokens) {
    return tokens * 4 * size_t(s.layers) * size_t(s.kv_heads) * size_t(s.head_dim);
}

}  // namespace tqkv
