// Y[n][out] = X[n][in] * W[out][in]^T for the Llama runner. The library is built for the
// baseline ISA, so the SIMD versions are compiled per function with target attributes and picked
// by the library's kernel dispatch (default_kernel(): the best the CPU runs, or TQKV_KERNEL;
// scalar and neon use the plain loops).
// The WebAssembly build with -msimd128 has a SIMD128 version (f32x4 multiply + add: no FMA in
// SIMD128), chosen at compile time: a wasm module either validates with SIMD or not at all.
//
// Loop order: a block of 4 weight rows stays in L1 while every block of tokens streams past it,
// so one pass over the weights serves a whole prefill chunk.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "model/matmul.hpp"
#include "kernels/kernels.hpp"
#include "tqkv/kernels.hpp"
#include "tqkv/model.hpp"
#include "tqkv/threads.hpp"

#if defined(__x86_64__) && !defined(__wasm__) && (defined(__GNUC__) || defined(__clang__))
#define TQKV_MATMUL_X86 1
#include <immintrin.h>
// GCC 12 reports its own _mm512_reduce_add_ps (an undefined pass-through operand) as uninitialized.
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

#if defined(__wasm_simd128__)
#define TQKV_MATMUL_WASM 1
#include <wasm_simd128.h>
#endif

namespace tqkv {
namespace {

using Choice = detail::MatmulKernel;

// Plain loops: 8 independent partial sums per dot product, which compilers vectorize with the
// baseline SIMD (SSE2 / NEON / simd128) without reassociating anything. (Sharing each input load
// over 4 weight rows looks better on paper but GCC 12 stops vectorizing it: 4x slower.)
void matmul_plain(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y, size_t ldy) {
    const size_t in8 = in / 8 * 8;
    for (size_t o = 0; o < out; ++o) {
        const float* w = W + o * in;
        for (size_t t = 0; t < n; ++t) {
            const float* x = X + t * in;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t i = 0; i < in8; i += 8)
                for (int l = 0; l < 8; ++l) acc[l] += w[i + l] * x[i + l];
            float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for (size_t i = in8; i < in; ++i) s += w[i] * x[i];
            Y[t * ldy + o] = s;
        }
    }
}

#if TQKV_MATMUL_X86

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// AVX2: 4 rows x 2 tokens of accumulators (8 of 16 ymm registers).
__attribute__((target("avx2,fma"))) void matmul_avx2(const float* X, size_t n, size_t in, const float* W, size_t out,
                                                     float* Y, size_t ldy) {
    const size_t in8 = in / 8 * 8;
    size_t o = 0;
    for (; o + 4 <= out; o += 4) {
        const float* w0 = W + o * in;
        const float* w1 = w0 + in;
        const float* w2 = w1 + in;
        const float* w3 = w2 + in;
        size_t t = 0;
        for (; t + 2 <= n; t += 2) {
            const float* x0 = X + t * in;
            const float* x1 = x0 + in;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (size_t i = 0; i < in8; i += 8) {
                const __m256 v0 = _mm256_loadu_ps(x0 + i), v1 = _mm256_loadu_ps(x1 + i);
                __m256 r = _mm256_loadu_ps(w0 + i);
                a00 = _mm256_fmadd_ps(r, v0, a00);
                a10 = _mm256_fmadd_ps(r, v1, a10);
                r = _mm256_loadu_ps(w1 + i);
                a01 = _mm256_fmadd_ps(r, v0, a01);
                a11 = _mm256_fmadd_ps(r, v1, a11);
                r = _mm256_loadu_ps(w2 + i);
                a02 = _mm256_fmadd_ps(r, v0, a02);
                a12 = _mm256_fmadd_ps(r, v1, a12);
                r = _mm256_loadu_ps(w3 + i);
                a03 = _mm256_fmadd_ps(r, v0, a03);
                a13 = _mm256_fmadd_ps(r, v1, a13);
            }
            float s[8] = {hsum256(a00), hsum256(a01), hsum256(a02), hsum256(a03),
                          hsum256(a10), hsum256(a11), hsum256(a12), hsum256(a13)};
            for (size_t i = in8; i < in; ++i) {
                s[0] += w0[i] * x0[i], s[1] += w1[i] * x0[i], s[2] += w2[i] * x0[i], s[3] += w3[i] * x0[i];
                s[4] += w0[i] * x1[i], s[5] += w1[i] * x1[i], s[6] += w2[i] * x1[i], s[7] += w3[i] * x1[i];
            }
            std::memcpy(Y + t * ldy + o, s, 4 * sizeof(float));
            std::memcpy(Y + (t + 1) * ldy + o, s + 4, 4 * sizeof(float));
        }
        for (; t < n; ++t) {
            const float* x0 = X + t * in;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = 0; i < in8; i += 8) {
                const __m256 v = _mm256_loadu_ps(x0 + i);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), v, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), v, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), v, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), v, a3);
            }
            float s[4] = {hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)};
            for (size_t i = in8; i < in; ++i) s[0] += w0[i] * x0[i], s[1] += w1[i] * x0[i], s[2] += w2[i] * x0[i], s[3] += w3[i] * x0[i];
            std::memcpy(Y + t * ldy + o, s, sizeof s);
        }
    }
    if (o < out) {  // the last out % 4 rows
        for (size_t t = 0; t < n; ++t)
            for (size_t r = o; r < out; ++r) {
                const float* w = W + r * in;
                const float* x = X + t * in;
                __m256 a = _mm256_setzero_ps();
                for (size_t i = 0; i < in8; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a);
                float s = hsum256(a);
                for (size_t i = in8; i < in; ++i) s += w[i] * x[i];
                Y[t * ldy + r] = s;
            }
    }
}

