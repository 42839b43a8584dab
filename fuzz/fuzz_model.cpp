// A model from hostile bytes: config.json text and safetensors bytes (what the browser demo
// fetches from a URL). Input: 2-byte little-endian length L, L bytes of config.json, then the
// safetensors file. Parsing and loading must succeed or throw std::invalid_argument; a model that
// loads must run a few tokens (non-finite weights may give non-finite logits, never a crash). The
// JSON is also read as a model.safetensors.index.json and checked against the file as its shard.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "tqkv/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const size_t L = size_t(data[0]) | size_t(data[1]) << 8;
    if (L > size - 2) return 0;
    const std::string_view json(reinterpret_cast<const char*>(data + 2), L);
    std::optional<tqkv::Safetensors> st;
    try {
        st = tqkv::Safetensors::parse(std::vector<uint8_t>(data + 2 + L, data + size));
    } catch (const std::invalid_argument&) {
    }
    // The JSON read as model.safetensors.index.json and checked against the file as its one shard.
    try {
        const tqkv::SafetensorsIndex index = tqkv::SafetensorsIndex::parse(json);
        const std::string name = "model.safetensors";
        if (st) index.check(std::span<const tqkv::Safetensors>(&*st, 1), std::span<const std::string>(&name, 1));
    } catch (const std::invalid_argument&) {
    }
    if (!st) return 0;
    try {
        const tqkv::LlamaConfig cfg = tqkv::LlamaConfig::parse(json);
        const tqkv::LlamaModel model = tqkv::LlamaModel::from_parts(cfg, *st);
        auto cache = tqkv::make_exact_cache(tqkv::CacheShape::of(cfg));
        tqkv::LlamaRunner run(model, *cache, 4);
        std::vector<float> logits(size_t(cfg.vocab_size));
        const int32_t tokens[3] = {1, 0, int32_t(cfg.vocab_size - 1)};
        run.prefill(tokens, logits);
        run.decode(2 % cfg.vocab_size, logits);
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
