// Differential: random configurations and inputs; every SIMD kernel this CPU has must encode to
// the same bytes as the scalar kernel, and score / attend within float tolerance of it.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "tqkv/tqkv.hpp"

namespace {

struct Bytes {
    const uint8_t* p;
    size_t n;
    uint8_t u8() { return n ? (--n, *p++) : 0; }
    float f32() {  // any finite float, biased towards interesting magnitudes
        uint32_t u = uint32_t(u8()) | uint32_t(u8()) << 8 | uint32_t(u8()) << 16 | uint32_t(u8()) << 24;
        float f;
        std::memcpy(&f, &u, 4);
        if (!std::isfinite(f)) return float(int8_t(u8())) * 0.125f;
        return std::fabs(f) > 1e30f ? f * 1e-20f : f;  // keep norms and scores away from overflow
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Bytes in{data, size};
    static const int dims[] = {3, 8, 16, 20, 64, 80, 96, 128};
    tqkv::CodecConfig cfg;
    cfg.dim = dims[in.u8() % 8];
    cfg.method = tqkv::Method(in.u8() % 3);
    cfg.bits = cfg.method == tqkv::Method::Qjl ? 1 : 1 + in.u8() % 8;
    if (cfg.method == tqkv::Method::Prod && cfg.bits < 2) cfg.bits = 2;
    cfg.norm = in.u8() % 2 ? tqkv::NormFormat::F32 : tqkv::NormFormat::F16;
    cfg.rotation = tqkv::RotationKind(in.u8() % 4);
    cfg.seed = in.u8();
    const size_t n = 1 + in.u8() % 4;
    std::vector<float> x(n * cfg.dim);
    const float scale = std::ldexp(1.0f, int(in.u8() % 40) - 20);
    for (auto& v : x) v = in.f32() * (in.u8() % 2 ? scale : 1.0f);
    std::vector<float> q(x.begin(), x.begin() + cfg.dim);
    for (auto& v : q) v = std::isfinite(v) ? std::fmod(v, 100.0f) : 1.0f;

    cfg.kernel = "scalar";
    std::unique_ptr<tqkv::VectorCodec> ref;
    try {
        ref = tqkv::make_codec(cfg);
    } catch (const std::invalid_argument&) {
        return 0;  // e.g. Hadamard with a dimension that is not a power of two
    }
    std::vector<uint8_t> expect;
    try {
        expect = ref->encode(x);
    } catch (const std::invalid_argument&) {
        for (const auto& k : tqkv::available_kernels()) {  // every kernel must reject it too
            cfg.kernel = k;
            bool threw = false;
            try {
                tqkv::make_codec(cfg)->encode(x);
            } catch (const std::invalid_argument&) {
                threw = true;
            }
            if (!threw) __builtin_trap();
        }
        return 0;
    }
    std::vector<float> s_ref(n);
    ref->dot(q, expect, s_ref);
    for (const auto& k : tqkv::available_kernels()) {
        cfg.kernel = k;
        const auto codec = tqkv::make_codec(cfg);
        if (codec->encode(x) != expect) __builtin_trap();
        std::vector<float> s(n);
        codec->dot(q, expect, s);
        double qn = 0;
        for (float v : q) qn += double(v) * v;
        for (size_t i = 0; i < n; ++i) {
            double xn = 0;
            for (int j = 0; j < cfg.dim; ++j) xn += double(x[i * cfg.dim + j]) * x[i * cfg.dim + j];
            // |Δ| <= n eps ||q|| ||x|| (summation order), with margin for the QJL term's d^2 sums
            if (std::fabs(double(s[i]) - s_ref[i]) > 1e-4 * std::sqrt(qn * xn) + 1e-30) __builtin_trap();
        }
    }
    return 0;
}
