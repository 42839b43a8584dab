#include "tqkv/packing.hpp"

namespace tqkv {

void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
    const uint32_t mask = (1u << bits) - 1;
    uint64_t acc = 0;
    int filled = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; ++i) {
        acc |= uint64_t(codes[i] & mask) << filled;
        filled += bits;
        while (filled >= 8) {
            out[o++] = uint8_t(acc);
            acc >>= 8;
            filled -= 8;
        }
    }
    if (filled > 0) out[o] = uint8_t(acc);
}

namespace {
template <int B>
void unpack_dividing(const uint8_t* in, size_t n, uint8_t* codes) {
    constexpr int per_byte = 8 / B;
    constexpr uint32_t m = (1u << B) - 1;
    const size_t whole = n / per_byte;
    for (size_t i = 0; i < whole; ++i)
        for (int k = 0; k < per_byte; ++k) codes[i * per_byte + k] = uint8_t(uint32_t(in[i]) >> (B * k) & m);
    for (size_t i = whole * per_byte; i < n; ++i) codes[i] = uint8_t(uint32_t(in[i / per_byte]) >> (B * int(i % per_byte)) & m);
}
}  // namespace

void unpack_codes(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
    // Widths that divide 8 (the common 1, 2, 4 and 8 bits) without the bit accumulator: the cache
    // unpacks every appended vector, and these loops have no carried dependency.
    switch (bits) {
        case 1: return unpack_dividing<1>(in, n, codes);
        case 2: return unpack_dividing<2>(in, n, codes);
        case 4: return unpack_dividing<4>(in, n, codes);
        case 8: return unpack_dividing<8>(in, n, codes);
        default: break;
    }
    const uint32_t mask = (1u << bits) - 1;
    uint64_t acc = 0;
    int filled = 0;
    size_t i_in = 0;
    for (size_t i = 0; i < n; ++i) {
        while (filled < bits) {
            acc |= uint64_t(in[i_in++]) << filled;
            filled += 8;
        }
        codes[i] = uint8_t(acc & mask);
        acc >>= bits;
        filled -= bits;
    }
}

}  // namespace tqkv
