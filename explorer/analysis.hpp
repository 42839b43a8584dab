// What the explorer computes, separate from how it draws it (no ImGui here): the methods it
// compares, one attention head compressed with a method, per-token errors, one query's
// attention, rotated-coordinate statistics, and the attend benchmark thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tqkv/baselines.hpp"
#include "tqkv/budget.hpp"
#include "tqkv/tqkv.hpp"

namespace ex {

// ---------------------------------------------------------------------------------------------
// Methods: the tqkv codecs and the formats they are compared against.

// Q4_0Rot / Q8_0Rot: llama.cpp's Hadamard rotation (what llama.cpp runs since ggml-org/llama.cpp#21038),
// *Rots with random signs; Turbo: TurboQuant+'s turbo2/3/4 (tqkv/baselines.hpp).
enum class Family { TqMse, TqProd, Qjl, Polar, Kivi, Turbo, Q4_0, Q4_0Rot, Q4_0Rots, Q8_0, Q8_0Rot, Q8_0Rots, Fp16 };
constexpr int kFamilies = 13;
const char* family_name(Family f);   // "tqkv-mse", "tqkv-prod", "qjl", "polar", "kivi", "turbo", "q4_0", "q4_0-rot", ...
const char* family_help(Family f);   // one line: what it stores
std::vector<double> bit_choices(Family f);
double default_bits(Family f);

struct MethodSpec {
    Family family = Family::TqMse;
    double bits = 4;
    bool operator==(const MethodSpec&) const = default;
    bool operator<(const MethodSpec& o) const { return std::tie(family, bits) < std::tie(o.family, o.bits); }
    std::string label() const;  // "tqkv-mse-4", "qjl (V mse-2)", "q4_0", ...
};

// The keys or the values of one attention head, [tokens][dim], in one format.
struct HeadCodes {
    std::unique_ptr<tqkv::BaselineFormat> format;  // scores() / weighted_sum() from the stored form
    std::vector<float> decoded;                    // tokens x dim
    size_t bytes = 0;                              // storage, everything included
    std::string desc;                              // e.g. "mse4, 4.125 bits/coord"
};

struct CompressedHead {
    MethodSpec method;
    int layer = 0, kv_head = 0;
    size_t tokens = 0;
    int dim = 0;
    HeadCodes k, v;
    double bits_per_coord() const { return 8.0 * double(k.bytes + v.bytes) / (2.0 * double(tokens) * dim); }
};

// Compresses the keys and values of (layer, kv_head). Throws std::exception (with a message for
// the UI) when the method does not support the dump's head dimension.
std::shared_ptr<const CompressedHead> compress_head(const tqkv::KvDump& dump, int layer, int kv_head, const MethodSpec& m);

// Memoized compress_head for one dump; errors are remembered too (and returned in *error).
class HeadCache {
public:
    std::shared_ptr<const CompressedHead> get(const tqkv::KvDump& dump, int layer, int kv_head, const MethodSpec& m,
                                              std::string* error);
    void clear();

private:
    using Key = std::tuple<int, int, MethodSpec>;
    std::map<Key, std::shared_ptr<const CompressedHead>> heads_;
    std::map<Key, std::string> errors_;
};

// ---------------------------------------------------------------------------------------------
// Per-token error of a reconstruction.

struct TokenErrors {
    std::vector<double> rel;   // ||x - x̂|| / ||x||
    std::vector<double> cos;   // cosine(x, x̂)
    std::vector<double> norm;  // ||x||
    double mean_rel = 0, mean_cos = 0;
    double rel_mse = 0;        // sum ||x - x̂||^2 / sum ||x||^2 (the report's "key mse")
};
TokenErrors token_errors(const float* x, const float* xhat, size_t tokens, int dim);

// ---------------------------------------------------------------------------------------------
// One query's attention: exact (fp32 keys and values) against a compressed head.

struct AttentionResult {
    size_t visible = 0;                           // tokens 0..pos
    std::vector<double> exact_logit, approx_logit;  // q·k/sqrt(d), per visible token
    std::vector<double> exact_w, approx_w;          // softmax weights
    double out_cos = 0;                            // cosine of the attention outputs
    double out_rel = 0;                            // ||o - ô|| / ||o||
    double logit_rmse = 0, logit_corr = 0;
    double weight_tv = 0;                          // total variation distance of the weights
    double top[3] = {0, 0, 0};                     // top-1/5/10 overlap (fraction)
    std::vector<int> top_exact;                    // the 10 heaviest tokens (exact), heaviest first
};
AttentionResult attend_one(const tqkv::KvDump& dump, int layer, int head, size_t pos, const CompressedHead& c);

// ---------------------------------------------------------------------------------------------
// Rotations.

enum class InputKind { Gaussian, OneHot, Outliers, RealKeys };
const char* input_name(InputKind k);

// The question the rotation panel answers: for one input x, over the random choice of R (many
// seeds), are the coordinates of R x / ||x|| distributed as the exact density f? (The same
// measurement as tests/test_rotation.cpp.) Pooling many *different* inputs under one R would
// not do: inputs that share a direction (keys with a constant outlier offset) give strongly
// correlated coordinates, and the KS critical value assumes independent samples.
struct RotationQuery {
    int dim = 128;
    tqkv::RotationKind kind = tqkv::RotationKind::Hadamard;
    int rounds = 3;
    InputKind input = InputKind::OneHot;
    int index = 37;              // which input: one-hot coordinate, Gaussian draw, key token
    int seeds = 64;              // independent rotations pooled
    int layer = 0, kv_head = 0;  // RealKeys
    bool operator==(const RotationQuery&) const = default;
};

struct RotationResult {
    std::vector<double> before, after;  // x / ||x|| and R x / ||x|| (first seed)
    std::vector<double> pooled;         // R_s x / ||x|| over all seeds, sorted
    double ks = 0;                      // Kolmogorov–Smirnov distance of pooled to the exact density
    double ks_crit = 0;                 // 99.9% critical value for that many independent samples
};
// One input vector (not normalized). RealKeys: the key of token `index` of (layer, kv_head).
std::vector<float> make_input(InputKind kind, int dim, int index, const tqkv::KvDump* dump, int layer, int kv_head);
RotationResult analyze_rotation(const RotationQuery& q, const tqkv::KvDump& dump);
// KS distance for rounds = 1..max_rounds (the query's other settings).
std::vector<double> ks_by_rounds(RotationQuery q, const tqkv::KvDump& dump, int max_rounds);
double ks_distance(const std::vector<double>& sorted, const tqkv::CoordinateDensity& f);

// The coordinate density of dimension d, built once per d (its tables take milliseconds to
// fill, too slow to rebuild every frame). Thread-safe; the reference stays valid.
const tqkv::CoordinateDensity& density(int dim);

// ---------------------------------------------------------------------------------------------
// Lloyd–Max iterations from a poor start.

enum class StartKind { WholeInterval, OneSide, Clustered };
const char* start_name(StartKind k);
std::vector<double> poor_start(const tqkv::CoordinateDensity& f, int bits, StartKind kind);

// ---------------------------------------------------------------------------------------------
// The attend benchmark on a background thread (the UI polls progress() and rows()).

struct BenchConfig {
    int heads = 4, kv_heads = 2, dim = 128;
    std::vector<size_t> tokens = {1024, 4096, 16384};
    std::vector<std::string> methods = {"fp32", "fp16", "tqkv-mse-2", "tqkv-mse-3", "tqkv-mse-4", "tqkv-prod-4"};
    double seconds = 0.15;  // timing budget per point
};
struct BenchRow {
    std::string method;
    size_t tokens = 0;
    double ns_per_query = 0;   // one query token, all heads, over all tokens (fastest batch)
    double bytes_per_token = 0;  // all KV heads, keys + values
    double cos_vs_fp32 = 1;
};

class Benchmark {
public:
    Benchmark() = default;
    ~Benchmark();
    Benchmark(const Benchmark&) = delete;
    Benchmark& operator=(const Benchmark&) = delete;

