// Bit layout of packed codes — the same on every target and in every serialized byte stream.
//
// n codes of b bits (1 <= b <= 8) form one little-endian bit stream, least significant bit first:
// code i occupies stream bits [i*b, (i+1)*b), with its own bit k at stream bit i*b + k, and stream
// bit s lives in byte s/8 at bit position s%8. The stream takes ceil(n*b/8) bytes; unused high
// bits of the last byte are zero. Examples: b = 4 puts code 2i in the low nibble of byte i and
// code 2i+1 in the high nibble; b = 1 puts code i at bit i%8 of byte i/8; b = 3 puts codes 0..7
// into bytes 0..2 as c0 | c1<<3 | c2<<6 | c3<<9 | ... .
#pragma once
#include <cstddef>
#include <cstdint>

namespace tqkv {

inline size_t packed_bytes(size_t n, int bits) { return (n * size_t(bits) + 7) / 8; }

// Portable reference implementations (the kernels provide faster equivalents).
void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out);
void unpack_codes(const uint8_t* in, size_t n, int bits, uint8_t* codes);

}  // namespace tqkv
