// The fast-path kernels (kernels/simd/fast_attention.hpp) on the NEON backend.
#include "kernels/simd/neon.hpp"
#include "kernels/simd/fast_attention.hpp"

TQKV_DEFINE_FAST_KERNELS(neon, simd::Neon)
