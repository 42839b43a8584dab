// The regular expressions of tokenizer.json pre-tokenizers (GPT-2, Llama 3, Qwen2, DeepSeek, ...),
// with Oniguruma's leftmost-first semantics as Hugging Face tokenizers runs them:
//   alternation |, groups ( ) (?: ) (?i: ), lookahead (?= ) (?! ), greedy ? * + {n} {n,} {n,m},
//   . literals, escapes \s \S \d \D \w \W \r \n \t \f \v \x.. \u.... \p{..} \P{..} (general
//   categories L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po S Sm Sc Sk So Z Zs Zl
//   Zp C Cc Cf Co Cn), classes [..] with ranges, negation and the escapes above.
// Anything else (anchors, backreferences, lazy or possessive quantifiers, other properties, a
// pattern that can match the empty string) is refused at compile time with std::invalid_argument
// ("unsupported regex ..."), never guessed. Case-insensitive groups fold ASCII letters (plus
// U+017F for s and U+212A for k, as Unicode simple case folding does).
// Matching is backtracking over a small instruction list with a step budget proportional to the
// text, so a hostile pattern fails with an error instead of running for ever.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tqkv::detail {

class PretokenRegex {
public:
    static PretokenRegex compile(std::string_view pattern);
    // The leftmost match starting at or after `from` in the code points cps[0..n) (see
    // decode_utf8), as [begin, end) code point indices; false when there is none.
    bool find(const uint32_t* cps, size_t n, size_t from, size_t& begin, size_t& end) const;

    struct Term {  // one member of a class: a code point range, categories, or white space
        enum Kind : uint8_t { Range, Cats, Space } kind = Range;
        bool negated = false;
        uint32_t lo = 0, hi = 0, mask = 0;
        bool test(uint32_t cp) const;
    };
    struct Class {
        std::vector<Term> terms;
        bool negated = false;
        uint64_t ascii[2] = {0, 0};  // the answer for code points < 128, precomputed
        bool test(uint32_t cp) const {
            if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
            return slow(cp);
        }
        bool slow(uint32_t cp) const;
    };
    enum class Op : uint8_t { Char, Split, Jmp, Match, Look };
    struct Inst {
        Op op;
        bool negated = false;  // Look: (?! ) instead of (?= )
        int x = 0, y = 0;      // Char: class; Split: preferred, other; Jmp: target; Look: sub-program, next
    };

private:
    using Stack = std::vector<std::pair<int, size_t>>;  // backtracking points: (instruction, position)
    bool run(int pc, const uint32_t* cps, size_t n, size_t pos, size_t& end, size_t& budget, Stack& stack,
             int depth) const;
    void compute_first_sets();
    std::vector<Class> classes_;
    std::vector<Inst> prog_;
    // Per instruction: the ASCII characters a match continuing from it can begin with (bit set) and
    // whether it can begin otherwise (non-ASCII, empty, lookahead: never pruned). At a Split, a
    // branch that cannot begin with the next ASCII character is skipped, which spares trying the
    // many alternatives of a pre-tokenizer pattern one by one.
    struct First {
        uint64_t ascii[2] = {0, 0};
        bool other = false;
    };
    std::vector<First> first_;
    bool can_start(int pc, uint32_t cp) const {
        const First& f = first_[size_t(pc)];
        return cp < 128 ? ((f.ascii[cp >> 6] >> (cp & 63)) & 1) != 0 : f.other;
    }
};

}  // namespace tqkv::detail
