// The KV caches the Llama runner attends through: exact fp32, the tqkv cache (tqkv::KVCache per
// layer, with exact preconditioning), and emulations of other formats (quantize-dequantize each
// token with the format's rules, then exact attention over the dequantized values — numerically
// the attention of the format).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "tqkv/baselines.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/dense.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"
#include "channels.hpp"

namespace tqkv {

double AttentionCache::bits_per_coord() const {
    const double coords = 2.0 * double(tokens(0)) * shape_.layers * shape_.kv_heads * shape_.head_dim;
    return coords > 0 ? format_bytes() * 8.0 / coords : 0.0;
}

double AttentionCache::bytes_per_token() const { return tokens(0) ? format_bytes() / double(tokens(0)) : 0.0; }

namespace {

using detail::high_count;
using detail::top_channels;

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv cache: " + m); }

void check_shape(const CacheShape& s) {
    if (s.layers < 1 || s.heads < 1 || s.kv_heads < 1 || s.head_dim < 1 || s.heads % s.kv_heads != 0)
        fail("bad cache shape");
}

// ---------------------------------------------------------------------------------------------
// Dense storage + exact attention; subclasses rewrite rows with a format's dequantized values.

class DenseCache : public AttentionCache {
public:
    explicit DenseCache(const CacheShape& s, std::string name) : AttentionCache(s), name_(std::move(name)) {
        check_shape(s);
        n_.assign(size_t(s.layers), 0);
    }
    std::string name() const override { return name_; }
    size_t tokens(int layer) const override { return n_.at(size_t(layer)); }
    void clear() override {
        std::fill(n_.begin(), n_.end(), 0);
        on_clear();
    }
    void reserve(size_t tokens) override {
        if (tokens > cap_) grow(tokens);
    }
    size_t memory_bytes() const override { return (K_.capacity() + V_.capacity()) * sizeof(float); }
    double format_bytes() const override {
        size_t n = 0;
        for (size_t t : n_) n += t;
        return double(n) * 2.0 * shape_.kv_heads * shape_.head_dim * 4.0;  // fp32
    }

    void append(int layer, std::span<const float> keys, std::span<const float> values) override {
        const size_t row = size_t(shape_.kv_heads) * shape_.head_dim;
        if (layer < 0 || layer >= shape_.layers) fail("layer out of range");
        if (keys.empty() || keys.size() % row || values.size() != keys.size()) fail("append: bad key/value sizes");
        const size_t n = keys.size() / row, t0 = n_[size_t(layer)];
        if (t0 + n > cap_) grow(std::max(t0 + n, 2 * cap_));
        const int d = shape_.head_dim;
        for (size_t i = 0; i < n; ++i)
            for (int h = 0; h < shape_.kv_heads; ++h) {
                std::memcpy(k(layer, h, t0 + i), &keys[(i * shape_.kv_heads + h) * d], d * sizeof(float));
                std::memcpy(v(layer, h, t0 + i), &values[(i * shape_.kv_heads + h) * d], d * sizeof(float));
            }
        n_[size_t(layer)] = t0 + n;
        on_append(layer, t0, t0 + n);
    }

