#include "tqkv/kvdump.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "tqkv/fp16.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

namespace {

[[noreturn]] void bad(const std::string& what, const std::string& msg) {
    throw std::invalid_argument("tqkv: " + what + ": " + msg);
}

// Value of `key` in the header dict, as the raw text up to the next top-level comma.
std::string dict_value(const std::string& header, const std::string& key, const std::string& what) {
    const auto k = header.find("'" + key + "'");
    if (k == std::string::npos) bad(what, "header has no '" + key + "'");
    auto p = header.find(':', k);
    if (p == std::string::npos) bad(what, "malformed header");
    ++p;
    while (p < header.size() && header[p] == ' ') ++p;
    int depth = 0;
    size_t e = p;
    for (; e < header.size(); ++e) {
        const char c = header[e];
        if (c == '(') ++depth;
        if (c == ')') --depth;
        if ((c == ',' || c == '}') && depth == 0) break;
    }
    return header.substr(p, e - p);
}

}  // namespace

NpyArray parse_npy(std::span<const uint8_t> b, const std::string& what) {
    if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) bad(what, "not a .npy file (bad magic)");
    const int major = b[6];
    size_t header_len, offset;
    if (major == 1) {
        header_len = size_t(b[8]) | size_t(b[9]) << 8;
        offset = 10;
    } else if (major == 2 || major == 3) {
        if (b.size() < 12) bad(what, "truncated header");
        header_len = size_t(b[8]) | size_t(b[9]) << 8 | size_t(b[10]) << 16 | size_t(b[11]) << 24;
        offset = 12;
    } else {
        bad(what, "unsupported .npy version " + std::to_string(major));
    }
    if (header_len > b.size() - offset) bad(what, "truncated header");
    const std::string header(reinterpret_cast<const char*>(b.data() + offset), header_len);
    offset += header_len;

    NpyArray a;
    std::string descr = dict_value(header, "descr", what);
    if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) bad(what, "malformed descr");
    descr = descr.substr(1, descr.size() - 2);
    if (descr == "<f4" || descr == "=f4") a.dtype = "<f4";
    else if (descr == "<f2" || descr == "=f2") a.dtype = "<f2";
    else if (descr == "<i4" || descr == "=i4") a.dtype = "<i4";
    else if (descr == "<i8" || descr == "=i8") a.dtype = "<i8";
    else bad(what, "dtype " + descr + " not supported (float32, float16, int32 or int64, little-endian)");
    const std::string fortran = dict_value(header, "fortran_order", what);
    if (fortran != "False") bad(what, "Fortran-order arrays are not supported (save C order)");
    const std::string shape = dict_value(header, "shape", what);
    if (shape.empty() || shape.front() != '(' || shape.back() != ')') bad(what, "malformed shape " + shape);
    std::stringstream ss(shape.substr(1, shape.size() - 2));
    std::string item;
    size_t count = 1;
    while (std::getline(ss, item, ',')) {
        const auto first = item.find_first_not_of(' ');
        if (first == std::string::npos) continue;
        item = item.substr(first);
        size_t used = 0;
        unsigned long long v = 0;
        try {
            v = std::stoull(item, &used);
        } catch (const std::exception&) {
            bad(what, "malformed shape " + shape);
        }
        if (used != item.find_last_not_of(' ') + 1) bad(what, "malformed shape " + shape);
        // At most 2^40 elements (and what size_t can address on 32-bit targets such as wasm32).
        const uint64_t limit = std::min<uint64_t>(uint64_t(1) << 40, SIZE_MAX / 4);
        if (v != 0 && uint64_t(count) > limit / v) bad(what, "shape " + shape + " is too large");
        count *= size_t(v);
        a.shape.push_back(size_t(v));
    }
    const size_t item_bytes = a.dtype == "<i8" ? 8 : a.dtype == "<f4" || a.dtype == "<i4" ? 4 : 2;
    if (b.size() - offset != count * item_bytes)
        bad(what, "data has " + std::to_string(b.size() - offset) + " bytes, shape " + shape + " needs " +
                      std::to_string(count * item_bytes));
    a.data.resize(count);
    const uint8_t* p = b.data() + offset;
    for (size_t i = 0; i < count; ++i) {
        if (a.dtype == "<i4" || a.dtype == "<i8") {  // integers (token ids): exact in float32 below 2^24
            uint64_t u = 0;
            for (size_t k = 0; k < item_bytes; ++k) u |= uint64_t(p[item_bytes * i + k]) << (8 * k);
            const int64_t v = item_bytes == 4 ? int64_t(int32_t(uint32_t(u))) : int64_t(u);
            if (v > (1 << 24) || v < -(1 << 24)) bad(what, "integer " + std::to_string(v) + " is beyond 2^24 (not exact as float)");
            a.data[i] = float(v);
        } else if (item_bytes == 4) {
            const uint32_t u = uint32_t(p[4 * i]) | uint32_t(p[4 * i + 1]) << 8 | uint32_t(p[4 * i + 2]) << 16 |
                               uint32_t(p[4 * i + 3]) << 24;
            std::memcpy(&a.data[i], &u, 4);
        } else {
            a.data[i] = half_to_float(uint16_t(p[2 * i] | p[2 * i + 1] << 8));
        }
    }
    return a;
}

