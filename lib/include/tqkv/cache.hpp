// A compressed KV cache for one attention layer (KVCache) or a whole model (ModelKVCache), with
// attention computed directly from the codes.
//
//   tqkv::CacheConfig cfg;                 // 4 query heads, 4 KV heads, d = 128, K4 V4 by default
//   tqkv::KVCache cache(cfg);
//   cache.append(keys, values, n);         // n tokens: keys/values [n][kv_heads][head_dim]
//   cache.attend(queries, m, out);         // m queries [m][heads][head_dim] -> out [m][heads][head_dim]
//
// Tokens older than the recent window are stored as TurboQuant codes in blocks of block_tokens
// tokens (codes of 32 tokens interleaved so SIMD table look-ups score 16 tokens at once, see
// lib/src/cache/layout.hpp), carved from large per-KV-head arenas so that attention streams each
// head's codes from contiguous memory; the most recent `window` tokens are kept exactly in fp32
// and take part in the same softmax.
//
// Thread safety: const member functions (attend, save, bytes_used, ...) may run concurrently
// with each other; anything that changes the cache (append, truncate, clear) needs exclusive
// access. Every public function validates its arguments first and, when it throws
// std::invalid_argument (bad shapes, NaN/Inf, capacity), leaves the cache exactly as it was.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tqkv/calibration.hpp"
#include "tqkv/codec.hpp"
#include "tqkv/spec.hpp"

namespace tqkv {

namespace detail {
struct KernelTable;
struct AttentionKernels;
}
struct LlamaConfig;

// The attention shape of a model: layers, query heads, KV heads, head dimension.
struct CacheShape {
    int layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
    size_t context = 0;  // the model's context (auto rate budgets count the exact window over it); 0 = 4096
    static CacheShape of(const LlamaConfig& c);  // tqkv/model.hpp
};

struct CacheConfig {
    int heads = 4;             // query heads
    int kv_heads = 4;          // KV heads; heads must be a multiple (grouped-query attention)
    int head_dim = 128;        // any dimension the codecs support (3..1024)
    double key_bits = 4;       // mse: 1..8, prod: 2..8, or fractional (needs key_high_channels)
    Method key_method = Method::Mse;  // Mse or Prod
    double value_bits = 4;     // values always use Mse
    std::vector<int> key_high_channels, value_high_channels;  // for fractional rates
    int block_tokens = 64;     // tokens per block: a multiple of 32, at most 4096
    int window = 0;            // most recent tokens kept exactly (fp32); 0 = none
    float scale = 0;           // attention scale; 0 = 1/sqrt(head_dim)
    size_t max_tokens = 0;     // capacity; 0 = unbounded (up to 2^28). Its blocks are allocated at once
                               // (one arena) when the first token is compressed.
    // Sliding attention window (Mistral's sliding_window; not the exact `window` above): a query at
    // position p sees only tokens p - attention_window + 1 .. p, and tokens that have left the
    // window of every query still to come are dropped: their codes are zeroed and whole blocks
    // freed, so memory stays bounded by about attention_window + the last appended chunk. 0 = none.
    // Not with max_tokens (a capacity allocates every block at once).
    size_t attention_window = 0;
    uint64_t seed = 0x74716b76;
    NormFormat norm = NormFormat::F16;
    std::string kernel;        // "" = best available (or TQKV_KERNEL)
    // Attention arithmetic (tqkv/spec.hpp); not part of the codes. Fast by default: on tq-ref-128 it
    // adds RMS error of 0.01-0.06 of the codec's own to logits and 0.02-0.03 to outputs, and moves
    // ΔNLL by <= 0.005 percentage points (K4V4, K3.5V2.5-w16); Exact keeps the 1e-4 tolerance.
    Precision precision = Precision::Fast;

