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
#include "tqkv/threads.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

double AttentionCache::held_coords() const {
    double tokens_all_layers = 0;
    for (int l = 0; l < shape_.layers; ++l) tokens_all_layers += double(tokens(l));
    return tokens_all_layers * 2.0 * shape_.kv_heads * shape_.head_dim;
}

double AttentionCache::bits_per_coord() const {
    const double coords = held_coords();
    return coords > 0 ? format_bytes() * 8.0 / coords : 0.0;
}

double AttentionCache::bytes_per_token() const {
    const double tokens_held = held_coords() / (2.0 * shape_.layers * shape_.kv_heads * shape_.head_dim);
    return tokens_held > 0 ? format_bytes() / tokens_held : 0.0;
}

std::vector<uint8_t> AttentionCache::save_state() const {
    throw std::invalid_argument("tqkv runner: the " + name() + " cache cannot be saved (the tqkv specs without sinks "
                                "or emu can; re-prefill the tokens instead)");
}

void AttentionCache::load_state(std::span<const uint8_t>, size_t) {
    throw std::invalid_argument("tqkv runner: the " + name() + " cache cannot be restored (the tqkv specs without "
                                "sinks or emu can)");
}

namespace {

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
    // Sliding-window attention (Mistral): tokens stay stored (emulated formats), only the mask moves.
    bool set_attention_window(size_t window) override {
        window_ = window;
        return true;
    }
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
        // One piece per query and KV head, on the threads of attend_options().
        auto piece = [&](size_t p) {
            const size_t i = p / size_t(KH);
            const int h = int(p % size_t(KH));
            // Query i sits at position T - m + i and sees the last `window_` positions up to it (all
            // of them without a sliding window).
            const size_t end = T - m + i + 1, first = window_ && end > window_ ? end - window_ : 0;
            const DenseAttentionShape sh{r, 1, d, end - first, scales_.empty() ? 0.0f : scales_[size_t(layer)]};
            dense_attention_f32(sh, &queries[i * qrow + size_t(h) * r * d], k(layer, h, first), v(layer, h, first),
                                &out[i * qrow + size_t(h) * r * d]);
        };
        parallel_for(m * size_t(KH), attend_options_.threads, [&piece](size_t p) { piece(p); });
    }

protected:
    float* k(int l, int h, size_t t) { return &K_[((size_t(l) * shape_.kv_heads + h) * cap_ + t) * shape_.head_dim]; }
    float* v(int l, int h, size_t t) { return &V_[((size_t(l) * shape_.kv_heads + h) * cap_ + t) * shape_.head_dim]; }
    // Called after tokens [t0, t1) of a layer were stored exactly.
    virtual void on_append(int layer, size_t t0, size_t t1) { (void)layer, (void)t0, (void)t1; }
    virtual void on_clear() {}
    size_t held(int layer) const { return n_[size_t(layer)]; }
    std::vector<float> scales_;  // attention scale per layer (empty: 1/sqrt(head_dim))
    size_t window_ = 0;          // sliding attention window (0: none)

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

