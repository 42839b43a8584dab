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
struct ClassRun {
    uint32_t first, last;
    uint8_t ccc;
};
struct Decomposition {
    uint32_t cp, first, second;  // second = 0: a singleton
};
struct Composition {
    uint32_t first, second, composite;
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

int combining_class(uint32_t cp) {
    if (cp < 0x300 || cp > 0x10ffff) return 0;
    const auto* it = std::upper_bound(std::begin(kCombiningClass), std::end(kCombiningClass), cp,
                                      [](uint32_t c, const ClassRun& r) { return c < r.first; });
    return it != std::begin(kCombiningClass) && cp <= (it - 1)->last ? (it - 1)->ccc : 0;
}

// ---------------------------------------------------------------------------------------------
// NFC (Unicode Standard Annex #15): canonical decomposition (recursive, Hangul syllables by
// arithmetic), canonical ordering of combining marks (stable by combining class), then canonical
// composition (a mark joins the last starter when nothing between blocks it, through the primary
// composites and Hangul LV / LVT).

namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(uint32_t cp, std::u32string& out) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
        const uint32_t s = cp - kSBase;
        out += char32_t(kLBase + s / kNCount);
        out += char32_t(kVBase + s % kNCount / kTCount);
        if (s % kTCount) out += char32_t(kTBase + s % kTCount);
        return;
    }
    if (cp >= 0xC0 && cp <= 0x10ffff) {
        const auto* it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                                          [](const Decomposition& d, uint32_t c) { return d.cp < c; });
        if (it != std::end(kDecompositions) && it->cp == cp) {
            decompose(it->first, out);  // (depth at most 4 in Unicode 15)
            if (it->second) decompose(it->second, out);
            return;
        }
    }
    out += char32_t(cp);
}

uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
        return a + (b - kTBase);
    const auto* it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::pair{a, b},
                                      [](const Composition& c, std::pair<uint32_t, uint32_t> k) {
                                          return c.first < k.first || (c.first == k.first && c.second < k.second);
                                      });
    return it != std::end(kCompositions) && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

bool is_nfc_quick(std::string_view s) {
    int last = 0;
    for (size_t i = 0; i < s.size();) {
        const auto b = static_cast<unsigned char>(s[i]);
        if (b < 0x80) {  // ASCII: class 0, quick check yes
            last = 0, ++i;
            continue;
        }
        size_t len;
        const uint32_t cp = decode_utf8(s.data() + i, s.size() - i, len);
        i += len;
        if (cp >= kInvalidByteBase) {
            last = 0;
            continue;
        }
        const int ccc = combining_class(cp);
        if ((ccc != 0 && last > ccc) || !nfc_quick_check_yes(cp)) return false;
        last = ccc;
    }
    return true;
}

std::string nfc(std::string_view s) {
    if (is_nfc_quick(s)) return std::string(s);
    std::u32string d;
    d.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t cp = decode_utf8(s.data() + i, s.size() - i, len);
        i += len;
        if (cp >= kInvalidByteBase) d += char32_t(cp);  // an invalid byte: kept, a starter that composes with nothing
        else decompose(cp, d);
    }
    // Canonical ordering: each run of marks (class != 0) stably sorted by class.
    for (size_t i = 0; i < d.size();) {
        if (combining_class(d[i]) == 0) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < d.size() && combining_class(d[j]) != 0) ++j;
        std::stable_sort(d.begin() + long(i), d.begin() + long(j),
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
    // Composition: `starter` is the position of the last starter in the output; a character
    // joins it when no character in between has a class of 0 or >= its own (then it is blocked).
    std::u32string c;
    c.reserve(d.size());
    size_t starter = std::u32string::npos;
    int last = 0;  // class of the last character kept
    for (char32_t ch : d) {
        const int ccc = combining_class(ch);
        if (starter != std::u32string::npos && (c.size() == starter + 1 || (last != 0 && last < ccc))) {
            if (const uint32_t comp = compose(c[starter], ch)) {
                c[starter] = char32_t(comp);
                continue;
            }
        }
        if (ccc == 0) starter = c.size();
        last = ccc;
        c += ch;
    }
    std::string out;
    out.reserve(s.size() + 8);
    for (char32_t ch : c) append_utf8(out, ch);
    return out;
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
