// Reference of the bounded-error fast path (formats, arithmetic and error bounds in
// kernels/simd/fast_attention.hpp): one token and one unit at a time, the same integer tables and
// the same float operations, so the SIMD versions must match it bit for bit.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "kernels/simd/emulated.hpp"
#include "kernels/simd/fast_attention.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv::detail {

size_t fast_scores_table_bytes(int dim, int bits, int heads) { return fast::scores_table_bytes(dim, bits, heads); }

FastValueTable make_fast_values(const float* table16) {
    FastValueTable t;
    double max_abs = 0;
    for (int k = 0; k < 16; ++k) max_abs = std::max(max_abs, double(std::fabs(table16[k])));
    if (!(max_abs > 0) || !std::isfinite(max_abs)) return t;  // all zero (or not a table): contributes 0
    // The scale with the smallest worst entry error, over [63.5, 127] / max_abs (so |c| <= 127).
    double best_err = 1e300, best_s = 0;
    float best_inv = 0;
    for (int i = 0; i <= 1024; ++i) {
        const double s = 127.0 / max_abs * (1.0 - i / 2048.0);
        const float inv = float(1.0 / s);
        double err = 0;
        for (int k = 0; k < 16; ++k)
            err = std::max(err, std::fabs(std::nearbyint(double(table16[k]) * s) * double(inv) - double(table16[k])));
        if (err < best_err) best_err = err, best_s = s, best_inv = inv;
    }
    for (int k = 0; k < 16; ++k) {
        t.c[k] = int8_t(std::nearbyint(double(table16[k]) * best_s));
        t.biased[k] = uint8_t(t.c[k] + 128);
    }
    t.inv_scale = best_inv;
    t.max_error = std::nextafter(float(best_err), 1.0f);  // rounded up: a bound
    t.max_abs = float(max_abs);
    return t;
}

bool scalar_fast_prepare_scores(const float* q, const float* centroids, int dim, int bits, int heads, float scale,
                                void* table) {
    return fast::prepare_scores<simd::Emulated>(q, centroids, dim, bits, heads, scale, table);
}

void scalar_fast_chunk_scores(const uint8_t* const* codes, const uint16_t* const* norms, int groups, int dim, int bits,
                              const void* table, int heads, float* out, int out_stride, bool add) {
    if (bits < 1 || bits > 4 || groups < 1 || groups > fast::kFastChunkGroups) return;
    const int units = fast::score_units(dim, bits), per = fast::unit_coords(bits);
    for (int g = 0; g < groups; ++g) {
        uint8_t c[kGroupTokens * kMaxDim];
        unpack_group(codes[g], dim, bits, c);
        const uint8_t* tab = static_cast<const uint8_t*>(table);
        for (int h = 0; h < heads; ++h) {
            fast::ScoresHeader hd;
            std::memcpy(&hd, tab, sizeof hd);
            const uint8_t* planes = tab + sizeof hd;
            for (int t = 0; t < kGroupTokens; ++t) {
                int32_t S = 0;
                for (int u = 0; u < units; ++u) {
                    int idx = 0;  // the unit's coordinates' codes, coordinate i at bits [bits * i, bits * (i + 1))
                    for (int i = 0; i < per && u * per + i < dim; ++i) idx |= c[t * dim + u * per + i] << (bits * i);
                    const uint8_t* unit = planes + size_t(u) * hd.planes * 32;  // each plane: 16 bytes, twice
                    S += hd.planes == 1 ? unit[idx] : (unit[idx] << fast::kLowPlaneBits) + unit[32 + idx];
                }
                const float score = ((float(S) * hd.D) + hd.B) * half_to_float(norms[g][t]);
                float& o = out[size_t(h) * out_stride + size_t(g) * kGroupTokens + t];
                o = add ? o + score : score;
            }
            tab = planes + size_t(units) * hd.planes * 32;
        }
    }
}

void scalar_fast_chunk_accumulate(const uint8_t* const* codes, const uint16_t* const* norms, const float* const* p,
                                  int groups, int p_stride, int dim, int bits, const FastValueTable& vt, int heads,
                                  float* acc) {
    if (bits < 1 || bits > 4) return;
    constexpr int G = fast::kFastChunkGroups;
    auto weight = [&](int g, int h, int t) { return p[g][size_t(h) * p_stride + t] * half_to_float(norms[g][t]); };
    std::vector<float> inv(heads), f(heads);
    std::vector<int64_t> T(size_t(heads) * dim);
    for (int g0 = 0; g0 < groups; g0 += G) {
        const int ng = std::min(G, groups - g0);
        for (int h = 0; h < heads; ++h) {
            float M = 0.0f;
            for (int g = g0; g < g0 + ng; ++g)
                for (int t = 0; t < kGroupTokens; ++t) M = std::max(M, weight(g, h, t));
            // Negligible weights (see fast_attention.hpp): the head adds nothing.
            inv[h] = M > 0x1p-100f ? 32767.0f / M : 0.0f;
            f[h] = (M * (1.0f / 32767.0f)) * vt.inv_scale;
        }
        std::fill(T.begin(), T.end(), 0);  // exact sums; below 2^31 (fast_attention.hpp)
        for (int g = g0; g < g0 + ng; ++g) {
            uint8_t c[kGroupTokens * kMaxDim];
            unpack_group(codes[g], dim, bits, c);
            for (int h = 0; h < heads; ++h)
                for (int t = 0; t < kGroupTokens && inv[h] > 0.0f; ++t) {
                    const int64_t W = simd::round_to_int32(weight(g, h, t) * inv[h]);
                    for (int j = 0; j < dim; ++j) T[size_t(h) * dim + j] += W * vt.c[c[t * dim + j]];
                }
        }
        for (int h = 0; h < heads; ++h)
            for (int j = 0; j < dim && inv[h] > 0.0f; ++j) {
                float& a = acc[size_t(h) * dim + j];
                a = a + float(T[size_t(h) * dim + j]) * f[h];
            }
    }
}

}  // namespace tqkv::detail