// fp16, q8_0, q4_0 (also rotated as llama.cpp does), TurboQuant+: every token row quantized as
// it is appended (rotated formats: rotated, quantized, rotated back; exact attention over the
// result equals attention in the rotated space, the rotation being orthogonal).
class RowFormatCache final : public DenseCache {
public:
    RowFormatCache(const CacheShape& s, const BaselineConfig& b) : DenseCache(s, "") {
        kf_ = BaselineFormat::make(b, s.head_dim, true);
        vf_ = BaselineFormat::make(b, s.head_dim, false);
        name_ = kf_->name();
        std::vector<float> z(size_t(s.head_dim), 1.0f);
        kf_->encode(z.data(), 1);
        row_bytes_ = kf_->bytes();
        tmp_.resize(size_t(s.head_dim));
    }
    std::string name() const override { return name_; }
    void rename(std::string name) { name_ = std::move(name); }
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
// The tqkv cache: one tqkv::ModelKVCache (fused attention on the codes; centring, debiasing and
// high channels from the calibration, all inside the library's cache).

class TurboCache final : public AttentionCache {
public:
    TurboCache(const CacheShape& s, const CacheSpec& spec, const Calibration* cal)
        : AttentionCache(s), cache_(s, spec, cal), spec_(spec) {}
    std::string name() const override { return spec_.text; }
    size_t tokens(int layer) const override { return cache_.tokens(layer); }
    void clear() override { cache_.clear(); }
    double format_bytes() const override { return cache_.format_bytes(); }
    // Tokens the sliding window dropped are gone (format_bytes() does not count them either).
    double held_coords() const override {
        double held = 0;
        for (int l = 0; l < shape_.layers; ++l)
            if (cache_.built(l)) held += double(cache_.layer(l).tokens() - cache_.layer(l).dropped_tokens());
        return held * 2.0 * shape_.kv_heads * shape_.head_dim;
    }
    size_t memory_bytes() const override { return cache_.bytes_used(); }
    void append(int layer, std::span<const float> keys, std::span<const float> values) override {
        cache_.append(layer, keys, values);
    }
    // The runner attends every query of a chunk in one call right after appending it: then the
    // exact rows kept for the chunk's queries can go (a 4096-token chunk: 8 MiB per layer of
    // tq-ref-128 until the next append).
    void attend(int layer, std::span<const float> queries, std::span<float> out) override {
        cache_.attend(layer, queries, out, true, attend_options_);
        cache_.release_chunk_rows(layer);
    }
    // Sliding-window attention (Mistral): every layer's KVCache drops what leaves the window, codes
    // and blocks included (CacheConfig::attention_window).
    bool set_attention_window(size_t window) override {
        cache_.set_attention_window(window);
        window_ = window;
        return true;
    }
    // The ModelKVCache's bytes (self-contained: configs with the calibration's means and channels).
    std::vector<uint8_t> save_state() const override {
        if (!cache_.built(0))
            throw std::invalid_argument("tqkv runner: save: the " + spec_.text + " cache holds no tokens yet");
        return cache_.save();
    }
    // Restores only bytes coded exactly as this cache codes (same spec and calibration: the
    // configurations must agree in everything but the kernel), so that the runner's cache stays
    // the one it was created with. Layers not built yet (fractional rates without a calibration
    // choose their high channels at the first append) take the saved channels.
    void load_state(std::span<const uint8_t> bytes, size_t tokens) override {
        const std::string kernel = cache_.built(0) ? cache_.layer(0).config().kernel : std::string();
        ModelKVCache saved = [&] {
            try {
                return ModelKVCache::load(bytes, kernel);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string("tqkv runner: ") + e.what());
            }
        }();
        if (saved.layers() != shape_.layers)
            fail("load: the saved cache has " + std::to_string(saved.layers()) + " layers, this runner's " +
                 std::to_string(shape_.layers));
        const std::vector<float> ones(size_t(shape_.kv_heads) * shape_.head_dim, 1.0f);
        for (int l = 0; l < shape_.layers; ++l) {
            const CacheConfig& got = saved.layer(l).config();
            if (saved.tokens(l) != tokens)
                fail("load: layer " + std::to_string(l) + " holds " + std::to_string(saved.tokens(l)) +
                     " tokens, the runner's position is " + std::to_string(tokens));
            const bool built = cache_.built(l);
            CacheConfig base;
            base.attention_window = window_;
            const CacheConfig want = built ? cache_.layer(l).config() : layer_config(spec_, shape_, l, nullptr, base, ones, ones);
            if (!same_coding(got, want, built))
                fail("load: layer " + std::to_string(l) + " of the saved cache is coded differently from this runner's '" +
                     spec_.text + "' cache (another spec, calibration or model)");
        }
        // The precision (exact / fast) is not in the bytes: the runner's own, as its spec says.
        if (cache_.built(0))
            saved.set_precision(cache_.layer(0).config().precision);
        else if (spec_.precision)
            saved.set_precision(*spec_.precision);
        cache_ = std::move(saved);
    }

private:
    // Everything that decides codes and attention (the kernel only changes rounding).
    static bool same_coding(const CacheConfig& a, const CacheConfig& b, bool channels) {
        return a.heads == b.heads && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim && a.key_bits == b.key_bits &&
               a.key_method == b.key_method && a.value_bits == b.value_bits && a.block_tokens == b.block_tokens &&
               a.window == b.window && a.attention_window == b.attention_window && a.scale == b.scale &&
               a.max_tokens == b.max_tokens && a.seed == b.seed &&
               a.norm == b.norm && a.key_mean == b.key_mean && a.value_mean == b.value_mean &&
               a.debias_keys == b.debias_keys && a.debias_values == b.debias_values &&
               (!channels || (a.key_high_channels == b.key_high_channels && a.value_high_channels == b.value_high_channels));
    }
    ModelKVCache cache_;
    CacheSpec spec_;
    size_t window_ = 0;  // the sliding attention window (set_attention_window)
};

