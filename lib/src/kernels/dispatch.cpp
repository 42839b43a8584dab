// Picks the kernel table: the best the CPU supports, or the one TQKV_KERNEL / the caller names.
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "tqkv/kernels.hpp"

namespace tqkv {
namespace detail {
namespace {

#if defined(TQKV_HAVE_X86_KERNELS)
// F16C and BMI2 straight from CPUID (clang's __builtin_cpu_supports knows neither name), asked
// once: in a virtual machine every CPUID instruction traps to the hypervisor (microseconds), and
// kernels_by_name runs on every dense_attention call.
bool has_f16c_bmi2() {
    static const bool yes = [] {
        unsigned a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 29))) return false;  // F16C
        return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 8));      // BMI2
    }();
    return yes;
}
#endif

bool cpu_supports(const std::string& name) {
    if (name == "scalar") return true;
#if defined(TQKV_HAVE_X86_KERNELS)
    __builtin_cpu_init();
    if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                               has_f16c_bmi2();
    if (name == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c_bmi2();
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
    if (name == "neon") return true;  // NEON is part of the ARMv8-A baseline
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
    if (name == "wasm128") return true;  // the module only validates on engines with SIMD128
#endif
    return false;
}

const KernelTable* table_for(const std::string& name) {
    if (name == "scalar") return &scalar_kernels();
#if defined(TQKV_HAVE_X86_KERNELS)
    if (name == "avx2") return &avx2_kernels();
    if (name == "avx512") return &avx512_kernels();
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
    if (name == "neon") return &neon_kernels();
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
    if (name == "wasm128") return &wasm128_kernels();
#endif
    return nullptr;
}

const KernelTable& best_kernels() {
    static const KernelTable* best = [] {
        const char* env = std::getenv("TQKV_KERNEL");
        if (env && *env && std::string(env) != "auto") return &kernels_by_name(env);
        for (const auto& name : available_kernels())
            if (name != "scalar") return table_for(name);  // available_kernels() lists the best first
        return &scalar_kernels();
    }();
    return *best;
}

}  // namespace

const KernelTable& kernels_by_name(const char* name) {
    const std::string n = name ? name : "";
    if (n.empty() || n == "auto") return best_kernels();
    const KernelTable* t = table_for(n);
    if (!t) throw std::invalid_argument("tqkv: unknown kernel '" + n + "' (scalar, avx2, avx512, neon, wasm128)");
    if (!cpu_supports(n)) throw std::invalid_argument("tqkv: kernel '" + n + "' is not supported by this CPU");
    return *t;
}

const AttentionKernels& attention_for(const KernelTable& k) {
    const std::string n = k.name;
#if defined(TQKV_HAVE_X86_KERNELS)
    if (n == "avx2") return avx2_attention();
    if (n == "avx512") return avx512_attention();
#endif
#if defined(TQKV_HAVE_NEON_KERNELS)
    if (n == "neon") return neon_attention();
#endif
#if defined(TQKV_HAVE_WASM_KERNELS)
    if (n == "wasm128") return wasm128_attention();
#endif
    return scalar_attention();
}

}  // namespace detail

std::vector<std::string> available_kernels() {
    std::vector<std::string> out;
    for (const char* name : {"avx512", "avx2", "neon", "wasm128"})
        if (detail::table_for(name) && detail::cpu_supports(name)) out.push_back(name);
    out.push_back("scalar");
    return out;
}

std::string default_kernel() { return detail::best_kernels().name; }

}  // namespace tqkv
