// The Llama runner's matrix-product kernels, listed for the tests (every kernel this CPU runs is
// checked against the plain loops, and fp16 weights against fp32 weights of the same values).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tqkv::detail {

struct MatmulKernel {
    const char* name;  // the matrix loops: plain, avx2, avx512 or wasm128
    // Y[t * ldy + o] = sum_i X[t][i] * W[o][i] for t < n, o < out.
    void (*f32)(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y, size_t ldy);
    // fp16 bits -> fp32 values, exact: the kernel table's from_half.
    void (*widen)(const uint16_t* h, size_t n, float* f);
};

// One per kernel of available_kernels() (the scalar one first, whose loops are the plain ones).
std::vector<MatmulKernel> matmul_kernels();
// ldy: row stride of Y (0 = out).
void matmul_f16_with(const MatmulKernel& k, const float* X, size_t n, size_t in, const uint16_t* W, size_t out, float* Y,
                     size_t ldy = 0);

}  // namespace tqkv::detail
