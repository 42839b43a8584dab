#include "model_analysis.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>

#include "tqkv/tokenizer.hpp"

namespace ex {
namespace {

// The calibration text: the last bytes of DIR/eval.txt, as tqkv-run calibrates (never the
// bytes the panel scores, which come from the file's start).
constexpr size_t kCalibBytes = 2048;

double seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return "";
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Threads for the library's passes: all cores but the one drawing the UI, at most 4.
int worker_threads() { return int(std::clamp(std::thread::hardware_concurrency(), 2u, 5u)) - 1; }

bool is_auto(const std::string& spec) { return !spec.empty() && tqkv::CacheSpec::parse(spec).auto_bits > 0; }

std::string fmt(const char* f, double a, double b = 0, double c = 0) {
    char buf[128];
    std::snprintf(buf, sizeof buf, f, a, b, c);
    return buf;
}

}  // namespace

int first_difference(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    const size_t n = std::min(a.size(), b.size());
    for (size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return int(i);
    return -1;
}

// One cache's scores of one text.
struct Scored {
    std::vector<float> nll;
    std::vector<int32_t> argmax;
    double mean = 0, bits = 0;
};

struct ModelWork::Session {
    std::string dir;
    std::optional<tqkv::LlamaModel> model;
    std::optional<tqkv::Tokenizer> tok;
    std::string eval_text;  // DIR/eval.txt, empty when absent
    double load_seconds = 0;
    // The calibration of `calib_text` (sensitivities added once an auto spec asks for them).
    std::string calib_text, calib_summary;
    tqkv::Calibration cal;
    double calib_seconds = 0, sens_seconds = 0;
    // Results of this calibration, so that changing one cache reruns only that one.
    std::map<std::string, Scored> scored;                   // spec \0 text
    std::map<std::string, std::vector<int32_t>> continued;  // spec \0 prompt \0 tokens
};

ModelWork::~ModelWork() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        queued_.reset();
    }
    if (thread_.joinable()) thread_.join();
}

void ModelWork::start(const ModelQuery& q) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        last_ = q;
        queued_ = q;
    }
    poll();
}

void ModelWork::poll() {
    if (running_) return;
    std::optional<ModelQuery> q;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        q.swap(queued_);
    }
    if (!q) return;
    if (thread_.joinable()) thread_.join();  // finished already: returns at once
    running_ = true;
    progress_ = 0;
    thread_ = std::thread([this, q = *q] {
        run(q);
        running_ = false;
    });
}

bool ModelWork::busy() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return running_ || queued_.has_value();
}

std::string ModelWork::status() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_;
}

std::optional<ModelQuery> ModelWork::query() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_;
}

std::shared_ptr<const ModelResult> ModelWork::result() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return result_;
}

void ModelWork::set_status(const std::string& s, float progress) {
    std::lock_guard<std::mutex> lock(mutex_);
    status_ = s;
    progress_ = progress;
}

void ModelWork::publish(const std::shared_ptr<const ModelResult>& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    result_ = r;
}