    // Preconditioning (from a Calibration, see layer_config()); every part of it is exact in
    // infinite precision, and attend() / attend_stats() return what an uncentred cache would:
    //   key_mean    [kv_heads][head_dim] or empty: keys are stored minus it. Logits shift by
    //               q.mean for every token of a query, which softmax ignores (attend_stats and its
    //               logits add the shift back, so caches with different means merge exactly).
    //   value_mean  likewise for values: stored minus it, added back to the output (weights sum to 1).
    //   debias_keys    MSE keys: logits of coded tokens divided by (1 - D_b), D_b the codebook's
    //                  distortion of a unit vector: MSE codes shrink inner products by that factor
    //                  on average (README "What the codecs do"). Exact window tokens are not scaled.
    //   debias_values  coded values divided by (1 - D_b): the codes shrink a vector by the same
    //                  factor in every direction on average, and a softmax-weighted sum of many
    //                  tokens keeps the shrink while their noise averages out.
    std::vector<float> key_mean, value_mean;
    bool debias_keys = false, debias_values = false;
};

// Counts of the fused attention's work, added to by the attend calls given them
// (AttendOptions::counters), e.g. to report the share of skipped values.
struct AttendCounters {
    uint64_t value_groups = 0;          // groups of 32 coded tokens whose values were due, per query and KV head
    uint64_t skipped_value_groups = 0;  // of which skipped (AttendOptions::skip_values)
};

// The default ε of skipped values (AttendOptions::skip_values).
inline constexpr float kDefaultSkipValues = 1e-6f;

// How one attend call runs.
struct AttendOptions {
    // Threads of the library's pool (tqkv/threads.hpp) the call may use, the caller's included,
    // 1..kMaxThreads. Work is split into KV heads x token ranges of fixed size, so the result is
    // the same for every thread count.
    int threads = 1;
    // Skipped values: the values of a group of 32 coded tokens are not decoded when every softmax
    // weight in it is below skip_values times the running sum (the denominator stays exact). Each
    // skipped token's final attention weight is then below skip_values, so the output moves by
    // less than skip_values x (skipped tokens) x the largest |value| (derived in
    // cache/attention.cpp). 0 = never skip; in [0, 1).
    float skip_values = kDefaultSkipValues;
    AttendCounters* counters = nullptr;  // when given, the call adds its counts
};

class KVCache {
public:
    explicit KVCache(const CacheConfig& cfg);  // throws std::invalid_argument on a bad config
    ~KVCache();
    KVCache(KVCache&&) noexcept;
    KVCache& operator=(KVCache&&) noexcept;
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    const CacheConfig& config() const;
    float scale() const;               // the effective attention scale (config().scale, or 1/sqrt(head_dim))
    double key_debias() const;         // the factor on logits of coded keys (1 without debias_keys)
    double value_debias() const;       // the factor on coded values (1 without debias_values)
    const VectorCodec& key_codec() const;    // the codecs the tokens are coded with
    const VectorCodec& value_codec() const;
    size_t tokens() const;             // tokens appended (positions; compressed + window, dropped included)
    size_t compressed_tokens() const;  // tokens stored as codes (dropped included)
    // Tokens dropped by the attention window (CacheConfig::attention_window): tokens 0 .. this - 1
    // are gone. Appending n tokens when tokens() = T drops those before T + 1 - attention_window,
    // the first token the chunk's first query sees: the queries of the last appended chunk and
    // later ones see everything they need; attending a query further back throws.
    size_t dropped_tokens() const;
    // Sets CacheConfig::attention_window (0 = none). Throws std::invalid_argument, changing
    // nothing, when tokens were dropped already under another window, or with max_tokens.
    void set_attention_window(size_t window);
    const char* kernel() const;
    // The attention arithmetic (CacheConfig::precision); not stored by save(): the same codes are
    // attended either way, so a loaded cache takes the default until this is called.
    void set_precision(Precision p);

