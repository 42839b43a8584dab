// The C ABI (lib/include/tqkv/tqkv.h) over the C++ library: a registry of handles, status codes,
// a thread-local error message, and a try/catch around every call so that no exception crosses
// the boundary.
#include "tqkv/tqkv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/codec.hpp"
#include "tqkv/dense.hpp"
#include "tqkv/kernels.hpp"
#include "tqkv/model.hpp"
#include "tqkv/threads.hpp"
#include "tqkv/tokenizer.hpp"

namespace {

// tqkv_set_threads: the threads C ABI calls pass to attention and runners.
std::atomic<int> g_threads{1};
tqkv::AttendOptions attend_options() {
    tqkv::AttendOptions o;
    o.threads = g_threads.load(std::memory_order_relaxed);
    return o;
}

// ---------------------------------------------------------------------------------------------
// Errors

thread_local std::string g_last_error;

// A failure with its status code (thrown inside this file only, caught by guard()).
struct Failure {
    tqkv_status status;
    std::string message;
};

[[noreturn]] void fail(tqkv_status s, std::string msg) { throw Failure{s, std::move(msg)}; }

tqkv_status set_error(tqkv_status s, const char* msg) {
    try {
        g_last_error = msg;
    } catch (...) {  // no memory for the message: keep what fits
        g_last_error.clear();
    }
    return s;
}

// Runs fn and turns every exception into a status. `invalid` is the status of a
// std::invalid_argument (TQKV_ERR_BAD_DATA while loading).
template <class F>
tqkv_status guard(F&& fn, tqkv_status invalid = TQKV_ERR_INVALID_ARGUMENT) noexcept {
    try {
        fn();
        return TQKV_OK;
    } catch (const Failure& f) {
        return set_error(f.status, f.message.c_str());
    } catch (const std::bad_alloc&) {
        return set_error(TQKV_ERR_OUT_OF_MEMORY, "tqkv: out of memory");
    } catch (const std::length_error& e) {
        return set_error(TQKV_ERR_OUT_OF_MEMORY, (std::string("tqkv: out of memory (") + e.what() + ")").c_str());
    } catch (const std::invalid_argument& e) {
        return set_error(invalid, e.what());
    } catch (const std::out_of_range& e) {
        return set_error(TQKV_ERR_INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
        return set_error(TQKV_ERR_INTERNAL, e.what());
    } catch (...) {
        return set_error(TQKV_ERR_INTERNAL, "tqkv: unknown internal error");
    }
}

// The query + copy convention of every call that returns bytes: *size always gets n; a missing or
// short buffer is TQKV_ERR_BUFFER_TOO_SMALL ("<what> needs n bytes, the buffer has c"), else the copy.
tqkv_status copy_out(const void* src, size_t n, void* buf, size_t capacity, size_t* size, const std::string& what) {
    *size = n;
    if (!buf || capacity < n)
        return set_error(TQKV_ERR_BUFFER_TOO_SMALL,
                         (what + " needs " + std::to_string(n) + " bytes, the buffer has " + std::to_string(buf ? capacity : 0)).c_str());
    std::memcpy(buf, src, n);
    return TQKV_OK;
}

// ---------------------------------------------------------------------------------------------
// Handle registry: ids (kind in the low 3 bits, a 29-bit counter above: ids fit in 32 bits on
// every target) mapped to shared objects. A call holds a shared_ptr to its object, so a
// concurrent destroy cannot free it mid-call.

enum Kind : uintptr_t {
    kCacheKind = 1, kCodecKind = 2, kModelKind = 3, kCalibrationKind = 4, kRunnerKind = 5, kTokenizerKind = 6,
    kTokenStreamKind = 7  // the last kind the 3 bits hold
};

const char* kind_name(uintptr_t k) {
    switch (k) {
        case kCacheKind: return "cache";
        case kCodecKind: return "codec";
        case kModelKind: return "model";
        case kTokenizerKind: return "tokenizer";
        case kCalibrationKind: return "calibration";
        case kRunnerKind: return "runner";
        case kTokenStreamKind: return "token stream";
        default: return "?";
    }
}

struct CacheObj {
    explicit CacheObj(tqkv::ModelKVCache c) : cache(std::move(c)) {}
    tqkv::ModelKVCache cache;
    std::mutex save_mu;          // guards `saved` (save is a read-only call, may run concurrently)
    std::vector<uint8_t> saved;  // the bytes of the last size query, until the cache changes
    bool saved_valid = false;
    void changed() {
        std::lock_guard<std::mutex> lock(save_mu);
        saved_valid = false;
        std::vector<uint8_t>().swap(saved);
    }
};

struct CodecObj {
    std::unique_ptr<tqkv::VectorCodec> codec;
};

struct ModelObj {
    explicit ModelObj(tqkv::LlamaModel m) : model(std::move(m)) {}
    tqkv::LlamaModel model;
};

struct TokenizerObj {
    explicit TokenizerObj(tqkv::Tokenizer t) : tok(std::move(t)) {}
    tqkv::Tokenizer tok;
};

struct TokenStreamObj {
    TokenStreamObj(std::shared_ptr<const TokenizerObj> t, const std::vector<int32_t>& context)
        : tokenizer(std::move(t)), stream(tokenizer->tok, context) {}
    std::shared_ptr<const TokenizerObj> tokenizer;  // the stream refers to the tokenizer: keep it alive
    tqkv::TokenStream stream;
    std::mutex mu;  // push and flush change the stream
};

struct CalibrationObj {
    tqkv::Calibration cal;
};

struct RunnerObj {
    std::shared_ptr<const ModelObj> model;  // the runner refers to the model: keep it alive
    std::unique_ptr<tqkv::AttentionCache> cache;
    std::unique_ptr<tqkv::LlamaRunner> run;
    std::vector<float> logits;  // [vocab], when the caller passes none
};

template <class T, Kind K>
class Registry {
public:
    uintptr_t add(std::shared_ptr<T> obj) {
        std::lock_guard<std::mutex> lock(mu_);
        for (;;) {
            next_ = (next_ + 1) & ((uintptr_t(1) << 29) - 1);
            if (next_ == 0) continue;
            const uintptr_t id = (next_ << 3) | K;
            if (map_.count(id)) continue;
            map_.emplace(id, std::move(obj));
            return id;
        }
    }
    std::shared_ptr<T> get(uintptr_t id, const char* what) {
        if (id == 0) fail(TQKV_ERR_INVALID_HANDLE, std::string("tqkv: ") + what + ": null handle");
        if ((id & 7) != K)
            fail(TQKV_ERR_INVALID_HANDLE, std::string("tqkv: ") + what + ": not a " + kind_name(K) + " handle");
        std::lock_guard<std::mutex> lock(mu_);
        auto it = map_.find(id);
        if (it == map_.end())
            fail(TQKV_ERR_INVALID_HANDLE,
                 std::string("tqkv: ") + what + ": invalid handle (destroyed, or never created)");
        return it->second;
    }
    std::shared_ptr<T> remove(uintptr_t id, const char* what) {
        auto obj = get(id, what);
        std::lock_guard<std::mutex> lock(mu_);
        map_.erase(id);
        return obj;
    }

private:
    std::mutex mu_;
    std::unordered_map<uintptr_t, std::shared_ptr<T>> map_;
    uintptr_t next_ = 0;
};

Registry<CacheObj, kCacheKind>& caches() {
    static auto* r = new Registry<CacheObj, kCacheKind>;  // never destroyed: usable during exit
    return *r;
}
Registry<CodecObj, kCodecKind>& codecs() {
    static auto* r = new Registry<CodecObj, kCodecKind>;
    return *r;
}
Registry<ModelObj, kModelKind>& models() {
    static auto* r = new Registry<ModelObj, kModelKind>;
    return *r;
}
Registry<CalibrationObj, kCalibrationKind>& calibrations() {
    static auto* r = new Registry<CalibrationObj, kCalibrationKind>;
    return *r;
}
Registry<TokenizerObj, kTokenizerKind>& tokenizers() {
    static auto* r = new Registry<TokenizerObj, kTokenizerKind>;
    return *r;
}
Registry<RunnerObj, kRunnerKind>& runners() {
    static auto* r = new Registry<RunnerObj, kRunnerKind>;
    return *r;
}
Registry<TokenStreamObj, kTokenStreamKind>& token_streams() {
    static auto* r = new Registry<TokenStreamObj, kTokenStreamKind>;
    return *r;
}

uintptr_t id_of(const void* h) { return reinterpret_cast<uintptr_t>(h); }

// ---------------------------------------------------------------------------------------------
// Argument checks

void need_ptr(const void* p, const char* what) {
    if (!p) fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + " is NULL");
}
void need_buffer(const void* p, size_t n, const char* what) {
    if (!p && n) fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + " is NULL but its length is " + std::to_string(n));
}

