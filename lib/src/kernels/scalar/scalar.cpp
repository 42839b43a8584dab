// The reference kernels: plain loops that define, operation by operation, what every SIMD
// kernel must reproduce (see kernels.hpp). Compiled without auto-vectorization.
#include <cmath>
#include <cstring>

#include "kernels/kernels.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/packing.hpp"

namespace tqkv::detail {
namespace {

float max_abs(const float* x, int n) {
    float m = 0.0f;
    for (int i = 0; i < n; ++i) m = std::fmax(m, std::fabs(x[i]));
    return m;
}

float sum_squares(const float* x, int n) {
    float lane[kLanes] = {};
    for (int i = 0; i < n; i += kLanes)
        for (int l = 0; l < kLanes; ++l) lane[l] += x[i + l] * x[i + l];
    for (int w = kLanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) lane[l] += lane[l + w];
    return lane[0];
}

void scale(float* x, int n, float s) {
    for (int i = 0; i < n; ++i) x[i] *= s;
}

void flip_signs(float* x, const uint32_t* mask, int n) {
    for (int i = 0; i < n; ++i)
        if ((mask[i / 32] >> (i % 32)) & 1) x[i] = -x[i];
}

void fwht(float* x, int n, int block) {
    for (int base = 0; base < n; base += block)
        for (int h = 1; h < block; h *= 2)
            for (int i = base; i < base + block; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    const float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
}

void matvec(const float* m, int rows, int cols, const float* x, float* y) {
    for (int i = 0; i < rows; ++i) y[i] = 0.0f;
    for (int j = 0; j < cols; ++j) {
        const float xj = x[j];
        const float* col = m + size_t(j) * rows;
        for (int i = 0; i < rows; ++i) y[i] += xj * col[i];
    }
}

void quantize(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    for (int i = 0; i < n; ++i) {
        int c = 0;  // branchless binary search: bounds[2^bits - 1] is +inf, never passed
        for (int step = 1 << (bits - 1); step >= 1; step >>= 1)
            if (x[i] >= bounds[c + step - 1]) c += step;
        codes[i] = uint8_t(c);
    }
}

void lookup(const uint8_t* codes, int n, const float* table, float* out) {
    for (int i = 0; i < n; ++i) out[i] = table[codes[i]];
}

void pack(const uint8_t* codes, int n, int bits, uint8_t* out) { pack_codes(codes, size_t(n), bits, out); }
void unpack(const uint8_t* in, int n, int bits, uint8_t* codes) { unpack_codes(in, size_t(n), bits, codes); }

void dot_codes(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
               size_t count, float* out) {
    // The per-query look-up table of DESIGN.md §2, written out: lut[i][c] = q[i] * table[c],
    // score = sum_i lut[i][code_i]. (SIMD kernels form q[i] * table[c] on the fly.)
    uint8_t codes[1024];
    for (size_t v = 0; v < count; ++v) {
        unpack_codes(packed + v * stride, size_t(n), bits, codes);
        float s = 0.0f;
        for (int i = 0; i < n; ++i) s += q[i] * table[codes[i]];
        out[v] = s;
    }
}

void to_half(const float* x, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}

void from_half(const uint16_t* h, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half_to_float(h[i]);
}

}  // namespace

const KernelTable& scalar_kernels() {
    static const KernelTable table = {"scalar",  max_abs, sum_squares, scale,     flip_signs, fwht,     matvec,
                                      quantize,  lookup,  pack,        unpack,    dot_codes,  to_half,  from_half};
    return table;
}

}  // namespace tqkv::detail
