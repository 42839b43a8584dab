// Tokenizers: the Unicode tables against Debian's unicode-data, the pre-tokenizer regexes, small
// tokenizer.json files (byte-level BPE in GPT-2 / Llama 3 / SmolLM style, SentencePiece-style BPE
// with byte fallback) against ids derived by hand, round trips, and the real tq-bpe-64 tokenizer
// against the ids Hugging Face tokenizers produced (kv/tokens.npy); tokenizer.model files (our
// protobuf reader, lib/src/model/sentencepiece.cpp): handmade models with ids derived by hand, and
// models libsentencepiece trains here, whose ids and text ours must equal (when it is installed).
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "model/regex.hpp"
#include "model/unicode.hpp"
#include "tokenizer_json.hpp"
#include "tqkv/model.hpp"
#include "tqkv/tokenizer.hpp"

using namespace tqkv;
using detail::PretokenRegex;
using namespace tqkv_test;

namespace {

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> pieces(const std::string& pattern, const std::string& text) {
    const auto re = PretokenRegex::compile(pattern);
    std::vector<uint32_t> cps;
    std::vector<size_t> at;
    for (size_t i = 0; i < text.size();) {
        size_t len;
        cps.push_back(detail::decode_utf8(text.data() + i, text.size() - i, len));
        at.push_back(i);
        i += len;
    }
    at.push_back(text.size());
    std::vector<std::string> out;
    size_t pos = 0, b, e, last = 0;
    while (re.find(cps.data(), cps.size(), pos, b, e)) {
        if (at[b] > last) out.push_back("<gap:" + text.substr(last, at[b] - last) + ">");
        out.push_back(text.substr(at[b], at[e] - at[b]));
        pos = e, last = at[e];
    }
    if (last < text.size()) out.push_back("<gap:" + text.substr(last) + ">");
    return out;
}

std::vector<int32_t> ids(std::initializer_list<int32_t> l) { return l; }

}  // namespace

// [heavy]: a table check over all 1.1 M code points; natively once (0.5 s), not again under qemu.
TEST_CASE("tokenizer: Unicode tables equal Debian's unicode-data", "[tokenizer][heavy]") {
    const std::string dir = "/usr/share/unicode";
    if (!std::filesystem::exists(dir + "/UnicodeData.txt")) {
        WARN("skipped: " << dir << "/UnicodeData.txt absent (apt-get install unicode-data)");
        return;
    }
    static const char* names[] = {"Cn", "Cc", "Cf", "Co", "Cs", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl",
                                  "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp"};
    std::vector<std::string> want(0x110000, "Cn");
    std::istringstream in(read_text(dir + "/UnicodeData.txt"));
    std::string line;
    uint32_t first = 0;
    while (std::getline(in, line)) {
        std::vector<std::string> f;
        std::stringstream ls(line);
        for (std::string x; std::getline(ls, x, ';');) f.push_back(x);
        const uint32_t cp = uint32_t(std::stoul(f[0], nullptr, 16));
        if (f[1].find(", First>") != std::string::npos) first = cp;
        else if (f[1].find(", Last>") != std::string::npos)
            for (uint32_t c = first; c <= cp; ++c) want[c] = f[2];
        else want[cp] = f[2];
    }
    size_t bad = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) bad += want[cp] != names[int(detail::general_category(cp))];
    CHECK(bad == 0);
    // White_Space (PropList.txt) and the NFC quick check (DerivedNormalizationProps.txt).
    auto ranges = [&](const std::string& file, const std::string& prop) {
        std::vector<bool> in_prop(0x110000, false);
        std::istringstream s(read_text(dir + "/" + file));
        while (std::getline(s, line)) {
            if (line.empty() || line[0] == '#') continue;
            const auto semi = line.find(';');
            if (semi == std::string::npos) continue;
            std::string name = line.substr(semi + 1, line.find_first_of(";#", semi + 1) - semi - 1);
            name.erase(0, name.find_first_not_of(' '));
            name.erase(name.find_last_not_of(' ') + 1);
            if (name != prop) continue;  // exactly (not Pattern_White_Space)
            std::string r = line.substr(0, semi);
            r.erase(r.find_last_not_of(' ') + 1);
            const auto dots = r.find("..");
            const uint32_t lo = uint32_t(std::stoul(r.substr(0, dots), nullptr, 16));
            const uint32_t hi = dots == std::string::npos ? lo : uint32_t(std::stoul(r.substr(dots + 2), nullptr, 16));
            for (uint32_t c = lo; c <= hi; ++c) in_prop[c] = true;
        }
        return in_prop;
    };
    const auto ws = ranges("PropList.txt", "White_Space");
    const auto nfc = ranges("DerivedNormalizationProps.txt", "NFC_QC");
    size_t bad_ws = 0, bad_nfc = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
        bad_ws += ws[cp] != detail::is_white_space(cp);
        bad_nfc += nfc[cp] == detail::nfc_quick_check_yes(cp);
    }
    CHECK(bad_ws == 0);
    CHECK(bad_nfc == 0);
}

TEST_CASE("tokenizer: UTF-8 decoding keeps every byte, invalid ones as units of their own", "[tokenizer]") {
    const std::string s = "a\xc3\xa9\xe6\x97\xa5\xf0\x9f\x99\x82\xff\xc3(\xed\xa0\x80";
    std::vector<uint32_t> cps;
    std::string back;
    for (size_t i = 0; i < s.size();) {
        size_t len;
        cps.push_back(detail::decode_utf8(s.data() + i, s.size() - i, len));
        detail::append_utf8(back, cps.back());
        i += len;
    }
    CHECK(back == s);
    CHECK(cps[0] == 'a');
    CHECK(cps[1] == 0xe9);
    CHECK(cps[2] == 0x65e5);
    CHECK(cps[3] == 0x1f642);
    CHECK(cps[4] == detail::kInvalidByteBase + 0xff);
    CHECK(cps[5] == detail::kInvalidByteBase + 0xc3);  // truncated sequence
    CHECK(cps[6] == '(');
    CHECK(cps[7] == detail::kInvalidByteBase + 0xed);  // a surrogate is not UTF-8
}