    void attend(int layer, std::span<const float> queries, std::span<float> out) override {
        const int d = shape_.head_dim, H = shape_.heads, KH = shape_.kv_heads, r = H / KH;
        const size_t qrow = size_t(H) * d, T = n_.at(size_t(layer));
        if (queries.empty() || queries.size() % qrow || out.size() != queries.size()) fail("attend: bad query sizes");
        const size_t m = queries.size() / qrow;
        if (m > T) fail("attend: more queries than cached tokens");
        for (size_t i = 0; i < m; ++i) {
            const DenseAttentionShape sh{r, 1, d, T - m + i + 1, scales_.empty() ? 0.0f : scales_[size_t(layer)]};
            for (int h = 0; h < KH; ++h)
                dense_attention_f32(sh, &queries[i * qrow + size_t(h) * r * d], k(layer, h, 0), v(layer, h, 0),
                                    &out[i * qrow + size_t(h) * r * d]);
        }
    }

protected:
    float* k(int l, int h, size_t t) { return &K_[((size_t(l) * shape_.kv_heads + h) * cap_ + t) * shape_.head_dim]; }
    float* v(int l, int h, size_t t) { return &V_[((size_t(l) * shape_.kv_heads + h) * cap_ + t) * shape_.head_dim]; }
    // Called after tokens [t0, t1) of a layer were stored exactly.
    virtual void on_append(int layer, size_t t0, size_t t1) { (void)layer, (void)t0, (void)t1; }
    virtual void on_clear() {}
    size_t held(int layer) const { return n_[size_t(layer)]; }
    std::vector<float> scales_;  // attention scale per layer (empty: 1/sqrt(head_dim))

private:
    void grow(size_t cap) {
        cap = std::max<size_t>(cap, 64);
        const size_t d = size_t(shape_.head_dim), heads = size_t(shape_.layers) * shape_.kv_heads;
        std::vector<float> K(heads * cap * d), V(K.size());
        for (size_t lh = 0; lh < heads; ++lh) {
            const size_t l = lh / shape_.kv_heads;
            const size_t n = n_[l];
            if (n) {
                std::memcpy(&K[lh * cap * d], &K_[lh * cap_ * d], n * d * sizeof(float));
                std::memcpy(&V[lh * cap * d], &V_[lh * cap_ * d], n * d * sizeof(float));
            }
        }
        K_.swap(K);
        V_.swap(V);
        cap_ = cap;
    }
    std::string name_;
    std::vector<float> K_, V_;  // [layer][kv_head][cap][d]
    size_t cap_ = 0;
    std::vector<size_t> n_;
};

class ExactCache final : public DenseCache {
public:
    explicit ExactCache(const CacheShape& s) : DenseCache(s, "fp32") {}
};

// fp16, q8_0, q4_0: every token row quantized as it is appended.
class RowFormatCache final : public DenseCache {
public:
    RowFormatCache(const CacheShape& s, BaselineKind kind) : DenseCache(s, "") {
        BaselineConfig b;
        b.kind = kind;
        kf_ = BaselineFormat::make(b, s.head_dim, true);
        vf_ = BaselineFormat::make(b, s.head_dim, false);
        name_ = kf_->name();
        std::vector<float> z(size_t(s.head_dim), 1.0f);
        kf_->encode(z.data(), 1);
        row_bytes_ = kf_->bytes();
        tmp_.resize(size_t(s.head_dim));
    }
    std::string name() const override { return name_; }
    double format_bytes() const override {
        size_t n = 0;
        for (int l = 0; l < shape_.layers; ++l) n += held(l);
        return double(n) * 2.0 * shape_.kv_heads * double(row_bytes_);
    }

protected:
    void on_append(int layer, size_t t0, size_t t1) override {
        for (size_t t = t0; t < t1; ++t)
            for (int h = 0; h < shape_.kv_heads; ++h) {
                quant(*kf_, k(layer, h, t));
                quant(*vf_, v(layer, h, t));
            }
    }

private:
    void quant(BaselineFormat& f, float* row) {
        f.encode(row, 1);
        f.decode(tmp_.data());
        std::memcpy(row, tmp_.data(), tmp_.size() * sizeof(float));
    }
    std::unique_ptr<BaselineFormat> kf_, vf_;
    std::string name_;
    size_t row_bytes_ = 0;
    std::vector<float> tmp_;
};

// KIVI: the last `residual` (+ an incomplete group) tokens in fp16; older tokens quantized a group
// of `group` tokens at a time — keys per channel over the group, values per token over groups of
// channels — when the group leaves the residual window.
class KiviCache final : public DenseCache {
public:
    KiviCache(const CacheShape& s, int bits, int group, int residual)
        : DenseCache(s, "kivi" + std::to_string(bits)), group_(group), residual_(residual) {
        BaselineConfig b;
        b.kind = BaselineKind::Kivi;
        b.bits = bits;
        b.group = group;
        b.residual = 0;
        kf_ = BaselineFormat::make(b, s.head_dim, true);
        vf_ = BaselineFormat::make(b, s.head_dim, false);
        nq_.assign(size_t(s.layers), 0);
        qbytes_.assign(size_t(s.layers), 0);
        tmp_.resize(size_t(group) * s.head_dim);
    }
    double format_bytes() const override {
        double b = 0;
        for (int l = 0; l < shape_.layers; ++l)
            b += double(qbytes_[size_t(l)]) + double(held(l) - nq_[size_t(l)]) * 2.0 * shape_.kv_heads * shape_.head_dim * 2.0;
        return b;
    }

protected:
    void on_clear() override {
        std::fill(nq_.begin(), nq_.end(), 0);
        std::fill(qbytes_.begin(), qbytes_.end(), 0);
    }
    void on_append(int layer, size_t t0, size_t t1) override {
        const int d = shape_.head_dim;
        for (size_t t = t0; t < t1; ++t)  // the residual is fp16
            for (int h = 0; h < shape_.kv_heads; ++h)
                for (int j = 0; j < d; ++j) {
                    k(layer, h, t)[j] = half_to_float(float_to_half(k(layer, h, t)[j]));
                    v(layer, h, t)[j] = half_to_float(float_to_half(v(layer, h, t)[j]));
                }
        size_t& nq = nq_[size_t(layer)];
        while (held(layer) - nq >= size_t(residual_ + group_)) {
            for (int h = 0; h < shape_.kv_heads; ++h) {
                for (auto [f, p] : {std::pair{kf_.get(), k(layer, h, nq)}, std::pair{vf_.get(), v(layer, h, nq)}}) {
                    f->encode(p, size_t(group_));
                    f->decode(tmp_.data());
                    std::memcpy(p, tmp_.data(), tmp_.size() * sizeof(float));
                    qbytes_[size_t(layer)] += f->bytes();
                }
            }
            nq += size_t(group_);
        }
    }

private:
    int group_, residual_;
    std::unique_ptr<BaselineFormat> kf_, vf_;
    std::vector<size_t> nq_, qbytes_;
    std::vector<float> tmp_;
};

// ---------------------------------------------------------------------------------------------
// Preconditioning shared by the tqkv cache and its emulation: per layer and KV head,
//   k' = sk * (k - mk),  q' = q / sk * logit_scale,  v' = sv * (v - mv),  out = out' / sv + mv.
// q'.k' = q.k - q.mk: the same shift for every token of a query, which softmax ignores; the
// attention weights sum to 1, so the value shift comes back exactly.

struct Precond {
    int d = 0, KH = 0, r = 1;
    std::vector<float> mk, sk, mv, sv;  // [kv_head][d]
    float logit_scale = 1;

