// A small Llama runner: loads a Hugging Face checkpoint of the Llama family (Llama 1-3.x,
// TinyLlama, SmolLM, Mistral, Qwen2/2.5: config.json + model.safetensors or sharded safetensors)
// and runs prefill and token-by-token decode with its attention going through a swappable KV
// cache — the exact fp32 cache, the tqkv compressed cache (tqkv::KVCache, the product path) or
// emulations of the baseline formats (q8_0, q4_0 with and without llama.cpp's rotation, KIVI,
// TurboQuant+, fp16).
//
//   auto model = tqkv::LlamaModel::load("../shared/data/tq-ref-128");
//   auto cache = tqkv::make_cache("K4V3", tqkv::CacheShape::of(model.config()));
//   tqkv::LlamaRunner run(model, *cache);
//   std::vector<float> logits(model.config().vocab_size);
//   run.prefill(prompt_tokens, logits);        // logits of the last prompt token
//   run.decode(next_token, logits);            // one token; no allocation per call
//
// Architecture: RMSNorm, RoPE (rotate_half convention, theta and linear / llama3 scaling from
// config), grouped-query attention with optional q/k/v/o biases and Mistral's sliding window,
// SwiGLU MLP (optional biases), tied or untied embeddings. fp16 weight matrices stay fp16 in memory (a
// decode step streams every weight once, so half the bytes is most of its time) and are widened
// exactly to fp32 inside the matrix product; bf16 / fp32 ones are held as fp32. Matrix products use
// AVX-512 or AVX2+FMA+F16C when the CPU has them (plain loops otherwise). Keys and queries reach
// the cache after RoPE.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/cache.hpp"
#include "tqkv/calibration.hpp"
#include "tqkv/spec.hpp"

namespace tqkv {

class Tokenizer;  // tqkv/tokenizer.hpp

// ---------------------------------------------------------------------------------------------
// Checkpoint files

// RoPE frequency scaling (config "rope_scaling" in transformers 4.x, "rope_parameters" in 5.x),
// as transformers' modeling_rope_utils computes it: "default" (plain RoPE), "linear" (every
// inverse frequency divided by factor) or "llama3" (Llama 3.1: low frequencies divided by factor,
// high ones kept, a smooth ramp between). Other types are refused by name.
struct RopeScaling {
    std::string type = "default";
    double factor = 1.0;
    double low_freq_factor = 1.0, high_freq_factor = 4.0;     // llama3
    double original_max_position_embeddings = 8192;           // llama3
};

// The keys of config.json the runner needs, for the Llama family of Hugging Face checkpoints:
// model_type "llama" (Llama 1-3.x, TinyLlama, SmolLM), "mistral" and "qwen2" (Qwen2 / Qwen2.5).
// Both spellings are read: transformers 4.x (rope_theta + rope_scaling, torch_dtype) and 5.x
// (rope_parameters {rope_type, rope_theta, factor, ...}, dtype). parse() rejects missing or
// mistyped keys and inconsistent shapes with std::invalid_argument naming the key, and anything it
// does not implement (other model types, mixture of experts, latent attention, other activations,
// rope types, quantized weights, ...) with "unsupported: <field>", never a silently wrong model.
struct LlamaConfig {
    std::string model_type = "llama";  // "llama", "mistral" or "qwen2"
    int hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0, num_key_value_heads = 0;
    int head_dim = 0;  // config "head_dim", or hidden_size / num_attention_heads when absent
    int intermediate_size = 0, vocab_size = 0, max_position_embeddings = 0;
    double rope_theta = 10000.0, rms_norm_eps = 1e-6;
    RopeScaling rope_scaling;
    bool tie_word_embeddings = false;
    bool attention_bias = false;  // biases on q, k, v and o (Llama "attention_bias")
    bool qkv_bias = false;        // biases on q, k and v only (Qwen2, always)
    bool mlp_bias = false;        // biases on gate, up and down (Llama "mlp_bias")
    // Mistral's sliding-window attention: a query at position p sees only positions
    // p - sliding_window + 1 .. p (transformers: kv_idx > q_idx - sliding_window). 0 = no window.
    int sliding_window = 0;
    std::string dtype;            // torch_dtype / dtype as written ("" when absent); tensors carry their own
    int bos_token_id = -1;        // -1 = none given
    std::vector<int> eos_token_ids;
    bool byte_vocab() const { return vocab_size == 256; }  // token = byte, no tokenizer