TEST_CASE("tokenizer: pre-tokenizer regexes split as Oniguruma does", "[tokenizer]") {
    using V = std::vector<std::string>;
    // GPT-2: contractions, optional leading space, whitespace runs keep their last space for the next word.
    CHECK(pieces(kGpt2, "Hello world's  123 !!\n\n  x") ==
          V{"Hello", " world", "'s", " ", " 123", " !!", "\n\n ", " x"});
    CHECK(pieces(kGpt2, "a    b") == V{"a", "   ", " b"});
    CHECK(pieces(kGpt2, "\n\n x") == V{"\n\n", " x"});
    CHECK(pieces(kGpt2, "end  ") == V{"end", "  "});
    CHECK(pieces(kGpt2, "don't") == V{"don", "'t"});
    CHECK(pieces(kGpt2, "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac") == V{"h\xc3\xa9llo", " \xe6\x97\xa5\xe6\x9c\xac"});
    CHECK(pieces(kGpt2, "x\xc2\xb2\xe2\x85\xa7") == V{"x", "\xc2\xb2\xe2\x85\xa7"});  // ² (No) and Ⅷ (Nl) are \p{N}
    // Llama 3: digits in threes, case-insensitive contractions, punctuation keeps its newlines.
    CHECK(pieces(kLlama3, "12345 IT'S ok?!\n\nyes") == V{"123", "45", " IT", "'S", " ok", "?!\n\n", "yes"});
    CHECK(pieces(kLlama3, "  \n  x") == V{"  \n", " ", " x"});
    CHECK(pieces(kLlama3, "I'LL") == V{"I", "'LL"});
    // Character classes with ranges and escapes, counted repetition, lookahead.
    CHECK(pieces(R"([a-c\d]{2,3}|x(?=y)|\.)", "abcd12.xyxz") == V{"abc", "<gap:d>", "12", ".", "x", "<gap:yxz>"});
    CHECK(pieces(R"(\u0041+|[^\x00-\x7f]+)", "AAb\xc3\xa9\xc3\xa9") == V{"AA", "<gap:b>", "\xc3\xa9\xc3\xa9"});
    // What is not implemented is refused, not guessed.
    for (const char* bad : {"(?<=a)b", "a*?", "a++", "(a)\\1", "^a", "a$", "a*", "(?:a|)", "\\p{Greek}", "[[:alpha:]]",
                            "(?P<x>a)", "a{2,1}", "(a", "a)", "[a", "\\", "x{1001}", "\\bx"}) {
        INFO(bad);
        CHECK_THROWS_WITH(PretokenRegex::compile(bad), Catch::Contains("unsupported regex"));
    }
    // A pathological pattern on a long text ends with an error instead of running for ever.
    const auto re = PretokenRegex::compile("(?:a|aa|aaa)+b|c");
    std::vector<uint32_t> text(3000, 'a');
    size_t b, e;
    CHECK_THROWS_WITH(re.find(text.data(), text.size(), 0, b, e), Catch::Contains("backtracking limit"));
}

TEST_CASE("tokenizer: byte-level BPE (GPT-2 style) gives the ids derived by hand", "[tokenizer]") {
    for (bool pair_spelling : {false, true}) {
        INFO("merges as " << (pair_spelling ? "[a, b] pairs" : "\"a b\" strings"));
        const Tokenizer tok = Tokenizer::from_json(byte_level_json(kGpt2Pre, kMerges, pair_spelling));
        CHECK(tok.kind() == "byte-level bpe");
        CHECK(tok.vocab_size() == 265);
        // " the": Ġ t h e -> (Ġ,t) rank 0 -> (h,e) rank 1 -> (Ġt,he) rank 2.
        CHECK(tok.encode(" the") == ids({258}));
        CHECK(tok.encode("the the") == ids({116, 257, 258}));
        CHECK(tok.encode("12 12345") == ids({259, 32, 259, 51, 52, 53}));
        // Four spaces before a word: "   " | " b" (the last space goes with the word); ĠĠĠ merges leftmost.
        CHECK(tok.encode("a    b") == ids({97, 260, 32, 32, 98}));
        CHECK(tok.encode("\n\n x") == ids({10, 10, 32, 120}));
        // "don't" splits as don | 't before merging, so (n,') never applies.
        CHECK(tok.encode("don't") == ids({100, 111, 110, 262}));
        // Special tokens in the text; UTF-8 as its bytes.
        CHECK(tok.encode("a<|endoftext|>b") == ids({97, 264, 98}));
        CHECK(tok.encode("h\xc3\xa9") == ids({104, 195, 169}));
        CHECK(tok.token_id("<|endoftext|>") == 264);
        CHECK(tok.encode("") .empty());
    }
}

TEST_CASE("tokenizer: Llama 3 and SmolLM pre-tokenizer pipelines", "[tokenizer]") {
    // Llama 3: Split(regex, Isolated) then ByteLevel without its own regex.
    const std::string llama3 = std::string(R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":")") +
                               json_escape(kLlama3) +
                               R"("},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})";
    const Tokenizer t3 = Tokenizer::from_json(byte_level_json(llama3, kMerges, true));
    CHECK(t3.encode("12345") == ids({259, 51, 52, 53}));         // 123 | 45
    CHECK(t3.encode("IT'S") == ids({73, 84, 263}));              // IT | 'S
    CHECK(t3.encode(" the") == ids({258}));
    // SmolLM: Digits(individual) then ByteLevel with the GPT-2 regex: no digit merges possible.
    const std::string smol = R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)"
                             R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]})";
    const Tokenizer ts = Tokenizer::from_json(byte_level_json(smol, kMerges, false));
    CHECK(ts.encode("12 12345") == ids({49, 50, 32, 49, 50, 51, 52, 53}));
    // add_prefix_space: a space before the first word.
    const Tokenizer tp = Tokenizer::from_json(
        byte_level_json(R"({"type":"ByteLevel","add_prefix_space":true,"use_regex":true})", kMerges, false));
    CHECK(tp.encode("the") == ids({258}));
}

