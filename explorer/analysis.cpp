#include "analysis.hpp"

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace ex {
namespace {

std::unique_ptr<tqkv::BaselineFormat> codec_format(int d, double bits, tqkv::Method method, bool keys, const float* x,
                                                   size_t T) {
    tqkv::CodecConfig c;
    c.dim = d;
    c.bits = bits;
    c.method = method;
    if (bits != std::floor(bits)) {
        // Fractional rate: the highest-energy channels of the first quarter of the tokens get the
        // extra bit (as tqkv-bench report calibrates).
        const int count = int(std::lround((bits - std::floor(bits)) * d));
        const size_t n = std::max<size_t>(1, T / 4);
        c.high_channels = tqkv::choose_high_channels(std::span(x, n * size_t(d)), d, count);
    }
    return std::make_unique<tqkv::CodecFormat>(c, keys);
}

std::unique_ptr<tqkv::BaselineFormat> make_format(const MethodSpec& m, int d, bool keys, const float* x, size_t T) {
    tqkv::BaselineConfig b;
    switch (m.family) {
        case Family::TqMse: return codec_format(d, m.bits, tqkv::Method::Mse, keys, x, T);
        case Family::TqProd:
            return codec_format(d, m.bits, keys ? tqkv::Method::Prod : tqkv::Method::Mse, keys, x, T);
        case Family::Qjl:
            return keys ? codec_format(d, 1, tqkv::Method::Qjl, keys, x, T) : codec_format(d, m.bits, tqkv::Method::Mse, keys, x, T);
        case Family::Polar: b.kind = tqkv::BaselineKind::Polar; break;
        case Family::Kivi: b.kind = tqkv::BaselineKind::Kivi; break;
        case Family::Turbo: b.kind = tqkv::BaselineKind::Turbo; break;
        case Family::Q4_0: b.kind = tqkv::BaselineKind::Q4_0; break;
        case Family::Q4_0Rot: b.kind = tqkv::BaselineKind::Q4_0, b.rotation = tqkv::BaselineRotation::Hadamard; break;
        case Family::Q4_0Rots: b.kind = tqkv::BaselineKind::Q4_0, b.rotation = tqkv::BaselineRotation::HadamardSigns; break;
        case Family::Q8_0: b.kind = tqkv::BaselineKind::Q8_0; break;
        case Family::Q8_0Rot: b.kind = tqkv::BaselineKind::Q8_0, b.rotation = tqkv::BaselineRotation::Hadamard; break;
        case Family::Q8_0Rots: b.kind = tqkv::BaselineKind::Q8_0, b.rotation = tqkv::BaselineRotation::HadamardSigns; break;
        case Family::Fp16: b.kind = tqkv::BaselineKind::Fp16; break;
    }
    b.bits = int(m.bits);
    return tqkv::BaselineFormat::make(b, d, keys);
}

HeadCodes encode_head(const MethodSpec& m, int d, bool keys, const float* x, size_t T) {
    HeadCodes h;
    h.format = make_format(m, d, keys, x, T);
    h.format->encode(x, T);
    h.decoded.resize(T * size_t(d));
    h.format->decode(h.decoded.data());
    h.bytes = h.format->bytes();
    std::ostringstream s;
    s.precision(4);
    s << h.format->name() << ", " << h.format->bits_per_coord() << " bits/coord";
    h.desc = s.str();
    return h;
}

double dotd(const float* a, const float* b, int n) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
    return s;
}

void softmax(std::vector<double>& x) {
    if (x.empty()) return;
    const double mx = *std::max_element(x.begin(), x.end());
    double sum = 0;
    for (auto& v : x) sum += (v = std::exp(v - mx));
    for (auto& v : x) v /= sum;
}

std::vector<int> top_indices(const std::vector<double>& w, size_t k) {
    std::vector<int> idx(w.size());
    std::iota(idx.begin(), idx.end(), 0);
    k = std::min(k, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(), [&](int a, int b) { return w[size_t(a)] > w[size_t(b)]; });
    idx.resize(k);
    return idx;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const char* family_name(Family f) {
    switch (f) {
        case Family::TqMse: return "tqkv-mse";
        case Family::TqProd: return "tqkv-prod";
        case Family::Qjl: return "qjl";
        case Family::Polar: return "polar";
        case Family::Kivi: return "kivi";
        case Family::Turbo: return "turbo";
        case Family::Q4_0: return "q4_0";
        case Family::Q4_0Rot: return "q4_0-rot";
        case Family::Q4_0Rots: return "q4_0-rots";
        case Family::Q8_0: return "q8_0";
        case Family::Q8_0Rot: return "q8_0-rot";
        case Family::Q8_0Rots: return "q8_0-rots";
        case Family::Fp16: return "fp16";
    }
    return "?";
}

const char* family_help(Family f) {
    switch (f) {
        case Family::TqMse: return "TurboQuant-MSE: rotate, Lloyd-Max code per coordinate, fp16 norm (keys and values)";
        case Family::TqProd: return "TurboQuant-prod keys: (b-1)-bit MSE + 1-bit QJL of the residual (unbiased q.k); values tqkv-mse-b";
        case Family::Qjl: return "QJL keys: signs of a Gaussian projection + norm (1 bit); values tqkv-mse at the chosen bits";
        case Family::Polar: return "PolarQuant: rotation, recursive polar transform, quantized angles + fp16 block radius";
        case Family::Kivi: return "KIVI: uniform int per channel (keys) / per token (values), fp16 scale+zero; last 128 tokens fp16";
        case Family::Turbo: return "TurboQuant+ turbo2/3/4 (llama.cpp fork): rotation, Lloyd-Max codes, one fp16 norm per vector, norm-corrected";
        case Family::Q4_0: return "llama.cpp q4_0: blocks of 32 values, 4-bit ints, one fp16 scale";
        case Family::Q4_0Rot: return "llama.cpp q4_0 as llama.cpp runs it today: Hadamard-rotated keys/queries and values (PR #21038)";
        case Family::Q4_0Rots: return "q4_0 after a Hadamard rotation with random signs (QuaRot-style; not llama.cpp's)";
        case Family::Q8_0: return "llama.cpp q8_0: blocks of 32 values, 8-bit ints, one fp16 scale";
        case Family::Q8_0Rot: return "llama.cpp q8_0 as llama.cpp runs it today: Hadamard-rotated keys/queries and values (PR #21038)";
        case Family::Q8_0Rots: return "q8_0 after a Hadamard rotation with random signs (QuaRot-style; not llama.cpp's)";
        case Family::Fp16: return "IEEE half precision";
    }
    return "";
}

std::vector<double> bit_choices(Family f) {
    switch (f) {
        case Family::TqMse: return {1, 2, 2.5, 3, 3.5, 4, 5, 6, 8};
        case Family::TqProd: return {2, 3, 4, 5, 6, 8};
        case Family::Qjl: return {2, 3, 4};  // value bits (keys are always 1-bit QJL)
        case Family::Polar: return {2, 3, 4, 5, 6};
        case Family::Kivi: return {2, 4};
        case Family::Turbo: return {2, 3, 4};
        case Family::Q4_0:
        case Family::Q4_0Rot:
        case Family::Q4_0Rots: return {4};
        case Family::Q8_0:
        case Family::Q8_0Rot:
        case Family::Q8_0Rots: return {8};
        case Family::Fp16: return {16};
    }
    return {4};
}

double default_bits(Family f) {
    switch (f) {
        case Family::TqMse: return 4;
        case Family::TqProd: return 4;
        case Family::Qjl: return 2;
        case Family::Polar: return 4;
        case Family::Kivi: return 4;
        case Family::Turbo: return 3;
        case Family::Q4_0:
        case Family::Q4_0Rot:
        case Family::Q4_0Rots: return 4;
        case Family::Q8_0:
        case Family::Q8_0Rot:
        case Family::Q8_0Rots: return 8;
        case Family::Fp16: return 16;
    }
    return 4;
}

std::string MethodSpec::label() const {
    std::ostringstream s;
    s << family_name(family);
    switch (family) {
        case Family::Q4_0:
        case Family::Q4_0Rot:
        case Family::Q4_0Rots:
        case Family::Q8_0:
        case Family::Q8_0Rot:
        case Family::Q8_0Rots:
        case Family::Fp16: break;
        case Family::Qjl: s << " (V mse-" << bits << ")"; break;
        default: s << "-" << bits;
    }
    return s.str();
}

std::shared_ptr<const CompressedHead> compress_head(const tqkv::KvDump& dump, int layer, int kv_head, const MethodSpec& m) {
    if (layer < 0 || layer >= dump.layers || kv_head < 0 || kv_head >= dump.kv_heads)
        throw std::invalid_argument("layer/head out of range");
    auto c = std::make_shared<CompressedHead>();
    c->method = m;
    c->layer = layer;
    c->kv_head = kv_head;
    c->tokens = dump.tokens;
    c->dim = dump.head_dim;
    c->k = encode_head(m, dump.head_dim, true, dump.key(layer, kv_head, 0), dump.tokens);
    c->v = encode_head(m, dump.head_dim, false, dump.value(layer, kv_head, 0), dump.tokens);
    return c;
}

std::shared_ptr<const CompressedHead> HeadCache::get(const tqkv::KvDump& dump, int layer, int kv_head, const MethodSpec& m,
                                                     std::string* error) {
    const Key key{layer, kv_head, m};
    if (auto it = heads_.find(key); it != heads_.end()) return it->second;
    if (auto it = errors_.find(key); it != errors_.end()) {
        if (error) *error = it->second;
        return nullptr;
    }
    if (heads_.size() > 96) heads_.clear();  // bounded memory: recompute on demand
    try {
        auto c = compress_head(dump, layer, kv_head, m);
        heads_[key] = c;
        return c;
    } catch (const std::exception& e) {
        errors_[key] = e.what();
        if (error) *error = e.what();
        return nullptr;
    }
}

void HeadCache::clear() {
    heads_.clear();
    errors_.clear();
}

// ---------------------------------------------------------------------------------------------

TokenErrors token_errors(const float* x, const float* xhat, size_t T, int d) {
    TokenErrors e;
    e.rel.resize(T);
    e.cos.resize(T);
    e.norm.resize(T);
    double err_sum = 0, norm_sum = 0;
    for (size_t t = 0; t < T; ++t) {
        const float* a = x + t * d;
        const float* b = xhat + t * d;
        double aa = 0, bb = 0, ab = 0, dd = 0;
        for (int j = 0; j < d; ++j) {
            aa += double(a[j]) * a[j];
            bb += double(b[j]) * b[j];
            ab += double(a[j]) * b[j];
            const double diff = double(a[j]) - b[j];
            dd += diff * diff;
        }
        e.norm[t] = std::sqrt(aa);
        e.rel[t] = aa > 0 ? std::sqrt(dd / aa) : 0.0;
        e.cos[t] = (aa > 0 && bb > 0) ? ab / std::sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
        err_sum += dd;
        norm_sum += aa;
        e.mean_rel += e.rel[t];
        e.mean_cos += e.cos[t];
    }
    if (T) e.mean_rel /= double(T), e.mean_cos /= double(T);
    e.rel_mse = norm_sum > 0 ? err_sum / norm_sum : 0.0;
    return e;
}

AttentionResult attend_one(const tqkv::KvDump& dump, int layer, int head, size_t pos, const CompressedHead& c) {
    AttentionResult r;
    const int d = dump.head_dim;
    const size_t T = dump.tokens;
    pos = std::min(pos, T - 1);
    r.visible = pos + 1;
    const float* q = dump.query(layer, head, pos);
    const double scale = 1.0 / std::sqrt(double(d));
    std::vector<float> s(T);
    c.k.format->scores(q, s.data());
    r.exact_logit.resize(r.visible);
    r.approx_logit.resize(r.visible);
    for (size_t t = 0; t < r.visible; ++t) {
        r.exact_logit[t] = dotd(q, dump.key(layer, c.kv_head, t), d) * scale;
        r.approx_logit[t] = double(s[t]) * scale;
    }
    r.exact_w = r.exact_logit;
    r.approx_w = r.approx_logit;
    softmax(r.exact_w);
    softmax(r.approx_w);
    // Outputs: exact values with exact weights; the format's own weighted sum with its weights.
    std::vector<double> o(size_t(d), 0.0);
    for (size_t t = 0; t < r.visible; ++t) {
        const float* v = dump.value(layer, c.kv_head, t);
        for (int j = 0; j < d; ++j) o[size_t(j)] += r.exact_w[t] * v[j];
    }
    std::vector<float> w(T, 0.0f), oh(static_cast<size_t>(d));
    for (size_t t = 0; t < r.visible; ++t) w[t] = float(r.approx_w[t]);
    c.v.format->weighted_sum(w.data(), oh.data());
    double oo = 0, hh = 0, oh_ = 0, dd = 0;
    for (int j = 0; j < d; ++j) {
        oo += o[size_t(j)] * o[size_t(j)];
        hh += double(oh[size_t(j)]) * oh[size_t(j)];
        oh_ += o[size_t(j)] * oh[size_t(j)];
        const double diff = o[size_t(j)] - oh[size_t(j)];
        dd += diff * diff;
    }
    r.out_cos = (oo > 0 && hh > 0) ? oh_ / std::sqrt(oo * hh) : 0.0;
    r.out_rel = oo > 0 ? std::sqrt(dd / oo) : 0.0;
    // Logit error and correlation.
    double se = 0, ma = 0, mb = 0;
    const double n = double(r.visible);
    for (size_t t = 0; t < r.visible; ++t) {
        const double e = r.approx_logit[t] - r.exact_logit[t];
        se += e * e;
        ma += r.exact_logit[t];
        mb += r.approx_logit[t];
    }
    r.logit_rmse = std::sqrt(se / n);
    ma /= n, mb /= n;
    double sab = 0, saa = 0, sbb = 0;
    for (size_t t = 0; t < r.visible; ++t) {
        const double a = r.exact_logit[t] - ma, b = r.approx_logit[t] - mb;
        sab += a * b, saa += a * a, sbb += b * b;
    }
    r.logit_corr = (saa > 0 && sbb > 0) ? sab / std::sqrt(saa * sbb) : 1.0;
    for (size_t t = 0; t < r.visible; ++t) r.weight_tv += 0.5 * std::fabs(r.exact_w[t] - r.approx_w[t]);
    r.top_exact = top_indices(r.exact_w, 10);
    const size_t ks[3] = {1, 5, 10};
    for (int i = 0; i < 3; ++i) {
        const size_t k = std::min(ks[i], r.visible);
        auto a = top_indices(r.exact_w, k), b = top_indices(r.approx_w, k);
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        std::vector<int> both;
        std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
        r.top[i] = k ? double(both.size()) / double(k) : 1.0;
    }
    return r;
}

// ---------------------------------------------------------------------------------------------

const char* input_name(InputKind k) {
    switch (k) {
        case InputKind::Gaussian: return "a Gaussian vector";
        case InputKind::OneHot: return "a one-hot vector";
        case InputKind::Outliers: return "4 outlier channels (100×)";
        case InputKind::RealKeys: return "a key from the data";
    }
    return "?";
}

std::vector<float> make_input(InputKind kind, int d, int index, const tqkv::KvDump* dump, int layer, int kv_head) {
    std::vector<float> x(static_cast<size_t>(d), 0.0f);
    tqkv::Rng rng(1000 + uint64_t(index));
    switch (kind) {
        case InputKind::Gaussian:
            for (auto& v : x) v = float(rng.normal());
            break;
        case InputKind::OneHot:
            x[size_t(((index % d) + d) % d)] = 1.0f;
            break;
        case InputKind::Outliers:
            // As tests/test_rotation.cpp: Gaussian, with 4 channels at +-100.
            for (auto& v : x) v = float(rng.normal());
            for (int c : {1, d / 3, d / 2 + 1, d - 2}) x[size_t(c)] = (c % 2 ? 100.0f : -100.0f);
            break;
        case InputKind::RealKeys:
            if (!dump || dump->head_dim != d || dump->tokens == 0)
                throw std::invalid_argument("keys from the data need d = the data's head dimension");
            std::copy_n(dump->key(layer, kv_head, std::min(size_t(std::max(0, index)), dump->tokens - 1)), d, x.data());
            break;
    }
    return x;
}

double ks_distance(const std::vector<double>& t, const tqkv::CoordinateDensity& f) {
    double ks = 0;
    const double n = double(t.size());
    for (size_t i = 0; i < t.size(); ++i) {
        const double F = f.cdf(std::clamp(t[i], -1.0, 1.0));
        ks = std::max({ks, std::fabs(F - double(i) / n), std::fabs(double(i + 1) / n - F)});
    }
    return ks;
}

RotationResult analyze_rotation(const RotationQuery& q, const tqkv::KvDump& dump) {
    RotationResult r;
    const int d = q.dim;
    const tqkv::CoordinateDensity& f = density(d);
    const auto x = make_input(q.input, d, q.index, &dump, q.layer, q.kv_head);
    const double norm = std::sqrt(dotd(x.data(), x.data(), d));
    if (!(norm > 0)) throw std::invalid_argument("this input vector is zero");
    r.before.resize(x.size());
    for (int j = 0; j < d; ++j) r.before[size_t(j)] = x[size_t(j)] / norm;
    r.pooled.reserve(size_t(q.seeds) * d);
    std::vector<float> y(x.size());
    for (int s = 0; s < q.seeds; ++s) {
        const tqkv::Rotation rot(d, q.kind, 1000 + uint64_t(s), q.rounds);
        y = x;
        rot.forward(y);
        for (int j = 0; j < d; ++j) r.pooled.push_back(double(y[size_t(j)]) / norm);
        if (s == 0) {
            r.after.resize(x.size());
            for (int j = 0; j < d; ++j) r.after[size_t(j)] = double(y[size_t(j)]) / norm;
        }
    }
    std::sort(r.pooled.begin(), r.pooled.end());
    r.ks = ks_distance(r.pooled, f);
    // Kolmogorov's 99.9% critical value: sqrt(-ln(0.0005) / 2) / sqrt(n).
    r.ks_crit = r.pooled.empty() ? 0.0 : 1.9495 / std::sqrt(double(r.pooled.size()));
    return r;
}

std::vector<double> ks_by_rounds(RotationQuery q, const tqkv::KvDump& dump, int max_rounds) {
    std::vector<double> ks;
    for (int r = 1; r <= max_rounds; ++r) {
        q.rounds = r;
        ks.push_back(analyze_rotation(q, dump).ks);
    }
    return ks;
}

// ---------------------------------------------------------------------------------------------

const tqkv::CoordinateDensity& density(int dim) {
    static std::mutex mutex;
    static std::map<int, std::unique_ptr<tqkv::CoordinateDensity>> cache;
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = cache[dim];
    if (!slot) slot = std::make_unique<tqkv::CoordinateDensity>(dim);
    return *slot;
}

const char* start_name(StartKind k) {
    switch (k) {
        case StartKind::WholeInterval: return "uniform over +-4 sigma";
        case StartKind::OneSide: return "all on the right half";
        case StartKind::Clustered: return "clustered near 0";
    }
    return "?";
}

std::vector<double> poor_start(const tqkv::CoordinateDensity& f, int bits, StartKind kind) {
    const int n = 1 << bits;
    const double sigma = 1.0 / std::sqrt(double(f.dim()));
    const double lim = f.support() * 0.999;
    std::vector<double> c(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        const double u = (i + 0.5) / n;  // (0, 1)
        double v = 0;
        switch (kind) {
            case StartKind::WholeInterval: v = (2 * u - 1) * 4 * sigma; break;
            case StartKind::OneSide: v = u * 3 * sigma; break;
            case StartKind::Clustered: v = (2 * u - 1) * 0.15 * sigma; break;
        }
        c[size_t(i)] = std::clamp(v, -lim, lim);
    }
    return c;
}

// ---------------------------------------------------------------------------------------------

Benchmark::~Benchmark() {
    cancel();
    wait();
}

void Benchmark::cancel() { cancel_ = true; }

void Benchmark::wait() {
    if (thread_.joinable()) thread_.join();
}

void Benchmark::start(const BenchConfig& cfg) {
    if (running_) return;
    wait();
    cancel_ = false;
    running_ = true;
    progress_ = 0;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        rows_.clear();
        status_ = "starting";
        cfg_ = cfg;
    }
    thread_ = std::thread([this, cfg] { run(cfg); });
}

std::string Benchmark::status() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_;
}