std::string kernel_name(const char* k) { return k ? std::string(k) : std::string(); }

std::vector<int> channels(const int32_t* p, int32_t n, const char* what) {
    if (n < 0 || n > 1024) fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": count " + std::to_string(n) + " out of range [0, 1024]");
    need_buffer(p, size_t(n), what);
    return std::vector<int>(p, p + n);
}

tqkv::Method method_of(int32_t m, bool allow_qjl) {
    if (m == TQKV_METHOD_MSE) return tqkv::Method::Mse;
    if (m == TQKV_METHOD_PROD) return tqkv::Method::Prod;
    if (m == TQKV_METHOD_QJL && allow_qjl) return tqkv::Method::Qjl;
    fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: unknown method " + std::to_string(m) +
                                        (allow_qjl ? " (0 mse, 1 prod, 2 qjl)" : " (0 mse, 1 prod)"));
}

tqkv::NormFormat norm_of(int32_t f) {
    if (f == TQKV_NORM_F16) return tqkv::NormFormat::F16;
    if (f == TQKV_NORM_F32) return tqkv::NormFormat::F32;
    fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: unknown norm format " + std::to_string(f) + " (0 fp16, 1 fp32)");
}

tqkv::Precision precision_of(int32_t p) {
    if (p == TQKV_PRECISION_EXACT) return tqkv::Precision::Exact;
    if (p == TQKV_PRECISION_FAST) return tqkv::Precision::Fast;
    fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: unknown precision " + std::to_string(p) + " (0 exact, 1 fast)");
}

void check_struct(uint32_t got, size_t want, const char* what) {
    if (got != want)
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ".struct_size is " + std::to_string(got) +
                                            ", expected " + std::to_string(want) + " (call the _init function first)");
}

tqkv::CacheConfig to_cpp(const tqkv_cache_config& c) {
    tqkv::CacheConfig cfg;
    cfg.heads = c.heads;
    cfg.kv_heads = c.kv_heads;
    cfg.head_dim = c.head_dim;
    cfg.key_method = method_of(c.key_method, false);
    if (!std::isfinite(c.key_bits) || !std::isfinite(c.value_bits))
        fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: key_bits and value_bits must be finite");
    cfg.key_bits = c.key_bits;
    cfg.value_bits = c.value_bits;
    cfg.block_tokens = c.block_tokens;
    cfg.window = c.window;
    cfg.scale = c.scale;
    cfg.norm = norm_of(c.norm_format);
    if (c.max_tokens > (uint64_t(1) << 28)) fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: max_tokens above 2^28");
    cfg.max_tokens = size_t(c.max_tokens);
    cfg.seed = c.seed;
    cfg.key_high_channels = channels(c.key_high_channels, c.n_key_high_channels, "key_high_channels");
    cfg.value_high_channels = channels(c.value_high_channels, c.n_value_high_channels, "value_high_channels");
    cfg.kernel = kernel_name(c.kernel);
    cfg.precision = precision_of(c.precision);
    return cfg;
}

void from_cpp(const tqkv::CacheConfig& c, int layers, tqkv_cache_config& out) {
    out.layers = layers;
    out.heads = c.heads;
    out.kv_heads = c.kv_heads;
    out.head_dim = c.head_dim;
    out.key_method = c.key_method == tqkv::Method::Prod ? TQKV_METHOD_PROD : TQKV_METHOD_MSE;
    out.key_bits = c.key_bits;
    out.value_bits = c.value_bits;
    out.block_tokens = c.block_tokens;
    out.window = c.window;
    out.scale = c.scale;
    out.norm_format = c.norm == tqkv::NormFormat::F32 ? TQKV_NORM_F32 : TQKV_NORM_F16;
    out.max_tokens = c.max_tokens;
    out.seed = c.seed;
    out.n_key_high_channels = int32_t(c.key_high_channels.size());
    out.n_value_high_channels = int32_t(c.value_high_channels.size());
    out.key_high_channels = nullptr;
    out.value_high_channels = nullptr;
    out.kernel = nullptr;
    out.precision = c.precision == tqkv::Precision::Fast ? TQKV_PRECISION_FAST : TQKV_PRECISION_EXACT;
}

tqkv::KVCache& layer_of(CacheObj& obj, int32_t layer, const char* what) {
    if (layer < 0 || layer >= obj.cache.layers())
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": layer " + std::to_string(layer) +
                                            " out of range [0, " + std::to_string(obj.cache.layers()) + ")");
    return obj.cache.layer(layer);
}

// Rejects a kernel name before anything is built (load maps every other invalid_argument to
// TQKV_ERR_BAD_DATA).
void check_kernel(const std::string& k) {
    try {
        tqkv::detail::kernels_by_name(k.c_str());
    } catch (const std::invalid_argument& e) {
        fail(TQKV_ERR_INVALID_ARGUMENT, e.what());
    }
}

// Layout guarantees the bindings rely on (web/src/cache.ts, codec.ts, model.ts write the structs by offset; sizes in web/src/abi.ts).
static_assert(offsetof(tqkv_cache_config, key_bits) == 24);
static_assert(offsetof(tqkv_cache_config, block_tokens) == 40);
static_assert(offsetof(tqkv_cache_config, max_tokens) == 56);
static_assert(offsetof(tqkv_cache_config, seed) == 64);
static_assert(offsetof(tqkv_cache_config, n_value_high_channels) == 76);
static_assert(offsetof(tqkv_cache_config, key_high_channels) == 80);
static_assert(offsetof(tqkv_cache_config, kernel) == 80 + 2 * sizeof(void*));
static_assert(offsetof(tqkv_cache_config, precision) == 80 + 3 * sizeof(void*));
static_assert(sizeof(void*) != 4 || sizeof(tqkv_cache_config) == 96);  // wasm32: web/src/abi.ts CACHE_CFG_SIZE
static_assert(offsetof(tqkv_codec_config, bits) == 8);
static_assert(offsetof(tqkv_codec_config, seed) == 24);
static_assert(offsetof(tqkv_codec_config, high_channels) == 40);
static_assert(sizeof(tqkv_model_info) == 48 && offsetof(tqkv_model_info, parameters) == 40);
static_assert(sizeof(tqkv_runner_stats) == 48 && offsetof(tqkv_runner_stats, position) == 8);
static_assert(offsetof(tqkv_runner_stats, cache_bytes) == 16 && offsetof(tqkv_runner_stats, memory_bytes) == 40);

// Every token in [0, vocab), checked before anything runs.
void check_tokens(const int32_t* tokens, size_t n, int vocab, const char* what) {
    for (size_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": token " + std::to_string(i) + " = " +
                                                std::to_string(tokens[i]) + " outside the vocabulary [0, " +
                                                std::to_string(vocab) + ")");
}

int32_t argmax(const float* x, size_t n) {
    return int32_t(std::max_element(x, x + n) - x);  // the first of equal maxima
}

// Runs n tokens (validated); a failure while running leaves the runner inconsistent (some layers
// appended), so it is reset before the error is reported.
void run_tokens(RunnerObj& r, const int32_t* tokens, size_t n, float* logits, size_t n_logits, int32_t* next,
                const char* what) {
    const tqkv::LlamaConfig& c = r.model->model.config();
    const size_t V = size_t(c.vocab_size);
    const bool decode = what[0] == 'd';  // literal names: no allocation per token
    need_buffer(tokens, n, decode ? "decode: tokens" : "prefill: tokens");
    need_buffer(logits, n_logits, decode ? "decode: logits" : "prefill: logits");
    if (n == 0) fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": no tokens");
    if (n_logits != 0 && n_logits != V && (n_logits / V != n || n_logits % V != 0))
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": logits has " + std::to_string(n_logits) +
                                            " floats, expected 0, vocab = " + std::to_string(V) + " or n * vocab = " +
                                            std::to_string(n * V));
    check_tokens(tokens, n, c.vocab_size, what);
    const size_t ctx = size_t(c.max_position_embeddings);
    if (n > ctx - std::min(ctx, r.run->position()))
        fail(TQKV_ERR_CAPACITY, std::string("tqkv: ") + what + ": " + std::to_string(n) + " tokens at position " +
                                    std::to_string(r.run->position()) + " exceed the model's context of " +
                                    std::to_string(ctx) + " tokens");
    float* out = logits;
    size_t n_out = n_logits;
    if (n_logits == 0 && next) {  // the caller wants only the greedy token: our buffer
        out = r.logits.data();
        n_out = V;
    }
    try {
        r.run->threads = g_threads.load(std::memory_order_relaxed);
        r.run->prefill({tokens, n}, {out, n_out});
    } catch (...) {
        r.run->reset();
        throw;
    }
    if (next) *next = argmax(out + (n_out - V), V);
}

}  // namespace