TEST_CASE("tokenizer: byte-level round trips are exact on any text", "[tokenizer]") {
    const Tokenizer tok = Tokenizer::from_json(byte_level_json(kGpt2Pre, kMerges, false));
    for (const std::string& s :
         {std::string("The quick brown fox"), std::string("h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82"),
          std::string("a   b\t\t\n\n c  \r\n"), std::string("   leading and trailing   "), std::string("0123456789 3.14159 1e-9"),
          std::string("<|endoftext|><|endoftext|>x<|endoftext"), std::string("invalid \xff\xfe utf-8 \xc3"),
          std::string(1, '\0') + "nul", std::string(5000, ' ') + "x"}) {
        INFO(s.substr(0, 60));
        CHECK(tok.decode(tok.encode(s)) == s);
    }
    CHECK_THROWS_WITH(tok.decode({0, 265}), Catch::Contains("outside the vocabulary"));
    CHECK_THROWS_WITH(tok.decode({-1}), Catch::Contains("outside the vocabulary"));
}

TEST_CASE("tokenizer: end-of-sequence ids of a model: the config's and the tokenizer's, once; none for bytes", "[tokenizer]") {
    const Tokenizer tok = Tokenizer::from_json(sentencepiece_json(), R"({"eos_token": {"content": "</s>"}})");
    REQUIRE(tok.eos_id() == 2);
    LlamaConfig c;
    c.vocab_size = int(tok.vocab_size());
    c.eos_token_ids = {7};
    CHECK(end_of_sequence_ids(c, tok) == ids({7, 2}));
    c.eos_token_ids = {7, c.vocab_size, -1};  // ids the model can never produce are dropped
    CHECK(end_of_sequence_ids(c, tok) == ids({7, 2}));
    c.eos_token_ids = {2, 7, 7};
    CHECK(end_of_sequence_ids(c, tok) == ids({2, 7}));
    c.eos_token_ids.clear();
    CHECK(end_of_sequence_ids(c, tok) == ids({2}));
    c.eos_token_ids = {7};
    CHECK(end_of_sequence_ids(c, Tokenizer::bytes()).empty());  // every byte is text
}

TEST_CASE("tokenizer: SentencePiece-style BPE with byte fallback (Llama 2 / Mistral tokenizer.json)", "[tokenizer]") {
    const std::string json = sentencepiece_json();
    const Tokenizer tok = Tokenizer::from_json(json);
    CHECK(tok.kind() == "bpe");
    // "hi hi!" -> "▁hi▁hi!" -> (▁,h) twice, leftmost first, then (▁h,i) twice.
    CHECK(tok.encode("hi hi!") == ids({263, 263, 264}));
    CHECK(tok.encode("hi hi!", true) == ids({1, 263, 263, 264}));
    CHECK(tok.bos_id() == 1);  // no tokenizer_config.json: the template's BOS
    // é is not in the vocabulary: its UTF-8 bytes C3 A9 as byte tokens; x likewise.
    CHECK(tok.encode("h\xc3\xa9x") == ids({262, 3 + 0xc3, 3 + 0xa9, 3 + 'x'}));
    for (const std::string s : {"hi hi!", "h\xc3\xa9x", "  two  spaces ", "\xe6\x97\xa5\xe6\x9c\xac hi"}) {
        INFO(s);
        CHECK(tok.decode(tok.encode(s)) == s);
    }
    // tokenizer_config.json decides BOS/EOS when it says.
    const Tokenizer cfg = Tokenizer::from_json(json, R"({"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>",
        "eos_token": {"content": "</s>"}})");
    CHECK(cfg.encode("hi", true) == ids({263, 2}));
    CHECK(cfg.bos_id() == 1);
    CHECK(cfg.eos_id() == 2);
    // Streaming decode holds back a character split over byte tokens.
    TokenStream stream(tok);
    std::string streamed;
    const auto e = tok.encode("hi \xe6\x97\xa5!");
    for (size_t i = 0; i < e.size(); ++i) {
        const std::string part = stream.push(e[i]);
        if (!part.empty()) CHECK((static_cast<unsigned char>(part.back()) < 0x80 || part.size() >= 3));
        streamed += part;
    }
    CHECK(streamed == "hi \xe6\x97\xa5!");
}

TEST_CASE("tokenizer: TokenStream with tokenizer.model: no U+FFFD for a character split over byte pieces, the first word keeps its space", "[tokenizer]") {
    const Tokenizer tok = Tokenizer::from_sentencepiece(spm_bpe_model());
    // After "the cab" (BOS, ▁the, ▁, <0x63>, ab): ▁, the bytes of 日 (E6 97 A5: U+FFFD each until the
    // last one comes), ab.
    TokenStream stream(tok);
    for (int32_t id : {1, 261, 264, 3 + 'c', 263}) stream.push(id);
    std::vector<std::string> pieces;
    for (int32_t id : {264, 3 + 0xe6, 3 + 0x97, 3 + 0xa5, 263}) pieces.push_back(stream.push(id));
    CHECK(pieces == std::vector<std::string>{" ", "", "", "\xe6\x97\xa5", "ab"});
    CHECK(stream.flush().empty());
    // An unfinished character at the end: U+FFFD only when flushed.
    TokenStream cut(tok);
    CHECK(cut.push(3 + 0xe6).empty());
    CHECK(cut.flush() == "\xef\xbf\xbd");
    // ▁the alone decodes to "the" (the dummy prefix's space dropped); after a prompt to " the".
    TokenStream first(tok);
    CHECK(first.push(261) == "the");
    TokenStream after(tok);
    for (int32_t id : {1, 263}) after.push(id);
    CHECK(after.push(261) == " the");
}

// The text of a stream: its pushes and flush joined (the pieces of the pushes in *pieces).
static std::string streamed(const Tokenizer& tok, const std::vector<int32_t>& context, const std::vector<int32_t>& ids,
                     std::vector<std::string>* pieces = nullptr) {
    TokenStream stream(tok, context);
    std::string out;
    for (int32_t id : ids) {
        const std::string p = stream.push(id);
        if (pieces) pieces->push_back(p);
        out += p;
    }
    return out + stream.flush();
}

