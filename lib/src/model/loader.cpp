// config.json and safetensors loading for the Llama runner.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "model/json.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/model.hpp"

namespace tqkv {

using detail::JsonValue;

namespace {

[[noreturn]] void cfg_fail(const std::string& msg) { throw std::invalid_argument("config.json: " + msg); }

std::vector<uint8_t> read_file(const std::string& path, const std::string& what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument(what + ": cannot open " + path);
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    if (size < 0) throw std::invalid_argument(what + ": cannot read " + path);
    f.seekg(0);
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    if (size > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), size))
        throw std::invalid_argument(what + ": cannot read " + path);
    return bytes;
}

int get_int(const JsonValue& root, const char* key, bool required, int fallback = 0) {
    const JsonValue* v = root.find(key);
    if (!v || v->type == JsonValue::Type::Null) {
        if (required) cfg_fail(std::string("missing \"") + key + "\"");
        return fallback;
    }
    if (v->type != JsonValue::Type::Number || !v->integral)
        cfg_fail(std::string("\"") + key + "\" must be an integer, got " +
                 (v->type == JsonValue::Type::Number ? v->str : JsonValue::type_name(v->type)));
    if (v->num < 1 || v->num > 1e9) cfg_fail(std::string("\"") + key + "\" = " + v->str + " is out of range");
    return int(v->num);
}

double get_double(const JsonValue& root, const char* key, double fallback) {
    const JsonValue* v = root.find(key);
    if (!v || v->type == JsonValue::Type::Null) return fallback;
    if (v->type != JsonValue::Type::Number)
        cfg_fail(std::string("\"") + key + "\" must be a number, got " + JsonValue::type_name(v->type));
    return v->num;
}

bool get_bool(const JsonValue& root, const char* key, bool fallback) {
    const JsonValue* v = root.find(key);
    if (!v || v->type == JsonValue::Type::Null) return fallback;
    if (v->type != JsonValue::Type::Bool)
        cfg_fail(std::string("\"") + key + "\" must be true or false, got " + JsonValue::type_name(v->type));
    return v->b;
}

// A byte count for a message; it may exceed size_t (shapes of 1e12 x 1e12 are rejected, not computed).
std::string json_number(double x) {
    std::ostringstream o;
    o.precision(15);  // byte counts up to 1e15 (the offsets limit) print exactly
    o << x;
    return o.str();
}