    // Appends n tokens; keys and values are [n][kv_heads][head_dim] floats. With a window, the
    // exact rows of the last n + window tokens are kept until the next append (see attend).
    void append(std::span<const float> keys, std::span<const float> values);
    // Attention for m = queries.size() / (heads * head_dim) new queries, [m][heads][head_dim],
    // into out (same shape). Query i sits at position p = tokens() - m + i and, with causal = true,
    // sees tokens 0..p (chunked prefill after appending the chunk); with causal = false every
    // query sees all tokens. Like token-by-token decode, a query at p sees the `window` tokens up
    // to p exactly and older ones as codes: append keeps the exact rows of the chunk it compresses
    // (and of the window before it) until the next append, so the queries of the last appended
    // chunk get exactly what decode would have computed. Queries further back read tokens whose
    // exact rows are gone as codes. With an attention window W (CacheConfig::attention_window) a
    // query at p sees only tokens p - W + 1 .. p (causal = false: every query sees the last W
    // tokens); a query that would need a dropped token throws.
    void attend(std::span<const float> queries, std::span<float> out, bool causal = true,
                const AttendOptions& options = {}) const;
    // The queries of the last appended chunk have been answered: frees the exact rows append kept
    // for them, all but the window's (a prefill chunk of n tokens holds n + window fp32 rows of keys
    // and values until the next append; a 4096-token chunk of 2 KV heads x 128 takes 8 MiB per
    // layer). Attention afterwards reads those tokens as codes, as after save() and load(); a
    // decode step's query sees what it did before (its window is exact either way). No-op
    // without a window.
    void release_chunk_rows();
    // Attention statistics of one query token ([heads][head_dim]) over all tokens, for merging
    // several caches into one softmax (tiers, eviction policies): per query head h,
    // max_logit[h] = m = max_t s_t and sum_exp[h] = sum_t exp(s_t - m), with s_t = scale q.k_t;
    // acc [heads][head_dim] = sum_t exp(s_t - m) v_t (unnormalized); logits, when given
    // ([heads][tokens()]), receive every s_t. Merge caches i with M = max m_i:
    // out = sum_i exp(m_i - M) acc_i / sum_i exp(m_i - M) sum_exp_i.
    void attend_stats(std::span<const float> query, std::span<float> acc, std::span<float> max_logit,
                      std::span<float> sum_exp, std::span<float> logits = {}, const AttendOptions& options = {}) const;
    // The same statistics over several caches at once, as if their tokens were one cache (in the
    // order given; logits [heads][tokens()] of each cache, one after the other), in one online
    // softmax. The caches may differ in rates, methods, high channels, seed, norm format and scale
    // (e.g. the precision tiers of a budgeted cache) but must share heads, kv_heads, head_dim and
    // kernel: caches with the same codes (same_codes, e.g. made by empty_like) share one query
    // rotation, one set of look-up tables and one set of value accumulators, and every block of 32
    // tokens is scored and accumulated by the kernels of its own cache's bit widths.
    // value_scales: one factor per cache on its values (empty: 1; e.g. a tier's debias factor).
    // continue_stats: acc / max_logit / sum_exp hold on entry the statistics of tokens attended
    // elsewhere (e.g. an exact tier; -inf, 0 and zeros for none), and the online softmax goes on
    // from them. Empty caches are skipped; throws std::invalid_argument on bad sizes, when the
    // caches differ in shape or kernel, or all are empty. Caches with an attention window are
    // refused (here and in the one-cache attend_stats: their logits would not be one per token).
    static void attend_stats(std::span<const KVCache* const> caches, std::span<const float> query,
                             std::span<float> acc, std::span<float> max_logit, std::span<float> sum_exp,
                             std::span<float> logits = {}, std::span<const float> value_scales = {},
                             bool continue_stats = false, const AttendOptions& options = {});
    // True when both caches code tokens identically (shape, methods, rates, high channels, seed,
    // norm format, attention scale, kernel); block size, window and capacity may differ.
    bool same_codes(const KVCache& other) const;
    // A new, empty cache with this config that shares this cache's codecs and kernel tables
    // (immutable once built): the same codes as KVCache(config()) without building them again
    // (a budgeted cache holds hundreds of small caches of one rate). The two are as independent
    // as two separately built caches, also across threads.
    KVCache empty_like() const;
    // The same result computed the slow, obvious way: decode every key and value to floats, exact
    // softmax in double precision. The reference the fused kernels are tested against.
    void attend_reference(std::span<const float> queries, std::span<float> out, bool causal = true) const;
    // Keys/values of one KV head as attention sees them: tokens() x head_dim floats; coded tokens
    // decoded and times the debias factor, window tokens exact, every token plus the mean; tokens
    // dropped by the attention window are zeros.
    std::vector<float> decode_keys(int kv_head) const;
    std::vector<float> decode_values(int kv_head) const;

    // Keeps the first n_tokens (speculative-decoding rollback). Tokens that return to the window
    // get their exact rows back when the cache still holds them (a rollback within the last
    // appended chunk: the same cache as never having gone further); otherwise they stay codes.
    // With dropped tokens, the next query (at position n_tokens) must still see all it needs:
    // n_tokens + 1 - attention_window >= dropped_tokens(), else it throws (a rollback within the
    // last appended chunk always works).
    void truncate(size_t n_tokens);
    void clear();

    size_t bytes_used() const;           // all memory the cache holds: blocks, window, tables
    // Storage the format needs for the tokens held: codes and norms of compressed tokens, exact
    // window tokens counted at fp16 (the convention of every cache in tqkv/model.hpp).
    double format_bytes() const;
    size_t table_bytes() const;          // of which codecs and kernel tables (shared with empty_like copies)
    double bytes_per_token() const;      // bytes_used() per token held: tokens() - dropped_tokens() (0 when empty)
    size_t block_bytes() const;          // one block of block_tokens tokens, all KV heads
    double compressed_bytes_per_token() const;  // block_bytes() / block_tokens
    size_t fp16_bytes_per_token() const; // what an fp16 cache would need: 2 * kv_heads * head_dim * 2

    // Serialization: magic, version, config, little-endian payload, CRC32. load() rejects
    // truncated, corrupted or hostile bytes with std::invalid_argument.
    std::vector<uint8_t> save() const;
    static KVCache load(std::span<const uint8_t> bytes, const std::string& kernel = "");