TEST_CASE("tokenizer: TokenStream over a long generation gives decode(context + ids) without the context's text", "[tokenizer]") {
    std::vector<std::pair<std::string, Tokenizer>> toks;
    toks.emplace_back("bytes", Tokenizer::bytes());
    toks.emplace_back("byte-level tokenizer.json", Tokenizer::from_json(byte_level_json(kGpt2Pre, kMerges, false)));
    toks.emplace_back("byte-fallback tokenizer.json", Tokenizer::from_json(sentencepiece_json()));
    toks.emplace_back("tokenizer.model BPE", Tokenizer::from_sentencepiece(spm_bpe_model()));
    toks.emplace_back("tokenizer.model unigram", Tokenizer::from_sentencepiece(spm_unigram_model()));
    const std::string bpe64 = TQKV_SHARED_DATA "/tq-bpe-64";
    if (std::filesystem::exists(bpe64 + "/tokenizer.json")) toks.emplace_back("tq-bpe-64", Tokenizer::load(bpe64));
    else WARN("skipped tq-bpe-64: no " << bpe64 << "/tokenizer.json");
    // Text with characters of 2, 3 and 4 bytes, which byte-level and byte-fallback ids split.
    std::string text;
    for (int i = 0; i < 40; ++i) text += "the cab h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac\xf0\x9f\x99\x82 hi  hi! ";
    auto joined = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    for (auto& [name, tok] : toks) {
        INFO(name);
        // A valid text: together the pieces are it, none has U+FFFD or ends inside a character.
        const std::vector<int32_t> context = tok.encode("the ab", true), ids = tok.encode(text);
        const std::string before = tok.decode(context), whole = tok.decode(joined(context, ids));
        REQUIRE(whole.compare(0, before.size(), before) == 0);
        std::vector<std::string> pieces;
        const std::string got = streamed(tok, context, ids, &pieces);
        CHECK(got == whole.substr(before.size()));
        CHECK(got.size() > text.size() / 2);
        size_t at = 0, with_replacement = 0, inside_character = 0;
        for (const std::string& p : pieces) {
            at += p.size();
            with_replacement += p.find("\xef\xbf\xbd") != std::string::npos;
            inside_character += at < got.size() && (static_cast<unsigned char>(got[at]) & 0xc0) == 0x80;
        }
        CHECK(with_replacement == 0);
        CHECK(inside_character == 0);
        // Random ids (invalid UTF-8, control and special tokens, characters split anyhow) after the
        // context and after none: the same text as decoding everything at once.
        uint64_t state = 0x9e3779b97f4a7c15ull;
        auto next = [&] {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            return uint32_t(state >> 33);
        };
        std::vector<int32_t> random(3000);
        for (auto& id : random) {
            // Half the ids among the first 300 (bytes, byte pieces, special tokens), half anywhere.
            const uint32_t r = next();
            id = int32_t((r & 1) ? (r >> 1) % std::min<size_t>(300, tok.vocab_size()) : (r >> 1) % tok.vocab_size());
        }
        CHECK(streamed(tok, context, random) == tok.decode(joined(context, random)).substr(before.size()));
        CHECK(streamed(tok, {}, random) == tok.decode(random));
    }
}

TEST_CASE("tokenizer: Metaspace pre-tokenizer (older SentencePiece conversions)", "[tokenizer]") {
    const std::string json = R"({"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},
        "decoder":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},
        "model":{"type":"BPE","unk_token":"<unk>","vocab":{"<unk>":0,"▁":1,"a":2,"b":3,"▁a":4,"▁b":5},"merges":[["▁","a"],["▁","b"]]}})";
    const Tokenizer tok = Tokenizer::from_json(json);
    CHECK(tok.encode("a b ba") == ids({4, 5, 5, 2}));  // ▁a | ▁b | ▁b a
    CHECK(tok.decode(tok.encode("a b ba")) == "a b ba");
    CHECK(tok.encode("c") == ids({1, 0}));  // ▁c: c is not in the vocabulary and there is no byte fallback: <unk>
}

TEST_CASE("tokenizer: what is not implemented is refused by name", "[tokenizer]") {
    const std::string good = byte_level_json(kGpt2Pre, kMerges, false);
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto p = s.find(from);
        REQUIRE(p != std::string::npos);
        return s.replace(p, from.size(), to);
    };
    auto refused = [](const std::string& j, const std::string& what) {
        INFO(what);
        CHECK_THROWS_WITH(Tokenizer::from_json(j), Catch::Contains(what));
    };
    refused(with("\"type\":\"BPE\"", "\"type\":\"WordPiece\""), "unsupported: model.type \"WordPiece\"");
    refused(with("\"type\":\"BPE\"", "\"type\":\"Unigram\""), "unsupported: model.type \"Unigram\"");
    refused(with("\"normalizer\":null", "\"normalizer\":{\"type\":\"NFKC\"}"), "unsupported: normalizer.type \"NFKC\"");
    refused(with("\"normalizer\":null", "\"normalizer\":{\"type\":\"Lowercase\"}"), "unsupported: normalizer.type \"Lowercase\"");
    refused(with(kGpt2Pre, R"({"type":"BertPreTokenizer"})"), "unsupported: pre_tokenizer.type \"BertPreTokenizer\"");
    refused(with(kGpt2Pre, R"({"type":"Split","pattern":{"Regex":"(?<=a)b"},"behavior":"Isolated","invert":false})"),
            "unsupported: pre_tokenizer.pattern");
    refused(with(kGpt2Pre, R"({"type":"Split","pattern":{"Regex":"a"},"behavior":"Isolated","invert":true})"),
            "unsupported: pre_tokenizer.invert");
    refused(with("\"continuing_subword_prefix\":null", "\"continuing_subword_prefix\":\"##\""),
            "unsupported: model.continuing_subword_prefix");
    refused(with("\"dropout\":null", "\"dropout\":0.1"), "unsupported: model.dropout");
    refused(with("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":false",
                 "{\"type\":\"RobertaProcessing\",\"add_prefix_space\":true,\"trim_offsets\":false"),
            "unsupported: post_processor.type \"RobertaProcessing\"");
    refused(with("\"merges\":[\"", "\"merges\":[\"zz q\",\""), "names a token not in the vocabulary");
    refused(with("\"merges\":[\"", "\"merges\":[7,\""), "must be \"left right\"");
    refused("[]", "not a JSON object");
    refused("{\"model\":", "invalid JSON");
    // NFC: text already in NFC passes; other text is normalized first (e + U+0301 -> U+00E9).
    const Tokenizer nfc = Tokenizer::from_json(with("\"normalizer\":null", "\"normalizer\":{\"type\":\"NFC\"}"));
    CHECK(nfc.encode("h\xc3\xa9") == ids({104, 195, 169}));
    CHECK(nfc.encode("he\xcc\x81") == ids({104, 195, 169}));
}