size_t dtype_size(const std::string& dt) {
    if (dt == "F32") return 4;
    if (dt == "F16" || dt == "BF16") return 2;
    return 0;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// config.json

LlamaConfig LlamaConfig::parse(std::string_view text) {
    const JsonValue root = detail::parse_json(text, "config.json");
    if (!root.is_object()) cfg_fail("the document is not a JSON object");
    LlamaConfig c;
    if (const JsonValue* mt = root.find("model_type")) {
        if (mt->type != JsonValue::Type::String) cfg_fail("\"model_type\" must be a string");
        if (mt->str != "llama") cfg_fail("model_type \"" + mt->str + "\" is not supported (llama only)");
    }
    c.hidden_size = get_int(root, "hidden_size", true);
    c.num_hidden_layers = get_int(root, "num_hidden_layers", true);
    c.num_attention_heads = get_int(root, "num_attention_heads", true);
    c.num_key_value_heads = get_int(root, "num_key_value_heads", false, c.num_attention_heads);
    c.intermediate_size = get_int(root, "intermediate_size", true);
    c.vocab_size = get_int(root, "vocab_size", true);
    c.max_position_embeddings = get_int(root, "max_position_embeddings", false, 2048);
    if (c.hidden_size % c.num_attention_heads != 0 && !root.find("head_dim"))
        cfg_fail("hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                 std::to_string(c.num_attention_heads) + " and there is no \"head_dim\"");
    c.head_dim = get_int(root, "head_dim", false, c.hidden_size / c.num_attention_heads);
    c.rope_theta = get_double(root, "rope_theta", 10000.0);
    c.rms_norm_eps = get_double(root, "rms_norm_eps", 1e-6);
    c.tie_word_embeddings = get_bool(root, "tie_word_embeddings", false);
    if (const JsonValue* act = root.find("hidden_act")) {
        if (act->type != JsonValue::Type::String) cfg_fail("\"hidden_act\" must be a string");
        if (act->str != "silu") cfg_fail("hidden_act \"" + act->str + "\" is not supported (silu only)");
    }
    if (const JsonValue* rs = root.find("rope_scaling"); rs && rs->type != JsonValue::Type::Null)
        cfg_fail("\"rope_scaling\" is not supported (plain RoPE only)");
    for (const char* key : {"attention_bias", "mlp_bias"})
        if (get_bool(root, key, false)) cfg_fail(std::string("\"") + key + "\": biases are not supported");
    c.validate();
    return c;
}

LlamaConfig LlamaConfig::load(const std::string& path) {
    const auto bytes = read_file(path, "config.json");
    return parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

void LlamaConfig::validate() const {
    auto positive = [](int v, const char* name) {
        if (v < 1) cfg_fail(std::string(name) + " must be positive, got " + std::to_string(v));
    };
    positive(hidden_size, "hidden_size");
    positive(num_hidden_layers, "num_hidden_layers");
    positive(num_attention_heads, "num_attention_heads");
    positive(num_key_value_heads, "num_key_value_heads");
    positive(head_dim, "head_dim");
    positive(intermediate_size, "intermediate_size");
    positive(vocab_size, "vocab_size");
    positive(max_position_embeddings, "max_position_embeddings");
    if (num_attention_heads % num_key_value_heads != 0)
        cfg_fail("num_attention_heads " + std::to_string(num_attention_heads) +
                 " is not a multiple of num_key_value_heads " + std::to_string(num_key_value_heads));
    if (head_dim % 2 != 0) cfg_fail("head_dim " + std::to_string(head_dim) + " must be even (RoPE pairs)");
    if (head_dim < 3 || head_dim > 1024) cfg_fail("head_dim " + std::to_string(head_dim) + " out of range [4, 1024]");
    if (!(rope_theta > 0) || !std::isfinite(rope_theta)) cfg_fail("rope_theta must be positive");
    if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) cfg_fail("rms_norm_eps must be positive");
    const double params = double(hidden_size) * (double(num_attention_heads + 2 * num_key_value_heads) * head_dim +
                                                 double(num_attention_heads) * head_dim + 3.0 * intermediate_size) *
                          num_hidden_layers + 2.0 * double(vocab_size) * hidden_size;
    if (params > 4e9) cfg_fail("model too large for this runner (" + std::to_string(params) + " parameters)");
}

// ---------------------------------------------------------------------------------------------
// safetensors

Safetensors Safetensors::parse(std::vector<uint8_t> bytes, const std::string& what) {
    auto fail = [&](const std::string& msg) -> void { throw std::invalid_argument(what + ": " + msg); };
    if (bytes.size() < 8) fail("file of " + std::to_string(bytes.size()) + " bytes is too short for the 8-byte header length");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[size_t(i)];
    if (hlen == 0 || hlen > bytes.size() - 8)
        fail("bad header length " + std::to_string(hlen) + " (file has " + std::to_string(bytes.size() - 8) +
             " bytes after the length)");
    if (hlen > 100u << 20) fail("header length " + std::to_string(hlen) + " exceeds 100 MB");
    const std::string_view header(reinterpret_cast<const char*>(bytes.data()) + 8, size_t(hlen));
    const JsonValue root = detail::parse_json(header, what + " header");
    if (!root.is_object()) fail("the header is not a JSON object");
    Safetensors st;
    st.data_ = 8 + size_t(hlen);
    st.what_ = what;
    const size_t data_size = bytes.size() - st.data_;
    for (size_t member = 0; member < root.keys.size(); ++member) {
        const std::string& name = root.keys[member];
        const JsonValue& v = root.values[member];
        if (name == "__metadata__") continue;
        const std::string t = "tensor \"" + name + "\"";
        if (!v.is_object()) fail(t + ": entry is not an object");
        const JsonValue* dt = v.find("dtype");
        const JsonValue* sh = v.find("shape");
        const JsonValue* off = v.find("data_offsets");
        if (!dt || dt->type != JsonValue::Type::String) fail(t + ": missing \"dtype\"");
        if (!sh || sh->type != JsonValue::Type::Array) fail(t + ": missing \"shape\"");
        if (!off || off->type != JsonValue::Type::Array || off->arr.size() != 2) fail(t + ": missing \"data_offsets\" [begin, end]");
        SafetensorInfo info;
        info.name = name;
        info.dtype = dt->str;
        const size_t es = dtype_size(info.dtype);
        if (!es) fail(t + ": unsupported dtype " + info.dtype + " (F32, F16, BF16)");
        double elems = 1;
        for (const auto& d : sh->arr) {
            if (d.type != JsonValue::Type::Number || !d.integral || d.num < 0 || d.num > 1e12)
                fail(t + ": bad shape entry");
            info.shape.push_back(int64_t(d.num));
            elems *= d.num;
        }
        for (const auto& o : off->arr)
            if (o.type != JsonValue::Type::Number || !o.integral || o.num < 0 || o.num > 1e15) fail(t + ": bad data_offsets");
        info.begin = size_t(off->arr[0].num);
        info.end = size_t(off->arr[1].num);
        if (info.end < info.begin) fail(t + ": data_offsets end < begin");
        if (info.end > data_size)
            fail(t + ": data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                 ") past the end of the data (" + std::to_string(data_size) + " bytes)");
        if (double(info.end - info.begin) != elems * double(es))
            fail(t + ": " + std::to_string(info.end - info.begin) + " bytes for shape " + shape_str(info.shape) + " of " +
                 info.dtype + " (needs " + json_number(elems * double(es)) + ")");
        st.tensors_.push_back(std::move(info));
    }
    // Overlapping tensors mean a corrupted header.
    std::vector<std::pair<size_t, size_t>> ranges;
    for (const auto& t : st.tensors_)
        if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second) fail("tensor data ranges overlap");
    st.bytes_ = std::move(bytes);
    return st;
}

