// KV caches under a byte budget (tqkv/budget.hpp): the tiered cache (exact → tqkv tiers →
// eviction, importance from the per-token logits of KVCache::attend_stats, one online softmax) and
// the eviction baselines H2O, SnapKV and StreamingLLM (exact tokens only).
#include "tqkv/budget.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tqkv/codebook.hpp"
#include "tqkv/rng.hpp"
#include "model/channels.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv {

namespace {

using detail::high_count;
using detail::top_channels;

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv budget cache: " + m); }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_shape(const CacheShape& s) {
    if (s.layers < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.heads % s.kv_heads != 0)
        fail("bad cache shape");
}

double distortion(double bits, int d) { return mse_distortion(bits, d); }

// Exact attention statistics of r query heads (q [r][d]) over n tokens (K, V [n][d]); tokens
// whose position exceeds `limit` are masked. logits [r][n] (masked: -inf), m[r], l[r] and the
// unnormalized acc[r][d] as KVCache::attend_stats.
void exact_stats(const detail::AttentionKernels& ak, const float* q, int r, int d, float scale, const float* K,
                 const float* V, const int32_t* pos, size_t n, int64_t limit, float* logits, float* m, float* l, float* acc) {
    for (int h = 0; h < r; ++h) {
        const float* qh = q + size_t(h) * d;
        float* lg = logits + size_t(h) * n;
        float mx = kNegInf;
        for (size_t t = 0; t < n; ++t) {
            if (pos[t] > limit) {
                lg[t] = kNegInf;
                continue;
            }
            lg[t] = ak.dot_f32(qh, K + t * size_t(d), d) * scale;
            mx = std::max(mx, lg[t]);
        }
        float* a = acc + size_t(h) * d;
        std::fill(a, a + d, 0.0f);
        float sum = 0;
        if (mx != kNegInf)
            for (size_t t = 0; t < n; ++t) {
                if (lg[t] == kNegInf) continue;
                const float w = std::exp(lg[t] - mx);
                sum += w;
                ak.axpy_f32(w, V + t * size_t(d), a, d);
            }
        m[h] = mx;
        l[h] = sum;
    }
}

void validate_append(const CacheShape& s, int layer, std::span<const float> keys, std::span<const float> values) {
    const size_t row = size_t(s.kv_heads) * s.head_dim;
    if (layer < 0 || layer >= s.layers) fail("layer out of range");
    if (keys.empty() || keys.size() % row || values.size() != keys.size()) fail("append: bad key/value sizes");
    for (size_t i = 0; i < keys.size(); ++i)
        if (!std::isfinite(keys[i]) || !std::isfinite(values[i])) fail("append: non-finite key or value");
}

// The number of query tokens of an attend() call, after checking its sizes: at most the tokens
// of the layer's last append (the queries are those tokens).
size_t validate_attend(const CacheShape& s, int layer, std::span<const float> queries, std::span<float> out,
                       const std::vector<size_t>& last_chunk_of_layer) {
    const size_t qrow = size_t(s.heads) * s.head_dim;
    if (layer < 0 || layer >= s.layers) fail("attend: layer out of range");
    if (queries.empty() || queries.size() % qrow || out.size() != queries.size()) fail("attend: bad query sizes");
    const size_t m = queries.size() / qrow, last_chunk = last_chunk_of_layer[size_t(layer)];
    if (m > last_chunk)
        fail("attend: " + std::to_string(m) + " queries but the last append brought " + std::to_string(last_chunk) +
             " tokens (attend the tokens of the last append only)");
    return m;
}

// Positions p in [0, total) with p < sinks or p >= total - recent.
size_t protected_count(size_t total, size_t sinks, size_t recent) { return std::min(total, sinks + recent); }

// Importance of a token: the decayed mean of its attention weight relative to a uniform share
// (weight * visible tokens, averaged over the query heads of its KV head): score accumulates
// decay * score + relative weight per query, norm accumulates decay * norm + 1, importance =
// score / norm. Uniform attention gives 1 to every token whatever its age (a plain accumulated
// sum would favour old tokens); a token no query has seen yet counts as 1.
inline float importance(float score, float norm) { return norm > 0 ? score / norm : 1.0f; }

// a is demoted before b: lower importance, or (within 1e-4 relative) older.
inline bool demote_before(float ia, double pa, float ib, double pb) {
    const float tol = 1e-4f * std::max(std::abs(ia), std::abs(ib));
    if (ia < ib - tol) return true;
    if (ib < ia - tol) return false;
    return pa < pb;
}

}  // namespace

BudgetCache::BudgetCache(const CacheShape& s, size_t budget) : AttentionCache(s), budget_(budget) {
    check_shape(s);
    share_ = budget / (size_t(s.layers) * size_t(s.kv_heads));
}

void BudgetCache::note_bytes() { peak_ = std::max(peak_, format_bytes()); }

namespace {

// ---------------------------------------------------------------------------------------------
// The tiered cache

class TieredCache final : public BudgetCache {
public:
    TieredCache(const CacheShape& s, const TieredOptions& o, const Calibration* cal, std::string name)
        : BudgetCache(s, o.budget_bytes), o_(o), name_(std::move(name)) {
        d_ = s.head_dim;
        r_ = s.heads / s.kv_heads;
        kt_ = &detail::kernels_by_name(o.kernel.c_str());
        if (o.window < 0 || o.window > 65536) fail("window out of range [0, 65536]");
        if (o.sinks < 0 || o.sinks > 65536) fail("sinks out of range [0, 65536]");
        if (o.heavy < 0 || o.heavy > 65536) fail("heavy out of range [0, 65536]");
        if (o.segment_tokens < 1 || o.segment_tokens > 4096) fail("segment_tokens out of range [1, 4096]");
        if (o.last_tier_tokens < 1 || o.last_tier_tokens > 65536) fail("last_tier_tokens out of range [1, 65536]");
        if (!(o.decay > 0 && o.decay <= 1)) fail("decay must be in (0, 1]");
        if (o.tiers.size() > 8) fail("at most 8 quantized tiers");
        if (cal) {
            if (cal->layers() != s.layers || cal->kv_heads() != s.kv_heads || cal->head_dim() != s.head_dim)
                fail("calibration shape does not match the cache");
            if (!cal->complete()) fail("the calibration has layers without tokens");
            cal_ = *cal;
            has_cal_ = true;
        }
        if (protected_count(size_t(-1) / 2, size_t(o.sinks), size_t(std::max(o.window, 1))) * exact_bytes() > share_)
            fail("budget of " + std::to_string(budget_) + " bytes (" + std::to_string(share_) +
                 " per layer and KV head) cannot hold sinks + window = " + std::to_string(o.sinks + std::max(o.window, 1)) +
                 " exact tokens (" + std::to_string(exact_bytes()) + " bytes each)");
        const int KH = s.kv_heads, T = int(o.tiers.size());
        scale_ = float(1.0 / std::sqrt(double(d_)));
        // Per tier: bytes per token (one KV head, from a prototype cache) and the debias factors.
        for (int t = 0; t < T; ++t) {
            const TierRate& tr = o.tiers[size_t(t)];
            for (double b : {tr.key_bits, tr.value_bits})
                if (!(b >= 1 && b <= 8)) fail("tier bits must be in [1, 8]");
            CacheConfig c = base_config(t, 0, 0);
            if (int hc = high_count(tr.key_bits, d_)) c.key_high_channels = first_channels(hc);
            if (int hc = high_count(tr.value_bits, d_)) c.value_high_channels = first_channels(hc);
            KVCache proto(c);  // validates the rates
            tier_bpt_.push_back(proto.compressed_bytes_per_token());
            kdeb_.push_back(o.debias_keys ? 1.0 / (1.0 - distortion(tr.key_bits, d_)) : 1.0);
            vdeb_.push_back(o.debias_values ? 1.0 / (1.0 - distortion(tr.value_bits, d_)) : 1.0);
            dist_.push_back(0.5 * (distortion(tr.key_bits, d_) + distortion(tr.value_bits, d_)));
        }
        for (int t = 0; t < T; ++t) {
            const double before_b = t ? tier_bpt_[size_t(t) - 1] : double(exact_bytes());
            const double before_d = t ? dist_[size_t(t) - 1] : 0.0;
            if (!(tier_bpt_[size_t(t)] < before_b))
                fail("tier " + std::to_string(t + 1) + " does not take fewer bytes per token than the tier before it");
            cost_.push_back(std::max(0.0, dist_[size_t(t)] - before_d) / (before_b - tier_bpt_[size_t(t)]));
        }
        max_factor_ = 1;
        for (int t = 0; t < T; ++t) max_factor_ *= std::max(kdeb_[size_t(t)], vdeb_[size_t(t)]);
        // Last-tier bins: at most last_tier_tokens, and at most 1/8 of a share (eviction granularity).
        if (T > 0)
            bin_limit_ = std::max(size_t(o.segment_tokens),
                                  std::min(size_t(o.last_tier_tokens), size_t(double(share_) / (8.0 * tier_bpt_.back()))));
        // Means stored away (calibration, centering on).
        mk_.assign(size_t(s.layers) * KH * d_, 0.0f);
        mv_ = mk_;
        if (has_cal_ && o.center)
            for (int l = 0; l < s.layers; ++l)
                for (int h = 0; h < KH; ++h) {
                    const auto km = cal_.key_mean(l, h), vm = cal_.value_mean(l, h);
                    for (int j = 0; j < d_; ++j) {
                        const size_t i = (size_t(l) * KH + h) * d_ + j;
                        mk_[i] = float(km[size_t(j)]), mv_[i] = float(vm[size_t(j)]);
                    }
                }
        streams_.resize(size_t(s.layers) * KH);
        for (auto& st : streams_) {
            st.tiers.resize(size_t(T));
            st.proto.resize(size_t(T));
        }
        next_pos_.assign(size_t(s.layers), 0);
        last_chunk_.assign(size_t(s.layers), 0);
        appended_bytes_.assign(size_t(s.layers), 0.0);
        wM_.resize(size_t(r_));
        wL_.resize(size_t(r_));
#if !defined(__wasm__) || defined(__EMSCRIPTEN_PTHREADS__)
        if (o.background && !o.tiers.empty()) start_worker();
#endif
    }
    ~TieredCache() override { stop_worker(); }

