// tqkv-bench budget: a KV cache under a byte budget (tqkv/budget.hpp) — what it costs the model
// (ΔNLL on held-out text) and whether it still finds a needle (passkey retrieval), for tqkv's
// tiered cache and the eviction baselines at the same budget.
//
// Passkey prompts: filler text from DIR/eval.txt (a region used for nothing else), a needle at a
// given depth (fraction of the filler before it), then a cue; greedy decoding must reproduce the
// key exactly. The needle format is chosen so that the exact cache retrieves (see --format and the
// report in /tmp/budget_status.md): tq-ref-128, a 19 M-parameter byte model, cannot copy digit
// strings at all, even from the previous line, but copies a common word repeated a few times.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "commands.hpp"
#include "tqkv/budget.hpp"
#include "tqkv/kernels.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"

namespace bench {
namespace {

// Keys of the word format: common words the filler does not make likely after the cue.
const char* kWords[] = {"apple",  "river",  "silver", "garden", "candle", "tiger",  "winter", "orange",
                        "pencil", "castle", "violin", "rabbit", "copper", "forest", "marble", "pepper",
                        "anchor", "button", "dragon", "ribbon", "saddle", "lemon",  "hammer", "meadow"};

struct Trial {
    std::string prompt, no_needle, key;  // no_needle: the same filler and cue without the needle
    double depth = 0;
};

struct PasskeyFormat {
    std::string name;
    bool digits = false;  // key: 5 digits, else a word of `words`
    int repeats = 1;      // needle sentences in a row
    std::string sentence;  // with {} for the key
    std::string cue;
    std::vector<std::string> words = std::vector<std::string>(std::begin(kWords), std::end(kWords));
};

PasskeyFormat passkey_format(const std::string& name) {
    // repl (default): a Python session defines and echoes the key three times; the cue asks for it
    // again. The only format found where the exact cache retrieves at distances of several
    // hundred bytes (see the report); the plain sentence formats retrieve only next to the cue.
    const std::string repl = ">>> passkey = '{}'\n>>> passkey\n'{}'\n";
    if (name == "repl") return {name, false, 3, repl, ">>> passkey\n'"};
    if (name == "repl-digits") return {name, true, 3, repl, ">>> passkey\n'"};
    if (name == "word") return {name, false, 3, "The pass key is {}. ", "\nThe pass key is "};
    if (name == "digits") return {name, true, 1, "The pass key is {}. Remember it. {} is the pass key. ", "\nThe pass key is "};
    throw std::invalid_argument("budget: --format must be repl, repl-digits, word or digits");
}

std::string fill_key(const std::string& s, const std::string& key) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '{' && i + 1 < s.size() && s[i + 1] == '}') out += key, ++i;
        else out.push_back(s[i]);
    }
    return out;
}

// Prompts of `bytes` bytes: filler from `text` starting at line boundaries after `offset`, the
// needle after a line break at `depth` of the filler, the cue at the end.
std::vector<Trial> make_trials(const std::vector<uint8_t>& text, size_t offset, size_t bytes, const PasskeyFormat& f,
                               const std::vector<double>& depths, int per_depth, uint64_t seed) {
    std::vector<Trial> out;
    tqkv::Rng rng(seed);
    size_t at = offset;
    for (int rep = 0; rep < per_depth; ++rep)
        for (double depth : depths) {
            Trial t;
            t.depth = depth;
            if (f.digits) {
                t.key = std::to_string(10000 + rng.next() % 90000);
            } else {
                t.key = f.words[rng.next() % f.words.size()];
            }
            std::string needle;
            for (int i = 0; i < f.repeats; ++i) needle += fill_key(f.sentence, t.key);
            needle += "\n";
            if (needle.size() + f.cue.size() + 64 > bytes) throw std::invalid_argument("budget: --prompt-bytes too small");
            const size_t filler = bytes - needle.size() - f.cue.size();
            while (at < text.size() && text[at - 1] != '\n') ++at;  // a line start
            if (at + filler + 1 > text.size()) throw std::invalid_argument("budget: eval.txt too short for the passkey prompts");
            std::string fill(text.begin() + long(at), text.begin() + long(at + filler));
            at += filler;
            for (char& c : fill)
                if (static_cast<unsigned char>(c) >= 128) c = ' ';
            size_t cut = size_t(depth * double(filler));
            const size_t nl = fill.rfind('\n', cut);
            cut = nl == std::string::npos ? 0 : nl + 1;
            t.prompt = fill.substr(0, cut) + needle + fill.substr(cut) + f.cue;
            t.no_needle = fill + f.cue;
            out.push_back(std::move(t));
        }
    return out;
}

