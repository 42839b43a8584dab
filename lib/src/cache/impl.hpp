// Internals of KVCache shared by cache/storage.cpp (construction, append, truncate, sizes),
// cache/attention.cpp (fused attention, reference path) and cache/serialize.cpp (save/load).
#pragma once
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/cache.hpp"
#include "tqkv/codebook.hpp"

namespace tqkv {

// One independently coded part of a head vector: all its channels, or the high / low channels
// of a fractional rate. Its data in a 32-token group, at the offsets below:
//   norms [32 norms]  gammas [32 residual norms, prod only]  codes [bits-bit layout]  signs [1-bit, prod only]
struct CacheSegment {
    std::vector<int> channels;
    int dim = 0, bits = 0;            // bits of the codes in the layout (the MSE stage's)
    bool prod = false;
    const VectorCodec* codec = nullptr;
    const Rotation* rot = nullptr;
    const LloydMaxCodebook* cb = nullptr;
    const float* qjl = nullptr;       // S column-major (prod)
    std::vector<float> table;         // centroids as the kernels read them (16 replicated, or 2^bits)
    size_t codec_bytes = 0;           // bytes of one vector in the codec's own layout
    size_t norm_off = 0, gamma_off = 0, codes_off = 0, signs_off = 0;
    detail::FastValueTable fast_values;  // int8 centroids of the fast value kernels (bits <= 4)
};

struct CacheSide {  // the keys or the values
    std::unique_ptr<VectorCodec> codec;  // owns the segment codecs
    std::vector<CacheSegment> segs;
};

// Everything built from the config before a token arrives: codecs, kernel tables, the group
// layout. Immutable once built, so caches made with empty_like() share it (a budget cache holds
// hundreds of small caches with the same codecs).
struct CacheCodecs {
    CacheSide keys, values;
    size_t group_bytes = 0;       // one 32-token group of one KV head: key segments, then value segments
    size_t max_codec_bytes = 0;   // largest bytes_per_vector() of a segment codec
    // Preconditioning of CacheConfig: means subtracted on append ([kv_heads][head_dim] or empty),
    // factors on the logits and values of coded tokens (1 without debiasing).
    std::vector<float> key_mean, value_mean;
    float key_factor = 1, value_factor = 1;
};

struct AlignedFree {
    void operator()(uint8_t* p) const { std::free(p); }
};
using BlockPtr = std::unique_ptr<uint8_t, AlignedFree>;

namespace detail {
// Argument errors of the cache (defined in cache/storage.cpp): std::invalid_argument("tqkv: " + msg).
[[noreturn]] void fail(const std::string& msg);
// Throws (fail) naming the token, head and channel of the first NaN or Inf in x, rows of
// per_token_heads x head_dim floats; `what` names the argument.
void check_finite(std::span<const float> x, const CacheConfig& c, int per_token_heads, const char* what);
}  // namespace detail

struct KVCache::Impl {
    CacheConfig cfg;
    const detail::KernelTable* k = nullptr;
    const detail::AttentionKernels* ak = nullptr;
    std::shared_ptr<const CacheCodecs> codecs;
    size_t norm_bytes = 2, group_bytes = 0, groups_per_block = 0, block_bytes = 0, capacity = 0;
    float scale = 0;       // attention scale (exact window tokens)
    float code_scale = 0;  // scale * key debias factor (coded tokens)
    // Storage. Blocks of block_tokens tokens are the logical unit (growth adds blocks, truncate
    // releases them); their codes live in arenas, each one allocation holding, per KV head, a run of
    // consecutive blocks: one KV head's groups are contiguous over a whole arena, so the attention
    // streams them in address order. Arenas grow with the cache (an eighth of the blocks held, at
    // least what an append needs: O(log) allocations, no copy of old codes, at most 1/8 unused).
    // block_heads[(b - first_block) * kv_heads + h] = the first group of block b for KV head h,
    // for every block of every arena (blocks past the compressed tokens are zero). With an
    // attention window, arenas whose blocks all hold dropped tokens are freed from the front:
    // first_block is then the first block still held (0 otherwise).
    struct Arena {
        BlockPtr mem;
        size_t first_block = 0, blocks = 0;
    };
    std::vector<Arena> arenas;
    std::vector<uint8_t*> block_heads;
    size_t first_block = 0;
    size_t n_tokens = 0, n_compressed = 0;
    // Tokens [0, dropped) have left the attention window (CacheConfig::attention_window) for every
    // query still to come: attention never reads them, their codes are zeroed or their blocks freed.
    size_t dropped = 0;
    // Exact rows ([kv_heads][head_dim] floats per token) of tokens [exact_from, n_tokens) in a ring
    // of ring_rows tokens (token t in slot t % ring_rows): the recent window [n_compressed, n_tokens)
    // and, with a window, the tokens the last append compressed (its chunk and the window before it),
    // so that the chunk's own queries still see them exactly (codes_end). Empty without a window.
    std::vector<float> exact_k, exact_v;
    size_t ring_rows = 0, exact_from = 0;
    size_t max_codec_bytes = 0;       // largest bytes_per_vector() of a segment codec

