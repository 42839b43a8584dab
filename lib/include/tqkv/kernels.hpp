// Which SIMD kernels this build and CPU provide. The library picks the best at run time; the
// environment variable TQKV_KERNEL=scalar|avx2|avx512|neon forces one (tests and benchmarks use
// it), and CodecConfig::kernel chooses one per codec.
#pragma once
#include <string>
#include <vector>

namespace tqkv {

// Kernels usable on this machine, best first; always ends with "scalar".
std::vector<std::string> available_kernels();
// The kernel used when none is named (TQKV_KERNEL or the best available).
std::string default_kernel();

}  // namespace tqkv