Safetensors Safetensors::load(const std::string& path) { return parse(read_file(path, "safetensors"), path); }

const SafetensorInfo* Safetensors::find(const std::string& name) const {
    for (const auto& t : tensors_)
        if (t.name == name) return &t;
    return nullptr;
}

const SafetensorInfo& Safetensors::checked(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorInfo* t = find(name);
    if (!t) throw std::invalid_argument(what_ + ": missing tensor \"" + name + "\"");
    if (t->shape != shape)
        throw std::invalid_argument(what_ + ": tensor \"" + name + "\" has shape " + shape_str(t->shape) +
                                    ", the config implies " + shape_str(shape));
    return *t;
}

std::vector<float> Safetensors::to_float(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorInfo* t = &checked(name, shape);
    const uint8_t* p = bytes_.data() + data_ + t->begin;
    const size_t es = dtype_size(t->dtype), n = (t->end - t->begin) / es;
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
        if (t->dtype == "F32") {
            uint32_t u = uint32_t(p[4 * i]) | uint32_t(p[4 * i + 1]) << 8 | uint32_t(p[4 * i + 2]) << 16 |
                         uint32_t(p[4 * i + 3]) << 24;
            std::memcpy(&out[i], &u, 4);
        } else {
            const uint16_t h = uint16_t(p[2 * i] | p[2 * i + 1] << 8);
            if (t->dtype == "F16") {
                out[i] = half_to_float(h);
            } else {
                const uint32_t u = uint32_t(h) << 16;
                std::memcpy(&out[i], &u, 4);
            }
        }
        if (!std::isfinite(out[i]))
            throw std::invalid_argument(what_ + ": tensor \"" + name + "\" holds a non-finite value at element " +
                                        std::to_string(i));
    }
    return out;
}

