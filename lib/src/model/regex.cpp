#include "model/regex.hpp"

#include <memory>
#include <stdexcept>

#include "model/unicode.hpp"

namespace tqkv::detail {

namespace {

using Term = PretokenRegex::Term;
using Class = PretokenRegex::Class;
using Inst = PretokenRegex::Inst;
using Op = PretokenRegex::Op;

constexpr int kMaxRepeat = 1000;
constexpr size_t kMaxProgram = 200000;

uint32_t cats(std::initializer_list<UCat> cs) {
    uint32_t m = 0;
    for (UCat c : cs) m |= ucat_bit(c);
    return m;
}
const uint32_t kLetters = cats({UCat::Lu, UCat::Ll, UCat::Lt, UCat::Lm, UCat::Lo});
const uint32_t kMarks = cats({UCat::Mn, UCat::Mc, UCat::Me});
const uint32_t kNumbers = cats({UCat::Nd, UCat::Nl, UCat::No});
const uint32_t kPunct = cats({UCat::Pc, UCat::Pd, UCat::Ps, UCat::Pe, UCat::Pi, UCat::Pf, UCat::Po});
const uint32_t kSymbols = cats({UCat::Sm, UCat::Sc, UCat::Sk, UCat::So});
const uint32_t kSeparators = cats({UCat::Zs, UCat::Zl, UCat::Zp});
const uint32_t kOther = cats({UCat::Cc, UCat::Cf, UCat::Co, UCat::Cs, UCat::Cn});
const uint32_t kWord = kLetters | kMarks | ucat_bit(UCat::Nd) | ucat_bit(UCat::Pc);

// \p{NAME} (also L& and the long names the tokenizers use) -> category mask; 0 = unknown.
uint32_t property_mask(const std::string& name) {
    static const struct {
        const char* name;
        uint32_t mask;
    } table[] = {
        {"L", kLetters}, {"Letter", kLetters}, {"L&", cats({UCat::Lu, UCat::Ll, UCat::Lt})},
        {"Lu", cats({UCat::Lu})}, {"Ll", cats({UCat::Ll})}, {"Lt", cats({UCat::Lt})}, {"Lm", cats({UCat::Lm})},
        {"Lo", cats({UCat::Lo})}, {"M", kMarks}, {"Mark", kMarks}, {"Mn", cats({UCat::Mn})}, {"Mc", cats({UCat::Mc})},
        {"Me", cats({UCat::Me})}, {"N", kNumbers}, {"Number", kNumbers}, {"Nd", cats({UCat::Nd})},
        {"Nl", cats({UCat::Nl})}, {"No", cats({UCat::No})}, {"P", kPunct}, {"Punctuation", kPunct},
        {"Pc", cats({UCat::Pc})}, {"Pd", cats({UCat::Pd})}, {"Ps", cats({UCat::Ps})}, {"Pe", cats({UCat::Pe})},
        {"Pi", cats({UCat::Pi})}, {"Pf", cats({UCat::Pf})}, {"Po", cats({UCat::Po})}, {"S", kSymbols},
        {"Symbol", kSymbols}, {"Sm", cats({UCat::Sm})}, {"Sc", cats({UCat::Sc})}, {"Sk", cats({UCat::Sk})},
        {"So", cats({UCat::So})}, {"Z", kSeparators}, {"Zs", cats({UCat::Zs})}, {"Zl", cats({UCat::Zl})},
        {"Zp", cats({UCat::Zp})}, {"C", kOther}, {"Cc", cats({UCat::Cc})}, {"Cf", cats({UCat::Cf})},
        {"Co", cats({UCat::Co})}, {"Cn", cats({UCat::Cn})},
    };
    for (const auto& e : table)
        if (name == e.name) return e.mask;
    return 0;
}

// The syntax tree of a pattern.
struct Node {
    enum Kind { Alt, Seq, Repeat, Char, Look } kind;
    std::vector<std::unique_ptr<Node>> kids;
    int min = 1, max = 1;   // Repeat (max -1 = unbounded)
    int cls = 0;            // Char
    bool negated = false;   // Look
};

class Parser {
public:
    Parser(std::string_view p, std::vector<Class>& classes) : p_(p), classes_(classes) {}

    std::unique_ptr<Node> parse() {
        auto n = alternation(false);
        if (i_ != p_.size()) fail("unbalanced ')'");
        return n;
    }

private:
    [[noreturn]] void fail(const std::string& why) const {
        throw std::invalid_argument("unsupported regex /" + std::string(p_) + "/ at offset " + std::to_string(i_) + ": " +
                                    why);
    }
    bool more() const { return i_ < p_.size(); }
    uint32_t next_cp() {
        size_t len;
        const uint32_t cp = decode_utf8(p_.data() + i_, p_.size() - i_, len);
        if (cp >= kInvalidByteBase) fail("invalid UTF-8");
        i_ += len;
        return cp;
    }

