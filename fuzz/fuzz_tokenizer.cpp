// A tokenizer from hostile bytes (tokenizer.json with its pre-tokenizer regexes, or a
// tokenizer.model's protobuf, told apart as the C ABI and npm do: Tokenizer::from_bytes) encoding
// hostile text. Input: 2-byte little-endian length L, L bytes of the tokenizer, then the text.
// Loading must succeed or throw std::invalid_argument; a tokenizer that loads must encode any
// bytes (or refuse with std::invalid_argument) into ids of its vocabulary and decode them.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tqkv/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const size_t L = size_t(data[0]) | size_t(data[1]) << 8;
    if (L > size - 2) return 0;
    const std::string_view model(reinterpret_cast<const char*>(data + 2), L);
    const std::string_view text(reinterpret_cast<const char*>(data + 2 + L), size - 2 - L);
    try {
        const tqkv::Tokenizer tok = tqkv::Tokenizer::from_bytes(model);
        const auto ids = tok.encode(text, true);
        for (int32_t id : ids)
            if (id < 0 || size_t(id) >= tok.vocab_size()) __builtin_trap();
        (void)tok.decode(ids);
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