namespace {
std::string utf8_of(std::initializer_list<uint32_t> cps) {
    std::string s;
    for (uint32_t c : cps) detail::append_utf8(s, c);
    return s;
}
}  // namespace

TEST_CASE("tokenizer: NFC composes, reorders and decomposes as UAX #15 derives by hand", "[tokenizer]") {
    using detail::nfc;
    auto same = [](std::initializer_list<uint32_t> in, std::initializer_list<uint32_t> want) {
        INFO("input " << utf8_of(in));
        CHECK(nfc(utf8_of(in)) == utf8_of(want));
        CHECK(nfc(utf8_of(want)) == utf8_of(want));  // NFC is idempotent
    };
    same({0x65, 0x301}, {0xE9});                              // e + acute -> é
    same({0x212B}, {0xC5});                                   // ANGSTROM SIGN: singleton -> Å
    same({0x41, 0x30A, 0x301}, {0x1FA});                      // A + ring + acute -> Å + acute -> Ǻ
    same({0x61, 0x301, 0x323}, {0x1EA1, 0x301});              // marks reordered (dot below 220 before acute 230), dot composes
    same({0x61, 0x323, 0x301}, {0x1EA1, 0x301});
    same({0x61, 0x302, 0x302}, {0xE2, 0x302});                // â and a second circumflex have no composite
    same({0x915, 0x93C}, {0x915, 0x93C});                     // U+0958 is a composition exclusion: stays decomposed
    same({0x958}, {0x915, 0x93C});
    same({0x1100, 0x1161}, {0xAC00});                         // Hangul L + V -> LV
    same({0x1100, 0x1161, 0x11A8}, {0xAC01});                 // L + V + T -> LVT
    same({0xAC00, 0x11A8}, {0xAC01});                         // LV + T
    same({0xAC01, 0x11A8}, {0xAC01, 0x11A8});                 // LVT + T: no composition
    same({0x1E0A, 0x323}, {0x1E0C, 0x307});                   // Ḋ + dot below -> Ḍ + dot above (decomposed, reordered, recomposed)
    same({0x65, 0x5B0, 0x301}, {0xE9, 0x5B0});                // a mark of lower class (10) in between does not block
    same({0x65, 0x334, 0x301}, {0xE9, 0x334});                // class 1 (overlay) before 230: not blocking either
    same({0x301, 0x65}, {0x301, 0x65});                       // a leading mark: nothing to compose with
    same({0x1D15E}, {0x1D157, 0x1D165});                      // musical symbol: excluded composite
    same({0xB47, 0xB3E}, {0xB4B});                            // two starters compose (Oriya vowel sign O)
    // Invalid bytes pass through, composing with nothing; ASCII is untouched.
    CHECK(nfc(std::string("e\xff\xcc\x81")) == std::string("e\xff\xcc\x81"));
    CHECK(nfc("plain ASCII text") == "plain ASCII text");
    CHECK(nfc("") == "");
    // The quick check also needs canonical order: two marks of quick-check Yes in the wrong order.
    CHECK_FALSE(detail::is_nfc_quick(utf8_of({0x5D0, 0x5B8, 0x5B0})));  // classes 18, 10
    CHECK(nfc(utf8_of({0x5D0, 0x5B8, 0x5B0})) == utf8_of({0x5D0, 0x5B0, 0x5B8}));
}

TEST_CASE("tokenizer: NFC equals Unicode's NormalizationTest.txt", "[tokenizer][heavy]") {
    // Debian's unicode-data ships the file compressed; bzcat reads it (both in scripts/setup.sh).
    const std::string file = "/usr/share/unicode/NormalizationTest.txt.bz2";
    if (!std::filesystem::exists(file)) {
        WARN("skipped: " << file << " absent (apt-get install unicode-data)");
        return;
    }
    FILE* p = popen(("bzcat " + file + " 2>/dev/null").c_str(), "r");
    if (!p) {  // (no processes, e.g. under WASI)
        WARN("skipped: cannot run bzcat");
        return;
    }
    std::string text;
    char buf[65536];
    for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
    const int rc = pclose(p);
    if (rc != 0 || text.empty()) {
        WARN("skipped: bzcat could not read " << file << " (apt-get install bzip2)");
        return;
    }
    auto field = [](const std::string& f) {  // "0044 0307" -> UTF-8
        std::string s;
        std::istringstream in(f);
        std::string hex;
        while (in >> hex) detail::append_utf8(s, uint32_t(std::stoul(hex, nullptr, 16)));
        return s;
    };
    std::istringstream lines(text);
    std::string line;
    size_t cases = 0, bad = 0;
    bool part1 = false;
    std::vector<char> in_part1(0x110000, 0);
    while (std::getline(lines, line)) {
        if (line.rfind("@Part", 0) == 0) {
            part1 = line.rfind("@Part1", 0) == 0;
            continue;
        }
        if (line.empty() || line[0] == '#') continue;
        std::vector<std::string> c;
        std::istringstream fields(line);
        for (std::string f; c.size() < 5 && std::getline(fields, f, ';');) c.push_back(field(f));
        REQUIRE(c.size() == 5);
        if (part1) in_part1[std::stoul(line.substr(0, line.find(';')), nullptr, 16)] = 1;
        // c2 == NFC(c1) == NFC(c2) == NFC(c3), c4 == NFC(c4) == NFC(c5)
        const bool ok = detail::nfc(c[0]) == c[1] && detail::nfc(c[1]) == c[1] && detail::nfc(c[2]) == c[1] &&
                        detail::nfc(c[3]) == c[3] && detail::nfc(c[4]) == c[3];
        if (!ok && bad++ < 5) WARN("NFC differs on line: " << line);
        ++cases;
    }
    // Every code point not listed in part 1 is its own NFC.
    size_t unlisted_bad = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
        if (in_part1[cp] || (cp >= 0xD800 && cp < 0xE000)) continue;
        std::string s;
        detail::append_utf8(s, cp);
        if (detail::nfc(s) != s && unlisted_bad++ < 5) WARN("NFC changes U+" << std::hex << cp);
    }
    INFO(cases << " lines");
    CHECK(cases > 15000);
    CHECK(bad == 0);
    CHECK(unlisted_bad == 0);
}

