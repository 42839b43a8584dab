// The bounded-error fast path (kernels/simd/fast_attention.hpp): every kernel this machine runs
// (and the templates on the plain C++ backend) gives the scalar reference's bits, and the
// reference stays within the error bound derived in the kernel, on random and adversarial inputs.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "kernels/simd/emulated.hpp"
#include "kernels/simd/fast_attention.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;
using detail::AttentionKernels;
using detail::FastValueTable;

namespace {

// The fast entries under test: each available kernel's, and the templates on the emulated backend.
struct FastUnderTest {
    std::string name;
    size_t (*table_bytes)(int, int, int);
    bool (*prepare)(const float*, int, int, int, float, void*);
    void (*scores)(const uint8_t*, int, int, const void*, int, const uint16_t*, float*, int);
    void (*accumulate)(const uint8_t*, int, int, const FastValueTable&, const float*, int, const uint16_t*, int, float*);
};

std::vector<FastUnderTest> fast_kernels() {
    std::vector<FastUnderTest> out;
    for (const auto& name : available_kernels()) {
        if (name == "scalar") continue;
        const AttentionKernels& ak = detail::attention_for(detail::kernels_by_name(name.c_str()));
        if (ak.fast_prepare_scores)
            out.push_back({name, ak.fast_scores_table_bytes, ak.fast_prepare_scores, ak.fast_group_scores,
                           ak.fast_group_accumulate});
    }
    using E = detail::simd::Emulated;
    out.push_back({"emulated", detail::fast_scores_table_bytes, detail::fast::prepare_scores<E>,
                   detail::fast::group_scores<E>, detail::fast::group_accumulate<E>});
    return out;
}

const AttentionKernels& reference() { return detail::scalar_attention(); }

// A group of 32 tokens with random codes in the cache layout (unused slots zero).
std::vector<uint8_t> random_group(int dim, int bits, Rng& rng, int kind) {
    std::vector<uint8_t> g(detail::group_code_bytes(dim, bits), 0), codes(dim);
    for (int t = 0; t < 32; ++t) {
        for (int j = 0; j < dim; ++j) {
            const int top = (1 << bits) - 1;
            codes[j] = kind == 1 ? uint8_t(top) : kind == 2 ? 0 : uint8_t(rng.next() & top);  // all max / all zero / random
        }
        detail::set_group_codes(g.data(), dim, bits, t, codes.data());
    }
    return g;
}

// A symmetric, ascending table of 2^bits centroids replicated to 16 entries, as kernel tables are.
std::vector<float> centroid_table(int bits, double spread) {
    const int levels = 1 << bits;
    std::vector<double> c(levels);
    for (int k = 0; k < levels / 2; ++k) {
        c[levels / 2 + k] = spread * (0.13 * (k + 1) + 0.011 * k * k);
        c[levels / 2 - 1 - k] = -c[levels / 2 + k];
    }
    std::vector<float> t(16);
    for (int e = 0; e < 16; ++e) t[e] = float(c[e & (levels - 1)]);
    return t;
}

// Look-up tables lut[h][j][e] = q_j * c_e of a few shapes: Gaussian, one huge coordinate, all
// entries equal (zero range), tiny, huge.
std::vector<float> make_lut(int heads, int dim, const std::vector<float>& c, Rng& rng, int kind) {
    std::vector<float> lut(size_t(heads) * dim * 16);
    for (int h = 0; h < heads; ++h)
        for (int j = 0; j < dim; ++j) {
            double q = rng.normal();
            if (kind == 1 && j == (dim * 2) / 3) q *= 1e4;  // one spiky coordinate
            if (kind == 3) q *= 1e-30;
            if (kind == 4) q *= 1e30;
            for (int e = 0; e < 16; ++e)
                lut[(size_t(h) * dim + j) * 16 + e] = kind == 2 ? 0.75f : float(q) * c[e];
        }
    return lut;
}

uint16_t half_of(float x) { return float_to_half(x); }

}  // namespace

