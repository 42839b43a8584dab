/* tqkv C ABI: a compressed transformer KV cache (TurboQuant codes, fused attention) and the vector
 * codecs, behind opaque handles and error codes. It is what the WebAssembly build exports
 * (web/dist/tqkv.wasm) and what any C, FFI or foreign-language binding links against.
 *
 *   tqkv_cache_config cfg;
 *   tqkv_cache_config_init(&cfg);          // defaults: 1 layer, 4 heads, d = 128, K4 V4
 *   cfg.layers = 32; cfg.heads = 32; cfg.kv_heads = 8; cfg.window = 64;
 *   tqkv_cache cache;
 *   if (tqkv_cache_create(&cfg, &cache) != TQKV_OK) puts(tqkv_last_error());
 *   tqkv_cache_append(cache, layer, keys, n * 8 * 128, values, n * 8 * 128);
 *   tqkv_cache_attend(cache, layer, queries, m * 32 * 128, out, m * 32 * 128, 1);
 *   tqkv_cache_destroy(cache);
 *
 * Rules that hold for every function:
 *   - Nothing is thrown across this boundary; each function returns a tqkv_status. On failure
 *     tqkv_last_error() (per thread) holds the message (the C++ library's own message where it
 *     produced one) and nothing has changed: no handle was created, the cache holds what it held,
 *     output parameters other than the documented ones are untouched.
 *   - Handles are ids checked against a registry, never dereferenced: a null handle, a destroyed
 *     one (double destroy, use after destroy), or a codec passed where a cache is expected gives
 *     TQKV_ERR_INVALID_HANDLE. Ids are not reused (2^29 creations per kind before wrapping).
 *   - Buffer lengths are counts of elements (floats or bytes) and are checked against the
 *     configuration; a null pointer with a non-zero length is an error.
 *   - Thread safety: different handles may be used from different threads at once. On one cache,
 *     read-only calls (attend, save, tokens, bytes_used, get_config) may run concurrently with
 *     each other; append, truncate, clear, load-into and destroy need exclusive access.
 */
#ifndef TQKV_TQKV_H
#define TQKV_TQKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__EMSCRIPTEN__) || defined(__wasm__)
#define TQKV_API __attribute__((visibility("default"), used))
#elif defined(__GNUC__)
#define TQKV_API __attribute__((visibility("default")))
#else
#define TQKV_API
#endif

#define TQKV_ABI_VERSION 1

typedef enum tqkv_status {
    TQKV_OK = 0,
    TQKV_ERR_INVALID_ARGUMENT = 1, /* bad configuration, wrong buffer length, NaN/Inf input, ... */
    TQKV_ERR_INVALID_HANDLE = 2,   /* null, destroyed, or of the wrong kind */
    TQKV_ERR_OUT_OF_MEMORY = 3,    /* an allocation failed (wasm: the memory could not grow) */
    TQKV_ERR_CAPACITY = 4,         /* append beyond max_tokens */
    TQKV_ERR_BAD_DATA = 5,         /* load: truncated, corrupted or hostile bytes */
    TQKV_ERR_BUFFER_TOO_SMALL = 6, /* save: the buffer is smaller than the serialized cache */
    TQKV_ERR_INTERNAL = 7          /* anything else (a bug: please report the message) */
} tqkv_status;

/* Opaque handles. Their values are registry ids, not addresses. */
typedef struct tqkv_cache_s* tqkv_cache;
typedef struct tqkv_codec_s* tqkv_codec;
typedef struct tqkv_calibration_s* tqkv_calibration;
typedef struct tqkv_model_s* tqkv_model;

enum { TQKV_METHOD_MSE = 0, TQKV_METHOD_PROD = 1, TQKV_METHOD_QJL = 2 };
enum { TQKV_NORM_F16 = 0, TQKV_NORM_F32 = 1 };
/* Attention arithmetic (tqkv::Precision, tqkv/spec.hpp): exact float tables, or the bounded-error
 * integer fast path (codes of 1-4 bits; the error bound is derived in lib/src/kernels/simd/fast_attention.hpp). */
enum { TQKV_PRECISION_EXACT = 0, TQKV_PRECISION_FAST = 1 };

/* The message of the last failed call on this thread ("" if none); valid until the next failing
 * call on this thread. Successful calls do not clear it. */
TQKV_API const char* tqkv_last_error(void);
/* A short name for a status code ("ok", "invalid argument", ...). */
TQKV_API const char* tqkv_status_name(int status);
/* TQKV_ABI_VERSION of the library. */
TQKV_API int tqkv_abi_version(void);
/* The kernel used when none is named: "avx512", "avx2", "neon", "wasm128" or "scalar". */
TQKV_API const char* tqkv_default_kernel(void);
/* Threads that later calls may use, the caller's included, 1..64 (default 1): cache attention
 * (tqkv_cache_attend, _ex, _stats) and a runner's matrix products and attention. Results are the
 * same bits for every count (the work splits into pieces of fixed size). Process-wide. Natively
 * the library's pool starts its threads on first use; in WebAssembly the threads are the workers
 * the loader started on a shared memory (npm: Tqkv.load({ threads })), and pieces beyond them
 * run on the caller. */
