// KVCache / ModelKVCache serialization.
//
// Format (all integers little-endian, floats IEEE 754 little-endian):
//   "TQKVCACH"  u32 version (3; 1 and 2 are read too)  u32 layers
//   per layer:
//     config:  u32 heads, kv_heads, head_dim, key_method, block_tokens, window, norm_format
//              f64 key_bits, value_bits  f32 scale  u64 seed, max_tokens
//              u32 n_key_high, n_key_high x u32   u32 n_value_high, n_value_high x u32
//              version 2: u32 flags (1 debias_keys, 2 debias_values)
//                         u32 n, n x f32 key_mean   u32 n, n x f32 value_mean   (n = 0 or kv_heads * head_dim)
//              version 3: u64 attention_window
//     state:   u64 tokens, compressed; version 3: u64 dropped (tokens that left the attention window)
//     groups:  per KV head, the groups of 32 tokens from the one holding token `dropped` to the one
//              holding token compressed - 1 (cache/layout.hpp; dropped tokens' codes are zeros)
//     window:  tokens compressed..tokens-1: keys [kv_heads][head_dim] f32, then values likewise
//   u32 CRC-32 (IEEE 802.3) of every byte before it.
// A KVCache is saved as a one-layer file. The same appends give the same bytes on every target.
// Not stored: the kernel and the precision (CacheConfig::precision), which say how this process
// computes attention, not what the codes are; a file attends the same either way, and old files
// need no new version. load() takes the kernel, set_precision() the precision.
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cache/impl.hpp"
#include "util/binary_io.hpp"
#include "codec/shared.hpp"