    std::string name() const override { return name_; }
    size_t tokens(int layer) const override { return next_pos_.at(size_t(layer)); }
    size_t held_tokens(int layer, int kv_head) const override {
        wait_all();
        const Stream& st = stream(layer, kv_head);
        size_t n = st.n;
        for (const auto& tier : st.tiers)
            for (const auto& g : tier) n += g.pos.size();
        return n;
    }
    size_t evicted() const override {
        wait_all();
        return evicted_;
    }

    void clear() override {
        wait_all();
        std::fill(appended_bytes_.begin(), appended_bytes_.end(), 0.0);
        for (auto& st : streams_) {
            st.n = 0;
            for (size_t t = 0; t < st.tiers.size(); ++t) {
                for (auto& g : st.tiers[t]) release(st, int(t), std::move(g.cache));
                st.tiers[t].clear();
            }
        }
        std::fill(next_pos_.begin(), next_pos_.end(), 0);
        std::fill(last_chunk_.begin(), last_chunk_.end(), 0);
        evicted_ = 0;
    }

    double format_bytes() const override {
        wait_all();
        double b = 0;
        for (const auto& st : streams_) b += stream_bytes(st);
        return b;
    }
    size_t memory_bytes() const override {
        wait_all();
        size_t b = 0;
        for (const auto& st : streams_) {
            b += (st.k.capacity() + st.v.capacity()) * sizeof(uint16_t) +
                 (st.score.capacity() + st.norm.capacity()) * sizeof(float) + st.pos.capacity() * sizeof(int32_t);
            for (size_t t = 0; t < st.tiers.size(); ++t) {
                if (st.proto[t]) b += st.proto[t]->bytes_used();  // the tier's shared tables
                for (const auto& g : st.tiers[t])
                    b += g.cache->bytes_used() - g.cache->table_bytes() + g.pos.capacity() * sizeof(int32_t) +
                         (g.score.capacity() + g.norm.capacity()) * sizeof(float);
            }
        }
        return b;
    }

    void append(int layer, std::span<const float> keys, std::span<const float> values) override {
        validate_append(shape_, layer, keys, values);
        const int KH = shape_.kv_heads;
        const size_t row = size_t(KH) * d_, n = keys.size() / row;
        const size_t total = next_pos_[size_t(layer)] + n;
        const size_t recent = std::max(size_t(o_.window), n);
        if (protected_count(total, size_t(o_.sinks), recent) * exact_bytes() > share_)
            fail("append: the budget share of " + std::to_string(share_) + " bytes cannot hold sinks + max(window, chunk of " +
                 std::to_string(n) + ") exact tokens; append smaller chunks");
        // Every token may be encoded later (fp16 norms, after centering and the debias factors of
        // re-encoding): check now, so that a failing append changes nothing.
        if (!o_.tiers.empty())
            for (size_t i = 0; i < n; ++i)
                for (int h = 0; h < KH; ++h) {
                    const float* mk = &mk_[(size_t(layer) * KH + h) * d_];
                    const float* mv = &mv_[(size_t(layer) * KH + h) * d_];
                    double sk = 0, sv = 0;
                    for (int j = 0; j < d_; ++j) {
                        const double a = keys[(i * KH + h) * d_ + j] - mk[j], b = values[(i * KH + h) * d_ + j] - mv[j];
                        sk += a * a, sv += b * b;
                    }
                    if (std::sqrt(std::max(sk, sv)) * max_factor_ > 60000.0)
                        fail("append: a key or value norm is too large for fp16 norms (token " + std::to_string(i) + ")");
                }
        before_layer(layer);  // after the checks: a failing append leaves even pending work alone
        const size_t p0 = next_pos_[size_t(layer)];
        for (int h = 0; h < KH; ++h) {
            Stream& st = stream(layer, h);
            const float* mk = &mk_[(size_t(layer) * KH + h) * d_];
            const float* mv = &mv_[(size_t(layer) * KH + h) * d_];
            reserve_exact(st, st.n + n);
            for (size_t i = 0; i < n; ++i) {
                uint16_t* k = &st.k[(st.n + i) * d_];
                uint16_t* v = &st.v[(st.n + i) * d_];
                for (int j = 0; j < d_; ++j) {
                    k[j] = float_to_half(keys[(i * KH + h) * d_ + j] - mk[j]);
                    v[j] = float_to_half(values[(i * KH + h) * d_ + j] - mv[j]);
                }
                st.pos[st.n + i] = int32_t(p0 + i);
                st.score[st.n + i] = 0;
                st.norm[st.n + i] = 0;
            }
            st.n += n;
        }
        next_pos_[size_t(layer)] = total;
        last_chunk_[size_t(layer)] = n;
        // With the background worker there is usually nothing left to do here: it made room
        // for this chunk after the layer's last attend.
        double layer_bytes = 0;
        for (int h = 0; h < KH; ++h) {
            enforce(layer, h, double(share_), true);
            layer_bytes += stream_bytes(stream(layer, h));
        }
        // The peak from each layer's bytes after its own append (the worker only lowers them
        // later): the same number whatever the worker's timing.
        appended_bytes_[size_t(layer)] = layer_bytes;
        double total_bytes = 0;
        for (double b : appended_bytes_) total_bytes += b;
        peak_ = std::max(peak_, total_bytes);
    }