TQKV_API tqkv_status tqkv_set_threads(int32_t threads);
/* The count tqkv_set_threads set. */
TQKV_API int32_t tqkv_get_threads(void);
/* Threads running now besides the caller: the native pool's workers, or the wasm module's
 * workers (0 in a module without threads). */
TQKV_API int32_t tqkv_worker_threads(void);

/* ---------------------------------------------------------------------------------------------
 * KV cache: `layers` layers of one configuration (layer l is coded with seed derive(seed, l)).
 *
 * Field offsets are fixed (wasm32 / 64-bit): everything up to offset 80 is the same on every
 * target; the three pointers follow (80/84/88 on wasm32, 80/88/96 on 64-bit targets), then
 * precision (92 on wasm32, where the struct had 4 bytes of padding: its size stays 96; 104 on
 * 64-bit targets, size 112). */
typedef struct tqkv_cache_config {
    uint32_t struct_size;          /*  0: sizeof(tqkv_cache_config); set by tqkv_cache_config_init */
    int32_t layers;                /*  4: 1..1024 */
    int32_t heads;                 /*  8: query heads, 1..4096 */
    int32_t kv_heads;              /* 12: KV heads, divides heads (grouped-query attention) */
    int32_t head_dim;              /* 16: 3..1024 */
    int32_t key_method;            /* 20: TQKV_METHOD_MSE or TQKV_METHOD_PROD */
    double key_bits;               /* 24: mse 1..8, prod 2..8, or fractional with high channels */
    double value_bits;             /* 32: 1..8 or fractional (values always use mse) */
    int32_t block_tokens;          /* 40: tokens per block, a multiple of 32 in [32, 4096] */
    int32_t window;                /* 44: most recent tokens kept exactly (fp32), 0..4096 */
    float scale;                   /* 48: attention scale; 0 = 1/sqrt(head_dim) */
    int32_t norm_format;           /* 52: TQKV_NORM_F16 or TQKV_NORM_F32 */
    uint64_t max_tokens;           /* 56: capacity per layer; 0 = unbounded (2^28) */
    uint64_t seed;                 /* 64 */
    int32_t n_key_high_channels;   /* 72: fractional key_bits: number of high channels */
    int32_t n_value_high_channels; /* 76 */
    const int32_t* key_high_channels;   /* 80: channel indices (NULL when n = 0) */
    const int32_t* value_high_channels;
    const char* kernel;            /* NULL or "" = best available; "scalar", "avx2", ... */
    int32_t precision;             /* TQKV_PRECISION_FAST (the default, as in C++:
                                      tqkv_cache_config_init, tqkv_cache_load, runner specs without
                                      the option) or _EXACT; tqkv_cache_create_spec: a spec's exact /
                                      fast option wins over it. Fast: integer tables, error bounded
                                      (tqkv/spec.hpp: Precision) */
} tqkv_cache_config;

/* Fills the defaults: struct_size, 1 layer, 4 heads, 4 KV heads, d = 128, mse K4 V4, blocks of 64
 * tokens, no window, default scale and seed, fp16 norms, unbounded. */
TQKV_API tqkv_status tqkv_cache_config_init(tqkv_cache_config* cfg);
/* sizeof(tqkv_cache_config) in this build (bindings that fill the struct in memory check it). */
TQKV_API size_t tqkv_cache_config_size(void);

TQKV_API tqkv_status tqkv_cache_create(const tqkv_cache_config* cfg, tqkv_cache* out);
/* Destroys the cache; the handle is invalid afterwards (a second destroy is an error). */
TQKV_API tqkv_status tqkv_cache_destroy(tqkv_cache cache);

/* Appends n tokens to one layer: keys and values are [n][kv_heads][head_dim] floats, so
 * n_keys = n_values = n * kv_heads * head_dim, n >= 1. */
TQKV_API tqkv_status tqkv_cache_append(tqkv_cache cache, int32_t layer, const float* keys, size_t n_keys,
                                       const float* values, size_t n_values);
/* Attention of m queries [m][heads][head_dim] over the layer's tokens into out (same shape).
 * causal != 0: query i sits at position tokens - m + i and sees tokens up to it (chunked
 * prefill after appending the chunk); causal = 0: every query sees every token. */
TQKV_API tqkv_status tqkv_cache_attend(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries,
                                       float* out, size_t n_out, int32_t causal);
/* The queries of the last chunk appended to `layer` (-1: every layer) have been answered: frees
 * the exact rows the cache kept for them beyond the window (with a window, a chunk of n tokens
 * holds n + window fp32 rows until the next append; tqkv/cache.hpp: KVCache::release_chunk_rows).
 * Attention afterwards reads those tokens as codes. */
