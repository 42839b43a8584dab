// Saving and restoring a LlamaRunner: its position and its cache's state (tqkv/model.hpp).
//
// Format (little-endian): "TQKVRUNR"  u32 version (1)  u32 layers, heads, kv_heads, head_dim, vocab
//   u64 position  u64 n, n bytes of AttentionCache::save_state  u32 CRC-32 of every byte before it.
#include <cstring>
#include <stdexcept>

#include "tqkv/model.hpp"
#include "util/binary_io.hpp"

namespace tqkv {

namespace {

constexpr char kMagic[8] = {'T', 'Q', 'K', 'V', 'R', 'U', 'N', 'R'};
constexpr uint32_t kVersion = 1;

}  // namespace

std::vector<uint8_t> LlamaRunner::save() const {
    const LlamaConfig& c = model_.config();
    std::vector<uint8_t> state = cache_.save_state();
    detail::ByteWriter w;
    w.out.reserve(state.size() + 64);
    w.bytes(kMagic, sizeof kMagic);
    w.u32(kVersion);
    for (int x : {c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size})
        w.u32(uint32_t(x));
    w.u64(pos_);
    w.u64(state.size());
    w.bytes(state.data(), state.size());
    std::vector<uint8_t>().swap(state);
    w.crc();
    return std::move(w.out);
}

void LlamaRunner::load(std::span<const uint8_t> bytes) {
    detail::ByteReader r(bytes.data(), bytes.size(), "tqkv runner: load: ");
    if (bytes.size() < sizeof kMagic + 4 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
        r.fail("not a saved runner (no TQKVRUNR header)");
    if (bytes.size() < sizeof kMagic + 4 + 4 * 5 + 16 + 4) r.fail("truncated data");
    const uint32_t crc = uint32_t(bytes[bytes.size() - 4]) | uint32_t(bytes[bytes.size() - 3]) << 8 |
                         uint32_t(bytes[bytes.size() - 2]) << 16 | uint32_t(bytes[bytes.size() - 1]) << 24;
    if (detail::crc32(bytes.data(), bytes.size() - 4) != crc) r.fail("CRC mismatch (damaged or truncated bytes)");
    r.take(sizeof kMagic);
    if (const uint32_t v = r.u32(); v != kVersion) r.fail("unsupported version " + std::to_string(v) + " (this build reads 1)");
    const LlamaConfig& c = model_.config();
    const uint32_t shape[5] = {r.u32(), r.u32(), r.u32(), r.u32(), r.u32()};
    const int want[5] = {c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size};
    for (int i = 0; i < 5; ++i)
        if (shape[i] != uint32_t(want[i]))
            r.fail("saved by a runner of another model (layers, heads, kv_heads, head_dim, vocab: " +
                   std::to_string(shape[0]) + ", " + std::to_string(shape[1]) + ", " + std::to_string(shape[2]) + ", " +
                   std::to_string(shape[3]) + ", " + std::to_string(shape[4]) + "; this model: " +
                   std::to_string(want[0]) + ", " + std::to_string(want[1]) + ", " + std::to_string(want[2]) + ", " +
                   std::to_string(want[3]) + ", " + std::to_string(want[4]) + ")");
    const uint64_t position = r.u64();
    if (position > uint64_t(c.max_position_embeddings))
        r.fail("position " + std::to_string(position) + " outside [0, " + std::to_string(c.max_position_embeddings) +
               "] (the model's context)");
    const int w = c.sliding_window;
    if (w > 0 && !window_ok_ && position > uint64_t(w))
        r.fail("position " + std::to_string(position) + " is past the model's sliding window of " + std::to_string(w) +
               " tokens, which the cache \"" + cache_.name() + "\" cannot honour");
    const uint64_t n = r.u64();
    if (n != r.left() - 4) r.fail("the cache's state has " + std::to_string(n) + " bytes, " + std::to_string(r.left() - 4) + " follow");
    cache_.load_state({r.take(size_t(n)), size_t(n)}, size_t(position));  // throws before changing anything
    pos_ = size_t(position);
}

}  // namespace tqkv