    void identity(int kv_heads, int dim, int group) {
        d = dim, KH = kv_heads, r = group;
        mk.assign(size_t(KH) * d, 0.0f);
        mv = mk;
        sk.assign(size_t(KH) * d, 1.0f);
        sv = sk;
    }
    void keys(const float* in, size_t n, float* out) const {
        for (size_t i = 0; i < n; ++i)
            for (int h = 0; h < KH; ++h)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(h) * d + j, x = (i * KH + h) * d + j;
                    out[x] = sk[c] * (in[x] - mk[c]);
                }
    }
    void values(const float* in, size_t n, float* out) const {
        for (size_t i = 0; i < n; ++i)
            for (int h = 0; h < KH; ++h)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(h) * d + j, x = (i * KH + h) * d + j;
                    out[x] = sv[c] * (in[x] - mv[c]);
                }
    }
    void queries(const float* in, size_t m, float* out) const {
        for (size_t i = 0; i < m; ++i)
            for (int hq = 0; hq < KH * r; ++hq)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(hq / r) * d + j, x = (i * KH * r + hq) * d + j;
                    out[x] = in[x] / sk[c] * logit_scale;
                }
    }
    void outputs(float* o, size_t m) const {
        for (size_t i = 0; i < m; ++i)
            for (int hq = 0; hq < KH * r; ++hq)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(hq / r) * d + j, x = (i * KH * r + hq) * d + j;
                    o[x] = o[x] / sv[c] + mv[c];
                }
    }
    // Inverse of keys()/values() (for the emulation, which stores the original space).
    void unkeys(float* x, size_t n) const {
        for (size_t i = 0; i < n; ++i)
            for (int h = 0; h < KH; ++h)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(h) * d + j;
                    x[(i * KH + h) * d + j] = x[(i * KH + h) * d + j] / sk[c] + mk[c];
                }
    }
    void unvalues(float* x, size_t n) const {
        for (size_t i = 0; i < n; ++i)
            for (int h = 0; h < KH; ++h)
                for (int j = 0; j < d; ++j) {
                    const size_t c = size_t(h) * d + j;
                    x[(i * KH + h) * d + j] = x[(i * KH + h) * d + j] / sv[c] + mv[c];
                }
    }
};

// s^2 proportional to sqrt(a / b) per channel, geometric mean 1, clamped to [1/16, 16].
void balance(const double* a, const double* b, int d, float* s) {
    double ma = 0, mb = 0;
    for (int j = 0; j < d; ++j) ma += a[j], mb += b[j];
    ma = ma / d + 1e-30, mb = mb / d + 1e-30;
    std::vector<double> ls(static_cast<size_t>(d));
    double mean = 0;
    for (int j = 0; j < d; ++j) {
        // A small floor keeps dead channels from getting extreme scales.
        const double x = std::max(a[j], 1e-3 * ma) / std::max(b[j], 1e-3 * mb);
        ls[size_t(j)] = 0.25 * std::log(x);
        mean += ls[size_t(j)];
    }
    mean /= d;
    for (int j = 0; j < d; ++j) s[j] = float(std::exp(std::clamp(ls[size_t(j)] - mean, -std::log(16.0), std::log(16.0))));
}

