// tokenizer.json files for the tests and the fuzzer's seeds: byte-level BPE (GPT-2 style) over a
// 256-byte base vocabulary with given merges, and SentencePiece-style BPE with byte fallback.
#pragma once
#include <cstdio>
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

}  // namespace tqkv_test