    void attend(int layer, std::span<const float> queries, std::span<float> out) override {
        const int KH = shape_.kv_heads, r = r_, d = d_;
        const size_t qrow = size_t(shape_.heads) * d;
        const size_t m = validate_attend(shape_, layer, queries, out, last_chunk_);
        before_layer(layer);
        const size_t P0 = next_pos_[size_t(layer)] - m;
        for (int h = 0; h < KH; ++h) {
            Stream& st = stream(layer, h);
            // The quantized tiers' segments, in tier order, each with its tier's value debias
            // factor: one KVCache::attend_stats call scores them all in one online softmax that
            // starts from the exact tier's statistics (each tier with its own query tables and bit
            // widths, segments of a tier sharing them).
            size_t held = st.n;
            tier_caches_.clear();
            tier_scales_.clear();
            for (size_t t = 0; t < st.tiers.size(); ++t)
                for (const auto& g : st.tiers[t]) {
                    if (g.pos.empty()) continue;
                    tier_caches_.push_back(g.cache.get());
                    tier_scales_.push_back(float(vdeb_[t]));
                    held += g.pos.size();
                }
            grow(pm_, r);
            grow(pl_, r);
            grow(pacc_, size_t(r) * d);
            grow(lg_, held * r);
            const float* mv = &mv_[(size_t(layer) * KH + h) * d];
            grow(xk_, st.n * d);
            grow(xv_, st.n * d);
            kt_->from_half(st.k.data(), st.n * d, xk_.data());
            kt_->from_half(st.v.data(), st.n * d, xv_.data());
            for (size_t i = 0; i < m; ++i) {
                const float* q = &queries[i * qrow + size_t(h) * r * d];
                float* o = &out[i * qrow + size_t(h) * r * d];
                // 1. The exact tier's statistics, then every quantized tier in the same softmax;
                //    logits kept [part tokens][r] in lg_ order (the exact tier, then each segment).
                exact_stats(detail::attention_for(*kt_), q, r, d, scale_, xk_.data(), xv_.data(), st.pos.data(), st.n,
                            int64_t(P0 + i), lg_.data(), pm_.data(), pl_.data(), pacc_.data());
                if (!tier_caches_.empty())
                    KVCache::attend_stats(tier_caches_, std::span(q, size_t(r) * d), std::span(pacc_.data(), size_t(r) * d),
                                          std::span(pm_.data(), size_t(r)), std::span(pl_.data(), size_t(r)),
                                          std::span(&lg_[st.n * r], (held - st.n) * r), tier_scales_, true, attend_options_);
                // 2. Normalize: out = acc / sum_exp, plus the mean stored away.
                for (int hh = 0; hh < r; ++hh) {
                    const float inv = 1.0f / pl_[hh];
                    float* oh = o + size_t(hh) * d;
                    const float* a = &pacc_[size_t(hh) * d];
                    for (int j = 0; j < d; ++j) oh[j] = a[j] * inv + mv[j];
                    wM_[hh] = pm_[hh];
                    wL_[hh] = pl_[hh];
                }
                // 3. Importance (see importance()): the weight relative to a uniform share over the
                //    visible tokens, averaged over the r query heads, into a decayed mean.
                const float decay = float(o_.decay);
                size_t visible = held - st.n;
                for (size_t t = 0; t < st.n; ++t) visible += size_t(int64_t(st.pos[t]) <= int64_t(P0 + i));
                const float rel = float(visible) / float(r);
                auto update = [&](const float* lg, size_t n_tok, float* score, float* norm) {  // lg: [r][n_tok]
                    for (size_t t = 0; t < n_tok; ++t) {
                        if (lg[t] == kNegInf) continue;  // masked (a later token of the chunk)
                        float w = 0;
                        for (int hh = 0; hh < r; ++hh) w += std::exp(lg[size_t(hh) * n_tok + t] - wM_[hh]) / wL_[hh];
                        score[t] = decay * score[t] + rel * w;
                        norm[t] = decay * norm[t] + 1.0f;
                    }
                };
                update(&lg_[0], st.n, st.score.data(), st.norm.data());
                size_t off = st.n * r;
                for (auto& tier : st.tiers)
                    for (auto& g : tier) {
                        const size_t ng = g.pos.size();
                        update(&lg_[off], ng, g.score.data(), g.norm.data());
                        off += ng * r;
                    }
            }
        }
        if (bg_) defer(layer);
    }

    std::vector<HeldToken> held(int layer, int kv_head) const override {
        wait_all();
        const Stream& st = stream(layer, kv_head);
        std::vector<HeldToken> out;
        for (size_t t = 0; t < st.n; ++t) out.push_back({st.pos[t], 0, importance(st.score[t], st.norm[t])});
        for (size_t t = 0; t < st.tiers.size(); ++t)
            for (const auto& g : st.tiers[t])
                for (size_t i = 0; i < g.pos.size(); ++i) out.push_back({g.pos[i], int(t) + 1, importance(g.score[i], g.norm[i])});
        return out;
    }

    void dequantized(int layer, int kv_head, std::vector<float>& keys, std::vector<float>& values) const override {
        wait_all();
        const Stream& st = stream(layer, kv_head);
        const int d = d_;
        const float* mk = &mk_[(size_t(layer) * shape_.kv_heads + kv_head) * d];
        const float* mv = &mv_[(size_t(layer) * shape_.kv_heads + kv_head) * d];
        keys.clear(), values.clear();
        auto add = [&](const float* k, const float* v, size_t n, double kf, double vf) {
            for (size_t t = 0; t < n; ++t)
                for (int j = 0; j < d; ++j) {
                    keys.push_back(float(k[t * d + j] * kf) + mk[j]);
                    values.push_back(float(v[t * d + j] * vf) + mv[j]);
                }
        };
        std::vector<float> ek(st.n * size_t(d)), ev(ek.size());
        for (size_t i = 0; i < ek.size(); ++i) ek[i] = half_to_float(st.k[i]), ev[i] = half_to_float(st.v[i]);
        add(ek.data(), ev.data(), st.n, 1.0, 1.0);
        for (size_t t = 0; t < st.tiers.size(); ++t)
            for (const auto& g : st.tiers[t]) {
                const auto k = g.cache->decode_keys(0), v = g.cache->decode_values(0);
                add(k.data(), v.data(), g.pos.size(), kdeb_[t], vdeb_[t]);
            }
    }

private:
    struct Segment {
        std::unique_ptr<KVCache> cache;  // heads = r, kv_heads = 1
        std::vector<int32_t> pos;
        std::vector<float> score, norm;
        float mean_importance() const {
            double s = 0;
            for (size_t i = 0; i < score.size(); ++i) s += importance(score[i], norm[i]);
            return score.empty() ? 0.0f : float(s / double(score.size()));
        }
        double mean_position() const {
            double s = 0;
            for (int32_t p : pos) s += p;
            return pos.empty() ? 0.0 : s / double(pos.size());
        }
    };
    struct Stream {
        // Exact tier: [n][d] (centered), unordered. Held at fp16, as the budget counts it; attend
        // widens the tier to fp32 once per call.
        std::vector<uint16_t> k, v;
        std::vector<float> score, norm;
        std::vector<int32_t> pos;
        size_t n = 0;
        std::vector<std::vector<Segment>> tiers;
        // Per tier: an empty cache whose codecs and tables all segments of the tier share (built
        // when the tier is first used).
        std::vector<std::unique_ptr<KVCache>> proto;
    };

