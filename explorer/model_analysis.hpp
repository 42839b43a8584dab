// What the Model panel computes (no ImGui here): a Hugging Face checkpoint run with two KV caches
// over the same text — every token's NLL under each, the per-layer rate plan of an auto spec, and
// greedy continuations of a prompt — on a background thread, because loading, calibrating and
// the auto presets' sensitivity probe take seconds.
//
// Everything goes through the library's one implementation: LlamaModel::load, Tokenizer::for_model,
// calibrate_kv / measure_sensitivity (what tqkv-run and tqkv-bench ppl call), make_cache,
// evaluate_nll, LlamaRunner, plan_rates.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tqkv/model.hpp"

namespace ex {

// What to compute. Equal queries give equal results: the UI compares the last one it started.
struct ModelQuery {
    std::string dir;                 // checkpoint directory (config.json + safetensors)
    std::string spec_a = "fp32", spec_b = "K3.5V2.5-w16";  // fixed: no probe before the first view
    std::string user_text;           // scored text; empty: the first eval_bytes of DIR/eval.txt
    int eval_bytes = 1024;
    std::string prompt;              // greedy continuations start here; empty: no continuations
    int continue_tokens = 64;
    std::string plan_spec = "auto-3.5";  // the auto spec whose per-layer plan is shown
    bool operator==(const ModelQuery&) const = default;
};

struct ModelResult {
    ModelQuery q;
    std::string error;  // non-empty: nothing below is valid (a load error, a bad spec, ...)

    // The checkpoint and how the caches were calibrated.
    std::string model_summary;   // "6 layers, 4/2 heads of d 128, vocabulary 256 (bytes), 19.0 M parameters"
    std::string calib_summary;   // which bytes calibrated the caches
    int layers = 0;
    double load_seconds = 0, calib_seconds = 0, sens_seconds = 0, run_seconds = 0;

    // The scored text: pieces[i] is the text of token i + 1 (the first token is not scored),
    // nll_a[i] / nll_b[i] its negative log-likelihood (nats) under cache A / B, argmax_a[i] /
    // argmax_b[i] the tokens they predicted there — NaN / -1 for the first token of each segment
    // of the model's context length (texts longer than it are scored in segments).
    std::vector<std::string> pieces;
    std::vector<float> nll_a, nll_b;
    std::vector<int32_t> argmax_a, argmax_b;
    double mean_a = 0, mean_b = 0;           // nats per token
    double bits_a = 0, bits_b = 0;           // bits per coordinate the caches held

    // The per-layer plan of q.plan_spec (needs the sensitivity probe); plan_error says why not.
    // plan_pending: published before the probe has run (the comparison of fixed caches first).
    bool plan_pending = false;
    std::optional<tqkv::RatePlan> plan;
    std::string plan_json, plan_error;
    std::vector<double> key_sens, value_sens;  // per layer, ΔNLL per unit of coding error

    // Greedy continuations of q.prompt: generated pieces under each cache, and the index of the
    // first token where they differ (-1: identical as far as both go).
    std::string prompt_text;                   // the prompt as the tokenizer reads it back
    std::vector<std::string> cont_a, cont_b;
    int first_divergence = -1;
};

// The index of the first position where a and b differ, or -1 when one is a prefix of the other.
int first_difference(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// One computation at a time on its own thread. start() while one runs remembers the query and
// starts it when the current one ends (the library's passes cannot be interrupted mid-way; the
// UI never waits for them). The loaded model, its calibration and sensitivities, and each cache's
// scores and continuations are kept between queries of the same directory.
class ModelWork {
public:
    ModelWork() = default;
    ~ModelWork();  // waits for the pass under way (a few seconds at most)
    ModelWork(const ModelWork&) = delete;
    ModelWork& operator=(const ModelWork&) = delete;

    void start(const ModelQuery& q);
    void poll();                       // call every frame: starts a queued query once idle
    bool busy() const;                 // running or queued
    std::string status() const;        // what the thread is doing now
    float progress() const { return progress_; }
    std::optional<ModelQuery> query() const;             // the last start()ed query
    std::shared_ptr<const ModelResult> result() const;   // the last finished one (null before)

private:
    struct Session;  // the loaded model, tokenizer, eval text, calibration (thread-owned)
    void launch(const ModelQuery& q);
    void run(ModelQuery q);
    void set_status(const std::string& s, float progress);
    void publish(const std::shared_ptr<const ModelResult>& r);

    std::thread thread_;
    std::atomic<bool> running_{false};
    std::atomic<float> progress_{0};
    mutable std::mutex mutex_;
    std::optional<ModelQuery> last_, queued_;
    std::string status_;
    std::shared_ptr<const ModelResult> result_;
    std::shared_ptr<Session> session_;  // touched only by the thread (start joins before launching)
};

}  // namespace ex