TEST_CASE("tokenizer: tq-bpe-64 gives the ids of Hugging Face tokenizers (kv/tokens.npy)", "[tokenizer]") {
    const std::string dir = TQKV_SHARED_DATA "/tq-bpe-64";
    if (!std::filesystem::exists(dir + "/tokenizer.json") || !std::filesystem::exists(dir + "/kv/tokens.npy")) {
        WARN("skipped: no " << dir << "/tokenizer.json + kv/tokens.npy");
        return;
    }
    const Tokenizer tok = Tokenizer::load(dir);
    CHECK(tok.kind() == "byte-level bpe");
    CHECK(tok.vocab_size() == 8192);
    CHECK(tok.eos_id() == 0);  // tokenizer_config.json: <|endoftext|>
    CHECK(tok.bos_id() == -1);
    // kv/tokens.npy holds tokens 2048..3071 of eval.txt; its first 20000 bytes cover them (BPE
    // pieces never cross a word, so the cut changes only the last ids).
    const std::string eval = read_text(dir + "/eval.txt");
    const auto npy = read_text(dir + "/kv/tokens.npy");
    const size_t hl = size_t(uint8_t(npy[8])) | size_t(uint8_t(npy[9])) << 8;
    std::vector<int32_t> want((npy.size() - 10 - hl) / 4);
    std::memcpy(want.data(), npy.data() + 10 + hl, want.size() * 4);
    REQUIRE(want.size() == 1024);
    const auto got = tok.encode(eval.substr(0, 20000));
    REQUIRE(got.size() > 3072 + 100);
    CHECK(std::vector<int32_t>(got.begin() + 2048, got.begin() + 3072) == want);
    CHECK(tok.decode(got) == eval.substr(0, 20000));
}

// tokenizer.model: our reader (lib/src/model/sentencepiece.cpp) on models written here byte by
// byte (tokenizer_json.hpp), ids derived by hand.
TEST_CASE("tokenizer: tokenizer.model BPE (Llama 2 style) gives the ids derived by hand", "[tokenizer]") {
    const Tokenizer tok = Tokenizer::from_sentencepiece(spm_bpe_model());
    CHECK(tok.kind() == "sentencepiece");
    CHECK(tok.vocab_size() == 271);
    CHECK(tok.bos_id() == 1);
    CHECK(tok.eos_id() == 2);
    // "▁the▁cab": ▁t (-1) first, then he (-2), then ▁t+he = ▁the (-3), ab (-5); c is not a piece:
    // its byte <0x63> (byte fallback).
    CHECK(tok.encode("the cab") == ids({261, 264, 3 + 'c', 263}));
    CHECK(tok.encode("the cab", true) == ids({1, 261, 264, 3 + 'c', 263}));  // BOS as Llama adds it
    // Whitespace runs are kept (remove_extra_whitespaces false): "▁a▁▁b"; "▁▁▁": two equal pairs,
    // the leftmost merges first.
    CHECK(tok.encode("a  b") == ids({264, 268, 262, 269}));
    CHECK(tok.encode("  ") == ids({262, 264}));
    // é: its UTF-8 bytes; a user-defined symbol is one piece, never merged.
    CHECK(tok.encode("h\xc3\xa9") == ids({264, 266, 3 + 0xc3, 3 + 0xa9}));
    CHECK(tok.encode("ab<sep>ab") == ids({264, 263, 270, 263}));
    // Invalid UTF-8: each such byte is U+FFFD (as libsentencepiece), here as its three bytes.
    CHECK(tok.encode("\xff") == ids({264, 3 + 0xef, 3 + 0xbf, 3 + 0xbd}));
    CHECK(tok.encode("").empty());
    CHECK(tok.token_id("\xe2\x96\x81the") == 261);
    CHECK(tok.token_id("<s>") == 1);
    CHECK(tok.token_id("<0x41>") == 3 + 0x41);
    CHECK(tok.token_id("nope") == -1);
    // Decoding: the dummy prefix's space is dropped, controls are invisible, bytes form UTF-8 and
    // a byte that does not is U+FFFD.
    CHECK(tok.decode({1, 261, 264, 3 + 'c', 263, 2}) == "the cab");
    CHECK(tok.decode({3 + 0xc3, 3 + 0xa9, 3 + 0xc3}) == "\xc3\xa9\xef\xbf\xbd");
    CHECK(tok.decode({0}) == " \xe2\x81\x87 ");  // <unk>
    for (const std::string s : {"the cab", "  two  spaces ", "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82 12345",
                                "tab\there\nnew line", "ab<sep>"}) {
        INFO(s);
        CHECK(tok.decode(tok.encode(s)) == s);
    }
    CHECK_THROWS_WITH(tok.decode({271}), Catch::Contains("outside the vocabulary"));
    // A character map (tokenizer_json.hpp: "A" -> "a"): "Ab A" -> "▁ab▁a".
    const Tokenizer mapped = Tokenizer::from_sentencepiece(spm_bpe_model() + pb_bytes(3, pb_bytes(2, spm_charsmap_a())));
    CHECK(mapped.encode("Ab A") == ids({264, 263, 264, 268}));
    CHECK(tok.encode("Ab") == ids({264, 3 + 'A', 269}));  // without it: A is not a piece
    // Without the dummy prefix (a normalizer_spec appended: protobuf merges it): "the▁cab".
    const Tokenizer plain = Tokenizer::from_sentencepiece(spm_bpe_model() + pb_bytes(3, pb_int(3, 0)));
    CHECK(plain.encode("the cab") == ids({265, 260, 264, 3 + 'c', 263}));
    CHECK(plain.encode("a b") == ids({268, 264, 269}));
    CHECK(plain.decode(plain.encode(" a b")) == " a b");
    // tokenizer_config.json decides BOS/EOS.
    const Tokenizer cfg = Tokenizer::from_sentencepiece(spm_bpe_model(), R"({"add_bos_token": false, "add_eos_token": true})");
    CHECK(cfg.encode("ab", true) == ids({264, 263, 2}));
}

