// .npy bytes from hostile input: parse must return an array whose size matches its shape, or
// throw std::invalid_argument.
#include <cstdint>
#include <stdexcept>

#include "tqkv/tqkv.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const tqkv::NpyArray a = tqkv::parse_npy(std::span<const uint8_t>(data, size));
        size_t n = 1;
        for (size_t s : a.shape) n *= s;
        if (n != a.data.size()) __builtin_trap();
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