TEST_CASE("fast key scores: every kernel gives the reference's bits, within the derived bound", "[kernels][fast]") {
    const auto kernels = fast_kernels();
    const float scale = 0.0883883476f;  // 1 / sqrt(128)
    int checked = 0;
    for (int bits = 1; bits <= 4; ++bits)
        for (int dim : {3, 5, 36, 66, 128, 257, 520, 1024})
            for (int heads : {1, 2, 3})
                for (int kind = 0; kind < 5; ++kind) {
                    if (dim > 260 && heads > 1) continue;  // large dims: one head is enough
                    INFO("bits " << bits << " dim " << dim << " heads " << heads << " kind " << kind);
                    Rng rng(uint64_t(bits * 100003 + dim * 31 + heads * 7 + kind));
                    const auto c = centroid_table(bits, 1.0 / std::sqrt(double(dim)));
                    const auto lut = make_lut(heads, dim, c, rng, kind);
                    const size_t bytes = reference().fast_scores_table_bytes(dim, bits, heads);
                    REQUIRE(bytes > 0);
                    std::vector<uint8_t> ref_table(bytes, 0xcd);
                    REQUIRE(reference().fast_prepare_scores(lut.data(), dim, bits, heads, scale, ref_table.data()));
                    // Norms: ordinary, fp16's largest, a subnormal, zero.
                    uint16_t norms[32];
                    for (int t = 0; t < 32; ++t) {
                        const float n = float(0.5 + rng.uniform() * 20);
                        norms[t] = t == 5 ? uint16_t(0x7bff) : t == 6 ? uint16_t(0x0001) : t == 7 ? uint16_t(0) : half_of(n);
                    }
                    for (int code_kind = 0; code_kind < 3; ++code_kind) {
                        const auto g = random_group(dim, bits, rng, code_kind);
                        const int stride = 37;
                        std::vector<float> ref(size_t(heads) * stride, -7.0f);
                        reference().fast_group_scores(g.data(), dim, bits, ref_table.data(), heads, norms, ref.data(), stride);
                        // The reference against the exact sum, within the bound stored in the table.
                        const size_t head_bytes = ref_table.size() / heads;
                        for (int h = 0; h < heads; ++h) {
                            detail::fast::ScoresHeader hd;
                            std::memcpy(&hd, ref_table.data() + h * head_bytes, sizeof hd);
                            for (int t = 0; t < 32; ++t) {
                                double exact = 0;
                                for (int j = 0; j < dim; ++j)
                                    exact += lut[(size_t(h) * dim + j) * 16 + detail::group_code(g.data(), dim, bits, t, j)];
                                const double n = half_to_float(norms[t]);
                                const double got = ref[size_t(h) * stride + t];
                                const double err = std::fabs(got - n * scale * exact);
                                const double allowed = n * hd.bound * (1 + 1e-6) + std::fabs(got) * 1.2e-7;
                                if (!(err <= allowed)) {
                                    INFO("h " << h << " t " << t << " got " << got << " exact " << n * scale * exact << " bound " << allowed);
                                    CHECK(err <= allowed);
                                }
                            }
                        }
                        for (const auto& k : kernels) {
                            INFO(k.name << " codes " << code_kind);
                            std::vector<uint8_t> table(k.table_bytes(dim, bits, heads), 0x5a);
                            REQUIRE(table.size() == bytes);
                            REQUIRE(k.prepare(lut.data(), dim, bits, heads, scale, table.data()));
                            CHECK(table == ref_table);
                            std::vector<float> out(size_t(heads) * stride, -7.0f);
                            k.scores(g.data(), dim, bits, ref_table.data(), heads, norms, out.data(), stride);
                            CHECK(std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) == 0);
                            ++checked;
                        }
                    }
                }
    CHECK(checked > 0);
}

