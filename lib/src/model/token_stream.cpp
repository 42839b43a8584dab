// tqkv::TokenStream (tqkv/tokenizer.hpp): the text of generated ids as they come.
//
// Each push decodes the tail ids_ (the context's last ids, then the ids whose text is not all
// returned) and returns the bytes of its text past emitted_, up to the point the next ids cannot
// change. The tail stays short: once it holds 2 * kContextIds ids, it is cut back to its last
// kContextIds ids when these alone decode to the end of its text, including at least one byte
// already returned. What the decoders do differently at the start of a text (SentencePiece drops
// the first piece's space, a Strip decoder a leading space, byte-fallback bytes cut from the
// start of their character become U+FFFD) then stays in returned text: the next ids add the same
// text to the cut tail as to the whole history.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tqkv/tokenizer.hpp"

namespace tqkv {

namespace {

// The length of text without its end that the next ids may still change: an unfinished UTF-8
// sequence (a byte-level or tokenizer.json byte-fallback token can end inside a character), and
// before it up to three U+FFFD (a tokenizer.model decodes each byte of an unfinished character to
// U+FFFD until its last byte comes; a character has at most 4 bytes).
size_t complete_length(const std::string& text) {
    size_t end = text.size();
    for (size_t k = 1; k <= 3 && k <= text.size(); ++k) {
        const unsigned char c = static_cast<unsigned char>(text[text.size() - k]);
        if ((c & 0xc0) == 0x80) continue;  // a continuation byte: look further back
        const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (need > k) end = text.size() - k;
        break;
    }
    constexpr std::string_view replacement = "\xef\xbf\xbd";
    for (int k = 0; k < 3 && end >= replacement.size() && text.compare(end - 3, 3, replacement) == 0; ++k) end -= 3;
    return end;
}

}  // namespace

TokenStream::TokenStream(const Tokenizer& tok, const std::vector<int32_t>& context) : tok_(&tok) {
    const size_t vocab = tok.vocab_size();
    for (size_t i = 0; i < context.size(); ++i)
        if (context[i] < 0 || size_t(context[i]) >= vocab)
            throw std::invalid_argument("TokenStream: context id " + std::to_string(context[i]) + " (at " +
                                        std::to_string(i) + ") outside the vocabulary of " + std::to_string(vocab));
    ids_.assign(context.end() - std::ptrdiff_t(std::min(context.size(), kContextIds)), context.end());
    if (!ids_.empty()) emitted_ = complete_length(tok.decode(ids_));
}

std::string TokenStream::push(int32_t id) {
    ids_.push_back(id);
    std::string text;
    try {
        text = tok_->decode(ids_);  // throws on an id outside the vocabulary
    } catch (...) {
        ids_.pop_back();
        throw;
    }
    const size_t end = complete_length(text);
    std::string out;
    if (end > emitted_) {  // else nothing new (never back past what was returned)
        out = text.substr(emitted_, end - emitted_);
        emitted_ = end;
    }
    if (ids_.size() >= 2 * kContextIds) {
        const std::vector<int32_t> tail(ids_.end() - kContextIds, ids_.end());
        const std::string rest = tok_->decode(tail);
        const size_t dropped = text.size() - std::min(rest.size(), text.size());
        if (rest.size() <= text.size() && dropped < emitted_ && text.compare(dropped, rest.size(), rest) == 0) {
            ids_ = tail;
            emitted_ -= dropped;
        }
    }
    return out;
}

std::string TokenStream::flush() {
    const std::string text = tok_->decode(ids_);
    std::string out = emitted_ < text.size() ? text.substr(emitted_) : std::string();
    emitted_ = std::max(emitted_, text.size());
    return out;
}

}  // namespace tqkv