extern "C" {

const char* tqkv_last_error(void) { return g_last_error.c_str(); }

const char* tqkv_status_name(int status) {
    switch (status) {
        case TQKV_OK: return "ok";
        case TQKV_ERR_INVALID_ARGUMENT: return "invalid argument";
        case TQKV_ERR_INVALID_HANDLE: return "invalid handle";
        case TQKV_ERR_OUT_OF_MEMORY: return "out of memory";
        case TQKV_ERR_CAPACITY: return "capacity exceeded";
        case TQKV_ERR_BAD_DATA: return "bad data";
        case TQKV_ERR_BUFFER_TOO_SMALL: return "buffer too small";
        case TQKV_ERR_INTERNAL: return "internal error";
        default: return "unknown status";
    }
}

int tqkv_abi_version(void) { return TQKV_ABI_VERSION; }

tqkv_status tqkv_set_threads(int32_t threads) {
    return guard([&] {
        if (threads < 1 || threads > tqkv::kMaxThreads)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: set_threads: " + std::to_string(threads) + " is out of range [1, " +
                                                std::to_string(tqkv::kMaxThreads) + "]");
        g_threads.store(threads);
    });
}
int32_t tqkv_get_threads(void) { return g_threads.load(); }
int32_t tqkv_worker_threads(void) { return tqkv::pool_workers(); }

const char* tqkv_default_kernel(void) {
    const char* name = "scalar";
    guard([&] { name = tqkv::detail::kernels_by_name("").name; });
    return name;
}

// ---------------------------------------------------------------------------------------------
// Cache

tqkv_status tqkv_cache_config_init(tqkv_cache_config* cfg) {
    return guard([&] {
        need_ptr(cfg, "cfg");
        std::memset(cfg, 0, sizeof *cfg);
        const tqkv::CacheConfig d;
        from_cpp(d, 1, *cfg);
        cfg->precision = TQKV_PRECISION_FAST;  // the default, as in C++ (tqkv.h: tqkv_cache_config)
        cfg->struct_size = sizeof *cfg;
    });
}

size_t tqkv_cache_config_size(void) { return sizeof(tqkv_cache_config); }

tqkv_status tqkv_cache_create(const tqkv_cache_config* cfg, tqkv_cache* out) {
    return guard([&] {
        need_ptr(cfg, "cfg");
        need_ptr(out, "out");
        check_struct(cfg->struct_size, sizeof *cfg, "tqkv_cache_config");
        const tqkv::CacheConfig c = to_cpp(*cfg);
        auto obj = std::make_shared<CacheObj>(tqkv::ModelKVCache(cfg->layers, c));
        *out = reinterpret_cast<tqkv_cache>(caches().add(std::move(obj)));
    });
}

tqkv_status tqkv_cache_destroy(tqkv_cache cache) {
    return guard([&] { caches().remove(id_of(cache), "tqkv_cache_destroy"); });
}

tqkv_status tqkv_cache_append(tqkv_cache cache, int32_t layer, const float* keys, size_t n_keys, const float* values,
                              size_t n_values) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "append");
        tqkv::KVCache& l = layer_of(*obj, layer, "append");
        need_buffer(keys, n_keys, "append: keys");
        need_buffer(values, n_values, "append: values");
        const auto& c = l.config();
        const size_t row = size_t(c.kv_heads) * size_t(c.head_dim);
        const size_t capacity = c.max_tokens ? c.max_tokens : size_t(1) << 28;
        const bool over = n_keys % row == 0 && n_values == n_keys && n_keys / row > capacity - l.tokens();
        try {
            l.append({keys, n_keys}, {values, n_values});
        } catch (const std::invalid_argument& e) {
            fail(over ? TQKV_ERR_CAPACITY : TQKV_ERR_INVALID_ARGUMENT, e.what());
        }
        obj->changed();
    });
}

tqkv_status tqkv_cache_attend(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries, float* out,
                              size_t n_out, int32_t causal) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "attend");
        const tqkv::KVCache& l = layer_of(*obj, layer, "attend");
        need_buffer(queries, n_queries, "attend: queries");
        need_buffer(out, n_out, "attend: out");
        l.attend({queries, n_queries}, {out, n_out}, causal != 0, attend_options());
    });
}

tqkv_status tqkv_cache_release_chunk_rows(tqkv_cache cache, int32_t layer) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "release_chunk_rows");
        if (layer == -1) {
            for (int l = 0; l < obj->cache.layers(); ++l) obj->cache.release_chunk_rows(l);
        } else {
            layer_of(*obj, layer, "release_chunk_rows (-1: every layer)").release_chunk_rows();
        }
    });
}

tqkv_status tqkv_cache_truncate(tqkv_cache cache, size_t n_tokens) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "truncate");
        obj->cache.truncate(n_tokens);
        obj->changed();
    });
}

tqkv_status tqkv_cache_clear(tqkv_cache cache) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "clear");
        obj->cache.clear();
        obj->changed();
    });
}

tqkv_status tqkv_cache_tokens(tqkv_cache cache, int32_t layer, size_t* out) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "tokens");
        need_ptr(out, "out");
        *out = layer_of(*obj, layer, "tokens").tokens();
    });
}

tqkv_status tqkv_cache_bytes_used(tqkv_cache cache, size_t* out) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "bytes_used");
        need_ptr(out, "out");
        *out = obj->cache.bytes_used();
    });
}

tqkv_status tqkv_cache_set_precision(tqkv_cache cache, int32_t precision) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "set_precision");
        obj->cache.set_precision(precision_of(precision));
    });
}

tqkv_status tqkv_cache_set_attention_window(tqkv_cache cache, size_t window) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "set_attention_window");
        obj->cache.set_attention_window(window);  // (above 2^28: refused by the cache)
        obj->changed();
    });
}

tqkv_status tqkv_cache_get_config(tqkv_cache cache, tqkv_cache_config* cfg) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "get_config");
        need_ptr(cfg, "cfg");
        check_struct(cfg->struct_size, sizeof *cfg, "tqkv_cache_config");
        const tqkv::KVCache& l0 = obj->cache.layer(0);
        from_cpp(l0.config(), obj->cache.layers(), *cfg);
        cfg->scale = l0.scale();  // the effective scale
    });
}

const char* tqkv_cache_kernel(tqkv_cache cache) {
    const char* name = nullptr;
    guard([&] { name = caches().get(id_of(cache), "kernel")->cache.layer(0).kernel(); });
    return name;
}

tqkv_status tqkv_cache_save(tqkv_cache cache, uint8_t* buf, size_t capacity, size_t* size) {
    tqkv_status result = TQKV_OK;
    const tqkv_status st = guard([&] {
        auto obj = caches().get(id_of(cache), "save");
        need_ptr(size, "size");
        std::lock_guard<std::mutex> lock(obj->save_mu);
        if (!obj->saved_valid) {
            obj->saved = obj->cache.save();
            obj->saved_valid = true;
        }
        result = copy_out(obj->saved.data(), obj->saved.size(), buf, capacity, size, "tqkv: save: the serialized cache");
        if (result != TQKV_OK) return;
        // A copy ends the query + copy pair: keep no second copy of the bytes around.
        obj->saved_valid = false;
        std::vector<uint8_t>().swap(obj->saved);
    });
    return st != TQKV_OK ? st : result;
}

