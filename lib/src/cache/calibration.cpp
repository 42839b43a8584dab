// tqkv::Calibration: accumulation, derived statistics, serialization.
#include "tqkv/calibration.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "util/binary_io.hpp"

namespace tqkv {

namespace {

constexpr char kMagic[8] = {'T', 'Q', 'K', 'V', 'C', 'A', 'L', 'I'};
// Version 2 added the sensitivities; version 1 files still load.
constexpr uint32_t kVersion = 2;

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv calibration: " + m); }

}  // namespace

Calibration::Calibration(int layers, int kv_heads, int head_dim) {
    if (layers < 1 || layers > 1024 || kv_heads < 1 || kv_heads > 4096 || head_dim < 3 || head_dim > 1024)
        fail("shape (layers " + std::to_string(layers) + ", kv_heads " + std::to_string(kv_heads) + ", head_dim " +
             std::to_string(head_dim) + ") out of range: layers 1..1024, kv_heads 1..4096, head_dim 3..1024");
    layers_ = layers, kv_heads_ = kv_heads, head_dim_ = head_dim;
    tokens_.assign(size_t(layers), 0);
    query_tokens_.assign(size_t(layers), 0);
    const size_t n = size_t(layers) * size_t(kv_heads) * size_t(head_dim);
    for (auto* v : {&key_sum_, &key_sq_, &value_sum_, &value_sq_, &query_sq_}) v->assign(n, 0.0);
}

void Calibration::check_layer(int layer, const char* what) const {
    if (empty()) fail(std::string(what) + ": the calibration has no shape (default-constructed)");
    if (layer < 0 || layer >= layers_)
        fail(std::string(what) + ": layer " + std::to_string(layer) + " out of range [0, " + std::to_string(layers_) + ")");
}

uint64_t Calibration::tokens(int layer) const {
    check_layer(layer, "tokens");
    return tokens_[size_t(layer)];
}

uint64_t Calibration::query_tokens(int layer) const {
    check_layer(layer, "query_tokens");
    return query_tokens_[size_t(layer)];
}

bool Calibration::complete() const {
    return !empty() && std::all_of(tokens_.begin(), tokens_.end(), [](uint64_t n) { return n > 0; });
}

void Calibration::add(int layer, std::span<const float> keys, std::span<const float> values) {
    check_layer(layer, "add");
    const size_t row = size_t(kv_heads_) * head_dim_;
    if (keys.empty() || keys.size() % row)
        fail("add: keys have " + std::to_string(keys.size()) +
             " floats, expected a positive multiple of kv_heads * head_dim = " + std::to_string(row));
    if (values.size() != keys.size())
        fail("add: values have " + std::to_string(values.size()) + " floats, keys " + std::to_string(keys.size()));
    for (size_t i = 0; i < keys.size(); ++i)
        if (!std::isfinite(keys[i]) || !std::isfinite(values[i]))
            fail(std::string("add: non-finite ") + (std::isfinite(keys[i]) ? "value" : "key") + " at token " +
                 std::to_string(i / row) + ", kv head " + std::to_string(i % row / head_dim_) + ", channel " +
                 std::to_string(i % head_dim_));
    const size_t n = keys.size() / row, base = index(layer, 0);
    for (size_t t = 0; t < n; ++t)
        for (size_t c = 0; c < row; ++c) {
            const double k = keys[t * row + c], v = values[t * row + c];
            key_sum_[base + c] += k, key_sq_[base + c] += k * k;
            value_sum_[base + c] += v, value_sq_[base + c] += v * v;
        }
    tokens_[size_t(layer)] += n;
}

void Calibration::add_queries(int layer, int heads, std::span<const float> queries) {
    check_layer(layer, "add_queries");
    if (heads < kv_heads_ || heads % kv_heads_)
        fail("add_queries: heads " + std::to_string(heads) + " must be a positive multiple of kv_heads " +
             std::to_string(kv_heads_));
    const size_t row = size_t(heads) * head_dim_;
    if (queries.empty() || queries.size() % row)
        fail("add_queries: queries have " + std::to_string(queries.size()) +
             " floats, expected a positive multiple of heads * head_dim = " + std::to_string(row));
    for (size_t i = 0; i < queries.size(); ++i)
        if (!std::isfinite(queries[i])) fail("add_queries: non-finite query at token " + std::to_string(i / row));
    const int r = heads / kv_heads_;
    const size_t n = queries.size() / row, base = index(layer, 0);
    for (size_t t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h)
            for (int j = 0; j < head_dim_; ++j) {
                const double q = queries[t * row + size_t(h) * head_dim_ + j];
                query_sq_[base + size_t(h / r) * head_dim_ + j] += q * q;
            }
    query_tokens_[size_t(layer)] += n;
}

std::vector<double> Calibration::average(const std::vector<double>& sums, int layer, int kv_head, uint64_t n) const {
    check_layer(layer, "statistics");
    if (kv_head < 0 || kv_head >= kv_heads_)
        fail("kv head " + std::to_string(kv_head) + " out of range [0, " + std::to_string(kv_heads_) + ")");
    std::vector<double> out(static_cast<size_t>(head_dim_), 0.0);
    if (n == 0) return out;
    const size_t base = index(layer, kv_head);
    for (int j = 0; j < head_dim_; ++j) out[size_t(j)] = sums[base + size_t(j)] / double(n);
    return out;
}

std::vector<double> Calibration::key_mean(int layer, int kv_head) const {
    return average(key_sum_, layer, kv_head, layers_ ? tokens(layer) : 0);
}
std::vector<double> Calibration::value_mean(int layer, int kv_head) const {
    return average(value_sum_, layer, kv_head, layers_ ? tokens(layer) : 0);
}
std::vector<double> Calibration::key_mean_square(int layer, int kv_head) const {
    return average(key_sq_, layer, kv_head, layers_ ? tokens(layer) : 0);
}
std::vector<double> Calibration::value_mean_square(int layer, int kv_head) const {
    return average(value_sq_, layer, kv_head, layers_ ? tokens(layer) : 0);
}
std::vector<double> Calibration::query_mean_square(int layer, int kv_head) const {
    return average(query_sq_, layer, kv_head, layers_ ? query_tokens(layer) : 0);
}

void Calibration::set_sensitivity(int layer, double keys, double values) {
    check_layer(layer, "set_sensitivity");
    if (!std::isfinite(keys) || !std::isfinite(values) || keys < 0 || values < 0)
        fail("set_sensitivity: sensitivities must be finite and >= 0");
    if (key_sens_.empty()) key_sens_.assign(size_t(layers_), 0.0), value_sens_.assign(size_t(layers_), 0.0);
    key_sens_[size_t(layer)] = keys;
    value_sens_[size_t(layer)] = values;
}

double Calibration::key_sensitivity(int layer) const {
    check_layer(layer, "key_sensitivity");
    return key_sens_.empty() ? 0.0 : key_sens_[size_t(layer)];
}

double Calibration::value_sensitivity(int layer) const {
    check_layer(layer, "value_sensitivity");
    return value_sens_.empty() ? 0.0 : value_sens_[size_t(layer)];
}

std::vector<int> Calibration::high_channels(int layer, bool keys, int count, bool centred, int kv_head) const {
    check_layer(layer, "high_channels");
    if (count < 0 || count > head_dim_)
        fail("high_channels: count " + std::to_string(count) + " out of range [0, " + std::to_string(head_dim_) + "]");
    // E[(x - m)^2] = E[x^2] - 2 m E[x] + m^2 with m the stored offset (the mean, or 0).
    std::vector<double> energy(static_cast<size_t>(head_dim_), 0.0);
    if (kv_head < -1 || kv_head >= kv_heads_)
        fail("high_channels: kv head " + std::to_string(kv_head) + " out of range [-1, " + std::to_string(kv_heads_) + ")");
    for (int h = 0; h < kv_heads_; ++h) {
        if (kv_head >= 0 && h != kv_head) continue;
        const auto mean = keys ? key_mean(layer, h) : value_mean(layer, h);
        const auto sq = keys ? key_mean_square(layer, h) : value_mean_square(layer, h);
        for (int j = 0; j < head_dim_; ++j) {
            const double m = centred ? mean[size_t(j)] : 0.0;
            energy[size_t(j)] += std::max(0.0, sq[size_t(j)] - 2 * m * mean[size_t(j)] + m * m);
        }
    }
    std::vector<int> idx(static_cast<size_t>(head_dim_));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return energy[size_t(a)] > energy[size_t(b)]; });
    idx.resize(size_t(count));
    std::sort(idx.begin(), idx.end());
    return idx;
}

