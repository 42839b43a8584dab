// tqkv-bench attend: ns per query token (all heads) of the fused attention over a compressed
// cache vs dense fp32 and fp16 attention built from the same vectorized kernels, same process,
// same data, one thread.
#include <algorithm>
#include <cmath>
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

}  // namespace

int cmd_attend(const Args& args) {
    args.allow({"heads", "kv-heads", "dim", "tokens", "key-bits", "value-bits", "key-method", "window", "json",
                "kernel", "seconds", "block-tokens", "precision"});
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

    Table table({"tokens", "tqkv ns/query", "dense fp32", "dense fp16", "vs fp32", "vs fp16", "cosine", "bytes/token",
                 "fp16 bytes/token", "append ns/token"});
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
        double c_fused = 0;
        const double t_fused = ns_per_call([&] { cache.attend(q, out, false); }, budget, &c_fused);
        double c_f32 = 0;  // CPU time too: wall times on a loaded machine include waiting
        const double t_f32 = ns_per_call([&] { tqkv::dense_attention_f32(shape, q.data(), dense.keys.data(), dense.values.data(), exact.data(), kernel); }, budget, &c_f32);
        const double t_f16 = ns_per_call([&] { tqkv::dense_attention_f16(shape, q.data(), dense.keys_f16.data(), dense.values_f16.data(), half.data(), kernel); }, budget);
        // precision fast: the exact kernels on the same codes too (same process, same cache), and
        // the output deviation fast vs exact.
        double t_exact = 0, c_exact = 0, dev_exact = 0;
        if (cfg.precision == tqkv::Precision::Fast) {
            std::vector<float> out_exact(q.size());
            cache.set_precision(tqkv::Precision::Exact);
            t_exact = ns_per_call([&] { cache.attend(q, out_exact, false); }, budget, &c_exact);
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
                .add("cpu_speedup_vs_dense_fp32", c_f32 / c_fused);
            if (t_exact > 0)  // precision fast only
                j.add("exact_ns_per_query", t_exact).add("speedup_vs_exact", t_exact / t_fused)
                    .add("exact_cpu_ns_per_query", c_exact).add("cpu_speedup_vs_exact", c_exact / c_fused)
                    .add("relative_deviation_vs_exact", dev_exact);
            std::cout << j.str() << std::endl;
        } else {
            table.row({std::to_string(T), fmt("%.0f", t_fused), fmt("%.0f", t_f32), fmt("%.0f", t_f16),
                       fmt("%.2fx", t_f32 / t_fused), fmt("%.2fx", t_f16 / t_fused), fmt("%.5f", cos),
                       fmt("%.1f", bpt), std::to_string(cache.fp16_bytes_per_token()), fmt("%.0f", t_append)});
        }
    }
    if (!json) {
        std::printf("tqkv-bench attend: %d heads / %d KV heads, d=%d, K%g%s V%g, window %d, kernel %s, precision %s, one thread\n",
                    H, KH, d, cfg.key_bits, cfg.key_method == tqkv::Method::Prod ? "prod" : "", cfg.value_bits,
                    cfg.window, kernel.c_str(), tqkv::to_string(cfg.precision));
        table.print();
        std::printf("ns per query token for all heads (median of batches); dense = exact attention over an fp32 /\n"
                    "fp16 cache with the same kernels; cosine = attention output vs dense fp32; append = one token\n"
                    "(all KV heads) per call into a fresh cache, as in decode.\n");
    }
    return 0;
}

}  // namespace bench
