// tqkv-bench report: for each method and bit rate, memory, attention fidelity and speed, side
// by side with the formats people use today, on the built-in synthetic data or a real KV dump.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>

#include "commands.hpp"
#include "tqkv/baselines.hpp"
#include "tqkv/tqkv.hpp"

namespace bench {
namespace {

// ---------------------------------------------------------------------------------------------
// Methods

struct MethodSpec {
    std::string name;   // family: tqkv-mse, tqkv-prod, tqkv-cal, qjl, polar, kivi, turbo, q4_0, q4_0-rot,
                        // q4_0-rots, q8_0, q8_0-rot, q8_0-rots, fp16
    double bits;        // nominal bits of the family's own parameter
    bool tqkv;          // one of ours (the rows baselines are compared against)
    std::string spec;   // tqkv-cal: the cache spec (tqkv/spec.hpp)
    std::string preset; // tqkv-cal: the preset it comes from, if any
    MethodSpec(std::string n, double b, bool ours, std::string sp = "", std::string pr = "")
        : name(std::move(n)), bits(b), tqkv(ours), spec(std::move(sp)), preset(std::move(pr)) {}
    std::string label() const {
        if (name == "tqkv-cal") return name + "-" + spec;
        if (name.rfind("q4_0", 0) == 0 || name.rfind("q8_0", 0) == 0 || name == "fp16" || name == "qjl") return name;
        if (name == "turbo") return name + std::to_string(int(bits));  // the fork's own names: turbo3, turbo4
        std::ostringstream s;
        s << name << "-" << bits;
        return s.str();
    }
};

std::vector<MethodSpec> default_methods() {
    std::vector<MethodSpec> m = {
        {"tqkv-mse", 2, true},   {"tqkv-mse", 2.5, true},  {"tqkv-mse", 3, true},  {"tqkv-mse", 3.5, true},
        {"tqkv-mse", 4, true},   {"tqkv-mse", 5, true},    {"tqkv-mse", 6, true},  {"tqkv-mse", 8, true},
        {"tqkv-prod", 2, true},  {"tqkv-prod", 3, true},   {"tqkv-prod", 4, true}, {"qjl", 1, true}};
    // The calibrated cache of the presets (channel means and high channels from the dump's first
    // half of tokens; what tqkv-run and the npm package build): every preset that uses a calibration.
    for (const auto& p : tqkv::presets()) {
        const tqkv::CacheSpec s = tqkv::CacheSpec::parse(p.spec);
        if (s.auto_bits > 0) continue;  // auto rates need a model's sensitivity probe; a dump has no model
        if (s.center_keys || s.center_values || s.debias_keys || s.debias_values)
            m.push_back({"tqkv-cal", (s.key_bits + s.value_bits) / 2, true, p.spec, p.name});
    }
    for (MethodSpec b : std::vector<MethodSpec>{
             {"polar", 4, false},    {"kivi", 2, false},      {"kivi", 4, false},      {"turbo", 3, false},
             {"turbo", 4, false},    {"q4_0", 4, false},      {"q4_0-rot", 4, false},  {"q4_0-rots", 4, false},
             {"q8_0", 8, false},     {"q8_0-rot", 8, false},  {"q8_0-rots", 8, false}, {"fp16", 16, false}})
        m.push_back(b);
    return m;
}

// ---------------------------------------------------------------------------------------------
// One method on one layer: decoded keys/values, attention outputs of the evaluated queries, and
// a function that runs one query's attention (all heads) for timing.

struct LayerRun {
    std::vector<float> keys, values;  // decoded, [kv_heads][tokens][dim]
    std::vector<float> out;           // [n_eval][heads][dim]
    double bits_per_coord = 0;
    std::function<void()> attend_one;
    std::shared_ptr<void> keep;       // owns what attend_one uses
};

std::vector<int> calibrate(const float* x, int kv_heads, size_t tokens, int d, double bits) {
    // Highest-energy channels over the first quarter of the tokens of every KV head.
    const int count = int(std::lround((bits - std::floor(bits)) * d));
    const size_t n = std::max<size_t>(1, tokens / 4);
    std::vector<float> calib;
    for (int h = 0; h < kv_heads; ++h) calib.insert(calib.end(), x + h * tokens * d, x + (h * tokens + n) * d);
    return tqkv::choose_high_channels(calib, d, count);
}

LayerRun run_tqkv(const MethodSpec& m, const tqkv::KvDump& dump, int layer, size_t n_eval, const std::string& kernel) {
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads;
    const size_t T = dump.tokens;
    tqkv::CacheConfig cfg;
    cfg.heads = H;
    cfg.kv_heads = KH;
    cfg.head_dim = d;
    cfg.key_bits = cfg.value_bits = m.bits;
    cfg.key_method = m.name == "tqkv-prod" ? tqkv::Method::Prod : tqkv::Method::Mse;
    cfg.kernel = kernel;
    const float* K = dump.key(layer, 0, 0);
    const float* V = dump.value(layer, 0, 0);
    if (m.bits != std::floor(m.bits)) {
        cfg.key_high_channels = calibrate(K, KH, T, d, m.bits);
        cfg.value_high_channels = calibrate(V, KH, T, d, m.bits);
    }
    auto cache = std::make_shared<tqkv::KVCache>(cfg);
    std::vector<float> kt(KH * size_t(d)), vt(kt.size());
    for (size_t t = 0; t < T; ++t) {  // token-major rows, the way a runtime appends
        for (int h = 0; h < KH; ++h) {
            std::copy_n(dump.key(layer, h, t), d, &kt[size_t(h) * d]);
            std::copy_n(dump.value(layer, h, t), d, &vt[size_t(h) * d]);
        }
        cache->append(kt, vt);
    }
    LayerRun r;
    for (int h = 0; h < KH; ++h) {
        const auto k = cache->decode_keys(h), v = cache->decode_values(h);
        r.keys.insert(r.keys.end(), k.begin(), k.end());
        r.values.insert(r.values.end(), v.begin(), v.end());
    }
    std::vector<float> q(n_eval * H * size_t(d));
    for (size_t i = 0; i < n_eval; ++i)
        for (int h = 0; h < H; ++h) std::copy_n(dump.query(layer, h, T - n_eval + i), d, &q[(i * H + h) * d]);
    r.out.resize(q.size());
    cache->attend(q, r.out, true);  // the product path: fused attention, causal
    r.bits_per_coord = cache->compressed_bytes_per_token() * 8.0 / (2.0 * KH * d);
    auto last = std::make_shared<std::vector<float>>(q.end() - H * size_t(d), q.end());
    auto out1 = std::make_shared<std::vector<float>>(H * size_t(d));
    r.attend_one = [cache, last, out1] { cache->attend(*last, *out1, false); };
    r.keep = cache;
    return r;
}

// The calibrated cache of a spec, as a runtime builds it: tqkv::layer_config from a Calibration of
// the dump's first half of tokens, tokens appended one at a time, and each evaluated query attended
// right after its own token was appended (what decode computes: its exact window included).
LayerRun run_calibrated(const MethodSpec& m, const tqkv::KvDump& dump, int layer, size_t n_eval,
                        const std::string& kernel, const tqkv::Calibration& cal) {
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads;
    const size_t T = dump.tokens;
    const tqkv::CacheShape shape{dump.layers, H, KH, d};
    tqkv::CacheConfig base;
    base.kernel = kernel;
    auto cache = std::make_shared<tqkv::KVCache>(tqkv::layer_config(tqkv::CacheSpec::parse(m.spec), shape, layer, &cal, base));
    LayerRun r;
    r.out.resize(n_eval * H * size_t(d));
    std::vector<float> kt(KH * size_t(d)), vt(kt.size()), q(H * size_t(d));
    for (size_t t = 0; t < T; ++t) {
        for (int h = 0; h < KH; ++h) {
            std::copy_n(dump.key(layer, h, t), d, &kt[size_t(h) * d]);
            std::copy_n(dump.value(layer, h, t), d, &vt[size_t(h) * d]);
        }
        cache->append(kt, vt);
        if (t + n_eval >= T) {
            for (int h = 0; h < H; ++h) std::copy_n(dump.query(layer, h, t), d, &q[size_t(h) * d]);
            cache->attend(q, std::span(r.out).subspan((t + n_eval - T) * H * size_t(d), H * size_t(d)), true);
        }
    }
    for (int h = 0; h < KH; ++h) {
        const auto k = cache->decode_keys(h), v = cache->decode_values(h);
        r.keys.insert(r.keys.end(), k.begin(), k.end());
        r.values.insert(r.values.end(), v.begin(), v.end());
    }
    // Everything stored, the exact window counted at fp16 (the convention of tqkv-bench ppl).
    r.bits_per_coord = cache->format_bytes() * 8.0 / (2.0 * double(T) * KH * d);
    auto last = std::make_shared<std::vector<float>>(q);
    auto out1 = std::make_shared<std::vector<float>>(H * size_t(d));
    r.attend_one = [cache, last, out1] { cache->attend(*last, *out1, false); };
    r.keep = cache;
    return r;
}

// The calibration of every layer from the dump's first `tokens` tokens (keys, values, queries).
tqkv::Calibration calibrate_dump(const tqkv::KvDump& dump, size_t tokens) {
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads;
    tqkv::Calibration cal(dump.layers, KH, d);
    for (int l = 0; l < dump.layers; ++l) {
        std::vector<float> K(tokens * KH * size_t(d)), V(K.size()), Q(tokens * H * size_t(d));
        for (size_t t = 0; t < tokens; ++t) {
            for (int h = 0; h < KH; ++h) {
                std::copy_n(dump.key(l, h, t), d, &K[(t * KH + h) * d]);
                std::copy_n(dump.value(l, h, t), d, &V[(t * KH + h) * d]);
            }
            for (int h = 0; h < H; ++h) std::copy_n(dump.query(l, h, t), d, &Q[(t * H + h) * d]);
        }
        cal.add(l, K, V);
        cal.add_queries(l, H, Q);
    }
    return cal;
}

LayerRun run_format(const MethodSpec& m, const tqkv::KvDump& dump, int layer, size_t n_eval, const std::string& kernel) {
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads, G = H / KH;
    const size_t T = dump.tokens;
    auto make = [&](bool keys) -> std::unique_ptr<tqkv::BaselineFormat> {
        if (m.name == "qjl") {
            tqkv::CodecConfig c;
            c.dim = d;
            c.kernel = kernel;
            c.method = keys ? tqkv::Method::Qjl : tqkv::Method::Mse;
            c.bits = keys ? 1 : 2;  // QJL keys with 2-bit TurboQuant values
            return std::make_unique<tqkv::CodecFormat>(c, keys);
        }
        tqkv::BaselineConfig b;
        b.bits = int(m.bits);
        if (m.name == "fp16") b.kind = tqkv::BaselineKind::Fp16;
        else if (m.name.rfind("q8_0", 0) == 0) b.kind = tqkv::BaselineKind::Q8_0;
        else if (m.name.rfind("q4_0", 0) == 0) b.kind = tqkv::BaselineKind::Q4_0;
        else if (m.name == "kivi") b.kind = tqkv::BaselineKind::Kivi;
        else if (m.name == "turbo") b.kind = tqkv::BaselineKind::Turbo;
        else b.kind = tqkv::BaselineKind::Polar;
        if (m.name.ends_with("-rot")) b.rotation = tqkv::BaselineRotation::Hadamard;
        if (m.name.ends_with("-rots")) b.rotation = tqkv::BaselineRotation::HadamardSigns;
        return tqkv::BaselineFormat::make(b, d, keys);
    };
    auto formats = std::make_shared<std::vector<std::unique_ptr<tqkv::BaselineFormat>>>();
    LayerRun r;
    size_t bytes = 0;
    for (int h = 0; h < KH; ++h) {
        for (bool keys : {true, false}) {
            auto f = make(keys);
            f->encode(keys ? dump.key(layer, h, 0) : dump.value(layer, h, 0), T);
            bytes += f->bytes();
            std::vector<float> dec(T * d);
            f->decode(dec.data());
            (keys ? r.keys : r.values).insert((keys ? r.keys : r.values).end(), dec.begin(), dec.end());
            formats->push_back(std::move(f));
        }
    }
    r.bits_per_coord = 8.0 * bytes / (2.0 * KH * T * d);
    // Attention through the format's own score and weighted-sum paths.
    const float scale = float(1.0 / std::sqrt(double(d)));
    auto attend = [formats, d, KH, G, T, scale](const float* q, size_t visible, float* out) {
        std::vector<float> s(T);
        for (int h = 0; h < KH; ++h)
            for (int g = 0; g < G; ++g) {
                const int head = h * G + g;
                (*formats)[2 * h]->scores(q + size_t(head) * d, s.data());
                float mx = -INFINITY;
                for (size_t t = 0; t < visible; ++t) mx = std::max(mx, s[t] *= scale);
                double sum = 0;
                for (size_t t = 0; t < T; ++t) sum += (s[t] = t < visible ? std::exp(s[t] - mx) : 0.0f);
                for (size_t t = 0; t < visible; ++t) s[t] = float(s[t] / sum);
                (*formats)[2 * h + 1]->weighted_sum(s.data(), out + size_t(head) * d);
            }
    };
    r.out.resize(n_eval * H * size_t(d));
    std::vector<float> q(H * size_t(d));
    for (size_t i = 0; i < n_eval; ++i) {
        for (int h = 0; h < H; ++h) std::copy_n(dump.query(layer, h, T - n_eval + i), d, &q[size_t(h) * d]);
        attend(q.data(), T - n_eval + i + 1, &r.out[i * H * d]);
    }
    auto last = std::make_shared<std::vector<float>>(q);
    auto out1 = std::make_shared<std::vector<float>>(H * size_t(d));
    r.attend_one = [attend, last, out1, T] { attend(last->data(), T, out1->data()); };
    r.keep = formats;
    return r;
}

// ---------------------------------------------------------------------------------------------
// Metrics

struct Metrics {
    double bits_per_coord = 0, key_mse = 0, ip_rmse = 0, score_corr = 0, attn_cosine = 0, top1 = 0, top5 = 0,
           top10 = 0, ns_per_query = 0, dense_ns = 0;
};

// Median ns of fn() over batches of at least 10 ms within `budget` seconds.
double time_ns(const std::function<void()>& fn, double budget) {
    fn();
    int reps = 1;
    for (;;) {
        const double t0 = now();
        for (int i = 0; i < reps; ++i) fn();
        if (now() - t0 > 0.01) break;
        reps *= 2;
    }
    std::vector<double> per;
    const double start = now();
    while (per.size() < 3 || (now() - start < budget && per.size() < 9)) {
        const double t0 = now();
        for (int i = 0; i < reps; ++i) fn();
        per.push_back((now() - t0) / reps * 1e9);
    }
    std::sort(per.begin(), per.end());
    return per[per.size() / 2];
}

double topk_overlap(const std::vector<double>& a, const std::vector<double>& b, size_t k) {
    k = std::min(k, a.size());
    std::vector<size_t> ia(a.size()), ib(b.size());
    std::iota(ia.begin(), ia.end(), 0);
    std::iota(ib.begin(), ib.end(), 0);
    std::partial_sort(ia.begin(), ia.begin() + k, ia.end(), [&](size_t x, size_t y) { return a[x] > a[y]; });
    std::partial_sort(ib.begin(), ib.begin() + k, ib.end(), [&](size_t x, size_t y) { return b[x] > b[y]; });
    std::sort(ia.begin(), ia.begin() + k);
    std::sort(ib.begin(), ib.begin() + k);
    std::vector<size_t> common;
    std::set_intersection(ia.begin(), ia.begin() + k, ib.begin(), ib.begin() + k, std::back_inserter(common));
    return double(common.size()) / k;
}

Metrics measure(const LayerRun& r, const tqkv::KvDump& dump, int layer, size_t n_eval) {
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads, G = H / KH;
    const size_t T = dump.tokens;
    const double scale = 1.0 / std::sqrt(double(d));
    Metrics m;
    m.bits_per_coord = r.bits_per_coord;
    double err = 0, norm = 0;
    for (int h = 0; h < KH; ++h)
        for (size_t t = 0; t < T; ++t) {
            const float* k = dump.key(layer, h, t);
            const float* kh = &r.keys[(size_t(h) * T + t) * d];
            for (int j = 0; j < d; ++j) err += double(k[j] - kh[j]) * (k[j] - kh[j]), norm += double(k[j]) * k[j];
        }
    m.key_mse = err / norm;
    double ip2 = 0;
    size_t ip_n = 0, rows = 0;
    std::vector<double> s(T), sh(T), p(T), ph(T), o(d);
    for (int head = 0; head < H; ++head) {
        const int kvh = head / G;
        for (size_t i = 0; i < n_eval; ++i) {
            const size_t pos = T - n_eval + i, vis = pos + 1;
            const float* q = dump.query(layer, head, pos);
            double mx = -1e300, mxh = -1e300;
            for (size_t t = 0; t < vis; ++t) {
                double a = 0, b = 0;
                const float* k = dump.key(layer, kvh, t);
                const float* kh = &r.keys[(size_t(kvh) * T + t) * d];
                for (int j = 0; j < d; ++j) a += double(q[j]) * k[j], b += double(q[j]) * kh[j];
                s[t] = a * scale, sh[t] = b * scale;
                mx = std::max(mx, s[t]), mxh = std::max(mxh, sh[t]);
                ip2 += (sh[t] - s[t]) * (sh[t] - s[t]);
            }
            ip_n += vis;
            // Score correlation (Pearson) over the visible tokens.
            double ms = 0, mh = 0;
            for (size_t t = 0; t < vis; ++t) ms += s[t], mh += sh[t];
            ms /= vis, mh /= vis;
            double sxy = 0, sxx = 0, syy = 0;
            for (size_t t = 0; t < vis; ++t)
                sxy += (s[t] - ms) * (sh[t] - mh), sxx += (s[t] - ms) * (s[t] - ms), syy += (sh[t] - mh) * (sh[t] - mh);
            m.score_corr += sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 1.0;
            // Exact attention weights and output (fp32 inputs, double arithmetic).
            double sum = 0, sumh = 0;
            for (size_t t = 0; t < vis; ++t) sum += (p[t] = std::exp(s[t] - mx)), sumh += (ph[t] = std::exp(sh[t] - mxh));
            std::fill(o.begin(), o.end(), 0.0);
            for (size_t t = 0; t < vis; ++t) {
                const float* v = dump.value(layer, kvh, t);
                for (int j = 0; j < d; ++j) o[j] += p[t] / sum * v[j];
            }
            const float* oh = &r.out[(i * H + head) * d];
            double dot = 0, n1 = 0, n2 = 0;
            for (int j = 0; j < d; ++j) dot += o[j] * oh[j], n1 += o[j] * o[j], n2 += double(oh[j]) * oh[j];
            m.attn_cosine += dot / std::sqrt(n1 * n2);
            const std::vector<double> pa(p.begin(), p.begin() + vis), pb(ph.begin(), ph.begin() + vis);
            m.top1 += topk_overlap(pa, pb, 1);
            m.top5 += topk_overlap(pa, pb, 5);
            m.top10 += topk_overlap(pa, pb, 10);
            ++rows;
        }
    }
    m.ip_rmse = std::sqrt(ip2 / ip_n);
    for (double* x : {&m.score_corr, &m.attn_cosine, &m.top1, &m.top5, &m.top10}) *x /= rows;
    return m;
}

// ---------------------------------------------------------------------------------------------
// Output

std::string cpu_name() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown";
}

struct Row {
    std::string method, label;
    double bits;
    bool tqkv;
    std::string layer;  // number or "all"
    Metrics m;
    std::string spec, preset;  // tqkv-cal rows
};

Row make_row(const MethodSpec& m, std::string layer, const Metrics& metrics) {
    return {m.name, m.label(), m.bits, m.tqkv, std::move(layer), metrics, m.spec, m.preset};
}

Json row_json(const Row& r) {
    Json j;
    j.add("method", r.method).add("bits", r.bits).add("label", r.label).add("layer", r.layer)
        .add("bits_per_coord", r.m.bits_per_coord).add("key_mse", r.m.key_mse).add("ip_rmse", r.m.ip_rmse)
        .add("score_corr", r.m.score_corr).add("attn_cosine", r.m.attn_cosine).add("top1", r.m.top1)
        .add("top5", r.m.top5).add("top10", r.m.top10).add("ns_per_query", r.m.ns_per_query)
        .add("dense_fp32_ns_per_query", r.m.dense_ns).add("tqkv", r.tqkv);
    if (!r.spec.empty()) j.add("spec", r.spec);
    if (!r.preset.empty()) j.add("preset", r.preset);
    return j;
}

struct Verdict {
    std::string baseline, tqkv;
    double baseline_bits, tqkv_bits, baseline_cos, tqkv_cos;
    bool found, wins;
};

// For each baseline: the best tqkv row (by attention-output cosine) at equal or fewer bits, among
// the tqkv rows `among` accepts.
std::vector<Verdict> verdicts(const std::vector<Row>& all, const std::function<bool(const Row&)>& among) {
    std::vector<Verdict> out;
    for (const auto& b : all) {
        if (b.tqkv) continue;
        Verdict v{b.label, "", b.m.bits_per_coord, 0, b.m.attn_cosine, 0, false, false};
        for (const auto& t : all)
            if (t.tqkv && among(t) && t.m.bits_per_coord <= b.m.bits_per_coord + 1e-9 && (!v.found || t.m.attn_cosine > v.tqkv_cos)) {
                v.found = true;
                v.tqkv = t.label;
                v.tqkv_bits = t.m.bits_per_coord;
                v.tqkv_cos = t.m.attn_cosine;
            }
        v.wins = v.found && v.tqkv_cos > v.baseline_cos;
        out.push_back(v);
    }
    return out;
}

std::string verdict_text(const Verdict& v) {
    if (!v.found) return "no tqkv row at <= " + fmt("%.3g", v.baseline_bits) + " bits";
    std::ostringstream s;
    s << (v.wins ? "tqkv wins: " : "tqkv loses: ") << v.tqkv << " (" << fmt("%.3g", v.tqkv_bits) << " b) cos "
      << fmt("%.5f", v.tqkv_cos) << " vs " << fmt("%.5f", v.baseline_cos);
    return s.str();
}

}  // namespace