std::vector<BenchRow> Benchmark::rows() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return rows_;
}

BenchConfig Benchmark::config() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cfg_;
}

void Benchmark::run(BenchConfig cfg) {
    using clock = std::chrono::steady_clock;
    auto now = [] { return std::chrono::duration<double>(clock::now().time_since_epoch()).count(); };
    auto set_status = [&](const std::string& s) {
        std::lock_guard<std::mutex> lock(mutex_);
        status_ = s;
    };
    const int H = cfg.heads, KH = cfg.kv_heads, d = cfg.dim;
    const size_t points = cfg.tokens.size() * cfg.methods.size();
    size_t done = 0;
    try {
        for (size_t T : cfg.tokens) {
            if (cancel_) break;
            set_status("generating " + std::to_string(T) + " tokens");
            tqkv::Rng rng(T);
            std::vector<float> K(T * KH * d), V(K.size()), q(size_t(H) * d);
            for (auto& v : K) v = float(rng.normal());
            for (auto& v : V) v = float(rng.normal());
            for (auto& v : q) v = float(rng.normal());
            const tqkv::DenseCache dense = tqkv::make_dense_cache(K.data(), V.data(), T, KH, d);
            const tqkv::DenseAttentionShape shape{H, KH, d, T, 0};
            std::vector<float> exact(q.size()), out(q.size());
            tqkv::dense_attention_f32(shape, q.data(), dense.keys.data(), dense.values.data(), exact.data());
            for (const auto& m : cfg.methods) {
                if (cancel_) break;
                set_status(m + " at " + std::to_string(T) + " tokens");
                std::function<void()> fn;
                std::unique_ptr<tqkv::KVCache> cache;
                double bpt = 0;
                if (m == "fp32") {
                    fn = [&] { tqkv::dense_attention_f32(shape, q.data(), dense.keys.data(), dense.values.data(), out.data()); };
                    bpt = 2.0 * KH * d * 4;
                } else if (m == "fp16") {
                    fn = [&] { tqkv::dense_attention_f16(shape, q.data(), dense.keys_f16.data(), dense.values_f16.data(), out.data()); };
                    bpt = 2.0 * KH * d * 2;
                } else {
                    tqkv::CacheConfig cc;
                    cc.heads = H;
                    cc.kv_heads = KH;
                    cc.head_dim = d;
                    const bool prod = m.rfind("tqkv-prod-", 0) == 0;
                    const double bits = std::stod(m.substr(prod ? 10 : 9));
                    cc.key_bits = cc.value_bits = bits;
                    cc.key_method = prod ? tqkv::Method::Prod : tqkv::Method::Mse;
                    if (bits != std::floor(bits)) {
                        std::vector<int> hi(size_t(std::lround((bits - std::floor(bits)) * d)));
                        std::iota(hi.begin(), hi.end(), 0);
                        cc.key_high_channels = cc.value_high_channels = hi;
                    }
                    cache = std::make_unique<tqkv::KVCache>(cc);
                    const size_t chunk = 4096;
                    for (size_t t = 0; t < T && !cancel_; t += chunk) {
                        const size_t n = std::min(chunk, T - t);
                        cache->append(std::span(K).subspan(t * KH * d, n * KH * d), std::span(V).subspan(t * KH * d, n * KH * d));
                    }
                    bpt = cache->compressed_bytes_per_token();
                    fn = [&] { cache->attend(q, out, false); };
                }
                if (cancel_) break;
                // The fastest of several batches of at least ~10 ms each, within the time budget:
                // on a shared machine other jobs only ever add time, so the minimum is the
                // steadiest estimate of the method's own cost.
                fn();
                int reps = 1;
                for (;;) {
                    const double t0 = now();
                    for (int i = 0; i < reps; ++i) fn();
                    if (now() - t0 > 0.01 || reps > (1 << 20)) break;
                    reps *= 2;
                }
                std::vector<double> per;
                const double start = now();
                while (!cancel_ && (per.size() < 3 || (now() - start < cfg.seconds && per.size() < 15))) {
                    const double t0 = now();
                    for (int i = 0; i < reps; ++i) fn();
                    per.push_back((now() - t0) / reps * 1e9);
                    progress_ = float((done + std::min(1.0, (now() - start) / cfg.seconds)) / double(points));
                }
                if (per.empty()) break;
                std::sort(per.begin(), per.end());
                double dot = 0, n1 = 0, n2 = 0, cos = 0;
                for (int h = 0; h < H; ++h) {
                    dot = n1 = n2 = 0;
                    for (int j = 0; j < d; ++j) {
                        const double a = out[size_t(h) * d + j], b = exact[size_t(h) * d + j];
                        dot += a * b, n1 += a * a, n2 += b * b;
                    }
                    cos += (n1 > 0 && n2 > 0 ? dot / std::sqrt(n1 * n2) : 0.0) / H;
                }
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    rows_.push_back({m, T, per.front(), bpt, cos});
                }
                ++done;
                progress_ = float(done) / float(points);
            }
        }
        set_status(cancel_ ? "cancelled" : "done");
    } catch (const std::exception& e) {
        set_status(std::string("error: ") + e.what());
    }
    running_ = false;
}