    size_t exact_bytes() const { return size_t(4) * size_t(shape_.head_dim); }  // K + V at fp16, one KV head
    Stream& stream(int l, int h) { return streams_.at(size_t(l) * shape_.kv_heads + size_t(h)); }
    const Stream& stream(int l, int h) const {
        if (l < 0 || l >= shape_.layers || h < 0 || h >= shape_.kv_heads) fail("layer or KV head out of range");
        return streams_[size_t(l) * shape_.kv_heads + size_t(h)];
    }
    static void grow(std::vector<float>& v, size_t n) {
        if (v.size() < n) v.resize(n);
    }
    std::vector<int> first_channels(int n) const {
        std::vector<int> c(static_cast<size_t>(n));
        std::iota(c.begin(), c.end(), 0);
        return c;
    }
    double stream_bytes(const Stream& st) const {
        double b = double(st.n) * double(exact_bytes());
        for (size_t t = 0; t < st.tiers.size(); ++t)
            for (const auto& g : st.tiers[t]) b += double(g.pos.size()) * tier_bpt_[t];
        return b;
    }

    CacheConfig base_config(int t, int layer, int h) const {
        CacheConfig c;
        c.heads = r_;
        c.kv_heads = 1;
        c.head_dim = d_;
        c.key_bits = o_.tiers[size_t(t)].key_bits;
        c.value_bits = o_.tiers[size_t(t)].value_bits;
        c.block_tokens = 32;
        c.window = 0;
        // Exact arithmetic in the tiers: the tiered policy has no precision option yet, and its
        // merges across tiers are tested to the exact path's tolerance.
        c.precision = Precision::Exact;
        c.scale = float(kdeb_.size() > size_t(t) ? kdeb_[size_t(t)] / std::sqrt(double(d_)) : 0.0);
        c.seed = derive_seed(derive_seed(o_.seed, uint64_t(layer) * 4096 + uint64_t(h)), uint64_t(t) + 1);
        c.kernel = o_.kernel;
        return c;
    }

    // The codecs of tier t for a stream: high channels of fractional rates by energy after
    // centering (calibration statistics, or else the stream's exact tokens when first needed).
    const KVCache& tier_proto(Stream& st, int t, int layer, int h) {
        if (st.proto[size_t(t)]) return *st.proto[size_t(t)];
        CacheConfig c = base_config(t, layer, h);
        const int hk = high_count(c.key_bits, d_), hv = high_count(c.value_bits, d_);
        if ((hk || hv) && has_cal_) {
            // Energy about the stored offset of this stream's channels.
            const bool centred = o_.center;
            if (hk) c.key_high_channels = cal_.high_channels(layer, true, hk, centred, h);
            if (hv) c.value_high_channels = cal_.high_channels(layer, false, hv, centred, h);
        } else if (hk || hv) {
            std::vector<double> ke(size_t(d_), 0.0), ve(size_t(d_), 0.0);
            {
                for (size_t i = 0; i < st.n; ++i)
                    for (int j = 0; j < d_; ++j) {
                        const double kx = half_to_float(st.k[i * d_ + j]), vx = half_to_float(st.v[i * d_ + j]);
                        ke[size_t(j)] += kx * kx;
                        ve[size_t(j)] += vx * vx;
                    }
            }
            if (hk) c.key_high_channels = top_channels(ke, hk);
            if (hv) c.value_high_channels = top_channels(ve, hv);
        }
        st.proto[size_t(t)] = std::make_unique<KVCache>(c);
        return *st.proto[size_t(t)];
    }

    Segment new_segment(Stream& st, int t, int layer, int h) {
        Segment g;
        g.cache = std::make_unique<KVCache>(tier_proto(st, t, layer, h).empty_like());
        return g;
    }
    // Caches are not kept for reuse: an empty one costs a few hundred bytes (the codecs are the
    // tier prototype's), and building one is cheap next to encoding a segment.
    static void release(Stream&, int, std::unique_ptr<KVCache> c) { c.reset(); }

    void reserve_exact(Stream& st, size_t n) {
        if (st.pos.size() >= n) return;
        const size_t cap = std::max(n, st.pos.size() + st.pos.size() / 4 + 8);
        st.k.resize(cap * d_);
        st.v.resize(cap * d_);
        st.pos.resize(cap);
        st.score.resize(cap);
        st.norm.resize(cap);
    }
    // Every token starts exact, so the exact tier peaks early (at the whole share) and then
    // shrinks to sinks + window as tokens are demoted: give the peak's memory back.
    // With the growth of reserve_exact, the room after an append is at most 1.5 (1.25 n + 8).
    void shrink_exact(Stream& st) {
        const size_t keep = st.n + st.n / 4 + 8;
        if (2 * st.pos.size() <= 3 * keep) return;
        auto shrink = [](auto& v, size_t n) {
            v.resize(n);
            v.shrink_to_fit();
        };
        shrink(st.k, keep * d_);
        shrink(st.v, keep * d_);
        shrink(st.pos, keep);
        shrink(st.score, keep);
        shrink(st.norm, keep);
    }
    void remove_exact(Stream& st, size_t i) {  // swap with the last
        const size_t last = st.n - 1;
        if (i != last) {
            std::memcpy(&st.k[i * d_], &st.k[last * d_], d_ * sizeof(uint16_t));
            std::memcpy(&st.v[i * d_], &st.v[last * d_], d_ * sizeof(uint16_t));
            st.pos[i] = st.pos[last];
            st.score[i] = st.score[last];
            st.norm[i] = st.norm[last];
        }
        st.n = last;
    }

    // Demotion steps. Among the moves that keep the token (exact -> tier 1, tier t -> t+1) the
    // cheapest: importance x (distortion after - before) / bytes saved, with a tier's distortion
    // D = (D_key + D_value) / 2 (E||u - û||^2 of unit vectors) and 0 for exact tokens. Under
    // uniform importance this is a cascade (exact -> tier 1 before tier 1 -> tier 2); an
    // important segment keeps its bits while less important ones go down. Eviction (lowest
    // importance segment of the last tier) only when no such move is left.
    static constexpr double kNone = std::numeric_limits<double>::infinity();

    // The unprotected exact token to demote next (lowest importance, then oldest); st.n if none
    // (or if only `heavy` are left and allow_heavy is false).
    size_t pick_exact(const Stream& st, int layer, bool allow_heavy) const {
        const size_t total = next_pos_[size_t(layer)];
        const size_t recent = std::max(size_t(o_.window), last_chunk_[size_t(layer)]);
        const int64_t first_recent = int64_t(total) - int64_t(recent);
        size_t best = st.n, count = 0;
        for (size_t i = 0; i < st.n; ++i) {
            if (st.pos[i] < o_.sinks || st.pos[i] >= first_recent) continue;
            ++count;
            if (best == st.n || demote_before(importance(st.score[i], st.norm[i]), st.pos[i],
                                              importance(st.score[best], st.norm[best]), st.pos[best]))
                best = i;
        }
        if (!allow_heavy && count <= size_t(o_.heavy)) return st.n;
        return best;
    }
    void demote_exact(Stream& st, size_t best, int layer, int h) {
        if (st.tiers.empty()) {
            remove_exact(st, best);
            ++evicted_;
            return;
        }
        auto& segs = st.tiers[0];
        if (segs.empty() || segs.back().pos.size() >= size_t(o_.segment_tokens)) segs.push_back(new_segment(st, 0, layer, h));
        Segment& g = segs.back();
        // Not the members attend widens into: the background worker demotes one layer while
        // the caller attends another.
        thread_local std::vector<float> k, v;
        grow(k, size_t(d_));
        grow(v, size_t(d_));
        kt_->from_half(&st.k[best * d_], size_t(d_), k.data());
        kt_->from_half(&st.v[best * d_], size_t(d_), v.data());
        g.cache->append(std::span(k.data(), size_t(d_)), std::span(v.data(), size_t(d_)));
        g.pos.push_back(st.pos[best]);
        g.score.push_back(st.score[best]);
        g.norm.push_back(st.norm[best]);
        remove_exact(st, best);
    }

