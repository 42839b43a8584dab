// tokenizer.json (Hugging Face tokenizers) with a BPE model: the pipeline of the tokenizers
// library, step by step: added tokens are cut out of the text first; each remaining segment is
// normalized, pre-tokenized into pieces, and each piece is merged by BPE; the post-processor adds
// BOS/EOS; decoding runs the decoder chain over the tokens' strings.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <queue>
#include <stdexcept>
#include <unordered_map>

#include "model/json.hpp"
#include "model/regex.hpp"
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"
#include "tqkv/tokenizer.hpp"

namespace tqkv {

using detail::JsonValue;

namespace {

[[noreturn]] void tj_fail(const std::string& msg) { throw std::invalid_argument("tokenizer.json: " + msg); }
[[noreturn]] void unsupported(const std::string& what) { tj_fail("unsupported: " + what); }

const JsonValue* present(const JsonValue& o, const char* key) {
    const JsonValue* v = o.find(key);
    return v && v->type != JsonValue::Type::Null ? v : nullptr;
}
std::string str_of(const JsonValue& o, const char* key, const std::string& where, const std::string& fallback = "") {
    const JsonValue* v = present(o, key);
    if (!v) return fallback;
    if (v->type != JsonValue::Type::String) tj_fail(where + "." + key + " must be a string");
    return v->str;
}
bool bool_of(const JsonValue& o, const char* key, const std::string& where, bool fallback) {
    const JsonValue* v = present(o, key);
    if (!v) return fallback;
    if (v->type != JsonValue::Type::Bool) tj_fail(where + "." + key + " must be true or false");
    return v->b;
}
const std::string& type_of(const JsonValue& o, const std::string& where) {
    if (!o.is_object()) tj_fail(where + " must be an object");
    const JsonValue* t = o.find("type");
    if (!t || t->type != JsonValue::Type::String) tj_fail(where + " has no \"type\"");
    return t->str;
}
// A {"String": "..."} pattern (the only kind Replace steps may use here).
std::string string_pattern(const JsonValue& o, const std::string& where) {
    const JsonValue* p = present(o, "pattern");
    if (!p || !p->is_object()) tj_fail(where + ".pattern must be an object");
    if (const JsonValue* s = present(*p, "String"); s && s->type == JsonValue::Type::String) return s->str;
    unsupported(where + ".pattern (a Regex pattern; only String patterns are implemented here)");
}

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's reversible map of the 256 bytes to printable characters.
struct ByteMap {
    uint32_t to_cp[256];
    std::string to_utf8[256];
    std::unordered_map<uint32_t, uint8_t> from_cp;
    ByteMap() {
        uint32_t n = 0;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
            to_cp[b] = keep ? b : 256 + n++;
            detail::append_utf8(to_utf8[b], to_cp[b]);
            from_cp[to_cp[b]] = uint8_t(b);
        }
    }
};
const ByteMap& byte_map() {
    static const ByteMap m;
    return m;
}

std::string byte_token(uint8_t b) {
    static const char* hex = "0123456789ABCDEF";
    return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

struct Decoded {  // code points of a piece with the byte offset of each
    std::vector<uint32_t> cps;
    std::vector<size_t> at;  // at[i] = byte offset of cps[i]; at[n] = size
};
Decoded decode_all(std::string_view s) {
    Decoded d;
    d.cps.reserve(s.size());
    d.at.reserve(s.size() + 1);
    for (size_t i = 0; i < s.size();) {
        size_t len;
        d.cps.push_back(detail::decode_utf8(s.data() + i, s.size() - i, len));
        d.at.push_back(i);
        i += len;
    }
    d.at.push_back(s.size());
    return d;
}

enum class Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_of(const std::string& b, const std::string& where) {
    if (b == "Isolated") return Behavior::Isolated;
    if (b == "Removed") return Behavior::Removed;
    if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
    if (b == "MergedWithNext") return Behavior::MergedWithNext;
    if (b == "Contiguous") return Behavior::Contiguous;
    unsupported(where + ".behavior \"" + b + "\"");
}

// Splits `piece` at the matches [begin, end) (byte offsets, in order, non-overlapping) as the
// tokenizers library's SplitDelimiterBehavior does ("the-final--countdown" split at '-':
// Isolated the|-|final|-|-|countdown, Removed the|final|countdown, MergedWithPrevious
// the-|final-|-|countdown, MergedWithNext the|-final|-|-countdown, Contiguous
// the|-|final|--|countdown); empty pieces are dropped.
template <class Emit>
void split_at(std::string_view piece, const std::vector<std::pair<size_t, size_t>>& matches, Behavior b, Emit&& emit) {
    auto out = [&](size_t s, size_t e) {
        if (e > s) emit(piece.substr(s, e - s));
    };
    if (b == Behavior::Removed) {
        size_t last = 0;
        for (const auto& [s, e] : matches) out(last, s), last = e;
        out(last, piece.size());
        return;
    }
    size_t cut = 0;  // start of the piece being built
    size_t prev_end = std::string::npos;
    for (size_t i = 0; i < matches.size(); ++i) {
        const auto [s, e] = matches[i];
        switch (b) {
            case Behavior::MergedWithPrevious: out(cut, e), cut = e; break;
            case Behavior::MergedWithNext: out(cut, s), cut = s; break;
            case Behavior::Contiguous:
                // A run of adjacent matches is one piece.
                if (prev_end != s) out(cut, s), cut = s;
                if (i + 1 == matches.size() || matches[i + 1].first != e) out(cut, e), cut = e;
                break;
            default: out(cut, s), out(s, e), cut = e;
        }
        prev_end = e;
    }
    out(cut, piece.size());
}

struct NormStep {
    enum Kind { Prepend, Replace, Nfc } kind;
    std::string a, b;
};

struct PreStep {
    enum Kind { ByteLevel, Split, Digits, Metaspace } kind;
    bool add_prefix_space = false, use_regex = true;  // ByteLevel
    std::shared_ptr<detail::PretokenRegex> regex;     // Split (Regex) / ByteLevel (use_regex)
    std::string literal;                              // Split (String)
    Behavior behavior = Behavior::Isolated;
    bool individual = false;                          // Digits
    std::string replacement;                          // Metaspace
    std::string prepend = "always";                   // Metaspace: always | first | never
    bool split = true;                                // Metaspace
};

struct DecStep {
    enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind;
    std::string a, b;       // Replace: from, to; Strip: content; Metaspace: replacement
    size_t start = 0, stop = 0;
    bool prefix = true;     // Metaspace: strip the first token's leading space
};

struct AddedToken {
    int32_t id;
    std::string content;
    bool special, lstrip, rstrip, single_word;
};

// Lets string-keyed maps be searched with a string_view (no temporary string per lookup).
struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

bool is_word_char(uint32_t cp) {
    using detail::UCat;
    const UCat c = detail::general_category(cp);
    return (c >= UCat::Lu && c <= UCat::Nd) || c == UCat::Nl || c == UCat::No || c == UCat::Pc;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

class JsonTokenizer final : public Tokenizer::Impl {
public:
    JsonTokenizer(std::string_view json, std::string_view config);
    std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
    std::string decode(const std::vector<int32_t>& ids) const override;
    size_t vocab_size() const override { return id_to_token_.size(); }
    int32_t token_id(std::string_view t) const override {
        const auto it = token_to_id_.find(t);
        return it == token_to_id_.end() ? -1 : it->second;
    }
    std::string kind() const override { return byte_level_ ? "byte-level bpe" : "bpe"; }

private:
    void parse_model(const JsonValue& m);
    void parse_normalizer(const JsonValue& n, const std::string& where);
    void parse_pre(const JsonValue& p, const std::string& where);
    void parse_decoder(const JsonValue& d, const std::string& where);
    void parse_post(const JsonValue& p, const std::string& where);
    void apply_config(std::string_view config);

    // Pieces already merged in this encode() call (text repeats its words).
    using WordCache = std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>>;
    struct Sink {
        std::vector<int32_t> out;
        WordCache cache;
    };
    std::string normalize(std::string s, bool first) const;
    void pre_step(size_t k, std::string_view piece, bool first, Sink& sink) const;
    void bpe(std::string_view piece, std::vector<int32_t>& out, WordCache& cache) const;
    void encode_segment(std::string_view seg, bool first, Sink& sink) const;

    std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> token_to_id_;
    std::vector<std::string> id_to_token_;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged id)
    int32_t unk_ = -1;
    bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false, byte_level_ = false;
    std::vector<AddedToken> added_;
    std::vector<NormStep> norm_;
    std::vector<PreStep> pre_;
    std::vector<DecStep> dec_;
    std::vector<int32_t> prefix_, suffix_;  // post-processor: added around the ids with add_special
};

static uint64_t pair_key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

JsonTokenizer::JsonTokenizer(std::string_view json, std::string_view config) {
    const JsonValue root = detail::parse_json(json, "tokenizer.json");
    if (!root.is_object()) tj_fail("the document is not a JSON object");
    const JsonValue* model = present(root, "model");
    if (!model) tj_fail("missing \"model\"");
    parse_model(*model);
    if (const JsonValue* at = present(root, "added_tokens")) {
        if (at->type != JsonValue::Type::Array) tj_fail("added_tokens must be an array");
        for (const auto& t : at->arr) {
            if (!t.is_object()) tj_fail("added_tokens entries must be objects");
            const JsonValue* id = present(t, "id");
            if (!id || id->type != JsonValue::Type::Number || !id->integral || id->num < 0 || id->num >= 1 << 24)
                tj_fail("added_tokens entry without a valid \"id\"");
            AddedToken a{int32_t(id->num), str_of(t, "content", "added_tokens"), bool_of(t, "special", "added_tokens", false),
                         bool_of(t, "lstrip", "added_tokens", false), bool_of(t, "rstrip", "added_tokens", false),
                         bool_of(t, "single_word", "added_tokens", false)};
            if (a.content.empty()) tj_fail("added_tokens entry with empty content");
            if (size_t(a.id) >= id_to_token_.size()) id_to_token_.resize(size_t(a.id) + 1);
            id_to_token_[size_t(a.id)] = a.content;
            token_to_id_[a.content] = a.id;
            added_.push_back(std::move(a));
        }
        // Longest first: where two added tokens match at one position the longer wins.
        std::stable_sort(added_.begin(), added_.end(),
                         [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
    }
    for (size_t i = 0; i < id_to_token_.size(); ++i)
        if (id_to_token_[i].empty()) tj_fail("token id " + std::to_string(i) + " has no token (ids must be contiguous)");
    if (const JsonValue* n = present(root, "normalizer")) parse_normalizer(*n, "normalizer");
    if (const JsonValue* p = present(root, "pre_tokenizer")) parse_pre(*p, "pre_tokenizer");
    if (const JsonValue* d = present(root, "decoder")) parse_decoder(*d, "decoder");
    if (const JsonValue* p = present(root, "post_processor")) parse_post(*p, "post_processor");
    if (const JsonValue* t = present(root, "truncation")) (void)t;  // lengths are the caller's business
    apply_config(config);
    if (bos_ < 0 && !prefix_.empty()) bos_ = prefix_.front();  // the template's BOS
}

void JsonTokenizer::parse_model(const JsonValue& m) {
    const std::string& type = type_of(m, "model");
    if (type != "BPE") unsupported("model.type \"" + type + "\" (BPE only)");
    if (present(m, "continuing_subword_prefix")) unsupported("model.continuing_subword_prefix");
    if (present(m, "end_of_word_suffix")) unsupported("model.end_of_word_suffix");
    if (const JsonValue* d = present(m, "dropout"); d && !(d->type == JsonValue::Type::Number && d->num == 0))
        unsupported("model.dropout");
    byte_fallback_ = bool_of(m, "byte_fallback", "model", false);
    fuse_unk_ = bool_of(m, "fuse_unk", "model", false);
    ignore_merges_ = bool_of(m, "ignore_merges", "model", false);
    const JsonValue* vocab = present(m, "vocab");
    if (!vocab || !vocab->is_object()) tj_fail("model.vocab must be an object");
    if (vocab->keys.size() > (1u << 24)) tj_fail("model.vocab holds more than 2^24 tokens");
    token_to_id_.reserve(vocab->keys.size() * 2);
    id_to_token_.resize(vocab->keys.size());
    for (size_t i = 0; i < vocab->keys.size(); ++i) {
        const JsonValue& id = vocab->values[i];
        if (id.type != JsonValue::Type::Number || !id.integral || id.num < 0 || id.num >= 1 << 24)
            tj_fail("model.vocab[\"" + vocab->keys[i] + "\"] is not a token id");
        const size_t k = size_t(id.num);
        if (k >= id_to_token_.size()) id_to_token_.resize(k + 1);
        if (!id_to_token_[k].empty()) tj_fail("model.vocab: id " + std::to_string(k) + " given twice");
        if (vocab->keys[i].empty()) tj_fail("model.vocab: an empty token");
        id_to_token_[k] = vocab->keys[i];
        token_to_id_[vocab->keys[i]] = int32_t(k);
    }
    const std::string unk = str_of(m, "unk_token", "model");
    if (!unk.empty()) {
        const auto it = token_to_id_.find(unk);
        if (it == token_to_id_.end()) tj_fail("model.unk_token \"" + unk + "\" is not in the vocabulary");
        unk_ = it->second;
    }
    const JsonValue* merges = present(m, "merges");
    if (merges && merges->type != JsonValue::Type::Array) tj_fail("model.merges must be an array");
    if (!merges) return;
    merges_.reserve(merges->arr.size() * 2);
    for (size_t r = 0; r < merges->arr.size(); ++r) {
        const JsonValue& e = merges->arr[r];
        std::string a, b;
        if (e.type == JsonValue::Type::String) {  // "a b"
            const size_t sp = e.str.find(' ', 1);
            if (sp == std::string::npos) tj_fail("model.merges[" + std::to_string(r) + "] is not \"left right\"");
            a = e.str.substr(0, sp), b = e.str.substr(sp + 1);
        } else if (e.type == JsonValue::Type::Array && e.arr.size() == 2 && e.arr[0].type == JsonValue::Type::String &&
                   e.arr[1].type == JsonValue::Type::String) {  // ["a", "b"]
            a = e.arr[0].str, b = e.arr[1].str;
        } else {
            tj_fail("model.merges[" + std::to_string(r) + "] must be \"left right\" or [\"left\", \"right\"]");
        }
        const auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
        if (ia == token_to_id_.end() || ib == token_to_id_.end() || im == token_to_id_.end())
            tj_fail("model.merges[" + std::to_string(r) + "] (\"" + a + "\", \"" + b + "\") names a token not in the vocabulary");
        merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(int32_t(r), im->second));  // first rank wins
    }
}

void JsonTokenizer::parse_normalizer(const JsonValue& n, const std::string& where) {
    const std::string& type = type_of(n, where);
    if (type == "Sequence") {
        const JsonValue* list = present(n, "normalizers");
        if (!list || list->type != JsonValue::Type::Array) tj_fail(where + ".normalizers must be an array");
        for (size_t i = 0; i < list->arr.size(); ++i) parse_normalizer(list->arr[i], where + "[" + std::to_string(i) + "]");
    } else if (type == "Prepend") {
        norm_.push_back({NormStep::Prepend, str_of(n, "prepend", where), ""});
    } else if (type == "Replace") {
        const std::string from = string_pattern(n, where);
        if (from.empty()) tj_fail(where + ": empty pattern");
        norm_.push_back({NormStep::Replace, from, str_of(n, "content", where)});
    } else if (type == "NFC") {
        norm_.push_back({NormStep::Nfc, "", ""});
    } else {
        unsupported(where + ".type \"" + type + "\"");
    }
}

void JsonTokenizer::parse_pre(const JsonValue& p, const std::string& where) {
    const std::string& type = type_of(p, where);
    PreStep s{};
    if (type == "Sequence") {
        const JsonValue* list = present(p, "pretokenizers");
        if (!list || list->type != JsonValue::Type::Array) tj_fail(where + ".pretokenizers must be an array");
        for (size_t i = 0; i < list->arr.size(); ++i) parse_pre(list->arr[i], where + "[" + std::to_string(i) + "]");
        return;
    }
    if (type == "ByteLevel") {
        s.kind = PreStep::ByteLevel;
        s.add_prefix_space = bool_of(p, "add_prefix_space", where, true);
        s.use_regex = bool_of(p, "use_regex", where, true);
        if (s.use_regex) s.regex = std::make_shared<detail::PretokenRegex>(detail::PretokenRegex::compile(kGpt2Pattern));
        byte_level_ = true;
    } else if (type == "Split") {
        s.kind = PreStep::Split;
        const JsonValue* pat = present(p, "pattern");
        if (!pat || !pat->is_object()) tj_fail(where + ".pattern must be an object");
        if (const JsonValue* r = present(*pat, "Regex"); r && r->type == JsonValue::Type::String) {
            try {
                s.regex = std::make_shared<detail::PretokenRegex>(detail::PretokenRegex::compile(r->str));
            } catch (const std::invalid_argument& e) {
                unsupported(where + ".pattern: " + e.what());
            }
        } else if (const JsonValue* l = present(*pat, "String"); l && l->type == JsonValue::Type::String && !l->str.empty()) {
            s.literal = l->str;
        } else {
            tj_fail(where + ".pattern must hold a Regex or a non-empty String");
        }
        s.behavior = behavior_of(str_of(p, "behavior", where, "Isolated"), where);
        if (bool_of(p, "invert", where, false)) unsupported(where + ".invert");
    } else if (type == "Digits") {
        s.kind = PreStep::Digits;
        s.individual = bool_of(p, "individual_digits", where, false);
    } else if (type == "Metaspace") {
        s.kind = PreStep::Metaspace;
        s.replacement = str_of(p, "replacement", where, "\xe2\x96\x81");
        if (const JsonValue* ps = present(p, "prepend_scheme")) {
            s.prepend = ps->type == JsonValue::Type::String ? ps->str : "";
            if (s.prepend != "always" && s.prepend != "first" && s.prepend != "never")
                unsupported(where + ".prepend_scheme");
        } else {
            s.prepend = bool_of(p, "add_prefix_space", where, true) ? "always" : "never";
        }
        s.split = bool_of(p, "split", where, true);
        if (s.replacement.empty()) tj_fail(where + ".replacement is empty");
    } else {
        unsupported(where + ".type \"" + type + "\"");
    }
    pre_.push_back(std::move(s));
}

void JsonTokenizer::parse_decoder(const JsonValue& d, const std::string& where) {
    const std::string& type = type_of(d, where);
    DecStep s{};
    if (type == "Sequence") {
        const JsonValue* list = present(d, "decoders");
        if (!list || list->type != JsonValue::Type::Array) tj_fail(where + ".decoders must be an array");
        for (size_t i = 0; i < list->arr.size(); ++i) parse_decoder(list->arr[i], where + "[" + std::to_string(i) + "]");
        return;
    }
    if (type == "ByteLevel") {
        s.kind = DecStep::ByteLevel;
    } else if (type == "Replace") {
        s.kind = DecStep::Replace;
        s.a = string_pattern(d, where);
        s.b = str_of(d, "content", where);
        if (s.a.empty()) tj_fail(where + ": empty pattern");
    } else if (type == "ByteFallback") {
        s.kind = DecStep::ByteFallback;
    } else if (type == "Fuse") {
        s.kind = DecStep::Fuse;
    } else if (type == "Strip") {
        s.kind = DecStep::Strip;
        s.a = str_of(d, "content", where, " ");
        auto count = [&](const char* k) {
            const JsonValue* v = present(d, k);
            if (!v) return size_t(0);
            if (v->type != JsonValue::Type::Number || !v->integral || v->num < 0 || v->num > 1e6)
                tj_fail(where + "." + k + " must be a small non-negative integer");
            return size_t(v->num);
        };
        s.start = count("start"), s.stop = count("stop");
    } else if (type == "Metaspace") {
        s.kind = DecStep::Metaspace;
        s.a = str_of(d, "replacement", where, "\xe2\x96\x81");
        if (const JsonValue* ps = present(d, "prepend_scheme")) s.prefix = ps->type == JsonValue::Type::String && ps->str != "never";
        else s.prefix = bool_of(d, "add_prefix_space", where, true);
    } else {
        unsupported(where + ".type \"" + type + "\"");
    }
    dec_.push_back(std::move(s));
}

void JsonTokenizer::parse_post(const JsonValue& p, const std::string& where) {
    const std::string& type = type_of(p, where);
    if (type == "ByteLevel") return;  // offsets only
    if (type == "Sequence") {
        const JsonValue* list = present(p, "processors");
        if (!list || list->type != JsonValue::Type::Array) tj_fail(where + ".processors must be an array");
        for (size_t i = 0; i < list->arr.size(); ++i) parse_post(list->arr[i], where + "[" + std::to_string(i) + "]");
        return;
    }
    if (type != "TemplateProcessing") unsupported(where + ".type \"" + type + "\"");
    const JsonValue* single = present(p, "single");
    if (!single || single->type != JsonValue::Type::Array) tj_fail(where + ".single must be an array");
    bool seen_a = false;
    prefix_.clear(), suffix_.clear();
    for (const auto& item : single->arr) {
        if (present(item, "Sequence")) {
            seen_a = true;
            continue;
        }
        const JsonValue* sp = present(item, "SpecialToken");
        if (!sp || !sp->is_object()) tj_fail(where + ".single items must be Sequence or SpecialToken");
        const std::string name = str_of(*sp, "id", where + ".single");
        // special_tokens maps the name to its ids.
        std::vector<int32_t> ids;
        if (const JsonValue* st = present(p, "special_tokens"); st && st->find(name)) {
            const JsonValue* e = st->find(name);
            const JsonValue* list = e->is_object() ? present(*e, "ids") : nullptr;
            if (!list || list->type != JsonValue::Type::Array) tj_fail(where + ".special_tokens[\"" + name + "\"].ids missing");
            for (const auto& x : list->arr) {
                if (x.type != JsonValue::Type::Number || !x.integral || x.num < 0 || x.num >= double(id_to_token_.size()))
                    tj_fail(where + ".special_tokens[\"" + name + "\"] holds an id outside the vocabulary");
                ids.push_back(int32_t(x.num));
            }
        } else {
            const int32_t id = token_id(name);
            if (id < 0) tj_fail(where + ": special token \"" + name + "\" is not in the vocabulary");
            ids.push_back(id);
        }
        auto& dst = seen_a ? suffix_ : prefix_;
        dst.insert(dst.end(), ids.begin(), ids.end());
    }
}

// tokenizer_config.json: add_bos_token / add_eos_token decide, when present.
void JsonTokenizer::apply_config(std::string_view config) {
    if (config.empty()) return;
    const JsonValue c = detail::parse_json(config, "tokenizer_config.json");
    if (!c.is_object()) return;
    auto token_of = [&](const char* key) -> int32_t {
        const JsonValue* v = present(c, key);
        if (!v) return -1;
        std::string name;
        if (v->type == JsonValue::Type::String) name = v->str;
        else if (v->is_object()) name = str_of(*v, "content", std::string("tokenizer_config.json ") + key);
        return name.empty() ? -1 : token_id(name);
    };
    bos_ = token_of("bos_token");
    eos_ = token_of("eos_token");
    const JsonValue* ab = present(c, "add_bos_token");
    const JsonValue* ae = present(c, "add_eos_token");
    if (ab && ab->type == JsonValue::Type::Bool) {
        prefix_.clear();
        if (ab->b && bos_ >= 0) prefix_.push_back(bos_);
    }
    if (ae && ae->type == JsonValue::Type::Bool) {
        suffix_.clear();
        if (ae->b && eos_ >= 0) suffix_.push_back(eos_);
    }
}

std::string JsonTokenizer::normalize(std::string s, bool first) const {
    (void)first;
    for (const auto& n : norm_) {
        switch (n.kind) {
            case NormStep::Prepend:
                if (!s.empty()) s = n.a + s;
                break;
            case NormStep::Replace: {
                std::string out;
                out.reserve(s.size());
                for (size_t i = 0; i < s.size();) {
                    if (s.compare(i, n.a.size(), n.a) == 0) out += n.b, i += n.a.size();
                    else out += s[i++];
                }
                s.swap(out);
                break;
            }
            case NormStep::Nfc:
                if (!detail::is_nfc_quick(s)) s = detail::nfc(s);
                break;
        }
    }
    return s;
}

// Pre-tokenizer k on one piece; its pieces go on to pre-tokenizer k + 1, and past the last one to
// BPE: depth first, so no list of the text's pieces is ever built.
void JsonTokenizer::pre_step(size_t k, std::string_view piece, bool first, Sink& sink) const {
    if (piece.empty()) return;
    if (k == pre_.size()) {
        bpe(piece, sink.out, sink.cache);
        return;
    }
    const PreStep& p = pre_[k];
    auto next = [&](std::string_view sub) { pre_step(k + 1, sub, first, sink); };
    std::vector<std::pair<size_t, size_t>> m;
    auto regex_matches = [&](std::string_view text) {
        const Decoded d = decode_all(text);
        size_t pos = 0, b, e;
        while (p.regex->find(d.cps.data(), d.cps.size(), pos, b, e)) m.emplace_back(d.at[b], d.at[e]), pos = e;
    };
    switch (p.kind) {
        case PreStep::ByteLevel: {
            std::string spaced;
            if (p.add_prefix_space && piece[0] != ' ') spaced = " " + std::string(piece), piece = spaced;
            const ByteMap& bm = byte_map();
            std::string mapped;
            auto map_bytes = [&](std::string_view part) {
                mapped.clear();
                for (unsigned char c : part) mapped += bm.to_utf8[c];
                pre_step(k + 1, mapped, first, sink);
            };
            if (!p.use_regex) {
                map_bytes(piece);
                break;
            }
            regex_matches(piece);
            split_at(piece, m, Behavior::Isolated, map_bytes);
            break;
        }
        case PreStep::Split:
            if (p.regex) {
                regex_matches(piece);
            } else {
                for (size_t at = piece.find(p.literal); at != std::string::npos; at = piece.find(p.literal, at + p.literal.size()))
                    m.emplace_back(at, at + p.literal.size());
            }
            split_at(piece, m, p.behavior, next);
            break;
        case PreStep::Digits: {  // Rust char::is_numeric: Nd, Nl, No
            const Decoded d = decode_all(piece);
            for (size_t i = 0; i < d.cps.size(); ++i) {
                const auto c = detail::general_category(d.cps[i]);
                if (c == detail::UCat::Nd || c == detail::UCat::Nl || c == detail::UCat::No) m.emplace_back(d.at[i], d.at[i + 1]);
            }
            split_at(piece, m, p.individual ? Behavior::Isolated : Behavior::Contiguous, next);
            break;
        }
        case PreStep::Metaspace: {
            std::string r;
            for (char c : piece) {
                if (c == ' ') r += p.replacement;
                else r += c;
            }
            if ((p.prepend == "always" || (p.prepend == "first" && first)) && r.compare(0, p.replacement.size(), p.replacement) != 0)
                r = p.replacement + r;
            if (!p.split) {
                pre_step(k + 1, r, first, sink);
                break;
            }
            for (size_t at = r.find(p.replacement); at != std::string::npos; at = r.find(p.replacement, at + p.replacement.size()))
                m.emplace_back(at, at + p.replacement.size());
            split_at(r, m, Behavior::MergedWithNext, next);
            break;
        }
    }
}

void JsonTokenizer::bpe(std::string_view piece, std::vector<int32_t>& out, WordCache& cache) const {
    if (const auto hit = cache.find(piece); hit != cache.end()) {
        out.insert(out.end(), hit->second.begin(), hit->second.end());
        return;
    }
    std::vector<int32_t> word;
    if (ignore_merges_) {
        if (const auto it = token_to_id_.find(piece); it != token_to_id_.end()) word.push_back(it->second);
    }
    if (word.empty()) {
        // Symbols: one per character (or its bytes as <0xXX>, or unk).
        for (size_t i = 0; i < piece.size();) {
            size_t len;
            detail::decode_utf8(piece.data() + i, piece.size() - i, len);
            const auto it = token_to_id_.find(piece.substr(i, len));
            if (it != token_to_id_.end()) {
                word.push_back(it->second);
            } else if (byte_fallback_ &&
                       std::all_of(piece.begin() + long(i), piece.begin() + long(i + len),
                                   [&](char c) { return token_to_id_.count(byte_token(uint8_t(c))) != 0; })) {
                for (size_t k = i; k < i + len; ++k) word.push_back(token_to_id_.find(byte_token(uint8_t(piece[k])))->second);
            } else if (unk_ >= 0) {
                if (!(fuse_unk_ && !word.empty() && word.back() == unk_)) word.push_back(unk_);
            } else {
                throw std::invalid_argument("tokenizer: the text holds \"" + std::string(piece.substr(i, len)) +
                                            "\", which is not in the vocabulary, and the model has no unk_token or byte fallback");
            }
            i += len;
        }
        // Merges, lowest rank first, leftmost first among equal ranks (as the tokenizers library).
        const size_t n = word.size();
        if (n > 1 && !merges_.empty()) {
            std::vector<int> prev(n), next(n);
            std::vector<bool> alive(n, true);
            for (size_t i = 0; i < n; ++i) prev[i] = int(i) - 1, next[i] = i + 1 < n ? int(i + 1) : -1;
            struct Cand {
                int32_t rank;
                int pos;
                int32_t left, right;
                bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
            };
            std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
            auto push = [&](int i) {
                if (i < 0) return;
                const int j = next[size_t(i)];
                if (j < 0) return;
                const auto m = merges_.find(pair_key(word[size_t(i)], word[size_t(j)]));
                if (m != merges_.end()) heap.push({m->second.first, i, word[size_t(i)], word[size_t(j)]});
            };
            for (size_t i = 0; i + 1 < n; ++i) push(int(i));
            while (!heap.empty()) {
                const Cand c = heap.top();
                heap.pop();
                const int i = c.pos, j = next[size_t(c.pos)];
                if (!alive[size_t(i)] || j < 0 || word[size_t(i)] != c.left || word[size_t(j)] != c.right) continue;
                word[size_t(i)] = merges_.at(pair_key(c.left, c.right)).second;
                alive[size_t(j)] = false;
                next[size_t(i)] = next[size_t(j)];
                if (next[size_t(j)] >= 0) prev[size_t(next[size_t(j)])] = i;
                push(prev[size_t(i)]);
                push(i);
            }
            std::vector<int32_t> merged;
            for (int i = 0; i >= 0; i = next[size_t(i)]) merged.push_back(word[size_t(i)]);
            word.swap(merged);
        }
    }
    out.insert(out.end(), word.begin(), word.end());
    if (cache.size() < 200000) cache.emplace(std::string(piece), std::move(word));
}

void JsonTokenizer::encode_segment(std::string_view seg, bool first, Sink& sink) const {
    if (seg.empty()) return;
    if (norm_.empty()) return pre_step(0, seg, first, sink);
    const std::string normalized = normalize(std::string(seg), first);
    pre_step(0, normalized, first, sink);
}

std::vector<int32_t> JsonTokenizer::encode(std::string_view text, bool add_special) const {
    Sink sink;
    std::vector<int32_t>& out = sink.out;
    if (add_special) out = prefix_;
    size_t seg_start = 0;
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    for (size_t i = 0; i < text.size();) {
        const AddedToken* hit = nullptr;
        for (const auto& a : added_) {
            if (text.compare(i, a.content.size(), a.content) != 0) continue;
            if (a.single_word) {  // not inside a word on either side
                size_t len;
                const bool left_word = i > 0 && is_word_char(detail::decode_utf8(&text[i - 1], 1, len));
                const size_t e = i + a.content.size();
                const bool right_word = e < text.size() && is_word_char(detail::decode_utf8(&text[e], text.size() - e, len));
                if (left_word || right_word) continue;
            }
            hit = &a;
            break;
        }
        if (!hit) {
            ++i;
            continue;
        }
        size_t seg_end = i, after = i + hit->content.size();
        if (hit->lstrip)
            while (seg_end > seg_start && ws(text[seg_end - 1])) --seg_end;
        if (hit->rstrip)
            while (after < text.size() && ws(text[after])) ++after;
        encode_segment(text.substr(seg_start, seg_end - seg_start), seg_start == 0, sink);
        out.push_back(hit->id);
        i = seg_start = after;
    }
    encode_segment(text.substr(seg_start), seg_start == 0, sink);
    if (add_special) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return std::move(out);
}

std::string JsonTokenizer::decode(const std::vector<int32_t>& ids) const {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
        if (id < 0 || size_t(id) >= id_to_token_.size())
            throw std::invalid_argument("tokenizer: id " + std::to_string(id) + " outside the vocabulary of " +
                                        std::to_string(id_to_token_.size()));
        toks.push_back(id_to_token_[size_t(id)]);
    }
    for (const auto& d : dec_) {
        switch (d.kind) {
            case DecStep::ByteLevel: {
                const ByteMap& bm = byte_map();
                for (auto& t : toks) {
                    std::string bytes;
                    bool ok = true;
                    for (size_t i = 0; i < t.size() && ok;) {
                        size_t len;
                        const uint32_t cp = detail::decode_utf8(t.data() + i, t.size() - i, len);
                        const auto it = bm.from_cp.find(cp);
                        if (it == bm.from_cp.end()) ok = false;
                        else bytes += char(it->second);
                        i += len;
                    }
                    if (ok) t.swap(bytes);  // a token with a character outside the map stays as it is
                }
                break;
            }
            case DecStep::Replace:
                for (auto& t : toks) {
                    std::string r;
                    for (size_t i = 0; i < t.size();) {
                        if (t.compare(i, d.a.size(), d.a) == 0) r += d.b, i += d.a.size();
                        else r += t[i++];
                    }
                    t.swap(r);
                }
                break;
            case DecStep::ByteFallback:
                for (auto& t : toks) {
                    auto hexval = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; };
                    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hexval(t[3]) >= 0 && hexval(t[4]) >= 0)
                        t = std::string(1, char(hexval(t[3]) * 16 + hexval(t[4])));
                }
                break;
            case DecStep::Fuse: {
                std::string all;
                for (const auto& t : toks) all += t;
                toks.assign(1, std::move(all));
                break;
            }
            case DecStep::Strip:
                for (auto& t : toks) {
                    size_t b = 0, e = t.size();
                    for (size_t k = 0; k < d.start && t.compare(b, d.a.size(), d.a) == 0 && b + d.a.size() <= e; ++k) b += d.a.size();
                    for (size_t k = 0; k < d.stop && e >= b + d.a.size() && t.compare(e - d.a.size(), d.a.size(), d.a) == 0; ++k)
                        e -= d.a.size();
                    t = t.substr(b, e - b);
                }
                break;
            case DecStep::Metaspace:
                for (size_t k = 0; k < toks.size(); ++k) {
                    std::string r;
                    for (size_t i = 0; i < toks[k].size();) {
                        if (toks[k].compare(i, d.a.size(), d.a) == 0) r += ' ', i += d.a.size();
                        else r += toks[k][i++];
                    }
                    if (k == 0 && d.prefix && !r.empty() && r[0] == ' ') r.erase(0, 1);
                    toks[k].swap(r);
                }
                break;
        }
    }
    std::string out;
    for (const auto& t : toks) out += t;
    return out;
}

