// tokenizer.json files for the tests and the fuzzer's seeds: byte-level BPE (GPT-2 style) over a
// 256-byte base vocabulary with given merges, and SentencePiece-style BPE with byte fallback; and
// tokenizer.model files (SentencePiece's ModelProto written here in the protobuf wire format).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace tqkv_test {

// Pre-tokenizer patterns: GPT-2 (ByteLevel use_regex) and Llama 3 (its Split).
inline const char* kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";


inline std::string json_escape(const std::string& s) {
    std::string o;
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += char(c);
        else if (c < 0x20) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
        } else o += char(c);
    }
    return o;
}

// GPT-2's byte -> character map, written out here independently of the library.
inline std::string byte_char(int b) {
    int n = 0, cp = -1;
    for (int x = 0; x < 256; ++x) {
        const bool keep = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
        const int c = keep ? x : 256 + n++;
        if (x == b) cp = c;
    }
    std::string s;
    if (cp < 0x80) s += char(cp);
    else s += char(0xc0 | (cp >> 6)), s += char(0x80 | (cp & 0x3f));
    return s;
}

// A byte-level BPE tokenizer.json: ids 0..255 are the bytes (id = byte value), then the merges'
// results in order, then <|endoftext|>.
struct Merge {
    std::string a, b;
};
inline std::string byte_level_json(const std::string& pre_tokenizer, const std::vector<Merge>& merges, bool pair_spelling) {
    std::string vocab, m;
    for (int b = 0; b < 256; ++b) vocab += (b ? ",\"" : "\"") + json_escape(byte_char(b)) + "\":" + std::to_string(b);
    int id = 256;
    for (const auto& x : merges) {
        vocab += ",\"" + json_escape(x.a + x.b) + "\":" + std::to_string(id++);
        if (!m.empty()) m += ",";
        if (pair_spelling) {
            m += "[\"" + json_escape(x.a) + "\",\"" + json_escape(x.b) + "\"]";
        } else {
            m += '"';  // a separate append: GCC 12 warns falsely (-Wrestrict) on "\"" + std::string&&
            m += json_escape(x.a + " " + x.b) + "\"";
        }
    }
    return R"({"version":"1.0","added_tokens":[{"id":)" + std::to_string(id) +
           R"(,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
      "normalizer":null,"pre_tokenizer":)" + pre_tokenizer + R"(,"post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
      "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
      "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,
      "fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{)" + vocab + "},\"merges\":[" + m + "]}}";
}