    static LlamaConfig parse(std::string_view json_text);
    static LlamaConfig load(const std::string& path);
    void validate() const;
    // The head_dim / 2 RoPE inverse frequencies after scaling, in float32 as transformers
    // computes them (1 / theta^(2i/d), then the rope_scaling rule).
    std::vector<float> rope_inv_freq() const;
};

// A weight matrix [rows][cols] (HF layout [out][in]) in the checkpoint's precision: fp16 bits when
// the checkpoint is fp16 (every fp16 value is exactly a float, so the products are the same as with
// fp32 copies, at half the memory traffic), fp32 otherwise. Exactly one of the two is non-empty.
struct WeightMatrix {
    size_t rows = 0, cols = 0;
    std::vector<uint16_t> f16;
    std::vector<float> f32;

    bool is_f16() const { return !f16.empty(); }
    size_t size() const { return rows * cols; }
    size_t bytes() const { return f16.size() * 2 + f32.size() * 4; }
    float at(size_t r, size_t c) const;
    std::vector<float> to_float() const;
};

struct SafetensorInfo {
    std::string name, dtype;       // dtype "F32", "F16" or "BF16" (others are rejected at parse)
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;     // byte range within the data section
};

// A parsed safetensors file: 8-byte little-endian header length, JSON header, raw tensors.
// parse() checks the header length, the JSON, every dtype, shape and data range (in bounds,
// size = elements * dtype size, no overlaps) and throws std::invalid_argument naming the problem.
class Safetensors {
public:
    static Safetensors parse(std::vector<uint8_t> bytes, const std::string& what = "safetensors");
    static Safetensors load(const std::string& path);
    const std::vector<SafetensorInfo>& tensors() const { return tensors_; }
    const std::string& name() const { return what_; }  // what errors call the file (its path or name)
    const SafetensorInfo* find(const std::string& name) const;
    // The tensor converted to float32; throws if it is missing, its shape differs or it holds a
    // non-finite value.
    std::vector<float> to_float(const std::string& name, const std::vector<int64_t>& shape) const;
    // A 2-D tensor as a WeightMatrix: F16 tensors keep their fp16 bits, others become fp32.
    WeightMatrix to_matrix(const std::string& name, int64_t rows, int64_t cols) const;

private:
    // The tensor's entry; throws if it is missing or its shape differs.
    const SafetensorInfo& checked(const std::string& name, const std::vector<int64_t>& shape) const;
    std::vector<uint8_t> bytes_;
    size_t data_ = 0;
    std::string what_;
    std::vector<SafetensorInfo> tensors_;
};

// model.safetensors.index.json of a sharded checkpoint: {"metadata": {...}, "weight_map":
// {"tensor name": "file name", ...}}. parse() accepts plain file names only (no directories, at
// most 4096 files) and refuses a tensor listed twice, naming the problem.
struct SafetensorsIndex {
    std::vector<std::string> files;  // the distinct shard files, in order of first appearance
    std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> file, in document order

    static SafetensorsIndex parse(std::string_view json, const std::string& what = "model.safetensors.index.json");
    // Checks shards against the index (names[i] is the file shards[i] was read from): every file
    // of the index given exactly once and no other, every tensor the index names present in the
    // file it names. Throws std::invalid_argument naming the file or tensor. (Tensors in two shards
    // are refused by LlamaModel::from_parts.)
    void check(std::span<const Safetensors> shards, std::span<const std::string> names) const;
};

// ---------------------------------------------------------------------------------------------
// The model

struct LlamaLayer {
    std::vector<float> attn_norm, mlp_norm;   // [hidden]
    WeightMatrix wq, wk, wv, wo;              // [out][in] as in HF: q [heads*d][hidden], o [hidden][heads*d]
    WeightMatrix w_gate, w_up, w_down;        // [inter][hidden], [inter][hidden], [hidden][inter]
    // Biases [out] of the same projections; empty when the config has none.
    std::vector<float> bq, bk, bv, bo, b_gate, b_up, b_down;
};

class LlamaModel {
public:
    // config.json + model.safetensors of a directory, or the shards model.safetensors.index.json
    // lists (its weight_map names a file in the directory for every tensor).
    static LlamaModel load(const std::string& dir);
    // From parsed parts: every tensor must be present with the shape the config implies. With
    // several shards each tensor is looked up in all of them; a tensor name in two shards is an
    // error (any tensor, not only the ones the model reads).
    static LlamaModel from_parts(const LlamaConfig& cfg, const Safetensors& st);
    static LlamaModel from_parts(const LlamaConfig& cfg, std::span<const Safetensors> shards);