// Per-layer codec settings of the tqkv cache: preconditioning and high channels.
struct LayerPlan {
    Precond pc;
    double key_bits = 4, value_bits = 4;
    std::vector<int> key_high, value_high;
};

// Plan from calibration statistics (or, with cal = nullptr, from the first appended rows).
LayerPlan make_plan(const TurboCacheOptions& o, const CacheShape& s, int layer, const KVCalibration* cal,
                    const float* keys, const float* values, size_t n) {
    LayerPlan p;
    const int d = s.head_dim, KH = s.kv_heads;
    p.key_bits = o.layer_key_bits.empty() ? o.key_bits : o.layer_key_bits.at(size_t(layer));
    p.value_bits = o.layer_value_bits.empty() ? o.value_bits : o.layer_value_bits.at(size_t(layer));
    p.pc.identity(KH, d, s.heads / KH);
    p.pc.logit_scale = float(o.logit_scale);
    if (o.debias_logits && o.key_method == Method::Mse) {
        // MSE codes shrink inner products by (1 - D) on average (D: the codebook's distortion of a
        // unit vector); fractional rates mix the two parts' distortions by channel count.
        const int lo = int(std::floor(p.key_bits)), hc = high_count(p.key_bits, d);
        double D = LloydMaxCodebook::get(d - hc, lo)->mse();
        if (hc) D = (double(hc) * LloydMaxCodebook::get(hc, lo + 1)->mse() + double(d - hc) * D) / d;
        p.pc.logit_scale = float(p.pc.logit_scale / (1.0 - D));
    }
    // Per-channel first and second moments of keys and values: [kv_head][d]. Without calibration
    // statistics only the first appended rows are known: they choose the high channels of
    // fractional rates, and nothing is centered or scaled (a mean over a short prefill at its
    // positions would not describe later, differently rotated keys).
    std::vector<double> km(size_t(KH) * d), ks(km.size()), vm(km.size()), vs(km.size());
    if (cal) {
        const size_t off = cal->index(layer, 0);
        for (size_t c = 0; c < km.size(); ++c) {
            km[c] = cal->key_mean[off + c], ks[c] = cal->key_sq[off + c];
            vm[c] = cal->value_mean[off + c], vs[c] = cal->value_sq[off + c];
        }
    } else {
        for (size_t i = 0; i < n; ++i)
            for (size_t c = 0; c < km.size(); ++c) {
                const double kx = keys[i * km.size() + c], vx = values[i * km.size() + c];
                ks[c] += kx * kx, vs[c] += vx * vx;
            }
    }
    const bool center_keys = cal && o.center_keys, center_values = cal && o.center_values;
    // Variances about the stored offset.
    std::vector<double> kvar(km.size()), vvar(km.size());
    for (size_t c = 0; c < km.size(); ++c) {
        if (center_keys) p.pc.mk[c] = float(km[c]);
        if (center_values) p.pc.mv[c] = float(vm[c]);
        const double mk = p.pc.mk[c], mv = p.pc.mv[c];
        kvar[c] = std::max(0.0, ks[c] - 2 * mk * km[c] + mk * mk);
        vvar[c] = std::max(0.0, vs[c] - 2 * mv * vm[c] + mv * mv);
    }
    if (cal && o.scale_keys)
        for (int h = 0; h < KH; ++h)
            balance(&cal->query_sq[cal->index(layer, h)], &kvar[size_t(h) * d], d, &p.pc.sk[size_t(h) * d]);
    if (cal && o.scale_values)
        for (int h = 0; h < KH; ++h)
            balance(&cal->out_weight[cal->index(layer, h)], &vvar[size_t(h) * d], d, &p.pc.sv[size_t(h) * d]);
    // High channels: most energy after preconditioning, summed over KV heads (one codec per side).
    std::vector<double> ke(static_cast<size_t>(d)), ve(static_cast<size_t>(d));
    for (int h = 0; h < KH; ++h)
        for (int j = 0; j < d; ++j) {
            const size_t c = size_t(h) * d + j;
            ke[size_t(j)] += double(p.pc.sk[c]) * p.pc.sk[c] * kvar[c];
            ve[size_t(j)] += double(p.pc.sv[c]) * p.pc.sv[c] * vvar[c];
        }
    if (int c = high_count(p.key_bits, d)) p.key_high = top_channels(ke, c);
    if (int c = high_count(p.value_bits, d)) p.value_high = top_channels(ve, c);
    return p;
}