    std::unique_ptr<Node> alternation(bool icase) {
        auto alt = std::make_unique<Node>(Node{Node::Alt, {}});
        alt->kids.push_back(sequence(icase));
        while (more() && p_[i_] == '|') {
            ++i_;
            alt->kids.push_back(sequence(icase));
        }
        return alt;
    }

    std::unique_ptr<Node> sequence(bool icase) {
        auto seq = std::make_unique<Node>(Node{Node::Seq, {}});
        while (more() && p_[i_] != '|' && p_[i_] != ')') {
            auto a = atom(icase);
            a = quantified(std::move(a));
            seq->kids.push_back(std::move(a));
        }
        return seq;
    }

    int number() {
        if (!more() || p_[i_] < '0' || p_[i_] > '9') fail("expected a number in {}");
        long v = 0;
        while (more() && p_[i_] >= '0' && p_[i_] <= '9') {
            v = v * 10 + (p_[i_++] - '0');
            if (v > kMaxRepeat) fail("repetition count above " + std::to_string(kMaxRepeat));
        }
        return int(v);
    }

    std::unique_ptr<Node> quantified(std::unique_ptr<Node> a) {
        if (!more()) return a;
        int mn, mx;
        const char c = p_[i_];
        if (c == '?') mn = 0, mx = 1, ++i_;
        else if (c == '*') mn = 0, mx = -1, ++i_;
        else if (c == '+') mn = 1, mx = -1, ++i_;
        else if (c == '{') {
            ++i_;
            mn = mx = number();
            if (more() && p_[i_] == ',') {
                ++i_;
                mx = more() && p_[i_] == '}' ? -1 : number();
            }
            if (!more() || p_[i_] != '}') fail("expected '}'");
            ++i_;
            if (mx != -1 && mx < mn) fail("{n,m} with m < n");
        } else {
            return a;
        }
        if (a->kind == Node::Look) fail("a quantified lookahead");
        if (more() && (p_[i_] == '?' || p_[i_] == '+')) fail("lazy or possessive quantifiers");
        if (more() && (p_[i_] == '*' || p_[i_] == '{')) fail("a quantifier after a quantifier");
        auto r = std::make_unique<Node>(Node{Node::Repeat, {}});
        r->min = mn, r->max = mx;
        r->kids.push_back(std::move(a));
        return r;
    }

    std::unique_ptr<Node> char_node(Class c) {
        finish(c);
        classes_.push_back(std::move(c));
        auto n = std::make_unique<Node>(Node{Node::Char, {}});
        n->cls = int(classes_.size() - 1);
        return n;
    }

    static void finish(Class& c) {
        for (uint32_t cp = 0; cp < 128; ++cp)
            if (c.slow(cp)) c.ascii[cp >> 6] |= uint64_t(1) << (cp & 63);
    }

    // A literal code point, folded when case-insensitive.
    static void add_literal(Class& c, uint32_t cp, bool icase) {
        c.terms.push_back(Term{Term::Range, false, cp, cp, 0});
        if (!icase) return;
        if (cp >= 'a' && cp <= 'z') c.terms.push_back(Term{Term::Range, false, cp - 32, cp - 32, 0});
        if (cp >= 'A' && cp <= 'Z') c.terms.push_back(Term{Term::Range, false, cp + 32, cp + 32, 0});
        if (cp == 's' || cp == 'S') c.terms.push_back(Term{Term::Range, false, 0x17f, 0x17f, 0});
        if (cp == 'k' || cp == 'K') c.terms.push_back(Term{Term::Range, false, 0x212a, 0x212a, 0});
    }

    uint32_t hex_digits(int count, bool braced) {
        uint32_t v = 0;
        int got = 0;
        while (more() && (braced ? p_[i_] != '}' : got < count)) {
            const char h = p_[i_];
            int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
            if (d < 0) fail("bad hexadecimal escape");
            v = v * 16 + uint32_t(d), ++i_, ++got;
            if (v > 0x10ffff) fail("code point past U+10FFFF");
        }
        if (braced) {
            if (!more()) fail("expected '}'");
            ++i_;
        }
        if (got == 0 || (!braced && got != count)) fail("bad hexadecimal escape");
        return v;
    }