    const LlamaConfig& config() const { return cfg_; }
    size_t parameters() const;
    const std::vector<float>& embedding() const { return embed_; }   // [vocab][hidden], fp32 for lookup
    const WeightMatrix& output_weight() const { return output_; }    // the embedding again when tied
    bool tied() const { return cfg_.tie_word_embeddings; }
    size_t weight_bytes() const;                                      // what the weights hold in memory
    const std::vector<float>& final_norm() const { return norm_; }
    const LlamaLayer& layer(int l) const { return layers_.at(size_t(l)); }

private:
    LlamaConfig cfg_;
    std::vector<float> embed_, norm_;
    WeightMatrix output_;
    std::vector<LlamaLayer> layers_;
};

// ---------------------------------------------------------------------------------------------
// KV caches the runner can attend through

class AttentionCache {
public:
    virtual ~AttentionCache() = default;
    virtual std::string name() const = 0;
    const CacheShape& shape() const { return shape_; }
    // n new tokens of one layer: keys (after RoPE) and values [n][kv_heads][head_dim].
    virtual void append(int layer, std::span<const float> keys, std::span<const float> values) = 0;
    // Attention of the m most recent tokens' queries [m][heads][head_dim] (after RoPE), causal:
    // query i sees tokens 0 .. tokens(layer) - m + i. out has the same shape.
    virtual void attend(int layer, std::span<const float> queries, std::span<float> out) = 0;
    virtual size_t tokens(int layer) const = 0;
    virtual void clear() = 0;
    // Capacity hint: buffers for this many tokens are allocated now (no allocation later).
    virtual void reserve(size_t tokens) { (void)tokens; }
    // Storage the format needs for the tokens held (all layers, keys and values, every scale,
    // norm and exact token; exact/window tokens counted as fp16).
    virtual double format_bytes() const = 0;
    // Memory the implementation holds (buffers, tables, capacity).
    virtual size_t memory_bytes() const = 0;
    // Sliding-window attention (LlamaConfig::sliding_window): with window > 0 a query at position
    // p attends only to positions p - window + 1 .. p. A cache that implements it returns true;
    // the default refuses (false), and the runner then refuses to run a sliding-window model past
    // its window rather than attend to tokens the model never sees.
    virtual bool set_attention_window(size_t window) { return window == 0; }
    // How attend() runs (tqkv/cache.hpp AttendOptions): threads of the library's pool for the tqkv
    // cache and the dense caches' exact attention; skipped values for the tqkv cache.
    void set_attend_options(const AttendOptions& o) { attend_options_ = o; }
    const AttendOptions& attend_options() const { return attend_options_; }
    // The cache's contents as bytes, for LlamaRunner::save / load (e.g. restoring a chat after a
    // page reload). load_state() restores them into a cache of the same kind and configuration
    // (same spec, shape and calibration) whose every layer must then hold `tokens` tokens; the
    // restored cache behaves exactly as the saved one. Malformed bytes, bytes of another cache or
    // another token count throw std::invalid_argument and change nothing. The tqkv caches save
    // their ModelKVCache (codes and exact window, tqkv/cache.hpp: the bytes of the cache's own
    // size); the others (fp32, fp16, q8_0, q4_0, kivi, the emulated tqkv path) throw: re-prefill
    // their tokens instead.
    virtual std::vector<uint8_t> save_state() const;
    virtual void load_state(std::span<const uint8_t> bytes, size_t tokens);
    // Coordinates of the tokens held (keys and values, all layers): tokens(layer) * 2 * kv_heads *
    // head_dim summed over layers, less the tokens a sliding window dropped (the tqkv cache frees
    // them; tokens(layer) still counts them as positions). Budget caches (tqkv/budget.hpp) count
    // every position of their context here: their bits per coordinate are per context coordinate.
    virtual double held_coords() const;
    double bits_per_coord() const;   // format_bytes() * 8 / held_coords() (0 when empty)
    double bytes_per_token() const;  // format_bytes() per token held (held_coords() / (2 * layers * kv_heads * head_dim))
    double fp16_bytes() const { return 2.0 * held_coords(); }  // an fp16 cache of the tokens held
    double fp16_bytes_per_token() const { return 4.0 * shape_.layers * shape_.kv_heads * shape_.head_dim; }

protected:
    explicit AttentionCache(const CacheShape& s) : shape_(s) {}
    CacheShape shape_;
    AttendOptions attend_options_;
};

// The exact fp32 cache (the reference every configuration is measured against).
std::unique_ptr<AttentionCache> make_exact_cache(const CacheShape& shape);

// A cache from a spec (tqkv/spec.hpp: fp32, fp16, q8_0, q4_0, q4_0-rot, turbo3, kivi2, kivi4,
// K<b>V<b>[-opt...] or a preset name). The baselines are emulated (quantize-dequantize per token with the format's
// rules, exact attention over the result); tqkv specs are a tqkv::ModelKVCache (fused attention on
// the codes) with the calibration's centring and high channels (nullptr: plain TurboQuant, high
// channels of fractional rates from each layer's first append), or with sinks / `emu` the
// emulated tqkv path. Throws std::invalid_argument with the grammar on a bad spec.
std::unique_ptr<AttentionCache> make_cache(const CacheSpec& spec, const CacheShape& shape,
                                           const Calibration* calibration = nullptr);
std::unique_ptr<AttentionCache> make_cache(const std::string& spec, const CacheShape& shape,
                                           const Calibration* calibration = nullptr);

// ---------------------------------------------------------------------------------------------
// The runner

class LlamaRunner {
public:
    // max_chunk: tokens per forward step in prefill (buffers are sized for it once).
    LlamaRunner(const LlamaModel& model, AttentionCache& cache, int max_chunk = 128);
    ~LlamaRunner();
    LlamaRunner(const LlamaRunner&) = delete;
    LlamaRunner& operator=(const LlamaRunner&) = delete;