TEST_CASE("fast key tables: refused for NaN, infinities and ranges of denormal size", "[kernels][fast]") {
    const int dim = 64, heads = 2;
    const auto c = centroid_table(4, 0.1);
    for (int bad = 0; bad < 4; ++bad) {
        Rng rng{uint64_t(bad)};
        auto lut = make_lut(heads, dim, c, rng, 0);
        if (bad == 0) lut[lut.size() - 3] = std::numeric_limits<float>::quiet_NaN();
        if (bad == 1) lut[17] = std::numeric_limits<float>::infinity();
        if (bad == 2)  // finite entries whose range overflows
            for (int e = 0; e < 16; ++e) lut[16 * 9 + e] = e % 2 ? 3e38f : -3e38f;
        if (bad == 3)
            for (auto& x : lut) x *= 1e-41f;  // a denormal range: 4095 / R is not finite
        std::vector<uint8_t> table(reference().fast_scores_table_bytes(dim, 4, heads));
        CHECK_FALSE(reference().fast_prepare_scores(lut.data(), dim, 4, heads, 0.125f, table.data()));
        for (const auto& k : fast_kernels()) {
            INFO(k.name << " case " << bad);
            CHECK_FALSE(k.prepare(lut.data(), dim, 4, heads, 0.125f, table.data()));
        }
    }
    std::vector<float> lut(size_t(dim) * 16, 1.0f);
    std::vector<uint8_t> table(4096);
    CHECK_FALSE(reference().fast_prepare_scores(lut.data(), dim, 5, 1, 0.125f, table.data()));  // 5 bits: not handled
    CHECK(reference().fast_scores_table_bytes(dim, 5, 1) == 0);
    CHECK_FALSE(reference().fast_prepare_scores(lut.data(), dim, 4, 1, std::numeric_limits<float>::infinity(), table.data()));
}

TEST_CASE("fast key scores on the real 4-bit codebook follow the RMS model", "[kernels][fast]") {
    // The RMS of the table rounding error over many tokens is close to the model delta sqrt(n_u / 12)
    // the header states (uniform, independent roundings), and well below the worst-case bound.
    const int dim = 128, bits = 4;
    const auto cb = LloydMaxCodebook::get(dim, bits);
    std::vector<float> c(16);
    for (int e = 0; e < 16; ++e) c[e] = cb->centroids_f()[e];
    Rng rng(42);
    const auto lut = make_lut(1, dim, c, rng, 0);
    std::vector<uint8_t> table(reference().fast_scores_table_bytes(dim, bits, 1));
    REQUIRE(reference().fast_prepare_scores(lut.data(), dim, bits, 1, 1.0f, table.data()));
    detail::fast::ScoresHeader hd;
    std::memcpy(&hd, table.data(), sizeof hd);
    uint16_t norms[32];
    for (auto& n : norms) n = 0x3c00;  // 1
    double sq = 0;
    int count = 0;
    for (int rep = 0; rep < 64; ++rep) {
        const auto g = random_group(dim, bits, rng, 0);
        float out[32];
        reference().fast_group_scores(g.data(), dim, bits, table.data(), 1, norms, out, 32);
        for (int t = 0; t < 32; ++t, ++count) {
            double exact = 0;
            for (int j = 0; j < dim; ++j) exact += lut[size_t(j) * 16 + detail::group_code(g.data(), dim, bits, t, j)];
            sq += (out[t] - exact) * (out[t] - exact);
        }
    }
    const double rms = std::sqrt(sq / count);
    INFO("measured RMS " << rms << " model " << hd.rms << " bound " << hd.bound);
    CHECK(rms > 0.5 * hd.rms);
    CHECK(rms < 1.5 * hd.rms);
    CHECK(hd.bound > 5 * hd.rms);
}

