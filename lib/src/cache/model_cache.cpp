// ModelKVCache (the caches of all layers of a model) and layer_config(): how a spec and a
// calibration become one layer's CacheConfig. The Llama runner, the C ABI, the npm package and
// the benchmarks all build their tqkv caches here.
#include <cmath>
#include <stdexcept>

#include "tqkv/cache.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

namespace {

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv: " + m); }

// Channels a fractional rate codes at one bit more: round(frac(bits) * d) (as CodecConfig says).
int high_count(double bits, int d) {
    const double frac = bits - std::floor(bits);
    return frac > 0 ? int(std::lround(frac * d)) : 0;
}

// The `count` channels of rows [n][kv_heads][d] with the most energy (summed over KV heads),
// ascending; the no-calibration fallback of fractional rates.
std::vector<int> high_channels_of_rows(std::span<const float> rows, int kv_heads, int d, int count) {
    Calibration c(1, kv_heads, d);
    c.add(0, rows, rows);
    return c.high_channels(0, true, count, false);
}

}  // namespace

CacheConfig layer_config(const CacheSpec& spec, const CacheShape& shape, int layer, const Calibration* cal,
                         const CacheConfig& base, std::span<const float> first_keys, std::span<const float> first_values) {
    if (!spec.is_tqkv()) fail("'" + spec.text + "' is not a tqkv cache spec (K<bits>V<bits>...)");
    if (shape.layers < 1 || shape.heads < 1 || shape.kv_heads < 1 || shape.head_dim < 1 || shape.heads % shape.kv_heads)
        fail("bad cache shape (layers " + std::to_string(shape.layers) + ", heads " + std::to_string(shape.heads) +
             ", kv_heads " + std::to_string(shape.kv_heads) + ", head_dim " + std::to_string(shape.head_dim) + ")");
    if (layer < 0 || layer >= shape.layers) fail("layer " + std::to_string(layer) + " out of range");
    spec.check_layers(shape.layers);
    if (cal) {
        if (cal->layers() != shape.layers || cal->kv_heads() != shape.kv_heads || cal->head_dim() != shape.head_dim)
            fail("the calibration is of another shape (layers " + std::to_string(cal->layers()) + ", kv_heads " +
                 std::to_string(cal->kv_heads()) + ", head_dim " + std::to_string(cal->head_dim()) + "; the cache: " +
                 std::to_string(shape.layers) + ", " + std::to_string(shape.kv_heads) + ", " + std::to_string(shape.head_dim) + ")");
        if (cal->tokens(layer) == 0) fail("the calibration has no tokens for layer " + std::to_string(layer));
    }
    const int d = shape.head_dim, KH = shape.kv_heads;
    CacheConfig c = base;
    c.heads = shape.heads;
    c.kv_heads = KH;
    c.head_dim = d;
    c.key_bits = spec.layer_key_bits(layer, shape.layers);
    c.value_bits = spec.layer_value_bits(layer, shape.layers);
    if (spec.auto_bits > 0) {  // rates from the calibration's sensitivities
        if (!cal) fail("'" + spec.text + "': auto rates need a calibration (with the model's layer sensitivities)");
        const RatePlan plan = plan_rates(spec, shape, *cal);
        c.key_bits = plan.layers[size_t(layer)].key_bits;
        c.value_bits = plan.layers[size_t(layer)].value_bits;
    }
    c.key_method = spec.key_method;
    c.window = spec.window;
    c.seed = derive_seed(spec.seed, uint64_t(layer));  // as ModelKVCache(layers, cfg)
    c.scale = spec.logit_scale == 1.0 ? 0.0f : float(spec.logit_scale / std::sqrt(double(d)));
    c.debias_keys = spec.debias_keys && spec.key_method == Method::Mse;
    c.debias_values = spec.debias_values;
    if (spec.precision) c.precision = *spec.precision;
    c.key_mean.clear();
    c.value_mean.clear();
    c.key_high_channels.clear();
    c.value_high_channels.clear();
    const bool ck = cal && spec.center_keys, cv = cal && spec.center_values;
    if (ck || cv)
        for (int h = 0; h < KH; ++h) {
            if (ck)
                for (double m : cal->key_mean(layer, h)) c.key_mean.push_back(float(m));
            if (cv)
                for (double m : cal->value_mean(layer, h)) c.value_mean.push_back(float(m));
        }
    // High channels: most energy about the stored offset (what is left to code), summed over KV
    // heads (one codec per side).
    const int hk = high_count(c.key_bits, d), hv = high_count(c.value_bits, d);
    if (hk || hv) {
        if (cal) {
            if (hk) c.key_high_channels = cal->high_channels(layer, true, hk, ck);
            if (hv) c.value_high_channels = cal->high_channels(layer, false, hv, cv);
        } else {
            if (first_keys.empty())
                fail("'" + spec.text + "': fractional rates need a calibration (or the layer's first keys and values)");
            if (hk) c.key_high_channels = high_channels_of_rows(first_keys, KH, d, hk);
            if (hv) c.value_high_channels = high_channels_of_rows(first_values, KH, d, hv);
        }
    }
    return c;
}

// ---------------------------------------------------------------------------------------------

ModelKVCache::ModelKVCache(int layers, const CacheConfig& cfg) {
    if (layers < 1 || layers > 1024) fail("layers " + std::to_string(layers) + " out of range [1, 1024]");
    for (int l = 0; l < layers; ++l) {
        CacheConfig c = cfg;
        c.seed = derive_seed(cfg.seed, uint64_t(l));
        layers_.emplace_back(std::in_place, c);
    }
}

