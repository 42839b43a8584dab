// The Llama forward pass: prefill in chunks and token-by-token decode, attention through an
// AttentionCache. All buffers are sized for max_chunk tokens when the runner is created.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "tqkv/codebook.hpp"
#include "tqkv/model.hpp"
#include "tqkv/threads.hpp"
#include "tqkv/tokenizer.hpp"

namespace tqkv {

struct LlamaRunner::Buffers {
    std::vector<float> x, h, q, k, v, att, o, gate, up, last;
    std::vector<float> inv_freq, cs, sn;  // RoPE: [d/2], [chunk][d/2]
};

LlamaRunner::LlamaRunner(const LlamaModel& model, AttentionCache& cache, int max_chunk)
    : model_(model), cache_(cache), max_chunk_(max_chunk), buf_(std::make_unique<Buffers>()) {
    const LlamaConfig& c = model.config();
    if (max_chunk < 1 || max_chunk > 65536) throw std::invalid_argument("LlamaRunner: max_chunk out of range [1, 65536]");
    const CacheShape s = cache.shape();
    if (s.layers != c.num_hidden_layers || s.heads != c.num_attention_heads || s.kv_heads != c.num_key_value_heads ||
        s.head_dim != c.head_dim)
        throw std::invalid_argument("LlamaRunner: the cache shape does not match the model");
    const size_t n = size_t(max_chunk), H = size_t(c.hidden_size), d = size_t(c.head_dim);
    Buffers& b = *buf_;
    b.x.resize(n * H);
    b.h.resize(n * H);
    b.o.resize(n * H);
    b.q.resize(n * c.num_attention_heads * d);
    b.att.resize(b.q.size());
    b.k.resize(n * c.num_key_value_heads * d);
    b.v.resize(b.k.size());
    b.gate.resize(n * size_t(c.intermediate_size));
    b.up.resize(b.gate.size());
    b.last.resize(size_t(c.vocab_size));
    b.inv_freq = c.rope_inv_freq();  // as HF, with rope scaling
    // Sliding-window models need a cache that drops what leaves the window from attention; with
    // one that cannot, forward() refuses to go past the window.
    window_ok_ = cache.set_attention_window(size_t(c.sliding_window));
    b.cs.resize(n * d / 2);
    b.sn.resize(n * d / 2);
}

LlamaRunner::~LlamaRunner() = default;

void LlamaRunner::reset() {
    cache_.clear();
    pos_ = 0;
}

namespace {

void add_bias(float* y, size_t n, const std::vector<float>& bias) {
    if (bias.empty()) return;
    const size_t m = bias.size();
    for (size_t t = 0; t < n; ++t)
        for (size_t j = 0; j < m; ++j) y[t * m + j] += bias[j];
}

double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void rmsnorm(const float* x, const float* w, size_t n, size_t H, double eps, float* out) {
    for (size_t t = 0; t < n; ++t) {
        const float* xr = x + t * H;
        double ss = 0;
        for (size_t j = 0; j < H; ++j) ss += double(xr[j]) * xr[j];
        const float inv = float(1.0 / std::sqrt(ss / double(H) + eps));
        for (size_t j = 0; j < H; ++j) out[t * H + j] = w[j] * (xr[j] * inv);
    }
}

// HF rotate_half RoPE on [n][heads][d] rows, angles cs/sn [n][d/2].
void rope(float* x, size_t n, int heads, int d, const float* cs, const float* sn) {
    const int h2 = d / 2;
    for (size_t t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h) {
            float* r = x + (t * heads + h) * size_t(d);
            const float* c = cs + t * h2;
            const float* s = sn + t * h2;
            for (int i = 0; i < h2; ++i) {
                const float a = r[i], b = r[i + h2];
                r[i] = a * c[i] - b * s[i];
                r[i + h2] = b * c[i] + a * s[i];
            }
        }
}

}  // namespace

void LlamaRunner::forward(const int32_t* tokens, size_t n, float* logits, bool all_logits) {
    begin_step(tokens, n);
    for (int l = 0; l < model_.config().num_hidden_layers; ++l) run_layer(l, n);
    end_step(n, logits, all_logits);
}

float* LlamaRunner::residual() { return buf_->x.data(); }

void LlamaRunner::begin_step(const int32_t* tokens, size_t n) {
    const LlamaConfig& c = model_.config();
    Buffers& b = *buf_;
    const size_t H = size_t(c.hidden_size), d = size_t(c.head_dim), V = size_t(c.vocab_size);
    check_window(n);
    for (size_t t = 0; t < n; ++t) {
        if (tokens[t] < 0 || size_t(tokens[t]) >= V)
            throw std::invalid_argument("LlamaRunner: token " + std::to_string(tokens[t]) + " outside the vocabulary");
        std::memcpy(&b.x[t * H], &model_.embedding()[size_t(tokens[t]) * H], H * sizeof(float));
        const float p = float(pos_ + t);
        for (size_t i = 0; i < d / 2; ++i) {
            const float ang = p * b.inv_freq[i];
            b.cs[t * d / 2 + i] = float(std::cos(double(ang)));
            b.sn[t * d / 2 + i] = float(std::sin(double(ang)));
        }
    }
    if (threads < 1 || threads > kMaxThreads)
        throw std::invalid_argument("LlamaRunner: threads " + std::to_string(threads) + " out of range [1, " +
                                    std::to_string(kMaxThreads) + "]");
    if (cache_.attend_options().threads != threads) {  // attention on the runner's threads too
        AttendOptions o = cache_.attend_options();
        o.threads = threads;
        cache_.set_attend_options(o);
    }
}

void LlamaRunner::run_layer(int l, size_t n) {
    const LlamaConfig& c = model_.config();
    Buffers& b = *buf_;
    const size_t H = size_t(c.hidden_size), d = size_t(c.head_dim), I = size_t(c.intermediate_size);
    const int NH = c.num_attention_heads, KH = c.num_key_value_heads;
    const size_t QD = size_t(NH) * d, KD = size_t(KH) * d;
    {
        const LlamaLayer& L = model_.layer(l);
        rmsnorm(b.x.data(), L.attn_norm.data(), n, H, c.rms_norm_eps, b.h.data());
        matmul(b.h.data(), n, L.wq, b.q.data(), threads);
        matmul(b.h.data(), n, L.wk, b.k.data(), threads);
        matmul(b.h.data(), n, L.wv, b.v.data(), threads);
        add_bias(b.q.data(), n, L.bq);
        add_bias(b.k.data(), n, L.bk);
        add_bias(b.v.data(), n, L.bv);
        rope(b.q.data(), n, NH, int(d), b.cs.data(), b.sn.data());
        rope(b.k.data(), n, KH, int(d), b.cs.data(), b.sn.data());
        if (observer) observer(l, n, b.q.data(), b.k.data(), b.v.data());
        if (sequential_attention) {
            for (size_t t = 0; t < n; ++t) {
                cache_.append(l, std::span(&b.k[t * KD], KD), std::span(&b.v[t * KD], KD));
                cache_.attend(l, std::span(&b.q[t * QD], QD), std::span(&b.att[t * QD], QD));
            }
        } else {
            cache_.append(l, std::span(b.k.data(), n * KD), std::span(b.v.data(), n * KD));
            cache_.attend(l, std::span(b.q.data(), n * QD), std::span(b.att.data(), n * QD));
        }
        matmul(b.att.data(), n, L.wo, b.o.data(), threads);
        add_bias(b.o.data(), n, L.bo);
        for (size_t i = 0; i < n * H; ++i) b.x[i] += b.o[i];
        rmsnorm(b.x.data(), L.mlp_norm.data(), n, H, c.rms_norm_eps, b.h.data());
        matmul(b.h.data(), n, L.w_gate, b.gate.data(), threads);
        matmul(b.h.data(), n, L.w_up, b.up.data(), threads);
        add_bias(b.gate.data(), n, L.b_gate);
        add_bias(b.up.data(), n, L.b_up);
        for (size_t i = 0; i < n * I; ++i) {
            const float g = b.gate[i];
            b.gate[i] = g / (1.0f + std::exp(-g)) * b.up[i];
        }
        matmul(b.gate.data(), n, L.w_down, b.o.data(), threads);
        add_bias(b.o.data(), n, L.b_down);
        for (size_t i = 0; i < n * H; ++i) b.x[i] += b.o[i];
    }
}

void LlamaRunner::end_step(size_t n, float* logits, bool all_logits) {
    const LlamaConfig& c = model_.config();
    Buffers& b = *buf_;
    const size_t H = size_t(c.hidden_size);
    if (all_logits) {
        rmsnorm(b.x.data(), model_.final_norm().data(), n, H, c.rms_norm_eps, b.h.data());
        matmul(b.h.data(), n, model_.output_weight(), logits, threads);
    } else if (logits) {
        rmsnorm(&b.x[(n - 1) * H], model_.final_norm().data(), 1, H, c.rms_norm_eps, b.h.data());
        matmul(b.h.data(), 1, model_.output_weight(), logits, threads);
    }
    pos_ += n;
}

void LlamaRunner::check_window(size_t n) const {
    const int w = model_.config().sliding_window;
    if (w > 0 && !window_ok_ && pos_ + n > size_t(w))
        throw std::invalid_argument("LlamaRunner: the model attends over a sliding window of " + std::to_string(w) +
                                    " tokens and the cache \"" + cache_.name() +
                                    "\" cannot drop older tokens from attention yet; context " +
                                    std::to_string(pos_ + n) + " > " + std::to_string(w) + " is refused");
}

void LlamaRunner::prefill(std::span<const int32_t> tokens, std::span<float> logits) {
    const size_t V = size_t(model_.config().vocab_size), n = tokens.size();
    if (n == 0) throw std::invalid_argument("LlamaRunner::prefill: no tokens");
    check_window(n);
    const bool all = logits.size() == n * V;
    if (!all && logits.size() != V && !logits.empty())
        throw std::invalid_argument("LlamaRunner::prefill: logits must hold n * vocab or vocab floats (or none)");
    for (size_t t0 = 0; t0 < n; t0 += size_t(max_chunk_)) {
        const size_t m = std::min(size_t(max_chunk_), n - t0);
        const bool last = t0 + m == n;
        if (all) forward(&tokens[t0], m, &logits[t0 * V], true);
        else forward(&tokens[t0], m, last && !logits.empty() ? logits.data() : nullptr, false);
    }
}

void LlamaRunner::decode(int32_t token, std::span<float> logits) {
    if (logits.size() != size_t(model_.config().vocab_size))
        throw std::invalid_argument("LlamaRunner::decode: logits must hold vocab floats");
    forward(&token, 1, logits.data(), false);
}

// ---------------------------------------------------------------------------------------------

CacheShape CacheShape::of(const LlamaConfig& c) {
    return {c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, size_t(c.max_position_embeddings)};
}

std::vector<int32_t> config_eos_ids(const LlamaConfig& config) {
    std::vector<int32_t> ids;
    for (int id : config.eos_token_ids)
        if (id >= 0 && id < config.vocab_size) ids.push_back(int32_t(id));
    return ids;
}

std::vector<int32_t> end_of_sequence_ids(const LlamaConfig& config, const Tokenizer& tokenizer) {
    if (tokenizer.kind() == "bytes") return {};
    std::vector<int32_t> eos = config_eos_ids(config);
    if (const int32_t t = tokenizer.eos_id(); t >= 0 && t < config.vocab_size) eos.push_back(t);
    std::vector<int32_t> once;
    for (int32_t id : eos)
        if (std::find(once.begin(), once.end(), id) == once.end()) once.push_back(id);
    return once;
}

Calibration calibrate_kv(const LlamaModel& model, std::span<const int32_t> tokens, size_t ctx) {
    const CacheShape s = CacheShape::of(model.config());
    auto cache = make_exact_cache(s);
    LlamaRunner run(model, *cache);
    run.sequential_attention = false;  // the exact cache: chunks compute what token by token does
    Calibration cal(s.layers, s.kv_heads, s.head_dim);
    const size_t kv_row = size_t(s.kv_heads) * s.head_dim, q_row = size_t(s.heads) * s.head_dim;
    run.observer = [&](int l, size_t n, const float* q, const float* k, const float* v) {
        cal.add(l, {k, n * kv_row}, {v, n * kv_row});
        cal.add_queries(l, s.heads, {q, n * q_row});
    };
    ctx = std::max<size_t>(ctx, 1);
    for (size_t s0 = 0; s0 < tokens.size(); s0 += ctx) {
        run.reset();
        run.prefill(tokens.subspan(s0, std::min(ctx, tokens.size() - s0)), {});
    }
    return cal;
}

namespace {

// The exact cache for every layer but one, which a tqkv cache holds (the sensitivity probe).
class OneLayerCache final : public AttentionCache {
public:
    OneLayerCache(const CacheShape& s, int layer, std::unique_ptr<AttentionCache> coded)
        : AttentionCache(s), layer_(layer), exact_(make_exact_cache(s)), coded_(std::move(coded)) {}
    std::string name() const override { return "probe"; }
    void append(int l, std::span<const float> k, std::span<const float> v) override { at(l).append(l, k, v); }
    void attend(int l, std::span<const float> q, std::span<float> out) override { at(l).attend(l, q, out); }
    size_t tokens(int l) const override { return l == layer_ ? coded_->tokens(l) : exact_->tokens(l); }
    void clear() override { exact_->clear(), coded_->clear(); }
    double format_bytes() const override { return exact_->format_bytes(); }
    size_t memory_bytes() const override { return exact_->memory_bytes() + coded_->memory_bytes(); }

private:
    AttentionCache& at(int l) { return l == layer_ ? *coded_ : *exact_; }
    int layer_;
    std::unique_ptr<AttentionCache> exact_, coded_;
};

// log-softmax of n logits into out.
void log_softmax(const float* lg, size_t n, std::vector<double>& out) {
    out.resize(n);
    double mx = lg[0];
    for (size_t v = 1; v < n; ++v) mx = std::max(mx, double(lg[v]));
    double se = 0;
    for (size_t v = 0; v < n; ++v) se += std::exp(double(lg[v]) - mx);
    const double lse = mx + std::log(se);
    for (size_t v = 0; v < n; ++v) out[v] = double(lg[v]) - lse;
}

}  // namespace

void measure_sensitivity(const LlamaModel& model, Calibration& cal, std::span<const int32_t> tokens, size_t ctx, int threads) {
    const CacheShape s = CacheShape::of(model.config());
    if (tokens.size() < 2) throw std::invalid_argument("measure_sensitivity: needs at least 2 tokens");
    // What the probe measures, and why it is cheap (it was 2 * layers + 1 passes over up to 4
    // contexts of ΔNLL, minutes on a 2-core machine):
    //  - KL divergence of the next-token distribution from the exact one, not ΔNLL on the text.
    //    A coding error moves each token's NLL up or down at first order; only the mean change is
    //    second order, so ΔNLL is a small mean of large signed terms and needed thousands of
    //    tokens to rise above its noise. The KL is second order at every position and never
    //    negative (and its expectation under the model is the expected ΔNLL): a short text gives
    //    a stable estimate.
    //  - So one segment of at most kProbeTokens tokens (and at most ctx), whatever the text given.
    //  - The exact distributions are kept as each position's kTop most likely tokens plus the
    //    rest's mass (the KL of those coarsened distributions, a lower bound that misses only the
    //    tail), so the memory is kProbeTokens * kTop whatever the vocabulary.
    //  - A probe of layer l has layers 0..l-1 exact: it starts at layer l from the residual stream
    //    the exact pass recorded there (the same floats a full pass computes), so the probes cost
    //    layers * (layers + 1) layer-passes instead of 2 * layers^2.
    constexpr size_t kProbeTokens = 512, kTop = 64, kChunk = 128;
    tokens = tokens.first(std::min({tokens.size(), std::max<size_t>(ctx, 2), kProbeTokens}));
    const size_t V = size_t(model.config().vocab_size), k = std::min(kTop, V), n = tokens.size();
    const size_t H = size_t(model.config().hidden_size);
    std::vector<float> resid(size_t(s.layers) * n * H);  // [layer][token][hidden], entering the layer
    // Chunked prefill from position 0 over `cache`, layers first.. (the stream entering `first` from
    // resid; record: the exact pass, which fills resid); every position's logits to on_logits.
    auto run = [&](AttentionCache& cache, int first, bool record, int thr, auto&& on_logits) {
        LlamaRunner r(model, cache, int(kChunk));
        r.sequential_attention = false;
        r.threads = thr;
        cache.reserve(n);
        std::vector<float> logits(kChunk * V);
        for (size_t c0 = 0; c0 < n; c0 += kChunk) {
            const size_t m = std::min(kChunk, n - c0);
            r.begin_step(&tokens[c0], m);
            if (!record) std::memcpy(r.residual(), &resid[(size_t(first) * n + c0) * H], m * H * sizeof(float));
            for (int l = first; l < s.layers; ++l) {
                if (record) std::memcpy(&resid[(size_t(l) * n + c0) * H], r.residual(), m * H * sizeof(float));
                r.run_layer(l, m);
            }
            r.end_step(m, logits.data(), true);
            for (size_t i = 0; i < m; ++i) on_logits(c0 + i, &logits[i * V]);
        }
    };
    std::vector<int32_t> top_id(n * k);
    std::vector<double> top_lp(n * k), rest(n);  // log-probabilities; the rest's probability
    {
        auto exact = make_exact_cache(s);
        std::vector<double> lp;
        std::vector<int32_t> idx(V);
        run(*exact, 0, true, threads, [&](size_t p, const float* lg) {
            log_softmax(lg, V, lp);
            std::iota(idx.begin(), idx.end(), 0);
            std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(),
                              [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)] || (lp[size_t(a)] == lp[size_t(b)] && a < b); });
            double mass = 0;
            for (size_t j = 0; j < k; ++j) {
                top_id[p * k + j] = idx[j];
                top_lp[p * k + j] = lp[size_t(idx[j])];
                mass += std::exp(lp[size_t(idx[j])]);
            }
            rest[p] = std::max(0.0, 1.0 - mass);
        });
    }
    // Mean KL(exact || probe) over the positions, of the coarsened distributions.
    auto mean_kl = [&](AttentionCache& cache, int layer) {
        double total = 0;
        std::vector<double> lq;
        run(cache, layer, false, 1, [&](size_t p, const float* lg) {
            log_softmax(lg, V, lq);
            double kl = 0, mass = 0;
            for (size_t j = 0; j < k; ++j) {
                const double lpj = top_lp[p * k + j], lqj = lq[size_t(top_id[p * k + j])];
                kl += std::exp(lpj) * (lpj - lqj);
                mass += std::exp(lqj);
            }
            const double q_rest = std::max(1e-300, 1.0 - mass);
            if (rest[p] > 0) kl += rest[p] * (std::log(rest[p]) - std::log(q_rest));
            total += kl;
        });
        return total / double(n);
    };
    const double g2 = [&] {
        const double D = mse_distortion(2, s.head_dim);
        return D / (1 - D);
    }();
    std::vector<double> dk(static_cast<size_t>(s.layers)), dv(static_cast<size_t>(s.layers));
    // The probes are independent (each its own cache and runner over the shared, read-only model):
    // spread over threads, each result stored by index, so any thread count gives the same values.
    parallel_for(size_t(2 * s.layers), threads, [&](size_t i) {
        const int l = int(i / 2), side = int(i % 2);
        OneLayerCache probe(s, l, make_cache(side == 0 ? "K2V8-w16" : "K8V2-w16", s, &cal));
        (side == 0 ? dk : dv)[size_t(l)] = std::max(0.0, mean_kl(probe, l));
    });
    for (auto* d : {&dk, &dv}) {
        double mean = 0;
        for (double x : *d) mean += x / double(d->size());
        for (double& x : *d) x = std::max(x, 0.1 * mean);
    }
    for (int l = 0; l < s.layers; ++l) cal.set_sensitivity(l, dk[size_t(l)] / g2, dv[size_t(l)] / g2);
}