WeightMatrix Safetensors::to_matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const SafetensorInfo& t = checked(name, {rows, cols});
    WeightMatrix m;
    m.rows = size_t(rows), m.cols = size_t(cols);
    if (t.dtype != "F16") {
        m.f32 = to_float(name, {rows, cols});
        return m;
    }
    const uint8_t* p = bytes_.data() + data_ + t.begin;
    m.f16.resize(m.rows * m.cols);
    for (size_t i = 0; i < m.f16.size(); ++i) {
        m.f16[i] = uint16_t(p[2 * i] | p[2 * i + 1] << 8);
        if ((m.f16[i] & 0x7c00) == 0x7c00)  // exponent all ones: inf or NaN
            throw std::invalid_argument(what_ + ": tensor \"" + name + "\" holds a non-finite value at element " +
                                        std::to_string(i));
    }
    return m;
}

// ---------------------------------------------------------------------------------------------
// WeightMatrix

float WeightMatrix::at(size_t r, size_t c) const {
    const size_t i = r * cols + c;
    return is_f16() ? half_to_float(f16[i]) : f32[i];
}

std::vector<float> WeightMatrix::to_float() const {
    if (!is_f16()) return f32;
    std::vector<float> out(f16.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = half_to_float(f16[i]);
    return out;
}

// ---------------------------------------------------------------------------------------------
// LlamaModel

LlamaModel LlamaModel::from_parts(const LlamaConfig& cfg, const Safetensors& st) {
    cfg.validate();
    LlamaModel m;
    m.cfg_ = cfg;
    const int64_t H = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
    const int64_t QD = int64_t(cfg.num_attention_heads) * cfg.head_dim, KD = int64_t(cfg.num_key_value_heads) * cfg.head_dim;
    m.embed_ = st.to_float("model.embed_tokens.weight", {V, H});
    m.norm_ = st.to_float("model.norm.weight", {H});
    // Tied embeddings (as Hugging Face ties them): the output layer is the embedding table, a
    // stored lm_head.weight is ignored.
    if (!cfg.tie_word_embeddings) {
        if (!st.find("lm_head.weight"))
            throw std::invalid_argument("safetensors: missing tensor \"lm_head.weight\" (tie_word_embeddings is false)");
        m.output_ = st.to_matrix("lm_head.weight", V, H);
    } else {
        m.output_ = st.to_matrix("model.embed_tokens.weight", V, H);
    }
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        LlamaLayer L;
        L.attn_norm = st.to_float(p + "input_layernorm.weight", {H});
        L.mlp_norm = st.to_float(p + "post_attention_layernorm.weight", {H});
        L.wq = st.to_matrix(p + "self_attn.q_proj.weight", QD, H);
        L.wk = st.to_matrix(p + "self_attn.k_proj.weight", KD, H);
        L.wv = st.to_matrix(p + "self_attn.v_proj.weight", KD, H);
        L.wo = st.to_matrix(p + "self_attn.o_proj.weight", H, QD);
        L.w_gate = st.to_matrix(p + "mlp.gate_proj.weight", I, H);
        L.w_up = st.to_matrix(p + "mlp.up_proj.weight", I, H);
        L.w_down = st.to_matrix(p + "mlp.down_proj.weight", H, I);
        m.layers_.push_back(std::move(L));
    }
    return m;
}

LlamaModel LlamaModel::load(const std::string& dir) {
    const LlamaConfig cfg = LlamaConfig::load(dir + "/config.json");
    const Safetensors st = Safetensors::load(dir + "/model.safetensors");
    return from_parts(cfg, st);
}

size_t LlamaModel::parameters() const {
    size_t n = embed_.size() + norm_.size() + (tied() ? 0 : output_.size());
    for (const auto& L : layers_)
        n += L.attn_norm.size() + L.mlp_norm.size() + L.wq.size() + L.wk.size() + L.wv.size() + L.wo.size() +
             L.w_gate.size() + L.w_up.size() + L.w_down.size();
    return n;
}

size_t LlamaModel::weight_bytes() const {
    size_t n = (embed_.size() + norm_.size()) * sizeof(float) + output_.bytes();
    for (const auto& L : layers_)
        n += (L.attn_norm.size() + L.mlp_norm.size()) * sizeof(float) + L.wq.bytes() + L.wk.bytes() + L.wv.bytes() +
             L.wo.bytes() + L.w_gate.bytes() + L.w_up.bytes() + L.w_down.bytes();
    return n;
}

}  // namespace tqkv