TEST_CASE("tokenizer: tokenizer.model unigram gives the Viterbi ids derived by hand", "[tokenizer]") {
    const Tokenizer tok = Tokenizer::from_sentencepiece(spm_unigram_model());
    CHECK(tok.vocab_size() == 10);
    // "▁ab": ▁a + b = -2.5 beats ▁ab = -3 and ▁ + a + b = -5.5.
    CHECK(tok.encode("ab") == ids({6, 5}));
    // "▁abc": ▁a + bc and ▁a + b + c both -3.5 (exact in float): the path whose last piece starts
    // first wins the tie, as libsentencepiece keeps the first best candidate.
    CHECK(tok.encode("abc") == ids({6, 9}));
    // Extra whitespace removed (leading, trailing, runs); z is unknown (no byte fallback): a run
    // of unknown characters is one <unk>.
    CHECK(tok.encode("  ab   zz b ") == ids({6, 5, 3, 0, 3, 5}));
    CHECK(tok.decode(tok.encode("  ab   zz b ")) == "ab  \xe2\x81\x87  b");
    CHECK(tok.decode(tok.encode("ab b")) == "ab b");
}

TEST_CASE("tokenizer: tokenizer.model files it cannot read are refused by name", "[tokenizer]") {
    auto refused = [](const std::string& bytes, const std::string& what) {
        INFO(what);
        CHECK_THROWS_WITH(Tokenizer::from_sentencepiece(bytes), Catch::Contains(what));
    };
    const std::string pieces = pb_special_pieces(true) + pb_piece("a", -1);
    refused(pieces + pb_specs(3, true, false), "unsupported: trainer_spec.model_type 3 (WORD)");
    // A character map is read (the oracle test below uses nmt_nfkc); a broken one is refused.
    refused(pieces + pb_specs(2, true, false) + pb_bytes(3, pb_bytes(1, "nmt_nfkc") + pb_bytes(2, std::string(64, '\1'))),
            "normalizer_spec.precompiled_charsmap: its trie of 16843009 bytes exceeds the 64-byte blob");
    refused(pieces + pb_specs(2, true, false) + pb_bytes(3, pb_bytes(2, "abc")), "normalizer_spec.precompiled_charsmap of 3 bytes is broken");
    refused(pieces + pb_specs(2, true, false) + pb_bytes(5, pb_bytes(2, "abcdefgh")),
            "unsupported: denormalizer_spec.precompiled_charsmap (8 bytes)");
    refused(pieces + pb_specs(2, true, false) + pb_bytes(2, pb_int(24, 1)), "unsupported: trainer_spec.treat_whitespace_as_suffix");
    refused(pb_special_pieces(false) + pb_piece("<0x41>", 0, 6) + pb_specs(2, false, false),
            "pieces[3] is a BYTE piece but trainer_spec.byte_fallback is false");
    refused(pb_special_pieces(false) + pb_specs(2, true, false), "byte_fallback is true but there is no piece <0x00>");
    refused(pieces + pb_piece("a", -2) + pb_specs(2, true, false), "pieces[260].piece \"a\" is also pieces[259]");
    refused(pb_piece("a", 0) + pb_specs(2, false, false), "no UNKNOWN piece");
    refused(pieces + pb_piece("b", 0, 9), "pieces[260].type 9");
    const std::string good = spm_bpe_model();
    refused(good.substr(0, good.size() - 3), "malformed protobuf");
    refused(good + "\x0b", "wire type 3");
    refused("{\"model\": {}}", "malformed protobuf");  // tokenizer.json is not a tokenizer.model
    // from_bytes (the C ABI's and npm's loader) tells the two apart by the first byte.
    CHECK(Tokenizer::from_bytes(good).kind() == "sentencepiece");
    CHECK(Tokenizer::from_bytes(" \n" + sentencepiece_json()).kind() == "bpe");
    refused(std::string("\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11), "varint longer than 10 bytes");
}

TEST_CASE("tokenizer: a directory's tokenizer.model, and tokenizer_config.json beside it", "[tokenizer]") {
    std::error_code ec;
    const auto dir = std::filesystem::temp_directory_path(ec) / ("tqkv_spm_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir, ec);
    std::ofstream(dir / "tokenizer.model", std::ios::binary) << spm_bpe_model();
    if (ec || !std::ifstream(dir / "tokenizer.model").good()) {
        WARN("skipped: no writable temporary directory (WASI)");
        return;
    }
    CHECK(Tokenizer::load(dir.string()).encode("ab", true) == ids({1, 264, 263}));
    std::ofstream(dir / "tokenizer_config.json") << R"({"add_bos_token": false})";
    CHECK(Tokenizer::load((dir / "tokenizer.model").string()).encode("ab", true) == ids({264, 263}));
    std::filesystem::remove_all(dir);
}

// The golden file of web/test/tokenizer.test.mjs: the models above and the ids this build gives
// for a few strings; the wasm build must give the same.
TEST_CASE("tokenizer: tokenizer.model golden ids for the wasm tests (TQKV_GOLDEN_DIR)", "[tokenizer][golden]") {
    const char* dir = std::getenv("TQKV_GOLDEN_DIR");
    if (!dir) {
        SUCCEED("TQKV_GOLDEN_DIR not set: nothing to write");
        return;
    }
    const std::string texts[] = {"the cab", "  two  spaces ", "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82 12345",
                                 "ab<sep>ab\tzz", "", "   "};
    std::string json = "{\"models\": [";
    int k = 0;
    for (const auto& [name, bytes] : {std::pair<std::string, std::string>{"spm-bpe.model", spm_bpe_model()},
                                      {"spm-unigram.model", spm_unigram_model()}}) {
        std::ofstream(std::string(dir) + "/" + name, std::ios::binary) << bytes;
        const Tokenizer tok = Tokenizer::from_sentencepiece(bytes);
        json += std::string(k++ ? "," : "") + "{\"file\": \"" + name + "\", \"cases\": [";
        int c = 0;
        for (const std::string& t : texts) {
            const auto e = tok.encode(t, true);
            json += std::string(c++ ? "," : "") + "{\"text\": \"" + json_escape(t) + "\", \"ids\": [";
            for (size_t i = 0; i < e.size(); ++i) json += (i ? "," : "") + std::to_string(e[i]);
            json += "], \"decoded\": \"" + json_escape(tok.decode(e)) + "\"}";
        }
        json += "]}";
    }
    std::ofstream(std::string(dir) + "/spm.json") << json << "]}\n";
}

#if defined(TQKV_HAVE_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

// libsentencepiece as the oracle: models it trains here, our ids and text must equal its.
TEST_CASE("tokenizer: tokenizer.model ids and text equal libsentencepiece's (BPE, unigram)", "[tokenizer]") {
    const auto dir = std::filesystem::temp_directory_path() / ("tqkv_sp_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    {
        std::ofstream f(dir / "train.txt");
        const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "caf\xc3\xa9", "na\xc3\xafve",
                               "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82",
                               "  ", "x=1;", "\xf0\x9f\x99\x82"};
        for (int i = 0; i < 600; ++i) f << words[i % 15] << ' ' << words[(i * 7) % 15] << "  " << words[(i * 11) % 15] << ' ' << i * 37 << '\n';
    }
    const std::vector<std::string> texts = {
        "the quick brown fox", " leading space", "trailing space ", "  two  spaces   three   ",
        "caf\xc3\xa9 na\xc3\xafve 123 4567 89", "unseen \xe6\x97\xa5\xe6\x9c\xac words \xe2\x82\xac \xf0\x9f\x98\x80",
        "\xf0\x9f\x99\x82\xf0\x9f\x99\x82 x=1;y=22;", "tab\tand\nnewline\r\n", "\xff\xfe invalid \xc3", "\xef\xbf\xbd literal",
        "<s> </s> <unk> text", "qqqq zzzz", "", " ", "   ", "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 the<sep>fox",
        "1234567890 0.5 -3e8", "Ab A AAb aAb", "aaaa bbbb eeee oooo ssss    ", "abc abcabc cab the the  the", "ab<sep>ab zz",
        // NFKC's business: full-width letters, a ligature, circled digits, a decomposed accent,
        // no-break and ideographic spaces, a control character, upper case (nmt_nfkc_cf folds it).
        "\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3 \xef\xac\x81ne \xe2\x91\xa0\xe2\x91\xa1 cafe\xcc\x81 a\xc2\xa0" "b\xe3\x80\x80" "c\x01" "d THE Fox"};
    struct Kind {
        const char* name;
        std::string options;  // training options, or
        std::string bytes;    // a model written here
    } kinds[] = {
        {"handmade-bpe", "", spm_bpe_model()},
        {"handmade-unigram", "", spm_unigram_model()},
        {"handmade-charsmap", "", spm_bpe_model() + pb_bytes(3, pb_bytes(2, spm_charsmap_a()))},
        // Llama 2's options: identity normalizer, extra whitespace kept, digits split, byte fallback.
        {"bpe", "--model_type=bpe --vocab_size=400 --byte_fallback=true --split_digits=true --remove_extra_whitespaces=false "
                "--user_defined_symbols=<sep> --normalization_rule_name=identity", ""},
        {"unigram", "--model_type=unigram --vocab_size=200 --user_defined_symbols=<sep> --normalization_rule_name=identity", ""},
        {"unigram-bytes", "--model_type=unigram --vocab_size=400 --byte_fallback=true --remove_extra_whitespaces=false "
                          "--normalization_rule_name=identity", ""},
        // SentencePiece's defaults (as T5 / ALBERT style models): the nmt_nfkc character map.
        {"unigram-nfkc", "--model_type=unigram --vocab_size=300", ""},
        {"bpe-nfkc-cf", "--model_type=bpe --vocab_size=450 --byte_fallback=true --normalization_rule_name=nmt_nfkc_cf", ""},
    };
    for (const Kind& kind : kinds) {
        INFO(kind.name);
        const std::string prefix = (dir / kind.name).string();
        if (kind.bytes.empty()) {
            const auto status = sentencepiece::SentencePieceTrainer::Train(
                "--input=" + (dir / "train.txt").string() + " --model_prefix=" + prefix + " " + kind.options +
                " --character_coverage=0.9995 --minloglevel=2 --num_threads=1");
            INFO(status.ToString());
            REQUIRE(status.ok());
        } else {
            std::ofstream(prefix + ".model", std::ios::binary) << kind.bytes;
        }
        sentencepiece::SentencePieceProcessor sp;
        REQUIRE(sp.Load(prefix + ".model").ok());
        const Tokenizer tok = Tokenizer::load(prefix + ".model");
        REQUIRE(tok.vocab_size() == size_t(sp.GetPieceSize()));
        CHECK(tok.bos_id() == sp.bos_id());
        CHECK(tok.eos_id() == sp.eos_id());
        for (const std::string& s : texts) {
            INFO("text: " << s);
            std::vector<int> want;
            REQUIRE(sp.Encode(s, &want).ok());
            const auto got = tok.encode(s);
            CHECK(got == std::vector<int32_t>(want.begin(), want.end()));
            std::string text;
            REQUIRE(sp.Decode(want, &text).ok());
            CHECK(tok.decode(got) == text);
        }
        // Decoding any ids (controls, bytes that are not UTF-8, <unk>, pieces with '▁' anywhere).
        uint32_t x = 12345;
        for (int n = 0; n < 300; ++n) {
            std::vector<int> v(size_t(n % 9));
            for (int& id : v) {
                x ^= x << 13, x ^= x >> 17, x ^= x << 5;
                id = int(x % uint32_t(sp.GetPieceSize()));
            }
            std::string text;
            REQUIRE(sp.Decode(v, &text).ok());
            INFO("ids " << n);
            CHECK(tok.decode(std::vector<int32_t>(v.begin(), v.end())) == text);
        }
    }
    std::filesystem::remove_all(dir);
}
#else
TEST_CASE("tokenizer: tokenizer.model ids and text equal libsentencepiece's (BPE, unigram)", "[tokenizer]") {
    WARN("skipped: built without libsentencepiece (the oracle; Debian's libsentencepiece-dev)");
}
#endif