// ---------------------------------------------------------------------------------------------
// Emulated tqkv: each token quantized and dequantized with the same codecs and preconditioning as
// the tqkv cache when it leaves the window (attention-sink tokens never), then exact attention over
// the result. What attention sees of a coded token is what KVCache's reference path decodes:
// mean + (decoded - mean) / (1 - D) with the debias factors of the layer's config.

class TurboEmuCache final : public DenseCache {
public:
    TurboEmuCache(const CacheShape& s, const CacheSpec& spec, const Calibration* cal)
        : DenseCache(s, spec.text), spec_(spec), sinks_(spec.sinks) {
        spec.check_layers(s.layers);
        if (cal) {
            if (cal->layers() != s.layers || cal->kv_heads() != s.kv_heads || cal->head_dim() != s.head_dim)
                fail("the calibration's shape does not match the cache");
            if (!cal->complete()) fail("the calibration has layers without tokens");
            cal_ = *cal;
        }
        protos_.resize(size_t(s.layers));
        nq_.assign(size_t(s.layers), 0);
        if (!cal_.empty())
            for (int l = 0; l < s.layers; ++l) build(l, {}, {});
        row_.resize(size_t(s.kv_heads) * s.head_dim * 2);
    }
    double format_bytes() const override {
        double b = 0;
        for (int l = 0; l < shape_.layers; ++l) {
            if (!protos_[size_t(l)]) continue;
            const double q = double(nq_[size_t(l)] - std::min(nq_[size_t(l)], size_t(sinks_)));
            b += q * shape_.kv_heads *
                     double(protos_[size_t(l)]->key_codec().bytes_per_vector() + protos_[size_t(l)]->value_codec().bytes_per_vector()) +
                 (double(held(l)) - q) * 2.0 * shape_.kv_heads * shape_.head_dim * 2.0;
        }
        return b;
    }

protected:
    void on_clear() override {
        std::fill(nq_.begin(), nq_.end(), 0);
        if (cal_.empty())
            for (auto& p : protos_) p.reset();
    }
    void on_append(int layer, size_t t0, size_t t1) override {
        const int d = shape_.head_dim, KH = shape_.kv_heads;
        if (!protos_[size_t(layer)]) {  // no calibration: high channels from the first rows
            std::vector<float> K((t1 - t0) * KH * d), V(K.size());
            for (size_t t = t0; t < t1; ++t)
                for (int h = 0; h < KH; ++h) {
                    std::memcpy(&K[((t - t0) * KH + h) * d], k(layer, h, t), d * sizeof(float));
                    std::memcpy(&V[((t - t0) * KH + h) * d], v(layer, h, t), d * sizeof(float));
                }
            build(layer, K, V);
        }
        const KVCache& proto = *protos_[size_t(layer)];
        const CacheConfig& c = proto.config();
        const VectorCodec &kc = proto.key_codec(), &vc = proto.value_codec();
        const size_t n = held(layer), W = size_t(c.window);
        size_t& nq = nq_[size_t(layer)];
        const size_t target = n > W ? n - W : 0;
        float* kr = row_.data();
        float* vr = kr + size_t(KH) * d;
        const float kf = float(proto.key_debias()), vf = float(proto.value_debias());
        for (; nq < target; ++nq) {
            if (nq < size_t(sinks_)) continue;  // sinks stay exact
            for (int h = 0; h < KH; ++h) {
                std::memcpy(kr + size_t(h) * d, k(layer, h, nq), d * sizeof(float));
                std::memcpy(vr + size_t(h) * d, v(layer, h, nq), d * sizeof(float));
            }
            // x -> mean + (decode(encode(x - mean))) * debias
            for (auto [x, mean, codec, f] : {std::tuple{kr, &c.key_mean, &kc, kf}, std::tuple{vr, &c.value_mean, &vc, vf}}) {
                if (!mean->empty())
                    for (size_t i = 0; i < size_t(KH) * d; ++i) x[i] -= (*mean)[i];
                codec->encode_rows(x, size_t(KH), size_t(d), codes_.data(), codec->bytes_per_vector());
                codec->decode_rows(codes_.data(), codec->bytes_per_vector(), size_t(KH), x, size_t(d));
                for (size_t i = 0; i < size_t(KH) * d; ++i) x[i] = x[i] * f + (mean->empty() ? 0.0f : (*mean)[i]);
            }
            for (int h = 0; h < KH; ++h) {
                std::memcpy(k(layer, h, nq), kr + size_t(h) * d, d * sizeof(float));
                std::memcpy(v(layer, h, nq), vr + size_t(h) * d, d * sizeof(float));
            }
        }
    }

private:
    void build(int l, std::span<const float> first_k, std::span<const float> first_v) {
        const CacheConfig c = layer_config(spec_, shape_, l, cal_.empty() ? nullptr : &cal_, {}, first_k, first_v);
        protos_[size_t(l)] = std::make_unique<KVCache>(c);
        if (scales_.empty()) scales_.assign(size_t(shape_.layers), float(1.0 / std::sqrt(double(shape_.head_dim))));
        scales_[size_t(l)] = protos_[size_t(l)]->scale();
        const size_t mx = std::max(protos_[size_t(l)]->key_codec().bytes_per_vector(), protos_[size_t(l)]->value_codec().bytes_per_vector());
        if (codes_.size() < mx * shape_.kv_heads) codes_.resize(mx * shape_.kv_heads);
    }
    CacheSpec spec_;
    int sinks_;
    Calibration cal_;
    std::vector<std::unique_ptr<KVCache>> protos_;  // per layer: the codecs and config (holds no tokens)
    std::vector<size_t> nq_;
    std::vector<float> row_;
    std::vector<uint8_t> codes_;
};

}  // namespace