tqkv_status tqkv_cache_load(const uint8_t* bytes, size_t n_bytes, const char* kernel, tqkv_cache* out) {
    return guard([&] {
        need_ptr(out, "out");
        need_buffer(bytes, n_bytes, "bytes");
        const std::string k = kernel_name(kernel);
        check_kernel(k);
        tqkv::ModelKVCache m = [&] {
            try {
                return tqkv::ModelKVCache::load({bytes, n_bytes}, k);
            } catch (const std::invalid_argument& e) {
                fail(TQKV_ERR_BAD_DATA, e.what());
            }
        }();
        m.set_precision(tqkv::Precision::Fast);  // not saved: the default, as tqkv_cache_config_init
        const auto& c0 = m.layer(0).config();
        for (int l = 1; l < m.layers(); ++l) {
            const auto& c = m.layer(l).config();
            if (c.heads != c0.heads || c.kv_heads != c0.kv_heads || c.head_dim != c0.head_dim)
                fail(TQKV_ERR_BAD_DATA, "tqkv: load: layer " + std::to_string(l) + " has a different shape from layer 0");
        }
        auto obj = std::make_shared<CacheObj>(std::move(m));
        *out = reinterpret_cast<tqkv_cache>(caches().add(std::move(obj)));
    });
}

// ---------------------------------------------------------------------------------------------
// Calibrations and caches from specs

tqkv_status tqkv_calibration_new(int32_t layers, int32_t kv_heads, int32_t head_dim, tqkv_calibration* out) {
    return guard([&] {
        need_ptr(out, "out");
        auto obj = std::make_shared<CalibrationObj>();
        obj->cal = tqkv::Calibration(layers, kv_heads, head_dim);
        *out = reinterpret_cast<tqkv_calibration>(calibrations().add(std::move(obj)));
    });
}

tqkv_status tqkv_calibration_add(tqkv_calibration cal, int32_t layer, const float* keys, size_t n_keys,
                                 const float* values, size_t n_values) {
    return guard([&] {
        auto obj = calibrations().get(id_of(cal), "calibration_add");
        need_buffer(keys, n_keys, "calibration_add: keys");
        need_buffer(values, n_values, "calibration_add: values");
        obj->cal.add(layer, {keys, n_keys}, {values, n_values});
    });
}

tqkv_status tqkv_calibration_add_queries(tqkv_calibration cal, int32_t layer, int32_t heads, const float* queries,
                                         size_t n_queries) {
    return guard([&] {
        auto obj = calibrations().get(id_of(cal), "calibration_add_queries");
        need_buffer(queries, n_queries, "calibration_add_queries: queries");
        obj->cal.add_queries(layer, heads, {queries, n_queries});
    });
}

tqkv_status tqkv_calibration_get_info(tqkv_calibration cal, int32_t* layers, int32_t* kv_heads, int32_t* head_dim,
                                      uint64_t* min_tokens) {
    return guard([&] {
        auto obj = calibrations().get(id_of(cal), "calibration_get_info");
        const tqkv::Calibration& c = obj->cal;
        uint64_t mn = UINT64_MAX;
        for (int l = 0; l < c.layers(); ++l) mn = std::min(mn, c.tokens(l));
        if (layers) *layers = c.layers();
        if (kv_heads) *kv_heads = c.kv_heads();
        if (head_dim) *head_dim = c.head_dim();
        if (min_tokens) *min_tokens = c.layers() ? mn : 0;
    });
}

tqkv_status tqkv_calibration_save(tqkv_calibration cal, uint8_t* buf, size_t capacity, size_t* size) {
    tqkv_status result = TQKV_OK;
    const tqkv_status st = guard([&] {
        auto obj = calibrations().get(id_of(cal), "calibration_save");
        need_ptr(size, "size");
        const std::vector<uint8_t> bytes = obj->cal.save();
        result = copy_out(bytes.data(), bytes.size(), buf, capacity, size, "tqkv: calibration_save: the calibration");
    });
    return st != TQKV_OK ? st : result;
}

tqkv_status tqkv_calibration_load(const uint8_t* bytes, size_t n_bytes, tqkv_calibration* out) {
    return guard(
        [&] {
            need_ptr(out, "out");
            need_buffer(bytes, n_bytes, "bytes");
            auto obj = std::make_shared<CalibrationObj>();
            obj->cal = tqkv::Calibration::load({bytes, n_bytes});
            *out = reinterpret_cast<tqkv_calibration>(calibrations().add(std::move(obj)));
        },
        TQKV_ERR_BAD_DATA);
}

tqkv_status tqkv_calibration_measure_sensitivity(tqkv_calibration cal, tqkv_model model, const int32_t* tokens,
                                                 size_t n_tokens) {
    return guard([&] {
        auto c = calibrations().get(id_of(cal), "calibration_measure_sensitivity");
        auto m = models().get(id_of(model), "calibration_measure_sensitivity: model");
        need_buffer(tokens, n_tokens, "calibration_measure_sensitivity: tokens");
        if (n_tokens < 2) fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: calibration_measure_sensitivity: needs at least 2 tokens");
        const tqkv::LlamaConfig& mc = m->model.config();
        check_tokens(tokens, n_tokens, mc.vocab_size, "calibration_measure_sensitivity");
        if (c->cal.layers() != mc.num_hidden_layers || c->cal.kv_heads() != mc.num_key_value_heads ||
            c->cal.head_dim() != mc.head_dim)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: calibration_measure_sensitivity: the calibration is of another shape");
        tqkv::Calibration work = c->cal;  // on a copy: a failure leaves the calibration as it was
        tqkv::measure_sensitivity(m->model, work, {tokens, n_tokens}, size_t(mc.max_position_embeddings));
        c->cal = std::move(work);
    });
}

tqkv_status tqkv_rate_plan(const char* spec, const tqkv_cache_config* base, tqkv_calibration cal, char* buf,
                           size_t capacity, size_t* size) {
    tqkv_status result = TQKV_OK;
    const tqkv_status st = guard([&] {
        need_ptr(spec, "spec");
        need_ptr(base, "base");
        need_ptr(size, "size");
        check_struct(base->struct_size, sizeof *base, "tqkv_cache_config");
        auto c = calibrations().get(id_of(cal), "rate_plan: calibration");
        const tqkv::CacheShape shape{base->layers, base->heads, base->kv_heads, base->head_dim, size_t(base->max_tokens)};
        const std::string json = tqkv::plan_rates(tqkv::CacheSpec::parse(spec), shape, c->cal).json();
        result = copy_out(json.c_str(), json.size() + 1, buf, capacity, size, "tqkv: rate_plan: the plan");
    });
    return st != TQKV_OK ? st : result;
}

tqkv_status tqkv_cache_create_spec(const char* spec, const tqkv_cache_config* base, tqkv_calibration cal, tqkv_cache* out) {
    return guard([&] {
        need_ptr(spec, "spec");
        need_ptr(base, "base");
        need_ptr(out, "out");
        check_struct(base->struct_size, sizeof *base, "tqkv_cache_config");
        std::shared_ptr<CalibrationObj> c;
        if (cal) c = calibrations().get(id_of(cal), "cache_create_spec: calibration");
        const tqkv::CacheSpec sp = tqkv::CacheSpec::parse(spec);
        if (!sp.is_tqkv())
            fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: cache_create_spec: '") + spec +
                                                "' is one of the Llama runner's baseline formats; a tqkv cache needs "
                                                "K<bits>V<bits>[-opt...] or a preset");
        tqkv_cache_config b = *base;  // the shape and storage fields; rates come from the spec
        b.key_method = TQKV_METHOD_MSE;
        b.key_bits = b.value_bits = 4;
        b.n_key_high_channels = b.n_value_high_channels = 0;
        b.key_high_channels = b.value_high_channels = nullptr;
        const tqkv::CacheConfig cpp = to_cpp(b);
        const tqkv::CacheShape shape{base->layers, base->heads, base->kv_heads, base->head_dim, size_t(base->max_tokens)};
        tqkv::ModelKVCache m(shape, sp, c ? &c->cal : nullptr, cpp);
        if (!m.built(0))
            fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: cache_create_spec: '") + spec +
                                                "' has fractional rates: it needs a calibration to choose their high "
                                                "channels (tqkv_calibration_new / tqkv_calibration_add)");
        auto obj = std::make_shared<CacheObj>(std::move(m));
        *out = reinterpret_cast<tqkv_cache>(caches().add(std::move(obj)));
    });
}

const char* tqkv_cache_spec_grammar(void) { return tqkv::cache_spec_grammar(); }

