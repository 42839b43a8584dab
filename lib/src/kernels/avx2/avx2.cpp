#include "kernels/kernels.hpp"
namespace tqkv::detail {
const KernelTable& avx2_kernels() { static KernelTable t = [] { KernelTable k = scalar_kernels(); k.name = "avx2"; return k; }(); return t; }
}