CacheConfig layer_config(const TurboCacheOptions& o, const CacheShape& s, int layer, const LayerPlan& p) {
    CacheConfig c;
    c.heads = s.heads;
    c.kv_heads = s.kv_heads;
    c.head_dim = s.head_dim;
    c.key_bits = p.key_bits;
    c.value_bits = p.value_bits;
    c.key_method = o.key_method;
    c.key_high_channels = p.key_high;
    c.value_high_channels = p.value_high;
    c.window = o.window;
    c.seed = derive_seed(o.seed, uint64_t(layer));  // as ModelKVCache
    c.kernel = o.kernel;
    return c;
}

// ---------------------------------------------------------------------------------------------
// The tqkv cache: tqkv::KVCache per layer (fused attention on the codes).

class TurboCache final : public AttentionCache {
public:
    TurboCache(const CacheShape& s, const TurboCacheOptions& o, const KVCalibration* cal, std::string name)
        : AttentionCache(s), o_(o), name_(std::move(name)) {
        check_shape(s);
        if (cal) {
            if (cal->shape.layers != s.layers || cal->shape.kv_heads != s.kv_heads || cal->shape.head_dim != s.head_dim)
                fail("calibration shape does not match the cache");
            cal_ = *cal;
            has_cal_ = true;
        }
        if (!o.layer_key_bits.empty() && o.layer_key_bits.size() != size_t(s.layers)) fail("layer_key_bits needs one entry per layer");
        if (!o.layer_value_bits.empty() && o.layer_value_bits.size() != size_t(s.layers)) fail("layer_value_bits needs one entry per layer");
        // Checked here, not first in the codec: the debias plan converts bits to int before that.
        auto check_bits = [](double b) {
            if (!(b >= 1 && b <= 8)) fail("bits " + std::to_string(b) + " out of range [1, 8]");
        };
        check_bits(o.key_bits);
        check_bits(o.value_bits);
        for (double b : o.layer_key_bits) check_bits(b);
        for (double b : o.layer_value_bits) check_bits(b);
        if (!(o.logit_scale > 0 && o.logit_scale < 1e30)) fail("logit_scale must be in (0, 1e30)");
        plans_.resize(size_t(s.layers));
        layers_.resize(size_t(s.layers));
        if (has_cal_)
            for (int l = 0; l < s.layers; ++l) build(l, nullptr, nullptr, 0);
    }
    std::string name() const override { return name_; }
    size_t tokens(int layer) const override {
        const auto& c = layers_.at(size_t(layer));
        return c ? c->tokens() : 0;
    }
    void clear() override {
        for (int l = 0; l < shape_.layers; ++l) {
            if (!has_cal_) layers_[size_t(l)].reset();  // re-calibrates on the next prefill
            else layers_[size_t(l)]->clear();
        }
    }
    void reserve(size_t tokens) override { (void)tokens; }
    double format_bytes() const override {
        double b = 0;
        for (const auto& c : layers_)
            if (c)
                b += c->compressed_bytes_per_token() * double(c->compressed_tokens()) +
                     double(c->tokens() - c->compressed_tokens()) * 2.0 * shape_.kv_heads * shape_.head_dim * 2.0;
        return b;
    }
    size_t memory_bytes() const override {
        size_t b = 0;
        for (const auto& c : layers_)
            if (c) b += c->bytes_used();
        return b;
    }

    void append(int layer, std::span<const float> keys, std::span<const float> values) override {
        if (layer < 0 || layer >= shape_.layers) fail("layer out of range");
        const size_t row = size_t(shape_.kv_heads) * shape_.head_dim;
        if (keys.empty() || keys.size() % row || values.size() != keys.size()) fail("append: bad key/value sizes");
        const size_t n = keys.size() / row;
        if (!layers_[size_t(layer)]) build(layer, keys.data(), values.data(), n);
        grow(kb_, keys.size());
        grow(vb_, keys.size());
        const Precond& pc = plans_[size_t(layer)].pc;
        pc.keys(keys.data(), n, kb_.data());
        pc.values(values.data(), n, vb_.data());
        layers_[size_t(layer)]->append(std::span(kb_.data(), keys.size()), std::span(vb_.data(), keys.size()));
    }

    void attend(int layer, std::span<const float> queries, std::span<float> out) override {
        if (layer < 0 || layer >= shape_.layers || !layers_[size_t(layer)]) fail("attend: the layer is empty");
        const size_t qrow = size_t(shape_.heads) * shape_.head_dim;
        if (queries.empty() || queries.size() % qrow || out.size() != queries.size()) fail("attend: bad query sizes");
        const size_t m = queries.size() / qrow;
        grow(qb_, queries.size());
        const Precond& pc = plans_[size_t(layer)].pc;
        pc.queries(queries.data(), m, qb_.data());
        layers_[size_t(layer)]->attend(std::span(qb_.data(), queries.size()), out, true);
        pc.outputs(out.data(), m);
    }

