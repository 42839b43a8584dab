#include "model/unicode.hpp"

#include <algorithm>
#include <iterator>

namespace tqkv::detail {

namespace {

struct CategoryRun {
    uint32_t first;
    UCat cat;
};
struct CodeRange {
    uint32_t first, last;
};

constexpr UCat Cn = UCat::Cn, Cc = UCat::Cc, Cf = UCat::Cf, Co = UCat::Co, Cs = UCat::Cs, Lu = UCat::Lu,
               Ll = UCat::Ll, Lt = UCat::Lt, Lm = UCat::Lm, Lo = UCat::Lo, Mn = UCat::Mn, Mc = UCat::Mc,
               Me = UCat::Me, Nd = UCat::Nd, Nl = UCat::Nl, No = UCat::No, Pc = UCat::Pc, Pd = UCat::Pd,
               Ps = UCat::Ps, Pe = UCat::Pe, Pi = UCat::Pi, Pf = UCat::Pf, Po = UCat::Po, Sm = UCat::Sm,
               Sc = UCat::Sc, Sk = UCat::Sk, So = UCat::So, Zs = UCat::Zs, Zl = UCat::Zl, Zp = UCat::Zp;

#include "model/unicode_table.inc"

// Latin-1 answered from a direct table (most text is ASCII); the rest by binary search.
struct Latin1 {
    UCat cat[256];
    Latin1() {
        size_t r = 0;
        for (uint32_t cp = 0; cp < 256; ++cp) {
            while (r + 1 < std::size(kCategoryRuns) && kCategoryRuns[r + 1].first <= cp) ++r;
            cat[cp] = kCategoryRuns[r].cat;
        }
    }
};
const Latin1 kLatin1;

}  // namespace

UCat general_category(uint32_t cp) {
    if (cp < 256) return kLatin1.cat[cp];
    if (cp > 0x10ffff) return UCat::Cn;
    const auto* it = std::upper_bound(std::begin(kCategoryRuns), std::end(kCategoryRuns), cp,
                                      [](uint32_t c, const CategoryRun& r) { return c < r.first; });
    return (it - 1)->cat;
}

bool is_white_space(uint32_t cp) {
    // PropList.txt White_Space (stable since Unicode 6.3; checked against the file in the tests).
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}

bool nfc_quick_check_yes(uint32_t cp) {
    if (cp < 0x300) return true;
    const auto* it = std::upper_bound(std::begin(kNfcNotYes), std::end(kNfcNotYes), cp,
                                      [](uint32_t c, const CodeRange& r) { return c < r.first; });
    return it == std::begin(kNfcNotYes) || cp > (it - 1)->last;
}

uint32_t decode_utf8(const char* s, size_t n, size_t& len) {
    const auto* u = reinterpret_cast<const unsigned char*>(s);
    const uint32_t b0 = u[0];
    len = 1;
    if (b0 < 0x80) return b0;
    int extra;
    uint32_t cp, min;
    if ((b0 & 0xe0) == 0xc0) extra = 1, cp = b0 & 0x1f, min = 0x80;
    else if ((b0 & 0xf0) == 0xe0) extra = 2, cp = b0 & 0x0f, min = 0x800;
    else if ((b0 & 0xf8) == 0xf0) extra = 3, cp = b0 & 0x07, min = 0x10000;
    else return kInvalidByteBase + b0;
    if (size_t(extra) >= n) return kInvalidByteBase + b0;
    for (int i = 1; i <= extra; ++i) {
        if ((u[i] & 0xc0) != 0x80) return kInvalidByteBase + b0;
        cp = (cp << 6) | (u[i] & 0x3f);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return kInvalidByteBase + b0;
    len = size_t(extra) + 1;
    return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp >= kInvalidByteBase) {
        out += char(cp - kInvalidByteBase);
    } else if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xc0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += char(0xe0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    } else {
        out += char(0xf0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3f));
        out += char(0x80 | ((cp >> 6) & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    }
}

}  // namespace tqkv::detail
