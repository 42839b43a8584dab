// WebAssembly SIMD128 kernels (built by wasm/build.sh with -msimd128 -ffp-contract=off).
//
// Everything that decides a code reproduces kernels/scalar bit for bit (see kernels.hpp):
// WebAssembly has no fused multiply-add in its SIMD128 set, so every product is rounded before
// it is added; sum_squares keeps the canonical 16-lane order (four f32x4 accumulators = lanes
// 0-3, 4-7, 8-11, 12-15), matvec accumulates column by column, quantize counts exact compares,
// and the Walsh–Hadamard butterflies are element-wise. Only dot_codes sums in its own order
// (results compared with a tolerance). Packing and fp16 conversion are integer-exact and use
// the portable reference code.
#include <wasm_simd128.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/simd/wasm128.hpp"
#include "tqkv/fp16.hpp"
#include "tqkv/packing.hpp"

namespace tqkv::detail {
namespace {

inline v128_t load(const float* p) { return wasm_v128_load(p); }
inline void store(float* p, v128_t v) { wasm_v128_store(p, v); }

// ---------------------------------------------------------------------------------------------
// Reductions and element-wise operations

float max_abs(const float* x, int n) {
    // The reference is m = fmax(m, |x_i|) from m = 0, which skips NaNs. pmax(m, v) = m < v ? v : m
    // keeps m when v is NaN, so lanes never become NaN and any fold gives the reference result.
    v128_t m0 = wasm_f32x4_splat(0.0f), m1 = m0, m2 = m0, m3 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = wasm_f32x4_pmax(m0, wasm_f32x4_abs(load(x + i)));
        m1 = wasm_f32x4_pmax(m1, wasm_f32x4_abs(load(x + i + 4)));
        m2 = wasm_f32x4_pmax(m2, wasm_f32x4_abs(load(x + i + 8)));
        m3 = wasm_f32x4_pmax(m3, wasm_f32x4_abs(load(x + i + 12)));
    }
    const v128_t m = wasm_f32x4_pmax(wasm_f32x4_pmax(m0, m1), wasm_f32x4_pmax(m2, m3));
    float r = 0.0f;
    for (float v : {wasm_f32x4_extract_lane(m, 0), wasm_f32x4_extract_lane(m, 1), wasm_f32x4_extract_lane(m, 2),
                    wasm_f32x4_extract_lane(m, 3)})
        r = r < v ? v : r;
    for (; i < n; ++i) {
        const float a = std::fabs(x[i]);
        r = r < a ? a : r;
    }
    return r;
}

float sum_squares(const float* x, int n) {
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < n; i += kLanes) {
        const v128_t x0 = load(x + i), x1 = load(x + i + 4), x2 = load(x + i + 8), x3 = load(x + i + 12);
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(x0, x0));
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(x1, x1));
        a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(x2, x2));
        a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(x3, x3));
    }
    // l += l+8: lanes 0-3 = a0 + a2, lanes 4-7 = a1 + a3; l += l+4; l += l+2; l += l+1.
    const v128_t s = wasm_f32x4_add(wasm_f32x4_add(a0, a2), wasm_f32x4_add(a1, a3));
    const v128_t t = wasm_f32x4_add(s, wasm_i32x4_shuffle(s, s, 2, 3, 2, 3));
    return wasm_f32x4_extract_lane(t, 0) + wasm_f32x4_extract_lane(t, 1);
}

void scale(float* x, int n, float s) {
    const v128_t vs = wasm_f32x4_splat(s);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        store(x + i, wasm_f32x4_mul(load(x + i), vs));
        store(x + i + 4, wasm_f32x4_mul(load(x + i + 4), vs));
        store(x + i + 8, wasm_f32x4_mul(load(x + i + 8), vs));
        store(x + i + 12, wasm_f32x4_mul(load(x + i + 12), vs));
    }
    for (; i + 4 <= n; i += 4) store(x + i, wasm_f32x4_mul(load(x + i), vs));
    for (; i < n; ++i) x[i] *= s;
}

