// The Unicode facts the tokenizers need: general categories (for \p{L}, \p{N}, ... in
// pre-tokenizer regexes), White_Space (\s), NFC (quick check, combining classes, decompositions,
// compositions), and a lenient UTF-8 decoder.
// Tables: lib/src/model/unicode_table.inc, generated from Debian's unicode-data (Unicode 15.0) by
// scripts/gen_unicode_table.sh.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tqkv::detail {

enum class UCat : uint8_t {
    Cn, Cc, Cf, Co, Cs,           // other (Cn = unassigned, also what an invalid UTF-8 byte gets)
    Lu, Ll, Lt, Lm, Lo,           // letters
    Mn, Mc, Me,                   // marks
    Nd, Nl, No,                   // numbers
    Pc, Pd, Ps, Pe, Pi, Pf, Po,   // punctuation
    Sm, Sc, Sk, So,               // symbols
    Zs, Zl, Zp,                   // separators
    Count
};
// One bit per category, so a class is a mask.
inline uint32_t ucat_bit(UCat c) { return 1u << unsigned(c); }

UCat general_category(uint32_t cp);
bool is_white_space(uint32_t cp);  // the White_Space property (what Oniguruma's \s matches)
bool nfc_quick_check_yes(uint32_t cp);  // false: the code point may change under NFC
int combining_class(uint32_t cp);      // the canonical combining class (0 for starters)
// Text in Normalization Form C (UAX #15). Invalid UTF-8 bytes pass through unchanged (each a
// starter that composes with nothing).
std::string nfc(std::string_view s);
// True when s is certainly in NFC: every code point's quick check is Yes and marks are in
// canonical order (nfc() then returns s unchanged without decomposing it).
bool is_nfc_quick(std::string_view s);

// Code points of UTF-8 text. An invalid or truncated sequence yields its first byte as
// 0x110000 + byte (a value no real code point has: category Cn, never white space), so every
// input byte belongs to exactly one decoded unit and pieces keep their exact bytes.
constexpr uint32_t kInvalidByteBase = 0x110000;
uint32_t decode_utf8(const char* s, size_t n, size_t& len);
void append_utf8(std::string& out, uint32_t cp);

}  // namespace tqkv::detail