// ---------------------------------------------------------------------------------------------

Tokenizer::Impl::~Impl() = default;
Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

bool readable(const std::string& path, std::string* bytes) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    if (bytes) *bytes = std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    return true;
}

}  // namespace

namespace {

class ByteTokenizer final : public Tokenizer::Impl {
public:
    std::vector<int32_t> encode(std::string_view text, bool) const override {
        return std::vector<int32_t>(reinterpret_cast<const uint8_t*>(text.data()),
                                    reinterpret_cast<const uint8_t*>(text.data()) + text.size());
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string out;
        for (int32_t id : ids) {
            if (id < 0 || id > 255) throw std::invalid_argument("tokenizer: id " + std::to_string(id) + " is not a byte");
            out += char(id);
        }
        return out;
    }
    size_t vocab_size() const override { return 256; }
    int32_t token_id(std::string_view t) const override { return t.size() == 1 ? int32_t(uint8_t(t[0])) : -1; }
    std::string kind() const override { return "bytes"; }
};

}  // namespace

Tokenizer Tokenizer::bytes() { return Tokenizer(std::make_unique<ByteTokenizer>()); }

Tokenizer Tokenizer::for_model(const std::string& dir, size_t model_vocab, const std::string& file) {
    const bool has_own = !file.empty() || readable(dir + "/tokenizer.json", nullptr) || readable(dir + "/tokenizer.model", nullptr);
    if (!has_own) {
        if (model_vocab == 256) return bytes();
        throw std::invalid_argument("tokenizer: " + dir + " has no tokenizer.json or tokenizer.model (pass one with --tokenizer)");
    }
    Tokenizer t = load(file.empty() ? dir : file);
    if (t.vocab_size() > model_vocab)
        throw std::invalid_argument("tokenizer: its " + std::to_string(t.vocab_size()) + " tokens do not fit the model's vocabulary of " +
                                    std::to_string(model_vocab));
    return t;
}

