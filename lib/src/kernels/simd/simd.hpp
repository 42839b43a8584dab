// A thin SIMD type layer of our own: just the operations the fast-path kernels need
// (kernels/simd/fast_attention.hpp), written once and instantiated per instruction set.
//
// A backend is a struct of static functions over two types:
//   V  32 bytes, seen as two 128-bit halves (AVX2: one __m256i; SIMD128 / NEON: a pair of 128-bit
//      registers; emulated: an array). Every operation that moves data between lanes (byte shuffle,
//      pack, unpack, pairwise multiply-add) acts on each half separately, exactly as AVX2's
//      vpshufb / vpackuswb / vpunpcklwd / vpmaddwd do, so the same kernel gives the same bits on
//      every backend: the lane a value lands in is defined by these per-half semantics.
//   F  8 floats, halves of 4 (lanes 0-3 from half 0, 4-7 from half 1).
//
// Operations (N a compile-time shift count; "16" / "32" = 16- / 32-bit lanes):
//   load(p) / store(p, v)         32 bytes, unaligned
//   table(p)                      a look-up table stored twice at p (32 bytes), one copy per half
//                                 (backends with 16-byte registers may read only the first copy)
//   broadcast16(p)                the 16 bytes at p in both halves
//   zero(), set8(x), set16(x)     constants
//   and_, or_                     bitwise
//   srl16<N>, sll16<N>, sra16<N>  shifts of 16-bit lanes (logical right / left / arithmetic right)
//   sll32<N>, srl32<N>, set32(x)  32-bit lanes
//   store_u8x16(p, lo, hi)        the 8 int32 lanes of lo, then of hi, as 16 bytes in order
//                                 (inputs in [0, 32767], saturated to 255)
//   add8, add16, sub16, add32     wrapping adds / subtracts
//   packus16(a, b)                per half: the 8 int16 lanes of a, then those of b, as uint8 with
//                                 unsigned saturation (vpackuswb)
//   packs32(a, b)                 per half: the 4 int32 lanes of a, then those of b, as int16 with
//                                 signed saturation (vpackssdw)
//   lookup(t, idx)                per half: byte i = t[idx[i]] for idx[i] < 16 (callers always mask
//                                 the indexes to 4 bits, so pshufb's, swizzle's and tbl's different
//                                 rules for larger indexes never matter)
//   unpacklo16(a, b) / hi         per half: interleave the low (high) 4 16-bit lanes of a and b
//   madd16(a, b)                  per half: int32 lane i = a[2i] b[2i] + a[2i+1] b[2i+1] (vpmaddwd)
//   to_float(v)                   int32 -> float (exact below 2^24, where the kernels use it)
//   round_to_int(f)               float -> int32, round to nearest even (|f| < 2^22, as the kernels
//                                 use it: table entries below 2^12, weights below 2^15)
//   fload, fstore, fset, fadd, fsub, fmul, fmin, fmax, hmin(f), hmax(f)   floats (IEEE, never
//                                 fused); fmin(a, b) = a < b ? a : b, fmax(a, b) = a > b ? a : b
//                                 (minps / maxps: a NaN in a gives b); hmin / hmax of non-NaN values
//   halves_to_float(h, out, n)    IEEE binary16 -> float, exact (n a multiple of 8)
//   kHeadsPerPass, kValueHeadsPerPass
//                                 query heads whose key / value sums fit the registers at once
//   Half (optional), join(l, h), part(v, i)
//                                 a backend over one 16-byte half of V (the same operations on
//                                 16 bytes), V from two halves and half i of a V. The kernels then
//                                 run the two halves of each 32-byte row of codes as separate
//                                 passes: Wasm128's pair of v128 with both halves' sums, indexes
//                                 and weights live at once outgrew V8's 16 xmm registers and
//                                 spilled (CPU time per attend, K4V4 4 heads x 4096: -7%).
//
// Backends: avx2.hpp (also used by the AVX-512 kernel table), wasm128.hpp (SIMD128, with relaxed
// swizzle when the module is built with relaxed SIMD), neon.hpp, emulated.hpp (plain C++, for the
// tests and as a readable definition of every operation).
//
// Why not Highway (Debian's libhwy-dev 1.0.3): the kernels need a dozen operations, all with the
// per-half semantics above, which this layer pins down in ~100 lines per backend; Highway would
// add a dependency to the wasm build (emscripten) and setup.sh, brings its own dispatch model
// where ours compiles each ISA folder with its flags, and 1.0.3 has no relaxed-SIMD wasm target.
#pragma once

#define TQKV_SIMD_INLINE inline __attribute__((always_inline))
#define TQKV_SIMD_LAMBDA __attribute__((always_inline))