// AVX-512: 4 rows x 4 tokens of accumulators (16 of 32 zmm registers), masked tail.
__attribute__((target("avx512f,avx512dq,avx2,fma"))) void matmul_avx512(const float* X, size_t n, size_t in,
                                                                        const float* W, size_t out, float* Y, size_t ldy) {
    const size_t in16 = in / 16 * 16;
    const __mmask16 tail = __mmask16((1u << (in - in16)) - 1u);
    size_t o = 0;
    for (; o + 4 <= out; o += 4) {
        const float* w0 = W + o * in;
        const float* w1 = w0 + in;
        const float* w2 = w1 + in;
        const float* w3 = w2 + in;
        size_t t = 0;
        for (; t + 4 <= n; t += 4) {
            const float* x0 = X + t * in;
            const float* x1 = x0 + in;
            const float* x2 = x1 + in;
            const float* x3 = x2 + in;
            __m512 acc[4][4];
            for (auto& row : acc)
                for (auto& a : row) a = _mm512_setzero_ps();
#define TQKV_MM_STEP(LOAD)                                                                        \
    {                                                                                             \
        const __m512 r0 = LOAD(w0), r1 = LOAD(w1), r2 = LOAD(w2), r3 = LOAD(w3);                  \
        const __m512 xs[4] = {LOAD(x0), LOAD(x1), LOAD(x2), LOAD(x3)};                            \
        for (int a = 0; a < 4; ++a) {                                                             \
            acc[a][0] = _mm512_fmadd_ps(r0, xs[a], acc[a][0]);                                    \
            acc[a][1] = _mm512_fmadd_ps(r1, xs[a], acc[a][1]);                                    \
            acc[a][2] = _mm512_fmadd_ps(r2, xs[a], acc[a][2]);                                    \
            acc[a][3] = _mm512_fmadd_ps(r3, xs[a], acc[a][3]);                                    \
        }                                                                                         \
    }
            for (size_t i = 0; i < in16; i += 16) {
#define TQKV_LOAD(p) _mm512_loadu_ps((p) + i)
                TQKV_MM_STEP(TQKV_LOAD)
#undef TQKV_LOAD
            }
            if (tail) {
#define TQKV_LOAD(p) _mm512_maskz_loadu_ps(tail, (p) + in16)
                TQKV_MM_STEP(TQKV_LOAD)
#undef TQKV_LOAD
            }
#undef TQKV_MM_STEP
            for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) Y[(t + a) * ldy + o + b] = _mm512_reduce_add_ps(acc[a][b]);
        }
        for (; t < n; ++t) {
            const float* x0 = X + t * in;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = 0; i < in16; i += 16) {
                const __m512 v = _mm512_loadu_ps(x0 + i);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + i), v, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + i), v, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + i), v, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + i), v, a3);
            }
            if (tail) {
                const __m512 v = _mm512_maskz_loadu_ps(tail, x0 + in16);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + in16), v, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w1 + in16), v, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w2 + in16), v, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w3 + in16), v, a3);
            }
            Y[t * ldy + o] = _mm512_reduce_add_ps(a0);
            Y[t * ldy + o + 1] = _mm512_reduce_add_ps(a1);
            Y[t * ldy + o + 2] = _mm512_reduce_add_ps(a2);
            Y[t * ldy + o + 3] = _mm512_reduce_add_ps(a3);
        }
    }
    for (; o < out; ++o)
        for (size_t t = 0; t < n; ++t) {
            const float* w = W + o * in;
            const float* x = X + t * in;
            __m512 a = _mm512_setzero_ps();
            for (size_t i = 0; i < in16; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a);
            if (tail) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w + in16), _mm512_maskz_loadu_ps(tail, x + in16), a);
            Y[t * ldy + o] = _mm512_reduce_add_ps(a);
        }
}

