// A tiny JSON reader for config.json and safetensors headers (RFC 8259 subset: everything but
// surrogate-pair validation). Errors throw std::invalid_argument with the byte offset.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tqkv::detail {

struct JsonValue {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool b = false;
    double num = 0;
    bool integral = false;  // the number was written without fraction or exponent
    std::string str;        // String value; also the raw text of a Number (exact integers)
    std::vector<JsonValue> arr;
    // Object members in document order: keys[i] names values[i]. (Two vectors rather than a
    // vector of pairs: a pair needs the complete type, a vector does not.)
    std::vector<std::string> keys;
    std::vector<JsonValue> values;

    bool is_object() const { return type == Type::Object; }
    const JsonValue* find(std::string_view key) const;  // nullptr when absent or not an object
    static const char* type_name(Type t);
};

// Parses a whole document (trailing whitespace only). `what` names the document in errors.
// Nesting deeper than 64 levels is rejected (hostile input).
JsonValue parse_json(std::string_view text, const std::string& what);

}  // namespace tqkv::detail