    // After a backslash: either a term of a class (set) or a single code point (returned with
    // is_cp). Shared by atoms and classes.
    Term escape(bool& is_cp, uint32_t& cp) {
        if (!more()) fail("a trailing backslash");
        const char e = p_[i_++];
        is_cp = false;
        switch (e) {
            case 's': return Term{Term::Space, false, 0, 0, 0};
            case 'S': return Term{Term::Space, true, 0, 0, 0};
            case 'd': return Term{Term::Cats, false, 0, 0, ucat_bit(UCat::Nd)};
            case 'D': return Term{Term::Cats, true, 0, 0, ucat_bit(UCat::Nd)};
            case 'w': return Term{Term::Cats, false, 0, 0, kWord};
            case 'W': return Term{Term::Cats, true, 0, 0, kWord};
            case 'p':
            case 'P': {
                std::string name;
                if (more() && p_[i_] == '{') {
                    ++i_;
                    while (more() && p_[i_] != '}') name += p_[i_++];
                    if (!more()) fail("expected '}' after \\p{");
                    ++i_;
                } else if (more()) {
                    name = p_[i_++];
                }
                bool neg = e == 'P';
                if (!name.empty() && name[0] == '^') neg = !neg, name.erase(0, 1);
                const uint32_t m = property_mask(name);
                if (!m) fail("property \\p{" + name + "} (general categories only)");
                return Term{Term::Cats, neg, 0, 0, m};
            }
            default: break;
        }
        is_cp = true;
        switch (e) {
            case 'r': cp = '\r'; break;
            case 'n': cp = '\n'; break;
            case 't': cp = '\t'; break;
            case 'f': cp = '\f'; break;
            case 'v': cp = '\v'; break;
            case 'e': cp = 0x1b; break;
            case 'a': cp = 0x07; break;
            case '0': cp = 0; break;
            case 'x':
                if (more() && p_[i_] == '{') ++i_, cp = hex_digits(0, true);
                else cp = hex_digits(2, false);
                break;
            case 'u': cp = hex_digits(4, false); break;
            default:
                if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
                    fail(std::string("escape \\") + e);
                --i_;
                cp = next_cp();  // an escaped punctuation character stands for itself
        }
        return Term{};
    }

    std::unique_ptr<Node> atom(bool icase) {
        const char c = p_[i_];
        if (c == '(') {
            ++i_;
            bool inner_icase = icase;
            if (more() && p_[i_] == '?') {
                ++i_;
                if (!more()) fail("unterminated group");
                const char k = p_[i_];
                if (k == ':') {
                    ++i_;
                } else if (k == '=' || k == '!') {
                    ++i_;
                    auto look = std::make_unique<Node>(Node{Node::Look, {}});
                    look->negated = k == '!';
                    look->kids.push_back(alternation(icase));
                    if (!more() || p_[i_] != ')') fail("expected ')'");
                    ++i_;
                    return look;
                } else if (k == 'i' && i_ + 1 < p_.size() && p_[i_ + 1] == ':') {
                    i_ += 2;
                    inner_icase = true;
                } else {
                    fail(std::string("group (?") + k + " (lookbehind, named groups and other flags)");
                }
            }
            auto g = alternation(inner_icase);
            if (!more() || p_[i_] != ')') fail("expected ')'");
            ++i_;
            return g;
        }
        if (c == '[') return char_node(bracket(icase));
        if (c == '.') {
            ++i_;
            Class cl;
            cl.negated = true;
            cl.terms.push_back(Term{Term::Range, false, '\n', '\n', 0});
            return char_node(std::move(cl));
        }
        if (c == '^' || c == '$') fail("anchors");
        if (c == '*' || c == '+' || c == '?' || c == '{') fail("a quantifier with nothing to repeat");
        Class cl;
        if (c == '\\') {
            ++i_;
            if (more() && ((p_[i_] >= '1' && p_[i_] <= '9') || p_[i_] == 'k' || p_[i_] == 'b' || p_[i_] == 'B' ||
                           p_[i_] == 'A' || p_[i_] == 'z' || p_[i_] == 'Z' || p_[i_] == 'G'))
                fail(std::string("escape \\") + p_[i_] + " (backreferences and anchors)");
            bool is_cp;
            uint32_t cp = 0;
            const Term t = escape(is_cp, cp);
            if (is_cp) add_literal(cl, cp, icase);
            else cl.terms.push_back(t);
        } else {
            add_literal(cl, next_cp(), icase);
        }
        return char_node(std::move(cl));
    }