namespace tqkv {

namespace {

constexpr char kMagic[8] = {'T', 'Q', 'K', 'V', 'C', 'A', 'C', 'H'};
// Version 2 added the preconditioning (means, debias flags), version 3 the attention window;
// version 1 and 2 files still load.
constexpr uint32_t kVersion = 3;

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("tqkv: load: " + msg); }

using Writer = detail::ByteWriter;
using Reader = detail::ByteReader;

void write_layer(Writer& w, const KVCache::Impl& m) {
    const CacheConfig& c = m.cfg;
    for (uint32_t v : {uint32_t(c.heads), uint32_t(c.kv_heads), uint32_t(c.head_dim), uint32_t(c.key_method),
                       uint32_t(c.block_tokens), uint32_t(c.window), uint32_t(c.norm)})
        w.u32(v);
    w.f64(c.key_bits);
    w.f64(c.value_bits);
    w.f32(c.scale);
    w.u64(c.seed);
    w.u64(c.max_tokens);
    for (auto* ch : {&c.key_high_channels, &c.value_high_channels}) {
        w.u32(uint32_t(ch->size()));
        for (int v : *ch) w.u32(uint32_t(v));
    }
    w.u32(uint32_t(c.debias_keys) | uint32_t(c.debias_values) << 1);
    for (auto* mean : {&c.key_mean, &c.value_mean}) {
        w.u32(uint32_t(mean->size()));
        w.floats(mean->data(), mean->size());
    }
    w.u64(c.attention_window);
    w.u64(m.n_tokens);
    w.u64(m.n_compressed);
    w.u64(m.dropped);
    const size_t groups = (m.n_compressed + detail::kGroupTokens - 1) / detail::kGroupTokens;
    for (int h = 0; h < c.kv_heads; ++h)
        for (size_t g = m.dropped / detail::kGroupTokens; g < groups; ++g) w.bytes(m.group(h, g * detail::kGroupTokens), m.group_bytes);
    for (size_t t = m.n_compressed; t < m.n_tokens; ++t) w.floats(m.exact_key(t), m.row());
    for (size_t t = m.n_compressed; t < m.n_tokens; ++t) w.floats(m.exact_value(t), m.row());
}

// Reads one layer; every size is checked against the bytes that are actually there before
// anything is allocated from it.
KVCache read_layer(Reader& r, const std::string& kernel, uint32_t version) {
    CacheConfig c;
    const uint32_t heads = r.u32(), kv_heads = r.u32(), head_dim = r.u32(), method = r.u32(), block = r.u32(),
                   window = r.u32(), norm = r.u32();
    if (heads < 1 || heads > 4096 || kv_heads < 1 || kv_heads > heads || head_dim < 3 || head_dim > 1024 ||
        block > 4096 || window > 4096)
        bad("implausible configuration (heads " + std::to_string(heads) + ", kv_heads " + std::to_string(kv_heads) +
            ", head_dim " + std::to_string(head_dim) + ")");
    if (method > 1) bad("unknown key method " + std::to_string(method));
    if (norm > 1) bad("unknown norm format " + std::to_string(norm));
    c.heads = int(heads);
    c.kv_heads = int(kv_heads);
    c.head_dim = int(head_dim);
    c.key_method = method == 0 ? Method::Mse : Method::Prod;
    c.block_tokens = int(block);
    c.window = int(window);
    c.norm = norm == 0 ? NormFormat::F16 : NormFormat::F32;
    c.key_bits = r.f64();
    c.value_bits = r.f64();
    if (!(c.key_bits >= 1 && c.key_bits <= 8 && c.value_bits >= 1 && c.value_bits <= 8))
        bad("bits out of range [1, 8] (keys " + std::to_string(c.key_bits) + ", values " +
            std::to_string(c.value_bits) + ")");
    c.scale = r.f32();
    c.seed = r.u64();
    c.max_tokens = size_t(r.u64());
    for (auto* ch : {&c.key_high_channels, &c.value_high_channels}) {
        const uint32_t n = r.u32();
        if (n > head_dim) bad("more high channels than head_dim");
        for (uint32_t i = 0; i < n; ++i) ch->push_back(int(r.u32()));
    }
    if (version >= 2) {
        const uint32_t flags = r.u32();
        if (flags > 3) bad("unknown preconditioning flags " + std::to_string(flags));
        c.debias_keys = flags & 1;
        c.debias_values = (flags >> 1) & 1;
        for (auto* mean : {&c.key_mean, &c.value_mean}) {
            const uint32_t n = r.u32();
            if (n != 0 && n != kv_heads * head_dim)
                bad("a channel mean of " + std::to_string(n) + " floats (expected 0 or kv_heads * head_dim)");
            if (uint64_t(n) * 4 > r.left()) bad("truncated data (channel means)");
            mean->resize(n);
            r.floats(mean->data(), n);
        }
    }
    if (version >= 3) {
        const uint64_t aw = r.u64();
        if (aw > (uint64_t(1) << 28)) bad("attention window " + std::to_string(aw) + " above 2^28");
        c.attention_window = size_t(aw);
    }
    const uint64_t tokens = r.u64(), compressed = r.u64(), dropped = version >= 3 ? r.u64() : 0;
    if (tokens > (uint64_t(1) << 28) || compressed > tokens || tokens - compressed > window ||
        (c.max_tokens && tokens > c.max_tokens))
        bad("inconsistent token counts (" + std::to_string(tokens) + " tokens, " + std::to_string(compressed) +
            " compressed, window " + std::to_string(window) + ")");
    // Tokens are dropped only under a window, and never one the next query (at position tokens) sees.
    if (dropped && (!c.attention_window || dropped + c.attention_window > tokens + 1))
        bad("inconsistent dropped tokens (" + std::to_string(dropped) + " dropped of " + std::to_string(tokens) +
            ", attention window " + std::to_string(c.attention_window) + ")");
    c.kernel = kernel;
    // Cheap bound first: the exact window and, per compressed group of 32 tokens and KV head, at
    // least the norms of keys and values and 1 bit per coordinate each. Hostile headers that
    // promise more than the bytes present stop here, before any codec tables are built.
    const uint64_t nb = norm == 0 ? 2 : 4;
    const uint64_t first_group = dropped / detail::kGroupTokens, end_group = (compressed + detail::kGroupTokens - 1) / detail::kGroupTokens;
    const uint64_t min_groups = end_group > first_group ? end_group - first_group : 0;
    const uint64_t min_payload = uint64_t(kv_heads) * min_groups * (2 * detail::kGroupTokens * nb + 8 * uint64_t(head_dim)) +
                                 2 * (tokens - compressed) * kv_heads * head_dim * 4;
    if (min_payload > r.left()) bad("truncated data: the payload needs at least " + std::to_string(min_payload) + " bytes");
    // The config is validated by the constructor (which allocates nothing sized by tokens).
    auto impl = std::make_unique<KVCache::Impl>(c);
    KVCache::Impl& m = *impl;
    const size_t g0 = size_t(first_group), groups = size_t(end_group);  // groups [g0, groups) are stored
    const size_t payload = size_t(kv_heads) * size_t(min_groups) * m.group_bytes + 2 * size_t(tokens - compressed) * m.row() * 4;
    if (payload > r.left()) bad("truncated data: the payload needs " + std::to_string(payload) + " bytes");
    // Blocks from the one holding the first stored group (earlier ones were dropped).
    m.first_block = g0 * detail::kGroupTokens / block;
    const size_t n_blocks = (size_t(compressed) + block - 1) / block;
    m.reserve_blocks(n_blocks, true);
    for (uint32_t h = 0; h < kv_heads; ++h)
        for (size_t g = g0; g < groups; ++g)
            std::memcpy(m.group(int(h), g * detail::kGroupTokens), r.take(m.group_bytes), m.group_bytes);
    m.dropped = size_t(dropped);
    m.n_tokens = size_t(tokens);
    m.n_compressed = m.exact_from = size_t(compressed);  // the exact rows of the last chunk are not saved
    for (auto* ring : {&m.exact_k, &m.exact_v})
        for (size_t t = m.n_compressed; t < m.n_tokens; ++t) r.floats(&(*ring)[(t % m.ring_rows) * m.row()], m.row());
    // Hostile codes can only produce wrong numbers, never out-of-range reads; norms that are not
    // finite would poison attention, so reject them.
    for (uint32_t h = 0; h < kv_heads; ++h)
        for (size_t t = g0 * detail::kGroupTokens; t < m.n_compressed; ++t) {
            const uint8_t* g = m.group(int(h), t);
            for (auto* side : {&m.keys(), &m.values()})
                for (auto& s : side->segs) {
                    const size_t slot = t % detail::kGroupTokens;
                    if (!std::isfinite(detail::read_norm(g + s.norm_off + slot * m.norm_bytes, c.norm)) ||
                        (s.prod && !std::isfinite(detail::read_norm(g + s.gamma_off + slot * m.norm_bytes, c.norm))))
                        bad("non-finite norm for token " + std::to_string(t));
                }
        }
    for (auto* ring : {&m.exact_k, &m.exact_v})
        for (float v : *ring)
            if (!std::isfinite(v)) bad("non-finite value in the exact window");
    return KVCache(std::move(impl));
}

std::vector<uint8_t> save_layers(const std::vector<const KVCache::Impl*>& layers) {
    Writer w;
    w.bytes(kMagic, 8);
    w.u32(kVersion);
    w.u32(uint32_t(layers.size()));
    for (auto* m : layers) write_layer(w, *m);
    w.crc();
    return std::move(w.out);
}

Reader open(std::span<const uint8_t> bytes, uint32_t& layers, uint32_t& version) {
    if (bytes.size() < 20) bad("truncated data (" + std::to_string(bytes.size()) + " bytes)");
    if (std::memcmp(bytes.data(), kMagic, 8) != 0) bad("not a tqkv cache (bad magic)");
    Reader r(bytes.data(), bytes.size() - 4, "tqkv: load: ");
    r.take(8);
    version = r.u32();
    if (version < 1 || version > kVersion)
        bad("unsupported format version " + std::to_string(version) + " (this build reads 1.." + std::to_string(kVersion) + ")");
    Reader tail(bytes.data() + bytes.size() - 4, 4, "tqkv: load: ");
    if (tail.u32() != detail::crc32(bytes.data(), bytes.size() - 4)) bad("CRC mismatch: the data is corrupted");
    layers = r.u32();
    if (layers < 1 || layers > 1024) bad("implausible layer count " + std::to_string(layers));
    return r;
}

}  // namespace

std::vector<uint8_t> KVCache::save() const { return save_layers({impl_.get()}); }

KVCache KVCache::load(std::span<const uint8_t> bytes, const std::string& kernel) {
    uint32_t layers, version;
    Reader r = open(bytes, layers, version);
    if (layers != 1) bad("this file holds " + std::to_string(layers) + " layers; use ModelKVCache::load");
    KVCache c = read_layer(r, kernel, version);
    if (r.left() != 0) bad("trailing bytes after the cache");
    return c;
}

std::vector<uint8_t> ModelKVCache::save() const {
    std::vector<const KVCache::Impl*> impls;
    for (int l = 0; l < layers(); ++l) impls.push_back(layer(l).impl_.get());
    return save_layers(impls);
}

ModelKVCache ModelKVCache::load(std::span<const uint8_t> bytes, const std::string& kernel) {
    uint32_t layers, version;
    Reader r = open(bytes, layers, version);
    ModelKVCache m;
    for (uint32_t l = 0; l < layers; ++l) m.layers_.emplace_back(read_layer(r, kernel, version));
    if (r.left() != 0) bad("trailing bytes after the cache");
    return m;
}

}  // namespace tqkv
