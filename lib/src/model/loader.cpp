// config.json and safetensors loading for the Llama runner.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <unordered_map>
#include <span>
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

namespace {

[[noreturn]] void unsupported(const std::string& what) { cfg_fail("unsupported: " + what); }

const JsonValue* present(const JsonValue& root, const char* key) {
    const JsonValue* v = root.find(key);
    return v && v->type != JsonValue::Type::Null ? v : nullptr;
}

std::string get_string(const JsonValue& root, const char* key, const std::string& fallback) {
    const JsonValue* v = present(root, key);
    if (!v) return fallback;
    if (v->type != JsonValue::Type::String)
        cfg_fail(std::string("\"") + key + "\" must be a string, got " + JsonValue::type_name(v->type));
    return v->str;
}

// rope_scaling (4.x) or rope_parameters (5.x): {"rope_type" (or the older "type"), "factor", ...}.
RopeScaling parse_rope(const JsonValue& rs, const std::string& field) {
    if (!rs.is_object()) cfg_fail("\"" + field + "\" must be an object");
    RopeScaling r;
    r.type = get_string(rs, "rope_type", get_string(rs, "type", "default"));
    auto number = [&](const char* key, bool required, double fallback) {
        const JsonValue* v = present(rs, key);
        if (!v) {
            if (required) cfg_fail("missing \"" + field + "." + key + "\" (needed by rope_type \"" + r.type + "\")");
            return fallback;
        }
        if (v->type != JsonValue::Type::Number)
            cfg_fail("\"" + field + "." + key + "\" must be a number, got " + JsonValue::type_name(v->type));
        return v->num;
    };
    if (r.type == "default") return r;
    if (r.type == "linear") {
        r.factor = number("factor", true, 1.0);
    } else if (r.type == "llama3") {
        r.factor = number("factor", true, 1.0);
        r.low_freq_factor = number("low_freq_factor", true, 1.0);
        r.high_freq_factor = number("high_freq_factor", true, 4.0);
        r.original_max_position_embeddings = number("original_max_position_embeddings", true, 8192);
    } else {
        unsupported(field + ".rope_type \"" + r.type + "\" (default, linear and llama3 are implemented)");
    }
    return r;
}

}  // namespace

