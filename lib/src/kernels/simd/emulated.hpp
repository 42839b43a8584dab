// Plain C++ backend of the SIMD layer (see simd.hpp): every operation spelled out lane by lane.
// The tests instantiate the fast kernels with it (the templates against their reference on any
// machine), and it is the readable definition of what each operation does.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/simd/simd.hpp"
#include "tqkv/fp16.hpp"

namespace tqkv::detail::simd {

// float -> int32 rounded to nearest even, as vcvtps2dq: NaN and values outside int32 give INT32_MIN
// (a hostile cache can make softmax weights NaN; a C++ cast of those would be undefined).
inline int32_t round_to_int32(float x) {
    return x >= -0x1p31f && x < 0x1p31f ? int32_t(std::nearbyint(x)) : INT32_MIN;
}

struct Emulated {
    struct V {
        uint8_t b[32];
    };
    struct F {
        float f[8];
    };
    static constexpr int kHeadsPerPass = 2, kValueHeadsPerPass = 2;

  private:
    // Lane access of 16- and 32-bit lanes (little-endian, as every target is).
    static uint16_t u16(const V& v, int i) { return uint16_t(v.b[2 * i] | v.b[2 * i + 1] << 8); }
    static int16_t i16(const V& v, int i) { return int16_t(u16(v, i)); }
    static void put16(V& v, int i, uint32_t x) { v.b[2 * i] = uint8_t(x), v.b[2 * i + 1] = uint8_t(x >> 8); }
    static int32_t i32(const V& v, int i) {
        uint32_t x;
        std::memcpy(&x, v.b + 4 * i, 4);
        return int32_t(x);
    }
    static void put32(V& v, int i, uint32_t x) { std::memcpy(v.b + 4 * i, &x, 4); }
    template <class Op>
    static V map16(V a, Op op) {
        V r;
        for (int i = 0; i < 16; ++i) put16(r, i, uint32_t(op(u16(a, i))));
        return r;
    }