    const LayerPlan& plan(int l) const { return plans_[size_t(l)]; }

private:
    static void grow(std::vector<float>& v, size_t n) {
        if (v.size() < n) v.resize(n);
    }
    void build(int l, const float* k, const float* v, size_t n) {
        plans_[size_t(l)] = make_plan(o_, shape_, l, has_cal_ ? &cal_ : nullptr, k, v, n);
        layers_[size_t(l)] = std::make_unique<KVCache>(layer_config(o_, shape_, l, plans_[size_t(l)]));
    }
    TurboCacheOptions o_;
    std::string name_;
    KVCalibration cal_;
    bool has_cal_ = false;
    std::vector<LayerPlan> plans_;
    std::vector<std::unique_ptr<KVCache>> layers_;
    std::vector<float> kb_, vb_, qb_;
};

// ---------------------------------------------------------------------------------------------
// Emulated tqkv: the same codecs and preconditioning, quantize-dequantize each token when it
// leaves the window (attention-sink tokens never), exact attention over the result.

class TurboEmuCache final : public DenseCache {
public:
    TurboEmuCache(const CacheShape& s, const TurboCacheOptions& o, const KVCalibration* cal, int sinks, std::string name)
        : DenseCache(s, std::move(name)), o_(o), sinks_(sinks) {
        if (cal) cal_ = *cal, has_cal_ = true;
        plans_.resize(size_t(s.layers));
        kc_.resize(size_t(s.layers));
        vc_.resize(size_t(s.layers));
        nq_.assign(size_t(s.layers), 0);
        if (has_cal_)
            for (int l = 0; l < s.layers; ++l) build(l, nullptr, nullptr, 0);
        row_.resize(size_t(s.kv_heads) * s.head_dim * 2);
    }
    double format_bytes() const override {
        double b = 0;
        for (int l = 0; l < shape_.layers; ++l) {
            if (!kc_[size_t(l)]) continue;
            const double q = double(nq_[size_t(l)] - std::min(nq_[size_t(l)], size_t(sinks_)));
            b += q * shape_.kv_heads * double(kc_[size_t(l)]->bytes_per_vector() + vc_[size_t(l)]->bytes_per_vector()) +
                 (double(held(l)) - q) * 2.0 * shape_.kv_heads * shape_.head_dim * 2.0;
        }
        return b;
    }

protected:
    void on_clear() override {
        std::fill(nq_.begin(), nq_.end(), 0);
        if (!has_cal_)
            for (int l = 0; l < shape_.layers; ++l) kc_[size_t(l)].reset(), vc_[size_t(l)].reset();
    }
    void on_append(int layer, size_t t0, size_t t1) override {
        const int d = shape_.head_dim, KH = shape_.kv_heads;
        if (!kc_[size_t(layer)]) {  // self-calibration from the first rows
            std::vector<float> K((t1 - t0) * KH * d), V(K.size());
            for (size_t t = t0; t < t1; ++t)
                for (int h = 0; h < KH; ++h) {
                    std::memcpy(&K[((t - t0) * KH + h) * d], k(layer, h, t), d * sizeof(float));
                    std::memcpy(&V[((t - t0) * KH + h) * d], v(layer, h, t), d * sizeof(float));
                }
            build(layer, K.data(), V.data(), t1 - t0);
        }
        const size_t n = held(layer), W = size_t(o_.window);
        size_t& nq = nq_[size_t(layer)];
        const size_t target = n > W ? n - W : 0;
        const Precond& pc = plans_[size_t(layer)].pc;
        float* kr = row_.data();
        float* vr = kr + size_t(KH) * d;
        for (; nq < target; ++nq) {
            if (nq < size_t(sinks_)) continue;  // sinks stay exact
            for (int h = 0; h < KH; ++h) {
                std::memcpy(kr + size_t(h) * d, k(layer, h, nq), d * sizeof(float));
                std::memcpy(vr + size_t(h) * d, v(layer, h, nq), d * sizeof(float));
            }
            pc.keys(kr, 1, kr);
            pc.values(vr, 1, vr);
            kc_[size_t(layer)]->encode_rows(kr, size_t(KH), size_t(d), codes_.data(), kc_[size_t(layer)]->bytes_per_vector());
            kc_[size_t(layer)]->decode_rows(codes_.data(), kc_[size_t(layer)]->bytes_per_vector(), size_t(KH), kr, size_t(d));
            vc_[size_t(layer)]->encode_rows(vr, size_t(KH), size_t(d), codes_.data(), vc_[size_t(layer)]->bytes_per_vector());
            vc_[size_t(layer)]->decode_rows(codes_.data(), vc_[size_t(layer)]->bytes_per_vector(), size_t(KH), vr, size_t(d));
            pc.unkeys(kr, 1);
            pc.unvalues(vr, 1);
            for (int h = 0; h < KH; ++h) {
                std::memcpy(k(layer, h, nq), kr + size_t(h) * d, d * sizeof(float));
                std::memcpy(v(layer, h, nq), vr + size_t(h) * d, d * sizeof(float));
            }
        }
    }

private:
    void build(int l, const float* k, const float* v, size_t n) {
        plans_[size_t(l)] = make_plan(o_, shape_, l, has_cal_ ? &cal_ : nullptr, k, v, n);
        const CacheConfig c = layer_config(o_, shape_, l, plans_[size_t(l)]);
        CodecConfig kc;  // as KVCache builds its codecs
        kc.dim = c.head_dim;
        kc.bits = c.key_bits;
        kc.method = c.key_method;
        kc.seed = derive_seed(c.seed, 0x4b);
        kc.high_channels = c.key_high_channels;
        kc.kernel = c.kernel;
        CodecConfig vc = kc;
        vc.bits = c.value_bits;
        vc.method = Method::Mse;
        vc.seed = derive_seed(c.seed, 0x56);
        vc.high_channels = c.value_high_channels;
        kc_[size_t(l)] = make_codec(kc);
        vc_[size_t(l)] = make_codec(vc);
        if (scales_.empty()) scales_.assign(size_t(shape_.layers), float(1.0 / std::sqrt(double(shape_.head_dim))));
        scales_[size_t(l)] = float(plans_[size_t(l)].pc.logit_scale / std::sqrt(double(shape_.head_dim)));
        const size_t mx = std::max(kc_[size_t(l)]->bytes_per_vector(), vc_[size_t(l)]->bytes_per_vector());
        if (codes_.size() < mx * shape_.kv_heads) codes_.resize(mx * shape_.kv_heads);
    }
    TurboCacheOptions o_;
    int sinks_;
    KVCalibration cal_;
    bool has_cal_ = false;
    std::vector<LayerPlan> plans_;
    std::vector<std::unique_ptr<VectorCodec>> kc_, vc_;
    std::vector<size_t> nq_;
    std::vector<float> row_;
    std::vector<uint8_t> codes_;
};

