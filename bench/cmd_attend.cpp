// tqkv-bench attend: ns per query token (all heads) of the fused attention over a compressed
// cache vs dense fp32 and fp16 attention built from the same vectorized kernels, same process,
// same data, on each thread count of --threads (dense on one thread); the share of skipped values
// (AttendOptions::skip_values) on the synthetic query and, with --data DIR, on a real dump's
// queries (causal, the last --queries positions of each layer).
#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>

#include "commands.hpp"
#include "tqkv/tqkv.hpp"

namespace bench {
namespace {

// Median over batches of the wall time per call, each batch at least ~20 ms; `cpu` receives the
// median CPU time per call of the process over the same batches.
template <class F>
double ns_per_call(F&& fn, double budget_s, double* cpu = nullptr) {
    fn();  // warm-up
    int reps = 1;
    for (;;) {
        const double t0 = now();
        for (int i = 0; i < reps; ++i) fn();
        if (now() - t0 > 0.02) break;
        reps *= 2;
    }
    std::vector<double> per, per_cpu;
    const double start = now();
    while (per.size() < 3 || (now() - start < budget_s && per.size() < 15)) {
        const double t0 = now(), c0 = cpu_now();
        for (int i = 0; i < reps; ++i) fn();
        per_cpu.push_back((cpu_now() - c0) / reps * 1e9);
        per.push_back((now() - t0) / reps * 1e9);
    }
    std::sort(per.begin(), per.end());
    std::sort(per_cpu.begin(), per_cpu.end());
    if (cpu) *cpu = per_cpu[per_cpu.size() / 2];
    return per[per.size() / 2];
}

// The thread counts' timings interleaved: rounds of one batch per function, so that a loaded
// machine's changing share of the cores hits every count alike. Per function: the median wall and
// CPU time per call, and the median over rounds of (time of function 0) / (its time): the paired
// ratio against the first.
struct Interleaved {
    std::vector<double> wall, cpu, ratio;
};
Interleaved interleaved_ns_per_call(const std::vector<std::function<void()>>& fns, double budget_s) {
    const size_t n = fns.size();
    std::vector<int> reps(n, 1);
    for (size_t i = 0; i < n; ++i) {
        fns[i]();  // warm-up
        for (;;) {
            const double t0 = now();
            for (int k = 0; k < reps[i]; ++k) fns[i]();
            if (now() - t0 > 0.02) break;
            reps[i] *= 2;
        }
    }
    std::vector<std::vector<double>> wall(n), cpu(n), ratio(n);
    const double start = now();
    while (wall[0].size() < 3 || (now() - start < budget_s * double(n) && wall[0].size() < 15)) {
        for (size_t i = 0; i < n; ++i) {
            const double t0 = now(), c0 = cpu_now();
            for (int k = 0; k < reps[i]; ++k) fns[i]();
            cpu[i].push_back((cpu_now() - c0) / reps[i] * 1e9);
            wall[i].push_back((now() - t0) / reps[i] * 1e9);
        }
        for (size_t i = 0; i < n; ++i) ratio[i].push_back(wall[0].back() / wall[i].back());
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    Interleaved r;
    for (size_t i = 0; i < n; ++i) {
        r.wall.push_back(median(wall[i]));
        r.cpu.push_back(median(cpu[i]));
        r.ratio.push_back(median(ratio[i]));
    }
    return r;
}

// --data DIR: per layer of a KV dump, the cache of all its tokens and a causal attend of the last
// `queries` positions' queries, with and without skipped values: the share skipped and the
// relative RMS change of the outputs it causes. --data synthetic: the built-in structured data
// (attention sinks, peaked queries; tqkv/kvdump.hpp), one layer of each --tokens length.
void attend_dump(const Args& args, const tqkv::CacheConfig& base, const tqkv::AttendOptions& opt, bool json,
                 const tqkv::KvDump& dump) {
    tqkv::CacheConfig cfg = base;
    cfg.heads = dump.heads, cfg.kv_heads = dump.kv_heads, cfg.head_dim = dump.head_dim;
    auto fractional = [&](double bits) {
        std::vector<int> h(size_t(std::lround((bits - std::floor(bits)) * cfg.head_dim)));
        for (size_t i = 0; i < h.size(); ++i) h[i] = int(i);
        return h;
    };
    cfg.key_high_channels = cfg.key_bits != std::floor(cfg.key_bits) ? fractional(cfg.key_bits) : std::vector<int>{};
    cfg.value_high_channels = cfg.value_bits != std::floor(cfg.value_bits) ? fractional(cfg.value_bits) : std::vector<int>{};
    const int d = dump.head_dim, KH = dump.kv_heads, H = dump.heads;
    const size_t T = dump.tokens, n_q = std::min<size_t>(T, size_t(args.get_int("queries", 256)));
    Table table({"layer", "tokens", "queries", "skipped", "output change (rel. RMS)"});

    uint64_t groups = 0, skipped = 0;
    for (int l = 0; l < dump.layers; ++l) {
        tqkv::KVCache cache(cfg);
        std::vector<float> K(T * KH * d), V(K.size()), Q(n_q * H * d);
        for (size_t t = 0; t < T; ++t)
            for (int h = 0; h < KH; ++h) {
                std::copy_n(dump.key(l, h, t), d, &K[(t * KH + h) * d]);
                std::copy_n(dump.value(l, h, t), d, &V[(t * KH + h) * d]);
            }
        for (size_t i = 0; i < n_q; ++i)
            for (int h = 0; h < H; ++h) std::copy_n(dump.query(l, h, T - n_q + i), d, &Q[(i * H + h) * d]);
        cache.append(K, V);
        tqkv::AttendCounters c;
        tqkv::AttendOptions with = opt, without = opt;
        with.counters = &c;
        without.skip_values = 0;
        std::vector<float> a(Q.size()), b(Q.size());
        cache.attend(Q, a, true, with);
        cache.attend(Q, b, true, without);
        double e = 0, n = 0;
        for (size_t i = 0; i < a.size(); ++i) e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), n += double(b[i]) * b[i];
        const double frac = c.value_groups ? double(c.skipped_value_groups) / double(c.value_groups) : 0.0;
        groups += c.value_groups, skipped += c.skipped_value_groups;
        if (json) {
            Json j;
            j.add("data", dump.source).add("layer", l).add("tokens", T).add("queries", n_q).add("key_bits", cfg.key_bits)
                .add("value_bits", cfg.value_bits).add("skip_values", double(opt.skip_values))
                .add("skipped_value_fraction", frac).add("output_rel_rms_change", std::sqrt(e / n));
            std::cout << j.str() << std::endl;
        } else {
            table.row({std::to_string(l), std::to_string(T), std::to_string(n_q), fmt("%.3f", frac), fmt("%.2e", std::sqrt(e / n))});
        }
    }
    const double all = groups ? double(skipped) / double(groups) : 0.0;
    if (json) {
        Json j;
        j.add("data", dump.source).add("layer", "all").add("skip_values", double(opt.skip_values)).add("skipped_value_fraction", all);
        std::cout << j.str() << std::endl;
    } else {
        std::printf("tqkv-bench attend --data %s: K%g V%g, skip_values %g; causal attend of the last %zu queries per layer\n",
                    dump.source.c_str(), cfg.key_bits, cfg.value_bits, double(opt.skip_values), n_q);
        table.print();
        std::printf("all layers: %.3f of the value groups skipped\n", all);
    }
}

int attend_data(const Args& args, const tqkv::CacheConfig& base, const tqkv::AttendOptions& opt, bool json) {
    const std::string data = args.get("data", ".");
    if (data != "synthetic") {
        attend_dump(args, base, opt, json, tqkv::load_kv_dump(data));
        return 0;
    }
    for (const auto& tstr : args.list("tokens", "4096,16384,65536")) {
        tqkv::SyntheticConfig sc;
        sc.layers = 1;
        sc.heads = base.heads, sc.kv_heads = base.kv_heads, sc.head_dim = base.head_dim;
        sc.tokens = size_t(std::stoll(tstr));
        attend_dump(args, base, opt, json, tqkv::make_synthetic(sc));
    }
    return 0;
}

}  // namespace

int cmd_attend(const Args& args) {
    args.allow({"heads", "kv-heads", "dim", "tokens", "key-bits", "value-bits", "key-method", "window", "json",
                "kernel", "seconds", "block-tokens", "precision", "threads", "skip", "data", "queries"});
    tqkv::CacheConfig cfg;
    cfg.heads = args.get_int("heads", 4);
    cfg.kv_heads = args.get_int("kv-heads", cfg.heads);
    cfg.head_dim = args.get_int("dim", 128);
    cfg.key_bits = args.get_double("key-bits", 4);
    cfg.value_bits = args.get_double("value-bits", 4);
    cfg.key_method = tqkv::method_from_string(args.get("key-method", "mse"));
    cfg.window = args.get_int("window", 0);
    cfg.block_tokens = args.get_int("block-tokens", 64);
    cfg.kernel = args.get("kernel", "");
    cfg.precision = tqkv::precision_from_string(args.get("precision", tqkv::to_string(cfg.precision)));
    const double budget = args.get_double("seconds", 0.5);
    const int d = cfg.head_dim, H = cfg.heads, KH = cfg.kv_heads;
    auto fractional = [&](double bits) {
        std::vector<int> h(size_t(std::lround((bits - std::floor(bits)) * d)));
        for (size_t i = 0; i < h.size(); ++i) h[i] = int(i);
        return h;
    };
    if (cfg.key_bits != std::floor(cfg.key_bits)) cfg.key_high_channels = fractional(cfg.key_bits);
    if (cfg.value_bits != std::floor(cfg.value_bits)) cfg.value_high_channels = fractional(cfg.value_bits);
    const std::string kernel = cfg.kernel.empty() ? tqkv::default_kernel() : cfg.kernel;
    const bool json = args.flag("json");
    std::vector<int> thread_counts;
    for (const auto& t : args.list("threads", "1")) thread_counts.push_back(std::stoi(t));
    tqkv::AttendOptions opt;
    opt.skip_values = float(args.get_double("skip", tqkv::kDefaultSkipValues));
    if (args.flag("data")) return attend_data(args, cfg, opt, json);

    Table table({"tokens", "threads", "tqkv ns/query", "dense fp32", "dense fp16", "vs fp32", "vs fp16", "vs 1 thread",
                 "cosine", "skipped", "bytes/token", "fp16 bytes/token", "append ns/token"});
    for (const auto& tstr : args.list("tokens", "1024,4096,16384,65536,131072")) {
        const size_t T = size_t(std::stoll(tstr));
        // Gaussian keys, values and query (speed does not depend on the values; fidelity on
        // structured data is the job of `tqkv-bench report`).
        tqkv::Rng rng(T);
        std::vector<float> K(T * KH * d), V(K.size()), q(size_t(H) * d);
        for (auto& v : K) v = float(rng.normal());
        for (auto& v : V) v = float(rng.normal());
        for (auto& v : q) v = float(rng.normal());
        tqkv::KVCache cache(cfg);
        const size_t chunk = 4096;
        for (size_t t = 0; t < T; t += chunk) {
            const size_t n = std::min(chunk, T - t);
            cache.append(std::span(K).subspan(t * KH * d, n * KH * d), std::span(V).subspan(t * KH * d, n * KH * d));
        }
        // Decode-style append: one token per call into a fresh cache (encode, layout, window).
        double t_append = 0;
        {
            const size_t n_app = std::min<size_t>(T, 2048);
            std::vector<double> per;
            for (int rep = 0; rep < 3; ++rep) {
                tqkv::KVCache fresh(cfg);
                const double t0 = now();
                for (size_t t = 0; t < n_app; ++t)
                    fresh.append(std::span(K).subspan(t * KH * d, size_t(KH) * d), std::span(V).subspan(t * KH * d, size_t(KH) * d));
                per.push_back((now() - t0) / double(n_app) * 1e9);
            }
            std::sort(per.begin(), per.end());
            t_append = per[1];
        }
        const tqkv::DenseCache dense = tqkv::make_dense_cache(K.data(), V.data(), T, KH, d);
        tqkv::DenseAttentionShape shape{H, KH, d, T, 0};
        std::vector<float> out(q.size()), exact(q.size()), half(q.size());
        // Dense fp32: the reference output here; its time in the interleaved rounds below.
        auto dense_f32 = [&] { tqkv::dense_attention_f32(shape, q.data(), dense.keys.data(), dense.values.data(), exact.data(), kernel); };
        dense_f32();
        const double t_f16 = ns_per_call([&] { tqkv::dense_attention_f16(shape, q.data(), dense.keys_f16.data(), dense.values_f16.data(), half.data(), kernel); }, budget);
        tqkv::AttendCounters counters;
        {
            tqkv::AttendOptions o = opt;
            o.counters = &counters;
            cache.attend(q, out, false, o);
        }
        const double skipped = counters.value_groups ? double(counters.skipped_value_groups) / double(counters.value_groups) : 0.0;
        // precision fast: the exact kernels on the same codes too (same process, same cache, one
        // thread), and the output deviation fast vs exact.
        double t_exact = 0, c_exact = 0, dev_exact = 0;
        if (cfg.precision == tqkv::Precision::Fast) {
            std::vector<float> out_exact(q.size());
            cache.set_precision(tqkv::Precision::Exact);
            t_exact = ns_per_call([&] { cache.attend(q, out_exact, false, opt); }, budget, &c_exact);
            cache.set_precision(cfg.precision);
            double e = 0, n = 0;
            for (size_t i = 0; i < q.size(); ++i) e += (out[i] - out_exact[i]) * (out[i] - out_exact[i]), n += out_exact[i] * out_exact[i];
            dev_exact = std::sqrt(e / n);
        }
        double cos = 0;
        for (int h = 0; h < H; ++h) {
            double dot = 0, n1 = 0, n2 = 0;
            for (int j = 0; j < d; ++j) {
                const double a = out[size_t(h) * d + j], b = exact[size_t(h) * d + j];
                dot += a * b, n1 += a * a, n2 += b * b;
            }
            cos += dot / std::sqrt(n1 * n2) / H;
        }
        const double bpt = cache.compressed_bytes_per_token();
        // Every thread count timed in one interleaved run; ratios against the first count (1 by
        // default) are paired per round.
        std::vector<std::function<void()>> runs;
        std::vector<tqkv::AttendOptions> run_opts(thread_counts.size(), opt);
        for (size_t i = 0; i < thread_counts.size(); ++i) {
            run_opts[i].threads = thread_counts[i];
            runs.push_back([&, i] { cache.attend(q, out, false, run_opts[i]); });
        }
        // Dense fp32 attention in the same rounds: its median wall and CPU time (CPU time too: wall
        // times on a loaded machine include waiting), and its paired ratio against the first count
        // (median over rounds of dense / fused time), robust to a shared machine's drift.
        runs.push_back(dense_f32);
        const Interleaved timed = interleaved_ns_per_call(runs, budget);
        const double t_f32 = timed.wall.back(), c_f32 = timed.cpu.back(), paired_vs_dense = 1.0 / timed.ratio.back();
        for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
            const int threads = thread_counts[ti];
            const double t_fused = timed.wall[ti], c_fused = timed.cpu[ti];
            const bool vs_one = thread_counts[0] == 1;
            if (json) {
                Json j;
                j.add("kernel", kernel).add("precision", tqkv::to_string(cfg.precision)).add("heads", H).add("kv_heads", KH).add("dim", d).add("tokens", T)
                    .add("key_bits", cfg.key_bits).add("value_bits", cfg.value_bits)
                    .add("key_method", args.get("key-method", "mse")).add("window", cfg.window)
                    .add("ns_per_query", t_fused).add("dense_fp32_ns_per_query", t_f32)
                    .add("dense_fp16_ns_per_query", t_f16).add("speedup_vs_dense_fp32", t_f32 / t_fused)
                    .add("speedup_vs_dense_fp16", t_f16 / t_fused).add("cosine_vs_exact", cos)
                    .add("bytes_per_token", bpt).add("fp16_bytes_per_token", cache.fp16_bytes_per_token())
                    .add("bytes_used", cache.bytes_used()).add("append_ns_per_token", t_append)
                    .add("cpu_ns_per_query", c_fused).add("ns_per_token", t_fused / double(T))
                    .add("cpu_ns_per_token", c_fused / double(T)).add("dense_fp32_cpu_ns_per_query", c_f32)
                    .add("cpu_speedup_vs_dense_fp32", c_f32 / c_fused).add("threads", threads)
                    .add("skip_values", double(opt.skip_values)).add("skipped_value_fraction", skipped);
                if (vs_one) j.add("speedup_vs_1_thread", timed.ratio[ti]);
                if (ti == 0) j.add("paired_speedup_vs_dense_fp32", paired_vs_dense);
                if (t_exact > 0 && threads == 1)  // precision fast only (exact timed on one thread)
                    j.add("exact_ns_per_query", t_exact).add("speedup_vs_exact", t_exact / t_fused)
                        .add("exact_cpu_ns_per_query", c_exact).add("cpu_speedup_vs_exact", c_exact / c_fused)
                        .add("relative_deviation_vs_exact", dev_exact);
                std::cout << j.str() << std::endl;
            } else {
                table.row({std::to_string(T), std::to_string(threads), fmt("%.0f", t_fused), fmt("%.0f", t_f32), fmt("%.0f", t_f16),
                           fmt("%.2fx", t_f32 / t_fused), fmt("%.2fx", t_f16 / t_fused),
                           vs_one ? fmt("%.2fx", timed.ratio[ti]) : std::string("-"), fmt("%.5f", cos),
                           fmt("%.3f", skipped), fmt("%.1f", bpt), std::to_string(cache.fp16_bytes_per_token()),
                           fmt("%.0f", t_append)});
            }
        }
    }
    if (!json) {
        std::printf("tqkv-bench attend: %d heads / %d KV heads, d=%d, K%g%s V%g, window %d, kernel %s, precision %s, skip_values %g\n",
                    H, KH, d, cfg.key_bits, cfg.key_method == tqkv::Method::Prod ? "prod" : "", cfg.value_bits,
                    cfg.window, kernel.c_str(), tqkv::to_string(cfg.precision), double(opt.skip_values));
        table.print();
        std::printf("ns per query token for all heads (median of batches); dense = exact attention over an fp32 /\n"
                    "fp16 cache with the same kernels, one thread; cosine = attention output vs dense fp32; skipped =\n"
                    "share of value groups skipped for the (random, hardly peaked) query; append = one token (all KV\n"
                    "heads) per call into a fresh cache, as in decode; the thread counts are timed in interleaved\n"
                    "rounds, vs 1 thread = median over rounds of the paired ratio.\n");
    }
    return 0;
}

}  // namespace bench
