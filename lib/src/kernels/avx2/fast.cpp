// The fast-path kernels (kernels/simd/fast_attention.hpp) on the AVX2 backend; the AVX-512 kernel
// table uses them too.
#include "kernels/simd/avx2.hpp"
#include "kernels/simd/fast_attention.hpp"

TQKV_DEFINE_FAST_KERNELS(avx2, simd::Avx2)
