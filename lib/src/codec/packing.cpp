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

void unpack_codes(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
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