void flip_signs(float* x, const uint32_t* mask, int n) {
    const v128_t b0 = wasm_i32x4_make(1 << 0, 1 << 1, 1 << 2, 1 << 3), b1 = wasm_i32x4_make(1 << 4, 1 << 5, 1 << 6, 1 << 7);
    const v128_t b2 = wasm_i32x4_make(1 << 8, 1 << 9, 1 << 10, 1 << 11),
                 b3 = wasm_i32x4_make(1 << 12, 1 << 13, 1 << 14, 1 << 15);
    const v128_t sign = wasm_i32x4_splat(int(0x80000000u)), zero = wasm_i32x4_splat(0);
    int i = 0;
    for (; i + 16 <= n; i += 16) {  // i % 32 is 0 or 16: the 16 mask bits of this chunk
        const v128_t m = wasm_i32x4_splat(int(mask[i / 32] >> (i % 32)));
        auto flip = [&](float* p, v128_t bit) {
            const v128_t on = wasm_i32x4_ne(wasm_v128_and(m, bit), zero);
            store(p, wasm_v128_xor(load(p), wasm_v128_and(on, sign)));
        };
        flip(x + i, b0);
        flip(x + i + 4, b1);
        flip(x + i + 8, b2);
        flip(x + i + 12, b3);
    }
    for (; i < n; ++i)
        if ((mask[i / 32] >> (i % 32)) & 1) x[i] = -x[i];
}

// ---------------------------------------------------------------------------------------------
// Walsh–Hadamard transform. Butterflies are exact element-wise operations (a - b is a + (-b) in
// IEEE 754), so any order that respects the data dependencies gives the scalar bits.

