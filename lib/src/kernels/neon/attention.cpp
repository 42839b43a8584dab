// Placeholder: the neon attention kernels fall back to the scalar ones until written.
#include "kernels/kernels.hpp"
namespace tqkv::detail {
const AttentionKernels& neon_attention() { return scalar_attention(); }
}  // namespace tqkv::detail
