// tqkv-bench encode: vectors per second through encode, decode and dot for the best kernel and
// for the scalar reference kernel, measured in the same process on the same data.
#include <cmath>
#include <iostream>

#include "commands.hpp"
#include "tqkv/tqkv.hpp"

namespace bench {
namespace {

// Best of `reps` runs of fn(), in seconds.
template <class F>
double best_time(int reps, F&& fn) {
    double best = 1e300;
    for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        fn();
        best = std::min(best, now() - t0);
    }
    return best;
}

struct Speeds {
    double encode, decode, dot;
};

Speeds measure(const tqkv::CodecConfig& cfg, const std::vector<float>& x, size_t n) {
    const auto codec = tqkv::make_codec(cfg);
    std::vector<uint8_t> codes(n * codec->bytes_per_vector());
    std::vector<float> out(x.size()), scores(n);
    const std::vector<float> q(x.begin(), x.begin() + cfg.dim);
    const double te = best_time(3, [&] { codec->encode(x, codes); });
    const double td = best_time(3, [&] { codec->decode(codes, out); });
    const double tq = best_time(3, [&] { codec->dot(q, codes, scores); });
    return {n / te, n / td, n / tq};
}

}  // namespace

int cmd_encode(const Args& args) {
    args.allow({"dim", "bits", "method", "vectors", "json", "kernel"});
    tqkv::CodecConfig cfg;
    cfg.dim = args.get_int("dim", 128);
    cfg.bits = args.get_double("bits", 4);
    cfg.method = tqkv::method_from_string(args.get("method", "mse"));
    const size_t n = size_t(args.get_int("vectors", 200000));
    if (cfg.bits != std::floor(cfg.bits))
        cfg.high_channels = [&] {
            std::vector<int> h(size_t(std::lround((cfg.bits - std::floor(cfg.bits)) * cfg.dim)));
            for (size_t i = 0; i < h.size(); ++i) h[i] = int(i);
            return h;
        }();
    // Key-like data: Gaussian with a few outlier channels (speed does not depend on the values).
    tqkv::Rng rng(7);
    std::vector<float> x(n * cfg.dim);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(rng.normal() * ((i % cfg.dim) % 31 == 3 ? 8.0 : 1.0));

    const std::string best = args.get("kernel", tqkv::default_kernel());
    cfg.kernel = best;
    const Speeds fast = measure(cfg, x, n);
    cfg.kernel = "scalar";
    const Speeds slow = measure(cfg, x, n);
    if (args.flag("json")) {
        Json j;
        j.add("kernel", best).add("dim", cfg.dim).add("bits", cfg.bits).add("method", args.get("method", "mse"))
            .add("vectors", n).add("vectors_per_s", fast.encode).add("scalar_vectors_per_s", slow.encode)
            .add("speedup_vs_scalar", fast.encode / slow.encode).add("decode_vectors_per_s", fast.decode)
            .add("scalar_decode_vectors_per_s", slow.decode).add("dot_vectors_per_s", fast.dot)
            .add("scalar_dot_vectors_per_s", slow.dot);
        std::cout << j.str() << std::endl;
    } else {
        std::printf("tqkv-bench encode: %s%g, d=%d, %zu vectors, one thread, best of 3\n",
                    args.get("method", "mse").c_str(), cfg.bits, cfg.dim, n);
        Table t({"kernel", "encode vec/s", "decode vec/s", "dot vec/s"});
        t.row({best, fmt("%.3g", fast.encode), fmt("%.3g", fast.decode), fmt("%.3g", fast.dot)});
        t.row({"scalar", fmt("%.3g", slow.encode), fmt("%.3g", slow.decode), fmt("%.3g", slow.dot)});
        t.row({"speedup", fmt("%.2fx", fast.encode / slow.encode), fmt("%.2fx", fast.decode / slow.decode),
               fmt("%.2fx", fast.dot / slow.dot)});
        t.print();
    }
    return 0;
}

}  // namespace bench
