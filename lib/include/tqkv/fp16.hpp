// IEEE 754 binary16 conversion, round to nearest even, identical on every target.
// The F16C / NEON / wasm conversions in the kernels must reproduce these bits (tested).
#pragma once
#include <cstdint>
#include <cstring>

namespace tqkv {

inline uint16_t float_to_half(float value) {
    // After F. Giesen's float_to_half_fast3_rtne: exact round-to-nearest-even in integer
    // arithmetic, plus one float add (itself RNE) for the subnormal range.
    uint32_t f;
    std::memcpy(&f, &value, 4);
    const uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t o;
    if (f >= (143u << 23)) {                 // >= 65536 (or inf/nan): overflow
        o = (f > (255u << 23)) ? 0x7e00 : 0x7c00;
    } else if (f < (113u << 23)) {           // below 2^-14: half subnormal or zero
        const uint32_t magic_bits = ((127 - 15) + (23 - 10) + 1) << 23;
        float magic, tmp;
        std::memcpy(&magic, &magic_bits, 4);
        std::memcpy(&tmp, &f, 4);
        tmp += magic;                        // aligns the 10 mantissa bits, rounding RNE
        uint32_t t;
        std::memcpy(&t, &tmp, 4);
        o = uint16_t(t - magic_bits);
    } else {
        const uint32_t mant_odd = (f >> 13) & 1;
        f += (uint32_t(15 - 127) << 23) + 0xfff;
        f += mant_odd;
        o = uint16_t(f >> 13);               // a carry into the exponent gives inf for >= 65520
    }
    return uint16_t(o | (sign >> 16));
}

inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    uint32_t f;
    if (exp == 0x1f) {
        f = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        f = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        f = sign;
    } else {  // subnormal: mant * 2^-24, exact in float
        float v = float(mant) * 0x1.0p-24f;
        std::memcpy(&f, &v, 4);
        f |= sign;
    }
    float out;
    std::memcpy(&out, &f, 4);
    return out;
}

}  // namespace tqkv