  public:
    static V load(const void* p) {
        V v;
        std::memcpy(v.b, p, 32);
        return v;
    }
    static void store(void* p, V v) { std::memcpy(p, v.b, 32); }
    static V table(const uint8_t* p) {  // the table is stored twice; half 1 reads the second copy
        return load(p);
    }
    static V broadcast16(const uint8_t* p) {
        V v;
        std::memcpy(v.b, p, 16);
        std::memcpy(v.b + 16, p, 16);
        return v;
    }
    static V zero() { return V{}; }
    static V set8(int x) {
        V v;
        std::memset(v.b, x, 32);
        return v;
    }
    static V set16(int x) {
        V v;
        for (int i = 0; i < 16; ++i) put16(v, i, uint32_t(x));
        return v;
    }
    static V and_(V a, V b) {
        for (int i = 0; i < 32; ++i) a.b[i] &= b.b[i];
        return a;
    }
    static V or_(V a, V b) {
        for (int i = 0; i < 32; ++i) a.b[i] |= b.b[i];
        return a;
    }
    template <int N> static V srl16(V a) { return map16(a, [](uint32_t x) { return x >> N; }); }
    template <int N> static V sll16(V a) { return map16(a, [](uint32_t x) { return x << N; }); }
    template <int N> static V sra16(V a) {
        return map16(a, [](uint32_t x) { return uint32_t(int32_t(int16_t(uint16_t(x))) >> N); });
    }
    template <int N> static V sll32(V a) {
        for (int i = 0; i < 8; ++i) put32(a, i, uint32_t(i32(a, i)) << N);
        return a;
    }
    template <int N> static V srl32(V a) {
        for (int i = 0; i < 8; ++i) put32(a, i, uint32_t(i32(a, i)) >> N);
        return a;
    }
    static V set32(int x) {
        V v;
        for (int i = 0; i < 8; ++i) put32(v, i, uint32_t(x));
        return v;
    }
    static void store_u8x16(uint8_t* p, V lo, V hi) {
        auto sat = [](int32_t x) { return uint8_t(x < 0 ? 0 : x > 255 ? 255 : x); };
        for (int i = 0; i < 8; ++i) p[i] = sat(i32(lo, i)), p[8 + i] = sat(i32(hi, i));
    }
    static V add8(V a, V b) {
        for (int i = 0; i < 32; ++i) a.b[i] = uint8_t(a.b[i] + b.b[i]);
        return a;
    }
    static V add16(V a, V b) {
        for (int i = 0; i < 16; ++i) put16(a, i, uint32_t(u16(a, i) + u16(b, i)));
        return a;
    }
    static V sub16(V a, V b) {
        for (int i = 0; i < 16; ++i) put16(a, i, uint32_t(u16(a, i) - u16(b, i)));
        return a;
    }
    static V add32(V a, V b) {
        for (int i = 0; i < 8; ++i) put32(a, i, uint32_t(i32(a, i)) + uint32_t(i32(b, i)));
        return a;
    }
    static V packus16(V a, V b) {
        V r;
        auto sat = [](int x) { return uint8_t(x < 0 ? 0 : x > 255 ? 255 : x); };
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 8; ++i) {
                r.b[16 * h + i] = sat(i16(a, 8 * h + i));
                r.b[16 * h + 8 + i] = sat(i16(b, 8 * h + i));
            }
        return r;
    }
    static V packs32(V a, V b) {
        V r;
        auto sat = [](int32_t x) { return uint32_t(uint16_t(int16_t(x < -32768 ? -32768 : x > 32767 ? 32767 : x))); };
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 4; ++i) {
                put16(r, 8 * h + i, sat(i32(a, 4 * h + i)));
                put16(r, 8 * h + 4 + i, sat(i32(b, 4 * h + i)));
            }
        return r;
    }
    static V lookup(V t, V idx) {
        V r;
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 16; ++i) r.b[16 * h + i] = t.b[16 * h + (idx.b[16 * h + i] & 15)];
        return r;
    }
    static V unpacklo16(V a, V b) {
        V r;
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 4; ++i) {
                put16(r, 8 * h + 2 * i, u16(a, 8 * h + i));
                put16(r, 8 * h + 2 * i + 1, u16(b, 8 * h + i));
            }
        return r;
    }
    static V unpackhi16(V a, V b) {
        V r;
        for (int h = 0; h < 2; ++h)
            for (int i = 0; i < 4; ++i) {
                put16(r, 8 * h + 2 * i, u16(a, 8 * h + 4 + i));
                put16(r, 8 * h + 2 * i + 1, u16(b, 8 * h + 4 + i));
            }
        return r;
    }
    static V madd16(V a, V b) {
        V r;
        for (int i = 0; i < 8; ++i)
            put32(r, i, uint32_t(int32_t(i16(a, 2 * i)) * i16(b, 2 * i) + int32_t(i16(a, 2 * i + 1)) * i16(b, 2 * i + 1)));
        return r;
    }

    static F to_float(V a) {
        F r;
        for (int i = 0; i < 8; ++i) r.f[i] = float(i32(a, i));
        return r;
    }
    static V round_to_int(F a) {
        V r;
        for (int i = 0; i < 8; ++i) put32(r, i, uint32_t(round_to_int32(a.f[i])));
        return r;
    }
    static F fload(const float* p) {
        F r;
        std::memcpy(r.f, p, sizeof r.f);
        return r;
    }
    static void fstore(float* p, F a) { std::memcpy(p, a.f, sizeof a.f); }
    static F fset(float x) {
        F r;
        for (float& v : r.f) v = x;
        return r;
    }
    static F fadd(F a, F b) {
        for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] + b.f[i];
        return a;
    }
    static F fmul(F a, F b) {
        for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] * b.f[i];
        return a;
    }
    static F fsub(F a, F b) {
        for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] - b.f[i];
        return a;
    }
    static F fmin(F a, F b) {
        for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] < b.f[i] ? a.f[i] : b.f[i];
        return a;
    }
    static float hmin(F a) {
        float m = a.f[0];
        for (int i = 1; i < 8; ++i) m = a.f[i] < m ? a.f[i] : m;
        return m;
    }
    static F fmax(F a, F b) {
        for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] > b.f[i] ? a.f[i] : b.f[i];
        return a;
    }
    static float hmax(F a) {
        float m = a.f[0];
        for (int i = 1; i < 8; ++i) m = a.f[i] > m ? a.f[i] : m;
        return m;
    }
    static void halves_to_float(const uint16_t* h, float* out, int n) {
        for (int i = 0; i < n; ++i) out[i] = half_to_float(h[i]);
    }
};

}  // namespace tqkv::detail::simd
