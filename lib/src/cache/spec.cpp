// The cache spec grammar (tqkv/spec.hpp): parsing and presets.
#include "tqkv/spec.hpp"

#include <cctype>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace tqkv {

namespace {

const char* kGrammar =
    "cache spec: fp32 | exact | fp16 | q8_0 | q4_0 | q8_0-rot | q4_0-rot | q8_0-rots | q4_0-rots | turbo2 | turbo3 | "
    "turbo4 | kivi2 | kivi4 | K<bits>V<bits>[-opt...] (bits 1..8, e.g. K4V3, "
    "K3.5V2.5-w16) with options w<N> (exact recent window), prod, raw, nc, nck, ncv, nta, nvd, t<x> (logit scale), "
    "x<seed>, l<i>=K<b>V<b> (rates of layer i; l-1 = the last layer), s<N> (sinks, emulated), emu, exact | fast (attention arithmetic); auto-<bits>[-w<N>] (rates per layer from the calibration); or a preset: default, quality, balanced, "
    "compact, smallest, balanced-b, compact-b, plain4, plain3, auto-3.5, auto-2.5";

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("tqkv cache spec: " + m + "; " + kGrammar); }

// The number s[from..]: false unless all of it parses (no exceptions escape, no partial reads).
bool number_at(const std::string& s, size_t from, double& x) {
    if (s.size() <= from) return false;
    const std::string t = s.substr(from);
    // Only plain decimal numbers: strtod would also take hex, "inf" and "nan".
    for (char c : t)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+'))
            return false;
    std::istringstream in(t);
    in.imbue(std::locale::classic());
    in >> x;
    return in && in.peek() == std::char_traits<char>::eof() && std::isfinite(x);
}

double parse_bits(const std::string& s, const std::string& spec) {
    double b = 0;
    if (!number_at(s, 0, b) || !(b >= 1 && b <= 8)) fail("bad bits '" + s + "' in '" + spec + "' (1..8)");
    return b;
}

// "K4V3" -> (4, 3); false when s does not look like K<b>V<b> at all.
bool parse_kv(const std::string& s, const std::string& spec, double& kb, double& vb) {
    if (s.size() < 4 || (s[0] != 'K' && s[0] != 'k')) return false;
    const size_t vpos = s.find_first_of("Vv");
    if (vpos == std::string::npos || vpos < 2) return false;
    kb = parse_bits(s.substr(1, vpos - 1), spec);
    vb = parse_bits(s.substr(vpos + 1), spec);
    return true;
}

const std::vector<CachePreset> kPresets = {
    {"default", "K3.5V2.5-w16", "3.45 b/coord; the best trade-off measured on tq-ref-128 (+0.09% ΔNLL)"},
    {"quality", "K4V3-w16", "3.82 b/coord; ΔNLL within noise of the exact cache on tq-ref-128"},
    {"balanced", "K3V2.5-w16", "3.14 b/coord"},
    {"compact", "K3V2-w16", "2.83 b/coord"},
    {"smallest", "K2.5V1.5-w16", "2.47 b/coord"},
    // Boundary layers: the first and the last layer one bit higher on both sides (what vLLM and
    // TurboQuant+ do by default); costs 2 / layers bits per coordinate more than the uniform preset.
    {"balanced-b", "K3V2.5-w16-l0=K4V3.5-l-1=K4V3.5", "balanced with the first and last layers at K4V3.5"},
    {"compact-b", "K3V2-w16-l0=K4V3-l-1=K4V3", "compact with the first and last layers at K4V3"},
    {"auto-3.5", "auto-3.5", "rates per layer chosen by the calibration within 3.5 b/coord"},
    {"auto-2.5", "auto-2.5", "rates per layer chosen by the calibration within 2.5 b/coord"},
    {"plain4", "K4V4-raw", "plain TurboQuant, 4 bits, no calibration used"},
    {"plain3", "K3V3-raw", "plain TurboQuant, 3 bits, no calibration used"},
};

}  // namespace

const char* cache_spec_grammar() { return kGrammar; }

const char* to_string(Precision p) { return p == Precision::Fast ? "fast" : "exact"; }