    Class bracket(bool icase) {
        ++i_;  // '['
        Class cl;
        if (more() && p_[i_] == '^') cl.negated = true, ++i_;
        bool first = true;
        for (;;) {
            if (!more()) fail("unterminated [");
            if (p_[i_] == ']' && !first) {
                ++i_;
                break;
            }
            if (p_[i_] == '[') fail("nested classes or POSIX [:name:]");
            if (p_[i_] == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') fail("class intersection &&");
            first = false;
            uint32_t lo;
            if (p_[i_] == '\\') {
                ++i_;
                bool is_cp;
                uint32_t cp = 0;
                const Term t = escape(is_cp, cp);
                if (!is_cp) {
                    cl.terms.push_back(t);
                    continue;
                }
                lo = cp;
            } else {
                lo = next_cp();
            }
            uint32_t hi = lo;
            if (i_ + 1 < p_.size() && p_[i_] == '-' && p_[i_ + 1] != ']') {
                ++i_;
                if (p_[i_] == '\\') {
                    ++i_;
                    bool is_cp;
                    uint32_t cp = 0;
                    escape(is_cp, cp);
                    if (!is_cp) fail("a range ending in a class escape");
                    hi = cp;
                } else {
                    hi = next_cp();
                }
                if (hi < lo) fail("a range with its ends reversed");
            }
            if (icase) {
                for (uint32_t c = lo; c <= hi && c < 128; ++c) add_literal(cl, c, true);
                if (hi >= 128) cl.terms.push_back(Term{Term::Range, false, std::max<uint32_t>(lo, 128), hi, 0});
            } else {
                cl.terms.push_back(Term{Term::Range, false, lo, hi, 0});
            }
        }
        return cl;
    }

    std::string_view p_;
    std::vector<Class>& classes_;
    size_t i_ = 0;
};

bool can_be_empty(const Node& n) {
    switch (n.kind) {
        case Node::Char: return false;
        case Node::Look: return true;
        case Node::Repeat: return n.min == 0 || can_be_empty(*n.kids[0]);
        case Node::Seq:
            for (const auto& k : n.kids)
                if (!can_be_empty(*k)) return false;
            return true;
        case Node::Alt:
            for (const auto& k : n.kids)
                if (can_be_empty(*k)) return true;
            return false;
    }
    return true;
}

class Compiler {
public:
    explicit Compiler(std::vector<Inst>& prog) : prog_(prog) {}