int cmd_report(const Args& args) {
    args.allow({"data", "json", "markdown", "tokens", "queries", "layers", "seed", "kernel", "seconds", "methods"});
    const std::string kernel = args.get("kernel", "");
    const size_t n_eval_req = size_t(args.get_int("queries", 64));
    const double budget = args.get_double("seconds", 0.05);

    tqkv::KvDump dump;
    if (args.flag("data")) {
        dump = tqkv::load_kv_dump(args.get("data", "."));
    } else {
        tqkv::SyntheticConfig sc;
        sc.tokens = size_t(args.get_int("tokens", 1024));
        sc.layers = args.get_int("layers", 2);
        sc.seed = uint64_t(args.get_int("seed", 1));
        dump = tqkv::make_synthetic(sc);
    }
    if (args.flag("data") && args.flag("tokens")) {  // evaluate a prefix of a long dump
        const size_t T = std::min(dump.tokens, size_t(args.get_int("tokens", int(dump.tokens))));
        tqkv::KvDump cut = dump;
        cut.tokens = T;
        auto trim = [&](const std::vector<float>& src, int heads) {
            std::vector<float> dst;
            for (int l = 0; l < dump.layers; ++l)
                for (int h = 0; h < heads; ++h) {
                    const float* p = &src[((size_t(l) * heads + h) * dump.tokens) * dump.head_dim];
                    dst.insert(dst.end(), p, p + T * dump.head_dim);
                }
            return dst;
        };
        cut.keys = trim(dump.keys, dump.kv_heads);
        cut.values = trim(dump.values, dump.kv_heads);
        cut.queries = trim(dump.queries, dump.heads);
        dump = std::move(cut);
    }
    const size_t n_eval = std::min(n_eval_req, dump.tokens);
    std::vector<MethodSpec> methods = default_methods();
    if (args.flag("methods")) {
        const auto keep = args.list("methods", "");
        std::erase_if(methods, [&](const MethodSpec& m) {
            return std::find(keep.begin(), keep.end(), m.name) == keep.end() &&
                   std::find(keep.begin(), keep.end(), m.label()) == keep.end();
        });
    }
    const std::string kname = kernel.empty() ? tqkv::default_kernel() : kernel;
    // Calibrated rows: statistics of the first half of the tokens; the evaluated queries are the
    // last ones (disjoint as long as queries <= tokens / 2).
    const size_t n_cal = std::max<size_t>(1, dump.tokens / 2);
    tqkv::Calibration cal;
    if (std::any_of(methods.begin(), methods.end(), [](const MethodSpec& m) { return m.name == "tqkv-cal"; }))
        cal = calibrate_dump(dump, n_cal);

    const bool progress = isatty(2);
    const size_t total = methods.size() * dump.layers;
    size_t done = 0;
    std::vector<Row> rows;
    for (int l = 0; l < dump.layers; ++l) {
        // Dense fp32 reference speed for this layer, same run.
        std::vector<float> Kd(dump.key(l, 0, 0), dump.key(l, 0, 0) + size_t(dump.kv_heads) * dump.tokens * dump.head_dim);
        std::vector<float> Vd(dump.value(l, 0, 0), dump.value(l, 0, 0) + Kd.size());
        std::vector<float> q1(size_t(dump.heads) * dump.head_dim), o1(q1.size());
        for (int h = 0; h < dump.heads; ++h) std::copy_n(dump.query(l, h, dump.tokens - 1), dump.head_dim, &q1[h * dump.head_dim]);
        const tqkv::DenseAttentionShape shape{dump.heads, dump.kv_heads, dump.head_dim, dump.tokens, 0};
        const double dense_ns = time_ns([&] { tqkv::dense_attention_f32(shape, q1.data(), Kd.data(), Vd.data(), o1.data(), kname); }, budget);
        std::vector<uint16_t> Kh(Kd.size()), Vh(Vd.size());
        for (size_t i = 0; i < Kd.size(); ++i) Kh[i] = tqkv::float_to_half(Kd[i]), Vh[i] = tqkv::float_to_half(Vd[i]);
        for (const auto& m : methods) {
            if (progress) {
                std::fprintf(stderr, "\r[%-30s] %zu/%zu layer %d %-14s", std::string(30 * done / total, '#').c_str(), done,
                             total, l, m.label().c_str());
                std::fflush(stderr);
            }
            LayerRun r = m.name == "tqkv-cal"          ? run_calibrated(m, dump, l, n_eval, kernel, cal)
                         : m.tqkv && m.name != "qjl" ? run_tqkv(m, dump, l, n_eval, kernel)
                                                     : run_format(m, dump, l, n_eval, kernel);
            Row row = make_row(m, std::to_string(l), measure(r, dump, l, n_eval));
            // fp16 is timed on the dense fp16 kernel (what an fp16 cache runs), the rest on their own path.
            row.m.ns_per_query = m.name == "fp16"
                                     ? time_ns([&] { tqkv::dense_attention_f16(shape, q1.data(), Kh.data(), Vh.data(), o1.data(), kname); }, budget)
                                     : time_ns(r.attend_one, budget);
            row.m.dense_ns = dense_ns;
            rows.push_back(row);
            ++done;
        }
    }
    if (progress) std::fprintf(stderr, "\r%80s\r", "");

    // Aggregate over layers: means (key_mse pooled as the mean of per-layer relative errors).
    std::vector<Row> all;
    for (const auto& m : methods) {
        Row a = make_row(m, "all", {});
        int n = 0;
        for (const auto& r : rows)
            if (r.label == m.label()) {
                ++n;
                a.m.bits_per_coord += r.m.bits_per_coord, a.m.key_mse += r.m.key_mse, a.m.ip_rmse += r.m.ip_rmse;
                a.m.score_corr += r.m.score_corr, a.m.attn_cosine += r.m.attn_cosine, a.m.top1 += r.m.top1;
                a.m.top5 += r.m.top5, a.m.top10 += r.m.top10, a.m.ns_per_query += r.m.ns_per_query;
                a.m.dense_ns += r.m.dense_ns;
            }
        for (double* x : {&a.m.bits_per_coord, &a.m.key_mse, &a.m.ip_rmse, &a.m.score_corr, &a.m.attn_cosine, &a.m.top1,
                          &a.m.top5, &a.m.top10, &a.m.ns_per_query, &a.m.dense_ns})
            *x /= n;
        all.push_back(a);
    }
    const auto vs = verdicts(all, [](const Row&) { return true; });
    const auto vs_cal = verdicts(all, [](const Row& r) { return r.method == "tqkv-cal"; });
    const bool any_cal = std::any_of(all.begin(), all.end(), [](const Row& r) { return r.method == "tqkv-cal"; });

    std::ostringstream data_desc;
    data_desc << dump.source << "; " << dump.layers << " layers, " << dump.heads << " query heads / " << dump.kv_heads
              << " KV heads, head_dim " << dump.head_dim << ", " << dump.tokens << " tokens; metrics over the last "
              << n_eval << " queries of each head (causal)";
    if (any_cal) data_desc << "; tqkv-cal rows calibrated on the first " << n_cal << " tokens";
    Table table({"method", "bits/coord", "key mse", "ip rmse", "score corr", "attn cos", "top1", "top5", "top10",
                 "ns/query", "vs fp32"});
    for (const auto& a : all)
        table.row({a.label, fmt("%.3f", a.m.bits_per_coord), fmt("%.5f", a.m.key_mse), fmt("%.4f", a.m.ip_rmse),
                   fmt("%.5f", a.m.score_corr), fmt("%.5f", a.m.attn_cosine), fmt("%.3f", a.m.top1),
                   fmt("%.3f", a.m.top5), fmt("%.3f", a.m.top10), fmt("%.0f", a.m.ns_per_query),
                   fmt("%.2fx", a.m.dense_ns / a.m.ns_per_query)});
    std::printf("tqkv-bench report — %s\nkernel %s on %s, one thread\n\n", data_desc.str().c_str(), kname.c_str(),
                cpu_name().c_str());
    table.print();
    std::printf("\nAgainst each baseline, the best tqkv row at equal or fewer bits per coordinate (attention-output cosine):\n");
    for (const auto& v : vs) std::printf("  %-9s (%.3g b): %s\n", v.baseline.c_str(), v.baseline_bits, verdict_text(v).c_str());
    if (any_cal) {
        std::printf("\nThe calibrated cache (tqkv-cal rows) against each baseline, at equal or fewer bits per coordinate:\n");
        for (const auto& v : vs_cal)
            std::printf("  %-9s (%.3g b): %s\n", v.baseline.c_str(), v.baseline_bits, verdict_text(v).c_str());
    }

    if (args.flag("json")) {
        std::ofstream f(args.get("json", "report.json"));
        Json h;
        h.add("type", "header").add("data", dump.source).add("layers", dump.layers).add("heads", dump.heads)
            .add("kv_heads", dump.kv_heads).add("head_dim", dump.head_dim).add("tokens", dump.tokens)
            .add("queries_evaluated", n_eval).add("kernel", kname).add("cpu", cpu_name()).add("threads", 1)
            .add("score_units", "logits (q.k / sqrt(d))");
        f << h.str() << "\n";
        for (const auto& r : rows) f << row_json(r).str() << "\n";
        for (const auto& a : all) f << row_json(a).str() << "\n";
        for (const auto* set : {&vs, &vs_cal}) {
            if (set == &vs_cal && !any_cal) break;
            for (const auto& v : *set) {
                Json j;
                j.add("type", "verdict").add("baseline", v.baseline).add("baseline_bits_per_coord", v.baseline_bits)
                    .add("baseline_attn_cosine", v.baseline_cos).add("tqkv", v.tqkv).add("tqkv_bits_per_coord", v.tqkv_bits)
                    .add("tqkv_attn_cosine", v.tqkv_cos).add("tqkv_wins", v.wins)
                    .add("among", set == &vs ? "tqkv" : "tqkv-cal");
                f << j.str() << "\n";
            }
        }
        if (!f) throw std::runtime_error("cannot write " + args.get("json", ""));
    }
    if (args.flag("markdown")) {
        std::ofstream f(args.get("markdown", "report.md"));
        f << "# tqkv report\n\n**Data:** " << data_desc.str() << "\n\n**Machine:** " << cpu_name() << ", kernel `" << kname
          << "`, one thread.\n\n## All layers\n\n| method | bits/coord | key mse | ip rmse | score corr | attn cos | top1 | top5 | top10 | ns/query | vs dense fp32 |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
        for (const auto& a : all)
            f << "| " << a.label << " | " << fmt("%.3f", a.m.bits_per_coord) << " | " << fmt("%.5f", a.m.key_mse) << " | "
              << fmt("%.4f", a.m.ip_rmse) << " | " << fmt("%.5f", a.m.score_corr) << " | " << fmt("%.5f", a.m.attn_cosine)
              << " | " << fmt("%.3f", a.m.top1) << " | " << fmt("%.3f", a.m.top5) << " | " << fmt("%.3f", a.m.top10) << " | "
              << fmt("%.0f", a.m.ns_per_query) << " | " << fmt("%.2fx", a.m.dense_ns / a.m.ns_per_query) << " |\n";
        f << "\n## tqkv against each baseline\n\nThe best tqkv configuration at equal or fewer bits per coordinate, by "
             "attention-output cosine:\n\n";
        for (const auto& v : vs) f << "- **" << v.baseline << "** (" << fmt("%.3g", v.baseline_bits) << " bits): " << verdict_text(v) << "\n";
        if (any_cal) {
            f << "\nThe calibrated cache (tqkv-cal rows) alone:\n\n";
            for (const auto& v : vs_cal)
                f << "- **" << v.baseline << "** (" << fmt("%.3g", v.baseline_bits) << " bits): " << verdict_text(v) << "\n";
        }
        f << "\n## Attention-output cosine per layer\n\n| method |";
        for (int l = 0; l < dump.layers; ++l) f << " layer " << l << " |";
        f << "\n|---|";
        for (int l = 0; l < dump.layers; ++l) f << "---|";
        f << "\n";
        for (const auto& m : methods) {
            f << "| " << m.label() << " |";
            for (const auto& r : rows)
                if (r.label == m.label()) f << " " << fmt("%.5f", r.m.attn_cosine) << " |";
            f << "\n";
        }
        f << "\n## Columns\n\n- bits/coord: storage per coordinate, keys and values averaged, every norm, scale, zero point "
             "and fp16 residual token included.\n- key mse: sum ||k - k^||^2 / sum ||k||^2.\n- ip rmse: RMS error of the "
             "attention logits q.k/sqrt(d).\n- score corr: Pearson correlation of exact and approximate logits over the "
             "visible tokens, mean over queries.\n- attn cos: cosine of the attention output against exact fp32 attention.\n"
             "- topK: overlap of the K highest attention weights.\n- ns/query: one query token, all heads, over all tokens, "
             "on the method's own attention path (tqkv: fused kernels, SIMD for 1-4 bit codes and scalar above; baselines: "
             "plain reference loops over their formats, not optimized kernels; fp16: the dense fp16 kernel); vs dense "
             "fp32: speed relative to dense fp32 attention in the same run.\n"
             "- tqkv-cal-SPEC: the calibrated cache of a preset (tqkv::Calibration of the first half of the tokens: channel "
             "means, high channels; debiased logits and values; exact recent window counted at fp16 in bits/coord), tokens "
             "appended one by one and each evaluated query attended right after its token (decode).\n"
             "- q4_0-rot, q8_0-rot: llama.cpp's Hadamard rotation (ggml-org/llama.cpp#21038; keys and queries over blocks of "
             "the largest power of two dividing head_dim, values over blocks of 64, output rotated back); -rots: random signs "
             "first. turbo-B: TurboQuant+'s turboB cache type (tqkv/baselines.hpp).\n";
        if (!f) throw std::runtime_error("cannot write " + args.get("markdown", ""));
    }
    return 0;
}

}  // namespace bench
