#include "kernels/kernels.hpp"
namespace tqkv::detail {
const KernelTable& avx512_kernels() { static KernelTable t = [] { KernelTable k = scalar_kernels(); k.name = "avx512"; return k; }(); return t; }
}