ModelKVCache::ModelKVCache(const CacheShape& shape, const CacheSpec& spec, const Calibration* cal, const CacheConfig& base)
    : shape_(shape), base_(base) {
    if (shape.layers < 1 || shape.layers > 1024) fail("layers " + std::to_string(shape.layers) + " out of range [1, 1024]");
    if (spec.sinks > 0 || spec.emulate)
        fail("'" + spec.text + "': attention sinks and 'emu' are the Llama runner's emulated path (tqkv::make_cache)");
    layers_.resize(size_t(shape.layers));
    const bool lazy = !cal && (high_count(spec.key_bits, shape.head_dim) || high_count(spec.value_bits, shape.head_dim) ||
                               [&] {
                                   for (const auto& lr : spec.layer_rates)
                                       if (high_count(lr.key_bits, shape.head_dim) || high_count(lr.value_bits, shape.head_dim))
                                           return true;
                                   return false;
                               }());
    if (lazy) {
        // Validates the spec and rates now (a throw-away layer with arbitrary channels).
        const std::vector<float> ones(size_t(shape.kv_heads) * shape.head_dim, 1.0f);
        for (int l = 0; l < shape.layers; ++l) KVCache probe(layer_config(spec, shape, l, nullptr, base, ones, ones));
        spec_ = spec;
        return;
    }
    for (int l = 0; l < shape.layers; ++l) layers_[size_t(l)].emplace(layer_config(spec, shape, l, cal, base));
}

bool ModelKVCache::built(int l) const {
    if (l < 0 || l >= layers()) fail("layer " + std::to_string(l) + " out of range [0, " + std::to_string(layers()) + ")");
    return layers_[size_t(l)].has_value();
}

KVCache& ModelKVCache::layer(int l) {
    if (!built(l)) fail("layer " + std::to_string(l) + " is built at its first append (fractional rates without calibration)");
    return *layers_[size_t(l)];
}

const KVCache& ModelKVCache::layer(int l) const {
    if (!built(l)) fail("layer " + std::to_string(l) + " is built at its first append (fractional rates without calibration)");
    return *layers_[size_t(l)];
}

size_t ModelKVCache::tokens(int l) const { return built(l) ? layers_[size_t(l)]->tokens() : 0; }

void ModelKVCache::append(int l, std::span<const float> keys, std::span<const float> values) {
    if (!built(l)) {
        const size_t row = size_t(shape_.kv_heads) * shape_.head_dim;
        if (keys.empty() || keys.size() % row)
            fail("append: keys have " + std::to_string(keys.size()) +
                 " floats, expected a positive multiple of kv_heads * head_dim = " + std::to_string(row));
        if (values.size() != keys.size())
            fail("append: values have " + std::to_string(values.size()) + " floats, keys " + std::to_string(keys.size()));
        for (size_t i = 0; i < keys.size(); ++i)
            if (!std::isfinite(keys[i]) || !std::isfinite(values[i]))
                fail(std::string("append: non-finite ") + (std::isfinite(keys[i]) ? "value" : "key") + " at token " +
                     std::to_string(i / row));
        KVCache c(layer_config(*spec_, shape_, l, nullptr, base_, keys, values));
        c.append(keys, values);  // throws before the layer is stored: nothing changes
        layers_[size_t(l)].emplace(std::move(c));
        return;
    }
    layers_[size_t(l)]->append(keys, values);
}

void ModelKVCache::truncate(size_t n_tokens) {
    for (int l = 0; l < layers(); ++l)
        if (n_tokens > tokens(l)) fail("truncate: a layer holds fewer than " + std::to_string(n_tokens) + " tokens");
    for (auto& l : layers_)  // a layer that cannot go back that far (attention window) throws before any changes
        if (l && l->dropped_tokens() && n_tokens + 1 < l->dropped_tokens() + l->config().attention_window) l->truncate(n_tokens);
    for (auto& l : layers_)
        if (l) l->truncate(n_tokens);
}

void ModelKVCache::set_attention_window(size_t window) {
    for (auto& l : layers_)  // every layer can take it before any does
        if (l && l->config().attention_window != window && (l->dropped_tokens() || (window && l->config().max_tokens)))
            l->set_attention_window(window);  // throws, saying why
    if (window > (size_t(1) << 28)) fail("set_attention_window: " + std::to_string(window) + " is above 2^28");
    if (window && base_.max_tokens) fail("set_attention_window: not with max_tokens");
    for (auto& l : layers_)
        if (l) l->set_attention_window(window);
    base_.attention_window = window;
}

void ModelKVCache::set_precision(Precision p) {
    for (auto& l : layers_)
        if (l) l->set_precision(p);
    base_.precision = p;
    if (spec_) spec_->precision = p;
}

void ModelKVCache::clear() {
    for (auto& l : layers_) {
        if (spec_) l.reset();  // built again from the next first append (its channels)
        else l->clear();
    }
}

void ModelKVCache::release_chunk_rows(int layer) {
    if (layers_.at(size_t(layer))) layers_[size_t(layer)]->release_chunk_rows();
}

size_t ModelKVCache::bytes_used() const {
    size_t b = 0;
    for (auto& l : layers_)
        if (l) b += l->bytes_used();
    return b;
}

double ModelKVCache::format_bytes() const {
    double b = 0;
    for (auto& l : layers_)
        if (l) b += l->format_bytes();
    return b;
}

}  // namespace tqkv