// ids: 256 Ġt, 257 he, 258 Ġthe, 259 12, 260 ĠĠ, 261 n', 262 't, 263 'S, then <|endoftext|> 264.
inline const std::vector<Merge> kMerges = {{"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"1", "2"},
                                    {"\xc4\xa0", "\xc4\xa0"}, {"n", "'"}, {"'", "t"}, {"'", "S"}};
inline const char* kGpt2Pre = R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";

// SentencePiece-style (Llama 2 / Mistral as transformers converts them): Prepend + Replace
// normalizer, byte fallback, Replace/ByteFallback/Fuse/Strip decoder, BOS by template.
inline std::string sentencepiece_json() {
    // 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, 259 ▁, 260 h, 261 i, 262 ▁h, 263 ▁hi, 264 !
    std::string vocab = R"("<unk>":0,"<s>":1,"</s>":2)";
    for (int b = 0; b < 256; ++b) {
        char t[16];
        std::snprintf(t, sizeof t, "<0x%02X>", b);
        vocab += ",\"" + std::string(t) + "\":" + std::to_string(3 + b);
    }
    vocab += R"(,"▁":259,"h":260,"i":261,"▁h":262,"▁hi":263,"!":264)";
    const std::string added =
        R"([{"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}])";
    return R"({"added_tokens":)" + added +
        R"(,"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},
        "pre_tokenizer":null,
        "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
          "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
        "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},
          {"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
        "model":{"type":"BPE","unk_token":"<unk>","fuse_unk":true,"byte_fallback":true,"vocab":{)" + vocab +
        R"(},"merges":["▁ h","▁h i"]}})";
}

// ---------------------------------------------------------------------------------------------
// tokenizer.model: protobuf fields (key = field number << 3 | wire type) of sentencepiece_model.proto.
inline std::string pb_varint(uint64_t v) {
    std::string o;
    do {
        o += char((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return o;
}
inline std::string pb_int(int field, uint64_t v) { return pb_varint(uint64_t(field) << 3) + pb_varint(v); }
inline std::string pb_bytes(int field, const std::string& b) { return pb_varint(uint64_t(field) << 3 | 2) + pb_varint(b.size()) + b; }
inline std::string pb_float(int field, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    std::string o = pb_varint(uint64_t(field) << 3 | 5);
    for (int i = 0; i < 4; ++i) o += char(u >> (8 * i));
    return o;
}
// ModelProto.pieces: piece (1), score (2), type (3: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE).
inline std::string pb_piece(const std::string& piece, float score, int type = 1) {
    std::string m = pb_bytes(1, piece) + pb_float(2, score);
    if (type != 1) m += pb_int(3, uint64_t(type));
    return pb_bytes(1, m);
}
// <unk>, <s>, </s> and (byte_fallback) the 256 <0xXX> pieces, ids 0..258.
inline std::string pb_special_pieces(bool bytes) {
    std::string o = pb_piece("<unk>", 0, 2) + pb_piece("<s>", 0, 3) + pb_piece("</s>", 0, 3);
    for (int b = 0; bytes && b < 256; ++b) {
        char t[16];
        std::snprintf(t, sizeof t, "<0x%02X>", b);
        o += pb_piece(t, 0, 6);
    }
    return o;
}
// trainer_spec: model_type (3), byte_fallback (35); normalizer_spec: name (1), add_dummy_prefix (3),
// remove_extra_whitespaces (4) (escape_whitespaces keeps its default, true).
inline std::string pb_specs(int model_type, bool byte_fallback, bool remove_extra_whitespaces) {
    const std::string trainer = pb_int(3, uint64_t(model_type)) + pb_int(35, byte_fallback);
    const std::string normalizer = pb_bytes(1, "identity") + pb_int(3, 1) + pb_int(4, remove_extra_whitespaces);
    return pb_bytes(2, trainer) + pb_bytes(3, normalizer);
}

// A BPE model as Llama 2's (identity normalizer, dummy prefix, extra whitespace kept, byte
// fallback): 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then by score (higher merges first)
// 259 ▁t, 260 he, 261 ▁the, 262 ▁▁, 263 ab, 264 ▁, 265 t, 266 h, 267 e, 268 a, 269 b,
// 270 <sep> (user-defined).
inline std::string spm_bpe_model() {
    std::string m = pb_special_pieces(true);
    const char* pieces[] = {"\xe2\x96\x81t", "he", "\xe2\x96\x81the", "\xe2\x96\x81\xe2\x96\x81", "ab", "\xe2\x96\x81", "t", "h", "e", "a", "b"};
    for (int i = 0; i < 11; ++i) m += pb_piece(pieces[i], -1.0f - float(i));
    m += pb_piece("<sep>", 0, 4);
    return m + pb_specs(2, true, false);
}

// normalizer_spec.precompiled_charsmap mapping "A" to "a", nothing else: a darts-clone double
// array (uint32 units: offset << 10, bit 8 = has a leaf, low byte = label; a leaf unit is bit 31 +
// its value) after its size in bytes, then the replacements. The root (unit 0, offset 1) leads by
// 'A' to unit 1 ^ 0x41 = 64, whose leaf is unit 64 ^ 1 = 65: value 0, the offset of "a\0".
// 256 units, as darts-clone always allocates: the root's child of any byte c is unit 1 ^ c, and
// libsentencepiece (the tests' oracle) reads it unchecked; with 66 units its look-up of bytes above
// 0x42 read past the array (random results, a crash in one CI run). Our reader checks the bounds.
inline std::string spm_charsmap_a() {
    std::vector<uint32_t> units(256, 0);
    units[0] = 1u << 10;
    units[64] = 1u << 10 | 1u << 8 | 0x41;
    units[65] = 1u << 31 | 0;
    std::string blob;
    auto u32 = [&](uint32_t v) {
        for (int i = 0; i < 4; ++i) blob += char(v >> (8 * i));
    };
    u32(uint32_t(units.size() * 4));
    for (uint32_t u : units) u32(u);
    return blob + std::string("a\0", 2);
}

// A unigram model without byte fallback, extra whitespace removed (the normalizer's default):
// 0 <unk>, 1 <s>, 2 </s>, 3 ▁ (-2.5), 4 a (-2), 5 b (-1), 6 ▁a (-1.5), 7 ▁ab (-3), 8 c (-1),
// 9 bc (-2).
inline std::string spm_unigram_model() {
    std::string m = pb_special_pieces(false);
    m += pb_piece("\xe2\x96\x81", -2.5f) + pb_piece("a", -2.0f) + pb_piece("b", -1.0f) + pb_piece("\xe2\x96\x81" "a", -1.5f) +
         pb_piece("\xe2\x96\x81" "ab", -3.0f) + pb_piece("c", -1.0f) + pb_piece("bc", -2.0f);
    return m + pb_specs(1, false, true);
}

}  // namespace tqkv_test
