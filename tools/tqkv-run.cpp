// tqkv-run: text generation with a Llama-family model (a Hugging Face directory: Llama, Mistral,
// Qwen2, SmolLM, TinyLlama, or tqkv's byte-vocabulary models) whose KV cache is compressed by
// tqkv — or any other cache configuration, for comparison.
//
//   tqkv-run --model ../shared/data/tq-ref-128 --prompt "The " [--cache K3V3-w16] [--tokens 256]
//            [--tokenizer FILE]
//            [--temperature 0] [--top-k 0] [--seed 1] [--calib FILE|none] [--threads 1] [--json]
//   tqkv-run ... --budget-mb 0.5 [--cache tiered-K4V4-K2V2-w16]   (a cache that fits a byte budget)
//
// The generated text goes to stdout as it is produced; the statistics (prefill and decode speed,
// cache bytes against an fp16 cache) go to stderr at the end (or one JSON line with --json).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "tqkv/budget.hpp"
#include "tqkv/kernels.hpp"
#include "tqkv/model.hpp"
#include "tqkv/rng.hpp"
#include "tqkv/tokenizer.hpp"

namespace {

const char* kDefaultCache = "K3.5V2.5-w16";

void usage() {
    std::fprintf(stderr,
                 "usage: tqkv-run --model DIR (--prompt TEXT | --prompt-file FILE) [options]\n"
                 "  --cache SPEC        KV cache (default %s): fp32, fp16, q8_0, q4_0, kivi2, kivi4, or tqkv\n"
                 "                      K<bits>V<bits>[-w<window>][-prod][-raw]..., e.g. K4V3, K2.5V2-w32\n"
                 "  --budget-mb X       a cache that never holds more than X MiB (all layers): --cache is then a\n"
                 "                      budget spec (default tiered; tiered-K4V4-K2V2-w16, h2o, snapkv, streaming, ...)\n"
                 "  --tokens N          tokens to generate (default 256; stops at an end-of-sequence token or the\n"
                 "                      model's context length)\n"
                 "  --tokenizer FILE    tokenizer.json or tokenizer.model (default: the one in DIR; bytes for a\n"
                 "                      byte-vocabulary model)\n"
                 "  --temperature T     0 = greedy (default); otherwise sample from softmax(logits / T)\n"
                 "  --top-k K           sample among the K most likely tokens (0 = all)\n"
                 "  --seed S            sampling seed (default 1)\n"
                 "  --calib FILE|none   calibration text for the tqkv cache's preconditioning (key/value means,\n"
                 "                      high channels; default: the last 2048 bytes of DIR/eval.txt when present,\n"
                 "                      else the prompt)\n"
                 "  --threads N         threads for the matrix products and the cache's attention (default 1;\n"
                 "                      the same tokens for any count)\n"
                 "  --json              statistics as one JSON line on stderr\n",
                 kDefaultCache);
}

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::invalid_argument("cannot open " + path);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
    std::map<std::string, std::string> opt;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage();
            return 0;
        }
        if (a.rfind("--", 0) != 0) {
            std::fprintf(stderr, "tqkv-run: unexpected argument '%s'\n", a.c_str());
            usage();
            return 2;
        }
        a.erase(0, 2);
        if (a == "json") {
            opt[a].assign(1, '1');
        } else if (const auto eq = a.find('='); eq != std::string::npos) {
            opt[a.substr(0, eq)] = a.substr(eq + 1);
        } else if (i + 1 < argc) {
            opt[a] = argv[++i];
        } else {
            std::fprintf(stderr, "tqkv-run: --%s needs a value\n", a.c_str());
            return 2;
        }
    }
    for (const auto& entry : opt) {
        const std::string& k = entry.first;  // not a structured binding: clang < 16 cannot capture those
        static const char* known[] = {"model", "prompt", "prompt-file", "cache", "tokens", "temperature", "top-k", "seed", "calib", "json", "budget-mb", "tokenizer", "threads"};
        if (std::find_if(std::begin(known), std::end(known), [&](const char* n) { return k == n; }) == std::end(known)) {
            std::fprintf(stderr, "tqkv-run: unknown option --%s\n", k.c_str());
            usage();
            return 2;
        }
    }
    if (!opt.count("model") || (!opt.count("prompt") && !opt.count("prompt-file"))) {
        usage();
        return 2;
    }
    try {
        const std::string dir = opt["model"];
        const std::string prompt = opt.count("prompt-file") ? read_text(opt["prompt-file"]) : opt["prompt"];
        const bool budgeted = opt.count("budget-mb") > 0;
        const double budget_mb = budgeted ? std::stod(opt["budget-mb"]) : 0.0;
        if (budgeted && !(budget_mb > 0 && budget_mb < 1e6)) throw std::invalid_argument("--budget-mb must be in (0, 1e6)");
        const std::string spec = opt.count("cache") ? opt["cache"] : budgeted ? "tiered" : kDefaultCache;
        const int n_new = opt.count("tokens") ? std::stoi(opt["tokens"]) : 256;
        const double temperature = opt.count("temperature") ? std::stod(opt["temperature"]) : 0.0;
        const int top_k = opt.count("top-k") ? std::stoi(opt["top-k"]) : 0;
        const int threads = opt.count("threads") ? std::stoi(opt["threads"]) : 1;  // the runner checks the range
        tqkv::Rng rng(opt.count("seed") ? std::stoull(opt["seed"]) : 1);
        if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
        if (n_new < 0) throw std::invalid_argument("--tokens must be >= 0");
        if (!(temperature >= 0)) throw std::invalid_argument("--temperature must be >= 0");

        const double t_load = now();
        const tqkv::LlamaModel model = tqkv::LlamaModel::load(dir);
        const tqkv::LlamaConfig& mc = model.config();
        const tqkv::Tokenizer tok =
            tqkv::Tokenizer::for_model(dir, size_t(mc.vocab_size), opt.count("tokenizer") ? opt["tokenizer"] : "");
        const double load_s = now() - t_load;
        // A sliding-window model runs past its window with every cache but the budgeted ones (the
        // runner refuses those there, by name).
        const size_t max_ctx = size_t(mc.max_position_embeddings);
        const std::vector<int32_t> tokens = tok.encode(prompt, true);  // BOS as the tokenizer config says
        if (tokens.size() >= max_ctx)
            throw std::invalid_argument("the prompt has " + std::to_string(tokens.size()) + " tokens, the model's context is " +
                                        std::to_string(max_ctx));
        const std::vector<int32_t> eos = tqkv::end_of_sequence_ids(mc, tok);

        // Calibration statistics for the tqkv cache's preconditioning (means, high channels).
        const bool needs_cal = budgeted || tqkv::CacheSpec::parse(spec).is_tqkv();
        tqkv::Calibration cal;
        std::string cal_source = "none";
        double cal_s = 0;
        if (needs_cal && !(opt.count("calib") && opt.at("calib") == "none")) {
            std::string text;
            if (opt.count("calib")) {
                text = read_text(opt["calib"]);
                cal_source = opt["calib"];
            } else if (std::ifstream(dir + "/eval.txt")) {
                text = read_text(dir + "/eval.txt");
                if (text.size() > 2048) text.erase(0, text.size() - 2048);
                cal_source = dir + "/eval.txt (last 2048 bytes)";
            } else {
                text = prompt;
                cal_source = "the prompt";
            }
            const std::vector<int32_t> ct = tok.encode(text);
            const double t0 = now();
            cal = tqkv::calibrate_kv(model, ct, max_ctx);
            // Auto rates: the layer sensitivities, probed on the same calibration text.
            if (!budgeted && tqkv::CacheSpec::parse(spec).auto_bits > 0) tqkv::measure_sensitivity(model, cal, ct, max_ctx);
            cal_s = now() - t0;
        }
        const tqkv::Calibration* calp = needs_cal && !cal.empty() ? &cal : nullptr;
        std::unique_ptr<tqkv::AttentionCache> cache =
            budgeted ? tqkv::make_budget_cache(spec, tqkv::CacheShape::of(mc), size_t(budget_mb * 1048576.0), calp)
                     : tqkv::make_cache(spec, tqkv::CacheShape::of(mc), calp);
        cache->reserve(max_ctx);
        tqkv::LlamaRunner run(model, *cache);
        run.threads = threads;
        std::vector<float> logits(size_t(mc.vocab_size)), probs(logits.size());
        std::vector<int> order(logits.size());

        std::fwrite(prompt.data(), 1, prompt.size(), stdout);
        std::fflush(stdout);
        const double t0 = now();
        run.prefill(tokens, logits);
        const double prefill_s = now() - t0;

        auto pick = [&]() -> int32_t {
            if (temperature == 0) return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
            const float mx = *std::max_element(logits.begin(), logits.end());
            for (size_t v = 0; v < logits.size(); ++v) probs[v] = float(std::exp((logits[v] - mx) / temperature));
            if (top_k > 0 && size_t(top_k) < probs.size()) {
                for (size_t v = 0; v < order.size(); ++v) order[v] = int(v);
                std::nth_element(order.begin(), order.begin() + top_k, order.end(),
                                 [&](int a, int b) { return probs[size_t(a)] > probs[size_t(b)]; });
                for (size_t i = size_t(top_k); i < order.size(); ++i) probs[size_t(order[i])] = 0;
            }
            double sum = 0;
            for (float p : probs) sum += p;
            double u = rng.uniform() * sum;
            for (size_t v = 0; v < probs.size(); ++v) {
                u -= probs[v];
                if (u < 0) return int32_t(v);
            }
            return int32_t(probs.size() - 1);
        };

        int generated = 0;
        size_t decoded = 0;  // decode() calls, timed
        bool hit_ctx = false, hit_eos = false;
        // The prompt as context (its text is printed already): a SentencePiece decoder drops the
        // leading space of a text, which would glue the first generated word to the prompt.
        tqkv::TokenStream stream(tok, tokens);
        const double t1 = now();
        const std::clock_t c1 = std::clock();  // CPU time too: on a shared machine wall time counts others' work
        while (generated < n_new) {
            const int32_t next = pick();
            if (std::find(eos.begin(), eos.end(), next) != eos.end()) {
                hit_eos = true;
                break;
            }
            const std::string piece = stream.push(next);
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            if (++generated == n_new) break;
            if (run.position() >= max_ctx) {
                hit_ctx = true;
                break;
            }
            run.decode(next, logits);
            ++decoded;
        }
        const double decode_s = now() - t1, decode_cpu_s = double(std::clock() - c1) / CLOCKS_PER_SEC;
        const std::string rest = stream.flush();  // an unfinished character, as U+FFFD
        std::fwrite(rest.data(), 1, rest.size(), stdout);
        std::fputc('\n', stdout);
        std::fflush(stdout);
        const double tok_s = decode_s > 0 && decoded ? double(decoded) / decode_s : 0.0;
        const double tok_cpu_s = decode_cpu_s > 0 && decoded ? double(decoded) / decode_cpu_s : 0.0;
        // Of the tokens the cache holds (a sliding window's dropped tokens are not counted).
        const double fp16_bytes = cache->fp16_bytes();
        const size_t held = size_t(std::llround(fp16_bytes / cache->fp16_bytes_per_token()));
        if (opt.count("json")) {
            std::fprintf(stderr,
                         "{\"cache\":\"%s\",\"prompt_tokens\":%zu,\"generated\":%d,\"context\":%zu,\"prefill_s\":%.6f,"
                         "\"prefill_tokens_per_s\":%.2f,\"decode_tokens_per_s\":%.2f,\"decode_tokens_per_cpu_s\":%.2f,\"cache_bytes\":%.0f,"
                         "\"fp16_bytes\":%.0f,\"bits_per_coord\":%.4f,\"memory_bytes\":%zu,\"budget_bytes\":%.0f,\"matmul\":\"%s\",\"kernel\":\"%s\"}\n",
                         spec.c_str(), tokens.size(), generated, cache->tokens(0), prefill_s,
                         double(tokens.size()) / prefill_s, tok_s, tok_cpu_s, cache->format_bytes(), fp16_bytes,
                         cache->bits_per_coord(), cache->memory_bytes(), budget_mb * 1048576.0, tqkv::matmul_kernel(),
                         tqkv::default_kernel().c_str());
        } else {
            std::fprintf(stderr, "\n--- %s cache, %zu prompt + %d generated tokens (%s tokenizer)%s\n", spec.c_str(),
                         tokens.size(), generated, tok.kind().c_str(),
                         hit_ctx ? " (stopped at the context length)" : hit_eos ? " (stopped at end of sequence)" : "");
            std::fprintf(stderr, "load %.2f s, calibration %.2f s (%s)\n", load_s, cal_s, cal_source.c_str());
            std::fprintf(stderr, "prefill %.1f tokens/s, decode %.1f tokens/s (%.1f per CPU second; matmul %s, attention %s, one thread)\n",
                         double(tokens.size()) / prefill_s, tok_s, tok_cpu_s, tqkv::matmul_kernel(), tqkv::default_kernel().c_str());
            const double ratio = cache->format_bytes() > 0 ? fp16_bytes / cache->format_bytes() : 0.0;
            std::fprintf(stderr, "cache %.1f KiB for %zu tokens held = %.3f bits/coord, %.2fx %s than an fp16 cache (%.1f KiB); "
                         "memory held %.1f KiB\n",
                         cache->format_bytes() / 1024.0, held, cache->bits_per_coord(),
                         ratio >= 1 ? ratio : 1.0 / ratio, ratio >= 1 ? "smaller" : "larger", fp16_bytes / 1024.0,
                         double(cache->memory_bytes()) / 1024.0);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tqkv-run: %s\n", e.what());
        return 1;
    }
}