TQKV_API tqkv_status tqkv_cache_release_chunk_rows(tqkv_cache cache, int32_t layer);
/* Keeps the first n tokens of every layer (speculative-decoding rollback); n <= tokens of each. */
TQKV_API tqkv_status tqkv_cache_truncate(tqkv_cache cache, size_t n_tokens);
/* Removes every token of every layer (the configuration stays). */
TQKV_API tqkv_status tqkv_cache_clear(tqkv_cache cache);
/* Tokens held by one layer. */
TQKV_API tqkv_status tqkv_cache_tokens(tqkv_cache cache, int32_t layer, size_t* out);
/* All memory the cache holds (blocks, windows, tables), all layers. */
TQKV_API tqkv_status tqkv_cache_bytes_used(tqkv_cache cache, size_t* out);
/* The configuration of layer 0 (its seed; scale: the effective scale, 1/sqrt(head_dim) unless set;
 * the pointers are set to NULL). cfg->struct_size must be set. */
TQKV_API tqkv_status tqkv_cache_get_config(tqkv_cache cache, tqkv_cache_config* cfg);
/* Name of the kernel table the cache uses (static string), or NULL for a bad handle. */
TQKV_API const char* tqkv_cache_kernel(tqkv_cache cache);
/* Sets the attention arithmetic of every layer (TQKV_PRECISION_*). Not saved with the cache (the
 * codes are the same either way): a loaded cache is exact until this is called. */
TQKV_API tqkv_status tqkv_cache_set_precision(tqkv_cache cache, int32_t precision);
/* Sliding-window attention (Mistral's sliding_window) on every layer: a query at position p sees
 * only tokens p - window + 1 .. p, and tokens no future query sees are dropped (codes zeroed,
 * blocks freed: memory bounded by the window, not the context). 0 = none. Saved with the cache.
 * TQKV_ERR_INVALID_ARGUMENT (nothing changed) when tokens were dropped under another window or the
 * cache has max_tokens. After dropping, truncate refuses to go below what the next query sees. */
TQKV_API tqkv_status tqkv_cache_set_attention_window(tqkv_cache cache, size_t window);

/* Serialization (magic, version, config, little-endian payload, CRC32; the same bytes on every
 * target). *size is always set to the serialized size; if buf is NULL or capacity < *size the
 * call returns TQKV_ERR_BUFFER_TOO_SMALL (a size query) and writes nothing, else it copies the
 * bytes. The bytes of a size query are kept until the cache changes, so query + copy serializes
 * once. */
TQKV_API tqkv_status tqkv_cache_save(tqkv_cache cache, uint8_t* buf, size_t capacity, size_t* size);
/* A new cache from serialized bytes; kernel as in the config (NULL = best). Every layer must
 * have the same shape. Bad bytes give TQKV_ERR_BAD_DATA. */
TQKV_API tqkv_status tqkv_cache_load(const uint8_t* bytes, size_t n_bytes, const char* kernel, tqkv_cache* out);

/* ---------------------------------------------------------------------------------------------
 * Calibrated caches from specs (tqkv/spec.hpp, tqkv/calibration.hpp): the cache that wins end to end.
 *
 *   tqkv_calibration cal;
 *   tqkv_calibration_new(layers, kv_heads, head_dim, &cal);
 *   for (l = 0; l < layers; ++l)                   // e.g. the K/V of a first prefill
 *       tqkv_calibration_add(cal, l, keys[l], n * kv_heads * head_dim, values[l], n * kv_heads * head_dim);
 *   tqkv_cache_config base;
 *   tqkv_cache_config_init(&base);                  // shape, max_tokens, block_tokens, kernel
 *   base.layers = layers; base.heads = heads; base.kv_heads = kv_heads; base.head_dim = head_dim;
 *   tqkv_cache cache;
 *   tqkv_cache_create_spec("K3.5V2.5-w16", &base, cal, &cache);   // or a preset name: "default"
 *   // ... tqkv_cache_append / attend / save as any cache; the calibration may be destroyed now.
 *
 * A calibration holds per (layer, KV head) channel sums of keys and values (and optionally
 * queries); tqkv_calibration_create (below, with a model) makes the same object from an exact
 * forward pass. A calibration needs exclusive access while it is added to; anything else may read
 * it concurrently. */

/* An empty calibration: layers 1..1024, kv_heads 1..4096, head_dim 3..1024. */
TQKV_API tqkv_status tqkv_calibration_new(int32_t layers, int32_t kv_heads, int32_t head_dim, tqkv_calibration* out);
/* Adds n tokens of one layer: keys and values [n][kv_heads][head_dim] (keys after RoPE), n_keys =
 * n_values = n * kv_heads * head_dim, n >= 1, finite values. */
TQKV_API tqkv_status tqkv_calibration_add(tqkv_calibration cal, int32_t layer, const float* keys, size_t n_keys,
                                          const float* values, size_t n_values);
