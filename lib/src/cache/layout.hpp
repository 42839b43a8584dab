// How the KV cache lays out the codes of 32 tokens (one "group") so that one SIMD table look-up
// scores 16 tokens at once (FAISS fast-scan style, but with exact float tables).
//
// A b-bit code is split into parts of width 4, 2 or 1 bits, low bits first:
//   b = 1: [1]   2: [2]   3: [2, 1]   4: [4]   5: [4, 1]   6: [4, 2]   7: [4, 2, 1]   8: [4, 4]
// Each part of all `dim` coordinates is stored in 64-byte chunks of 16 little-endian 32-bit
// words. A chunk of a w-bit part holds 16/w coordinates: coordinate j sits in chunk j / (16/w) at
// slot s = j % (16/w), and word i of the chunk (i < 16) carries that coordinate's part of token i
// at bits [ws, ws + w) and of token i + 16 at bits [16 + ws, 16 + ws + w). Unused slots of the
// last chunk are zero.
//
// So a chunk loaded into 16 32-bit lanes, shifted right by ws (tokens 0-15) or 16 + ws (tokens
// 16-31), indexes a 16-entry table directly: a vpermps-style look-up reads only the low 4 bits.
// Bits above the part are garbage, which a table whose 16 entries repeat every 2^b entries
// ignores — so b <= 4 needs no mask except to combine the two parts of b = 3, and decoding a
// coordinate costs shifts and no shuffle. Storage is exactly b bits per code (plus padding of the
// last chunk when 16/w does not divide dim).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace tqkv::detail {

constexpr int kGroupTokens = 32;

// The part widths of a b-bit code, low bits first; returns the number of parts.
inline int code_parts(int bits, int widths[3]) {
    static const int table[9][4] = {{0}, {1, 1}, {1, 2}, {2, 2, 1}, {1, 4}, {2, 4, 1}, {2, 4, 2}, {3, 4, 2, 1}, {2, 4, 4}};
    for (int i = 0; i < table[bits][0]; ++i) widths[i] = table[bits][1 + i];
    return table[bits][0];
}

// Bytes of one w-bit part of `dim` coordinates for one group.
inline size_t part_bytes(int dim, int w) {
    const int per_chunk = 16 / w;
    return size_t(64) * size_t((dim + per_chunk - 1) / per_chunk);
}

// Bytes of the b-bit codes of `dim` coordinates for one group.
inline size_t group_code_bytes(int dim, int bits) {
    int w[3];
    size_t total = 0;
    for (int p = 0, n = code_parts(bits, w); p < n; ++p) total += part_bytes(dim, w[p]);
    return total;
}

// Byte and bit of token `token`'s part for coordinate j in a w-bit part.
inline void part_position(int j, int w, int token, size_t& byte, int& bit) {
    const int per_chunk = 16 / w;
    const int word_bit = w * (j % per_chunk) + (token >= 16 ? 16 : 0);
    byte = size_t(j / per_chunk) * 64 + size_t(token % 16) * 4 + size_t(word_bit / 8);
    bit = word_bit % 8;  // w divides 8, so a part never straddles two bytes
}

// Reference accessors (the scalar kernels and the tests use them; SIMD kernels read the layout
// directly).
inline int group_code(const uint8_t* codes, int dim, int bits, int token, int j) {
    int w[3], code = 0, shift_out = 0;
    const int n = code_parts(bits, w);
    for (int p = 0; p < n; ++p) {
        size_t byte;
        int bit;
        part_position(j, w[p], token, byte, bit);
        code |= ((codes[byte] >> bit) & ((1 << w[p]) - 1)) << shift_out;
        shift_out += w[p];
        codes += part_bytes(dim, w[p]);
    }
    return code;
}

// Writes the codes of one token (dim codes) into a group. Walks the chunks in order (no division
// per coordinate): this runs for every appended token and head, and part_position's divisions by a
// run-time width made it most of append's cost.
inline void set_group_codes(uint8_t* codes, int dim, int bits, int token, const uint8_t* token_codes) {
    int w[3], shift_in = 0;
    const int n = code_parts(bits, w);
    const size_t word = size_t(token % 16) * 4;
    const int half = token >= 16 ? 16 : 0;
    for (int p = 0; p < n; ++p) {
        const int width = w[p], per_chunk = 16 / width;
        const uint32_t mask = (1u << width) - 1;
        for (int j0 = 0, chunk = 0; j0 < dim; j0 += per_chunk, ++chunk) {
            uint8_t* at = codes + size_t(chunk) * 64 + word;
            uint32_t v = uint32_t(at[0]) | uint32_t(at[1]) << 8 | uint32_t(at[2]) << 16 | uint32_t(at[3]) << 24;
            const int end = std::min(per_chunk, dim - j0);
            for (int s = 0; s < end; ++s) {
                const int bit = half + width * s;
                v = (v & ~(mask << bit)) | ((uint32_t(token_codes[j0 + s]) >> shift_in & mask) << bit);
            }
            at[0] = uint8_t(v), at[1] = uint8_t(v >> 8), at[2] = uint8_t(v >> 16), at[3] = uint8_t(v >> 24);
        }
        shift_in += width;
        codes += part_bytes(dim, width);
    }
}

// All codes of a group at once: out[t * dim + j] = code of token t, coordinate j (t < 32).
inline void unpack_group(const uint8_t* codes, int dim, int bits, uint8_t* out) {
    int w[3], shift_out = 0;
    const int n = code_parts(bits, w);
    for (int i = 0; i < kGroupTokens * dim; ++i) out[i] = 0;
    for (int p = 0; p < n; ++p) {
        const int per_chunk = 16 / w[p], mask = (1 << w[p]) - 1;
        for (int j = 0; j < dim; ++j) {
            const uint8_t* chunk = codes + size_t(j / per_chunk) * 64;
            const int s = w[p] * (j % per_chunk);
            for (int i = 0; i < 16; ++i) {
                const uint32_t word = uint32_t(chunk[4 * i]) | uint32_t(chunk[4 * i + 1]) << 8 |
                                      uint32_t(chunk[4 * i + 2]) << 16 | uint32_t(chunk[4 * i + 3]) << 24;
                out[i * dim + j] |= uint8_t(((word >> s) & mask) << shift_out);
                out[(i + 16) * dim + j] |= uint8_t(((word >> (16 + s)) & mask) << shift_out);
            }
        }
        shift_out += w[p];
        codes += part_bytes(dim, w[p]);
    }
}

}  // namespace tqkv::detail