// ---------------------------------------------------------------------------------------------
// Format (little-endian): "TQKVCALI" u32 version (1) u32 layers, kv_heads, head_dim
//   per layer: u64 tokens, u64 query tokens
//   f64 [layers][kv_heads][head_dim] x 5: key sums, key squares, value sums, value squares, query squares
//   version 2: u32 has sensitivities (0/1), then f64 [layers] key and value sensitivities if 1
//   u32 CRC-32 of every byte before it.

std::vector<uint8_t> Calibration::save() const {
    if (empty()) fail("save: the calibration has no shape (default-constructed)");
    detail::ByteWriter w;
    w.bytes(kMagic, 8);
    w.u32(kVersion);
    w.u32(uint32_t(layers_));
    w.u32(uint32_t(kv_heads_));
    w.u32(uint32_t(head_dim_));
    for (int l = 0; l < layers_; ++l) {
        w.u64(tokens_[size_t(l)]);
        w.u64(query_tokens_[size_t(l)]);
    }
    for (const auto* v : {&key_sum_, &key_sq_, &value_sum_, &value_sq_, &query_sq_})
        for (double x : *v) w.f64(x);
    w.u32(has_sensitivity() ? 1 : 0);
    for (const auto* v : {&key_sens_, &value_sens_})
        for (double x : *v) w.f64(x);
    w.crc();
    return std::move(w.out);
}