#endif  // TQKV_MATMUL_X86

#if TQKV_MATMUL_WASM

inline float hsum128(v128_t v) {
    v = wasm_f32x4_add(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    v = wasm_f32x4_add(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2));
    return wasm_f32x4_extract_lane(v, 0);
}

// SIMD128: 4 weight rows x 2 tokens of accumulators (8 + 6 operands: V8 keeps them in the 16 xmm
// registers of x86-64). Each weight load serves both tokens; decode (n = 1) streams 4 rows at once.
void matmul_wasm128(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y, size_t ldy) {
    const size_t in4 = in / 4 * 4;
    size_t o = 0;
    for (; o + 4 <= out; o += 4) {
        const float* w0 = W + o * in;
        const float* w1 = w0 + in;
        const float* w2 = w1 + in;
        const float* w3 = w2 + in;
        size_t t = 0;
        for (; t + 2 <= n; t += 2) {
            const float* x0 = X + t * in;
            const float* x1 = x0 + in;
            v128_t a00 = wasm_f32x4_splat(0), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            for (size_t i = 0; i < in4; i += 4) {
                const v128_t v0 = wasm_v128_load(x0 + i), v1 = wasm_v128_load(x1 + i);
                v128_t r = wasm_v128_load(w0 + i);
                a00 = wasm_f32x4_add(a00, wasm_f32x4_mul(r, v0));
                a10 = wasm_f32x4_add(a10, wasm_f32x4_mul(r, v1));
                r = wasm_v128_load(w1 + i);
                a01 = wasm_f32x4_add(a01, wasm_f32x4_mul(r, v0));
                a11 = wasm_f32x4_add(a11, wasm_f32x4_mul(r, v1));
                r = wasm_v128_load(w2 + i);
                a02 = wasm_f32x4_add(a02, wasm_f32x4_mul(r, v0));
                a12 = wasm_f32x4_add(a12, wasm_f32x4_mul(r, v1));
                r = wasm_v128_load(w3 + i);
                a03 = wasm_f32x4_add(a03, wasm_f32x4_mul(r, v0));
                a13 = wasm_f32x4_add(a13, wasm_f32x4_mul(r, v1));
            }
            float s[8] = {hsum128(a00), hsum128(a01), hsum128(a02), hsum128(a03),
                          hsum128(a10), hsum128(a11), hsum128(a12), hsum128(a13)};
            for (size_t i = in4; i < in; ++i) {
                s[0] += w0[i] * x0[i], s[1] += w1[i] * x0[i], s[2] += w2[i] * x0[i], s[3] += w3[i] * x0[i];
                s[4] += w0[i] * x1[i], s[5] += w1[i] * x1[i], s[6] += w2[i] * x1[i], s[7] += w3[i] * x1[i];
            }
            std::memcpy(Y + t * ldy + o, s, 4 * sizeof(float));
            std::memcpy(Y + (t + 1) * ldy + o, s + 4, 4 * sizeof(float));
        }
        for (; t < n; ++t) {  // one token (decode; the same summation order as the pairs above)
            const float* x0 = X + t * in;
            v128_t a0 = wasm_f32x4_splat(0), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = 0; i < in4; i += 4) {
                const v128_t v = wasm_v128_load(x0 + i);
                a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(wasm_v128_load(w0 + i), v));
                a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(wasm_v128_load(w1 + i), v));
                a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(wasm_v128_load(w2 + i), v));
                a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(wasm_v128_load(w3 + i), v));
            }
            float s[4] = {hsum128(a0), hsum128(a1), hsum128(a2), hsum128(a3)};
            for (size_t i = in4; i < in; ++i) s[0] += w0[i] * x0[i], s[1] += w1[i] * x0[i], s[2] += w2[i] * x0[i], s[3] += w3[i] * x0[i];
            std::memcpy(Y + t * ldy + o, s, sizeof s);
        }
    }
    for (; o < out; ++o)  // the last out % 4 rows
        for (size_t t = 0; t < n; ++t) {
            const float* w = W + o * in;
            const float* x = X + t * in;
            v128_t a = wasm_f32x4_splat(0);
            for (size_t i = 0; i < in4; i += 4) a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(w + i), wasm_v128_load(x + i)));
            float s = hsum128(a);
            for (size_t i = in4; i < in; ++i) s += w[i] * x[i];
            Y[t * ldy + o] = s;
        }
}