NpyArray load_npy(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument("tqkv: cannot open " + path);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return parse_npy(bytes, path);
}

std::vector<uint8_t> make_npy(const std::vector<size_t>& shape, const float* data, bool float16) {
    std::string header = "{'descr': '" + std::string(float16 ? "<f2" : "<f4") + "', 'fortran_order': False, 'shape': (";
    size_t count = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
        header += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
        if (i + 1 < shape.size()) header += " ";
        count *= shape[i];
    }
    header += "), }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::vector<uint8_t> out(10 + header.size());
    const uint8_t magic[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, uint8_t(header.size()), uint8_t(header.size() >> 8)};
    std::memcpy(out.data(), magic, sizeof magic);
    std::memcpy(out.data() + sizeof magic, header.data(), header.size());
    for (size_t i = 0; i < count; ++i) {
        if (float16) {
            const uint16_t h = float_to_half(data[i]);
            out.push_back(uint8_t(h));
            out.push_back(uint8_t(h >> 8));
        } else {
            uint32_t u;
            std::memcpy(&u, &data[i], 4);
            for (int k = 0; k < 4; ++k) out.push_back(uint8_t(u >> (8 * k)));
        }
    }
    return out;
}

KvDump load_kv_dump(const std::string& dir) {
    KvDump d;
    d.source = dir;
    const NpyArray k = load_npy(dir + "/keys.npy"), v = load_npy(dir + "/values.npy"), q = load_npy(dir + "/queries.npy");
    if (k.shape.size() != 4) bad(dir + "/keys.npy", "expected shape [layers, kv_heads, tokens, head_dim]");
    if (v.shape != k.shape) bad(dir + "/values.npy", "shape differs from keys.npy");
    if (q.shape.size() != 4 || q.shape[0] != k.shape[0] || q.shape[2] != k.shape[2] || q.shape[3] != k.shape[3])
        bad(dir + "/queries.npy", "expected shape [layers, heads, tokens, head_dim] matching keys.npy");
    if (k.shape[1] == 0 || q.shape[1] % k.shape[1] != 0)
        bad(dir + "/queries.npy", "query heads must be a multiple of the KV heads");
    if (k.shape[0] == 0 || k.shape[2] == 0 || k.shape[3] < 3 || k.shape[3] > 1024)
        bad(dir + "/keys.npy", "empty dump or head_dim outside [3, 1024]");
    if (k.shape[0] > 4096 || q.shape[1] > 4096) bad(dir, "more than 4096 layers or heads");
    d.layers = int(k.shape[0]);
    d.kv_heads = int(k.shape[1]);
    d.tokens = k.shape[2];
    d.head_dim = int(k.shape[3]);
    d.heads = int(q.shape[1]);
    d.keys = std::move(k.data);
    d.values = std::move(v.data);
    d.queries = std::move(q.data);
    for (const auto* arr : {&d.keys, &d.values, &d.queries})
        for (float x : *arr)
            if (!std::isfinite(x)) bad(dir, "the dump contains NaN or Inf");
    std::ifstream meta(dir + "/meta.json");
    if (meta) d.meta_json.assign((std::istreambuf_iterator<char>(meta)), std::istreambuf_iterator<char>());
    return d;
}

// ---------------------------------------------------------------------------------------------

namespace {

// HF rotate_half RoPE: pairs (j, j + d/2) rotate by angle pos * theta^(-2j/d).
void apply_rope(float* x, int d, size_t pos, float theta) {
    const int half = d / 2;
    for (int j = 0; j < half; ++j) {
        const double angle = double(pos) * std::pow(double(theta), -2.0 * j / d);
        const double c = std::cos(angle), s = std::sin(angle);
        const double a = x[j], b = x[j + half];
        x[j] = float(a * c - b * s);
        x[j + half] = float(b * c + a * s);
    }
}

}  // namespace

