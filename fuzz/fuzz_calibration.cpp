// Serialized calibrations from hostile bytes: load must either succeed (and the calibration then
// saves back to the same bytes and builds a cache whose attention is finite) or throw
// std::invalid_argument. Never crash, leak or read out of bounds (ASan/UBSan).
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "tqkv/tqkv.hpp"
#include "util/binary_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* input, size_t size) {
    // Most mutations break the CRC, which load() rejects first. To reach the parser behind it,
    // inputs whose last byte is odd get a valid CRC written over their last four bytes.
    std::vector<uint8_t> buf(input, input + size);
    if (size >= 28 && (input[size - 1] & 1)) {
        const uint32_t c = tqkv::detail::crc32(buf.data(), size - 4);
        for (int i = 0; i < 4; ++i) buf[size - 4 + i] = uint8_t(c >> (8 * i));
    }
    try {
        const tqkv::Calibration cal = tqkv::Calibration::load(buf);
        if (cal.save() != buf) __builtin_trap();
        // Resource cap of the harness: building codec tables for a large head_dim takes seconds.
        if (cal.head_dim() > 64 || cal.layers() > 2 || cal.kv_heads() > 4 || !cal.complete()) return 0;
        const tqkv::CacheShape shape{cal.layers(), cal.kv_heads(), cal.kv_heads(), cal.head_dim()};
        tqkv::ModelKVCache cache(shape, tqkv::CacheSpec::parse("K2.5V1.5-w2"), &cal);
        const size_t row = size_t(cal.kv_heads()) * cal.head_dim();
        std::vector<float> k(4 * row, 0.5f), v(4 * row, -0.25f), q(row, 0.125f), o(row);
        for (int l = 0; l < cal.layers(); ++l) {
            cache.append(l, k, v);
            cache.attend(l, q, o);
            for (float x : o)
                if (!std::isfinite(x)) __builtin_trap();
        }
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