/* Optional: queries [n][heads][head_dim] of the same tokens (heads a multiple of kv_heads). */
TQKV_API tqkv_status tqkv_calibration_add_queries(tqkv_calibration cal, int32_t layer, int32_t heads,
                                                  const float* queries, size_t n_queries);
/* Shape and the fewest tokens added to any layer (0: some layer has none; a cache needs >= 1). */
TQKV_API tqkv_status tqkv_calibration_get_info(tqkv_calibration cal, int32_t* layers, int32_t* kv_heads,
                                               int32_t* head_dim, uint64_t* min_tokens);
/* Serialization ("TQKVCALI", version, sums, CRC-32), with the size-query convention of
 * tqkv_cache_save. load: bad bytes give TQKV_ERR_BAD_DATA. */
TQKV_API tqkv_status tqkv_calibration_save(tqkv_calibration cal, uint8_t* buf, size_t capacity, size_t* size);
TQKV_API tqkv_status tqkv_calibration_load(const uint8_t* bytes, size_t n_bytes, tqkv_calibration* out);

/* Auto rate specs ("auto-3.5") allocate bits per layer by the model's layer sensitivities, which a
 * short probe with the model measures into the calibration (tokens: calibration text, never
 * evaluated text, of which the first min(512, context) are used; one exact pass and 2 * layers
 * partial ones of that length, see tqkv::measure_sensitivity). The model must have the
 * calibration's shape. */
TQKV_API tqkv_status tqkv_calibration_measure_sensitivity(tqkv_calibration cal, tqkv_model model, const int32_t* tokens,
                                                          size_t n_tokens);
/* The per-layer rates an auto spec gets from a calibration, as JSON ({"budget":..,"bits_per_coord":..,
 * "predicted_dnll":..,"layers":[{"k":..,"v":..},...]}), with the size-query convention of
 * tqkv_cache_save (the size includes the terminating NUL). base: the shape as for
 * tqkv_cache_create_spec; base->max_tokens is the context the window is counted over (0 = 4096). */
TQKV_API tqkv_status tqkv_rate_plan(const char* spec, const tqkv_cache_config* base, tqkv_calibration cal, char* buf,
                                    size_t capacity, size_t* size);

/* A cache from a spec or preset name (tqkv formats: "K<b>V<b>[-opt...]"; grammar in
 * tqkv_cache_spec_grammar()) with a calibration of the same shape (NULL: plain TurboQuant;
 * fractional rates then need a calibration to choose their high channels). base gives the shape
 * (layers, heads, kv_heads, head_dim) and what a spec does not say (block_tokens, max_tokens,
 * norm_format, kernel); its bits, method, window, scale, seed and channel fields are ignored. The
 * cache is self-contained: save/load keep the calibration's means. */
TQKV_API tqkv_status tqkv_cache_create_spec(const char* spec, const tqkv_cache_config* base, tqkv_calibration cal,
                                            tqkv_cache* out);
/* The grammar of specs (static string). */
TQKV_API const char* tqkv_cache_spec_grammar(void);
/* Presets: index 0 .. count-1; name, spec and a one-line summary (static strings; NULL out of range). */
TQKV_API int32_t tqkv_preset_count(void);
TQKV_API const char* tqkv_preset_name(int32_t index);
TQKV_API const char* tqkv_preset_spec(int32_t index);
TQKV_API const char* tqkv_preset_summary(int32_t index);

/* ---------------------------------------------------------------------------------------------
 * Vector codecs (encode / decode / score single vectors; for teaching pages and tools).
 * Offsets: everything up to 40 is fixed; the two pointers follow (40/44 wasm32, 40/48 64-bit). */
typedef struct tqkv_codec_config {
    uint32_t struct_size;        /*  0 */
    int32_t dim;                 /*  4: 3..1024 */
    double bits;                 /*  8: mse 1..8, prod 2..8, qjl 1, or fractional */
    int32_t method;              /* 16: TQKV_METHOD_* */
    int32_t norm_format;         /* 20: TQKV_NORM_* */
    uint64_t seed;               /* 24 */
    int32_t n_high_channels;     /* 32 */
    int32_t reserved;            /* 36: 0 */
    const int32_t* high_channels; /* 40 */
    const char* kernel;
} tqkv_codec_config;

TQKV_API tqkv_status tqkv_codec_config_init(tqkv_codec_config* cfg); /* d = 128, mse, 4 bits */
TQKV_API size_t tqkv_codec_config_size(void);
TQKV_API tqkv_status tqkv_codec_create(const tqkv_codec_config* cfg, tqkv_codec* out);
TQKV_API tqkv_status tqkv_codec_destroy(tqkv_codec codec);
TQKV_API tqkv_status tqkv_codec_bytes_per_vector(tqkv_codec codec, size_t* out);
/* n = n_x / dim vectors (n_x a positive multiple of dim) -> n * bytes_per_vector bytes (n_out
 * exactly that). */