// Greedy retrieval from one teacher-forced pass: greedy decoding reproduces the key exactly iff
// the argmax after the cue and after each key byte is the next key byte, and the argmax after the
// whole key ends the word (not a letter; for digit keys not a digit). `argmax` holds those
// key.size() + 1 predictions.
bool retrieved(const std::string& argmax, const Trial& t, bool digits) {
    if (argmax.size() != t.key.size() + 1 || argmax.compare(0, t.key.size(), t.key) != 0) return false;
    const unsigned char next = static_cast<unsigned char>(argmax.back());
    return digits ? !std::isdigit(next) : !std::isalpha(next);
}

struct Row {
    std::string policy;
    double budget = 0, bytes_used = 0, bytes_after_prefill = 0, memory = 0, nll = 0, delta_pct = 0, tokens_per_s = 0;
    size_t evicted = 0;
    bool no_nll = false;
    int correct = 0, trials = 0;
    double key_nll = 0;                                // mean over trials, nats per key
    std::map<double, std::pair<int, int>> by_depth;  // depth -> (correct, trials)
    std::vector<std::string> generations;
    std::vector<char> ok;                            // per trial
};

}  // namespace

int cmd_budget(const Args& args) {
    args.allow({"model", "budget-mb", "budget-bytes", "json", "policies", "bytes", "offset", "ctx", "calib-bytes", "trials",
                "depths", "format", "keys", "needle", "repeats", "cue", "prompt-bytes", "passkey-offset", "threads", "verbose", "seed", "no-nll", "no-passkey"});
    const std::string dir = args.get("model", "");
    if (dir.empty()) throw std::invalid_argument("budget: --model DIR is required");
    const tqkv::LlamaModel model = tqkv::LlamaModel::load(dir);
    const tqkv::LlamaConfig& mc = model.config();
    if (!mc.byte_vocab()) throw std::invalid_argument("budget: the model needs a byte vocabulary (vocab_size 256)");
    const tqkv::CacheShape shape = tqkv::CacheShape::of(mc);
    const size_t ctx = size_t(args.get_int("ctx", mc.max_position_embeddings));
    const std::vector<uint8_t> text = read_file(dir + "/eval.txt");
    const size_t fp16_ctx = tqkv::fp16_cache_bytes(shape, ctx);
    size_t budget = fp16_ctx / 6;
    if (args.flag("budget-mb")) budget = size_t(std::llround(args.get_double("budget-mb", 0) * 1024.0 * 1024.0));
    if (args.flag("budget-bytes")) budget = size_t(args.get_double("budget-bytes", 0));
    const size_t n_bytes = size_t(args.get_int("bytes", 4096)), offset = size_t(args.get_int("offset", 0));
    const size_t calib_bytes = size_t(args.get_int("calib-bytes", 8192));
    if (offset + n_bytes + calib_bytes > text.size()) throw std::invalid_argument("budget: eval.txt too short");
    const bool json = args.flag("json"), verbose = args.flag("verbose");
    const bool do_nll = !args.flag("no-nll"), do_passkey = !args.flag("no-passkey");
    const int threads = std::max(1, args.get_int("threads", 1));
    const auto policies = args.list("policies", "exact,no-needle,tiered,h2o,snapkv,snapkv-prefill,streaming");
    PasskeyFormat fmt_ = passkey_format(args.get("format", "repl"));
    auto unescape = [](std::string s) {
        std::string o;
        for (size_t i = 0; i < s.size(); ++i)
            if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') o.push_back('\n'), ++i;
            else o.push_back(s[i]);
        return o;
    };
    if (args.flag("needle")) fmt_.sentence = unescape(args.get("needle", "")), fmt_.name = "custom";
    if (args.flag("cue")) fmt_.cue = unescape(args.get("cue", "")), fmt_.name = "custom";
    if (args.flag("keys")) fmt_.words = args.list("keys", ""), fmt_.name = "custom";
    if (fmt_.words.empty()) throw std::invalid_argument("budget: --keys is empty");
    if (args.flag("repeats")) fmt_.repeats = std::max(1, args.get_int("repeats", 1)), fmt_.name = "custom";
    const size_t prompt_bytes = size_t(args.get_int("prompt-bytes", int(ctx) - 24));
    if (prompt_bytes + 16 > ctx) throw std::invalid_argument("budget: --prompt-bytes must leave 16 bytes of the context for the answer");
    std::vector<double> depths;
    for (const auto& s : args.list("depths", "0.1,0.25,0.4,0.55,0.7,0.85")) depths.push_back(std::stod(s));
    const int per_depth = std::max(1, args.get_int("trials", 4));
    const size_t pk_offset = size_t(args.get_int("passkey-offset", 200000));
    const std::vector<Trial> trials = do_passkey ? make_trials(text, pk_offset, prompt_bytes, fmt_, depths, per_depth,
                                                                uint64_t(args.get_int("seed", 1)))
                                                 : std::vector<Trial>{};

    const std::vector<int32_t> tokens(text.begin() + long(offset), text.begin() + long(offset + n_bytes));
    const std::vector<int32_t> calib(text.end() - long(calib_bytes), text.end());
    const tqkv::Calibration cal = tqkv::calibrate_kv(model, calib, ctx);
    // The exact cache's NLL: the reference of every ΔNLL.
    double base_nll = 0;
    if (do_nll) {
        auto exact = tqkv::make_exact_cache(shape);
        base_nll = tqkv::evaluate_nll(model, *exact, tokens, ctx, true).nll;
    }

    std::vector<Row> rows(policies.size());
    std::vector<std::string> errors(policies.size());
    std::mutex mu;
    parallel_for(policies.size(), threads, [&](size_t i) {
        Row& r = rows[i];
        r.policy = policies[i];
        r.budget = double(budget);
        try {
            const bool exact = r.policy == "exact" || r.policy == "fp32" || r.policy == "no-needle";
            // Budget policies by their spec; any other cache spec of make_cache (K2V2-w16, q4_0, ...)
            // runs as an unbudgeted reference row.
            const std::string kind = r.policy.substr(0, r.policy.find('-'));
            const bool budgeted = kind == "tiered" || kind == "h2o" || kind == "snapkv" || kind == "streaming";
            std::unique_ptr<tqkv::AttentionCache> cache;
            try {
                cache = exact      ? tqkv::make_exact_cache(shape)
                        : budgeted ? std::unique_ptr<tqkv::AttentionCache>(tqkv::make_budget_cache(r.policy, shape, budget, &cal))
                                   : tqkv::make_cache(r.policy, shape, &cal);
            } catch (const std::invalid_argument& e) {
                if (budgeted || exact) throw;
                throw std::invalid_argument(std::string("not a policy (tiered..., h2o, snapkv, snapkv-prefill, streaming, exact, "
                                                        "no-needle) nor a cache spec: ") + e.what());
            }
            if (!budgeted) r.budget = NAN;
            auto* bc = dynamic_cast<tqkv::BudgetCache*>(cache.get());
            size_t max_tokens = 0;
            // SnapKV-prefill compresses at the end of a prompt; ΔNLL runs have none (it would hold
            // every token): no ΔNLL for it.
            r.no_nll = r.policy.find("prefill") != std::string::npos;
            if (do_nll && !r.no_nll) {
                const tqkv::NllResult res = tqkv::evaluate_nll(model, *cache, tokens, ctx, true);
                r.nll = res.nll;
                r.delta_pct = 100.0 * (res.nll / base_nll - 1.0);
                r.tokens_per_s = double(res.scored) / res.seconds;
                max_tokens = std::min(ctx, tokens.size());
            }
            if (bc) r.evicted = bc->evicted();
            tqkv::LlamaRunner run(model, *cache);
            std::vector<float> logits(size_t(mc.vocab_size));
            const bool no_needle = r.policy == "no-needle";
            for (const Trial& t : trials) {
                run.reset();
                const std::string& prompt = no_needle ? t.no_needle : t.prompt;
                const std::vector<int32_t> p(prompt.begin(), prompt.end());
                run.prefill(p, logits);
                if (bc) {
                    bc->end_prefill();
                    r.bytes_after_prefill = std::max(r.bytes_after_prefill, bc->format_bytes());
                }
                // Teacher-forced key: the argmax at every step (greedy decoding's choice while
                // it follows the key) and the key's negative log-likelihood.
                std::string argmax;
                double nll = 0;
                for (size_t g = 0; g <= t.key.size(); ++g) {
                    const auto top = std::max_element(logits.begin(), logits.end());
                    argmax.push_back(char(top - logits.begin()));
                    if (g == t.key.size()) break;
                    const int32_t byte = static_cast<unsigned char>(t.key[g]);
                    double se = 0;
                    for (float x : logits) se += std::exp(double(x) - *top);
                    nll += std::log(se) + *top - logits[size_t(byte)];
                    run.decode(byte, logits);
                }
                const bool ok = retrieved(argmax, t, fmt_.digits);
                r.correct += ok;
                r.ok.push_back(ok);
                r.key_nll += nll / double(trials.size());
                ++r.trials;
                auto& d = r.by_depth[t.depth];
                d.first += ok, d.second += 1;
                r.generations.push_back(argmax);
                max_tokens = std::max(max_tokens, size_t(run.position()));
                if (bc) r.bytes_after_prefill = std::max(r.bytes_after_prefill, bc->format_bytes());
            }
            r.bytes_used = bc ? bc->peak_bytes()
                           : exact ? double(tqkv::fp16_cache_bytes(shape, max_tokens))
                                   : cache->bits_per_coord() / 16.0 * double(tqkv::fp16_cache_bytes(shape, max_tokens));
            if (!bc) r.bytes_after_prefill = r.bytes_used;
            r.memory = double(cache->memory_bytes());
            if (bc) r.evicted = std::max(r.evicted, bc->evicted());
        } catch (const std::exception& e) {
            errors[i] = e.what();
        }
        std::lock_guard<std::mutex> lock(mu);
        if (!errors[i].empty()) {
            std::fprintf(stderr, "budget: %s: %s\n", r.policy.c_str(), errors[i].c_str());
            return;
        }
        std::fprintf(stderr, "  %-20s ΔNLL %+.3f%%  passkey %d/%d\n", r.policy.c_str(), r.no_nll ? NAN : r.delta_pct, r.correct,
                     r.trials);
    });
    for (const auto& e : errors)
        if (!e.empty()) return 1;

    // Retrieval on the prompts the exact cache gets right: does the policy keep what the model uses?
    const Row* ex = nullptr;
    for (const Row& r : rows)
        if (r.policy == "exact" || r.policy == "fp32") ex = &r;
    auto conditional = [&](const Row& r) -> std::pair<int, int> {
        if (!ex || ex->ok.size() != r.ok.size()) return {0, 0};
        int hit = 0, of = 0;
        for (size_t t = 0; t < r.ok.size(); ++t)
            if (ex->ok[t]) ++of, hit += r.ok[t];
        return {hit, of};
    };
    if (verbose)
        for (const Row& r : rows)
            for (size_t t = 0; t < trials.size(); ++t)
                std::fprintf(stderr, "  %-20s depth %.2f key %-8s -> \"%s\"%s\n", r.policy.c_str(), trials[t].depth,
                             trials[t].key.c_str(), json_escape(r.generations[t]).c_str(), r.ok[t] ? "  ok" : "");
    if (json) {
        for (const Row& r : rows) {
            const auto [hit, of] = conditional(r);
            Json j;
            j.add("policy", r.policy).add("budget_bytes", r.budget).add("bytes_used", r.bytes_used)
                .add("delta_pct", do_nll && !r.no_nll ? r.delta_pct : NAN).add("passkey_acc", r.trials ? double(r.correct) / r.trials : NAN)
                .add("tokens_per_s", do_nll && !r.no_nll ? r.tokens_per_s : NAN).add("passkey_correct", r.correct)
                .add("passkey_trials", r.trials).add("passkey_acc_where_exact_ok", of ? double(hit) / of : NAN)
                .add("passkey_exact_ok", of).add("key_nll", r.trials ? r.key_nll : NAN)
                .add("bytes_after_prefill", r.bytes_after_prefill).add("memory_bytes", r.memory).add("fp16_bytes_at_ctx", fp16_ctx).add("ctx", ctx)
                .add("nll", do_nll && !r.no_nll ? r.nll : NAN).add("evicted_last_run", r.evicted).add("format", fmt_.name);
            for (const auto& [depth, cd] : r.by_depth) j.add("passkey_acc_depth_" + fmt("%.2f", depth), double(cd.first) / cd.second);
            std::printf("%s\n", j.str().c_str());
        }
    } else {
        std::printf("tqkv-bench budget — %s: budget %zu bytes (%.3f of the fp16 cache at context %zu = %zu bytes)\n"
                    "ΔNLL: %zu bytes of eval.txt at offset %zu, segments of %zu tokens, token-by-token attention; "
                    "calibration: the last %zu bytes\n"
                    "passkey: format \"%s\", %zu prompts of %zu bytes (%d per depth), greedy, exact key; filler from offset %zu\n\n",
                    dir.c_str(), budget, double(budget) / double(fp16_ctx), ctx, fp16_ctx, n_bytes, offset, ctx, calib_bytes,
                    fmt_.name.c_str(), trials.size(), prompt_bytes, per_depth, pk_offset);
        std::vector<std::string> head = {"policy", "budget bytes", "bytes used", "after prefill", "ΔNLL %", "passkey",
                                         "where exact ok", "key NLL", "tokens/s"};
        for (double d : depths) head.push_back("d" + fmt("%.2f", d));
        Table t(head);
        for (const Row& r : rows) {
            const auto [hit, of] = conditional(r);
            std::vector<std::string> cells = {r.policy, std::isnan(r.budget) ? std::string("none") : fmt("%.0f", r.budget), fmt("%.0f", r.bytes_used),
                                              fmt("%.0f", r.bytes_after_prefill),
                                              do_nll ? (r.no_nll ? std::string("n/a") : fmt("%+.3f", r.delta_pct)) : "",
                                              r.trials ? std::to_string(r.correct) + "/" + std::to_string(r.trials) : "",
                                              of ? std::to_string(hit) + "/" + std::to_string(of) : "",
                                              r.trials ? fmt("%.2f", r.key_nll) : "",
                                              do_nll && !r.no_nll ? fmt("%.0f", r.tokens_per_s) : ""};
            for (double d : depths) {
                auto it = r.by_depth.find(d);
                cells.push_back(it == r.by_depth.end() ? "" : std::to_string(it->second.first) + "/" + std::to_string(it->second.second));
            }
            t.row(cells);
        }
        t.print();
        std::printf("\nbytes used: the most the cache held at any time (exact tokens at fp16, codes + norms; the exact row:\n"
                    "an fp16 cache of the longest context; other unbudgeted caches: their bits per coordinate). snapkv-prefill\n"
                    "holds the whole prompt until the end of prefill (as published), so it exceeds the budget there; 'after\n"
                    "prefill' is its largest size once the prompt is compressed; it has no ΔNLL (the token-by-token text has\n"
                    "no end of prompt). passkey: greedy decoding reproduces the key exactly; 'where exact ok': on the prompts\n"
                    "the exact cache retrieves; key NLL: nats of the key given the prompt (teacher-forced); no-needle: the\n"
                    "exact cache on the same prompts without the needle. d<x>: by needle depth (share of the filler before\n"
                    "it). tokens/s: the ΔNLL run (token-by-token, one thread, model included).\n");
    }
    return 0;
}

}  // namespace bench