    struct Impl;  // internal (lib/src/cache/impl.hpp)
    explicit KVCache(std::unique_ptr<Impl> impl);

private:
    static void attend_impl(std::span<const Impl* const> parts, std::span<const float> value_scales,
                            std::span<const float> queries, std::span<float> out, bool causal, float* stat_max,
                            float* stat_sum, std::span<float> logits, bool continue_stats, const AttendOptions& options);
    std::unique_ptr<Impl> impl_;
    friend class ModelKVCache;
    friend struct CacheInternals;  // tests of the storage layout (lib/src/cache/impl.hpp)
};

// The configuration of layer `layer` of a model's tqkv cache from a spec (tqkv formats only) and a
// calibration of the same shape: rates after the spec's layer overrides; with the calibration the
// channel means (when the spec centres) and the high channels of fractional rates, chosen by
// energy about the stored offset; without one, the high channels from `first_keys` /
// `first_values` ([n][kv_heads][head_dim], the layer's first append; required for fractional
// rates then); debias flags, window, scale and seed derive_seed(spec.seed, layer). base supplies
// what a spec does not say (block_tokens, max_tokens, norm, kernel, precision). Throws
// std::invalid_argument on a shape mismatch or a spec that is not a tqkv format.
CacheConfig layer_config(const CacheSpec& spec, const CacheShape& shape, int layer, const Calibration* calibration,
                         const CacheConfig& base = {}, std::span<const float> first_keys = {},
                         std::span<const float> first_values = {});

// The rates of an auto spec (CacheSpec::auto_bits) per layer. The calibration's sensitivities
// (KL, the expected ΔNLL, per unit of g = D / (1 - D) for each layer's keys and values, measured by a probe with the
// model: measure_sensitivity in tqkv/model.hpp) predict the loss of a plan as
//   Σ_l  s_key[l] g(D(kb_l)) + s_value[l] g(D(vb_l)),
// which is minimised over rates in {1.5, 2, 2.5, ..., 5, 6}, within one bit of the uniform rate the
// budget affords (the probes measure one layer at a time; far from uniform the additive model
// extrapolates), within the budget: codes and norms of
// every layer, plus the exact window counted at 16 bits over the model's context, averaged, at most
// auto_bits per coordinate. Solved by a Lagrange multiplier (each layer and side independently
// picks its best rate for a price per bit; bisection on the price), then greedy upgrades by loss
// saved per bit while the budget allows. Deterministic; microseconds. Throws std::invalid_argument
// without sensitivities or when even the lowest rates exceed the budget.
struct RatePlan {
    std::vector<CacheSpec::LayerRate> layers;  // one per layer, in order
    double bits_per_coord = 0;  // of the plan, as the budget counts it
    double predicted = 0;       // the minimised proxy (nats per token)
    std::string json() const;   // {"budget":..,"bits_per_coord":..,"predicted_dnll":..,"layers":[{"k":..,"v":..},..]}
    double budget = 0;
};
RatePlan plan_rates(const CacheSpec& spec, const CacheShape& shape, const Calibration& calibration);

// The caches of all layers of a model.
class ModelKVCache {
public:
    // L layers with one configuration; layer l uses seed derive_seed(cfg.seed, l).
    ModelKVCache(int layers, const CacheConfig& cfg);
    // From a spec and an optional calibration (layer_config() per layer). Without a calibration,
    // layers whose fractional rates need high channels are built at their first append.
    ModelKVCache(const CacheShape& shape, const CacheSpec& spec, const Calibration* calibration = nullptr,
                 const CacheConfig& base = {});
    int layers() const { return int(layers_.size()); }
    // Throws std::invalid_argument if the layer is not built yet (see above).
    KVCache& layer(int l);
    const KVCache& layer(int l) const;
    bool built(int l) const;
    size_t tokens(int layer) const;  // 0 for a layer not built yet
    void append(int layer, std::span<const float> keys, std::span<const float> values);
    void attend(int layer, std::span<const float> queries, std::span<float> out, bool causal = true,
                const AttendOptions& options = {}) const {
        this->layer(layer).attend(queries, out, causal, options);
    }
    void truncate(size_t n_tokens);
    void clear();
    // KVCache::set_attention_window of every layer, built or not.
    void set_attention_window(size_t window);
    void release_chunk_rows(int layer);  // KVCache::release_chunk_rows of one layer (built or not)
    size_t bytes_used() const;
    double format_bytes() const;  // KVCache::format_bytes of every layer
    std::vector<uint8_t> save() const;
    static ModelKVCache load(std::span<const uint8_t> bytes, const std::string& kernel = "");
    void set_precision(Precision p);  // of every layer, built or not (KVCache::set_precision)

private:
    ModelKVCache() = default;
    std::vector<std::optional<KVCache>> layers_;
    // Layers built at their first append (spec without calibration).
    std::optional<CacheSpec> spec_;
    CacheShape shape_;
    CacheConfig base_;
};

}  // namespace tqkv