LlamaConfig LlamaConfig::parse(std::string_view text) {
    const JsonValue root = detail::parse_json(text, "config.json");
    if (!root.is_object()) cfg_fail("the document is not a JSON object");
    LlamaConfig c;
    c.model_type = get_string(root, "model_type", "llama");
    if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
        unsupported("model_type \"" + c.model_type + "\" (llama, mistral and qwen2 are implemented)");
    // Features of other architectures that would silently change the numbers if ignored.
    for (const char* key : {"num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
                            "num_experts_per_tok"})
        if (const JsonValue* v = present(root, key); v && !(v->type == JsonValue::Type::Number && v->num == 0))
            unsupported(std::string(key) + " (mixture of experts)");
    for (const char* key : {"kv_lora_rank", "q_lora_rank"})
        if (present(root, key)) unsupported(std::string(key) + " (multi-head latent attention)");
    for (const char* key : {"quantization_config", "attn_logit_softcapping", "final_logit_softcapping",
                            "query_pre_attn_scalar", "hidden_activation", "use_qk_norm", "qk_layernorm",
                            "embedding_multiplier", "logits_scaling", "residual_multiplier", "attention_multiplier"})
        if (const JsonValue* v = present(root, key); v && !(v->type == JsonValue::Type::Bool && !v->b))
            unsupported(key);
    if (const JsonValue* v = present(root, "partial_rotary_factor");
        v && !(v->type == JsonValue::Type::Number && v->num == 1.0))
        unsupported("partial_rotary_factor (RoPE on every channel only)");

    c.hidden_size = get_int(root, "hidden_size", true);
    c.num_hidden_layers = get_int(root, "num_hidden_layers", true);
    c.num_attention_heads = get_int(root, "num_attention_heads", true);
    c.num_key_value_heads = get_int(root, "num_key_value_heads", false, c.num_attention_heads);
    c.intermediate_size = get_int(root, "intermediate_size", true);
    c.vocab_size = get_int(root, "vocab_size", true);
    c.max_position_embeddings = get_int(root, "max_position_embeddings", false, 2048);
    if (c.hidden_size % c.num_attention_heads != 0 && !present(root, "head_dim"))
        cfg_fail("hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                 std::to_string(c.num_attention_heads) + " and there is no \"head_dim\"");
    c.head_dim = get_int(root, "head_dim", false, c.hidden_size / c.num_attention_heads);
    c.rms_norm_eps = get_double(root, "rms_norm_eps", 1e-6);
    c.tie_word_embeddings = get_bool(root, "tie_word_embeddings", false);
    const std::string act = get_string(root, "hidden_act", "silu");
    if (act != "silu" && act != "swish") unsupported("hidden_act \"" + act + "\" (silu only)");

    // RoPE: 4.x writes rope_theta + rope_scaling, 5.x rope_parameters holding both.
    c.rope_theta = get_double(root, "rope_theta", 10000.0);
    const JsonValue* rs = present(root, "rope_scaling");
    const JsonValue* rp = present(root, "rope_parameters");
    if (rs) c.rope_scaling = parse_rope(*rs, "rope_scaling");
    if (rp) {
        if (!rp->is_object()) cfg_fail("\"rope_parameters\" must be an object");
        if (rp->find("full_attention") || rp->find("sliding_attention"))
            unsupported("rope_parameters per layer type");
        const RopeScaling r = parse_rope(*rp, "rope_parameters");
        if (rs && r.type != c.rope_scaling.type)
            cfg_fail("rope_scaling type \"" + c.rope_scaling.type + "\" and rope_parameters type \"" + r.type + "\" disagree");
        c.rope_scaling = r;
        const double theta = get_double(*rp, "rope_theta", c.rope_theta);
        if (present(root, "rope_theta") && theta != c.rope_theta)
            cfg_fail("rope_theta " + json_number(c.rope_theta) + " and rope_parameters.rope_theta " + json_number(theta) +
                     " disagree");
        c.rope_theta = theta;
    }

    // Biases: Llama's attention_bias (q, k, v, o) and mlp_bias; Qwen2 always has q, k, v biases.
    c.attention_bias = get_bool(root, "attention_bias", false);
    c.mlp_bias = get_bool(root, "mlp_bias", false);
    if (c.model_type == "qwen2") {
        c.qkv_bias = true;
        c.attention_bias = false;  // Qwen2's o_proj has no bias whatever the key says
        c.mlp_bias = false;
    }
    if (c.model_type != "llama" && get_bool(root, "mlp_bias", false)) unsupported("mlp_bias for " + c.model_type);

    // Sliding window: Mistral applies it to every layer; Qwen2 only with use_sliding_window (per layer,
    // from max_window_layers on), which no released Qwen2 checkpoint enables.
    if (c.model_type == "mistral") {
        if (const JsonValue* sw = present(root, "sliding_window")) {
            if (sw->type != JsonValue::Type::Number || !sw->integral || sw->num < 1 || sw->num > 1e9)
                cfg_fail("\"sliding_window\" must be a positive integer or null");
            c.sliding_window = int(sw->num);
        }
    } else if (c.model_type == "qwen2" && get_bool(root, "use_sliding_window", false)) {
        unsupported("use_sliding_window (Qwen2 per-layer sliding windows)");
    }
    if (const JsonValue* lt = present(root, "layer_types")) {
        if (lt->type != JsonValue::Type::Array) cfg_fail("\"layer_types\" must be an array");
        for (const auto& t : lt->arr) {
            const bool full = t.type == JsonValue::Type::String && t.str == "full_attention";
            const bool sliding = t.type == JsonValue::Type::String && t.str == "sliding_attention";
            if (!full && !(sliding && c.sliding_window > 0))
                unsupported("layer_types entry " + (t.type == JsonValue::Type::String ? "\"" + t.str + "\"" : "") +
                            " (full_attention, or sliding_attention on a model with sliding_window)");
            if (full && c.sliding_window > 0) unsupported("layer_types mixing full and sliding attention");
        }
    }

    // Precision of the checkpoint as written (tensors carry their own dtype; this only refuses formats
    // the loader cannot read).
    c.dtype = get_string(root, "dtype", get_string(root, "torch_dtype", ""));
    if (!c.dtype.empty() && c.dtype != "float32" && c.dtype != "float16" && c.dtype != "bfloat16" && c.dtype != "auto")
        unsupported("dtype \"" + c.dtype + "\" (float32, float16, bfloat16)");

    // Token ids the tokenizer and the generation loop use.
    if (const JsonValue* b = present(root, "bos_token_id"); b && b->type == JsonValue::Type::Number && b->integral)
        c.bos_token_id = int(b->num);
    if (const JsonValue* e = present(root, "eos_token_id")) {
        if (e->type == JsonValue::Type::Number && e->integral) c.eos_token_ids.push_back(int(e->num));
        else if (e->type == JsonValue::Type::Array)
            for (const auto& x : e->arr)
                if (x.type == JsonValue::Type::Number && x.integral) c.eos_token_ids.push_back(int(x.num));
    }
    c.validate();
    return c;
}