TEST_CASE("fast value accumulation: every kernel gives the reference's bits, within the derived bound", "[kernels][fast]") {
    const auto kernels = fast_kernels();
    int checked = 0;
    for (int bits = 1; bits <= 4; ++bits) {
        const auto cb = LloydMaxCodebook::get(128, bits);
        std::vector<float> ctab(16);
        for (int e = 0; e < 16; ++e) ctab[e] = cb->centroids_f()[e & ((1 << bits) - 1)];
        const FastValueTable vt = detail::make_fast_values(ctab.data());
        REQUIRE(vt.max_abs > 0);
        CHECK(vt.max_error <= vt.max_abs / 254 * 1.0001);  // never worse than the plain 127 / max scale
        for (int dim : {3, 5, 36, 66, 128, 257, 1024})
            for (int heads : {1, 2, 3, 5})
                for (int kind = 0; kind < 6; ++kind) {
                    if (dim > 260 && heads > 2) continue;
                    INFO("bits " << bits << " dim " << dim << " heads " << heads << " kind " << kind);
                    Rng rng(uint64_t(bits * 7919 + dim * 13 + heads * 3 + kind));
                    const auto g = random_group(dim, bits, rng, kind == 5 ? 1 : 0);
                    // Softmax numerators: random, one dominant token, all equal, tiny, a head of zeros.
                    const int p_stride = 40;
                    std::vector<float> p(size_t(heads) * p_stride, 0.0f);
                    for (int h = 0; h < heads; ++h)
                        for (int t = 0; t < 32; ++t) {
                            float x = float(std::exp(-8 * rng.uniform()));
                            if (kind == 1) x = t == 11 ? 1.0f : float(1e-6 * rng.uniform());
                            if (kind == 2) x = 0.25f;
                            if (kind == 3) x *= 1e-30f;
                            if (kind == 4 && h == heads - 1) x = 0;
                            if (t == 30) x = 0;  // a masked token
                            p[size_t(h) * p_stride + t] = x;
                        }
                    uint16_t norms[32];
                    for (int t = 0; t < 32; ++t)
                        norms[t] = t == 3 ? uint16_t(0x7bff) : t == 4 ? uint16_t(0x0001) : half_of(float(0.5 + 10 * rng.uniform()));
                    // Accumulators start with arbitrary contents (the kernels add to them).
                    std::vector<float> start(size_t(heads) * dim * 16);
                    for (auto& a : start) a = float(rng.normal());
                    std::vector<float> ref = start;
                    reference().fast_group_accumulate(g.data(), dim, bits, vt, p.data(), p_stride, norms, heads, ref.data());
                    for (const auto& k : kernels) {
                        INFO(k.name);
                        std::vector<float> acc = start;
                        k.accumulate(g.data(), dim, bits, vt, p.data(), p_stride, norms, heads, acc.data());
                        CHECK(std::memcmp(acc.data(), ref.data(), acc.size() * sizeof(float)) == 0);
                        ++checked;
                    }
                    // The contribution alone (from zeros) against the exact weighted sum.
                    std::vector<float> zero(size_t(heads) * dim * 16, 0.0f);
                    reference().fast_group_accumulate(g.data(), dim, bits, vt, p.data(), p_stride, norms, heads, zero.data());
                    for (int h = 0; h < heads; ++h) {
                        double w[32], M = 0, wsum = 0;
                        int nz = 0;
                        for (int t = 0; t < 32; ++t) {
                            w[t] = double(float(p[size_t(h) * p_stride + t] * half_to_float(norms[t])));
                            M = std::max(M, w[t]), wsum += w[t], nz += w[t] > 0;
                        }
                        const double ws = M / 32767;
                        for (int j = 0; j < dim; ++j) {
                            double exact = 0, got = 0;
                            for (int t = 0; t < 32; ++t) exact += w[t] * ctab[detail::group_code(g.data(), dim, bits, t, j)];
                            for (int l = 0; l < 16; ++l) got += zero[(size_t(h) * dim + j) * 16 + l];
                            const double bound = nz * 0.501 * ws * (vt.max_abs + vt.max_error) + vt.max_error * wsum +
                                                 std::ldexp(std::fabs(got), -21) + 1e-300;
                            if (!(std::fabs(got - exact) <= bound)) {
                                INFO("h " << h << " j " << j << " got " << got << " exact " << exact << " bound " << bound);
                                CHECK(std::fabs(got - exact) <= bound);
                            }
                        }
                    }
                }
    }
    CHECK(checked > 0);
}