    void start(const BenchConfig& cfg);  // no-op while running
    void cancel();                        // asks the thread to stop; returns at once
    void wait();                          // joins the thread
    bool running() const { return running_; }
    float progress() const { return progress_; }
    std::string status() const;
    std::vector<BenchRow> rows() const;
    BenchConfig config() const;

private:
    void run(BenchConfig cfg);
    std::thread thread_;
    std::atomic<bool> running_{false}, cancel_{false};
    std::atomic<float> progress_{0};
    mutable std::mutex mutex_;
    std::vector<BenchRow> rows_;
    std::string status_ = "not run yet";
    BenchConfig cfg_;
};

// ---------------------------------------------------------------------------------------------
// A cache under a byte budget (tqkv/budget.hpp) fed the dump token by token, on a background
// thread: which tier each position ends up in, and what the cache spent.

enum class BudgetPolicy { Tiered, H2O, SnapKV, Streaming };
constexpr int kBudgetPolicies = 4;
const char* policy_spec(BudgetPolicy p);  // make_budget_cache spec: "tiered", "h2o", "snapkv", "streaming"
const char* policy_help(BudgetPolicy p);  // one line: what it keeps

struct TierQuery {
    BudgetPolicy policy = BudgetPolicy::Tiered;
    int budget_div = 6;  // budget = fp16 cache of the whole dump / budget_div
    int data_gen = -1;
    bool operator==(const TierQuery&) const = default;
};

struct TierResult {
    TierQuery q;
    std::string name;                               // the cache's name (spec with its options)
    int layers = 0, kv_heads = 0;
    size_t tokens = 0;
    std::vector<std::vector<tqkv::HeldToken>> held;  // [layer * kv_heads + kv_head], after the last token
    double budget_bytes = 0, format_bytes = 0, peak_bytes = 0, fp16_bytes = 0;  // all layers and KV heads
    size_t evicted = 0;                             // all layers and KV heads
    bool synthetic_queries = false;                 // the dump had no queries: each token's key stood in
    double seconds = 0;                             // appends + attends, every layer
    std::string error;
};

// Appends every token of every layer, then attends it with its own query (the attend calls are
// what update the importance scores), as decode would; the cache is calibrated with the dump's
// own per-channel means (the centering a calibrated cache would apply).
TierResult simulate_budget(const tqkv::KvDump& dump, const TierQuery& q, const std::atomic<bool>* cancel = nullptr,
                           std::atomic<float>* progress = nullptr);

// One simulation at a time on its own thread; start() cancels (and joins) the one under way.
class TierSimulation {
public:
    TierSimulation() = default;
    ~TierSimulation();
    TierSimulation(const TierSimulation&) = delete;
    TierSimulation& operator=(const TierSimulation&) = delete;

    void start(const TierQuery& q, const tqkv::KvDump& dump);  // dump: the data of q.data_gen
    void cancel();
    bool running() const { return running_; }
    float progress() const { return progress_; }
    TierQuery query() const;                          // of the last start()
    std::shared_ptr<const TierResult> result() const;  // the last finished run (null before)

private:
    std::thread thread_;
    std::atomic<bool> running_{false}, cancel_{false};
    std::atomic<float> progress_{0};
    mutable std::mutex mutex_;
    TierQuery query_;
    std::shared_ptr<const TierResult> result_;
    std::shared_ptr<const tqkv::KvDump> dump_;  // the thread's copy of the data
    int dump_gen_ = -1;
};

}  // namespace ex