// ---------------------------------------------------------------------------------------------

const char* policy_spec(BudgetPolicy p) {
    switch (p) {
        case BudgetPolicy::Tiered: return "tiered";
        case BudgetPolicy::H2O: return "h2o";
        case BudgetPolicy::SnapKV: return "snapkv";
        case BudgetPolicy::Streaming: return "streaming";
    }
    return "tiered";
}

const char* policy_help(BudgetPolicy p) {
    switch (p) {
        case BudgetPolicy::Tiered:
            return "tqkv tiered: 4 sinks + the last 16 tokens exact; older tokens go to 4 then 2 bits, least important "
                   "first; evicts only when everything else is at 2 bits";
        case BudgetPolicy::H2O: return "H2O: half the capacity for heavy hitters by accumulated attention, half for the most recent tokens";
        case BudgetPolicy::SnapKV: return "SnapKV (streaming): keeps the tokens the last 32 queries voted for, plus those 32";
        case BudgetPolicy::Streaming: return "StreamingLLM: 4 sink tokens + the most recent ones";
    }
    return "";
}

TierResult simulate_budget(const tqkv::KvDump& D, const TierQuery& q, const std::atomic<bool>* cancel,
                           std::atomic<float>* progress) {
    TierResult r;
    r.q = q;
    r.layers = D.layers;
    r.kv_heads = D.kv_heads;
    r.tokens = D.tokens;
    const tqkv::CacheShape shape{D.layers, D.heads, D.kv_heads, D.head_dim};
    const int KH = D.kv_heads, H = D.heads, d = D.head_dim, group = H / std::max(1, KH);
    r.fp16_bytes = double(tqkv::fp16_cache_bytes(shape, D.tokens));
    r.budget_bytes = std::floor(r.fp16_bytes / std::max(1, q.budget_div));
    // Calibration from the dump itself: only the per-channel means and energies matter here
    // (centering, and the channel energies a fractional rate would pick from). A real deployment
    // calibrates on other text; for where the tiers fall that makes no visible difference.
    tqkv::Calibration cal(D.layers, KH, d);
    {
        std::vector<float> k(D.tokens * size_t(KH) * d), v(k.size());
        for (int l = 0; l < D.layers; ++l) {
            for (size_t t = 0; t < D.tokens; ++t)
                for (int h = 0; h < KH; ++h) {
                    std::copy_n(D.key(l, h, t), d, &k[(t * KH + h) * d]);
                    std::copy_n(D.value(l, h, t), d, &v[(t * KH + h) * d]);
                }
            cal.add(l, k, v);
        }
    }
    r.synthetic_queries = D.queries.empty();
    try {
        auto cache = tqkv::make_budget_cache(policy_spec(q.policy), shape, size_t(r.budget_bytes), &cal);
        r.name = cache->name();
        std::vector<float> k(size_t(KH) * d), v(k.size()), qs(size_t(H) * d), out(qs.size());
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t t = 0; t < D.tokens; ++t) {
            if (cancel && *cancel) return r;
            for (int l = 0; l < D.layers; ++l) {
                for (int h = 0; h < KH; ++h) {
                    std::copy_n(D.key(l, h, t), d, &k[size_t(h) * d]);
                    std::copy_n(D.value(l, h, t), d, &v[size_t(h) * d]);
                }
                // Without queries, each query head asks with its KV head's new key: a query that
                // resembles the token attends to similar tokens, which is enough to rank them.
                for (int h = 0; h < H; ++h)
                    std::copy_n(r.synthetic_queries ? D.key(l, h / group, t) : D.query(l, h, t), d, &qs[size_t(h) * d]);
                cache->append(l, k, v);
                cache->attend(l, qs, out);
            }
            if (progress) *progress = float(t + 1) / float(D.tokens);
        }
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (int l = 0; l < D.layers; ++l)
            for (int h = 0; h < KH; ++h) r.held.push_back(cache->held(l, h));
        r.format_bytes = cache->format_bytes();
        r.peak_bytes = cache->peak_bytes();
        r.evicted = cache->evicted();
    } catch (const std::exception& e) {
        r.error = e.what();  // e.g. the budget cannot hold the protected tokens of a short dump
    }
    return r;
}

TierSimulation::~TierSimulation() {
    cancel();
    if (thread_.joinable()) thread_.join();
}

void TierSimulation::cancel() { cancel_ = true; }

void TierSimulation::start(const TierQuery& q, const tqkv::KvDump& dump) {
    cancel();
    if (thread_.joinable()) thread_.join();  // returns within one token's step
    cancel_ = false;
    running_ = true;
    progress_ = 0;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        query_ = q;
    }
    // The thread reads its own copy (the UI may load other data meanwhile), made once per data set.
    if (!dump_ || q.data_gen != dump_gen_) dump_ = std::make_shared<const tqkv::KvDump>(dump), dump_gen_ = q.data_gen;
    thread_ = std::thread([this, q, copy = dump_] {
        auto r = std::make_shared<const TierResult>(simulate_budget(*copy, q, &cancel_, &progress_));
        if (!cancel_) {
            std::lock_guard<std::mutex> lock(mutex_);
            result_ = std::move(r);
        }
        running_ = false;
    });
}

TierQuery TierSimulation::query() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return query_;
}

std::shared_ptr<const TierResult> TierSimulation::result() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return result_;
}

}  // namespace ex
