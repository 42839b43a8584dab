// tokenizer.model (SentencePiece): the ModelProto is read here from the protobuf wire format
// (bounds-checked; neither libprotobuf nor libsentencepiece), so that native builds and
// WebAssembly run the same code. Encoding and decoding follow libsentencepiece (0.1.97, Debian
// 12's), which tests/test_tokenizer.cpp compares ids and text with when it is installed:
//   normalize  the model's precompiled character map (nmt_nfkc and the other rules; none for
//              "identity", as Llama 2 / Mistral / TinyLlama), optional removal of extra whitespace,
//              a dummy '▁' prefix, ' ' -> '▁', each byte of invalid UTF-8 -> U+FFFD;
//   BPE        characters (user-defined symbols whole), then repeatedly the adjacent pair whose
//              concatenation is the highest-scoring piece (leftmost first on ties);
//   unigram    Viterbi over the pieces' scores (an unknown character scores min score - 10);
//   unknowns   a piece outside the vocabulary becomes its UTF-8 bytes as <0xXX> pieces when the
//              model has byte fallback, else one <unk> per run of them.
// What the model asks for and this does not implement (a denormalizer's character map, WORD /
// CHAR models, whitespace as a suffix) is refused at load, naming the field.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "model/json.hpp"
#include "model/tokenizer_impl.hpp"
#include "model/unicode.hpp"

namespace tqkv {

namespace {

[[noreturn]] void refuse(const std::string& what) { throw std::invalid_argument("tokenizer.model: " + what); }

// ---------------------------------------------------------------------------------------------
// Protobuf wire format: a message is a sequence of (field number << 3 | wire type) keys, each
// followed by a varint (type 0), 8 bytes (1), a varint length and that many bytes (2: strings,
// bytes, embedded messages) or 4 bytes (5: float). Every read is checked against the end.
class ProtoReader {
public:
    ProtoReader(std::string_view bytes, std::string where, size_t base = 0)
        : begin_(bytes.data()), p_(bytes.data()), end_(bytes.data() + bytes.size()), base_(base), where_(std::move(where)) {}

    // The next field's key; false at the end of the message.
    bool next() {
        if (p_ == end_) return false;
        const uint64_t key = varint();
        field_ = key >> 3;
        wire_ = int(key & 7);
        if (field_ == 0) fail("field number 0");
        return true;
    }
    uint64_t field() const { return field_; }