int32_t tqkv_preset_count(void) { return int32_t(tqkv::presets().size()); }
const char* tqkv_preset_name(int32_t i) {
    return i >= 0 && size_t(i) < tqkv::presets().size() ? tqkv::presets()[size_t(i)].name : nullptr;
}
const char* tqkv_preset_spec(int32_t i) {
    return i >= 0 && size_t(i) < tqkv::presets().size() ? tqkv::presets()[size_t(i)].spec : nullptr;
}
const char* tqkv_preset_summary(int32_t i) {
    return i >= 0 && size_t(i) < tqkv::presets().size() ? tqkv::presets()[size_t(i)].summary : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Codecs

tqkv_status tqkv_codec_config_init(tqkv_codec_config* cfg) {
    return guard([&] {
        need_ptr(cfg, "cfg");
        std::memset(cfg, 0, sizeof *cfg);
        const tqkv::CodecConfig d;
        cfg->struct_size = sizeof *cfg;
        cfg->dim = d.dim;
        cfg->bits = d.bits;
        cfg->method = TQKV_METHOD_MSE;
        cfg->norm_format = TQKV_NORM_F16;
        cfg->seed = d.seed;
    });
}

size_t tqkv_codec_config_size(void) { return sizeof(tqkv_codec_config); }

tqkv_status tqkv_codec_create(const tqkv_codec_config* cfg, tqkv_codec* out) {
    return guard([&] {
        need_ptr(cfg, "cfg");
        need_ptr(out, "out");
        check_struct(cfg->struct_size, sizeof *cfg, "tqkv_codec_config");
        if (!std::isfinite(cfg->bits)) fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: bits must be finite");
        tqkv::CodecConfig c;
        c.dim = cfg->dim;
        c.bits = cfg->bits;
        c.method = method_of(cfg->method, true);
        c.norm = norm_of(cfg->norm_format);
        c.seed = cfg->seed;
        c.high_channels = channels(cfg->high_channels, cfg->n_high_channels, "high_channels");
        c.kernel = kernel_name(cfg->kernel);
        auto obj = std::make_shared<CodecObj>();
        obj->codec = tqkv::make_codec(c);
        *out = reinterpret_cast<tqkv_codec>(codecs().add(std::move(obj)));
    });
}

tqkv_status tqkv_codec_destroy(tqkv_codec codec) {
    return guard([&] { codecs().remove(id_of(codec), "tqkv_codec_destroy"); });
}

tqkv_status tqkv_codec_bytes_per_vector(tqkv_codec codec, size_t* out) {
    return guard([&] {
        auto obj = codecs().get(id_of(codec), "bytes_per_vector");
        need_ptr(out, "out");
        *out = obj->codec->bytes_per_vector();
    });
}

tqkv_status tqkv_codec_encode(tqkv_codec codec, const float* x, size_t n_x, uint8_t* out, size_t n_out) {
    return guard([&] {
        auto obj = codecs().get(id_of(codec), "encode");
        const auto& c = *obj->codec;
        need_buffer(x, n_x, "encode: x");
        need_buffer(out, n_out, "encode: out");
        const size_t d = size_t(c.dim());
        if (n_x == 0 || n_x % d != 0)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: encode: x has " + std::to_string(n_x) +
                                                " floats, expected a positive multiple of dim = " + std::to_string(d));
        const size_t want = n_x / d * c.bytes_per_vector();
        if (n_out != want)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: encode: out has " + std::to_string(n_out) + " bytes, expected " +
                                                std::to_string(want));
        c.encode({x, n_x}, {out, n_out});
    });
}

tqkv_status tqkv_codec_decode(tqkv_codec codec, const uint8_t* codes, size_t n_codes, float* out, size_t n_out) {
    return guard([&] {
        auto obj = codecs().get(id_of(codec), "decode");
        const auto& c = *obj->codec;
        need_buffer(codes, n_codes, "decode: codes");
        need_buffer(out, n_out, "decode: out");
        const size_t b = c.bytes_per_vector();
        if (n_codes == 0 || n_codes % b != 0)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: decode: codes have " + std::to_string(n_codes) +
                                                " bytes, expected a positive multiple of bytes_per_vector = " +
                                                std::to_string(b));
        const size_t want = n_codes / b * size_t(c.dim());
        if (n_out != want)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: decode: out has " + std::to_string(n_out) + " floats, expected " +
                                                std::to_string(want));
        c.check_codes(codes, b, n_codes / b);
        c.decode({codes, n_codes}, {out, n_out});
    });
}

tqkv_status tqkv_codec_dot(tqkv_codec codec, const float* query, size_t n_query, const uint8_t* codes, size_t n_codes,
                           float* scores, size_t n_scores) {
    return guard([&] {
        auto obj = codecs().get(id_of(codec), "dot");
        const auto& c = *obj->codec;
        need_buffer(query, n_query, "dot: query");
        need_buffer(codes, n_codes, "dot: codes");
        need_buffer(scores, n_scores, "dot: scores");
        if (n_query != size_t(c.dim()))
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: query has " + std::to_string(n_query) + " floats, expected dim = " +
                                                std::to_string(c.dim()));
        const size_t b = c.bytes_per_vector();
        if (n_codes == 0 || n_codes % b != 0)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: codes have " + std::to_string(n_codes) +
                                                " bytes, expected a positive multiple of bytes_per_vector = " +
                                                std::to_string(b));
        if (n_scores != n_codes / b)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: scores has " + std::to_string(n_scores) + " floats, expected " +
                                                std::to_string(n_codes / b));
        for (size_t i = 0; i < n_query; ++i)
            if (!std::isfinite(query[i]))
                fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: query channel " + std::to_string(i) + " is not finite");
        c.check_codes(codes, b, n_codes / b);
        c.dot_rows(query, codes, b, n_codes / b, scores);  // checked above: VectorCodec::dot would check again
    });
}

// ---------------------------------------------------------------------------------------------
// Dense baseline

tqkv_status tqkv_dense_attention_f32(int32_t heads, int32_t kv_heads, int32_t head_dim, size_t tokens,
                                     const float* query, size_t n_query, const float* keys, const float* values,
                                     size_t n_kv, float* out, size_t n_out) {
    return guard([&] {
        if (heads < 1 || heads > 4096 || kv_heads < 1 || heads % kv_heads != 0 || head_dim < 1 || head_dim > 1024 ||
            tokens == 0)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dense attention: bad shape");
        const size_t q = size_t(heads) * size_t(head_dim), row = size_t(kv_heads) * size_t(head_dim);
        if (tokens > SIZE_MAX / row || n_kv != tokens * row)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dense attention: keys/values must have kv_heads * tokens * head_dim floats");
        if (n_query != q || n_out != q)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dense attention: query and out must have heads * head_dim floats");
        need_ptr(query, "query");
        need_ptr(keys, "keys");
        need_ptr(values, "values");
        need_ptr(out, "out");
        tqkv::DenseAttentionShape s{heads, kv_heads, head_dim, tokens, 0};
        tqkv::dense_attention_f32(s, query, keys, values, out);
    });
}

// ---------------------------------------------------------------------------------------------
// Llama models

tqkv_status tqkv_model_load(const char* config_json, size_t config_len, const uint8_t* safetensors, size_t n_bytes,
                            tqkv_model* out) {
    return guard(
        [&] {
            need_ptr(out, "out");
            need_buffer(config_json, config_len, "config_json");
            need_buffer(safetensors, n_bytes, "safetensors");
            const tqkv::LlamaConfig cfg = tqkv::LlamaConfig::parse(std::string_view(config_json, config_len));
            auto obj = [&] {
                const tqkv::Safetensors st =
                    tqkv::Safetensors::parse(std::vector<uint8_t>(safetensors, safetensors + n_bytes), "model.safetensors");
                return std::make_shared<ModelObj>(tqkv::LlamaModel::from_parts(cfg, st));
            }();  // the file's bytes are freed here, before the handle exists
            *out = reinterpret_cast<tqkv_model>(models().add(std::move(obj)));
        },
        TQKV_ERR_BAD_DATA);
}

