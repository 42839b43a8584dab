// Every SIMD kernel against the scalar reference: bit-identical where the kernel decides codes,
// within a stated tolerance where only the summation order differs (dot_codes).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels.hpp"
#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;
using detail::KernelTable;

namespace {

std::vector<std::string> simd_kernels() {
    std::vector<std::string> out;
    for (const auto& k : available_kernels())
        if (k != "scalar") out.push_back(k);
    return out;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// Inputs that stress each kernel: Gaussian, zeros, denormals, huge values, mixed signs/scales.
std::vector<std::vector<float>> test_inputs(int n, uint64_t seed) {
    Rng rng(seed);
    std::vector<std::vector<float>> in;
    auto add = [&](auto gen) {
        std::vector<float> x(n);
        for (int i = 0; i < n; ++i) x[i] = gen(i);
        in.push_back(x);
    };
    add([&](int) { return float(rng.normal()); });
    add([&](int) { return 0.0f; });
    add([&](int i) { return (i % 3 ? 1 : -1) * float(rng.uniform()) * 1e-39f; });            // denormals
    add([&](int) { return float(rng.normal()) * 1e30f; });                                    // huge
    add([&](int i) { return float(rng.normal()) * (i % 7 == 0 ? 1e4f : 1e-4f); });            // mixed scales
    add([&](int i) { return i % 2 ? -0.0f : float(std::ldexp(1.0, int(rng.below(60)) - 30)); });
    return in;
}

}  // namespace

TEST_CASE("SIMD kernels: element-wise and canonical-order reductions are bit-identical to scalar",
          "[kernels]") {
    const KernelTable& ref = detail::scalar_kernels();
    for (const auto& name : simd_kernels()) {
        const KernelTable& k = detail::kernels_by_name(name.c_str());
        for (int n : {16, 32, 48, 64, 80, 96, 112, 128, 256, 1024}) {
            int case_no = 0;
            for (const auto& x : test_inputs(n, uint64_t(n))) {
                INFO(name << " n=" << n << " input " << case_no++);
                CHECK(k.max_abs(x.data(), n) == ref.max_abs(x.data(), n));
                const float a = k.sum_squares(x.data(), n), b = ref.sum_squares(x.data(), n);
                CHECK(std::memcmp(&a, &b, 4) == 0);

                std::vector<float> p = x, q = x;
                k.scale(p.data(), n, 0.7f);
                ref.scale(q.data(), n, 0.7f);
                CHECK(same_bits(p.data(), q.data(), n));

                std::vector<uint32_t> mask(n / 32 + 1);
                Rng rng(n);
                for (auto& w : mask) w = uint32_t(rng.next());
                p = x, q = x;
                k.flip_signs(p.data(), mask.data(), n);
                ref.flip_signs(q.data(), mask.data(), n);
                CHECK(same_bits(p.data(), q.data(), n));

                for (int block = 2; block <= n; block *= 2) {
                    if (n % block) break;
                    p = x, q = x;
                    k.fwht(p.data(), n, block);
                    ref.fwht(q.data(), n, block);
                    INFO("fwht block " << block);
                    CHECK(same_bits(p.data(), q.data(), n));
                }
            }
            // fwht on a power-of-two length below the padding (dims 4, 8).
            for (int small : {4, 8}) {
                std::vector<float> p(16), q(16);
                for (int i = 0; i < 16; ++i) p[i] = q[i] = float(i * 3 % 7) - 2.5f;
                k.fwht(p.data(), small, small);
                ref.fwht(q.data(), small, small);
                CHECK(same_bits(p.data(), q.data(), 16));
            }
        }
        // matvec with padded rows, any column count.
        for (int cols : {3, 20, 64, 80, 96, 128, 256}) {
            const int rows = detail::pad_lanes(cols);
            const auto m = tqkv_test::gaussian_vectors(size_t(cols), rows, 11);
            for (const auto& xin : test_inputs(rows, 5)) {
                std::vector<float> y1(rows), y2(rows);
                k.matvec(m.data(), rows, cols, xin.data(), y1.data());
                ref.matvec(m.data(), rows, cols, xin.data(), y2.data());
                INFO(name << " matvec cols=" << cols);
                CHECK(same_bits(y1.data(), y2.data(), rows));
            }
        }
    }
}

TEST_CASE("SIMD kernels: quantize, lookup, pack, unpack are bit-identical, including values on boundaries",
          "[kernels]") {
    const KernelTable& ref = detail::scalar_kernels();
    for (const auto& name : simd_kernels()) {
        const KernelTable& k = detail::kernels_by_name(name.c_str());
        for (int b = 1; b <= 8; ++b)
            for (int d : {16, 64, 80, 128, 1024}) {
                INFO(name << " b=" << b << " d=" << d);
                const auto cb = LloydMaxCodebook::get(std::max(d, 3), b);
                const float* bounds = cb->boundaries_f().data();
                const int nb = (1 << b) - 1;
                // Values exactly on boundaries, one ulp either side, beyond the ends, and Gaussian.
                Rng rng(uint64_t(b * 1000 + d));
                std::vector<float> x(d);
                for (int i = 0; i < d; ++i) {
                    const float t = bounds[rng.below(nb)];
                    switch (i % 5) {
                        case 0: x[i] = t; break;
                        case 1: x[i] = std::nextafter(t, -INFINITY); break;
                        case 2: x[i] = std::nextafter(t, INFINITY); break;
                        case 3: x[i] = float(rng.normal() / std::sqrt(double(d))); break;
                        default: x[i] = (i % 2 ? 10.0f : -10.0f); break;
                    }
                }
                std::vector<uint8_t> c1(d), c2(d);
                k.quantize(x.data(), d, bounds, b, c1.data());
                ref.quantize(x.data(), d, bounds, b, c2.data());
                CHECK(c1 == c2);
                for (int i = 0; i < d; i += 5) CHECK(int(c2[i]) >= 1);  // x == bounds[k] counts as above it

                std::vector<float> l1(d), l2(d);
                k.lookup(c1.data(), d, cb->centroids_f().data(), l1.data());
                ref.lookup(c2.data(), d, cb->centroids_f().data(), l2.data());
                CHECK(same_bits(l1.data(), l2.data(), d));

                for (int n : {d, d - 1, d - 3, 5, 1}) {
                    if (n < 1) continue;
                    const size_t bytes = packed_bytes(size_t(n), b);
                    std::vector<uint8_t> p1(bytes + 8, 0xCD), p2(bytes + 8, 0xCD);
                    k.pack(c1.data(), n, b, p1.data());
                    ref.pack(c2.data(), n, b, p2.data());
                    CHECK(p1 == p2);  // includes the guard bytes: nothing written past the end
                    std::vector<uint8_t> u1(n + 64, 0xEE), u2(n + 64, 0xEE);
                    k.unpack(p1.data(), n, b, u1.data());
                    ref.unpack(p2.data(), n, b, u2.data());
                    CHECK(std::equal(u1.begin(), u1.begin() + n, u2.begin()));
                }
            }
    }
}

TEST_CASE("SIMD kernels: fp16 conversion gives the reference bits", "[kernels][fp16]") {
    const KernelTable& ref = detail::scalar_kernels();
    std::vector<float> x;
    Rng rng(21);
    for (int i = 0; i < 100000; ++i) {
        uint32_t bits = uint32_t(rng.next());
        if (i % 2) bits = (bits & 0x807fffff) | uint32_t(100 + rng.below(45)) << 23;
        float f;
        std::memcpy(&f, &bits, 4);
        if (!std::isnan(f)) x.push_back(f);
    }
    for (float f : {65504.0f, 65519.99f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-24f, 0x1p-14f, 0.0f, -0.0f, INFINITY})
        x.push_back(f);
    for (const auto& name : simd_kernels()) {
        const KernelTable& k = detail::kernels_by_name(name.c_str());
        std::vector<uint16_t> h1(x.size()), h2(x.size());
        k.to_half(x.data(), x.size(), h1.data());
        ref.to_half(x.data(), x.size(), h2.data());
        INFO(name);
        CHECK(h1 == h2);
        std::vector<uint16_t> all(0x10000);
        for (uint32_t i = 0; i < 0x10000; ++i) all[i] = uint16_t(i);
        std::vector<float> f1(all.size()), f2(all.size());
        k.from_half(all.data(), all.size(), f1.data());
        ref.from_half(all.data(), all.size(), f2.data());
        size_t mismatches = 0;
        for (size_t i = 0; i < all.size(); ++i)
            if (!std::isnan(f2[i]) && std::memcmp(&f1[i], &f2[i], 4) != 0) ++mismatches;
        CHECK(mismatches == 0);
    }
}

TEST_CASE("SIMD kernels: dot_codes matches the scalar look-up-table sum", "[kernels]") {
    // Different summation order only: |error| <= n * eps * sum |q_i c_i| (a loose form of the
    // standard bound gamma_n * sum |terms|), checked per vector.
    const KernelTable& ref = detail::scalar_kernels();
    for (const auto& name : simd_kernels()) {
        const KernelTable& k = detail::kernels_by_name(name.c_str());
        for (int b = 1; b <= 8; ++b)
            for (int d : {3, 16, 33, 64, 80, 96, 128, 256, 1024}) {
                const auto cb = LloydMaxCodebook::get(d, b);
                const int padded = detail::pad_lanes(d);
                auto q = tqkv_test::gaussian_vectors(1, padded, uint64_t(d + b));
                std::fill(q.begin() + d, q.end(), 0.0f);
                const size_t count = 37, stride = packed_bytes(size_t(d), b) + (d % 3);  // odd strides too
                std::vector<uint8_t> packed(count * stride);
                Rng rng(uint64_t(7 * d + b));
                for (auto& byte : packed) byte = uint8_t(rng.next());
                std::vector<float> s1(count), s2(count);
                k.dot_codes(q.data(), d, cb->centroids_f().data(), b, packed.data(), stride, count, s1.data());
                ref.dot_codes(q.data(), d, cb->centroids_f().data(), b, packed.data(), stride, count, s2.data());
                double max_abs_term = 0;
                for (int i = 0; i < d; ++i) max_abs_term += std::fabs(q[i]) * std::fabs(cb->centroids()[(1 << b) - 1]);
                const double tol = d * 6e-8 * max_abs_term;
                INFO(name << " b=" << b << " d=" << d);
                for (size_t v = 0; v < count; ++v) CHECK(std::fabs(s1[v] - s2[v]) <= tol);
            }
    }
}

TEST_CASE("attention kernels: the online softmax's exp_sum and max_f32 against the scalar reference", "[kernels]") {
    // exp_sum: each element within the two exps' errors (the kernel's < 2e-7 relative, std::exp's
    // < 1 ulp = 2^-23 relative; results below FLT_MIN may flush to 0); the sum, of terms >= 0, also
    // within the two summation orders' (n - 1) u each (u = 2^-24). Exactly 1 at x = m, 0 at -inf.
    // max_f32: exact.
    const auto& ref = detail::scalar_attention();
    const float inf = std::numeric_limits<float>::infinity(), tiny = std::numeric_limits<float>::min();
    const double rel = 2e-7 + std::ldexp(1.0, -23);
    for (const auto& name : simd_kernels()) {
        const auto& ak = detail::attention_for(detail::kernels_by_name(name.c_str()));
        for (int n : {1, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 47, 63, 64, 100, 256}) {
            Rng rng(uint64_t(n) * 31 + 7);
            for (int kind = 0; kind < 5; ++kind) {
                std::vector<float> x(n);
                for (int i = 0; i < n; ++i) {
                    const float g = float(rng.normal());
                    x[i] = kind == 0   ? 5 * g                                            // scores
                           : kind == 1 ? (i % 3 == 1 ? -inf : 8 * g)                      // masked tokens
                           : kind == 2 ? -80.0f - 30.0f * float(rng.uniform())            // underflow, denormals
                           : kind == 3 ? 1.5f                                             // all at the max
                                       : float(rng.uniform()) * 1e-3f - 60.0f * (i & 1);  // far below
                }
                if (kind == 2 || kind == 4) x[0] = 0.0f;  // the max
                const float m = kind == 4 ? 30.0f : ref.max_f32(x.data(), n);  // kind 4: an earlier chunk's larger max
                INFO(name << " n=" << n << " kind " << kind);
                REQUIRE(ak.max_f32(x.data(), n) == ref.max_f32(x.data(), n));
                std::vector<float> a = x, b = x;
                const float sa = ak.exp_sum(a.data(), n, m), sb = ref.exp_sum(b.data(), n, m);
                double total = 0;
                for (int i = 0; i < n; ++i) {
                    CHECK(std::fabs(double(a[i]) - b[i]) <= rel * b[i] + tiny);
                    if (x[i] == -inf) CHECK(a[i] == 0.0f);
                    if (x[i] == m) CHECK(a[i] == 1.0f);
                    total += b[i];
                }
                CHECK(std::fabs(double(sa) - sb) <= (rel + 2.0 * n * std::ldexp(1.0, -24)) * total + n * tiny);
            }
        }
    }
}

TEST_CASE("prepared (fixed-point) 4-bit key scores stay within their error bound, on every kernel", "[kernels]") {
    // Kernels with prepare_scores (wasm, AVX2) score 4-bit keys from integer tables: the error is
    // bounded by rounding each entry to a multiple of delta, which both kernels keep below
    // 2e-6 dim a_max (a_max = max |lut|) up to kMaxDim; checked against double sums with a loose
    // 6e-6 dim a_max, per head. Head dims cover a partial last chunk and R < 127 (AVX2, dim > 256);
    // tables with a NaN or of denormal size must be refused (the driver then uses float tables).
    const uint16_t half_norms[4] = {0x3c00, 0x4000, 0x3800, 0x3e00};  // 1, 2, 0.5, 1.5
    const float scale = 0.125f;
    for (const auto& name : available_kernels()) {
        const auto& ak = detail::attention_for(detail::kernels_by_name(name.c_str()));
        if (!ak.prepare_scores) continue;
        for (int dim : {3, 66, 128, 257, 1024})
            for (int heads : {1, 3})
                for (int kind = 0; kind < 5; ++kind) {
                    INFO(name << " dim " << dim << " heads " << heads << " kind " << kind);
                    Rng rng(uint64_t(dim * 31 + heads * 7 + kind));
                    const int chunks = (dim + 3) / 4;
                    std::vector<uint8_t> codes(size_t(chunks) * 64);
                    for (auto& c : codes) c = uint8_t(rng.next());
                    auto code = [&](int t, int j) {
                        uint32_t w;
                        std::memcpy(&w, &codes[size_t(j / 4) * 64 + 4 * (t % 16)], 4);
                        return int(w >> (4 * (j % 4) + (t >= 16 ? 16 : 0))) & 15;
                    };
                    for (int j = dim; j < chunks * 4; ++j)  // unused slots of the last chunk are zero
                        for (int t = 0; t < 32; ++t) {
                            uint8_t* w = &codes[size_t(j / 4) * 64 + 4 * (t % 16) + (t >= 16 ? 2 : 0)];
                            const int bit = 4 * (j % 4);
                            w[bit / 8] &= uint8_t(~(15 << (bit % 8)));
                        }
                    // lut[h][j][k] = q_j * c_k for a symmetric 16-level table c.
                    float c[16];
                    for (int k = 0; k < 8; ++k) {
                        c[8 + k] = float(0.13 * (k + 1) + 0.01 * k * k);
                        c[7 - k] = -c[8 + k];
                    }
                    std::vector<float> lut(size_t(heads) * dim * 16);
                    for (int h = 0; h < heads; ++h)
                        for (int j = 0; j < dim; ++j) {
                            double q = rng.normal();
                            if (kind == 1 && j == dim / 2) q *= 1e3;  // one spiky coordinate
                            if (kind == 2) q = 0;                     // all zero
                            if (kind == 3) q *= 1e-36;                // delta would not be normal
                            for (int k = 0; k < 16; ++k) lut[(size_t(h) * dim + j) * 16 + k] = float(q) * c[k];
                        }
                    if (kind == 4) lut[lut.size() / 2] = std::numeric_limits<float>::quiet_NaN();
                    std::vector<uint8_t> table(ak.scores_table_bytes(dim, 4, heads));
                    const bool ok = ak.prepare_scores(lut.data(), dim, 4, heads, table.data());
                    if (kind >= 3) {
                        CHECK_FALSE(ok);
                        continue;
                    }
                    REQUIRE(ok);
                    uint16_t norms[32];
                    for (int t = 0; t < 32; ++t) norms[t] = half_norms[t % 4];
                    const int stride = 40;
                    std::vector<float> out(size_t(heads) * stride, -1.0f);
                    ak.group_scores_prepared(codes.data(), dim, 4, table.data(), heads, norms, scale, out.data(), stride);
                    for (int h = 0; h < heads; ++h) {
                        double a_max = 0;
                        for (int i = 0; i < dim * 16; ++i) a_max = std::max(a_max, double(std::fabs(lut[size_t(h) * dim * 16 + i])));
                        for (int t = 0; t < 32; ++t) {
                            double raw = 0;
                            for (int j = 0; j < dim; ++j) raw += lut[(size_t(h) * dim + j) * 16 + code(t, j)];
                            const double f = (t % 4 == 0 ? 1.0 : t % 4 == 1 ? 2.0 : t % 4 == 2 ? 0.5 : 1.5) * scale;
                            const double expect = raw * f;
                            CHECK(std::fabs(out[size_t(h) * stride + t] - expect) <= f * 6e-6 * dim * a_max + 1e-6 * std::fabs(expect));
                        }
                    }
                }
    }
}

TEST_CASE("codecs give bit-identical bytes on every kernel", "[kernels][codec]") {
    const std::vector<std::string> simd = simd_kernels();
    for (int d : {64, 80, 96, 128, 256})
        for (auto method : {Method::Mse, Method::Prod, Method::Qjl})
            for (int b = 1; b <= 8; ++b) {
                if (method == Method::Prod && b < 2) continue;
                if (method == Method::Qjl && b != 1) continue;
                for (auto norm : {NormFormat::F16, NormFormat::F32}) {
                    CodecConfig cfg;
                    cfg.dim = d;
                    cfg.bits = b;
                    cfg.method = method;
                    cfg.norm = norm;
                    cfg.seed = 99;
                    cfg.kernel = "scalar";
                    const auto ref = make_codec(cfg);
                    // Gaussian rows, a zero row, denormal rows, large rows, one-hot rows.
                    auto x = tqkv_test::gaussian_vectors(40, d, uint64_t(d * 31 + b));
                    std::fill(x.begin(), x.begin() + d, 0.0f);
                    for (int j = 0; j < d; ++j) {
                        x[d + j] = float(j % 5) * 1e-41f;
                        x[2 * d + j] *= (norm == NormFormat::F32 ? 1e30f : 1e3f);
                        x[3 * d + j] = j == 7 ? -3.0f : 0.0f;
                    }
                    const auto expect = ref->encode(x);
                    for (const auto& name : simd) {
                        cfg.kernel = name;
                        const auto codec = make_codec(cfg);
                        INFO(name << " d=" << d << " " << codec->name() << " norm "
                                  << (norm == NormFormat::F16 ? "f16" : "f32"));
                        const auto got = codec->encode(x);
                        CHECK(got == expect);
                        // Decode and dot: same values up to summation order.
                        const auto y1 = codec->decode(got), y2 = ref->decode(expect);
                        double worst = 0, scale = 0;
                        for (size_t i = 0; i < y1.size(); ++i) {
                            worst = std::max(worst, double(std::fabs(y1[i] - y2[i])));
                            scale = std::max(scale, double(std::fabs(y2[i])));
                        }
                        CHECK(worst <= 1e-5 * scale);
                    }
                }
            }
}

TEST_CASE("TQKV_KERNEL names and unknown kernels", "[kernels]") {
    CHECK(available_kernels().back() == "scalar");
    CHECK_THROWS_AS(detail::kernels_by_name("sse9"), std::invalid_argument);
    CodecConfig cfg;
    cfg.kernel = "bogus";
    CHECK_THROWS_WITH(make_codec(cfg), Catch::Contains("unknown kernel"));
}