Calibration Calibration::load(std::span<const uint8_t> bytes) {
    const std::string prefix = "tqkv calibration: load: ";
    if (bytes.size() < 8 + 16 + 4) fail("load: truncated data (" + std::to_string(bytes.size()) + " bytes)");
    if (std::memcmp(bytes.data(), kMagic, 8) != 0) fail("load: not a tqkv calibration (bad magic)");
    detail::ByteReader r(bytes.data(), bytes.size() - 4, prefix);
    r.take(8);
    const uint32_t version = r.u32();
    if (version < 1 || version > kVersion)
        fail("load: unsupported format version " + std::to_string(version) + " (this build reads versions 1.." +
             std::to_string(kVersion) + ")");
    detail::ByteReader tail(bytes.data() + bytes.size() - 4, 4, prefix);
    if (tail.u32() != detail::crc32(bytes.data(), bytes.size() - 4)) fail("load: CRC mismatch: the data is corrupted");
    const uint32_t layers = r.u32(), kv_heads = r.u32(), head_dim = r.u32();
    if (layers < 1 || layers > 1024 || kv_heads < 1 || kv_heads > 4096 || head_dim < 3 || head_dim > 1024)
        fail("load: implausible shape (layers " + std::to_string(layers) + ", kv_heads " + std::to_string(kv_heads) +
             ", head_dim " + std::to_string(head_dim) + ")");
    // Every size is checked against the bytes present before anything is allocated from it.
    const uint64_t n = uint64_t(layers) * kv_heads * head_dim;
    const uint64_t need = uint64_t(layers) * 16 + 5 * n * 8 + (version >= 2 ? 4 : 0);
    if (need != r.left() && !(version >= 2 && need + 16 * uint64_t(layers) == r.left()))
        fail("load: the payload has " + std::to_string(r.left()) + " bytes, the shape needs " + std::to_string(need));
    Calibration c(static_cast<int>(layers), static_cast<int>(kv_heads), static_cast<int>(head_dim));
    for (uint32_t l = 0; l < layers; ++l) {
        c.tokens_[l] = r.u64();
        c.query_tokens_[l] = r.u64();
        if (c.tokens_[l] > (uint64_t(1) << 40) || c.query_tokens_[l] > (uint64_t(1) << 40))
            fail("load: implausible token count in layer " + std::to_string(l));
    }
    for (auto* v : {&c.key_sum_, &c.key_sq_, &c.value_sum_, &c.value_sq_, &c.query_sq_})
        for (double& x : *v) {
            x = r.f64();
            if (!std::isfinite(x)) fail("load: non-finite statistic");
        }
    if (version >= 2) {
        const uint32_t has = r.u32();
        if (has > 1) fail("load: bad sensitivity flag " + std::to_string(has));
        if ((has == 1) != (r.left() == 16 * uint64_t(layers))) fail("load: the sensitivities do not match their flag");
        if (has) {
            std::vector<double> ks(layers), vs(layers);
            for (auto* v : {&ks, &vs})
                for (double& x : *v)
                    if (x = r.f64(); !std::isfinite(x) || x < 0) fail("load: a sensitivity is negative or not finite");
            for (uint32_t l = 0; l < layers; ++l) c.set_sensitivity(int(l), ks[l], vs[l]);
        }
    }
    for (size_t i = 0; i < size_t(n); ++i) {
        const size_t l = i / (size_t(kv_heads) * head_dim);
        const auto nt = double(c.tokens_[l]);
        // Sums of squares are non-negative, and zero with no tokens (so are the sums).
        if (c.key_sq_[i] < 0 || c.value_sq_[i] < 0 || c.query_sq_[i] < 0)
            fail("load: negative sum of squares in layer " + std::to_string(l));
        if (c.tokens_[l] == 0 && (c.key_sum_[i] != 0 || c.key_sq_[i] != 0 || c.value_sum_[i] != 0 || c.value_sq_[i] != 0))
            fail("load: statistics without tokens in layer " + std::to_string(l));
        if (c.query_tokens_[l] == 0 && c.query_sq_[i] != 0) fail("load: query statistics without queries in layer " + std::to_string(l));
        // Cauchy-Schwarz: sum^2 <= n * sum of squares (with rounding slack).
        for (auto [s, q] : {std::pair{c.key_sum_[i], c.key_sq_[i]}, std::pair{c.value_sum_[i], c.value_sq_[i]}})
            if (s * s > nt * q * (1 + 1e-9) + 1e-300) fail("load: inconsistent statistics in layer " + std::to_string(l));
    }
    return c;
}

}  // namespace tqkv