std::vector<float> LlamaConfig::rope_inv_freq() const {
    const int d = head_dim;
    std::vector<float> inv(size_t(d / 2));
    // transformers: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)) in float32.
    for (int i = 0; i < d / 2; ++i) {
        const float e = float(2 * i) / float(d);
        inv[size_t(i)] = 1.0f / float(std::pow(double(float(rope_theta)), double(e)));
    }
    const RopeScaling& r = rope_scaling;
    if (r.type == "linear") {
        for (float& f : inv) f = f / float(r.factor);
    } else if (r.type == "llama3") {
        // _compute_llama3_parameters: wavelengths above original/low_freq_factor are divided by
        // factor, below original/high_freq_factor kept, and in between interpolated smoothly.
        const float factor = float(r.factor), lo = float(r.low_freq_factor), hi = float(r.high_freq_factor);
        const float old_len = float(r.original_max_position_embeddings);
        const float low_freq_wavelen = old_len / lo, high_freq_wavelen = old_len / hi;
        for (float& f : inv) {
            const float wavelen = float(2 * 3.141592653589793) / f;
            if (wavelen > low_freq_wavelen) {
                f = f / factor;
            } else if (!(wavelen < high_freq_wavelen)) {
                const float smooth = (old_len / wavelen - lo) / (hi - lo);
                f = (1 - smooth) * f / factor + smooth * f;
            }
        }
    }
    return inv;
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
    const RopeScaling& r = rope_scaling;
    if (r.type != "default" && r.type != "linear" && r.type != "llama3")
        unsupported("rope_type \"" + r.type + "\" (default, linear and llama3 are implemented)");
    if (!(r.factor > 0) || !std::isfinite(r.factor) || r.factor > 1e6) cfg_fail("rope scaling factor must be in (0, 1e6]");
    if (r.type == "llama3" &&
        (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) || !std::isfinite(r.high_freq_factor) ||
         !(r.original_max_position_embeddings >= 1) || !std::isfinite(r.original_max_position_embeddings)))
        cfg_fail("llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings >= 1");
    if (sliding_window < 0) cfg_fail("sliding_window must be positive or absent");
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

namespace {

// The tensors of one checkpoint, in one file or in several shards.
class TensorSet {
public:
    explicit TensorSet(std::span<const Safetensors> shards) : shards_(shards) {
        if (shards.empty()) throw std::invalid_argument("safetensors: no checkpoint file");
        if (shards.size() == 1) return;
        std::unordered_map<std::string_view, const Safetensors*> seen;  // every name, not only the model's
        for (const auto& s : shards_)
            for (const auto& t : s.tensors())
                if (auto [it, fresh] = seen.emplace(t.name, &s); !fresh)
                    throw std::invalid_argument("safetensors: tensor \"" + t.name + "\" is in two shards (" +
                                                it->second->name() + " and " + s.name() + ")");
    }
    const Safetensors* holder(const std::string& name) const {
        const Safetensors* found = nullptr;
        for (const auto& s : shards_)
            if (s.find(name)) {
                if (found) throw std::invalid_argument("safetensors: tensor \"" + name + "\" is in two shards");
                found = &s;
            }
        return found;
    }
    const Safetensors& at(const std::string& name) const {
        const Safetensors* s = holder(name);
        return s ? *s : shards_.front();  // the front one then reports the missing tensor by name
    }
    std::vector<float> vec(const std::string& name, int64_t n) const { return at(name).to_float(name, {n}); }
    WeightMatrix mat(const std::string& name, int64_t rows, int64_t cols) const { return at(name).to_matrix(name, rows, cols); }

private:
    std::span<const Safetensors> shards_;
};

}  // namespace

