// tqkv-bench ppl: what a user of a KV cache asks — does the model still predict the same text?
// Runs a real Llama model (tqkv::LlamaRunner) over held-out text with the exact fp32 cache and
// with each cache configuration, and reports the negative log-likelihood per byte, its change,
// how often the argmax prediction matches the exact cache's, and the cache's bytes per token.
// --frontier sweeps configurations and prints, per method, the fewest bits per coordinate that
// keep ΔNLL within 0.5%, 1% and 3%.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>

#include "commands.hpp"
#include "tqkv/kvdump.hpp"
#include "tqkv/model.hpp"
#include "tqkv/tokenizer.hpp"
#include "tqkv/tqkv.hpp"

namespace bench {
namespace {

// The configurations of a plain run: every family at its rates. tqkv specs use the default
// preconditioning (centered keys and values, debiased logits) unless "-raw" (plain TurboQuant).
std::vector<std::string> default_configs() {
    return {// baselines: llama.cpp's formats as they were and as llama.cpp runs them today (rotated),
            // KIVI, TurboQuant+'s cache types
            "fp16", "q8_0", "q4_0", "q8_0-rot", "q4_0-rot", "q8_0-rots", "q4_0-rots", "kivi4", "kivi2", "turbo4", "turbo3",
            // plain TurboQuant (no preconditioning, no window), K = V
            "K4V4-raw", "K3.5V3.5-raw", "K3V3-raw", "K2.5V2.5-raw", "K2V2-raw",
            // tqkv, mse keys: K = V, K > V, then with a recent window of 16 exact tokens
            "K4V4", "K3.5V3.5", "K3V3", "K2.5V2.5", "K2V2", "K4V3", "K4V2", "K3.5V2.5", "K3V2", "K2.5V2",
            "K4V3-w16", "K3.5V2.5-w16", "K3V2.5-w16", "K3V2-w16", "K2.5V1.5-w16", "K2V2-w16", "K3V3-w64",
            // tqkv, prod keys
            "K4V4-prod", "K3V3-prod", "K2.5V2.5-prod", "K3.5V2.5-prod-w16"};
}

// The --frontier sweep.
std::vector<std::string> frontier_configs() {
    std::vector<std::string> c = {"fp16",  "q8_0",   "q4_0",   "q8_0-rot", "q4_0-rot", "q8_0-rots", "q4_0-rots",
                                  "kivi4", "kivi2", "turbo4", "turbo3",   "turbo2"};
    for (const char* b : {"2", "2.5", "3", "3.5", "4", "5"}) c.push_back(std::string("K") + b + "V" + b + "-raw");
    for (const char* kv : {"K3V2", "K3V3", "K4V3", "K4V4", "K5V4", "K5V5"}) c.push_back(std::string(kv) + "-prod");
    const char* kb[] = {"2", "2.5", "3", "3.5", "4"};
    const char* vb[] = {"2", "2.5", "3", "3.5", "4"};
    for (int k = 0; k < 5; ++k)
        for (int v = 0; v <= k; ++v) c.push_back(std::string("K") + kb[k] + "V" + vb[v]);
    for (const char* w : {"-w8", "-w16", "-w32"})
        for (int k = 0; k < 5; ++k)
            for (int v = 0; v <= std::min(k, 2); ++v) c.push_back(std::string("K") + kb[k] + "V" + vb[v] + w);
    // Values below 2 bits; layer-adaptive rates: the last layer higher (l-1, whatever the depth),
    // and the boundary presets (first and last layers one bit higher; their uniform ones are above).
    for (const char* x : {"K2V1.5-w16", "K2.5V1.5-w16", "K3V1.5-w16", "K2V2-w16-l-1=K3V2", "K3V2-w16-l-1=K4V3",
                          "K3V2.5-w16-l-1=K4V3", "compact-b", "balanced-b",
                          "K2.5V1.5-w16-l0=K3.5V2.5-l-1=K3.5V2.5"})
        c.push_back(x);
    // Rates chosen per layer by the calibration pass (one probe serves all of them).
    for (const char* b : {"2.5", "3", "3.5", "4"}) c.push_back(std::string("auto-") + b);
    return c;
}

// Families of the frontier table: a row can count for several.
struct Family {
    const char* name;
    bool (*member)(const std::string& method, int window);
};
const Family kFamilies[] = {
    {"tqkv (centered, debiased, recent window)", [](const std::string& m, int) { return m == "tqkv-mse"; }},
    {"tqkv without window", [](const std::string& m, int w) { return m == "tqkv-mse" && w == 0; }},
    {"tqkv auto rates (auto-<b>, per-layer plan)", [](const std::string& m, int) { return m == "tqkv-mse-auto"; }},
    {"TurboQuant plain (K=V, no window)", [](const std::string& m, int) { return m == "tqkv-mse-raw"; }},
    {"tqkv-prod keys", [](const std::string& m, int) { return m == "tqkv-prod"; }},
    {"q4_0", [](const std::string& m, int) { return m == "q4_0"; }},
    {"q4_0-rot (llama.cpp's Hadamard rotation)", [](const std::string& m, int) { return m == "q4_0-rot"; }},
    {"q4_0-rots (rotation with random signs)", [](const std::string& m, int) { return m == "q4_0-rots"; }},
    {"q8_0", [](const std::string& m, int) { return m == "q8_0"; }},
    {"q8_0-rot", [](const std::string& m, int) { return m == "q8_0-rot"; }},
    {"q8_0-rots", [](const std::string& m, int) { return m == "q8_0-rots"; }},
    {"turbo (TurboQuant+ turbo2/3/4)", [](const std::string& m, int) { return m == "turbo"; }},
    {"kivi", [](const std::string& m, int) { return m == "kivi"; }},
    {"fp16", [](const std::string& m, int) { return m == "fp16"; }},
};

struct Row {
    std::string config, method;
    std::string preset;                  // the preset name when config is one
    std::string prefill = "sequential";  // how prefill chunks attend: "sequential" (token by token) or "chunked"
    double key_bits = 0, value_bits = 0;
    int window = 0;
    double bits_per_coord = 0, nll = 0, delta_pct = 0, argmax_agree = 0, bytes_per_token = 0, tokens_per_s = 0;
    double memory_bytes = 0;
    double delta_min = 0, delta_max = 0;  // over seeds
    int seeds = 1;
    std::string plan;    // auto specs: the per-layer rates (RatePlan::json)
};

// Family and nominal rates of a spec (or preset), from the one spec parser.
void describe(const std::string& config, Row& r) {
    using F = tqkv::CacheSpec::Format;
    r.config = config;
    for (const auto& p : tqkv::presets())
        if (config == p.name) r.preset = p.name;
    const tqkv::CacheSpec s = tqkv::CacheSpec::parse(config);
    auto nominal = [&](const std::string& m, double b) {
        r.method = m;
        r.key_bits = r.value_bits = b;
    };
    const char* rot = s.rotation == tqkv::BaselineRotation::Hadamard        ? "-rot"
                      : s.rotation == tqkv::BaselineRotation::HadamardSigns ? "-rots"
                                                                            : "";
    switch (s.format) {
        case F::Exact: return nominal("exact", 32);
        case F::Fp16: return nominal("fp16", 16);
        case F::Q8_0: return nominal(std::string("q8_0") + rot, 8);
        case F::Q4_0: return nominal(std::string("q4_0") + rot, 4);
        case F::Kivi2: return nominal("kivi", 2);
        case F::Kivi4: return nominal("kivi", 4);
        case F::Turbo: return nominal("turbo", s.key_bits);
        case F::Tqkv: break;
    }
    r.key_bits = s.key_bits;
    r.value_bits = s.value_bits;
    r.window = s.window;
    const bool raw = !s.center_keys && !s.center_values && !s.debias_keys && !s.debias_values;
    r.method = std::string("tqkv-") + (s.key_method == tqkv::Method::Prod ? "prod" : "mse") + (raw ? "-raw" : "") +
               (s.auto_bits > 0 ? "-auto" : "");
    if (s.auto_bits > 0) r.preset = config;
}

// Configurations whose caches draw something random from the spec's seed (rotations, signs):
// averaged over --seeds.
bool seeded(const Row& r) {
    return r.method.rfind("tqkv", 0) == 0 || r.method == "turbo" || r.method.ends_with("-rots");
}

// ours: tqkv rows; a baseline: everything else but the exact cache.
bool is_tqkv(const Row& r) { return r.method.rfind("tqkv", 0) == 0; }

// Forwards to a cache and times its attend() calls.
class TimedCache final : public tqkv::AttentionCache {
public:
    explicit TimedCache(tqkv::AttentionCache& inner) : AttentionCache(inner.shape()), c_(inner) {}
    std::string name() const override { return c_.name(); }
    void append(int l, std::span<const float> k, std::span<const float> v) override {
        const double t0 = now();
        c_.append(l, k, v);
        append_seconds += now() - t0;
    }
    bool set_attention_window(size_t w) override { return c_.set_attention_window(w); }
    void attend(int l, std::span<const float> q, std::span<float> o) override {
        c_.set_attend_options(attend_options());  // what the runner asked of this cache
        const double t0 = now();
        c_.attend(l, q, o);
        seconds += now() - t0;
    }
    size_t tokens(int l) const override { return c_.tokens(l); }
    void clear() override { c_.clear(); }
    void reserve(size_t n) override { c_.reserve(n); }
    double format_bytes() const override { return c_.format_bytes(); }
    double held_coords() const override { return c_.held_coords(); }
    size_t memory_bytes() const override { return c_.memory_bytes(); }
    double seconds = 0, append_seconds = 0;  // in attend, in append

private:
    tqkv::AttentionCache& c_;
};

}  // namespace

// tqkv-bench decode: tokens/s of token-by-token decode at a given context length, per cache.
int cmd_decode(const Args& args) {
    args.allow({"model", "context", "steps", "config", "json", "repeats", "tokenizer", "threads", "skip"});
    const std::string dir = args.get("model", "");
    if (dir.empty()) throw std::invalid_argument("decode: --model DIR is required");
    const tqkv::LlamaModel model = tqkv::LlamaModel::load(dir);
    const tqkv::LlamaConfig& mc = model.config();
    const tqkv::Tokenizer tok = tqkv::Tokenizer::for_model(dir, size_t(mc.vocab_size), args.get("tokenizer", ""));
    const size_t ctx = size_t(args.get_int("context", mc.max_position_embeddings));
    const size_t steps = size_t(args.get_int("steps", 64));
    const int repeats = std::max(1, args.get_int("repeats", 3));
    const int threads = args.get_int("threads", 1);  // of the runner: matrix products and attention
    tqkv::AttendOptions attend_opt;
    attend_opt.skip_values = float(args.get_double("skip", tqkv::kDefaultSkipValues));
    if (steps < 1 || steps >= ctx) throw std::invalid_argument("decode: need 1 <= --steps < --context");
    const std::vector<uint8_t> bytes = read_file(dir + "/eval.txt");
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (text.size() < 8192) throw std::invalid_argument("decode: eval.txt is too short");
    std::vector<int32_t> tokens = tok.encode(text.substr(0, text.size() - 8192));
    if (tokens.size() < ctx) throw std::invalid_argument("decode: eval.txt is too short for the context");
    tokens.resize(ctx);
    const std::vector<int32_t> calib = tok.encode(text.substr(text.size() - 8192));
    const tqkv::Calibration cal = tqkv::calibrate_kv(model, calib, size_t(mc.max_position_embeddings));
    // Baseline formats (fp16, q8_0, q4_0, kivi) are emulated (exact attention over dequantized
    // fp32), so their speed is not theirs: the default list times the exact and the tqkv caches.
    const auto configs = args.list("config", "fp32,K4V4,K3.5V2.5-w16,K3V2-w16,K2.5V1.5-w16,K2V2-w16");
    const bool json = args.flag("json");
    Table t({"config", "decode tokens/s", "vs fp32 (min)", "ms/token", "attend ms/token", "append ms/token", "bits/coord",
             "cache KiB"});
    std::vector<float> logits(size_t(mc.vocab_size));
    // All caches first, then the repeats interleaved over them, so that load from other
    // processes spreads evenly over the configurations.
    struct Run {
        std::unique_ptr<tqkv::AttentionCache> inner;
        std::unique_ptr<TimedCache> cache;
        std::unique_ptr<tqkv::LlamaRunner> run;
        std::vector<double> per, att, app;
    };
    std::vector<Run> runs;
    for (const auto& spec : configs) {
        Run r;
        r.inner = spec == "fp32" ? tqkv::make_exact_cache(tqkv::CacheShape::of(mc))
                                 : tqkv::make_cache(spec, tqkv::CacheShape::of(mc), &cal);
        r.cache = std::make_unique<TimedCache>(*r.inner);
        r.cache->reserve(ctx);
        r.cache->set_attend_options(attend_opt);
        r.run = std::make_unique<tqkv::LlamaRunner>(model, *r.cache);
        r.run->threads = threads;
        runs.push_back(std::move(r));
    }
    // Every cache is prefilled, then the decode steps go round-robin over the caches, one token
    // each: load from other processes (a shared VM drifts by 10% over seconds) falls on all of
    // them alike, and the ratio to the fp32 cache within each repeat is a paired comparison.
    std::vector<double> step_seconds(runs.size());
    for (int rep = 0; rep < repeats; ++rep) {
        for (size_t k = 0; k < runs.size(); ++k) {
            Run& r = runs[k];
            r.run->reset();
            r.run->prefill(std::span(tokens).first(ctx - steps), logits);
            r.cache->seconds = r.cache->append_seconds = 0;
            step_seconds[k] = 0;
        }
        for (size_t i = ctx - steps; i < ctx; ++i)
            for (size_t k = 0; k < runs.size(); ++k) {
                const double t0 = now();
                runs[k].run->decode(tokens[i], logits);
                step_seconds[k] += now() - t0;
            }
        for (size_t k = 0; k < runs.size(); ++k) {
            Run& r = runs[k];
            r.per.push_back(step_seconds[k] / double(steps));
            r.att.push_back(r.cache->seconds / double(steps));
            r.app.push_back(r.cache->append_seconds / double(steps));
        }
    }
    // The paired speed-up against the fp32 cache (when it is in the list): median over repeats of
    // fp32 time / this cache's time, and the smallest of them.
    const auto fp32_it = std::find(configs.begin(), configs.end(), std::string("fp32"));
    const Run* fp32_run = fp32_it == configs.end() ? nullptr : &runs[size_t(fp32_it - configs.begin())];
    for (size_t i = 0; i < runs.size(); ++i) {
        Run& r = runs[i];
        const std::string& spec = configs[i];
        auto median = [](std::vector<double> v) {
            std::sort(v.begin(), v.end());
            return v[v.size() / 2];
        };
        const double s = median(r.per), a = median(r.att), ap = median(r.app);
        const TimedCache& cache = *r.cache;
        double speedup = 0, speedup_min = 0;
        if (fp32_run) {
            std::vector<double> ratio;
            for (size_t k = 0; k < r.per.size(); ++k) ratio.push_back(fp32_run->per[k] / r.per[k]);
            speedup = median(ratio);
            speedup_min = *std::min_element(ratio.begin(), ratio.end());
        }
        if (json) {
            Json j;
            j.add("config", spec).add("context", ctx).add("steps", steps).add("decode_tokens_per_s", 1.0 / s)
                .add("ms_per_token", s * 1e3).add("attend_ms_per_token", a * 1e3).add("append_ms_per_token", ap * 1e3)
                .add("bits_per_coord", cache.bits_per_coord()).add("cache_bytes", cache.format_bytes())
                .add("matmul", tqkv::matmul_kernel()).add("kernel", tqkv::default_kernel()).add("threads", threads)
                .add("skip_values", double(attend_opt.skip_values));
            if (fp32_run) j.add("speedup_vs_fp32", speedup).add("speedup_vs_fp32_min", speedup_min);
            std::printf("%s\n", j.str().c_str());
        } else {
            t.row({spec, fmt("%.1f", 1.0 / s), fp32_run ? fmt("%.3fx", speedup) + " (" + fmt("%.3fx", speedup_min) + ")" : std::string("-"),
                   fmt("%.3f", s * 1e3), fmt("%.3f", a * 1e3), fmt("%.3f", ap * 1e3),
                   fmt("%.3f", cache.bits_per_coord()), fmt("%.1f", cache.format_bytes() / 1024.0)});
        }
    }
    if (!json) {
        std::printf("tqkv-bench decode — %s: %zu decode steps ending at context %zu (median of %d repeats; the caches take "
                    "turns token by token), %d thread(s), matmul %s, attention kernel %s, weights %.1f MB\n"
                    "vs fp32: median over repeats of (fp32 cache time / this cache's time), smallest in brackets\n\n",
                    dir.c_str(), steps, ctx, repeats, threads, tqkv::matmul_kernel(), tqkv::default_kernel().c_str(),
                    double(model.weight_bytes()) / 1e6);
        t.print();
    }
    return 0;
}

int cmd_ppl(const Args& args) {
    args.allow({"model", "bytes", "offset", "ctx", "json", "frontier", "config", "calib-bytes", "text", "chunked",
                "prefill", "threads", "extra", "seeds", "tokenizer", "tokens", "skip"});
    const std::string dir = args.get("model", "");
    if (dir.empty()) throw std::invalid_argument("ppl: --model DIR is required");
    const tqkv::LlamaModel model = tqkv::LlamaModel::load(dir);
    const tqkv::LlamaConfig& mc = model.config();
    // The model's tokenizer (DIR's tokenizer.json / tokenizer.model, --tokenizer, or bytes for a
    // byte vocabulary): --bytes of text become however many tokens it makes.
    const tqkv::Tokenizer tok = tqkv::Tokenizer::for_model(dir, size_t(mc.vocab_size), args.get("tokenizer", ""));
    const std::string text_path = args.get("text", dir + "/eval.txt");
    const std::vector<uint8_t> text = read_file(text_path);
    const size_t offset = size_t(args.get_int("offset", 0));
    const size_t n_bytes = size_t(args.get_int("bytes", 4096));
    const size_t ctx = size_t(args.get_int("ctx", mc.max_position_embeddings));
    const size_t calib_bytes = size_t(args.get_int("calib-bytes", 8192));
    if (offset + n_bytes > text.size())
        throw std::invalid_argument("ppl: " + text_path + " has " + std::to_string(text.size()) + " bytes, fewer than offset + bytes");
    if (calib_bytes + offset + n_bytes > text.size())
        throw std::invalid_argument("ppl: the calibration text (the last --calib-bytes of the file) would overlap the evaluated bytes");
    // Prefill attention: token by token inside each chunk (decode semantics), the chunk appended
    // and attended causally as one batch (what a runtime does), or both (rows for each).
    const std::string prefill = args.get("prefill", args.flag("chunked") ? "chunked" : "sequential");
    if (prefill != "sequential" && prefill != "chunked" && prefill != "both")
        throw std::invalid_argument("ppl: --prefill must be sequential, chunked or both");
    std::vector<std::string> modes;
    if (prefill != "chunked") modes.push_back("sequential");
    if (prefill != "sequential") modes.push_back("chunked");
    const bool sequential = modes[0] == "sequential";  // of the header and the frontier
    const bool json = args.flag("json"), frontier = args.flag("frontier");
    const int threads = std::max(1, args.get_int("threads", 1));
    // tqkv configurations average over this many rotation seeds (the default seed, then x1, x2, ...):
    // one seed's ΔNLL varies by about ±0.3% at 3 bits on 4096 bytes.
    const int seeds = std::max(1, args.get_int("seeds", 1));
    // Skipped values of the tqkv caches (AttendOptions::skip_values; 0 = none).
    tqkv::AttendOptions attend_opt;
    attend_opt.skip_values = float(args.get_double("skip", tqkv::kDefaultSkipValues));

    auto encode = [&](size_t from, size_t n) {
        std::vector<int32_t> t = tok.encode(std::string_view(reinterpret_cast<const char*>(text.data()) + from, n));
        if (tok.bos_id() >= 0) t.insert(t.begin(), tok.bos_id());  // as the model saw documents begin
        return t;
    };
    // --tokens IDS.npy: exactly these token ids (int32/int64 [T]) instead of --bytes of the text.
    std::vector<int32_t> tokens;
    if (args.flag("tokens")) {
        const tqkv::NpyArray ids = tqkv::load_npy(args.get("tokens", ""));
        if (ids.dtype != "<i4" && ids.dtype != "<i8") throw std::invalid_argument("ppl: --tokens must hold int32 or int64 ids");
        for (float x : ids.data) {
            if (x < 0 || x >= float(mc.vocab_size)) throw std::invalid_argument("ppl: --tokens holds an id outside the vocabulary");
            tokens.push_back(int32_t(x));
        }
    } else {
        tokens = encode(offset, n_bytes);
    }
    // NLL per byte = NLL per token x scored tokens / bytes of text they cover (each context segment's
    // first token is not scored). Byte vocabulary: the same number.
    size_t scored_tokens = 0, scored_bytes = 0;
    for (size_t s0 = 0; s0 + 1 < tokens.size(); s0 += std::max<size_t>(ctx, 2)) {
        const size_t len = std::min(std::max<size_t>(ctx, 2), tokens.size() - s0);
        if (len < 2) break;
        scored_tokens += len - 1;
        scored_bytes += tok.decode(std::vector<int32_t>(tokens.begin() + long(s0 + 1), tokens.begin() + long(s0 + len))).size();
    }
    const double per_byte = scored_bytes ? double(scored_tokens) / double(scored_bytes) : 1.0;
    // Calibration (key/value means, query and o_proj statistics for the preconditioning, high
    // channels): an exact pass over the last calib_bytes of the file, never over the evaluated text.
    const std::vector<int32_t> calib = encode(text.size() - calib_bytes, calib_bytes);
    const double tc0 = now();
    tqkv::Calibration cal = tqkv::calibrate_kv(model, calib, ctx);
    const double calib_s = now() - tc0;

    std::vector<std::string> configs = args.flag("config") ? args.list("config", "")
                                       : frontier             ? frontier_configs()
                                                              : default_configs();
    for (const auto& e : args.list("extra", "")) configs.push_back(e);
    tqkv::CacheShape shape = tqkv::CacheShape::of(mc);
    shape.context = ctx;  // auto budgets count the window over the evaluated context
    // Every spec is checked before anything runs (a bad one stops the run with the grammar).
    bool any_auto = false;
    for (const auto& c : configs) any_auto = any_auto || tqkv::CacheSpec::parse(c).auto_bits > 0;
    // Auto rates need the model's layer sensitivities: a probe on the calibration text (never the
    // evaluated text).
    double sens_s = 0, sens_cpu_s = 0;
    if (any_auto) {
        const double t0 = now(), c0 = cpu_now();
        tqkv::measure_sensitivity(model, cal, calib, ctx, threads);
        sens_s = now() - t0, sens_cpu_s = cpu_now() - c0;
    }

    // The exact cache per prefill mode (the same numbers up to float rounding: exact attention does
    // not depend on how the chunk attends).
    std::vector<tqkv::NllResult> bases;
    std::vector<Row> exacts;
    for (const auto& mode : modes) {
        auto exact_cache = tqkv::make_exact_cache(shape);
        bases.push_back(tqkv::evaluate_nll(model, *exact_cache, tokens, ctx, mode == "sequential"));
        const tqkv::NllResult& b = bases.back();
        Row exact;
        describe("fp32", exact);
        exact.prefill = mode;
        exact.nll = b.nll * per_byte;
        exact.argmax_agree = 1;
        exact.bits_per_coord = b.bits_per_coord;
        exact.bytes_per_token = b.bytes_per_token;
        exact.memory_bytes = double(b.memory_bytes);
        exact.tokens_per_s = double(b.scored) / b.seconds;
        exacts.push_back(exact);
    }
    const tqkv::NllResult& base = bases[0];

    const std::string header = "tqkv-bench ppl — " + dir + ": " + std::to_string(mc.num_hidden_layers) + " layers, " +
                               std::to_string(mc.num_attention_heads) + "/" + std::to_string(mc.num_key_value_heads) +
                               " heads, d " + std::to_string(mc.head_dim) + "; " + std::to_string(n_bytes) + " bytes of " +
                               text_path + " at offset " + std::to_string(offset) + ", context " + std::to_string(ctx) +
                               ", " + (prefill == "both" ? "prefill attention token by token (decode semantics) and chunked"
                                       : sequential         ? "token-by-token attention (decode semantics)"
                                                            : "chunked prefill") +
                               "; calibration: last " + std::to_string(calib_bytes) + " bytes of the file";
    if (json) {
        Json h;
        h.add("type", "header").add("model", dir).add("text", text_path).add("offset", offset).add("bytes", n_bytes)
            .add("ctx", ctx).add("scored", base.scored).add("sequential", sequential).add("prefill", prefill).add("skip_values", double(attend_opt.skip_values))
            .add("calib_bytes", calib_bytes)
            .add("calib_seconds", calib_s).add("sensitivity_seconds", sens_s).add("sensitivity_cpu_seconds", sens_cpu_s).add("matmul", tqkv::matmul_kernel()).add("kernel", tqkv::default_kernel())
            .add("tokenizer", tok.kind()).add("tokens", tokens.size()).add("scored_bytes", scored_bytes)
            .add("nll_per_token", base.nll).add("nll_per_byte", base.nll * per_byte);
        std::printf("%s\n", h.str().c_str());
    } else {
        std::printf("%s\nmatmul %s, attention kernel %s; tokenizer %s: %zu tokens; exact NLL %.6f nats/token, %.6f nats/byte\n"
                    "over %zu positions (%zu bytes)\n\n", header.c_str(), tqkv::matmul_kernel(), tqkv::default_kernel().c_str(),
                    tok.kind().c_str(), tokens.size(), base.nll, base.nll * per_byte, base.scored, scored_bytes);
        if (any_auto)
            std::printf("layer sensitivity probe (auto rates): %.1f s wall, %.1f s CPU (calibration text only)\n\n", sens_s, sens_cpu_s);
    }

    auto emit = [&](const Row& r) {
        Json j;
        j.add("method", r.method).add("config", r.config).add("prefill", r.prefill).add("key_bits", r.key_bits).add("value_bits", r.value_bits)
            .add("window", r.window).add("bits_per_coord", r.bits_per_coord).add("nll", r.nll)
            .add("nll_per_token", r.nll / per_byte).add("delta_pct", r.delta_pct)
            .add("argmax_agree", r.argmax_agree).add("bytes_per_token", r.bytes_per_token)
            .add("tokens_per_s", r.tokens_per_s).add("memory_bytes", r.memory_bytes).add("seeds", r.seeds)
            .add("delta_pct_min", r.delta_min).add("delta_pct_max", r.delta_max);
        if (!r.preset.empty()) j.add("preset", r.preset);
        if (!r.plan.empty()) j.raw("plan", r.plan);
        std::printf("%s\n", j.str().c_str());
        std::fflush(stdout);
    };
    if (json)
        for (const Row& e : exacts) emit(e);

    // One job per configuration and prefill mode (rows: the configurations of the first mode, then
    // of the second).
    const size_t jobs = configs.size() * modes.size();
    std::vector<Row> rows(jobs);
    std::vector<std::string> errors(jobs);
    std::mutex out_mu;
    parallel_for(jobs, threads, [&](size_t job) {
        const size_t i = job % configs.size(), mode = job / configs.size();
        const bool seq = modes[mode] == "sequential";
        const tqkv::NllResult& base = bases[mode];
        Row& r = rows[job];
        try {
            describe(configs[i], r);
            r.prefill = modes[mode];
            const int runs = seeded(r) ? seeds : 1;
            double nll = 0, agree = 0, secs = 0, scored = 0;
            r.delta_min = INFINITY, r.delta_max = -INFINITY;
            for (int s = 0; s < runs; ++s) {
                tqkv::CacheSpec spec = tqkv::CacheSpec::parse(configs[i]);
                if (s) spec.seed = uint64_t(s);  // as the spec option x<s>
                auto cache = tqkv::make_cache(spec, shape, &cal);
                cache->set_attend_options(attend_opt);
                const tqkv::NllResult res = tqkv::evaluate_nll(model, *cache, tokens, ctx, seq);
                size_t a = 0;
                for (size_t t = 0; t < res.argmax.size(); ++t) a += res.argmax[t] == base.argmax[t];
                nll += res.nll;
                agree += double(a) / double(res.argmax.size());
                secs += res.seconds;
                scored += double(res.scored);
                const double dp = 100.0 * (res.nll / base.nll - 1.0);
                r.delta_min = std::min(r.delta_min, dp), r.delta_max = std::max(r.delta_max, dp);
                r.bits_per_coord = res.bits_per_coord;
                r.bytes_per_token = res.bytes_per_token;
                r.memory_bytes = double(res.memory_bytes);
            }
            r.nll = nll / runs * per_byte;
            r.delta_pct = 100.0 * (nll / runs / base.nll - 1.0);
            r.argmax_agree = agree / runs;
            r.tokens_per_s = scored / secs;
            r.seeds = runs;
            if (const tqkv::CacheSpec cs = tqkv::CacheSpec::parse(configs[i]); cs.auto_bits > 0)
                r.plan = tqkv::plan_rates(cs, shape, cal).json();
        } catch (const std::exception& e) {
            errors[job] = e.what();
        }
        std::lock_guard<std::mutex> lock(out_mu);
        if (!errors[job].empty()) std::fprintf(stderr, "ppl: %s: %s\n", configs[i].c_str(), errors[job].c_str());
        else if (json) emit(r);
        else std::fprintf(stderr, "  %-16s %-10s %+.3f%%\n", r.config.c_str(), r.prefill.c_str(), r.delta_pct);
    });
    for (const auto& e : errors)
        if (!e.empty()) return 1;

    if (!json) {
        std::vector<std::string> head = {"config", "method", "K bits", "V bits", "window", "bits/coord", "NLL", "ΔNLL %",
                                         "seed range", "argmax agree", "bytes/token", "tokens/s"};
        if (modes.size() > 1) head.insert(head.begin() + 1, "prefill");
        Table t(head);
        auto add = [&](const Row& r) {
            std::vector<std::string> cells = {r.config, r.method, fmt("%g", r.key_bits), fmt("%g", r.value_bits), std::to_string(r.window),
                   fmt("%.3f", r.bits_per_coord), fmt("%.5f", r.nll), fmt("%+.3f", r.delta_pct),
                   r.seeds > 1 ? fmt("%+.2f", r.delta_min) + ".." + fmt("%+.2f", r.delta_max) : std::string(""),
                   fmt("%.4f", r.argmax_agree),
                   fmt("%.0f", r.bytes_per_token), fmt("%.0f", r.tokens_per_s)};
            if (modes.size() > 1) cells.insert(cells.begin() + 1, r.prefill);
            t.row(cells);
        };
        for (size_t mode = 0; mode < modes.size(); ++mode) {
            add(exacts[mode]);
            for (size_t i = 0; i < configs.size(); ++i) add(rows[mode * configs.size() + i]);
        }
        t.print();
        std::printf("\nΔNLL: change of the mean NLL per byte against the exact fp32 cache (tqkv rows: mean over %d rotation\n"
                    "seed(s), range shown). argmax agree: share of positions whose most likely next byte matches the exact\n"
                    "cache's. bits/coord, bytes/token: the cache at the end of a full context segment, keys and values, every\n"
                    "norm, scale and zero point; window tokens and KIVI's fp16 residual counted at 16 bits. Baselines are\n"
                    "emulated (quantize-dequantize each token, exact attention), so their tokens/s is not their speed.\n",
                    seeds);
    }

    // Verdicts: against each baseline (first prefill mode), the tqkv row with the lowest ΔNLL at
    // equal or fewer bits per coordinate; losses printed like wins.
    {
        const std::span<const Row> first(rows.data(), configs.size());
        bool header_done = false;
        for (const Row& b : first) {
            if (is_tqkv(b)) continue;
            const Row* best = nullptr;
            for (const Row& t : first)
                if (is_tqkv(t) && t.bits_per_coord <= b.bits_per_coord + 1e-9 && (!best || t.delta_pct < best->delta_pct)) best = &t;
            const bool wins = best && best->delta_pct < b.delta_pct;
            if (json) {
                Json j;
                j.add("type", "verdict").add("baseline", b.config).add("baseline_bits_per_coord", b.bits_per_coord)
                    .add("baseline_delta_pct", b.delta_pct).add("tqkv", best ? best->config : std::string())
                    .add("tqkv_bits_per_coord", best ? best->bits_per_coord : NAN)
                    .add("tqkv_delta_pct", best ? best->delta_pct : NAN).add("tqkv_wins", wins);
                std::printf("%s\n", j.str().c_str());
                continue;
            }
            if (!header_done)
                std::printf("\nAgainst each baseline, the tqkv row with the lowest ΔNLL at equal or fewer bits per coordinate:\n");
            header_done = true;
            std::printf("  %-10s (%.3g b, %+.3f%%): ", b.config.c_str(), b.bits_per_coord, b.delta_pct);
            if (!best) std::printf("no tqkv row at <= %.3g bits\n", b.bits_per_coord);
            else
                std::printf("tqkv %s: %s (%.3g b) ΔNLL %+.3f%% vs %+.3f%%\n", wins ? "wins" : "loses", best->config.c_str(),
                            best->bits_per_coord, best->delta_pct, b.delta_pct);
        }
    }

    if (frontier) {
        // Per family: the fewest bits per coordinate with ΔNLL within each threshold (rows of the
        // first prefill mode).
        const std::span<const Row> first(rows.data(), configs.size());
        const double thresholds[] = {0.5, 1.0, 3.0};
        Table t({"method", "ΔNLL ≤ 0.5%", "ΔNLL ≤ 1%", "ΔNLL ≤ 3%"});
        for (const Family& f : kFamilies) {
            bool any = false;
            for (const auto& r : first) any = any || f.member(r.method, r.window);
            if (!any) continue;
            std::vector<std::string> cells = {f.name};
            for (double thr : thresholds) {
                const Row* best = nullptr;
                for (const auto& r : first)
                    if (f.member(r.method, r.window) && r.delta_pct <= thr && (!best || r.bits_per_coord < best->bits_per_coord))
                        best = &r;
                if (json) {
                    Json j;
                    j.add("type", "frontier").add("method", f.name).add("threshold_pct", thr);
                    if (best) j.add("bits_per_coord", best->bits_per_coord).add("config", best->config).add("delta_pct", best->delta_pct);
                    else j.add("bits_per_coord", NAN).add("config", "");
                    std::printf("%s\n", j.str().c_str());
                }
                cells.push_back(best ? fmt("%.3f", best->bits_per_coord) + " (" + best->config + ", " + fmt("%+.2f%%", best->delta_pct) + ")"
                                     : std::string("—"));
            }
            t.row(cells);
        }
        if (!json) {
            std::printf("\nFrontier: fewest bits per coordinate (keys and values averaged, all side data) within each ΔNLL:\n");
            t.print();
        }
    }
    return 0;
}

}  // namespace bench