TQKV_API tqkv_status tqkv_codec_encode(tqkv_codec codec, const float* x, size_t n_x, uint8_t* out, size_t n_out);
/* n = n_codes / bytes_per_vector vectors -> n * dim floats (n_out exactly that). */
TQKV_API tqkv_status tqkv_codec_decode(tqkv_codec codec, const uint8_t* codes, size_t n_codes, float* out,
                                       size_t n_out);
/* scores[v] = estimate of <query, x_v> from the codes: n_query = dim, n_scores = number of vectors. */
TQKV_API tqkv_status tqkv_codec_dot(tqkv_codec codec, const float* query, size_t n_query, const uint8_t* codes,
                                    size_t n_codes, float* scores, size_t n_scores);

/* ---------------------------------------------------------------------------------------------
 * The dense fp32 baseline (exact attention over a plain cache, same kernels as the fused path),
 * for benchmarks: query [heads][head_dim], keys/values head-major [kv_heads][tokens][head_dim],
 * out [heads][head_dim]. */
TQKV_API tqkv_status tqkv_dense_attention_f32(int32_t heads, int32_t kv_heads, int32_t head_dim, size_t tokens,
                                              const float* query, size_t n_query, const float* keys,
                                              const float* values, size_t n_kv, float* out, size_t n_out);

/* ---------------------------------------------------------------------------------------------
 * Llama models (tqkv::LlamaModel / tqkv::LlamaRunner of lib/include/tqkv/model.hpp): load a
 * Hugging Face Llama checkpoint from memory, run prefill and token-by-token decode with the KV
 * cache of a spec, score text. The WebAssembly build receives the files via fetch.
 *
 *   tqkv_model m;
 *   tqkv_model_load(config_json, strlen(config_json), safetensors, n_bytes, &m);
 *   tqkv_calibration cal = NULL;        // preconditioning statistics for the tqkv cache specs
 *   tqkv_calibration_create(m, calib_tokens, n_calib, &cal);
 *   tqkv_runner r;
 *   tqkv_runner_create(m, "K3.5V2.5-w16", cal, 0, &r);
 *   int32_t next;
 *   tqkv_runner_prefill(r, prompt, n_prompt, NULL, 0, &next);    // greedy: next = argmax
 *   for (i = 0; i < 64; ++i) { emit(next); tqkv_runner_decode(r, next, NULL, 0, &next); }
 *   tqkv_runner_destroy(r); tqkv_calibration_destroy(cal); tqkv_model_destroy(m);
 *
 * Tokens are int32 ids in [0, vocab) (for a byte-vocabulary model, vocab 256: the bytes of the
 * text). A runner keeps its model alive: destroying the model handle while runners exist only
 * invalidates the handle. One runner needs exclusive access per call; different runners (and
 * calibrations, models) may be used from different threads. Arguments are checked before
 * anything runs; a prefill/decode that fails while running (out of memory) resets the runner to
 * position 0. */
typedef struct tqkv_runner_s* tqkv_runner;

/* The shape of a loaded model (offsets fixed on every target; 48 bytes). */
typedef struct tqkv_model_info {
    uint32_t struct_size; /*  0: set by the caller to sizeof(tqkv_model_info) */
    int32_t layers;       /*  4 */
    int32_t hidden;       /*  8 */
    int32_t heads;        /* 12: query heads */
    int32_t kv_heads;     /* 16 */
    int32_t head_dim;     /* 20 */
    int32_t intermediate; /* 24 */
    int32_t vocab;        /* 28: 256 = byte vocabulary (token = byte) */
    int32_t context;      /* 32: max_position_embeddings, the runner's limit */
    int32_t tied;         /* 36: 1 when the output layer is the embedding table */
    uint64_t parameters;  /* 40 */
} tqkv_model_info;

/* The cache of a runner (offsets fixed; 48 bytes). */
typedef struct tqkv_runner_stats {
    uint32_t struct_size;  /*  0: set by the caller to sizeof(tqkv_runner_stats) */
    int32_t reserved;      /*  4 */
    uint64_t position;     /*  8: tokens run since the last reset (= tokens in the cache) */
    double cache_bytes;    /* 16: storage the cache format needs for the tokens it holds (codes,
                                  norms, scales; exact window tokens counted as fp16), all layers,
                                  keys + values; tokens a sliding window dropped are not held */
    double fp16_bytes;     /* 24: an fp16 cache of the same (held) tokens */
    double bits_per_coord; /* 32: cache_bytes * 8 / coordinates of the held tokens (0 when empty) */
    uint64_t memory_bytes; /* 40: memory the cache holds (buffers reserved for the whole context) */
} tqkv_runner_stats;

/* A model from config.json text (HF LlamaConfig keys) and the bytes of model.safetensors (fp16,
 * bf16 or fp32; converted to fp32, so the model needs 4 bytes per parameter). Both are copied;
 * the caller may free them afterwards. Malformed files (bad header length, missing tensors,
 * shapes that do not match the config, unsupported dtype, non-finite weights) give
 * TQKV_ERR_BAD_DATA with the loader's message. */