    // The segment of tier t with the lowest mean importance (ties: the oldest); the open segment
    // of tier 1 only when allow_open. Returns the tier's size when there is none.
    size_t pick_segment(const Stream& st, size_t t, bool allow_open) const {
        const auto& segs = st.tiers[t];
        size_t best = segs.size();
        float bs = 0;
        double bp = 0;
        for (size_t i = 0; i < segs.size(); ++i) {
            const bool open = t == 0 && i + 1 == segs.size() && segs[i].pos.size() < size_t(o_.segment_tokens);
            if (open && !allow_open) continue;
            const float s = segs[i].mean_importance();
            const double p = segs[i].mean_position();
            if (best == segs.size() || demote_before(s, p, bs, bp)) best = i, bs = s, bp = p;
        }
        return best;
    }

    // Segment i of tier t to tier t + 1 (t + 1 < T), re-encoded from what attention saw (the
    // debiased decode).
    void demote_segment(Stream& st, size_t t, size_t i, int layer, int h) {
        Segment g = std::move(st.tiers[t][i]);
        st.tiers[t].erase(st.tiers[t].begin() + long(i));
        std::vector<float> k = g.cache->decode_keys(0), v = g.cache->decode_values(0);
        if (kdeb_[t] != 1.0)
            for (float& x : k) x = float(x * kdeb_[t]);
        if (vdeb_[t] != 1.0)
            for (float& x : v) x = float(x * vdeb_[t]);
        release(st, int(t), std::move(g.cache));
        // The last tier only waits for eviction: its segments are merged into bins of up to
        // last_tier_tokens tokens (fewer attend_stats calls, each with its own query tables).
        auto& next = st.tiers[t + 1];
        if (t + 2 == st.tiers.size() && !next.empty() && next.back().pos.size() + g.pos.size() <= bin_limit_) {
            Segment& bin = next.back();
            bin.cache->append(k, v);
            bin.pos.insert(bin.pos.end(), g.pos.begin(), g.pos.end());
            bin.score.insert(bin.score.end(), g.score.begin(), g.score.end());
            bin.norm.insert(bin.norm.end(), g.norm.begin(), g.norm.end());
            return;
        }
        Segment ng = new_segment(st, int(t) + 1, layer, h);
        ng.cache->append(k, v);
        ng.pos = std::move(g.pos);
        ng.score = std::move(g.score);
        ng.norm = std::move(g.norm);
        next.push_back(std::move(ng));
    }

    void evict_segment(Stream& st, size_t t, size_t i) {
        evicted_ += st.tiers[t][i].pos.size();
        release(st, int(t), std::move(st.tiers[t][i].cache));
        st.tiers[t].erase(st.tiers[t].begin() + long(i));
    }

    // One step (the cheapest one); false when nothing can be demoted.
    bool step(Stream& st, int layer, int h, bool last_resort) {
        const size_t T = st.tiers.size();
        double best = kNone;
        int kind = -1;  // 0 exact, 1 segment demotion, 2 eviction
        size_t bt = 0, bi = 0;
        const size_t e = pick_exact(st, layer, last_resort);
        if (e < st.n) {
            best = importance(st.score[e], st.norm[e]) * (T ? cost_[0] : 0.0);
            kind = 0, bi = e;
        }
        for (size_t t = 0; t + 1 < T; ++t) {
            const size_t i = pick_segment(st, t, last_resort);
            if (i == st.tiers[t].size()) continue;
            const double c = st.tiers[t][i].mean_importance() * cost_[t + 1];
            if (c < best) best = c, kind = 1, bt = t, bi = i;
        }
        // Eviction only when nothing can be demoted: importance before a question is asked does
        // not predict what the question needs (a needle nobody attended to yet), and a demoted
        // token can still be found, an evicted one cannot.
        if (kind < 0 && T > 0) {
            const size_t i = pick_segment(st, T - 1, last_resort);
            if (i < st.tiers[T - 1].size()) kind = 2, bt = T - 1, bi = i;
        }
        if (kind < 0) return false;
        if (kind == 0) demote_exact(st, bi, layer, h);
        else if (kind == 1) demote_segment(st, bt, bi, layer, h);
        else evict_segment(st, bt, bi);
        return true;
    }

    // Demotes until the stream holds at most `target` bytes. `must`: the budget itself (append
    // checked that it can be met); otherwise the worker's room for the next chunk, best effort.
    void enforce(int layer, int h, double target, bool must) {
        Stream& st = stream(layer, h);
        while (stream_bytes(st) > target) {
            if (step(st, layer, h, false)) continue;
            if (step(st, layer, h, true)) continue;  // the open segment of tier 1, heavy tokens
            if (!must) break;
            throw std::logic_error("tqkv budget cache: nothing left to demote (budget check missed a case)");
        }
        shrink_exact(st);
    }

    // Background demotion (TieredOptions::background). After attend(layer), a job demotes that
    // layer's streams to make room for a chunk like the last one. It is handed to a worker
    // thread when the caller moves on to another layer (decode: the job runs while the caller
    // computes the next layers); when the caller comes back to the same layer first (token by
    // token prefill), it runs the job itself at once, which costs no thread hand-off.
    // append(layer) and attend(layer) wait for that layer's job, the readers (format_bytes,
    // held, ...) for all jobs. Between attend(l) and the next append(l) only the job touches
    // layer l's streams, and what it does depends only on their state after attend(l): results
    // do not depend on who runs it or when.
    void make_room(int layer) {
        const double room = double(last_chunk_[size_t(layer)]) * double(exact_bytes());
        for (int h = 0; h < shape_.kv_heads; ++h) enforce(layer, h, double(share_) - room, false);
    }
    void defer(int layer) {
        if (deferred_ >= 0 && deferred_ != layer) submit(deferred_);
        deferred_ = layer;
    }
    // Before append(layer) / attend(layer): layer's job done, any other deferred job handed over.
    void before_layer(int layer) {
        if (deferred_ == layer) {
            deferred_ = -1;
            make_room(layer);
        } else if (deferred_ >= 0) {
            submit(deferred_);
            deferred_ = -1;
        }
        wait(layer);
    }
    struct Worker {
        std::thread thread;
        std::mutex mu;
        std::condition_variable cv;
        std::deque<int> queue;      // layers to work on
        std::vector<char> pending;  // per layer: queued or running
        std::exception_ptr error;   // from a job; rethrown by the next wait
        bool stop = false;
    };
    void start_worker() {
        bg_ = std::make_unique<Worker>();
        bg_->pending.assign(size_t(shape_.layers), 0);
        bg_->thread = std::thread([this] { work(); });
    }
    void stop_worker() {
        if (!bg_) return;
        {
            std::lock_guard<std::mutex> lock(bg_->mu);
            bg_->stop = true;
        }
        bg_->cv.notify_all();
        bg_->thread.join();
    }
    void submit(int layer) {
        {
            std::lock_guard<std::mutex> lock(bg_->mu);
            bg_->pending[size_t(layer)] = 1;
            bg_->queue.push_back(layer);
        }
        bg_->cv.notify_all();
    }
    void work() {
        Worker& w = *bg_;
        std::unique_lock<std::mutex> lock(w.mu);
        for (;;) {
            w.cv.wait(lock, [&] { return w.stop || !w.queue.empty(); });
            if (w.queue.empty()) return;  // stop, nothing left
            const int layer = w.queue.front();
            w.queue.pop_front();
            lock.unlock();
            std::exception_ptr error;
            try {
                make_room(layer);
            } catch (...) {
                error = std::current_exception();
            }
            lock.lock();
            if (error && !w.error) w.error = error;
            w.pending[size_t(layer)] = 0;
            w.cv.notify_all();
        }
    }
    // Waits until the worker is done with `layer` (every layer when layer < 0: the deferred job
    // too, run here).
    void wait(int layer) const {
        if (!bg_) return;
        if (layer < 0 && deferred_ >= 0) {
            const int l = deferred_;
            deferred_ = -1;
            const_cast<TieredCache*>(this)->make_room(l);
        }
        Worker& w = *bg_;
        std::unique_lock<std::mutex> lock(w.mu);
        w.cv.wait(lock, [&] {
            if (layer >= 0) return !w.pending[size_t(layer)];
            return std::none_of(w.pending.begin(), w.pending.end(), [](char p) { return p != 0; });
        });
        if (w.error) {
            std::exception_ptr e = w.error;
            w.error = nullptr;
            std::rethrow_exception(e);
        }
    }
    void wait_all() const { wait(-1); }