    // `shared`: codecs of a cache with the same config (empty_like), or null to build them.
    explicit Impl(const CacheConfig& c, std::shared_ptr<const CacheCodecs> shared = nullptr);
    const CacheSide& keys() const { return codecs->keys; }
    const CacheSide& values() const { return codecs->values; }
    int group_size() const { return cfg.heads / cfg.kv_heads; }
    size_t row() const { return size_t(cfg.kv_heads) * cfg.head_dim; }  // floats of one token
    uint8_t* group(int kv_head, size_t token) const {
        return block_heads[(token / cfg.block_tokens - first_block) * cfg.kv_heads + kv_head] +
               (token % cfg.block_tokens) / detail::kGroupTokens * group_bytes;
    }
    // The groups of tokens t0, t0 + 32, ... (n of them) of one KV head: one 64-bit division for
    // the lot, where group() per group divides each time (the attention loop asks per chunk).
    void groups(int kv_head, size_t t0, size_t n, const uint8_t** out) const {
        size_t b = t0 / cfg.block_tokens - first_block, in = t0 % cfg.block_tokens / detail::kGroupTokens;
        for (size_t i = 0; i < n; ++i) {
            out[i] = block_heads[b * cfg.kv_heads + kv_head] + in * group_bytes;
            if (++in == groups_per_block) in = 0, ++b;
        }
    }
    size_t held_blocks() const { return block_heads.size() / cfg.kv_heads; }
    size_t allocated_blocks() const { return first_block + held_blocks(); }  // blocks [0, this) were allocated
    // The first token a query that sees tokens [0, visible) attends to (the attention window).
    size_t visible_start(size_t visible) const {
        const size_t W = cfg.attention_window;
        return W && visible > W ? visible - W : 0;
    }
    const float* exact_key(size_t t) const { return &exact_k[(t % ring_rows) * row()]; }
    const float* exact_value(size_t t) const { return &exact_v[(t % ring_rows) * row()]; }
    // A query that sees tokens [0, visible) reads tokens [0, codes_end(visible)) as codes and the
    // rest exactly. Token-by-token decode would have held the last `window` of them exactly and
    // the older ones as codes; that is what a query gets whenever the cache still holds the exact
    // rows (always for the queries of the last appended chunk, see append); older tokens without
    // an exact row are read as codes.
    size_t codes_end(size_t visible) const {
        const size_t W = size_t(cfg.window), decode_codes = visible > W ? visible - W : 0;
        return std::min(std::min(visible, n_compressed), std::max(decode_codes, exact_from));
    }
    // Makes room for `blocks` blocks (a new arena when needed); throws std::bad_alloc with the
    // cache unchanged. exact = true: an arena of exactly the missing blocks (load).
    void reserve_blocks(size_t blocks, bool exact = false);
    // Keeps the arenas holding blocks [0, blocks) and releases the others.
    void release_blocks(size_t blocks);
    // Drops tokens [dropped, token): codes zeroed in the blocks that stay, arenas holding only
    // dropped tokens freed. Frees memory only (no allocation, no throw).
    void drop_before(size_t token);
    // A ring of `rows` rows (>= the window's n_tokens - n_compressed) holding the window's exact
    // rows, tokens [n_compressed, n_tokens), in their slots t % rows; rows of older tokens (a
    // chunk's, before exact_from moves up) are not carried over. Allocates first: throws
    // std::bad_alloc with the cache unchanged.
    void resize_ring(size_t rows);
    void compress(const float* k_rows, const float* v_rows, size_t count, size_t first_token);
    void clear_tokens(size_t from, size_t to);  // zero the codes of compressed tokens [from, to)
    std::vector<float> decode_side(const CacheSide& side, bool is_key, int kv_head) const;
};

// Read access to a cache's internals for tests of the storage layout.
struct CacheInternals {
    static const KVCache::Impl& impl(const KVCache& c) { return *c.impl_; }
};

}  // namespace tqkv