void ModelWork::run(ModelQuery q) {
    auto r = std::make_shared<ModelResult>();
    r->q = q;
    const int threads = worker_threads();
    try {
        // Every spec first: a typo stops here with the grammar, before seconds of work.
        for (const std::string* s : {&q.spec_a, &q.spec_b}) {
            if (s->empty()) throw std::invalid_argument("no cache spec given");
            (void)tqkv::CacheSpec::parse(*s);
        }
        const bool auto_cache = is_auto(q.spec_a) || is_auto(q.spec_b);
        const bool need_sens = auto_cache || is_auto(q.plan_spec);
        const bool conts = !q.prompt.empty() && q.continue_tokens > 0;
        auto& S = session_;
        const bool load = !S || S->dir != q.dir;
        // Stages for the progress bar: load, calibrate, probe, score A and B, continue A and B.
        const float stages = 5.0f;
        float done = 0;
        auto stage = [&](const std::string& what) { set_status(what, std::min(done++, stages - 0.5f) / stages); };

        if (load) {
            S.reset();
            stage("loading " + q.dir);
            if (q.dir.empty()) throw std::invalid_argument("no checkpoint directory given");
            if (!std::filesystem::exists(std::filesystem::path(q.dir) / "config.json"))
                throw std::invalid_argument("no config.json here (a checkpoint directory holds config.json and "
                                            "model.safetensors, or safetensors shards and their index)");
            auto s = std::make_shared<Session>();
            const double t0 = seconds();
            s->dir = q.dir;
            s->model.emplace(tqkv::LlamaModel::load(q.dir));
            s->tok.emplace(tqkv::Tokenizer::for_model(q.dir, size_t(s->model->config().vocab_size)));
            s->eval_text = read_text(q.dir + "/eval.txt");
            s->load_seconds = seconds() - t0;
            S = s;
        } else {
            ++done;
        }
        const tqkv::LlamaModel& model = *S->model;
        const tqkv::Tokenizer& tok = *S->tok;
        const tqkv::LlamaConfig& mc = model.config();
        const size_t ctx = size_t(mc.max_position_embeddings);
        const tqkv::CacheShape shape = tqkv::CacheShape::of(mc);
        r->layers = mc.num_hidden_layers;
        r->model_summary = std::to_string(mc.num_hidden_layers) + " layers, " + std::to_string(mc.num_attention_heads) + "/" +
                           std::to_string(mc.num_key_value_heads) + " heads of d " + std::to_string(mc.head_dim) +
                           ", vocabulary " + std::to_string(mc.vocab_size) + " (" + tok.kind() + "), context " +
                           std::to_string(ctx) + ", " + fmt("%.1f M parameters", double(model.parameters()) / 1e6);
        r->load_seconds = S->load_seconds;

        // The scored text, and the calibration text beside it (never the same bytes when eval.txt
        // has room for both).
        const std::string& ev = S->eval_text;
        std::string text = q.user_text, calib, calib_what;
        if (text.empty()) {
            if (ev.empty()) throw std::invalid_argument("no eval.txt here: choose \"my text\" and type a text to score");
            const size_t room = ev.size() > kCalibBytes ? ev.size() - kCalibBytes : ev.size() / 2;
            text = ev.substr(0, std::min(size_t(std::max(q.eval_bytes, 16)), room));
        }
        if (ev.size() >= text.size() + kCalibBytes && (q.user_text.empty() || ev.find(text) == std::string::npos)) {
            calib = ev.substr(ev.size() - kCalibBytes);
            calib_what = "the last " + std::to_string(kCalibBytes) + " bytes of eval.txt";
        } else {
            calib = text;
            calib_what = "the scored text itself (no separate eval.txt bytes)";
        }
        if (S->calib_text != calib || S->cal.empty()) {
            stage("calibrating on " + calib_what);
            const double t0 = seconds();
            S->cal = tqkv::calibrate_kv(model, tok.encode(calib), ctx);
            S->calib_text = calib;
            S->calib_seconds = seconds() - t0;
            S->sens_seconds = 0;
            S->scored.clear();  // the caches of the old calibration
            S->continued.clear();
        } else {
            ++done;
        }
        const tqkv::Calibration& cal = S->cal;
        auto summarize_calibration = [&] {
            r->calib_summary = "calibrated on " + calib_what + fmt(" (%.1f s", S->calib_seconds) +
                               (S->sens_seconds > 0 ? fmt(", sensitivity probe %.1f s)", S->sens_seconds) : std::string(")"));
            r->calib_seconds = S->calib_seconds;
            r->sens_seconds = S->sens_seconds;
        };
        summarize_calibration();

        // Per-token NLL under each cache (decode semantics: each token attends on its own, as
        // tqkv-bench ppl scores by default), kept per (spec, text) for the next query.
        std::vector<int32_t> tokens = tok.encode(text);
        if (tok.bos_id() >= 0) tokens.insert(tokens.begin(), tok.bos_id());  // as ppl: documents begin so
        if (tokens.size() < 2) throw std::invalid_argument("the text to score has fewer than 2 tokens");
        if (conts) {
            const size_t n = tok.encode(q.prompt, true).size();
            if (n == 0 || n >= ctx)
                throw std::invalid_argument("the prompt has " + std::to_string(n) + " tokens; it needs 1 to " +
                                            std::to_string(ctx - 1));
        }
        tqkv::TokenStream stream(tok, {tokens[0]});
        for (size_t i = 1; i < tokens.size(); ++i) r->pieces.push_back(stream.push(tokens[i]));
        const double t_run = seconds();
        auto score = [&](const std::string& spec) -> const Scored& {
            const std::string key = spec + '\0' + text;
            if (auto it = S->scored.find(key); it != S->scored.end()) return it->second;
            stage("scoring the text with " + spec);
            auto cache = tqkv::make_cache(spec, shape, &cal);
            const tqkv::NllResult res = tqkv::evaluate_nll(model, *cache, tokens, ctx, true);
            // evaluate_nll scores every token but the first of each ctx-token segment (it starts an
            // empty cache): spread its results over the text's tokens, NaN / -1 where not scored.
            Scored sc{std::vector<float>(tokens.size() - 1, NAN), std::vector<int32_t>(tokens.size() - 1, -1), res.nll,
                      res.bits_per_coord};
            for (size_t t = 1, k = 0; t < tokens.size() && k < res.token_nll.size(); ++t)
                if (t % std::max<size_t>(ctx, 2) != 0) sc.nll[t - 1] = res.token_nll[k], sc.argmax[t - 1] = res.argmax[k++];
            return S->scored[key] = std::move(sc);
        };
        // Greedy continuations, stopping at end of sequence (end_of_sequence_ids) or at the context
        // length; kept per (spec, prompt, length).
        auto greedy = [&](const std::string& spec) -> const std::vector<int32_t>& {
            const std::string key = spec + '\0' + q.prompt + '\0' + std::to_string(q.continue_tokens);
            if (auto it = S->continued.find(key); it != S->continued.end()) return it->second;
            stage("greedy continuation with " + spec);
            const std::vector<int32_t> prompt = tok.encode(q.prompt, true);
            const std::vector<int32_t> eos = tqkv::end_of_sequence_ids(mc, tok);
            auto cache = tqkv::make_cache(spec, shape, &cal);
            cache->reserve(ctx);
            tqkv::LlamaRunner run(model, *cache);
            run.threads = threads;
            std::vector<float> logits(size_t(mc.vocab_size));
            run.prefill(prompt, logits);
            std::vector<int32_t> ids;
            for (int i = 0; i < q.continue_tokens; ++i) {
                const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
                if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
                ids.push_back(next);
                if (i + 1 == q.continue_tokens || run.position() >= ctx) break;
                run.decode(next, logits);
            }
            return S->continued[key] = std::move(ids);
        };
        auto compare = [&] {
            const Scored& a = score(q.spec_a);
            const Scored& b = score(q.spec_b);
            r->nll_a = a.nll, r->argmax_a = a.argmax, r->mean_a = a.mean, r->bits_a = a.bits;
            r->nll_b = b.nll, r->argmax_b = b.argmax, r->mean_b = b.mean, r->bits_b = b.bits;
            if (conts) {
                const std::vector<int32_t> prompt = tok.encode(q.prompt, true);
                r->prompt_text = tok.decode(prompt);
                auto pieces = [&](const std::vector<int32_t>& ids) {
                    tqkv::TokenStream out(tok, prompt);
                    std::vector<std::string> p;
                    for (int32_t t : ids) p.push_back(out.push(t));
                    return p;
                };
                const auto& ga = greedy(q.spec_a);
                const auto& gb = greedy(q.spec_b);
                r->cont_a = pieces(ga), r->cont_b = pieces(gb);
                r->first_divergence = first_difference(ga, gb);
            }
            r->run_seconds = seconds() - t_run;
        };
        // Fixed caches first, shown while the sensitivity probe of the plan runs (2 * layers + 1
        // forward passes).
        if (!auto_cache) {
            compare();
            if (need_sens && !cal.has_sensitivity()) {
                r->plan_pending = true;
                publish(std::make_shared<const ModelResult>(*r));
                r->plan_pending = false;
            }
        }
        if (need_sens) {
            if (!S->cal.has_sensitivity()) {
                stage("measuring layer sensitivities (auto rates: " + std::to_string(2 * mc.num_hidden_layers + 1) +
                      " passes over the calibration text's first tokens)");
                const double t0 = seconds();
                tqkv::measure_sensitivity(model, S->cal, tok.encode(calib), ctx, threads);
                S->sens_seconds = seconds() - t0;
                summarize_calibration();
            } else {
                ++done;
            }
            for (int l = 0; l < mc.num_hidden_layers; ++l) {
                r->key_sens.push_back(cal.key_sensitivity(l));
                r->value_sens.push_back(cal.value_sensitivity(l));
            }
        }
        if (!q.plan_spec.empty()) {
            try {
                const tqkv::CacheSpec ps = tqkv::CacheSpec::parse(q.plan_spec);
                if (ps.auto_bits <= 0) throw std::invalid_argument("'" + q.plan_spec + "' is not an auto-<bits> spec");
                r->plan = tqkv::plan_rates(ps, shape, cal);
                r->plan_json = r->plan->json();
            } catch (const std::exception& e) {
                r->plan_error = e.what();
            }
        }
        if (auto_cache) compare();
    } catch (const std::exception& e) {
        r->error = e.what();
    }
    publish(r);
    std::lock_guard<std::mutex> lock(mutex_);
    status_ = r->error.empty() ? "done" : "failed";
    progress_ = 1;
}

}  // namespace ex