    TieredOptions o_;
    std::string name_;
    Calibration cal_;
    bool has_cal_ = false;
    int d_ = 0, r_ = 1;
    float scale_ = 1;
    std::vector<double> tier_bpt_, kdeb_, vdeb_;
    // Cost per unit of importance of each move: cost_[0] exact -> tier 1, cost_[t] tier t -> t+1;
    // dist_[t]: the distortion of tier t+1.
    std::vector<double> cost_, dist_;
    size_t bin_limit_ = 0;
    double max_factor_ = 1;  // the largest product of debias factors a re-encoded vector gets
    std::vector<float> mk_, mv_;
    std::vector<Stream> streams_;
    std::vector<size_t> next_pos_, last_chunk_;
    std::vector<double> appended_bytes_;  // per layer: format bytes right after its last append
    std::atomic<size_t> evicted_ = 0;     // the worker evicts too
    std::unique_ptr<Worker> bg_;          // null: demotion inside append only
    mutable int deferred_ = -1;           // the layer whose job waits for the caller to move on
    std::vector<float> pm_, pl_, pacc_, lg_, wM_, wL_;
    std::vector<const KVCache*> tier_caches_;
    std::vector<float> tier_scales_;  // the value debias factor of each of tier_caches_
    std::vector<float> xk_, xv_;  // the exact tier (or one token of it) widened to fp32
    const detail::KernelTable* kt_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Eviction baselines: exact tokens, a fixed number per (layer, KV head).

class EvictionCache final : public BudgetCache {
public:
    EvictionCache(const CacheShape& s, const EvictionOptions& o, std::string name)
        : BudgetCache(s, o.budget_bytes), o_(o), name_(std::move(name)) {
        d_ = s.head_dim;
        r_ = s.heads / s.kv_heads;
        kt_ = &detail::kernels_by_name("");
        capacity_ = share_ / (size_t(4) * size_t(d_));
        if (o.sinks < 0 || o.sinks > 65536) fail("sinks out of range");
        if (!(o.recent_fraction >= 0 && o.recent_fraction <= 1)) fail("recent_fraction must be in [0, 1]");
        if (o.observation < 1 || o.observation > 4096) fail("observation window out of range [1, 4096]");
        if (o.pool < 1 || o.pool % 2 == 0 || o.pool > 255) fail("pool kernel must be odd, 1..255");
        recent_ = o.policy == EvictionPolicy::H2O      ? size_t(std::floor(double(capacity_) * o.recent_fraction))
                  : o.policy == EvictionPolicy::SnapKV ? size_t(o.observation)
                                                       : 0;
        sinks_ = o.policy == EvictionPolicy::StreamingLLM ? size_t(o.sinks) : 0;
        if (capacity_ < std::max<size_t>(1, sinks_ + std::max<size_t>(recent_, 1)))
            fail("budget of " + std::to_string(budget_) + " bytes holds " + std::to_string(capacity_) +
                 " tokens per layer and KV head, fewer than the protected sinks + recent tokens");
        streams_.resize(size_t(s.layers) * s.kv_heads);
        next_pos_.assign(size_t(s.layers), 0);
        last_chunk_.assign(size_t(s.layers), 0);
        queries_.assign(size_t(s.layers), 0);
        mx_.resize(size_t(r_));
        l_.resize(size_t(r_));
    }

    std::string name() const override { return name_; }
    size_t tokens(int layer) const override { return next_pos_.at(size_t(layer)); }
    size_t held_tokens(int layer, int kv_head) const override { return stream(layer, kv_head).n; }
    size_t evicted() const override { return evicted_; }
    size_t capacity() const { return capacity_; }

    void clear() override {
        for (auto& st : streams_) st.n = 0;
        std::fill(next_pos_.begin(), next_pos_.end(), 0);
        std::fill(last_chunk_.begin(), last_chunk_.end(), 0);
        std::fill(queries_.begin(), queries_.end(), 0);
        evicted_ = 0;
        prefill_done_ = false;
    }
    double format_bytes() const override {
        double n = 0;
        for (const auto& st : streams_) n += double(st.n);
        return n * 4.0 * d_;
    }
    size_t memory_bytes() const override {
        size_t b = 0;
        for (const auto& st : streams_)
            b += (st.k.capacity() + st.v.capacity()) * sizeof(uint16_t) + (st.score.capacity() + st.ring.capacity()) * sizeof(float) +
                 st.pos.capacity() * sizeof(int32_t) + st.pinned.capacity();
        return b;
    }

    void append(int layer, std::span<const float> keys, std::span<const float> values) override {
        validate_append(shape_, layer, keys, values);
        const int KH = shape_.kv_heads;
        const size_t n = keys.size() / (size_t(KH) * d_);
        const size_t total = next_pos_[size_t(layer)] + n;
        if (!unbounded() && protected_count(total, sinks_, std::max(recent_, n)) > capacity_)
            fail("append: " + std::to_string(capacity_) + " tokens per layer and KV head cannot hold the protected sinks + " +
                 "max(recent, chunk of " + std::to_string(n) + ") tokens; append smaller chunks");
        const size_t p0 = next_pos_[size_t(layer)];
        const size_t ring = ring_width();
        for (int h = 0; h < KH; ++h) {
            Stream& st = stream(layer, h);
            reserve_rows(st, st.n + n);
            for (size_t i = 0; i < n; ++i) {
                const size_t s = st.n + i;
                for (int j = 0; j < d_; ++j) {
                    st.k[s * d_ + j] = float_to_half(keys[(i * KH + h) * d_ + j]);
                    st.v[s * d_ + j] = float_to_half(values[(i * KH + h) * d_ + j]);
                }
                st.pos[s] = int32_t(p0 + i);
                st.score[s] = 0;
                st.pinned[s] = 0;
                std::fill_n(&st.ring[s * ring], ring, 0.0f);
            }
            st.n += n;
        }
        next_pos_[size_t(layer)] = total;
        last_chunk_[size_t(layer)] = n;
        if (!unbounded())
            for (int h = 0; h < KH; ++h) {
                Stream& st = stream(layer, h);
                while (st.n > capacity_) evict_one(st, layer);
            }
        note_bytes();
    }