tqkv_status tqkv_model_load_shards(const char* config_json, size_t config_len, const char* index_json, size_t index_len,
                                   size_t n_shards, const char* const* names, const uint8_t* const* shards,
                                   const size_t* shard_bytes, tqkv_model* out) {
    return guard(
        [&] {
            need_ptr(out, "out");
            need_buffer(config_json, config_len, "config_json");
            need_buffer(index_json, index_len, "index_json");
            if (n_shards < 1 || n_shards > 4096)
                fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: model_load_shards: " + std::to_string(n_shards) +
                                                    " shards, expected 1..4096");
            need_ptr(shards, "shards");
            need_ptr(shard_bytes, "shard_bytes");
            if (index_json) need_ptr(names, "names (the index's file name of each shard)");
            std::vector<std::string> shard_names;
            for (size_t i = 0; i < n_shards; ++i) {
                need_buffer(shards[i], shard_bytes[i], "a shard");
                if (names) need_ptr(names[i], "a shard's name");
                shard_names.push_back(names ? std::string(names[i]) : "shard " + std::to_string(i));
            }
            const tqkv::LlamaConfig cfg = tqkv::LlamaConfig::parse(std::string_view(config_json, config_len));
            std::optional<tqkv::SafetensorsIndex> index;
            if (index_json) index = tqkv::SafetensorsIndex::parse(std::string_view(index_json, index_len));
            auto obj = [&] {
                std::vector<tqkv::Safetensors> parsed;
                for (size_t i = 0; i < n_shards; ++i)
                    parsed.push_back(tqkv::Safetensors::parse(std::vector<uint8_t>(shards[i], shards[i] + shard_bytes[i]),
                                                              shard_names[i]));
                if (index) index->check(parsed, shard_names);
                return std::make_shared<ModelObj>(tqkv::LlamaModel::from_parts(cfg, parsed));
            }();  // the files' bytes are freed here, before the handle exists
            *out = reinterpret_cast<tqkv_model>(models().add(std::move(obj)));
        },
        TQKV_ERR_BAD_DATA);
}

tqkv_status tqkv_model_destroy(tqkv_model model) {
    return guard([&] { models().remove(id_of(model), "tqkv_model_destroy"); });
}

tqkv_status tqkv_model_get_info(tqkv_model model, tqkv_model_info* info) {
    return guard([&] {
        auto obj = models().get(id_of(model), "model_get_info");
        need_ptr(info, "info");
        check_struct(info->struct_size, sizeof *info, "tqkv_model_info");
        const tqkv::LlamaConfig& c = obj->model.config();
        info->layers = c.num_hidden_layers;
        info->hidden = c.hidden_size;
        info->heads = c.num_attention_heads;
        info->kv_heads = c.num_key_value_heads;
        info->head_dim = c.head_dim;
        info->intermediate = c.intermediate_size;
        info->vocab = c.vocab_size;
        info->context = c.max_position_embeddings;
        info->tied = obj->model.tied() ? 1 : 0;
        info->parameters = obj->model.parameters();
    });
}

tqkv_status tqkv_model_end_of_sequence(tqkv_model model, tqkv_tokenizer tok, int32_t* ids, size_t capacity, size_t* n_ids) {
    return guard([&] {
        auto obj = models().get(id_of(model), "model_end_of_sequence");
        need_buffer(ids, capacity, "ids");
        need_ptr(n_ids, "n_ids");
        const tqkv::LlamaConfig& c = obj->model.config();
        const std::vector<int32_t> eos =
            tok ? tqkv::end_of_sequence_ids(c, tokenizers().get(id_of(tok), "model_end_of_sequence: tokenizer")->tok)
                : tqkv::config_eos_ids(c);
        *n_ids = eos.size();
        if (eos.size() > capacity)
            fail(TQKV_ERR_CAPACITY, "tqkv: model_end_of_sequence: " + std::to_string(eos.size()) + " ids, capacity " +
                                        std::to_string(capacity));
        std::copy(eos.begin(), eos.end(), ids);
    });
}

const char* tqkv_matmul_kernel(void) { return tqkv::matmul_kernel(); }

tqkv_status tqkv_calibration_create(tqkv_model model, const int32_t* tokens, size_t n_tokens, tqkv_calibration* out) {
    return guard([&] {
        auto m = models().get(id_of(model), "calibration_create");
        need_ptr(out, "out");
        need_buffer(tokens, n_tokens, "calibration_create: tokens");
        if (n_tokens == 0) fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: calibration_create: no tokens");
        const tqkv::LlamaConfig& c = m->model.config();
        check_tokens(tokens, n_tokens, c.vocab_size, "calibration_create");
        auto obj = std::make_shared<CalibrationObj>();
        obj->cal = tqkv::calibrate_kv(m->model, {tokens, n_tokens}, size_t(c.max_position_embeddings));
        *out = reinterpret_cast<tqkv_calibration>(calibrations().add(std::move(obj)));
    });
}

tqkv_status tqkv_calibration_destroy(tqkv_calibration cal) {
    return guard([&] { calibrations().remove(id_of(cal), "tqkv_calibration_destroy"); });
}

tqkv_status tqkv_runner_create(tqkv_model model, const char* cache_spec, tqkv_calibration cal, int32_t max_chunk,
                               tqkv_runner* out) {
    return guard([&] {
        auto m = models().get(id_of(model), "runner_create");
        need_ptr(out, "out");
        need_ptr(cache_spec, "cache_spec");
        std::shared_ptr<CalibrationObj> c;
        if (cal) c = calibrations().get(id_of(cal), "runner_create: calibration");
        if (max_chunk < 0 || max_chunk > 4096)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: runner_create: max_chunk " + std::to_string(max_chunk) +
                                                " out of range [0, 4096] (0 = 128)");
        const tqkv::LlamaConfig& mc = m->model.config();
        const tqkv::CacheShape shape = tqkv::CacheShape::of(mc);
        if (c && (c->cal.layers() != shape.layers || c->cal.kv_heads() != shape.kv_heads || c->cal.head_dim() != shape.head_dim))
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: runner_create: the calibration is of a model of another shape");
        auto obj = std::make_shared<RunnerObj>();
        obj->model = m;
        tqkv::CacheSpec spec = tqkv::CacheSpec::parse(cache_spec);
        obj->cache = tqkv::make_cache(spec, shape, c ? &c->cal : nullptr);
        obj->cache->reserve(size_t(mc.max_position_embeddings));
        obj->run = std::make_unique<tqkv::LlamaRunner>(m->model, *obj->cache, max_chunk ? max_chunk : 128);
        obj->logits.resize(size_t(mc.vocab_size));
        *out = reinterpret_cast<tqkv_runner>(runners().add(std::move(obj)));
    });
}

tqkv_status tqkv_runner_destroy(tqkv_runner runner) {
    return guard([&] { runners().remove(id_of(runner), "tqkv_runner_destroy"); });
}

tqkv_status tqkv_runner_prefill(tqkv_runner runner, const int32_t* tokens, size_t n_tokens, float* logits,
                                size_t n_logits, int32_t* next) {
    return guard([&] {
        auto r = runners().get(id_of(runner), "prefill");
        run_tokens(*r, tokens, n_tokens, logits, n_logits, next, "prefill");
    });
}

tqkv_status tqkv_runner_decode(tqkv_runner runner, int32_t token, float* logits, size_t n_logits, int32_t* next) {
    return guard([&] {
        auto r = runners().get(id_of(runner), "decode");
        const size_t V = r->logits.size();
        if (n_logits != 0 && n_logits != V)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: decode: logits has " + std::to_string(n_logits) +
                                                " floats, expected 0 or vocab = " + std::to_string(V));
        run_tokens(*r, &token, 1, logits, n_logits, next, "decode");
    });
}

tqkv_status tqkv_runner_reset(tqkv_runner runner) {
    return guard([&] { runners().get(id_of(runner), "reset")->run->reset(); });
}

tqkv_status tqkv_runner_get_stats(tqkv_runner runner, tqkv_runner_stats* stats) {
    return guard([&] {
        auto r = runners().get(id_of(runner), "get_stats");
        need_ptr(stats, "stats");
        check_struct(stats->struct_size, sizeof *stats, "tqkv_runner_stats");
        const tqkv::AttentionCache& c = *r->cache;
        stats->reserved = 0;
        stats->position = r->run->position();
        stats->cache_bytes = c.format_bytes();
        stats->fp16_bytes = c.fp16_bytes();
        stats->bits_per_coord = c.bits_per_coord();
        stats->memory_bytes = c.memory_bytes();
    });
}

