// The Llama runner's matrix-product kernels, listed for the tests (every kernel this CPU runs is
// checked against the plain loops, and fp16 weights against fp32 weights of the same values).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tqkv::detail {

struct MatmulKernel {
    const char* name;
    // Y[t * ldy + o] = sum_i X[t][i] * W[o][i] for t < n, o < out.
    void (*f32)(const float* X, size_t n, size_t in, const float* W, size_t out, float* Y, size_t ldy);
    // fp16 bits -> fp32 values (finite inputs), exact.
    void (*widen)(const uint16_t* h, size_t n, float* f);
};

// Every kernel this machine runs, the plain loops first and the one matmul_f32 picks last
// (unless TQKV_KERNEL caps it).
std::vector<MatmulKernel> matmul_kernels();
void matmul_f16_with(const MatmulKernel& k, const float* X, size_t n, size_t in, const uint16_t* W, size_t out, float* Y);

}  // namespace tqkv::detail