    uint64_t varint() {
        uint64_t v = 0;
        for (int shift = 0; shift < 70; shift += 7) {
            if (p_ == end_) fail("truncated varint");
            const uint8_t b = uint8_t(*p_++);
            if (shift < 64) v |= uint64_t(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        fail("varint longer than 10 bytes");
    }
    bool boolean() {
        expect(0);
        return varint() != 0;
    }
    int64_t int_value() {
        expect(0);
        return int64_t(varint());
    }
    float f32() {
        expect(5);
        const uint8_t* b = take(4);
        const uint32_t u = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    std::string_view bytes() {
        expect(2);
        const uint64_t n = varint();
        if (n > uint64_t(end_ - p_)) fail("length " + std::to_string(n) + " runs past the end");
        const char* s = reinterpret_cast<const char*>(take(size_t(n)));
        return {s, size_t(n)};
    }
    ProtoReader message(const std::string& name) {
        const std::string_view b = bytes();
        return ProtoReader(b, name, base_ + size_t(b.data() - begin_));
    }
    void skip() {
        switch (wire_) {
            case 0: varint(); break;
            case 1: take(8); break;
            case 2: bytes(); break;
            case 5: take(4); break;
            default: fail("wire type " + std::to_string(wire_) + " (accepted: 0, 1, 2, 5; groups are not)");
        }
    }

private:
    size_t offset() const { return size_t(p_ - begin_); }
    const uint8_t* take(size_t n) {
        if (n > size_t(end_ - p_)) fail("truncated field");
        const auto* b = reinterpret_cast<const uint8_t*>(p_);
        p_ += n;
        return b;
    }
    void expect(int wire) {
        if (wire_ != wire)
            fail("field " + std::to_string(field_) + " has wire type " + std::to_string(wire_) + ", expected " +
                 std::to_string(wire));
    }
    [[noreturn]] void fail(const std::string& what) const {
        refuse("malformed protobuf in " + where_ + " at byte " + std::to_string(base_ + offset()) + ": " + what);
    }

    const char* begin_;
    const char* p_;
    const char* end_;
    size_t base_;
    std::string where_;
    uint64_t field_ = 0;
    int wire_ = 0;
};

// ModelProto.SentencePiece.Type
enum PieceType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct NormalizerSpec {
    std::string name;
    std::string charsmap;  // precompiled_charsmap
    bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

// The fields of ModelProto this tokenizer reads (sentencepiece_model.proto; proto2 defaults).
struct ModelProto {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<uint8_t> types;
    int64_t model_type = 1;  // TrainerSpec.model_type: UNIGRAM
    bool byte_fallback = false, treat_whitespace_as_suffix = false;
    std::string unk_surface = " \xE2\x81\x87 ", unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>";
    NormalizerSpec normalizer, denormalizer;
};

void read_normalizer(ProtoReader r, NormalizerSpec& n) {
    while (r.next()) {
        switch (r.field()) {
            case 1: n.name = std::string(r.bytes()); break;
            case 2: n.charsmap = std::string(r.bytes()); break;
            case 3: n.add_dummy_prefix = r.boolean(); break;
            case 4: n.remove_extra_whitespaces = r.boolean(); break;
            case 5: n.escape_whitespaces = r.boolean(); break;
            default: r.skip();
        }
    }
}

ModelProto read_model_proto(std::string_view bytes) {
    ModelProto m;
    ProtoReader r(bytes, "ModelProto");
    while (r.next()) {
        switch (r.field()) {
            case 1: {  // repeated SentencePiece pieces
                ProtoReader p = r.message("pieces[" + std::to_string(m.pieces.size()) + "]");
                std::string piece;
                float score = 0;
                uint64_t type = kNormal;
                while (p.next()) {
                    switch (p.field()) {
                        case 1: piece = std::string(p.bytes()); break;
                        case 2: score = p.f32(); break;
                        case 3: type = uint64_t(p.int_value()); break;
                        default: p.skip();
                    }
                }
                if (type < kNormal || type > kByte)
                    refuse("pieces[" + std::to_string(m.pieces.size()) + "].type " + std::to_string(int64_t(type)) +
                           " (accepted: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE)");
                m.pieces.push_back(std::move(piece));
                m.scores.push_back(score);
                m.types.push_back(uint8_t(type));
                break;
            }
            case 2: {  // TrainerSpec trainer_spec
                ProtoReader t = r.message("trainer_spec");
                while (t.next()) {
                    switch (t.field()) {
                        case 3: m.model_type = t.int_value(); break;
                        case 24: m.treat_whitespace_as_suffix = t.boolean(); break;
                        case 35: m.byte_fallback = t.boolean(); break;
                        case 44: m.unk_surface = std::string(t.bytes()); break;
                        case 45: m.unk_piece = std::string(t.bytes()); break;
                        case 46: m.bos_piece = std::string(t.bytes()); break;
                        case 47: m.eos_piece = std::string(t.bytes()); break;
                        default: t.skip();
                    }
                }
                break;
            }
            case 3: read_normalizer(r.message("normalizer_spec"), m.normalizer); break;
            case 5: read_normalizer(r.message("denormalizer_spec"), m.denormalizer); break;
            default: r.skip();
        }
    }
    return m;
}

// ---------------------------------------------------------------------------------------------
// The pieces NORMAL, USER_DEFINED and UNUSED (those the models build text from) as a byte trie;
// its edges in one open-addressing table keyed by (node, byte).
class PieceTrie {
public:
    void build(const ModelProto& m) {
        size_t bytes = 0;
        for (size_t i = 0; i < m.pieces.size(); ++i)
            if (in_trie(m.types[i])) bytes += m.pieces[i].size();
        size_t cap = 16;
        while (cap < 2 * bytes + 16) cap *= 2;
        keys_.assign(cap, 0);
        vals_.assign(cap, 0);
        mask_ = cap - 1;
        ids_.assign(1, -1);
        for (size_t i = 0; i < m.pieces.size(); ++i) {
            if (!in_trie(m.types[i])) continue;
            int32_t node = 0;
            for (char c : m.pieces[i]) {
                int32_t next = child(node, uint8_t(c));
                if (next < 0) {
                    next = int32_t(ids_.size());
                    ids_.push_back(-1);
                    insert(key(node, uint8_t(c)), next);
                }
                node = next;
            }
            ids_[size_t(node)] = int32_t(i);
        }
    }
    static bool in_trie(uint8_t type) { return type == kNormal || type == kUserDefined || type == kUnused; }
    // The node reached from `node` by byte b; -1 when there is none.
    int32_t child(int32_t node, uint8_t b) const {
        const uint64_t k = key(node, b);
        for (size_t h = hash(k);; h = (h + 1) & mask_) {
            if (keys_[h] == k) return vals_[h];
            if (keys_[h] == 0) return -1;
        }
    }
    int32_t walk(int32_t node, std::string_view s) const {
        for (size_t i = 0; i < s.size() && node >= 0; ++i) node = child(node, uint8_t(s[i]));
        return node;
    }
    int32_t id(int32_t node) const { return node < 0 ? -1 : ids_[size_t(node)]; }  // the piece ending here, or -1

private:
    static uint64_t key(int32_t node, uint8_t b) { return (uint64_t(uint32_t(node)) << 8 | b) + 1; }  // 0: empty slot
    size_t hash(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
    void insert(uint64_t k, int32_t v) {
        size_t h = hash(k);
        while (keys_[h] != 0) h = (h + 1) & mask_;
        keys_[h] = k;
        vals_[h] = v;
    }
    std::vector<uint64_t> keys_;
    std::vector<int32_t> vals_, ids_;
    size_t mask_ = 0;
};

// Bytes of the UTF-8 character starting with byte b, as libsentencepiece counts them (from the
// first byte alone; the normalizer has replaced invalid sequences already).
inline size_t one_char_len(uint8_t b) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[b >> 4]; }

constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";  // U+2581 '▁'
constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD

std::string byte_piece(int b) {
    static const char hex[] = "0123456789ABCDEF";
    return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

// normalizer_spec.precompiled_charsmap (nmt_nfkc and the other normalization rules): a
// darts-clone double-array trie of source strings, each leading to the offset of its
// NUL-terminated replacement: [uint32 LE: trie bytes][trie: uint32 LE units][replacements].
// Read as libsentencepiece reads it, every index checked against the blob.
class CharsMap {
public:
    void load(std::string_view blob) {
        if (blob.size() <= 4) refuse("normalizer_spec.precompiled_charsmap of " + std::to_string(blob.size()) + " bytes is broken");
        const auto* b = reinterpret_cast<const uint8_t*>(blob.data());
        const size_t trie = size_t(b[0]) | size_t(b[1]) << 8 | size_t(b[2]) << 16 | size_t(b[3]) << 24;
        if (trie >= blob.size() - 4)
            refuse("normalizer_spec.precompiled_charsmap: its trie of " + std::to_string(trie) + " bytes exceeds the " +
                   std::to_string(blob.size()) + "-byte blob");
        units_.resize(trie / 4);
        for (size_t i = 0; i < units_.size(); ++i) {
            const uint8_t* u = b + 4 + 4 * i;
            units_[i] = uint32_t(u[0]) | uint32_t(u[1]) << 8 | uint32_t(u[2]) << 16 | uint32_t(u[3]) << 24;
        }
        replacements_ = blob.substr(4 + trie);
    }
    bool empty() const { return units_.empty(); }
    // The length of the longest source string that starts s (0: none) and its replacement.
    size_t longest(std::string_view s, std::string_view& replacement) const {
        if (units_.empty()) return 0;
        size_t best = 0;
        uint32_t value = 0;
        uint32_t pos = offset(units_[0]);
        for (size_t i = 0; i < s.size(); ++i) {
            const uint8_t c = uint8_t(s[i]);
            pos ^= c;
            if (pos >= units_.size()) break;
            const uint32_t u = units_[pos];
            if ((u & ((1u << 31) | 0xff)) != c) break;  // label
            pos ^= offset(u);
            if ((u >> 8) & 1) {                         // has a leaf: a source string ends here
                if (pos >= units_.size()) break;
                best = i + 1;
                value = units_[pos] & ((1u << 31) - 1);
            }
        }
        if (best == 0) return 0;
        if (value >= replacements_.size())
            refuse("normalizer_spec.precompiled_charsmap: a replacement at byte " + std::to_string(value) + " of " +
                   std::to_string(replacements_.size()));
        const size_t end = replacements_.find('\0', value);
        replacement = replacements_.substr(value, (end == std::string_view::npos ? replacements_.size() : end) - value);
        return best;
    }

private:
    static uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
    std::vector<uint32_t> units_;
    std::string_view replacements_;  // into the model's normalizer_spec.charsmap
};

class SentencePieceTokenizer final : public Tokenizer::Impl {
public:
    SentencePieceTokenizer(std::string_view bytes, std::string_view config) : m_(read_model_proto(bytes)) {
        validate();
        trie_.build(m_);
        bos_ = control_id(m_.bos_piece);
        eos_ = control_id(m_.eos_piece);
        // BOS as Llama's tokenizers add it, unless tokenizer_config.json says otherwise.
        add_bos_ = bos_ >= 0;
        if (!config.empty()) {
            const auto c = detail::parse_json(config, "tokenizer_config.json");
            if (const auto* b = c.find("add_bos_token"); b && b->type == detail::JsonValue::Type::Bool) add_bos_ = b->b;
            if (const auto* e = c.find("add_eos_token"); e && e->type == detail::JsonValue::Type::Bool) add_eos_ = e->b;
        }
    }

    std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
        if (text.size() >= (size_t(1) << 30)) refuse("text of 1 GiB or more");  // its normalized form indexed by uint32
        const std::string norm = normalize(text);
        std::vector<Token> toks;
        if (m_.model_type == 2) encode_bpe(norm, toks);
        else encode_unigram(norm, toks);
        std::vector<int32_t> out;
        out.reserve(toks.size() + 2);
        if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
        bool prev_unk = false;
        for (const Token& t : toks) {
            const bool unk = t.id == unk_id_;
            if (unk && m_.byte_fallback) {
                for (uint32_t i = 0; i < t.len; ++i) out.push_back(byte_ids_[uint8_t(norm[t.begin + i])]);
            } else if (!(unk && prev_unk)) {  // a run of unknown pieces is one <unk>
                out.push_back(t.id);
            }
            prev_unk = unk;
        }
        if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
        return out;
    }

    std::string decode(const std::vector<int32_t>& ids) const override {
        for (int32_t id : ids)
            if (id < 0 || size_t(id) >= m_.pieces.size())
                throw std::invalid_argument("tokenizer: id " + std::to_string(id) + " outside the vocabulary of " +
                                            std::to_string(m_.pieces.size()));
        const NormalizerSpec& n = m_.normalizer;
        std::string text, bytes;
        // Consecutive byte pieces form UTF-8; each byte that does not becomes U+FFFD.
        auto flush_bytes = [&] {
            for (size_t i = 0; i < bytes.size();) {
                size_t len;
                const uint32_t cp = detail::decode_utf8(bytes.data() + i, bytes.size() - i, len);
                if (cp >= detail::kInvalidByteBase) text += kReplacement;
                else text.append(bytes, i, len);
                i += len;
            }
            bytes.clear();
        };
        // The dummy prefix's '▁' is dropped from the first piece that shows text.
        bool at_start = true, start_ws_seen = false;
        for (int32_t id : ids) {
            const uint8_t type = m_.types[size_t(id)];
            if (type == kByte) {
                bytes += char(byte_of(m_.pieces[size_t(id)]));
                continue;
            }
            flush_bytes();
            if (start_ws_seen || !text.empty()) at_start = false;
            start_ws_seen = false;
            if (type == kControl) continue;
            if (type == kUnknown) {
                text += m_.unk_surface;
                continue;
            }
            std::string_view piece = m_.pieces[size_t(id)];
            if (at_start && (n.add_dummy_prefix || n.remove_extra_whitespaces) && piece.substr(0, 3) == kSpaceSymbol) {
                piece.remove_prefix(3);
                start_ws_seen = !n.remove_extra_whitespaces;
            }
            for (size_t i = 0; i < piece.size();) {
                if (piece.compare(i, 3, kSpaceSymbol) == 0) {
                    text += ' ';
                    i += 3;
                } else {
                    text += piece[i++];
                }
            }
        }
        flush_bytes();
        return text;
    }

    size_t vocab_size() const override { return m_.pieces.size(); }
    int32_t token_id(std::string_view t) const override {
        if (const int32_t id = trie_.id(trie_.walk(0, t)); id >= 0) return id;
        const auto it = reserved_.find(std::string(t));
        return it == reserved_.end() ? -1 : it->second;
    }
    std::string kind() const override { return "sentencepiece"; }

private:
    struct Token {
        uint32_t begin, len;  // bytes of the normalized text
        int32_t id;
    };

    static int byte_of(std::string_view piece) {  // "<0xAB>" -> 0xAB, else -1
        if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
        int v = 0;
        for (char c : piece.substr(3, 2)) {
            if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
            else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
            else return -1;  // libsentencepiece writes (and reads) upper-case hex only
        }
        return v;
    }

    int32_t control_id(const std::string& piece) const {
        const auto it = reserved_.find(piece);
        return it != reserved_.end() && m_.types[size_t(it->second)] == kControl ? it->second : -1;
    }

    // What libsentencepiece checks when it loads a model, plus what is not implemented here.
    void validate() {
        const NormalizerSpec& n = m_.normalizer;
        if (m_.model_type != 1 && m_.model_type != 2)
            refuse("unsupported: trainer_spec.model_type " + std::to_string(m_.model_type) +
                   (m_.model_type == 3 ? " (WORD)" : m_.model_type == 4 ? " (CHAR)" : "") +
                   " (accepted: 1 UNIGRAM, 2 BPE)");
        if (!n.charsmap.empty()) charsmap_.load(n.charsmap);
        if (!m_.denormalizer.charsmap.empty())
            refuse("unsupported: denormalizer_spec.precompiled_charsmap (" + std::to_string(m_.denormalizer.charsmap.size()) +
                   " bytes): only models without one are accepted");
        if (m_.treat_whitespace_as_suffix)
            refuse("unsupported: trainer_spec.treat_whitespace_as_suffix (accepted: false, whitespace as a prefix)");
        if (m_.pieces.size() >= size_t(INT32_MAX)) refuse("too many pieces");
        std::unordered_map<std::string_view, size_t> seen;
        seen.reserve(m_.pieces.size());
        std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
        for (size_t i = 0; i < m_.pieces.size(); ++i) {
            const std::string& p = m_.pieces[i];
            const std::string at = "pieces[" + std::to_string(i) + "]";
            if (p.empty()) refuse(at + ".piece is empty");
            if (m_.scores[i] != m_.scores[i]) refuse(at + ".score is NaN");
            if (!seen.emplace(p, i).second)
                refuse(at + ".piece \"" + p + "\" is also pieces[" + std::to_string(seen[p]) + "]");
            const uint8_t t = m_.types[i];
            if (!PieceTrie::in_trie(t)) reserved_.emplace(p, int32_t(i));
            if (t == kUnknown) {
                if (unk_id_ >= 0) refuse(at + ": a second UNKNOWN piece (the first is pieces[" + std::to_string(unk_id_) + "])");
                unk_id_ = int32_t(i);
            } else if (t == kByte) {
                if (!m_.byte_fallback) refuse(at + " is a BYTE piece but trainer_spec.byte_fallback is false");
                const int b = byte_of(p);
                if (b < 0) refuse(at + ".piece \"" + p + "\": a BYTE piece must be <0xXX> (upper-case hex)");
                byte_ids_[b] = int32_t(i);
            } else if (t == kNormal) {
                min_score_ = std::min(min_score_, m_.scores[i]);
                max_score_ = std::max(max_score_, m_.scores[i]);
            } else if (t == kUserDefined) {
                user_defined_.push_back(p);
            } else if (t == kUnused) {
                has_unused_ = true;
            }
        }
        if (unk_id_ < 0) refuse("no UNKNOWN piece (every model has one, e.g. <unk>)");
        if (m_.byte_fallback)
            for (int b = 0; b < 256; ++b)
                if (byte_ids_[b] < 0) refuse("trainer_spec.byte_fallback is true but there is no piece " + byte_piece(b));
        // Longest user-defined symbol first: the BPE splitter takes the longest that matches.
        std::sort(user_defined_.begin(), user_defined_.end(),
                  [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
        space_ = n.escape_whitespaces ? kSpaceSymbol : std::string_view(" ");
        // BPE can run word by word when no piece joins a space to the text before it (a piece's
        // spaces lead it): no merge can then cross the start of a run of spaces that follows text.
        // UNUSED pieces make libsentencepiece's result depend on the order of all pairs: not then.
        word_by_word_ = !has_unused_;
        for (size_t i = 0; i < m_.pieces.size() && word_by_word_; ++i) {
            if (!PieceTrie::in_trie(m_.types[i])) continue;
            std::string_view p = m_.pieces[i];
            while (p.substr(0, space_.size()) == space_) p.remove_prefix(space_.size());
            if (p.find(space_) != std::string_view::npos) word_by_word_ = false;
        }
    }

    // libsentencepiece's Normalizer.
    std::string normalize(std::string_view in) const {
        const NormalizerSpec& n = m_.normalizer;
        std::string out;
        if (in.empty()) return out;
        // Each step: a user-defined symbol, kept whole, else the longest source string of the
        // character map, replaced, else one character (U+FFFD for a byte of invalid UTF-8).
        const bool plain = user_defined_.empty() && charsmap_.empty();
        auto next = [&](size_t i, std::string_view& piece) -> size_t {
            const uint8_t b = uint8_t(in[i]);
            if (b < 0x80 && plain) {
                piece = in.substr(i, 1);
                return 1;
            }
            for (const std::string& u : user_defined_)
                if (in.compare(i, u.size(), u) == 0) {
                    piece = u;
                    return u.size();
                }
            if (const size_t len = charsmap_.longest(in.substr(i), piece)) return len;
            size_t len;
            const uint32_t cp = detail::decode_utf8(in.data() + i, in.size() - i, len);
            piece = cp >= detail::kInvalidByteBase ? kReplacement : in.substr(i, len);
            return len;
        };
        size_t i = 0;
        std::string_view piece;
        if (n.remove_extra_whitespaces)
            while (i < in.size()) {
                const size_t len = next(i, piece);
                if (piece != " ") break;
                i += len;
            }
        if (i == in.size()) return out;
        out.reserve((in.size() - i) * 3 / 2 + 4);
        if (n.add_dummy_prefix) out += space_;
        bool prev_space = n.remove_extra_whitespaces;
        while (i < in.size()) {
            i += next(i, piece);
            if (prev_space)
                while (!piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
            if (!piece.empty()) {
                for (char c : piece) {
                    if (c == ' ' && n.escape_whitespaces) out += kSpaceSymbol;
                    else out += c;
                }
                prev_space = piece.back() == ' ';
            }
            if (!n.remove_extra_whitespaces) prev_space = false;
        }
        if (n.remove_extra_whitespaces)
            while (out.size() >= space_.size() && out.compare(out.size() - space_.size(), space_.size(), space_) == 0)
                out.resize(out.size() - space_.size());
        return out;
    }

    int32_t piece_to_id(std::string_view s, int32_t node) const {
        if (const int32_t id = trie_.id(node); id >= 0) return id;
        if (!reserved_.empty())
            if (const auto it = reserved_.find(std::string(s)); it != reserved_.end()) return it->second;
        return unk_id_;
    }

    // BPE as libsentencepiece's bpe::Model::Encode, over each word (see word_by_word_) or the
    // whole text. (A per-call cache of repeated words measured no faster on eval.txt: not kept.)
    void encode_bpe(const std::string& text, std::vector<Token>& out) const {
        std::vector<Symbol> syms;
        std::vector<Pair> heap;
        std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
        if (!word_by_word_) {
            if (!text.empty()) encode_bpe_span(text, 0, text.size(), syms, heap, rev_merge, out);
            return;
        }
        const char s0 = space_[0];
        auto space_at = [&](size_t i) {
            return text[i] == s0 && text.size() - i >= space_.size() && text.compare(i, space_.size(), space_) == 0;
        };
        size_t start = 0;
        bool prev_space = false;
        for (size_t i = 0; i < text.size();) {
            const bool at_space = space_at(i);
            if (at_space && i > start && !prev_space) {  // a run of spaces after text starts a word
                encode_bpe_span(text, start, i, syms, heap, rev_merge, out);
                start = i;
            }
            prev_space = at_space;
            i += at_space ? space_.size() : 1;
        }
        if (start < text.size()) encode_bpe_span(text, start, text.size(), syms, heap, rev_merge, out);
    }

    struct Symbol {
        uint32_t begin, len;
        int32_t prev, next;
        int32_t node;  // trie node of the symbol's bytes (-1: not a prefix of any piece)
        bool frozen;   // a user-defined symbol: never merged
    };
    struct Pair {
        float score;
        int32_t left, right;
        uint32_t len;
        int32_t node;  // trie node of the concatenation
        // libsentencepiece's agenda: the highest score first, then the leftmost.
        bool operator<(const Pair& o) const { return score < o.score || (score == o.score && left > o.left); }
    };

    void encode_bpe_span(const std::string& text, size_t b, size_t e, std::vector<Symbol>& syms, std::vector<Pair>& heap,
                         std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>& rev_merge,
                         std::vector<Token>& out) const {
        syms.clear();
        heap.clear();
        for (size_t i = b; i < e;) {
            size_t len = 0;
            bool frozen = false;
            for (const std::string& u : user_defined_)
                if (text.compare(i, u.size(), u) == 0 && i + u.size() <= e) {
                    len = u.size();
                    frozen = true;
                    break;
                }
            if (!frozen) len = std::min(one_char_len(uint8_t(text[i])), e - i);
            const int32_t idx = int32_t(syms.size());
            syms.push_back({uint32_t(i), uint32_t(len), idx - 1, -1, trie_.walk(0, std::string_view(text).substr(i, len)), frozen});
            if (idx > 0) syms[size_t(idx) - 1].next = idx;
            i += len;
        }
        const std::string_view t(text);
        auto add_pair = [&](int32_t l, int32_t r) {
            if (l < 0 || r < 0) return;
            const Symbol &L = syms[size_t(l)], &R = syms[size_t(r)];
            if (L.frozen || R.frozen || L.node < 0) return;
            const int32_t node = trie_.walk(L.node, t.substr(R.begin, R.len));
            const int32_t id = trie_.id(node);
            if (id < 0) return;
            heap.push_back({m_.scores[size_t(id)], l, r, L.len + R.len, node});
            std::push_heap(heap.begin(), heap.end());
            if (m_.types[size_t(id)] == kUnused)
                rev_merge[t.substr(L.begin, L.len + R.len)] = {t.substr(L.begin, L.len), t.substr(R.begin, R.len)};
        };
        for (size_t i = 1; i < syms.size(); ++i) add_pair(int32_t(i) - 1, int32_t(i));
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end());
            const Pair top = heap.back();
            heap.pop_back();
            Symbol &L = syms[size_t(top.left)], &R = syms[size_t(top.right)];
            // Stale: one side was merged into something else since the pair was queued.
            if (L.len == 0 || R.len == 0 || L.len + R.len != top.len) continue;
            L.node = top.node;
            L.len += R.len;
            L.next = R.next;
            if (R.next >= 0) syms[size_t(R.next)].prev = top.left;
            R.len = 0;
            add_pair(L.prev, top.left);
            add_pair(top.left, L.next);
        }
        std::vector<std::string_view> stack;
        for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[size_t(i)].next) {
            const Symbol& s = syms[size_t(i)];
            const int32_t id = piece_to_id(t.substr(s.begin, s.len), s.node);
            if (m_.types[size_t(id)] != kUnused) {
                out.push_back({s.begin, s.len, id});
                continue;
            }
            // An UNUSED piece is not emitted: the pieces it was merged from are, recursively.
            stack.assign(1, t.substr(s.begin, s.len));
            while (!stack.empty()) {
                const std::string_view w = stack.back();
                stack.pop_back();
                const int32_t wid = piece_to_id(w, trie_.walk(0, w));
                const auto it = m_.types[size_t(wid)] == kUnused ? rev_merge.find(w) : rev_merge.end();
                if (it == rev_merge.end()) {
                    out.push_back({uint32_t(w.data() - text.data()), uint32_t(w.size()), wid});
                } else {
                    stack.push_back(it->second.second);
                    stack.push_back(it->second.first);
                }
            }
        }
    }

    // Unigram as libsentencepiece's unigram::Model::EncodeOptimized: the best path ending at
    // each character boundary, in its arithmetic (float scores, the candidate in double).
    void encode_unigram(const std::string& text, std::vector<Token>& out) const {
        struct Best {
            int32_t id = -1;
            float score = 0;
            int64_t starts_at = -1;
        };
        const size_t size = text.size();
        const float unk_score = min_score_ - 10.0f;
        std::vector<Best> best(size + 1);
        for (size_t start = 0; start < size;) {
            const float here = best[start].score;
            bool has_single = false;
            const size_t mblen = std::min(one_char_len(uint8_t(text[start])), size - start);
            int32_t node = 0;
            for (size_t key = start; key < size;) {
                node = trie_.child(node, uint8_t(text[key++]));
                if (node < 0) break;
                const int32_t id = trie_.id(node);
                if (id < 0 || m_.types[size_t(id)] == kUnused) continue;
                const size_t length = key - start;
                const double score = m_.types[size_t(id)] == kUserDefined ? double(float(length) * max_score_) - 0.1
                                                                          : double(m_.scores[size_t(id)]);
                const double candidate = score + double(here);
                Best& target = best[key];
                if (target.starts_at == -1 || candidate > double(target.score)) {
                    target = {id, float(candidate), int64_t(start)};
                }
                if (length == mblen) has_single = true;
            }
            if (!has_single) {
                Best& target = best[start + mblen];
                const float candidate = unk_score + here;
                if (target.starts_at == -1 || candidate > target.score) target = {unk_id_, candidate, int64_t(start)};
            }
            start += mblen;
        }
        const size_t first = out.size();
        for (size_t end = size; end > 0;) {
            const Best& b = best[end];
            if (b.starts_at < 0) throw std::logic_error("tokenizer.model: unigram path broken");
            out.push_back({uint32_t(b.starts_at), uint32_t(end - size_t(b.starts_at)), b.id});
            end = size_t(b.starts_at);
        }
        std::reverse(out.begin() + long(first), out.end());
    }

    ModelProto m_;
    PieceTrie trie_;
    CharsMap charsmap_;
    std::unordered_map<std::string, int32_t> reserved_;  // UNKNOWN, CONTROL and BYTE pieces
    std::vector<std::string> user_defined_;              // longest first
    int32_t byte_ids_[256];
    int32_t unk_id_ = -1;
    float min_score_ = 3.402823466e+38f, max_score_ = 1.175494351e-38f;  // FLT_MAX, FLT_MIN as libsentencepiece starts
    bool has_unused_ = false, word_by_word_ = false;
    std::string_view space_;
    bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

Tokenizer Tokenizer::from_sentencepiece(std::string_view bytes, std::string_view config) {
    return Tokenizer(std::make_unique<SentencePieceTokenizer>(bytes, config));
}

}  // namespace tqkv