TQKV_API tqkv_status tqkv_model_load(const char* config_json, size_t config_len, const uint8_t* safetensors,
                                     size_t n_bytes, tqkv_model* out);
/* A sharded checkpoint (model.safetensors.index.json and the files its weight_map lists) from
 * memory: n_shards (1..4096) files, shards[i] of shard_bytes[i] bytes, named names[i] (the file
 * name the index gives it, NUL-terminated; in any order). index_json: the index's text, or NULL
 * (index_len 0) to merge the shards without one (names may then be NULL). Everything is copied.
 * TQKV_ERR_BAD_DATA with the loader's message, nothing created: a file the index lists but not
 * given, a shard it does not list or given twice, a tensor it names missing from its shard, a
 * tensor in two shards, and every error of tqkv_model_load. */
TQKV_API tqkv_status tqkv_model_load_shards(const char* config_json, size_t config_len, const char* index_json,
                                            size_t index_len, size_t n_shards, const char* const* names,
                                            const uint8_t* const* shards, const size_t* shard_bytes, tqkv_model* out);
TQKV_API tqkv_status tqkv_model_destroy(tqkv_model model);
TQKV_API tqkv_status tqkv_model_get_info(tqkv_model model, tqkv_model_info* info);
/* The matrix-product kernel of the runner: "avx512", "avx2", "wasm128" or "plain". */
TQKV_API const char* tqkv_matmul_kernel(void);

/* Statistics of keys, values and queries from an exact-cache pass of the model over n tokens
 * (in segments of the model's context), which the tqkv cache specs use to precondition keys
 * and values (mean centering, high channels of fractional rates). n >= 1. */
TQKV_API tqkv_status tqkv_calibration_create(tqkv_model model, const int32_t* tokens, size_t n_tokens,
                                             tqkv_calibration* out);
TQKV_API tqkv_status tqkv_calibration_destroy(tqkv_calibration cal);

/* A runner over the model with a KV cache from a spec: "fp32" (exact), "fp16", "q8_0", "q4_0",
 * "kivi2", "kivi4", or tqkv "K<bits>V<bits>[-w<window>][-prod][-raw]..." (e.g. "K4V4",
 * "K3.5V2.5-w16", "K4V4-raw"; grammar in model.hpp). cal: calibration of the same model, used
 * by the tqkv specs (NULL: plain TurboQuant without centering, high channels from the first
 * prefill), ignored by the others. max_chunk: tokens per forward step of prefill, 0 = 128.
 * The cache's buffers are reserved for the model's whole context here. */
TQKV_API tqkv_status tqkv_runner_create(tqkv_model model, const char* cache_spec, tqkv_calibration cal,
                                        int32_t max_chunk, tqkv_runner* out);
TQKV_API tqkv_status tqkv_runner_destroy(tqkv_runner runner);
/* Runs n >= 1 tokens at positions position .. position + n - 1 (TQKV_ERR_CAPACITY past the
 * model's context). logits: n_logits = 0 (none), vocab (the last token's next-token logits) or
 * n * vocab (every token's). next: when not NULL, the argmax of the last token's logits (the
 * greedy next token; the lowest id among equal maxima). */
TQKV_API tqkv_status tqkv_runner_prefill(tqkv_runner runner, const int32_t* tokens, size_t n_tokens, float* logits,
                                         size_t n_logits, int32_t* next);
/* One token: prefill of n = 1 (n_logits 0 or vocab). */
TQKV_API tqkv_status tqkv_runner_decode(tqkv_runner runner, int32_t token, float* logits, size_t n_logits,
                                        int32_t* next);
/* Empties the cache: position 0. */
TQKV_API tqkv_status tqkv_runner_reset(tqkv_runner runner);
TQKV_API tqkv_status tqkv_runner_get_stats(tqkv_runner runner, tqkv_runner_stats* stats);
/* Mean negative log-likelihood (nats per token) of tokens[1..] given the prefix, in segments of
 * ctx tokens (0 = the model's context), each from an empty cache, attention token by token as in
 * decode. n >= 2. The runner is reset before and after. scored may be NULL. */
TQKV_API tqkv_status tqkv_runner_nll(tqkv_runner runner, const int32_t* tokens, size_t n_tokens, size_t ctx,
                                     double* nll, size_t* scored);


/* ---------------------------------------------------------------------------------------------
 * Input formats and attention statistics for runtimes (used by the npm package, web/src/cache.ts
 * and codec.ts): fp16 keys/values widened inside the library, head-major tensors, the softmax
 * statistics that merge with attention computed elsewhere, many queries per codec call.
 */
enum { TQKV_DTYPE_F32 = 0, TQKV_DTYPE_F16 = 1 /* IEEE 754 binary16 bits (uint16_t) */ };
enum {
    TQKV_LAYOUT_TOKENS = 0, /* token-major [n][heads][head_dim] (what tqkv_cache_append/attend take) */
    TQKV_LAYOUT_HEADS = 1   /* head-major [heads][n][head_dim] (e.g. a [kv_heads][seq][head_dim] KV tensor) */
};