tqkv_status tqkv_runner_nll(tqkv_runner runner, const int32_t* tokens, size_t n_tokens, size_t ctx, double* nll,
                            size_t* scored) {
    return guard([&] {
        auto r = runners().get(id_of(runner), "nll");
        need_ptr(nll, "nll");
        need_buffer(tokens, n_tokens, "nll: tokens");
        if (n_tokens < 2) fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: nll: needs at least 2 tokens");
        const tqkv::LlamaConfig& c = r->model->model.config();
        check_tokens(tokens, n_tokens, c.vocab_size, "nll");
        const size_t max_ctx = size_t(c.max_position_embeddings);
        if (ctx == 0) ctx = max_ctx;
        if (ctx < 2 || ctx > max_ctx)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: nll: ctx " + std::to_string(ctx) + " out of range [2, " +
                                                std::to_string(max_ctx) + "] (0 = the model's context)");
        r->run->reset();
        tqkv::NllResult res;
        try {
            res = tqkv::evaluate_nll(r->model->model, *r->cache, {tokens, n_tokens}, ctx, true);
        } catch (...) {
            r->run->reset();
            throw;
        }
        r->run->reset();
        *nll = res.nll;
        if (scored) *scored = res.scored;
    });
}


// ---------------------------------------------------------------------------------------------
// Tokenizers

tqkv_status tqkv_tokenizer_load(const char* json, size_t json_len, const char* config_json, size_t config_len,
                                tqkv_tokenizer* out) {
    return guard(
        [&] {
            need_ptr(out, "out");
            need_buffer(json, json_len, "json");
            need_buffer(config_json, config_len, "config_json");
            auto obj = std::make_shared<TokenizerObj>(tqkv::Tokenizer::from_bytes(
                std::string_view(json, json_len), config_json ? std::string_view(config_json, config_len) : std::string_view()));
            *out = reinterpret_cast<tqkv_tokenizer>(tokenizers().add(std::move(obj)));
        },
        TQKV_ERR_BAD_DATA);
}

tqkv_status tqkv_tokenizer_destroy(tqkv_tokenizer tok) {
    return guard([&] { tokenizers().remove(id_of(tok), "tqkv_tokenizer_destroy"); });
}

tqkv_status tqkv_tokenizer_encode(tqkv_tokenizer tok, const char* text, size_t text_len, int32_t add_special, int32_t* ids,
                                  size_t capacity, size_t* n_ids) {
    return guard([&] {
        auto obj = tokenizers().get(id_of(tok), "tokenizer_encode");
        need_buffer(text, text_len, "text");
        need_buffer(ids, capacity, "ids");
        need_ptr(n_ids, "n_ids");
        const std::vector<int32_t> v = obj->tok.encode(std::string_view(text, text_len), add_special != 0);
        *n_ids = v.size();
        if (v.size() > capacity)
            fail(TQKV_ERR_CAPACITY, "tqkv: tokenizer_encode: " + std::to_string(v.size()) + " ids, capacity " + std::to_string(capacity));
        if (!v.empty()) std::memcpy(ids, v.data(), v.size() * sizeof(int32_t));
    });
}

tqkv_status tqkv_tokenizer_decode(tqkv_tokenizer tok, const int32_t* ids, size_t n_ids, char* text, size_t capacity,
                                  size_t* n_bytes) {
    return guard([&] {
        auto obj = tokenizers().get(id_of(tok), "tokenizer_decode");
        need_buffer(ids, n_ids, "ids");
        need_buffer(text, capacity, "text");
        need_ptr(n_bytes, "n_bytes");
        const std::string s = obj->tok.decode(std::vector<int32_t>(ids, ids + n_ids));
        *n_bytes = s.size();
        if (s.size() > capacity)
            fail(TQKV_ERR_CAPACITY, "tqkv: tokenizer_decode: " + std::to_string(s.size()) + " bytes, capacity " + std::to_string(capacity));
        if (!s.empty()) std::memcpy(text, s.data(), s.size());
    });
}

tqkv_status tqkv_tokenizer_get_info(tqkv_tokenizer tok, int32_t* vocab, int32_t* bos, int32_t* eos) {
    return guard([&] {
        auto obj = tokenizers().get(id_of(tok), "tokenizer_get_info");
        if (vocab) *vocab = int32_t(obj->tok.vocab_size());
        if (bos) *bos = obj->tok.bos_id();
        if (eos) *eos = obj->tok.eos_id();
    });
}

tqkv_status tqkv_token_stream_create(tqkv_tokenizer tok, const int32_t* context, size_t n_context, tqkv_token_stream* out) {
    return guard([&] {
        auto t = tokenizers().get(id_of(tok), "token_stream_create");
        need_buffer(context, n_context, "context");
        need_ptr(out, "out");
        auto obj = std::make_shared<TokenStreamObj>(std::move(t), std::vector<int32_t>(context, context + n_context));
        *out = reinterpret_cast<tqkv_token_stream>(token_streams().add(std::move(obj)));
    });
}

tqkv_status tqkv_token_stream_destroy(tqkv_token_stream stream) {
    return guard([&] { token_streams().remove(id_of(stream), "tqkv_token_stream_destroy"); });
}

namespace {

// push(*id), or flush() when id is NULL, on a copy of the stream, kept only when its text fits
// (so that a short buffer or a bad id leaves the stream as it was).
void token_stream_step(tqkv_token_stream stream, const int32_t* id, char* text, size_t capacity, size_t* n_bytes,
                       const char* what) {
    auto obj = token_streams().get(id_of(stream), what);
    need_buffer(text, capacity, "text");
    need_ptr(n_bytes, "n_bytes");
    std::lock_guard<std::mutex> lock(obj->mu);
    tqkv::TokenStream next = obj->stream;
    const std::string s = id ? next.push(*id) : next.flush();
    *n_bytes = s.size();
    if (s.size() > capacity)
        fail(TQKV_ERR_CAPACITY, std::string("tqkv: ") + what + ": " + std::to_string(s.size()) + " bytes, capacity " +
                                    std::to_string(capacity));
    if (!s.empty()) std::memcpy(text, s.data(), s.size());
    obj->stream = std::move(next);
}

}  // namespace

tqkv_status tqkv_token_stream_push(tqkv_token_stream stream, int32_t id, char* text, size_t capacity, size_t* n_bytes) {
    return guard([&] { token_stream_step(stream, &id, text, capacity, n_bytes, "token_stream_push"); });
}

tqkv_status tqkv_token_stream_flush(tqkv_token_stream stream, char* text, size_t capacity, size_t* n_bytes) {
    return guard([&] { token_stream_step(stream, nullptr, text, capacity, n_bytes, "token_stream_flush"); });
}

}  // extern "C"

// =============================================================================================
// Input formats and attention statistics for runtimes (tqkv.h: fp16 input, head-major layouts,
// attend_stats, dot_many). Kept together: the npm package's additions to the C ABI.

namespace {

void check_dtype(int32_t dtype, const char* what) {
    if (dtype != TQKV_DTYPE_F32 && dtype != TQKV_DTYPE_F16)
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": unknown dtype " + std::to_string(dtype) +
                                            " (0 f32, 1 f16)");
}
void check_layout(int32_t layout, const char* what) {
    if (layout != TQKV_LAYOUT_TOKENS && layout != TQKV_LAYOUT_HEADS)
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + ": unknown layout " + std::to_string(layout) +
                                            " (0 tokens [n][heads][head_dim], 1 heads [heads][n][head_dim])");
}
// n_elements must be a positive multiple of a row (heads * dim elements), else the message says so.
size_t rows_of(size_t n_elements, size_t row, const char* what, const char* row_name) {
    if (n_elements == 0 || n_elements % row != 0)
        fail(TQKV_ERR_INVALID_ARGUMENT, std::string("tqkv: ") + what + " has " + std::to_string(n_elements) +
                                            " elements, expected a positive multiple of " + row_name + " = " +
                                            std::to_string(row));
    return n_elements / row;
}

// [heads][n][dim] -> [n][heads][dim] (to_heads = false), or the reverse.
template <class T>
void reorder(const T* in, size_t n, size_t heads, size_t dim, T* out, bool to_heads) {
    for (size_t h = 0; h < heads; ++h)
        for (size_t t = 0; t < n; ++t) {
            const T* a = to_heads ? in + (t * heads + h) * dim : in + (h * n + t) * dim;
            T* b = to_heads ? out + (h * n + t) * dim : out + (t * heads + h) * dim;
            std::copy(a, a + dim, b);
        }
}

