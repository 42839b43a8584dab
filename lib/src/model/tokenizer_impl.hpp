// The interface behind tqkv::Tokenizer: tokenizer.json (tokenizer.cpp) and SentencePiece
// (sentencepiece.cpp) implement it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tqkv/tokenizer.hpp"

namespace tqkv {

struct Tokenizer::Impl {
    virtual ~Impl();
    virtual std::vector<int32_t> encode(std::string_view text, bool add_special) const = 0;
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
    virtual size_t vocab_size() const = 0;
    virtual int32_t token_id(std::string_view token) const = 0;
    virtual std::string kind() const = 0;
    int32_t bos_ = -1, eos_ = -1;
};

}  // namespace tqkv