/* tqkv_cache_append with keys/values of element type dtype in layout (heads = kv_heads);
 * n_keys = n_values = n * kv_heads * head_dim elements. fp16 elements are widened exactly (the
 * same bits as appending the widened floats); a head-major tensor is reordered inside. */
TQKV_API tqkv_status tqkv_cache_append_ex(tqkv_cache cache, int32_t layer, const void* keys, size_t n_keys,
                                          const void* values, size_t n_values, int32_t dtype, int32_t layout);
/* tqkv_cache_attend with queries and out in layout (heads = query heads). */
TQKV_API tqkv_status tqkv_cache_attend_ex(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries,
                                          float* out, size_t n_out, int32_t causal, int32_t layout);
/* Softmax statistics of m queries over all tokens of a layer (every query sees every token), per
 * query token and head (KVCache::attend_stats): max_logit = M = max_t s_t, sum_exp = sum_t exp(s_t - M),
 * acc = sum_t exp(s_t - M) v_t (unnormalized), s_t = scale * q.k_t. Layout of queries and acc as
 * given ([m][heads][head_dim] or [heads][m][head_dim]); max_logit and sum_exp are [m][heads] or
 * [heads][m]. n_acc = n_queries, n_max = n_sum = m * heads. Merging with statistics (M', S', A')
 * of other tokens: out = (e^(M-X) acc + e^(M'-X) A') / (e^(M-X) sum_exp + e^(M'-X) S'), X = max(M, M'). */
TQKV_API tqkv_status tqkv_cache_attend_stats(tqkv_cache cache, int32_t layer, const float* queries, size_t n_queries,
                                             int32_t layout, float* acc, size_t n_acc, float* max_logit, size_t n_max,
                                             float* sum_exp, size_t n_sum);
/* tqkv_codec_dot for m queries (n_queries = m * dim) over the same codes: scores [m][n_vectors]. */
TQKV_API tqkv_status tqkv_codec_dot_many(tqkv_codec codec, const float* queries, size_t n_queries, const uint8_t* codes,
                                         size_t n_codes, float* scores, size_t n_scores);

/* ---------------------------------------------------------------------------------------------
 * Tokenizers (tqkv::Tokenizer of lib/include/tqkv/tokenizer.hpp): a Hugging Face tokenizer.json
 * (byte-level BPE as GPT-2 / Llama 3 / Qwen2 / SmolLM, SentencePiece-style BPE with byte fallback
 * as Llama 2 / Mistral / TinyLlama) or a SentencePiece tokenizer.model (BPE and unigram models,
 * with their character maps), the same C++ in native and WebAssembly builds. What it does not
 * implement is refused at load (TQKV_ERR_BAD_DATA, "unsupported: <field>").
 *
 *   tqkv_tokenizer tok;
 *   tqkv_tokenizer_load(json, json_len, config_json, config_len, &tok);   // config: may be NULL, 0
 *   size_t n;
 *   tqkv_tokenizer_encode(tok, text, text_len, 1, ids, capacity, &n);    // 1: BOS/EOS as configured
 *   tqkv_tokenizer_decode(tok, ids, n, buf, buf_size, &n_bytes);
 *   tqkv_tokenizer_destroy(tok); */
typedef struct tqkv_tokenizer_s* tqkv_tokenizer;

/* The bytes of tokenizer.json or of tokenizer.model (told apart by the first byte other than
 * whitespace: '{' is JSON) and (optionally, config_json NULL / 0 for none) tokenizer_config.json,
 * which decides BOS/EOS (add_bos_token, add_eos_token, bos_token, eos_token). Both copied. */
TQKV_API tqkv_status tqkv_tokenizer_load(const char* json, size_t json_len, const char* config_json, size_t config_len,
                                         tqkv_tokenizer* out);
TQKV_API tqkv_status tqkv_tokenizer_destroy(tqkv_tokenizer tok);
/* Token ids of UTF-8 text (special tokens written in the text are recognized; add_special != 0 adds
 * BOS/EOS). *n_ids receives the count; when it exceeds capacity nothing is written and the call
 * returns TQKV_ERR_CAPACITY (*n_ids is then the capacity needed). 3 * text_len + 8 ids always suffice
 * (a space or an invalid byte can become a 3-byte symbol, which byte fallback may spell byte by byte). */
TQKV_API tqkv_status tqkv_tokenizer_encode(tqkv_tokenizer tok, const char* text, size_t text_len, int32_t add_special,
                                           int32_t* ids, size_t capacity, size_t* n_ids);
/* The text of ids (UTF-8 bytes, special tokens as their text). *n_bytes receives its length;
 * TQKV_ERR_CAPACITY with the length needed when it exceeds capacity. An id outside the
 * vocabulary: TQKV_ERR_INVALID_ARGUMENT. */
TQKV_API tqkv_status tqkv_tokenizer_decode(tqkv_tokenizer tok, const int32_t* ids, size_t n_ids, char* text,
                                           size_t capacity, size_t* n_bytes);
