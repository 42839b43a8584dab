// Tokenizers of Hugging Face checkpoints, for the Llama runner's tools:
//  - tokenizer.json with a BPE model: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM: ByteLevel and
//    Split-regex pre-tokenizers, Digits, ByteLevel decoder) and SentencePiece-style BPE as
//    transformers converts Llama 2 / Mistral / TinyLlama (Metaspace or Prepend+Replace
//    normalizers, byte fallback, Replace/ByteFallback/Fuse/Strip decoders); merges in both
//    spellings ("a b" and ["a", "b"]), added and special tokens (lstrip, rstrip, single_word),
//    ignore_merges.
//  - tokenizer.model (SentencePiece's ModelProto, read by our own protobuf reader, the same in
//    native and WebAssembly builds): BPE (Llama 2, Mistral, TinyLlama) and unigram models, the
//    identity normalizer or a precompiled character map (nmt_nfkc, nmt_nfkc_cf, ...), byte
//    fallback, user-defined symbols; ids and text as libsentencepiece gives them (text such as
//    "<s>" is not a control token there either). Refused by name: a denormalizer's character
//    map, WORD / CHAR models, treat_whitespace_as_suffix.
// Components a tokenizer.json may name but this implementation does not have (WordPiece /
// Unigram models, NFKC, BERT pre-tokenizers, ...) are refused at load with
// "unsupported: <field>", never approximated. The NFC normalizer (Qwen2) is full Unicode 15
// NFC (UAX #15; text already in NFC passes through untouched).
//
//   auto tok = tqkv::Tokenizer::load("model-dir/tokenizer.json");   // or a directory
//   std::vector<int32_t> ids = tok.encode("Hello world", /*add_special=*/true);
//   std::string text = tok.decode(ids);
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tqkv {

class Tokenizer {
public:
    // path: a tokenizer.json, a tokenizer.model, or a directory holding one (tokenizer.json
    // preferred). A tokenizer_config.json beside it decides BOS/EOS (add_bos_token,
    // add_eos_token) when it says; otherwise tokenizer.json's TemplateProcessing does.
    static Tokenizer load(const std::string& path);
    // From the text of a tokenizer.json (and optionally of a tokenizer_config.json).
    static Tokenizer from_json(std::string_view tokenizer_json, std::string_view tokenizer_config = {});
    // From the bytes of a SentencePiece tokenizer.model.
    static Tokenizer from_sentencepiece(std::string_view model_bytes, std::string_view tokenizer_config = {});
    // From the bytes of either: a tokenizer.json (its first byte other than whitespace is '{')
    // or a tokenizer.model (anything else: a protobuf message).
    static Tokenizer from_bytes(std::string_view bytes, std::string_view tokenizer_config = {});
    // Token = byte (models with a 256-token byte vocabulary, such as tq-ref-128).
    static Tokenizer bytes();
    // The tokenizer of a model directory: `file` when given, else DIR's tokenizer.json /
    // tokenizer.model, else bytes() for a byte-vocabulary model (vocab_size 256). Throws when
    // there is none or when its ids do not fit the model's vocabulary.
    static Tokenizer for_model(const std::string& dir, size_t model_vocab_size, const std::string& file = "");

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Token ids of UTF-8 text (invalid UTF-8 bytes are kept as bytes where the model can hold
    // them: byte-level and byte-fallback vocabularies). Added / special tokens written in the text
    // are recognized, as Hugging Face does by default. add_special: BOS/EOS as configured.
    std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
    // Text of ids (special tokens included as their text). Throws on an id outside the vocabulary.
    std::string decode(const std::vector<int32_t>& ids) const;
    size_t vocab_size() const;
    int32_t bos_id() const;                    // -1 when none
    int32_t eos_id() const;                    // -1 when none
    int32_t token_id(std::string_view token) const;  // -1 when absent
    std::string kind() const;                  // "bytes", "bpe", "byte-level bpe", "sentencepiece"

    struct Impl;

private:
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Streaming decode for generation (tqkv-run, the explorer, and through the C ABI's
// tqkv_token_stream_* the npm package's TokenStream): feed ids one at a time, get the text that
// became final. Held back until complete: a UTF-8 sequence split across tokens (byte-level and
// tokenizer.json byte-fallback tokens decode to the bytes themselves) and up to three U+FFFD
// ending the text (a tokenizer.model decodes each byte of an unfinished character to U+FFFD).
// Together, the push()es and the final flush() give decode(context + ids) without the context's
// text (but for decoder chains that rewrite earlier text as later ids come, such as a Replace
// after Fuse: none of a real checkpoint's).
//
//   TokenStream stream(tok, prompt_ids);      // the prompt's last ids are decoded with the new ones,
//   for (...) std::cout << stream.push(id);   // so the first word keeps its space (decoders drop a
//   std::cout << stream.flush();              // text's leading space)
//
// Each push decodes a bounded tail of ids, not the whole history (linear over a generation): the
// tail is cut back to its last kContextIds ids once decoding those alone gives the end of the text
// (a suffix of it that includes already returned text), so what the next ids add is the same.
// Ids that decode to nothing (control tokens) after the last text are kept until text follows.
class TokenStream {
public:
    // context: the ids before the generated ones (their text is not returned); only its last
    // kContextIds ids are kept. Throws std::invalid_argument on an id outside the vocabulary.
    explicit TokenStream(const Tokenizer& tok, const std::vector<int32_t>& context = {});
    // The text id adds ("" while a character is unfinished). Throws std::invalid_argument on an id
    // outside the vocabulary (the stream is then unchanged).
    std::string push(int32_t id);
    // What is held back, as text (an unfinished character stays as its bytes or U+FFFD).
    std::string flush();

    static constexpr size_t kContextIds = 4;  // enough for the decoders' rules on a text's start

private:
    const Tokenizer* tok_;
    std::vector<int32_t> ids_;  // the tail: kContextIds to 2 * kContextIds ids (more while it can't be cut)
    size_t emitted_ = 0;        // bytes of decode(ids_) returned already (or the context's)
};

}  // namespace tqkv