// ---------------------------------------------------------------------------------------------
// Specs

const char* kGrammar =
    "cache spec: fp32 | exact | fp16 | q8_0 | q4_0 | kivi2 | kivi4 | K<bits>V<bits>[-opt...] with options "
    "prod, raw, nc, nck, ncv, sk, sv, ta, nta, w<N> (window), s<N> (sinks), t<x> (logit scale), x<seed>, emu, l<i>=K<b>V<b>; e.g. K4V3, "
    "K3.5V2.5-w32";

double parse_bits(const std::string& s, const std::string& spec) {
    size_t pos = 0;
    double b = 0;
    try {
        b = std::stod(s, &pos);
    } catch (...) {
        pos = std::string::npos;
    }
    if (pos != s.size() || !(b >= 1 && b <= 8)) fail("bad bits '" + s + "' in '" + spec + "'; " + kGrammar);
    return b;
}

// "K4V3" -> (4, 3)
bool parse_kv(const std::string& s, const std::string& spec, double& kb, double& vb) {
    if (s.size() < 4 || (s[0] != 'K' && s[0] != 'k')) return false;
    const size_t vpos = s.find_first_of("Vv");
    if (vpos == std::string::npos || vpos < 2) return false;
    kb = parse_bits(s.substr(1, vpos - 1), spec);
    vb = parse_bits(s.substr(vpos + 1), spec);
    return true;
}

}  // namespace

std::unique_ptr<AttentionCache> make_exact_cache(const CacheShape& shape) { return std::make_unique<ExactCache>(shape); }

std::unique_ptr<AttentionCache> make_turbo_cache(const CacheShape& shape, const TurboCacheOptions& opt,
                                                 const KVCalibration* calibration) {
    std::ostringstream name;
    name << "K" << opt.key_bits << "V" << opt.value_bits;
    return std::make_unique<TurboCache>(shape, opt, calibration, name.str());
}