/* Vocabulary size (added tokens included) and the BOS / EOS ids (-1 when none). Any pointer may be NULL. */
TQKV_API tqkv_status tqkv_tokenizer_get_info(tqkv_tokenizer tok, int32_t* vocab, int32_t* bos, int32_t* eos);

/* The token ids that end generation (tqkv::end_of_sequence_ids, where tqkv-run stops): config.json's
 * eos_token_id(s) and tok's EOS, each once, in that order, ids outside the vocabulary dropped; none
 * for a byte tokenizer (every id is a byte of text). tok NULL: config.json's eos_token_id(s) alone.
 * *n_ids is the count; TQKV_ERR_CAPACITY when it exceeds capacity (ids untouched). */
TQKV_API tqkv_status tqkv_model_end_of_sequence(tqkv_model model, tqkv_tokenizer tok, int32_t* ids, size_t capacity,
                                                size_t* n_ids);

/* The text of generated ids as they come (tqkv::TokenStream): push(id) gives the UTF-8 bytes the id
 * adds, holding back a character split over ids (byte-level and byte-fallback tokens can end inside
 * one) until it is whole; flush gives what is held back at the end. The bytes of every push and the
 * flush are decode(context + ids) without the context's text; each push decodes a few ids, not the
 * whole history. The stream keeps its tokenizer alive (destroying the tokenizer handle first is
 * fine). Calls on one stream need exclusive access.
 *
 *   tqkv_token_stream s;
 *   tqkv_token_stream_create(tok, prompt, n_prompt, &s);   // context: NULL, 0 for none
 *   for (each generated id) {
 *       tqkv_token_stream_push(s, id, buf, sizeof buf, &n);  fwrite(buf, 1, n, stdout);
 *   }
 *   tqkv_token_stream_flush(s, buf, sizeof buf, &n);
 *   tqkv_token_stream_destroy(s); */
typedef struct tqkv_token_stream_s* tqkv_token_stream;

/* context: the ids before the generated ones (the prompt; only its last few are decoded with the
 * generated ids, so that the first generated word keeps its space: decoders drop a text's leading
 * space). An id outside the vocabulary: TQKV_ERR_INVALID_ARGUMENT. */
TQKV_API tqkv_status tqkv_token_stream_create(tqkv_tokenizer tok, const int32_t* context, size_t n_context,
                                              tqkv_token_stream* out);
TQKV_API tqkv_status tqkv_token_stream_destroy(tqkv_token_stream stream);
/* *n_bytes receives the length of the text id adds (0 while a character is unfinished). When it
 * exceeds capacity, or the id is outside the vocabulary (TQKV_ERR_INVALID_ARGUMENT), nothing is
 * written and the stream is unchanged: TQKV_ERR_CAPACITY with *n_bytes the capacity needed (call
 * again with a larger buffer). */
TQKV_API tqkv_status tqkv_token_stream_push(tqkv_token_stream stream, int32_t id, char* text, size_t capacity,
                                            size_t* n_bytes);
/* What is held back (an unfinished character as its bytes, or U+FFFD for a tokenizer.model); the
 * capacity rule of push. */
TQKV_API tqkv_status tqkv_token_stream_flush(tqkv_token_stream stream, char* text, size_t capacity, size_t* n_bytes);

/* ---------------------------------------------------------------------------------------------
 * Saving and restoring a runner (its position and its cache), e.g. to continue a conversation
 * after a page reload:
 *
 *   size_t n;
 *   tqkv_runner_save(r, NULL, 0, &n);           // TQKV_ERR_BUFFER_TOO_SMALL, n = the size
 *   tqkv_runner_save(r, buf, n, &n);
 *   ... later, a runner of the same model, cache spec and calibration:
 *   tqkv_runner_load(r2, buf, n);               // r2 now decodes exactly as r would have
 *
 * Bytes: "TQKVRUNR", version, the model's shape, the position, the cache's state, CRC-32. Only the
 * tqkv specs can be saved (their serialized cache: codes, exact window and the calibration's
 * means; about the cache's own size); the others (fp32, fp16, q8_0, q4_0, kivi, the emulated tqkv
 * path: sinks, emu) give TQKV_ERR_INVALID_ARGUMENT: re-prefill their tokens instead. Each size
 * query serializes the runner again (no copy is kept between the calls). */

/* Size-query convention of tqkv_cache_save (*size always receives the size). */
TQKV_API tqkv_status tqkv_runner_save(tqkv_runner runner, uint8_t* buf, size_t capacity, size_t* size);
/* Restores saved bytes. TQKV_ERR_BAD_DATA, runner unchanged: malformed bytes, a model of another
 * shape, a cache of another spec or calibration, or a cache that cannot be restored. */
TQKV_API tqkv_status tqkv_runner_load(tqkv_runner runner, const uint8_t* bytes, size_t n_bytes);

#ifdef __cplusplus
}
#endif

#endif /* TQKV_TQKV_H */
