// Shared plumbing of the tqkv-bench subcommands (bench.hpp): arguments, JSON, tables, threads, files.
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

#include "bench.hpp"

namespace bench {

Args::Args(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
        a = a.substr(2);
        const auto eq = a.find('=');
        if (eq != std::string::npos) {
            values_[a.substr(0, eq)] = a.substr(eq + 1);
        } else if (i + 1 < argc && std::strncmp(argv[i + 1], "--", 2) != 0) {
            values_[a] = argv[++i];
        } else {
            values_[a] = "";
        }
    }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
}

int Args::get_int(const std::string& name, int fallback) const {
    const std::string v = get(name, "");
    if (v.empty()) return fallback;
    size_t pos;
    const long r = std::stol(v, &pos);
    if (pos != v.size()) throw std::invalid_argument("--" + name + " expects an integer, got '" + v + "'");
    return int(r);
}

double Args::get_double(const std::string& name, double fallback) const {
    const std::string v = get(name, "");
    if (v.empty()) return fallback;
    size_t pos;
    const double r = std::stod(v, &pos);
    if (pos != v.size()) throw std::invalid_argument("--" + name + " expects a number, got '" + v + "'");
    return r;
}

std::vector<std::string> Args::list(const std::string& name, const std::string& fallback) const {
    std::vector<std::string> out;
    std::stringstream ss(get(name, fallback));
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

void Args::allow(const std::vector<std::string>& known) const {
    for (const auto& [k, v] : values_) {
        bool ok = false;
        for (const auto& n : known) ok = ok || n == k;
        if (!ok) throw std::invalid_argument("unknown option --" + k);
    }
}

// JSON string contents: quotes, backslashes and control characters escaped, invalid UTF-8 bytes
// written as U+FFFD (JSON text must be UTF-8).
std::string json_escape(const std::string& s) {
    std::string out;
    const auto* u = reinterpret_cast<const unsigned char*>(s.data());
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c < 0x20 || c == 0x7f) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", c);
            out += b;
        } else if (c < 0x80) {
            out += char(c);
        } else {
            // A well-formed UTF-8 sequence passes; anything else becomes U+FFFD.
            const size_t need = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            bool ok = need > 0 && i + need <= s.size();
            for (size_t k = 1; ok && k < need; ++k) ok = (u[i + k] & 0xc0) == 0x80;
            if (ok && need == 3) ok = !(c == 0xe0 && u[i + 1] < 0xa0) && !(c == 0xed && u[i + 1] >= 0xa0);
            if (ok && need == 4) ok = !(c == 0xf0 && u[i + 1] < 0x90) && !(c == 0xf4 && u[i + 1] >= 0x90);
            if (ok) {
                out.append(s, i, need);
                i += need;
                continue;
            }
            out += "\xef\xbf\xbd";
        }
        ++i;
    }
    return out;
}

void Json::key(const std::string& k) {
    if (!body_.empty()) body_ += ",";
    body_ += '"';
    body_ += json_escape(k);
    body_ += "\":";
}

Json& Json::add(const std::string& k, const std::string& value) {
    key(k);
    body_ += '"';
    body_ += json_escape(value);
    body_ += '"';
    return *this;
}

Json& Json::add(const std::string& k, double value) {
    key(k);
    if (!std::isfinite(value)) {
        body_ += "null";
    } else {
        // Whole numbers (bytes, counts) exactly; measurements to 7 significant digits.
        char buf[64];
        if (value == std::floor(value) && std::fabs(value) < 9.007199254740992e15)
            std::snprintf(buf, sizeof buf, "%.0f", value);
        else
            std::snprintf(buf, sizeof buf, "%.7g", value);
        body_ += buf;
    }
    return *this;
}

Json& Json::raw(const std::string& k, const std::string& json) {
    key(k);
    body_ += json;
    return *this;
}

Json& Json::add(const std::string& k, bool value) {
    key(k);
    body_ += value ? "true" : "false";
    return *this;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument("cannot open " + path);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, v);
    return buf;
}

void Table::print(FILE* out) const {
    std::vector<size_t> w(header_.size(), 0);
    for (size_t i = 0; i < header_.size(); ++i) w[i] = header_[i].size();
    for (const auto& r : rows_)
        for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    auto line = [&](const std::vector<std::string>& cells) {
        for (size_t i = 0; i < w.size(); ++i)
            std::fprintf(out, "%s%*s", i ? "  " : "", int(w[i]), i < cells.size() ? cells[i].c_str() : "");
        std::fprintf(out, "\n");
    };
    line(header_);
    std::string rule;
    for (size_t i = 0; i < w.size(); ++i) rule += std::string(w[i] + (i ? 2 : 0), '-');
    std::fprintf(out, "%s\n", rule.c_str());
    for (const auto& r : rows_) line(r);
}

}  // namespace bench