    // Runs tokens at positions position() .. position() + n - 1. logits: n * vocab floats (every
    // token's next-token logits) or vocab floats (the last token's only).
    void prefill(std::span<const int32_t> tokens, std::span<float> logits);
    // One token; logits: vocab floats.
    void decode(int32_t token, std::span<float> logits);
    size_t position() const { return pos_; }
    void reset();  // empties the cache, position 0

    // true (default): within a prefill chunk every token is appended and attended on its own —
    // exactly what token-by-token decode computes, so prefill and decode give the same logits for
    // every cache. false: the chunk is appended, then attended causally as one batch. The tqkv
    // cache (KVCache) keeps the exact rows of the chunk until the next append, so each query still
    // sees the window before its position exactly: the same logits as decode within float rounding.
    // Emulated formats that compress by position (kivi, the `emu` tqkv path) compress the chunk's
    // own tokens before its queries see them. The matrix products are batched over the chunk
    // either way; the attention kernels work one query at a time anyway.
    bool sequential_attention = true;
    // Threads of the library's pool (tqkv/threads.hpp) the matrix products and the cache's
    // attention (AttentionCache::set_attend_options) may use, 1..kMaxThreads: the same logits for
    // every count.
    int threads = 1;
    // Sees every layer's queries, keys (after RoPE) and values of each step: [n][heads|kv_heads][d].
    std::function<void(int layer, size_t n, const float* q, const float* k, const float* v)> observer;

    const LlamaModel& model() const { return model_; }
    AttentionCache& cache() { return cache_; }

