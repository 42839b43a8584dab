// tokenizer.model (SentencePiece) through Debian's libsentencepiece, when the build found it
// (TQKV_HAVE_SENTENCEPIECE). Without it, loading one throws and names tokenizer.json, which every
// transformers checkpoint directory of a SentencePiece model also ships (and which tokenizer.cpp
// reads, in the browser too).
#include <stdexcept>

#include "model/json.hpp"
#include "model/tokenizer_impl.hpp"

#if defined(TQKV_HAVE_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif

namespace tqkv {

#if defined(TQKV_HAVE_SENTENCEPIECE)

namespace {

class SentencePieceTokenizer final : public Tokenizer::Impl {
public:
    SentencePieceTokenizer(const std::string& bytes, std::string_view config) {
        const auto status = sp_.LoadFromSerializedProto(bytes);
        if (!status.ok()) throw std::invalid_argument("tokenizer.model: " + status.ToString());
        bos_ = sp_.bos_id();
        eos_ = sp_.eos_id();
        // BOS as Llama's tokenizers add it, unless tokenizer_config.json says otherwise.
        add_bos_ = bos_ >= 0;
        if (!config.empty()) {
            const auto c = detail::parse_json(config, "tokenizer_config.json");
            if (const auto* b = c.find("add_bos_token"); b && b->type == detail::JsonValue::Type::Bool) add_bos_ = b->b;
            if (const auto* e = c.find("add_eos_token"); e && e->type == detail::JsonValue::Type::Bool) add_eos_ = e->b;
        }
    }
    std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
        std::vector<int> ids;
        const auto status = sp_.Encode(text, &ids);
        if (!status.ok()) throw std::invalid_argument("tokenizer.model: " + status.ToString());
        std::vector<int32_t> out;
        if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
        out.insert(out.end(), ids.begin(), ids.end());
        if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
        return out;
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::vector<int> v(ids.begin(), ids.end());
        for (int id : v)
            if (id < 0 || id >= sp_.GetPieceSize())
                throw std::invalid_argument("tokenizer: id " + std::to_string(id) + " outside the vocabulary of " +
                                            std::to_string(sp_.GetPieceSize()));
        std::string text;
        const auto status = sp_.Decode(v, &text);
        if (!status.ok()) throw std::invalid_argument("tokenizer.model: " + status.ToString());
        return text;
    }
    size_t vocab_size() const override { return size_t(sp_.GetPieceSize()); }
    int32_t token_id(std::string_view t) const override {
        const int id = sp_.PieceToId(t);
        return id >= 0 && sp_.IdToPiece(id) == t ? id : -1;
    }
    std::string kind() const override { return "sentencepiece"; }

private:
    sentencepiece::SentencePieceProcessor sp_;
    bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

bool Tokenizer::sentencepiece_available() { return true; }

Tokenizer Tokenizer::from_sentencepiece(const std::string& bytes, std::string_view config) {
    return Tokenizer(std::make_unique<SentencePieceTokenizer>(bytes, config));
}

#else

bool Tokenizer::sentencepiece_available() { return false; }

Tokenizer Tokenizer::from_sentencepiece(const std::string&, std::string_view) {
    throw std::invalid_argument(
        "tokenizer.model: SentencePiece models are not supported in this build (native builds link Debian's "
        "libsentencepiece when it is installed); use the checkpoint's tokenizer.json instead");
}

#endif

}  // namespace tqkv
