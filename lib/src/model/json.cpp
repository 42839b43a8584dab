#include "model/json.hpp"

#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace tqkv::detail {

const JsonValue* JsonValue::find(std::string_view key) const {
    if (type != Type::Object) return nullptr;
    for (size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == key) return &values[i];
    return nullptr;
}

const char* JsonValue::type_name(Type t) {
    switch (t) {
        case Type::Null: return "null";
        case Type::Bool: return "boolean";
        case Type::Number: return "number";
        case Type::String: return "string";
        case Type::Array: return "array";
        case Type::Object: return "object";
    }
    return "?";
}

namespace {

class Parser {
public:
    Parser(std::string_view s, const std::string& what) : s_(s), what_(what) {}

    JsonValue document() {
        JsonValue v = value(0);
        ws();
        if (p_ != s_.size()) fail("unexpected trailing characters");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string& msg) const {
        throw std::invalid_argument(what_ + ": invalid JSON at byte " + std::to_string(p_) + ": " + msg);
    }
    void ws() {
        while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
    }
    char peek() {
        ws();
        if (p_ >= s_.size()) fail("unexpected end of text");
        return s_[p_];
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++p_;
    }
    bool literal(std::string_view w) {
        if (s_.substr(p_, w.size()) == w) {
            p_ += w.size();
            return true;
        }
        return false;
    }

    JsonValue value(int depth) {
        if (depth > 64) fail("nesting deeper than 64 levels");
        const char c = peek();
        JsonValue v;
        if (c == '{') {
            ++p_;
            v.type = JsonValue::Type::Object;
            if (peek() == '}') {
                ++p_;
                return v;
            }
            for (;;) {
                if (peek() != '"') fail("expected a string key");
                std::string k = string();
                expect(':');
                JsonValue member = value(depth + 1);
                v.keys.push_back(std::move(k));
                v.values.push_back(std::move(member));
                const char n = peek();
                ++p_;
                if (n == '}') break;
                if (n != ',') fail("expected ',' or '}' in an object");
            }
        } else if (c == '[') {
            ++p_;
            v.type = JsonValue::Type::Array;
            if (peek() == ']') {
                ++p_;
                return v;
            }
            for (;;) {
                v.arr.push_back(value(depth + 1));
                const char n = peek();
                ++p_;
                if (n == ']') break;
                if (n != ',') fail("expected ',' or ']' in an array");
            }
        } else if (c == '"') {
            v.type = JsonValue::Type::String;
            v.str = string();
        } else if (literal("true")) {
            v.type = JsonValue::Type::Bool;
            v.b = true;
        } else if (literal("false")) {
            v.type = JsonValue::Type::Bool;
        } else if (literal("null")) {
            v.type = JsonValue::Type::Null;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            number(v);
        } else {
            fail(std::string("unexpected character '") + c + "'");
        }
        return v;
    }

    void number(JsonValue& v) {
        const size_t start = p_;
        auto digits = [&] {
            const size_t d0 = p_;
            while (p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9') ++p_;
            if (p_ == d0) fail("malformed number");
        };
        bool integral = true;
        if (s_[p_] == '-') ++p_;
        digits();
        if (p_ < s_.size() && s_[p_] == '.') {
            ++p_;
            digits();
            integral = false;
        }
        if (p_ < s_.size() && (s_[p_] == 'e' || s_[p_] == 'E')) {
            ++p_;
            if (p_ < s_.size() && (s_[p_] == '+' || s_[p_] == '-')) ++p_;
            digits();
            integral = false;
        }
        v.type = JsonValue::Type::Number;
        v.str = std::string(s_.substr(start, p_ - start));
        v.num = std::strtod(v.str.c_str(), nullptr);
        v.integral = integral;
        if (!std::isfinite(v.num)) fail("number out of range");
    }

    static void utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) {
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

    uint32_t hex4() {
        if (p_ + 4 > s_.size()) fail("truncated \\u escape");
        uint32_t cp = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = s_[p_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= uint32_t(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= uint32_t(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= uint32_t(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return cp;
    }

    std::string string() {
        ++p_;  // opening quote (checked by the caller)
        std::string out;
        for (;;) {
            if (p_ >= s_.size()) fail("unterminated string");
            const char c = s_[p_++];
            if (c == '"') break;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (p_ >= s_.size()) fail("unterminated string");
            const char e = s_[p_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = hex4();
                    if (cp >= 0xd800 && cp < 0xdc00 && p_ + 6 <= s_.size() && s_[p_] == '\\' && s_[p_ + 1] == 'u') {
                        p_ += 2;
                        const uint32_t lo = hex4();
                        if (lo >= 0xdc00 && lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        else fail("bad surrogate pair");
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail(std::string("bad escape '\\") + e + "'");
            }
        }
        return out;
    }

    std::string_view s_;
    const std::string& what_;
    size_t p_ = 0;
};

}  // namespace

JsonValue parse_json(std::string_view text, const std::string& what) { return Parser(text, what).document(); }

}  // namespace tqkv::detail