    void attend(int layer, std::span<const float> queries, std::span<float> out) override {
        const int KH = shape_.kv_heads, r = r_, d = d_;
        const size_t qrow = size_t(shape_.heads) * d;
        const size_t m = validate_attend(shape_, layer, queries, out, last_chunk_);
        const size_t P0 = next_pos_[size_t(layer)] - m;
        const float scale = float(1.0 / std::sqrt(double(d)));
        const size_t ring = ring_width();
        // The held tokens widened from fp16 once per call (attend never evicts).
        xk_.resize(size_t(KH)), xv_.resize(size_t(KH));
        for (int h = 0; h < KH; ++h) {
            const Stream& st = stream(layer, h);
            xk_[size_t(h)].resize(st.n * d), xv_[size_t(h)].resize(st.n * d);
            kt_->from_half(st.k.data(), st.n * d, xk_[size_t(h)].data());
            kt_->from_half(st.v.data(), st.n * d, xv_[size_t(h)].data());
        }
        for (size_t i = 0; i < m; ++i) {
            const size_t slot = queries_[size_t(layer)]++ % ring;
            for (int h = 0; h < KH; ++h) {
                Stream& st = stream(layer, h);
                if (lg_.size() < st.n * r) lg_.resize(st.n * r);
                float* mx = mx_.data();
                float* l = l_.data();
                const float* q = &queries[i * qrow + size_t(h) * r * d];
                float* o = &out[i * qrow + size_t(h) * r * d];
                exact_stats(detail::attention_for(*kt_), q, r, d, scale, xk_[size_t(h)].data(), xv_[size_t(h)].data(), st.pos.data(), st.n, int64_t(P0 + i),
                            lg_.data(), mx, l, o);
                for (int hh = 0; hh < r; ++hh)
                    for (int j = 0; j < d; ++j) o[size_t(hh) * d + j] /= l[hh];
                if (o_.policy == EvictionPolicy::StreamingLLM) continue;
                for (size_t t = 0; t < st.n; ++t) {
                    float w = 0;
                    for (int hh = 0; hh < r; ++hh) {
                        const float s = lg_[size_t(hh) * st.n + t];
                        if (s != kNegInf) w += std::exp(s - mx[hh]) / l[hh];
                    }
                    if (o_.policy == EvictionPolicy::H2O) {
                        st.score[t] += w;
                    } else {  // SnapKV: votes of the last `observation` queries, a ring per token
                        float& cell = st.ring[t * ring + slot];
                        st.score[t] += w - cell;
                        cell = w;
                    }
                }
            }
        }
    }

    void end_prefill() override {
        if (o_.policy != EvictionPolicy::SnapKV || !o_.prefill_unbounded || prefill_done_) return;
        prefill_done_ = true;
        for (int l = 0; l < shape_.layers; ++l)
            for (int h = 0; h < shape_.kv_heads; ++h) {
                Stream& st = stream(l, h);
                const size_t total = next_pos_[size_t(l)];
                const int64_t first_recent = int64_t(total) - int64_t(std::max(recent_, last_chunk_[size_t(l)]));
                // Select capacity - recent prompt tokens by pooled votes; the recent ones stay unpinned.
                const std::vector<float> pooled = pooled_votes(st);
                std::vector<size_t> cand;
                for (size_t i = 0; i < st.n; ++i)
                    if (st.pos[i] < first_recent) cand.push_back(i);
                const size_t recent_held = st.n - cand.size();
                const size_t keep = capacity_ > recent_held ? capacity_ - recent_held : 0;
                std::stable_sort(cand.begin(), cand.end(), [&](size_t a, size_t b) { return pooled[a] > pooled[b]; });
                std::vector<uint8_t> drop(st.n, 0);
                for (size_t c = 0; c < cand.size(); ++c) {
                    if (c < keep) st.pinned[cand[c]] = 1;
                    else drop[cand[c]] = 1;
                }
                for (size_t i = st.n; i-- > 0;)
                    if (drop[i]) remove(st, i), ++evicted_;
                while (st.n > capacity_) evict_one(st, l);
            }
        note_bytes();
    }

    std::vector<HeldToken> held(int layer, int kv_head) const override {
        const Stream& st = stream(layer, kv_head);
        std::vector<HeldToken> out;
        for (size_t t = 0; t < st.n; ++t) out.push_back({st.pos[t], 0, st.score[t]});
        return out;
    }
    void dequantized(int layer, int kv_head, std::vector<float>& keys, std::vector<float>& values) const override {
        const Stream& st = stream(layer, kv_head);
        keys.resize(st.n * d_), values.resize(st.n * d_);
        for (size_t i = 0; i < st.n * d_; ++i) keys[i] = half_to_float(st.k[i]), values[i] = half_to_float(st.v[i]);
    }

private:
    struct Stream {
        std::vector<uint16_t> k, v;     // held tokens at fp16 (as the budget counts them): [n][d]
        std::vector<float> score, ring;  // ring: [slot][observation] (SnapKV)
        std::vector<int32_t> pos;
        std::vector<uint8_t> pinned;  // SnapKV-prefill: selected at the end of prefill
        size_t n = 0;
    };
    bool unbounded() const {
        return o_.policy == EvictionPolicy::SnapKV && o_.prefill_unbounded && !prefill_done_;
    }
    size_t ring_width() const { return o_.policy == EvictionPolicy::SnapKV ? size_t(o_.observation) : 1; }
    Stream& stream(int l, int h) { return streams_.at(size_t(l) * shape_.kv_heads + size_t(h)); }
    const Stream& stream(int l, int h) const {
        if (l < 0 || l >= shape_.layers || h < 0 || h >= shape_.kv_heads) fail("layer or KV head out of range");
        return streams_[size_t(l) * shape_.kv_heads + size_t(h)];
    }
    void reserve_rows(Stream& st, size_t n) {
        if (st.pos.size() >= n) return;
        const size_t cap = std::max(n, st.pos.size() + st.pos.size() / 4 + 8);
        st.k.resize(cap * d_);
        st.v.resize(cap * d_);
        st.pos.resize(cap);
        st.score.resize(cap);
        st.pinned.resize(cap);
        st.ring.resize(cap * ring_width());
    }
    void remove(Stream& st, size_t i) {
        const size_t last = st.n - 1, w = ring_width();
        if (i != last) {
            std::memcpy(&st.k[i * d_], &st.k[last * d_], d_ * sizeof(uint16_t));
            std::memcpy(&st.v[i * d_], &st.v[last * d_], d_ * sizeof(uint16_t));
            st.pos[i] = st.pos[last];
            st.score[i] = st.score[last];
            st.pinned[i] = st.pinned[last];
            std::memcpy(&st.ring[i * w], &st.ring[last * w], w * sizeof(float));
        }
        st.n = last;
    }
    // SnapKV votes max-pooled over the `pool` nearest held positions (SnapKV's pooling keeps the
    // neighbours of a selected token, so the selection holds whole phrases).
    std::vector<float> pooled_votes(const Stream& st) const {
        std::vector<size_t> order(st.n);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return st.pos[a] < st.pos[b]; });
        std::vector<float> out(st.n);
        const long half = o_.pool / 2, n = long(st.n);
        for (long i = 0; i < n; ++i) {
            float m = kNegInf;
            for (long j = std::max(0L, i - half); j <= std::min(n - 1, i + half); ++j) m = std::max(m, st.score[order[size_t(j)]]);
            out[order[size_t(i)]] = m;
        }
        return out;
    }
    void evict_one(Stream& st, int layer) {
        const size_t total = next_pos_[size_t(layer)];
        const size_t recent = std::max(recent_, last_chunk_[size_t(layer)]);
        const int64_t first_recent = int64_t(total) - int64_t(recent);
        size_t victim = st.n;
        if (o_.policy == EvictionPolicy::StreamingLLM) {
            for (size_t i = 0; i < st.n; ++i)
                if (st.pos[i] >= int64_t(sinks_) && st.pos[i] < first_recent && (victim == st.n || st.pos[i] < st.pos[victim])) victim = i;
        } else if (o_.policy == EvictionPolicy::H2O) {
            for (size_t i = 0; i < st.n; ++i)
                if (st.pos[i] < first_recent && (victim == st.n || st.score[i] < st.score[victim])) victim = i;
        } else if (prefill_done_) {
            // After the prefill selection: the unpinned tokens are a recent window.
            const int64_t chunk_start = int64_t(total) - int64_t(last_chunk_[size_t(layer)]);
            for (size_t i = 0; i < st.n; ++i)
                if (!st.pinned[i] && st.pos[i] < chunk_start && (victim == st.n || st.pos[i] < st.pos[victim])) victim = i;
            if (victim == st.n) {
                const std::vector<float> pooled = pooled_votes(st);
                for (size_t i = 0; i < st.n; ++i)
                    if (st.pos[i] < chunk_start && (victim == st.n || pooled[i] < pooled[victim])) victim = i;
            }
        } else {
            const std::vector<float> pooled = pooled_votes(st);
            for (size_t i = 0; i < st.n; ++i)
                if (st.pos[i] < first_recent && (victim == st.n || pooled[i] < pooled[victim])) victim = i;
        }
        if (victim == st.n) throw std::logic_error("tqkv eviction cache: no token to evict (budget check missed a case)");
        remove(st, victim);
        ++evicted_;
    }

