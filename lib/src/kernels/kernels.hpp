// The table of kernels one instruction set provides (internal).
//
// Every kernel has a scalar reference in kernels/scalar/; the AVX2, AVX-512 and NEON versions must
// produce bit-identical results for everything that decides a code (max_abs, sum_squares, scale,
// flip_signs, fwht, matvec, quantize, sign_bits, pack, float_to_half). That works because each of
// those is defined as a fixed sequence of IEEE operations:
//   - element-wise operations (scale, sign flips, Walsh–Hadamard butterflies a+b / a-b, compares)
//     give the same bits however they are vectorized;
//   - reductions use one canonical order: 16 lanes, lane l sums x[l], x[l+16], x[l+32], ... in
//     order, then the lanes are folded l += l+8, l += l+4, l += l+2, l += l+1;
//   - matvec accumulates y += x[j] * column j for j = 0, 1, 2, ... (each output in sequence);
//   - multiplies and adds are never fused (the project builds with -ffp-contract=off).
// dot_codes and lookup feed only decode and scores, where a different summation order is allowed
// (tests compare them with a tolerance).
//
// Buffers of floats are padded to a multiple of kLanes with zeros beyond their logical length.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tqkv::detail {

constexpr int kLanes = 16;
inline int pad_lanes(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

struct KernelTable {
    const char* name;
    // max |x_i|, n a multiple of 16.
    float (*max_abs)(const float* x, int n);
    // sum of x_i^2 in the canonical 16-lane order, n a multiple of 16.
    float (*sum_squares)(const float* x, int n);
    // x_i *= s.
    void (*scale)(float* x, int n, float s);
    // x_i = -x_i where mask bit i is set (mask: n/32 words, bit i%32 of word i/32).
    void (*flip_signs)(float* x, const uint32_t* mask, int n);
    // Unnormalized in-place Walsh–Hadamard transform on each block of `block` floats (a power of
    // two, block <= n, n a multiple of block); butterflies (a, b) -> (a + b, a - b), stride 1 first.
    void (*fwht)(float* x, int n, int block);
    // y[0, rows) = sum over j < cols of x[j] * m[j * rows + i]  (m column-major, rows % 16 == 0).
    void (*matvec)(const float* m, int rows, int cols, const float* x, float* y);
    // code_i = number of k with x_i >= bounds[k]; bounds has 2^bits entries, ascending, last +inf.
    void (*quantize)(const float* x, int n, const float* bounds, int bits, uint8_t* codes);
    // out_i = table[codes_i].
    void (*lookup)(const uint8_t* codes, int n, const float* table, float* out);
    // Packs n codes of `bits` bits, LSB first (see packing.hpp); unpack is the inverse.
    void (*pack)(const uint8_t* codes, int n, int bits, uint8_t* out);
    void (*unpack)(const uint8_t* in, int n, int bits, uint8_t* codes);
    // For count vectors of n packed codes (vector v at packed + v * stride):
    // out[v] = sum_i q[i] * table[code_vi]. n <= padded length of q; q zero-padded.
    void (*dot_codes)(const float* q, int n, const float* table, int bits, const uint8_t* packed,
                      size_t stride, size_t count, float* out);
    // IEEE binary16 conversion, round to nearest even (same bits as tqkv::float_to_half).
    void (*to_half)(const float* x, size_t n, uint16_t* out);
    void (*from_half)(const uint16_t* h, size_t n, float* out);
};

struct FastValueTable;  // below

// Kernels of the fused attention over the compressed cache (cache/layout.hpp describes the group
// layout they read). None of these decides a code, so each ISA may sum in its own order; tests
// compare them with the scalar ones within a tolerance.
struct AttentionKernels {
    // Scores of the 32 tokens of one group for `heads` query heads:
    //   out[h * 32 + t] = sum over j < dim of lut[(h * dim + j) * L + code(t, j)]
    // with L = 16 for bits <= 4 (entries replicated: lut[k] = value of code k & (2^bits - 1)) and
    // L = 2^bits above.
    void (*group_scores)(const uint8_t* codes, int dim, int bits, const float* lut, int heads, float* out);
    // Weighted sum of decoded values, kept as 16 partial sums per coordinate:
    //   acc[(h * dim + j) * 16 + l] += w[h * 32 + l] * table[code(l, j)] + w[h * 32 + 16 + l] * table[code(16 + l, j)]
    // table as the lut of one coordinate above (16 replicated entries, or 2^bits).
    void (*group_accumulate)(const uint8_t* codes, int dim, int bits, const float* table, const float* w, int heads,
                             float* acc);
    // The online softmax's step over a chunk of scores, one pass: x_i = exp(x_i - m) for x_i <= m
    // (-inf -> 0), returning sum_i of the new x_i. exp's relative error is below 2e-7 (results below
    // FLT_MIN may flush to 0); the sum's order is the kernel's.
    float (*exp_sum)(float* x, int n, float m);
    // Dense fp32 / fp16 building blocks (the exact recent window, the dense baselines).
    float (*dot_f32)(const float* a, const float* b, int n);
    void (*axpy_f32)(float a, const float* x, float* y, int n);  // y += a x
    float (*dot_f16)(const float* a, const uint16_t* b, int n);
    void (*axpy_f16)(float a, const uint16_t* x, float* y, int n);
    // max_i x_i (n >= 1): the online softmax's running maximum.
    float (*max_f32)(const float* x, int n);
    // Optional fused forms for the common case (one segment, fp16 norms); nullptr = the driver
    // composes them from the kernels above.
    //   out[h * out_stride + t] = scale * norm_t * (group_scores row h, token t)
    void (*group_scores_normed)(const uint8_t* codes, int dim, int bits, const float* lut, int heads,
                                const uint16_t* norms, float scale, float* out, int out_stride);
    //   group_accumulate with w[h][t] = p[h * p_stride + t] * norm_t, except that the kernel may spread
    //   each row's sum over the row's 16 lanes differently (the driver only scales rows and sums their
    //   lanes).
    void (*group_accumulate_normed)(const uint8_t* codes, int dim, int bits, const float* table, const float* p,
                                    int p_stride, const uint16_t* norms, int heads, float* acc);
    // Optional (nullptr = unused) key tables in a kernel's own format, built once per query:
    // prepare_scores converts the float tables `lut` of `heads` heads (as group_scores reads them)
    // into `table` (scores_table_bytes(dim, bits, heads) bytes) and returns false when it does not
    // handle the case (the driver then uses group_scores_normed); group_scores_prepared is
    // group_scores_normed reading that table.
    size_t (*scores_table_bytes)(int dim, int bits, int heads);
    bool (*prepare_scores)(const float* lut, int dim, int bits, int heads, void* table);
    void (*group_scores_prepared)(const uint8_t* codes, int dim, int bits, const void* table, int heads,
                                  const uint16_t* norms, float scale, float* out, int out_stride);

    // The bounded-error fast path (CacheConfig::precision = fast), codes of 1-4 bits, fp16 norms;
    // formats, arithmetic and error bounds in kernels/simd/fast_attention.hpp. Optional (nullptr =
    // not provided). Integer sums are exact, so every ISA gives the same bits as the scalar
    // reference (scalar_attention()'s entries).
    //   fast_prepare_scores: integer key tables of `heads` heads from the rotated queries
    //   q[h * dim + j] and the segment's 16 centroids (replicated as kernel tables are), i.e. from
    //   the float tables lut[h][j][k] = q[h * dim + j] * centroids[k] that group_scores reads, with
    //   the attention scale folded in, into fast_scores_table_bytes(dim, bits, heads) bytes; false
    //   when it does not handle the case (bits, a non-finite table).
    //   fast_chunk_scores: group_scores_normed from those tables for the groups of a chunk (codes[g],
    //   norms[g], g < groups <= 8; group g's tokens at out + h * out_stride + 32 g), stored, or added to
    //   what out holds (add: a second key segment). One call per chunk: a call per group cost the
    //   wasm driver more than the chunk's float epilogue.
    //   fast_chunk_accumulate: group_accumulate_normed over a chunk of groups (codes[g], norms[g],
    //   numerators p[g] with head h at p[g] + h * p_stride, g < groups) with int8 centroids and
    //   15-bit weights shared by up to 8 groups; adds each coordinate's sum to acc[h * dim + j] (one
    //   float per coordinate, where the float kernels keep 16 lanes).
    size_t (*fast_scores_table_bytes)(int dim, int bits, int heads);
    bool (*fast_prepare_scores)(const float* q, const float* centroids, int dim, int bits, int heads, float scale,
                                void* table);
    void (*fast_chunk_scores)(const uint8_t* const* codes, const uint16_t* const* norms, int groups, int dim, int bits,
                              const void* table, int heads, float* out, int out_stride, bool add);
    void (*fast_chunk_accumulate)(const uint8_t* const* codes, const uint16_t* const* norms, const float* const* p,
                                  int groups, int p_stride, int dim, int bits, const FastValueTable& table, int heads,
                                  float* acc);
};

// The int8 centroids the fast value kernels read, built once per codebook (make_fast_values).
struct FastValueTable {
    int8_t c[16] = {};       // round(centroid * s), s = 1 / inv_scale, entries as in the float table
    uint8_t biased[16] = {};  // c + 128 (in [1, 255]: |c| <= 127), what the SIMD kernels look up
    float inv_scale = 0;     // 1 / s
    float max_error = 0;     // max over entries of |c[k] * inv_scale - centroid_k| (exact)
    float max_abs = 0;       // max over entries of |centroid_k|
};
// From a float value table of 16 entries (codes of 1-4 bits, replicated as kernel tables are);
// s is chosen in [63.5, 127] / max_abs to make max_error small.
FastValueTable make_fast_values(const float* table16);

const KernelTable& scalar_kernels();
const AttentionKernels& scalar_attention();
#if defined(TQKV_HAVE_X86_KERNELS)
const AttentionKernels& avx2_attention();
const AttentionKernels& avx512_attention();
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
const AttentionKernels& neon_attention();
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
const AttentionKernels& wasm128_attention();
#endif
// The fast-path entries of each ISA's AttentionKernels (kernels/<isa>/fast.cpp; the scalar ones
// are the reference, kernels/scalar/fast.cpp). AVX-512 uses the AVX2 ones.
size_t fast_scores_table_bytes(int dim, int bits, int heads);
#define TQKV_DECLARE_FAST_KERNELS(isa)                                                                           \
    bool isa##_fast_prepare_scores(const float* q, const float* centroids, int dim, int bits, int heads,       \
                                   float scale, void* table);                                                 \
    void isa##_fast_chunk_scores(const uint8_t* const* codes, const uint16_t* const* norms, int groups,       \
                                 int dim, int bits, const void* table, int heads, float* out, int out_stride,  \
                                 bool add);                                                                    \
    void isa##_fast_chunk_accumulate(const uint8_t* const* codes, const uint16_t* const* norms,               \
                                     const float* const* p, int groups, int p_stride, int dim, int bits,        \
                                     const FastValueTable& table, int heads, float* acc);
TQKV_DECLARE_FAST_KERNELS(scalar)
#if defined(TQKV_HAVE_X86_KERNELS)
TQKV_DECLARE_FAST_KERNELS(avx2)
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
TQKV_DECLARE_FAST_KERNELS(neon)
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
TQKV_DECLARE_FAST_KERNELS(wasm128)
#endif
#undef TQKV_DECLARE_FAST_KERNELS

// The attention kernels that go with a kernel table (same ISA).
const AttentionKernels& attention_for(const KernelTable& k);
#if defined(TQKV_HAVE_X86_KERNELS)
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
const KernelTable& neon_kernels();
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
const KernelTable& wasm128_kernels();  // WebAssembly SIMD128 (kernels/wasm, built by wasm/build.sh)
#endif

// The table for a name ("scalar", "avx2", "avx512", "neon", "wasm128"); "" or "auto" = best supported
// (or the TQKV_KERNEL environment variable). Throws std::invalid_argument for unknown or
// unsupported names.
const KernelTable& kernels_by_name(const char* name);

}  // namespace tqkv::detail