#endif  // TQKV_MATMUL_WASM

}  // namespace

namespace detail {

// The kernels follow the library's dispatch (available_kernels(), TQKV_KERNEL): the matrix loops
// of the same ISA, and the kernel table's from_half to widen fp16 weights.
std::vector<MatmulKernel> matmul_kernels() {
    std::vector<MatmulKernel> out;
    for (const std::string& name : available_kernels()) {  // best first, scalar last
        MatmulKernel m{"plain", matmul_plain, kernels_by_name(name.c_str()).from_half};
#if TQKV_MATMUL_X86
        if (name == "avx512") m.name = "avx512", m.f32 = matmul_avx512;
        if (name == "avx2") m.name = "avx2", m.f32 = matmul_avx2;
#endif
#if TQKV_MATMUL_WASM
        if (name == "wasm128") m.name = "wasm128", m.f32 = matmul_wasm128;
#endif
        out.insert(out.begin(), m);  // plain loops first
    }
    return out;
}

// fp16 weights: a block of rows widened into a small fp32 buffer that stays in L1 while the tokens
// stream past it, then the fp32 kernel on that block. Each output is computed exactly as by the
// fp32 kernel (rows are independent), and the weights cross memory at 2 bytes each.
void matmul_f16_with(const MatmulKernel& k, const float* X, size_t n, size_t in, const uint16_t* W, size_t out, float* Y,
                     size_t ldy) {
    if (n == 0 || out == 0) return;
    if (ldy == 0) ldy = out;
    const size_t rows = std::max<size_t>(4, 4096 / std::max<size_t>(in, 1) / 4 * 4);  // ~16 KiB of fp32
    thread_local std::vector<float> block;
    if (block.size() < rows * in) block.resize(rows * in);
    for (size_t o = 0; o < out; o += rows) {
        const size_t r = std::min(rows, out - o);
        k.widen(W + o * in, r * in, block.data());
        k.f32(X, n, in, block.data(), r, Y + o, ldy);
    }
}

}  // namespace detail

namespace {

// The kernel of default_kernel() (the best this CPU runs, or TQKV_KERNEL's).
const Choice& chosen() {
    static const Choice c = [] {
        const std::string want = default_kernel();
        const auto all = detail::matmul_kernels();
        const std::string loops = want == "avx512" || want == "avx2" || want == "wasm128" ? want : "plain";
        for (const auto& k : all)
            if (loops == k.name) return k;
        return all.front();
    }();
    return c;
}

}  // namespace

void matmul_f32(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y) {
    if (n == 0 || out == 0) return;
    chosen().f32(X, n, in, W, out, Y, out);
}

void matmul_f16(const float* X, size_t n, size_t in, const uint16_t* W, size_t out, float* Y) {
    detail::matmul_f16_with(chosen(), X, n, in, W, out, Y);
}

void matmul(const float* X, size_t n, const WeightMatrix& W, float* Y, int threads) {
    // On several threads: ranges of output rows (multiples of 16, so every row goes through the
    // same loop of the kernel as on one thread: the same bits), when the product is large enough
    // to pay for the hand-off (2^18 multiply-adds: tens of microseconds).
    const size_t rows = W.rows, cols = W.cols;
    const size_t pieces = threads > 1 && n * rows * cols >= (size_t(1) << 18) ? size_t(threads) : 1;
    const size_t per = (rows + pieces - 1) / pieces, piece_rows = (per + 15) / 16 * 16;
    if (pieces == 1 || piece_rows >= rows) {
        if (W.is_f16()) matmul_f16(X, n, cols, W.f16.data(), rows, Y);
        else matmul_f32(X, n, cols, W.f32.data(), rows, Y);
        return;
    }
    auto piece = [&](size_t p) {
        const size_t o = p * piece_rows, r = std::min(piece_rows, rows - o);
        if (n == 0 || r == 0) return;
        if (W.is_f16()) detail::matmul_f16_with(chosen(), X, n, cols, W.f16.data() + o * cols, r, Y + o, rows);
        else chosen().f32(X, n, cols, W.f32.data() + o * cols, r, Y + o, rows);
    };
    parallel_for((rows + piece_rows - 1) / piece_rows, threads, [&piece](size_t p) { piece(p); });
}

const char* matmul_kernel() { return chosen().name; }

}  // namespace tqkv