void fwht_scalar(float* x, int n, int block) {
    for (int base = 0; base < n; base += block)
        for (int h = 1; h < block; h *= 2)
            for (int i = base; i < base + block; i += 2 * h)
                for (int j = i; j < i + h; ++j) {
                    const float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
}

// Stages h = 1 and h = 2 inside one f32x4: (x0+x1, x0-x1, x2+x3, x2-x3), then likewise across pairs.
inline v128_t fwht_h1(v128_t v) {
    const v128_t neg_odd = wasm_i32x4_make(0, int(0x80000000u), 0, int(0x80000000u));
    const v128_t a = wasm_i32x4_shuffle(v, v, 0, 0, 2, 2), b = wasm_i32x4_shuffle(v, v, 1, 1, 3, 3);
    return wasm_f32x4_add(a, wasm_v128_xor(b, neg_odd));
}
inline v128_t fwht_h2(v128_t v) {
    const v128_t neg_hi = wasm_i32x4_make(0, 0, int(0x80000000u), int(0x80000000u));
    const v128_t a = wasm_i32x4_shuffle(v, v, 0, 1, 0, 1), b = wasm_i32x4_shuffle(v, v, 2, 3, 2, 3);
    return wasm_f32x4_add(a, wasm_v128_xor(b, neg_hi));
}

inline void butterfly(float* pa, float* pb) {
    const v128_t a = load(pa), b = load(pb);
    store(pa, wasm_f32x4_add(a, b));
    store(pb, wasm_f32x4_sub(a, b));
}

void fwht(float* x, int n, int block) {
    if (block < 2) return;
    if (block < 4 || n % 4 != 0) {
        fwht_scalar(x, n, block);
        return;
    }
    // h = 1, 2: inside each f32x4 (block >= 4, blocks are 4-aligned).
    for (int i = 0; i < n; i += 4) store(x + i, fwht_h2(fwht_h1(load(x + i))));
    // h >= 4: whole f32x4 butterflies; two stages per pass where possible.
    for (int base = 0; base < n; base += block) {
        float* xb = x + base;
        int h = 4;
        while (h < block) {
            if (4 * h <= block) {
                for (int i = 0; i < block; i += 4 * h)
                    for (int j = i; j < i + h; j += 4) {
                        v128_t a = load(xb + j), b = load(xb + j + h), c = load(xb + j + 2 * h), d = load(xb + j + 3 * h);
                        v128_t s0 = wasm_f32x4_add(a, b), d0 = wasm_f32x4_sub(a, b);
                        v128_t s1 = wasm_f32x4_add(c, d), d1 = wasm_f32x4_sub(c, d);
                        store(xb + j, wasm_f32x4_add(s0, s1));
                        store(xb + j + 2 * h, wasm_f32x4_sub(s0, s1));
                        store(xb + j + h, wasm_f32x4_add(d0, d1));
                        store(xb + j + 3 * h, wasm_f32x4_sub(d0, d1));
                    }
                h *= 4;
            } else {
                for (int i = 0; i < block; i += 2 * h)
                    for (int j = i; j < i + h; j += 4) butterfly(xb + j, xb + j + h);
                h *= 2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// matvec: each output accumulates x[j] * column j in order j = 0, 1, 2, ... (mul, then add).

void matvec(const float* m, int rows, int cols, const float* x, float* y) {
    int i = 0;
    for (; i + 32 <= rows; i += 32) {
        v128_t a[8];
        for (int k = 0; k < 8; ++k) a[k] = wasm_f32x4_splat(0.0f);
        for (int j = 0; j < cols; ++j) {
            const v128_t xj = wasm_f32x4_splat(x[j]);
            const float* c = m + size_t(j) * rows + i;
            for (int k = 0; k < 8; ++k) a[k] = wasm_f32x4_add(a[k], wasm_f32x4_mul(load(c + 4 * k), xj));
        }
        for (int k = 0; k < 8; ++k) store(y + i + 4 * k, a[k]);
    }
    for (; i + 4 <= rows; i += 4) {
        v128_t a = wasm_f32x4_splat(0.0f);
        for (int j = 0; j < cols; ++j)
            a = wasm_f32x4_add(a, wasm_f32x4_mul(load(m + size_t(j) * rows + i), wasm_f32x4_splat(x[j])));
        store(y + i, a);
    }
    for (; i < rows; ++i) {
        float a = 0.0f;
        for (int j = 0; j < cols; ++j) a += x[j] * m[size_t(j) * rows + i];
        y[i] = a;
    }
}

// ---------------------------------------------------------------------------------------------
// quantize: code = number of k < 2^bits - 1 with x >= bounds[k] (the reference's binary search
// over ascending bounds; both give 0 for NaN).

inline uint8_t quantize_one(float x, const float* bounds, int bits) {
    int c = 0;
    for (int step = 1 << (bits - 1); step >= 1; step >>= 1)
        if (x >= bounds[c + step - 1]) c += step;
    return uint8_t(c);
}

template <int Bits>
int quantize_count(const float* x, int n, const float* bounds, uint8_t* codes) {
    constexpr int kBounds = (1 << Bits) - 1;
    v128_t b[kBounds];
    for (int k = 0; k < kBounds; ++k) b[k] = wasm_f32x4_splat(bounds[k]);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const v128_t x0 = load(x + i), x1 = load(x + i + 4), x2 = load(x + i + 8), x3 = load(x + i + 12);
        v128_t c0 = wasm_i32x4_splat(0), c1 = c0, c2 = c0, c3 = c0;
        for (int k = 0; k < kBounds; ++k) {  // a true compare is all ones = -1
            c0 = wasm_i32x4_sub(c0, wasm_f32x4_ge(x0, b[k]));
            c1 = wasm_i32x4_sub(c1, wasm_f32x4_ge(x1, b[k]));
            c2 = wasm_i32x4_sub(c2, wasm_f32x4_ge(x2, b[k]));
            c3 = wasm_i32x4_sub(c3, wasm_f32x4_ge(x3, b[k]));
        }
        const v128_t h0 = wasm_u16x8_narrow_i32x4(c0, c1), h1 = wasm_u16x8_narrow_i32x4(c2, c3);
        wasm_v128_store(codes + i, wasm_u8x16_narrow_i16x8(h0, h1));
    }
    return i;
}

void quantize(const float* x, int n, const float* bounds, int bits, uint8_t* codes) {
    int i = 0;
    switch (bits) {
        case 1: i = quantize_count<1>(x, n, bounds, codes); break;
        case 2: i = quantize_count<2>(x, n, bounds, codes); break;
        case 3: i = quantize_count<3>(x, n, bounds, codes); break;
        case 4: i = quantize_count<4>(x, n, bounds, codes); break;
        default: break;  // 5..8 bits: the branchless binary search, per element
    }
    for (; i < n; ++i) codes[i] = quantize_one(x[i], bounds, bits);
}

// ---------------------------------------------------------------------------------------------
// Float table look-up with byte shuffles: a table of 16 floats split into four byte planes
// (plane p = byte p of every entry); i8x16.swizzle with 16 indices < 16 fetches one byte of 16
// entries, and two rounds of interleaves put the four bytes back together.

struct Planes {
    v128_t p0, p1, p2, p3;
};

// 16 floats (64 bytes) -> byte planes: a byte transpose inside each f32x4, then a 4x4 transpose
// of the 32-bit lanes.
inline Planes planes_of(const float* t) {
    const v128_t v0 = load(t), v1 = load(t + 4), v2 = load(t + 8), v3 = load(t + 12);
    auto bt = [](v128_t v) { return wasm_i8x16_shuffle(v, v, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15); };
    const v128_t t0 = bt(v0), t1 = bt(v1), t2 = bt(v2), t3 = bt(v3);
    const v128_t a = wasm_i32x4_shuffle(t0, t1, 0, 4, 1, 5), b = wasm_i32x4_shuffle(t0, t1, 2, 6, 3, 7);
    const v128_t c = wasm_i32x4_shuffle(t2, t3, 0, 4, 1, 5), d = wasm_i32x4_shuffle(t2, t3, 2, 6, 3, 7);
    return {wasm_i64x2_shuffle(a, c, 0, 2), wasm_i64x2_shuffle(a, c, 1, 3), wasm_i64x2_shuffle(b, d, 0, 2),
            wasm_i64x2_shuffle(b, d, 1, 3)};
}

inline void lookup16(const Planes& t, v128_t c, v128_t& f0, v128_t& f1, v128_t& f2, v128_t& f3) {
    const v128_t b0 = wasm_i8x16_swizzle(t.p0, c), b1 = wasm_i8x16_swizzle(t.p1, c);
    const v128_t b2 = wasm_i8x16_swizzle(t.p2, c), b3 = wasm_i8x16_swizzle(t.p3, c);
    const v128_t l01 = wasm_i8x16_shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const v128_t h01 = wasm_i8x16_shuffle(b0, b1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const v128_t l23 = wasm_i8x16_shuffle(b2, b3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const v128_t h23 = wasm_i8x16_shuffle(b2, b3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    f0 = wasm_i16x8_shuffle(l01, l23, 0, 8, 1, 9, 2, 10, 3, 11);
    f1 = wasm_i16x8_shuffle(l01, l23, 4, 12, 5, 13, 6, 14, 7, 15);
    f2 = wasm_i16x8_shuffle(h01, h23, 0, 8, 1, 9, 2, 10, 3, 11);
    f3 = wasm_i16x8_shuffle(h01, h23, 4, 12, 5, 13, 6, 14, 7, 15);
}

uint8_t max_code(const uint8_t* codes, int n) {
    v128_t m = wasm_i8x16_splat(0);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = wasm_u8x16_max(m, wasm_v128_load(codes + i));
    alignas(16) uint8_t b[16];
    wasm_v128_store(b, m);
    uint8_t r = 0;
    for (uint8_t v : b) r = std::max(r, v);
    for (; i < n; ++i) r = std::max(r, codes[i]);
    return r;
}

void lookup(const uint8_t* codes, int n, const float* table, float* out) {
    int i = 0;
    const int mc = max_code(codes, n);
    if (mc < 16 && n >= 16) {  // the table has at least mc + 1 entries; read no more
        alignas(16) float t[16] = {};
        std::memcpy(t, table, sizeof(float) * size_t(mc + 1));
        const Planes p = planes_of(t);
        for (; i + 16 <= n; i += 16) {
            v128_t f0, f1, f2, f3;
            lookup16(p, wasm_v128_load(codes + i), f0, f1, f2, f3);
            store(out + i, f0);
            store(out + i + 4, f1);
            store(out + i + 8, f2);
            store(out + i + 12, f3);
        }
    }
    for (; i < n; ++i) out[i] = table[codes[i]];
}

// ---------------------------------------------------------------------------------------------
// Packing: the portable reference (integer-exact), and a vector unpack of 4-bit codes (two per
// byte, the even code in the low nibble): 32 codes per step, the same bytes as the reference.
// The scalar bit loop cost ~250 ns per 128-coordinate vector, most of Codec.dot's time.

void pack(const uint8_t* codes, int n, int bits, uint8_t* out) { pack_codes(codes, size_t(n), bits, out); }
void unpack(const uint8_t* in, int n, int bits, uint8_t* codes) {
    int i = 0;
    if (bits == 4) {
        const v128_t low = wasm_i8x16_splat(0x0f);
        for (; i + 32 <= n; i += 32) {
            const v128_t b = wasm_v128_load(in + i / 2);
            const v128_t lo = wasm_v128_and(b, low), hi = wasm_u8x16_shr(b, 4);
            wasm_v128_store(codes + i, wasm_i8x16_shuffle(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
            wasm_v128_store(codes + i + 16,
                            wasm_i8x16_shuffle(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
        }
    }
    unpack_codes(in + size_t(i) * size_t(bits) / 8, size_t(n - i), bits, codes + i);  // the rest (byte-aligned)
}

// ---------------------------------------------------------------------------------------------
// dot_codes: out[v] = sum_i q[i] * table[code_vi], own summation order (16 lanes, no FMA).

void dot_codes(const float* q, int n, const float* table, int bits, const uint8_t* packed, size_t stride,
               size_t count, float* out) {
    const int padded = pad_lanes(n);
    alignas(16) uint8_t cbuf[1024 + 16];
    alignas(16) float vbuf[1024 + 16];
    std::memset(cbuf, 0, sizeof cbuf);
    std::memset(vbuf, 0, sizeof vbuf);
    const bool small = bits <= 4;
    alignas(16) float t[16] = {};
    if (small) std::memcpy(t, table, sizeof(float) * size_t(1 << bits));
    const Planes p = planes_of(t);
    for (size_t v = 0; v < count; ++v) {
        unpack(packed + v * stride, n, bits, cbuf);
        int i = 0;
        if (small)
            for (; i + 16 <= n; i += 16) {
                v128_t f0, f1, f2, f3;
                lookup16(p, wasm_v128_load(cbuf + i), f0, f1, f2, f3);
                store(vbuf + i, f0);
                store(vbuf + i + 4, f1);
                store(vbuf + i + 8, f2);
                store(vbuf + i + 12, f3);
            }
        for (; i < n; ++i) vbuf[i] = table[cbuf[i]];  // vbuf[n, padded) stays 0
        v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
        for (i = 0; i < padded; i += 16) {
            a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(load(vbuf + i), load(q + i)));
            a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(load(vbuf + i + 4), load(q + i + 4)));
            a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(load(vbuf + i + 8), load(q + i + 8)));
            a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(load(vbuf + i + 12), load(q + i + 12)));
        }
        const v128_t s = wasm_f32x4_add(wasm_f32x4_add(a0, a1), wasm_f32x4_add(a2, a3));
        out[v] = (wasm_f32x4_extract_lane(s, 0) + wasm_f32x4_extract_lane(s, 1)) +
                 (wasm_f32x4_extract_lane(s, 2) + wasm_f32x4_extract_lane(s, 3));
    }
}

// ---------------------------------------------------------------------------------------------
// fp16: the reference conversion (SIMD128 has no half-precision instructions).

void to_half(const float* x, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}

// half -> float, exact: Wasm128::halves_to_float (no conversion instruction in SIMD128; the
// derivation is there). The Llama runner widens every fp16 weight through this: trained weights
// hold subnormals, which an earlier version sent to the scalar path, 2.4x slower.
void from_half(const uint16_t* h, size_t n, float* out) { simd::Wasm128::halves_to_float(h, out, n); }

}  // namespace

const KernelTable& wasm128_kernels() {
    static const KernelTable table = {"wasm128", max_abs, sum_squares, scale,  flip_signs, fwht,    matvec,
                                      quantize,  lookup,  pack,        unpack, dot_codes,  to_half, from_half};
    return table;
}

}  // namespace tqkv::detail