// One operand of append_ex as token-major floats: `src` itself when it already is, else widened
// (the kernel table's exact from_half) and/or reordered into buf.
const float* token_major_floats(const tqkv::KVCache& l, const void* src, size_t n, int32_t dtype, int32_t layout,
                                std::vector<float>& buf, const char* what) {
    if (dtype == TQKV_DTYPE_F32 && layout == TQKV_LAYOUT_TOKENS) return static_cast<const float*>(src);
    const auto& c = l.config();
    const size_t heads = size_t(c.kv_heads), dim = size_t(c.head_dim);
    const size_t tokens = rows_of(n, heads * dim, what, "kv_heads * head_dim");
    std::vector<float> widened;
    const float* f = static_cast<const float*>(src);
    if (dtype == TQKV_DTYPE_F16) {
        widened.resize(n);
        tqkv::detail::kernels_by_name(l.kernel()).from_half(static_cast<const uint16_t*>(src), n, widened.data());
        f = widened.data();
    }
    if (layout == TQKV_LAYOUT_TOKENS) {
        buf = std::move(widened);
        return buf.data();
    }
    buf.resize(n);
    reorder(f, tokens, heads, dim, buf.data(), false);
    return buf.data();
}

}  // namespace

extern "C" {

tqkv_status tqkv_cache_append_ex(tqkv_cache cache, int32_t layer, const void* keys, size_t n_keys, const void* values,
                                 size_t n_values, int32_t dtype, int32_t layout) {
    std::vector<float> kbuf, vbuf;
    const float* k = nullptr;
    const float* v = nullptr;
    const tqkv_status st = guard([&] {
        auto obj = caches().get(id_of(cache), "append");
        const tqkv::KVCache& l = layer_of(*obj, layer, "append");
        need_buffer(keys, n_keys, "append: keys");
        need_buffer(values, n_values, "append: values");
        check_dtype(dtype, "append");
        check_layout(layout, "append");
        k = token_major_floats(l, keys, n_keys, dtype, layout, kbuf, "append: keys");
        v = token_major_floats(l, values, n_values, dtype, layout, vbuf, "append: values");
    });
    if (st != TQKV_OK) return st;
    return tqkv_cache_append(cache, layer, k, n_keys, v, n_values);  // the checks and status mapping of append
}

tqkv_status tqkv_cache_attend_ex(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries, float* out,
                                 size_t n_out, int32_t causal, int32_t layout) {
    if (layout == TQKV_LAYOUT_TOKENS) return tqkv_cache_attend(cache, layer, queries, n_queries, out, n_out, causal);
    std::vector<float> q, o;
    size_t heads = 0, dim = 0, m = 0;
    tqkv_status st = guard([&] {
        auto obj = caches().get(id_of(cache), "attend");
        const auto& c = layer_of(*obj, layer, "attend").config();
        need_buffer(queries, n_queries, "attend: queries");
        need_buffer(out, n_out, "attend: out");
        check_layout(layout, "attend");
        heads = size_t(c.heads);
        dim = size_t(c.head_dim);
        m = rows_of(n_queries, heads * dim, "attend: queries", "heads * head_dim");
        if (n_out != n_queries)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: attend: out has " + std::to_string(n_out) + " floats, expected " +
                                                std::to_string(n_queries));
        q.resize(n_queries);
        o.resize(n_out);
        reorder(queries, m, heads, dim, q.data(), false);
    });
    if (st != TQKV_OK) return st;
    st = tqkv_cache_attend(cache, layer, q.data(), q.size(), o.data(), o.size(), causal);
    if (st == TQKV_OK) reorder(o.data(), m, heads, dim, out, true);
    return st;
}

tqkv_status tqkv_cache_attend_stats(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries,
                                    int32_t layout, float* acc, size_t n_acc, float* max_logit, size_t n_max,
                                    float* sum_exp, size_t n_sum) {
    return guard([&] {
        auto obj = caches().get(id_of(cache), "attend_stats");
        const tqkv::KVCache& l = layer_of(*obj, layer, "attend_stats");
        need_buffer(queries, n_queries, "attend_stats: queries");
        need_buffer(acc, n_acc, "attend_stats: acc");
        need_buffer(max_logit, n_max, "attend_stats: max_logit");
        need_buffer(sum_exp, n_sum, "attend_stats: sum_exp");
        check_layout(layout, "attend_stats");
        const size_t heads = size_t(l.config().heads), dim = size_t(l.config().head_dim), row = heads * dim;
        const size_t m = rows_of(n_queries, row, "attend_stats: queries", "heads * head_dim");
        if (n_acc != n_queries || n_max != m * heads || n_sum != m * heads)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: attend_stats: acc has " + std::to_string(n_acc) + " floats, max_logit " +
                                                std::to_string(n_max) + ", sum_exp " + std::to_string(n_sum) +
                                                "; expected " + std::to_string(n_queries) + ", " +
                                                std::to_string(m * heads) + ", " + std::to_string(m * heads));
        std::vector<float> q;
        const float* qp = queries;
        if (layout == TQKV_LAYOUT_HEADS) {
            q.resize(n_queries);
            reorder(queries, m, heads, dim, q.data(), false);
            qp = q.data();
        }
        // Computed aside and copied at the end: a failure (NaN in query i) leaves the outputs untouched.
        std::vector<float> a(n_acc), mx(n_max), sm(n_sum);
        for (size_t i = 0; i < m; ++i)
            l.attend_stats({qp + i * row, row}, {a.data() + i * row, row}, {mx.data() + i * heads, heads},
                           {sm.data() + i * heads, heads}, {}, attend_options());
        if (layout == TQKV_LAYOUT_HEADS) {
            reorder(a.data(), m, heads, dim, acc, true);
            reorder(mx.data(), m, heads, 1, max_logit, true);
            reorder(sm.data(), m, heads, 1, sum_exp, true);
        } else {
            std::copy(a.begin(), a.end(), acc);
            std::copy(mx.begin(), mx.end(), max_logit);
            std::copy(sm.begin(), sm.end(), sum_exp);
        }
    });
}

tqkv_status tqkv_codec_dot_many(tqkv_codec codec, const float* queries, size_t n_queries, const uint8_t* codes,
                                size_t n_codes, float* scores, size_t n_scores) {
    return guard([&] {
        auto obj = codecs().get(id_of(codec), "dot");
        const auto& c = *obj->codec;
        need_buffer(queries, n_queries, "dot: queries");
        need_buffer(codes, n_codes, "dot: codes");
        need_buffer(scores, n_scores, "dot: scores");
        const size_t d = size_t(c.dim()), b = c.bytes_per_vector();
        const size_t m = rows_of(n_queries, d, "dot: queries", "dim");
        const size_t n = rows_of(n_codes, b, "dot: codes", "bytes_per_vector");
        if (n_scores != m * n)
            fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: scores has " + std::to_string(n_scores) + " floats, expected " +
                                                std::to_string(m) + " queries * " + std::to_string(n) + " vectors");
        for (size_t i = 0; i < n_queries; ++i)
            if (!std::isfinite(queries[i]))
                fail(TQKV_ERR_INVALID_ARGUMENT, "tqkv: dot: query " + std::to_string(i / d) + " channel " +
                                                    std::to_string(i % d) + " is not finite");
        c.check_codes(codes, b, n);  // once for all queries
        for (size_t i = 0; i < m; ++i) c.dot_rows(queries + i * d, codes, b, n, scores + i * n);
    });
}


// ---------------------------------------------------------------------------------------------
// Saving and restoring runners (tqkv.h, the block at the end; tqkv::LlamaRunner::save / load)

tqkv_status tqkv_runner_save(tqkv_runner runner, uint8_t* buf, size_t capacity, size_t* size) {
    tqkv_status result = TQKV_OK;
    const tqkv_status st = guard([&] {
        auto r = runners().get(id_of(runner), "runner_save");
        need_ptr(size, "size");
        const std::vector<uint8_t> bytes = r->run->save();  // as calibration_save: no copy kept between the calls
        result = copy_out(bytes.data(), bytes.size(), buf, capacity, size, "tqkv: runner_save: the saved runner");
    });
    return st != TQKV_OK ? st : result;
}

tqkv_status tqkv_runner_load(tqkv_runner runner, const uint8_t* bytes, size_t n_bytes) {
    return guard(
        [&] {
            auto r = runners().get(id_of(runner), "runner_load");
            need_buffer(bytes, n_bytes, "runner_load: bytes");
            r->run->load({bytes, n_bytes});
        },
        TQKV_ERR_BAD_DATA);
}

}  // extern "C"