std::unique_ptr<AttentionCache> make_exact_cache(const CacheShape& shape) { return std::make_unique<ExactCache>(shape); }

std::unique_ptr<AttentionCache> make_cache(const CacheSpec& spec, const CacheShape& shape, const Calibration* calibration) {
    check_shape(shape);
    switch (spec.format) {
        case CacheSpec::Format::Exact: return make_exact_cache(shape);
        case CacheSpec::Format::Fp16:
        case CacheSpec::Format::Q8_0:
        case CacheSpec::Format::Q4_0:
        case CacheSpec::Format::Turbo: {
            BaselineConfig b;
            b.kind = spec.format == CacheSpec::Format::Fp16   ? BaselineKind::Fp16
                     : spec.format == CacheSpec::Format::Q8_0 ? BaselineKind::Q8_0
                     : spec.format == CacheSpec::Format::Q4_0 ? BaselineKind::Q4_0
                                                              : BaselineKind::Turbo;
            b.bits = int(spec.key_bits);
            b.seed = spec.seed;
            b.rotation = spec.rotation;
            auto c = std::make_unique<RowFormatCache>(shape, b);
            c->rename(spec.text);
            return c;
        }
        case CacheSpec::Format::Kivi2: return std::make_unique<KiviCache>(shape, 2, 32, 128);
        case CacheSpec::Format::Kivi4: return std::make_unique<KiviCache>(shape, 4, 32, 128);
        case CacheSpec::Format::Tqkv: break;
    }
    if (spec.sinks > 0 || spec.emulate) return std::make_unique<TurboEmuCache>(shape, spec, calibration);
    return std::make_unique<TurboCache>(shape, spec, calibration);
}

std::unique_ptr<AttentionCache> make_cache(const std::string& spec, const CacheShape& shape, const Calibration* calibration) {
    return make_cache(CacheSpec::parse(spec), shape, calibration);
}

}  // namespace tqkv