Tokenizer Tokenizer::from_json(std::string_view json, std::string_view config) {
    return Tokenizer(std::make_unique<JsonTokenizer>(json, config));
}

Tokenizer Tokenizer::from_bytes(std::string_view bytes, std::string_view config) {
    const size_t first = bytes.find_first_not_of(" \t\r\n");
    if (first != std::string_view::npos && bytes[first] == '{') return from_json(bytes, config);
    return from_sentencepiece(bytes, config);
}

Tokenizer Tokenizer::load(const std::string& path) {
    std::string dir = path, file = path, bytes, config;
    const bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
    const bool is_model = path.size() >= 6 && path.compare(path.size() - 6, 6, ".model") == 0;
    if (is_json || is_model) {
        const size_t slash = path.find_last_of('/');
        dir = slash == std::string::npos ? "." : path.substr(0, slash);
    } else if (readable(path + "/tokenizer.json", nullptr)) {
        file = path + "/tokenizer.json";
    } else if (readable(path + "/tokenizer.model", nullptr)) {
        file = path + "/tokenizer.model";
    } else {
        throw std::invalid_argument("tokenizer: no tokenizer.json or tokenizer.model in " + path);
    }
    if (!readable(file, &bytes)) throw std::invalid_argument("tokenizer: cannot open " + file);
    readable(dir + "/tokenizer_config.json", &config);
    if (file.size() >= 6 && file.compare(file.size() - 6, 6, ".model") == 0) return from_sentencepiece(bytes, config);
    return from_json(bytes, config);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const { return impl_->encode(text, add_special); }
std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return impl_->decode(ids); }
size_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
int32_t Tokenizer::bos_id() const { return impl_->bos_; }
int32_t Tokenizer::eos_id() const { return impl_->eos_; }
int32_t Tokenizer::token_id(std::string_view t) const { return impl_->token_id(t); }
std::string Tokenizer::kind() const { return impl_->kind(); }

}  // namespace tqkv