    void emit(const Node& n) {
        if (prog_.size() > kMaxProgram) throw std::invalid_argument("unsupported regex: the pattern is too large");
        switch (n.kind) {
            case Node::Char: push({Op::Char, false, n.cls, 0}); break;
            case Node::Seq:
                for (const auto& k : n.kids) emit(*k);
                break;
            case Node::Alt: {
                std::vector<int> jumps;
                for (size_t a = 0; a < n.kids.size(); ++a) {
                    int split = -1;
                    if (a + 1 < n.kids.size()) split = push({Op::Split, false, 0, 0});
                    if (split >= 0) prog_[size_t(split)].x = here();
                    emit(*n.kids[a]);
                    if (a + 1 < n.kids.size()) {
                        jumps.push_back(push({Op::Jmp, false, 0, 0}));
                        prog_[size_t(split)].y = here();
                    }
                }
                for (int j : jumps) prog_[size_t(j)].x = here();
                break;
            }
            case Node::Look: {
                const int look = push({Op::Look, n.negated, 0, 0});
                prog_[size_t(look)].x = here();
                emit(*n.kids[0]);
                push({Op::Match, false, 0, 0});
                prog_[size_t(look)].y = here();
                break;
            }
            case Node::Repeat: {
                const Node& body = *n.kids[0];
                if (n.max == -1 && can_be_empty(body))
                    throw std::invalid_argument("unsupported regex: an unbounded repetition of something that can be empty");
                for (int i = 0; i < n.min; ++i) emit(body);
                if (n.max == -1) {
                    const int loop = push({Op::Split, false, 0, 0});
                    prog_[size_t(loop)].x = here();
                    emit(body);
                    push({Op::Jmp, false, loop, 0});
                    prog_[size_t(loop)].y = here();
                } else {
                    std::vector<int> splits;
                    for (int i = n.min; i < n.max; ++i) {
                        const int s = push({Op::Split, false, 0, 0});
                        prog_[size_t(s)].x = here();
                        splits.push_back(s);
                        emit(body);
                    }
                    for (int s : splits) prog_[size_t(s)].y = here();
                }
                break;
            }
        }
    }

private:
    int here() const { return int(prog_.size()); }
    int push(Inst i) {
        prog_.push_back(i);
        return int(prog_.size() - 1);
    }
    std::vector<Inst>& prog_;
};

}  // namespace

bool PretokenRegex::Term::test(uint32_t cp) const {
    bool r;
    switch (kind) {
        case Range: r = cp >= lo && cp <= hi; break;
        case Cats: r = (mask & ucat_bit(general_category(cp))) != 0; break;
        default: r = is_white_space(cp); break;
    }
    return r != negated;
}

bool PretokenRegex::Class::slow(uint32_t cp) const {
    bool any = false;
    for (const auto& t : terms)
        if (t.test(cp)) {
            any = true;
            break;
        }
    return any != negated;
}

PretokenRegex PretokenRegex::compile(std::string_view pattern) {
    PretokenRegex re;
    Parser parser(pattern, re.classes_);
    const auto tree = parser.parse();
    if (can_be_empty(*tree))
        throw std::invalid_argument("unsupported regex /" + std::string(pattern) + "/: it can match the empty string");
    Compiler(re.prog_).emit(*tree);
    re.prog_.push_back({Op::Match, false, 0, 0});
    re.compute_first_sets();
    return re;
}

void PretokenRegex::compute_first_sets() {
    first_.assign(prog_.size(), First{});
    // Depth first from each instruction; a loop back to an instruction being visited adds nothing.
    std::vector<int> state(prog_.size(), 0);  // 0 = not done, 1 = in progress, 2 = done
    auto visit = [&](auto&& self, int pc) -> const First& {
        First& f = first_[size_t(pc)];
        if (state[size_t(pc)]) return f;
        state[size_t(pc)] = 1;
        const Inst& in = prog_[size_t(pc)];
        auto merge = [&](const First& o) {
            f.ascii[0] |= o.ascii[0], f.ascii[1] |= o.ascii[1], f.other = f.other || o.other;
        };
        switch (in.op) {
            case Op::Char: {
                const Class& c = classes_[size_t(in.x)];
                f.ascii[0] = c.ascii[0], f.ascii[1] = c.ascii[1];
                f.other = true;  // non-ASCII code points are not tracked
                break;
            }
            case Op::Split: merge(self(self, in.x)), merge(self(self, in.y)); break;
            case Op::Jmp: merge(self(self, in.x)); break;
            case Op::Match:
            case Op::Look: f.ascii[0] = f.ascii[1] = ~uint64_t(0), f.other = true; break;
        }
        state[size_t(pc)] = 2;
        return f;
    };
    for (size_t pc = 0; pc < prog_.size(); ++pc) visit(visit, int(pc));
}

bool PretokenRegex::run(int pc, const uint32_t* cps, size_t n, size_t pos, size_t& end, size_t& budget,
                        Stack& stack, int depth) const {
    if (depth > 16) throw std::invalid_argument("unsupported regex: lookaheads nested deeper than 16");
    stack.clear();
    for (;;) {
        if (budget-- == 0) throw std::invalid_argument("pre-tokenizer regex: backtracking limit exceeded on this text");
        const Inst& in = prog_[size_t(pc)];
        bool ok = true;
        switch (in.op) {
            case Op::Char:
                if (pos < n && classes_[size_t(in.x)].test(cps[pos])) ++pc, ++pos;
                else ok = false;
                break;
            case Op::Split: {
                const uint32_t cp = pos < n ? cps[pos] : 0x110000;  // past the end: nothing to prune on
                const bool x_ok = pos >= n || can_start(in.x, cp), y_ok = pos >= n || can_start(in.y, cp);
                if (x_ok && y_ok) stack.emplace_back(in.y, pos), pc = in.x;
                else if (x_ok) pc = in.x;
                else if (y_ok) pc = in.y;
                else ok = false;
                break;
            }
            case Op::Jmp: pc = in.x; break;
            case Op::Match: end = pos; return true;
            case Op::Look: {
                size_t e;
                Stack inner;  // allocates only if the lookahead itself branches
                if (run(in.x, cps, n, pos, e, budget, inner, depth + 1) != in.negated) pc = in.y;
                else ok = false;
                break;
            }
        }
        if (!ok) {
            if (stack.empty()) return false;
            pc = stack.back().first;
            pos = stack.back().second;
            stack.pop_back();
        }
    }
}

bool PretokenRegex::find(const uint32_t* cps, size_t n, size_t from, size_t& begin, size_t& end) const {
    // Generous for real patterns (a few steps per alternative per character), small enough that a
    // pathological one ends with an error.
    size_t budget = 10000 + 1000 * (n - from);
    Stack stack;
    for (size_t s = from; s < n; ++s)
        if (run(0, cps, n, s, end, budget, stack, 0)) {
            begin = s;
            return true;
        }
    return false;
}

}  // namespace tqkv::detail