Precision precision_from_string(const std::string& name) {
    if (name == "exact") return Precision::Exact;
    if (name == "fast") return Precision::Fast;
    throw std::invalid_argument("tqkv: unknown precision '" + name + "' (exact, fast)");
}

const std::vector<CachePreset>& presets() { return kPresets; }

CacheSpec CacheSpec::parse(const std::string& spec) {
    for (const auto& p : kPresets)
        if (spec == p.name && spec != p.spec) {
            CacheSpec s = parse(p.spec);
            s.text = spec;
            return s;
        }
    CacheSpec o;
    o.text = spec;
    if (spec == "fp32" || spec == "exact") return o.format = Format::Exact, o;
    if (spec == "fp16") return o.format = Format::Fp16, o;
    if (spec == "kivi2") return o.format = Format::Kivi2, o;
    if (spec == "kivi4") return o.format = Format::Kivi4, o;
    if (spec.empty()) fail("empty spec");
    if (spec.size() > 4096) fail("spec longer than 4096 characters");
    std::vector<std::string> parts;
    {
        std::stringstream ss(spec);
        std::string p;
        while (std::getline(ss, p, '-')) {
            // "l-1=K4V3" (a layer counted from the end) is one option, not "l" and "1=K4V3".
            if (!parts.empty() && parts.back() == "l") parts.back() += "-" + p;
            else parts.push_back(p);
        }
    }
    if (parts.empty()) fail("unknown '" + spec + "'");
    auto number = [&](const std::string& p, size_t from) {
        double x = 0;
        if (!number_at(p, from, x)) fail("bad option '" + p + "' in '" + spec + "'");
        return x;
    };
    // Whole numbers in [0, max], checked before any conversion (a huge double does not fit an int).
    auto integer = [&](const std::string& p, size_t from, double max) {
        const double x = number(p, from);
        if (x != std::floor(x) || x < 0 || x > max)
            fail("option '" + p + "' in '" + spec + "' needs a whole number in [0, " + std::to_string(uint64_t(max)) + "]");
        return x;
    };
    // The llama.cpp formats with a rotation, TurboQuant+: the name, then rot / rots / x<seed>.
    const std::string& head = parts[0];
    if (head == "q8_0" || head == "q4_0" || head == "turbo2" || head == "turbo3" || head == "turbo4") {
        const bool q = head[0] == 'q';
        if (q) o.format = head == "q8_0" ? Format::Q8_0 : Format::Q4_0;
        else o.format = Format::Turbo, o.key_bits = o.value_bits = head[5] - '0';
        bool seeded = false;
        for (size_t i = 1; i < parts.size(); ++i) {
            const std::string& p = parts[i];
            if (q && (p == "rot" || p == "rots") && o.rotation == BaselineRotation::None)
                o.rotation = p == "rot" ? BaselineRotation::Hadamard : BaselineRotation::HadamardSigns;
            else if (p.size() > 1 && p[0] == 'x' && !seeded) o.seed = uint64_t(integer(p, 1, 9007199254740992.0)), seeded = true;
            else fail("unknown option '" + p + "' in '" + spec + "' (" + head + " takes " + (q ? "rot, rots, x<seed>" : "x<seed>") + ")");
        }
        if (seeded && q && o.rotation != BaselineRotation::HadamardSigns)
            fail("x<seed> in '" + spec + "': only the random signs of -rots (and turbo) have a seed");
        return o;
    }
    size_t first_option = 1;
    if (head == "auto") {
        // auto-<b>: K and V rates per layer from the calibration; b covers codes, norms and window.
        if (parts.size() < 2 || !number_at(parts[1], 0, o.auto_bits) || !(o.auto_bits >= 1.5 && o.auto_bits <= 8))
            fail("'" + spec + "': auto needs a budget in bits per coordinate in [1.5, 8], e.g. auto-3.5");
        o.key_bits = o.value_bits = o.auto_bits;
        o.window = 16;
        first_option = 2;
    } else if (!parse_kv(head, spec, o.key_bits, o.value_bits)) {
        fail("unknown '" + spec + "'");
    }
    for (size_t i = first_option; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        if (p == "prod") o.key_method = Method::Prod;
        else if (p == "mse") o.key_method = Method::Mse;
        else if (p == "raw") o.center_keys = o.center_values = o.debias_keys = o.debias_values = false;
        else if (p == "nc") o.center_keys = o.center_values = false;
        else if (p == "nck") o.center_keys = false;
        else if (p == "ncv") o.center_values = false;
        else if (p == "ta") o.debias_keys = true;
        else if (p == "nta") o.debias_keys = false;
        else if (p == "vd") o.debias_values = true;
        else if (p == "nvd") o.debias_values = false;
        else if (p == "emu") o.emulate = true;
        else if (p == "exact") o.precision = Precision::Exact;
        else if (p == "fast") o.precision = Precision::Fast;
        else if (p.size() > 1 && p[0] == 'x') o.seed = uint64_t(integer(p, 1, 9007199254740992.0));
        else if (p.size() > 1 && p[0] == 'w') o.window = int(integer(p, 1, 4096));
        else if (p.size() > 1 && p[0] == 's' && std::isdigit(static_cast<unsigned char>(p[1]))) o.sinks = int(integer(p, 1, 4096));
        else if (p.size() > 1 && p[0] == 't') {
            o.logit_scale = number(p, 1);
            if (!(o.logit_scale > 0 && o.logit_scale < 1e30)) fail("logit scale must be in (0, 1e30) in '" + spec + "'");
        } else if (p.size() > 3 && p[0] == 'l' && p.find('=') != std::string::npos) {
            const size_t eq = p.find('=');
            LayerRate lr;
            // l<i>: layer i; l-<i>: the i-th layer from the end (l-1 = the last), resolved against
            // the model's layer count (check_layers, layer_key_bits).
            const bool from_end = p.size() > 2 && p[1] == '-';
            lr.layer = int(integer(p.substr(0, eq), from_end ? 2 : 1, 1024));
            if (from_end) lr.layer = -lr.layer;
            if (lr.layer == 0 && from_end) fail("layer option '" + p + "' in '" + spec + "': l-<i> counts from the end, l-1 is the last layer");
            if (lr.layer == 1024) fail("option '" + p + "' in '" + spec + "' needs a layer in [0, 1023] (or -1024..-1 from the end)");
            if (!parse_kv(p.substr(eq + 1), spec, lr.key_bits, lr.value_bits)) fail("bad layer option '" + p + "' in '" + spec + "'");
            o.layer_rates.push_back(lr);
        } else {
            fail("unknown option '" + p + "' in '" + spec + "'");
        }
    }
    if (o.key_method == Method::Prod && o.key_bits < 2) fail("prod keys need at least 2 bits in '" + spec + "'");
    if (o.auto_bits > 0 && (o.key_method != Method::Mse || !o.layer_rates.empty() || o.emulate || o.sinks))
        fail("'" + spec + "': auto rates take window, seed, centring, debias and precision options only");
    for (const auto& lr : o.layer_rates)
        if (o.key_method == Method::Prod && lr.key_bits < 2) fail("prod keys need at least 2 bits in '" + spec + "'");
    return o;
}

int CacheSpec::LayerRate::resolve(int layers) const { return layer < 0 ? layers + layer : layer; }

double CacheSpec::layer_key_bits(int layer, int layers) const {
    check_layers(layers);
    double b = key_bits;
    for (const auto& lr : layer_rates)
        if (lr.resolve(layers) == layer) b = lr.key_bits;
    return b;
}

double CacheSpec::layer_value_bits(int layer, int layers) const {
    check_layers(layers);
    double b = value_bits;
    for (const auto& lr : layer_rates)
        if (lr.resolve(layers) == layer) b = lr.value_bits;
    return b;
}

void CacheSpec::check_layers(int layers) const {
    for (const auto& lr : layer_rates)
        if (lr.layer >= layers || lr.layer < -layers)
            fail("layer " + std::to_string(lr.layer) + " out of range in '" + text + "' (the model has " +
                 std::to_string(layers) + " layers: 0.." + std::to_string(layers - 1) + ", or -1..-" +
                 std::to_string(layers) + " from the end)");
}

}  // namespace tqkv