std::unique_ptr<AttentionCache> make_cache(const std::string& spec, const CacheShape& shape,
                                           const KVCalibration* calibration) {
    check_shape(shape);
    if (spec == "fp32" || spec == "exact") return make_exact_cache(shape);
    if (spec == "fp16") return std::make_unique<RowFormatCache>(shape, BaselineKind::Fp16);
    if (spec == "q8_0") return std::make_unique<RowFormatCache>(shape, BaselineKind::Q8_0);
    if (spec == "q4_0") return std::make_unique<RowFormatCache>(shape, BaselineKind::Q4_0);
    if (spec == "kivi2" || spec == "kivi4") return std::make_unique<KiviCache>(shape, spec[4] - '0', 32, 128);
    std::vector<std::string> parts;
    {
        std::stringstream ss(spec);
        std::string p;
        while (std::getline(ss, p, '-')) parts.push_back(p);
    }
    TurboCacheOptions o;
    if (parts.empty() || !parse_kv(parts[0], spec, o.key_bits, o.value_bits)) fail("unknown '" + spec + "'; " + kGrammar);
    int sinks = 0;
    bool emu = false;
    auto number = [&](const std::string& p, size_t from) {
        double x = 0;
        if (!detail::spec_number(p, from, x)) fail("bad option '" + p + "' in '" + spec + "'; " + kGrammar);
        return x;
    };
    // Whole numbers in [0, max], checked before any conversion (a huge double does not fit an int).
    auto integer = [&](const std::string& p, size_t from, double max) {
        const double x = number(p, from);
        if (x != std::floor(x) || x < 0 || x > max) fail("bad option '" + p + "' in '" + spec + "'; " + kGrammar);
        return x;
    };
    for (size_t i = 1; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        if (p == "prod") o.key_method = Method::Prod;
        else if (p == "mse") o.key_method = Method::Mse;
        else if (p == "raw") o.center_keys = o.center_values = o.scale_keys = o.scale_values = o.debias_logits = false;
        else if (p == "nc") o.center_keys = o.center_values = false;
        else if (p == "nck") o.center_keys = false;
        else if (p == "ncv") o.center_values = false;
        else if (p == "sk") o.scale_keys = true;
        else if (p == "sv") o.scale_values = true;
        else if (p == "ta") o.debias_logits = true;
        else if (p == "nta") o.debias_logits = false;
        else if (p == "emu") emu = true;
        else if (p.size() > 1 && p[0] == 'x') o.seed = uint64_t(integer(p, 1, 9007199254740992.0));
        else if (p.size() > 1 && p[0] == 'w') o.window = int(integer(p, 1, 4096));
        else if (p.size() > 1 && p[0] == 's' && std::isdigit(static_cast<unsigned char>(p[1]))) sinks = int(integer(p, 1, 4096));
        else if (p.size() > 1 && p[0] == 't') o.logit_scale = number(p, 1);
        else if (p.size() > 3 && p[0] == 'l' && p.find('=') != std::string::npos) {
            const size_t eq = p.find('=');
            const int l = int(integer(p.substr(0, eq), 1, 1e6));
            if (l < 0 || l >= shape.layers) fail("layer " + std::to_string(l) + " out of range in '" + spec + "'");
            double kb, vb;
            if (!parse_kv(p.substr(eq + 1), spec, kb, vb)) fail("bad layer option '" + p + "'; " + kGrammar);
            if (o.layer_key_bits.empty()) {
                o.layer_key_bits.assign(size_t(shape.layers), -1);
                o.layer_value_bits.assign(size_t(shape.layers), -1);
            }
            o.layer_key_bits[size_t(l)] = kb;
            o.layer_value_bits[size_t(l)] = vb;
        } else fail("unknown option '" + p + "' in '" + spec + "'; " + kGrammar);
    }
    for (size_t l = 0; l < o.layer_key_bits.size(); ++l) {
        if (o.layer_key_bits[l] < 0) o.layer_key_bits[l] = o.key_bits;
        if (o.layer_value_bits[l] < 0) o.layer_value_bits[l] = o.value_bits;
    }
    if (o.window < 0 || o.window > 4096) fail("window out of range in '" + spec + "'");
    if (sinks < 0 || sinks > 4096) fail("sinks out of range in '" + spec + "'");
    if (!(o.logit_scale > 0 && o.logit_scale < 1e30)) fail("logit scale must be in (0, 1e30) in '" + spec + "'");
    if ((o.scale_keys || o.scale_values) && !calibration)
        fail("'" + spec + "': sk/sv need calibration statistics (queries, o_proj)");
    if (sinks > 0 || emu) return std::make_unique<TurboEmuCache>(shape, o, calibration, sinks, spec);
    return std::make_unique<TurboCache>(shape, o, calibration, spec);
}

}  // namespace tqkv