LlamaModel LlamaModel::from_parts(const LlamaConfig& cfg, const Safetensors& st) {
    return from_parts(cfg, std::span<const Safetensors>(&st, 1));
}

LlamaModel LlamaModel::from_parts(const LlamaConfig& cfg, std::span<const Safetensors> shards) {
    cfg.validate();
    const TensorSet st(shards);
    LlamaModel m;
    m.cfg_ = cfg;
    const int64_t H = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
    const int64_t QD = int64_t(cfg.num_attention_heads) * cfg.head_dim, KD = int64_t(cfg.num_key_value_heads) * cfg.head_dim;
    m.embed_ = st.at("model.embed_tokens.weight").to_float("model.embed_tokens.weight", {V, H});
    m.norm_ = st.vec("model.norm.weight", H);
    // Tied embeddings (as Hugging Face ties them): the output layer is the embedding table, a
    // stored lm_head.weight is ignored.
    if (!cfg.tie_word_embeddings) {
        if (!st.holder("lm_head.weight"))
            throw std::invalid_argument("safetensors: missing tensor \"lm_head.weight\" (tie_word_embeddings is false)");
        m.output_ = st.mat("lm_head.weight", V, H);
    } else {
        m.output_ = st.mat("model.embed_tokens.weight", V, H);
    }
    const bool qkv_bias = cfg.attention_bias || cfg.qkv_bias;
    for (int l = 0; l < cfg.num_hidden_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        LlamaLayer L;
        L.attn_norm = st.vec(p + "input_layernorm.weight", H);
        L.mlp_norm = st.vec(p + "post_attention_layernorm.weight", H);
        L.wq = st.mat(p + "self_attn.q_proj.weight", QD, H);
        L.wk = st.mat(p + "self_attn.k_proj.weight", KD, H);
        L.wv = st.mat(p + "self_attn.v_proj.weight", KD, H);
        L.wo = st.mat(p + "self_attn.o_proj.weight", H, QD);
        L.w_gate = st.mat(p + "mlp.gate_proj.weight", I, H);
        L.w_up = st.mat(p + "mlp.up_proj.weight", I, H);
        L.w_down = st.mat(p + "mlp.down_proj.weight", H, I);
        if (qkv_bias) {
            L.bq = st.vec(p + "self_attn.q_proj.bias", QD);
            L.bk = st.vec(p + "self_attn.k_proj.bias", KD);
            L.bv = st.vec(p + "self_attn.v_proj.bias", KD);
        }
        if (cfg.attention_bias) L.bo = st.vec(p + "self_attn.o_proj.bias", H);
        if (cfg.mlp_bias) {
            L.b_gate = st.vec(p + "mlp.gate_proj.bias", I);
            L.b_up = st.vec(p + "mlp.up_proj.bias", I);
            L.b_down = st.vec(p + "mlp.down_proj.bias", H);
        }
        // A bias the config does not announce would be silently dropped: refuse it.
        for (const char* b : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
                              "self_attn.o_proj.bias", "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"}) {
            const bool expected = std::string(b).rfind("mlp.", 0) == 0 ? cfg.mlp_bias
                                  : std::string(b) == "self_attn.o_proj.bias" ? cfg.attention_bias
                                                                              : qkv_bias;
            if (!expected && st.holder(p + b))
                throw std::invalid_argument("safetensors: tensor \"" + p + b +
                                            "\" is present but config.json announces no such bias (unsupported: "
                                            "biases the config does not declare)");
        }
        m.layers_.push_back(std::move(L));
    }
    return m;
}

namespace {

bool file_exists(const std::string& path) { return std::ifstream(path, std::ios::binary).good(); }

}  // namespace