NllResult evaluate_nll(const LlamaModel& model, AttentionCache& cache, std::span<const int32_t> tokens, size_t ctx,
                       bool sequential_attention, int max_chunk) {
    const size_t V = size_t(model.config().vocab_size);
    LlamaRunner run(model, cache, max_chunk);
    run.sequential_attention = sequential_attention;
    NllResult r;
    ctx = std::max<size_t>(ctx, 2);
    cache.reserve(std::min(ctx, tokens.size()));
    std::vector<float> logits(size_t(max_chunk) * V);
    double total = 0;
    size_t longest = 0;
    const double t0 = seconds_now();
    for (size_t s0 = 0; s0 + 1 < tokens.size(); s0 += ctx) {
        const size_t len = std::min(ctx, tokens.size() - s0);
        if (len < 2) break;
        run.reset();
        for (size_t c0 = 0; c0 < len; c0 += size_t(max_chunk)) {
            const size_t m = std::min(size_t(max_chunk), len - c0);
            run.prefill(tokens.subspan(s0 + c0, m), std::span(logits.data(), m * V));
            for (size_t i = 0; i < m; ++i) {
                const size_t p = c0 + i;  // position within the segment
                if (p + 1 >= len) break;
                const float* lg = &logits[i * V];
                const int32_t target = tokens[s0 + p + 1];
                float mx = lg[0];
                int32_t am = 0;
                for (size_t v = 1; v < V; ++v)
                    if (lg[v] > mx) mx = lg[v], am = int32_t(v);
                double se = 0;
                for (size_t v = 0; v < V; ++v) se += std::exp(double(lg[v]) - mx);
                const double nll = std::log(se) + mx - double(lg[size_t(target)]);
                total += nll;
                r.argmax.push_back(am);
                r.token_nll.push_back(float(nll));
                ++r.scored;
            }
        }
        if (len > longest) {
            longest = len;
            r.bits_per_coord = cache.bits_per_coord();
            r.bytes_per_token = cache.bytes_per_token();
            r.memory_bytes = cache.memory_bytes();
        }
    }
    r.seconds = seconds_now() - t0;
    r.nll = r.scored ? total / double(r.scored) : 0.0;
    return r;
}

}  // namespace tqkv