std::string describe(const SyntheticConfig& c) {
    std::ostringstream s;
    s << "synthetic data (seed " << c.seed << ": " << c.outlier_channels << " outlier key channels at " << c.outlier_scale << "x, " << c.sinks << " sink token(s), RoPE theta "
      << c.rope_theta << ")";
    return s.str();
}

KvDump make_synthetic(const SyntheticConfig& c) {
    if (c.layers < 1 || c.heads < 1 || c.kv_heads < 1 || c.heads % c.kv_heads || c.head_dim < 4 ||
        c.head_dim % 2 || c.tokens < 1 || c.outlier_channels < 0 || c.outlier_channels > c.head_dim / 2)
        throw std::invalid_argument("tqkv: bad synthetic configuration");
    KvDump d;
    d.layers = c.layers;
    d.heads = c.heads;
    d.kv_heads = c.kv_heads;
    d.head_dim = c.head_dim;
    d.tokens = c.tokens;
    d.source = describe(c);
    const int D = c.head_dim, half = D / 2, group = c.heads / c.kv_heads;
    d.keys.resize(size_t(c.layers) * c.kv_heads * c.tokens * D);
    d.values.resize(d.keys.size());
    d.queries.resize(size_t(c.layers) * c.heads * c.tokens * D);
    Rng rng(c.seed);
    std::vector<float> kscale(D), vscale(D), offset(D), sink_dir(D);
    for (int l = 0; l < c.layers; ++l)
        for (int h = 0; h < c.kv_heads; ++h) {
            for (int j = 0; j < D; ++j) {
                kscale[j] = float(std::exp(0.3 * rng.normal()));
                vscale[j] = float(std::exp(0.2 * rng.normal()));
                offset[j] = 0.0f;
            }
            // Outliers in the lowest-frequency RoPE pairs (the last channels of each half).
            for (int o = 0; o < c.outlier_channels; ++o) {
                const int j = (o % 2 ? D : half) - 1 - o / 2;
                offset[j] = (rng.next() & 1 ? 1.0f : -1.0f) * c.outlier_scale;
            }
            // The sink direction lives in the low-frequency half of each RoPE half, which barely
            // rotates with position, so queries at every position see the sinks.
            double norm = 0;
            for (int j = 0; j < D; ++j) {
                const bool low_freq = (j % half) >= half / 2;
                sink_dir[j] = low_freq ? float(rng.normal()) : 0.0f;
                norm += double(sink_dir[j]) * sink_dir[j];
            }
            for (int j = 0; j < D; ++j) sink_dir[j] = float(sink_dir[j] / std::sqrt(norm));
            for (size_t t = 0; t < c.tokens; ++t) {
                float* k = &d.keys[((size_t(l) * c.kv_heads + h) * c.tokens + t) * D];
                float* v = &d.values[((size_t(l) * c.kv_heads + h) * c.tokens + t) * D];
                const bool sink = t < size_t(c.sinks);
                for (int j = 0; j < D; ++j) {
                    k[j] = float(rng.normal()) * kscale[j] + offset[j] * float(1.0 + 0.1 * rng.normal());
                    v[j] = float(rng.normal()) * vscale[j] * (sink ? 0.1f : 1.0f);
                }
                if (sink)
                    for (int j = 0; j < D; ++j) k[j] += 3.0f * std::sqrt(float(D)) * sink_dir[j];
                apply_rope(k, D, t, c.rope_theta);
            }
            for (int g = 0; g < group; ++g)
                for (size_t t = 0; t < c.tokens; ++t) {
                    float* q = &d.queries[((size_t(l) * c.heads + h * group + g) * c.tokens + t) * D];
                    // Plus a pull towards one of the 8 previous keys (post-RoPE), so attention
                    // is peaked on recent content as well as on the sinks.
                    const size_t target = t > 8 ? t - 1 - rng.below(8) : 0;
                    const float* kt = &d.keys[((size_t(l) * c.kv_heads + h) * c.tokens + target) * D];
                    for (int j = 0; j < D; ++j) q[j] = float(rng.normal()) + 1.5f * sink_dir[j];
                    apply_rope(q, D, t, c.rope_theta);
                    for (int j = 0; j < D; ++j) q[j] += 0.15f * kt[j];
                }
        }
    return d;
}

}  // namespace tqkv