    EvictionOptions o_;
    std::string name_;
    int d_ = 0, r_ = 1;
    size_t capacity_ = 0, recent_ = 0, sinks_ = 0;
    std::vector<Stream> streams_;
    std::vector<size_t> next_pos_, last_chunk_, queries_;
    size_t evicted_ = 0;
    bool prefill_done_ = false;
    std::vector<float> lg_, mx_, l_;
    std::vector<std::vector<float>> xk_, xv_;  // per KV head: the held tokens widened to fp32
    const detail::KernelTable* kt_ = nullptr;
};

const char* kBudgetGrammar =
    "budget cache spec: tiered[-K<b>V<b>...|-none][-w<N>][-s<N>][-h<N>][-g<N>][-m<N>][-d<decay>][-nvd][-nd][-nc][-fg][-x<seed>] | "
    "h2o[-r<fraction>] | streaming[-s<N>] | snapkv[-o<N>][-p<N>][-prefill]; e.g. tiered-K4V4-K2V2-w16, h2o, snapkv-prefill";

}  // namespace

std::unique_ptr<BudgetCache> make_tiered_cache(const CacheShape& shape, const TieredOptions& opt,
                                               const Calibration* calibration) {
    check_shape(shape);
    std::ostringstream name;
    name << "tiered";
    for (const auto& t : opt.tiers) name << "-K" << t.key_bits << "V" << t.value_bits;
    name << "-w" << opt.window << "-s" << opt.sinks;
    return std::make_unique<TieredCache>(shape, opt, calibration, name.str());
}

std::unique_ptr<BudgetCache> make_eviction_cache(const CacheShape& shape, const EvictionOptions& opt) {
    check_shape(shape);
    const char* n = opt.policy == EvictionPolicy::H2O      ? "h2o"
                    : opt.policy == EvictionPolicy::SnapKV ? (opt.prefill_unbounded ? "snapkv-prefill" : "snapkv")
                                                           : "streaming";
    return std::make_unique<EvictionCache>(shape, opt, n);
}

std::unique_ptr<BudgetCache> make_budget_cache(const std::string& spec, const CacheShape& shape, size_t budget_bytes,
                                               const Calibration* calibration) {
    check_shape(shape);
    std::vector<std::string> parts;
    {
        std::stringstream ss(spec);
        for (std::string p; std::getline(ss, p, '-');) parts.push_back(p);
    }
    if (parts.empty()) fail("empty spec; " + std::string(kBudgetGrammar));
    auto number = [&](const std::string& p, size_t from) {
        double x = 0;
        if (!detail::spec_number(p, from, x)) fail("bad option '" + p + "' in '" + spec + "'; " + kBudgetGrammar);
        return x;
    };
    auto integer = [&](const std::string& p, size_t from) {
        const double x = number(p, from);
        if (x != std::floor(x) || x < 0 || x > 1e9) fail("bad option '" + p + "' in '" + spec + "'; " + kBudgetGrammar);
        return int(x);
    };
    const std::string& kind = parts[0];
    if (kind == "tiered") {
        TieredOptions o;
        o.budget_bytes = budget_bytes;
        std::vector<TierRate> tiers;
        bool none = false;
        for (size_t i = 1; i < parts.size(); ++i) {
            const std::string& p = parts[i];
            if (p.size() >= 4 && (p[0] == 'K' || p[0] == 'k') && p.find_first_of("Vv") != std::string::npos) {
                const size_t v = p.find_first_of("Vv");
                TierRate t;
                t.key_bits = number(p.substr(0, v), 1);
                t.value_bits = number(p.substr(v), 1);
                tiers.push_back(t);
            } else if (p == "none") none = true;
            else if (p == "vd") o.debias_values = true;
            else if (p == "nvd") o.debias_values = false;
            else if (p == "nd") o.debias_keys = false;
            else if (p == "nc") o.center = false;
            else if (p == "fg") o.background = false;
            else if (p.size() > 1 && p[0] == 'w') o.window = integer(p, 1);
            else if (p.size() > 1 && p[0] == 's') o.sinks = integer(p, 1);
            else if (p.size() > 1 && p[0] == 'h') o.heavy = integer(p, 1);
            else if (p.size() > 1 && p[0] == 'g') o.segment_tokens = integer(p, 1);
            else if (p.size() > 1 && p[0] == 'm') o.last_tier_tokens = integer(p, 1);
            else if (p.size() > 1 && p[0] == 'd') o.decay = number(p, 1);
            else if (p.size() > 1 && p[0] == 'x') o.seed = uint64_t(integer(p, 1));
            else fail("unknown option '" + p + "' in '" + spec + "'; " + kBudgetGrammar);
        }
        if (none && !tiers.empty()) fail("'none' and tiers in '" + spec + "'");
        if (none) o.tiers.clear();
        else if (!tiers.empty()) o.tiers = tiers;
        return std::make_unique<TieredCache>(shape, o, calibration, spec);
    }
    EvictionOptions o;
    o.budget_bytes = budget_bytes;
    if (kind == "h2o") o.policy = EvictionPolicy::H2O;
    else if (kind == "snapkv") o.policy = EvictionPolicy::SnapKV;
    else if (kind == "streaming" || kind == "streamingllm") o.policy = EvictionPolicy::StreamingLLM;
    else fail("unknown policy '" + spec + "'; " + kBudgetGrammar);
    for (size_t i = 1; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        if (o.policy == EvictionPolicy::H2O && p.size() > 1 && p[0] == 'r') o.recent_fraction = number(p, 1);
        else if (o.policy == EvictionPolicy::StreamingLLM && p.size() > 1 && p[0] == 's') o.sinks = integer(p, 1);
        else if (o.policy == EvictionPolicy::SnapKV && p == "prefill") o.prefill_unbounded = true;
        else if (o.policy == EvictionPolicy::SnapKV && p.size() > 1 && p[0] == 'o') o.observation = integer(p, 1);
        else if (o.policy == EvictionPolicy::SnapKV && p.size() > 1 && p[0] == 'p') o.pool = integer(p, 1);
        else fail("unknown option '" + p + "' in '" + spec + "'; " + kBudgetGrammar);
    }
    return std::make_unique<EvictionCache>(shape, o, spec);
}

}  // namespace tqkv