    // The runner's state as bytes: "TQKVRUNR", version, the model's shape and vocabulary, the
    // position and the cache's state (AttentionCache::save_state), CRC-32. load() restores it into
    // a runner over the same model with a cache of the same spec and calibration: decode then
    // continues exactly as the saved runner would have (the model's identity beyond its shape is
    // the caller's to keep). Malformed bytes, another shape or another cache throw
    // std::invalid_argument and change nothing.
    std::vector<uint8_t> save() const;
    void load(std::span<const uint8_t> bytes);

private:
    // One step of n tokens: begin_step (embeddings into the residual stream, RoPE angles), each
    // layer, end_step (logits, position += n). The sensitivity probe runs the steps itself: it
    // starts a probe at its layer from the residual stream the exact pass recorded.
    friend void measure_sensitivity(const LlamaModel&, Calibration&, std::span<const int32_t>, size_t, int);
    void forward(const int32_t* tokens, size_t n, float* logits, bool all_logits);
    void begin_step(const int32_t* tokens, size_t n);
    void run_layer(int l, size_t n);
    void end_step(size_t n, float* logits, bool all_logits);
    float* residual();  // the residual stream of the step, [n][hidden]
    void check_window(size_t n) const;  // throws when n more tokens would pass a window the cache cannot honour
    const LlamaModel& model_;
    AttentionCache& cache_;
    size_t pos_ = 0;
    int max_chunk_;
    bool window_ok_ = true;  // the cache honours the model's sliding window (or there is none)
    struct Buffers;
    std::unique_ptr<Buffers> buf_;
};

// config.json's eos_token_id(s) inside the vocabulary, in order (as written, repeats kept).
std::vector<int32_t> config_eos_ids(const LlamaConfig& config);
// The ids that end generation: the config's eos_token_id(s) and the tokenizer's EOS, each once
// (what tqkv-run, the explorer and the C ABI / npm stop at), ids outside the vocabulary dropped. None
// for a byte tokenizer: every id is a byte of text.
std::vector<int32_t> end_of_sequence_ids(const LlamaConfig& config, const Tokenizer& tokenizer);

// A Calibration (keys, values and queries of every layer) from an exact-cache pass of the model
// over tokens, in segments of ctx tokens.
Calibration calibrate_kv(const LlamaModel& model, std::span<const int32_t> tokens, size_t ctx = 1024);

// Measures how the model's loss grows with coding errors of each layer's keys and of its values,
// into the calibration (Calibration::set_sensitivity; what auto rate specs allocate bits by): the
// mean KL divergence (nats per token) of the next-token distribution from the exact cache's, with
// only that layer's keys coded at 2 bits (values at 8, window 16), then only its values, each
// divided by g = D / (1 - D) of 2-bit codes. Over the first min(512, ctx) tokens of `tokens`
// (chunked prefill from position 0): one exact pass recording the residual stream entering each
// layer, then each probe from its own layer on — layers * (layers + 1) layer-passes of that
// length, so the cost grows as layers^2 x tokens and not with the text given (tq-ref-128, 6
// layers: ~5 s of CPU; tq-bpe-64, 10 layers: ~12 s).
// Pass calibration text, never evaluated text. A layer below a tenth of its side's mean counts as
// that tenth, so no layer is starved. The exact distributions are kept as each position's 64 most
// likely tokens plus the rest's mass (memory independent of the vocabulary).
// The 2 * layers probes run on up to `threads` threads (results identical for any count).
void measure_sensitivity(const LlamaModel& model, Calibration& calibration, std::span<const int32_t> tokens,
                         size_t ctx = 1024, int threads = 1);

// Mean negative log-likelihood (nats per token) of tokens[1..] given the prefix, in segments of
// ctx tokens (each with an empty cache). Optionally the argmax prediction of every scored
// position and the per-position NLL.
struct NllResult {
    double nll = 0;
    size_t scored = 0;
    double seconds = 0;
    // The cache at the end of the longest segment (the first one of ctx tokens).
    double bits_per_coord = 0, bytes_per_token = 0;
    size_t memory_bytes = 0;
    std::vector<int32_t> argmax;
    std::vector<float> token_nll;
};
NllResult evaluate_nll(const LlamaModel& model, AttentionCache& cache, std::span<const int32_t> tokens,
                       size_t ctx, bool sequential_attention, int max_chunk = 128);

// Matrix product used by the runner: Y[n][out] = X[n][in] * W[out][in]^T (AVX-512, AVX2+FMA or
// plain loops, picked at run time; TQKV_KERNEL=scalar forces the plain loops).
void matmul_f32(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y);
// The same with W[out][in] as fp16 bits (finite values), widened exactly: bit-identical to
// matmul_f32 over the widened weights.
void matmul_f16(const float* X, size_t n, size_t in, const uint16_t* W, size_t out, float* Y);
// Y[n][W.rows] = X[n][W.cols] * W^T in W's precision.
// threads > 1: output rows split over the library's pool (tqkv/threads.hpp); the same bits.
void matmul(const float* X, size_t n, const WeightMatrix& W, float* Y, int threads = 1);
const char* matmul_kernel();

}  // namespace tqkv
