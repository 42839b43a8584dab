// Placeholder: the avx2 attention kernels fall back to the scalar ones until written.
#include "kernels/kernels.hpp"
namespace tqkv::detail {
const AttentionKernels& avx2_attention() { return scalar_attention(); }
}  // namespace tqkv::detail
