// tqkv-bench quality: distortion and inner-product fidelity of one codec per (method, bits) on
// uniformly random unit vectors, against the exact theory of DESIGN.md §1.
#include <cmath>
#include <iostream>
#include <span>

#include "commands.hpp"
#include "tqkv/tqkv.hpp"

namespace bench {
namespace {

std::vector<float> unit_vectors(size_t n, int d, uint64_t seed) {
    tqkv::Rng rng(seed);
    std::vector<float> x(n * d);
    for (size_t v = 0; v < n; ++v) {
        double ss = 0;
        for (int j = 0; j < d; ++j) {
            const double g = rng.normal();
            x[v * d + j] = float(g);
            ss += g * g;
        }
        const double inv = 1.0 / std::sqrt(ss);
        for (int j = 0; j < d; ++j) x[v * d + j] = float(x[v * d + j] * inv);
    }
    return x;
}

// Expected E||u - û||^2 for a uniformly random unit vector.
//   mse:  D_b (the codebook's exact distortion)
//   prod: D_{b-1} (pi/2 - 1/d): the QJL reconstruction of a residual r has error (pi/2 - 1/d)||r||^2
//   qjl:  pi/2 - 1/d
//   split: each part carries k/d of the energy on average and is coded on its own.
double theory_mse(const tqkv::VectorCodec& c) {
    if (auto* s = dynamic_cast<const tqkv::SplitCodec*>(&c)) {
        const double d = c.dim();
        return s->high_channels().size() / d * theory_mse(s->high_codec()) +
               s->low_channels().size() / d * theory_mse(s->low_codec());
    }
    const double d = c.dim();
    if (auto* m = dynamic_cast<const tqkv::TurboQuantMse*>(&c)) return m->codebook().mse();
    if (auto* p = dynamic_cast<const tqkv::TurboQuantProd*>(&c)) return p->codebook().mse() * (M_PI / 2 - 1 / d);
    return M_PI / 2 - 1 / d;
}

// The slope E[<q, x̂>] / <q, x> that the estimator should have: 1 - D_b for mse (Lloyd–Max
// centroids shrink), 1 for the unbiased prod and qjl.
double slope_target(const tqkv::VectorCodec& c) {
    if (auto* s = dynamic_cast<const tqkv::SplitCodec*>(&c)) {
        const double d = c.dim();
        return s->high_channels().size() / d * slope_target(s->high_codec()) +
               s->low_channels().size() / d * slope_target(s->low_codec());
    }
    if (auto* m = dynamic_cast<const tqkv::TurboQuantMse*>(&c)) return 1 - m->codebook().mse();
    return 1.0;
}

}  // namespace

int cmd_quality(const Args& args) {
    args.allow({"dim", "bits", "method", "vectors", "seed", "json", "kernel"});
    const int d = args.get_int("dim", 128);
    const auto bits_list = args.list("bits", "1,2,3,4");
    const auto methods = args.list("method", "mse,prod,qjl");
    const long vectors = args.get_int("vectors", 100000);
    const uint64_t seed = uint64_t(args.get_int("seed", 1));
    const bool json = args.flag("json");
    if (vectors < 1000) throw std::invalid_argument("--vectors must be at least 1000");
    // Pairs are grouped by codec seed: the estimator's unbiasedness is over the random rotation
    // and QJL matrix, so we draw many (one cluster per seed) and use a cluster-robust error.
    const size_t clusters = size_t(std::min<long>(100, vectors / 1000)), per = size_t(vectors) / clusters;

    Table table({"method", "bits", "bits/coord", "mse", "theory", "shannon 4^-b", "ip slope", "target", "+-se",
                 "ip rmse"});
    for (const auto& mname : methods) {
        const tqkv::Method method = tqkv::method_from_string(mname);
        for (const auto& bstr : bits_list) {
            const double bits = method == tqkv::Method::Qjl ? 1.0 : std::stod(bstr);
            if (method == tqkv::Method::Qjl && &bstr != &bits_list.front()) continue;  // qjl: one row
            if (method == tqkv::Method::Prod && bits < 2) continue;
            tqkv::CodecConfig cfg;
            cfg.dim = d;
            cfg.bits = bits;
            cfg.method = method;
            cfg.kernel = args.get("kernel", "");
            std::vector<double> truth, est;
            double err_sum = 0, err_sum2 = 0, ip_err2 = 0;
            std::unique_ptr<tqkv::VectorCodec> codec;
            for (size_t c = 0; c < clusters; ++c) {
                cfg.seed = seed * 1000003 + c;
                const auto x = unit_vectors(per, d, cfg.seed * 3 + 1);
                const auto w = unit_vectors(per, d, cfg.seed * 3 + 2);
                if (bits != std::floor(bits)) {
                    // Unit vectors have no outlier channels: any channels will do; take the first.
                    const int k = int(std::lround((bits - std::floor(bits)) / cfg.high_extra_bits * d));
                    cfg.high_channels.resize(k);
                    for (int i = 0; i < k; ++i) cfg.high_channels[i] = i;
                }
                codec = tqkv::make_codec(cfg);
                const auto codes = codec->encode(x);
                const auto y = codec->decode(codes);
                for (size_t v = 0; v < per; ++v) {
                    double e = 0;
                    for (int j = 0; j < d; ++j) e += double(x[v * d + j] - y[v * d + j]) * (x[v * d + j] - y[v * d + j]);
                    err_sum += e, err_sum2 += e * e;
                }
                tqkv::Rng rng(cfg.seed);
                std::vector<float> q(d), score(1);
                const size_t bpv = codec->bytes_per_vector();
                for (size_t v = 0; v < per; ++v) {
                    const double rho = 2 * rng.uniform() - 1, perp = std::sqrt(1 - rho * rho);
                    double t = 0;
                    for (int j = 0; j < d; ++j) {
                        q[j] = float(rho * x[v * d + j] + perp * w[v * d + j]);
                        t += double(q[j]) * x[v * d + j];
                    }
                    codec->dot(q, std::span(codes).subspan(v * bpv, bpv), score);
                    truth.push_back(t);
                    est.push_back(score[0]);
                    ip_err2 += (score[0] - t) * (score[0] - t);
                }
            }
            const double n = double(clusters * per);
            const double mse = err_sum / n, mse_se = std::sqrt((err_sum2 / n - mse * mse) / n);
            // Least squares slope of estimate on truth, cluster-robust standard error.
            double mt = 0, me = 0;
            for (size_t i = 0; i < truth.size(); ++i) mt += truth[i], me += est[i];
            mt /= n, me /= n;
            double sxx = 0, sxy = 0;
            for (size_t i = 0; i < truth.size(); ++i)
                sxx += (truth[i] - mt) * (truth[i] - mt), sxy += (truth[i] - mt) * (est[i] - me);
            const double slope = sxy / sxx, icpt = me - slope * mt;
            // Vectors coded with the same seed share one rotation, so errors are correlated within
            // a seed: cluster by seed. One seed alone leaves no between-cluster variation (the
            // least-squares residuals sum to zero), so fall back to per-vector (HC0) errors.
            const size_t group = clusters >= 2 ? per : 1;
            double meat = 0;
            for (size_t c0 = 0; c0 < truth.size(); c0 += group) {
                double s = 0;
                for (size_t i = c0; i < c0 + group; ++i) s += (truth[i] - mt) * (est[i] - icpt - slope * truth[i]);
                meat += s * s;
            }
            const double slope_se = std::sqrt(meat) / sxx;
            const double theory = theory_mse(*codec), code_bits = bits;
            const double shannon = std::pow(4.0, -code_bits);
            if (json) {
                Json j;
                j.add("method", mname).add("dim", d).add("bits", bits).add("vectors", size_t(n)).add("mse", mse)
                    .add("theory_mse", theory).add("shannon_bound", shannon).add("ip_slope", slope)
                    .add("ip_slope_se", slope_se).add("ip_rmse", std::sqrt(ip_err2 / n))
                    .add("bits_per_coord", codec->bits_per_coord()).add("mse_se", mse_se)
                    .add("ip_slope_target", slope_target(*codec)).add("codec_seeds", clusters)
                    .add("kernel", codec->kernel());
                std::cout << j.str() << std::endl;
            } else {
                table.row({mname, fmt("%g", bits), fmt("%.4g", codec->bits_per_coord()), fmt("%.5f", mse),
                           fmt("%.5f", theory), fmt("%.5f", shannon), fmt("%.4f", slope),
                           fmt("%.4f", slope_target(*codec)), fmt("%.4f", slope_se),
                           fmt("%.4f", std::sqrt(ip_err2 / n))});
            }
        }
    }
    if (!json) {
        std::printf("tqkv-bench quality: d=%d, %zu random unit vectors per row (%zu codec seeds), kernel %s\n", d,
                    clusters * per, clusters, tqkv::default_kernel().c_str());
        table.print();
        std::printf("mse = E||u - û||^2; theory = exact Lloyd–Max value (prod: D_{b-1}(pi/2 - 1/d), qjl: pi/2 - 1/d);\n"
                    "ip slope = least-squares slope of the estimated <q,x> on the true one (target 1 - D_b for mse,\n"
                    "1 for the unbiased prod and qjl); ip rmse = RMS error of <q,x> for unit q, x.\n");
    }
    return 0;
}

}  // namespace bench