SafetensorsIndex SafetensorsIndex::parse(std::string_view json, const std::string& what) {
    const JsonValue root = detail::parse_json(json, what);
    const JsonValue* wm = root.find("weight_map");
    if (!wm || !wm->is_object()) throw std::invalid_argument(what + ": missing object \"weight_map\"");
    SafetensorsIndex index;
    std::unordered_map<std::string_view, size_t> listed;
    for (size_t i = 0; i < wm->values.size(); ++i) {
        const JsonValue& v = wm->values[i];
        const std::string& tensor = wm->keys[i];
        if (v.type != JsonValue::Type::String)
            throw std::invalid_argument(what + ": weight_map values must be file names (\"" + tensor + "\" is not)");
        // Only plain file names in the checkpoint's directory.
        if (v.str.empty() || v.str.find('/') != std::string::npos || v.str.find('\\') != std::string::npos ||
            v.str == "." || v.str == "..")
            throw std::invalid_argument(what + ": weight_map file \"" + v.str + "\" is not a plain file name");
        if (!listed.emplace(tensor, i).second)
            throw std::invalid_argument(what + ": tensor \"" + tensor + "\" is listed twice in weight_map");
        if (std::find(index.files.begin(), index.files.end(), v.str) == index.files.end()) {
            if (index.files.size() == 4096) throw std::invalid_argument(what + ": more than 4096 shard files");
            index.files.push_back(v.str);
        }
        index.weight_map.emplace_back(tensor, v.str);
    }
    if (index.files.empty()) throw std::invalid_argument(what + ": empty weight_map");
    return index;
}

void SafetensorsIndex::check(std::span<const Safetensors> shards, std::span<const std::string> names) const {
    if (names.size() != shards.size())
        throw std::invalid_argument("model.safetensors.index.json: " + std::to_string(shards.size()) + " shards but " +
                                    std::to_string(names.size()) + " names");
    std::unordered_map<std::string_view, const Safetensors*> by_name;
    for (size_t i = 0; i < shards.size(); ++i) {
        if (std::find(files.begin(), files.end(), names[i]) == files.end())
            throw std::invalid_argument("model.safetensors.index.json does not list the shard \"" + names[i] +
                                        "\" (it lists " + std::to_string(files.size()) + " files, e.g. \"" + files[0] + "\")");
        if (!by_name.emplace(names[i], &shards[i]).second)
            throw std::invalid_argument("model.safetensors.index.json: the shard \"" + names[i] + "\" is given twice");
    }
    for (const auto& f : files)
        if (!by_name.count(f)) {
            const auto it = std::find_if(weight_map.begin(), weight_map.end(), [&](const auto& e) { return e.second == f; });
            throw std::invalid_argument("missing shard \"" + f + "\": model.safetensors.index.json puts tensor \"" +
                                        it->first + "\" in it");
        }
    for (const auto& [tensor, file] : weight_map)
        if (!by_name.at(file)->find(tensor))
            throw std::invalid_argument("shard \"" + file + "\" lacks tensor \"" + tensor +
                                        "\", which model.safetensors.index.json puts in it");
}

LlamaModel LlamaModel::load(const std::string& dir) {
    const LlamaConfig cfg = LlamaConfig::load(dir + "/config.json");
    if (file_exists(dir + "/model.safetensors") || !file_exists(dir + "/model.safetensors.index.json")) {
        const Safetensors st = Safetensors::load(dir + "/model.safetensors");
        return from_parts(cfg, st);
    }
    const std::string index_path = dir + "/model.safetensors.index.json";
    const auto bytes = read_file(index_path, "model.safetensors.index.json");
    const SafetensorsIndex index =
        SafetensorsIndex::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), index_path);
    std::vector<Safetensors> shards;
    for (const auto& f : index.files) shards.push_back(Safetensors::load(dir + "/" + f));
    index.check(shards, index.files);
    return from_parts(cfg, shards);
}

size_t LlamaModel::parameters() const {
    size_t n = embed_.size() + norm_.size() + (tied() ? 0 : output_.size());
    for (const auto& L : layers_)
        n += L.attn_norm.size() + L.mlp_norm.size() + L.wq.size() + L.wk.size() + L.wv.size() + L.wo.size() +
             L.w_gate.size() + L.w_up.size() + L.w_down.size() + L.bq.size() + L.bk.size() + L.bv.size() +
             L.bo.size() + L.b_gate.size() + L.b_up.size() + L.b_down.size();
    return n;
}

size_t LlamaModel::weight_bytes() const {
    size_t n = (embed_.size() + norm_.size()) * sizeof(float) + output_.bytes();
    for (const auto& L : layers_)
        n += (L.attn_norm.size() + L.mlp_norm.size() + L.bq.size() + L.bk.size() + L.bv.size() + L.bo.size() +
              L.b_gate.size() + L.b_up.size() + L.b_down.size()) * sizeof(float) +
             L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes() + L.w_gate.bytes() + L.w_up.bytes() + L.w_down.bytes();
    return n;
}

}  // namespace tqkv
