// Little-endian byte writer and bounds-checked reader, and CRC-32: what the serialized caches and
// calibrations are made of (internal).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace tqkv::detail {

// CRC-32 (IEEE 802.3, the zlib one).
inline uint32_t crc32(const uint8_t* p, size_t n) {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

class ByteWriter {
public:
    std::vector<uint8_t> out;
    void bytes(const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        out.insert(out.end(), b, b + n);
    }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) out.push_back(uint8_t(v >> (8 * i)));
    }
    void u64(uint64_t v) {
        for (int i = 0; i < 8; ++i) out.push_back(uint8_t(v >> (8 * i)));
    }
    void f32(float v) {
        uint32_t u;
        std::memcpy(&u, &v, 4);
        u32(u);
    }
    void f64(double v) {
        uint64_t u;
        std::memcpy(&u, &v, 8);
        u64(u);
    }
    void floats(const float* p, size_t n) {
        for (size_t i = 0; i < n; ++i) f32(p[i]);
    }
    // Appends the CRC-32 of everything written so far.
    void crc() { u32(crc32(out.data(), out.size())); }
};

// Reads from [p, p + n); running past the end throws std::invalid_argument("<prefix>truncated data").
class ByteReader {
public:
    ByteReader(const uint8_t* p, size_t n, std::string error_prefix) : p_(p), n_(n), prefix_(std::move(error_prefix)) {}
    [[noreturn]] void fail(const std::string& msg) const { throw std::invalid_argument(prefix_ + msg); }
    size_t left() const { return n_ - pos_; }
    const uint8_t* take(size_t n) {
        if (n > left()) fail("truncated data");
        const uint8_t* r = p_ + pos_;
        pos_ += n;
        return r;
    }
    uint32_t u32() {
        const uint8_t* b = take(4);
        return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
    }
    uint64_t u64() {
        const uint64_t lo = u32();
        return lo | uint64_t(u32()) << 32;
    }
    float f32() {
        const uint32_t u = u32();
        float v;
        std::memcpy(&v, &u, 4);
        return v;
    }
    double f64() {
        const uint64_t u = u64();
        double v;
        std::memcpy(&v, &u, 8);
        return v;
    }
    void floats(float* dst, size_t n) {
        const uint8_t* b = take(n * 4);
        for (size_t i = 0; i < n; ++i) {
            const uint32_t u = uint32_t(b[4 * i]) | uint32_t(b[4 * i + 1]) << 8 | uint32_t(b[4 * i + 2]) << 16 |
                               uint32_t(b[4 * i + 3]) << 24;
            std::memcpy(&dst[i], &u, 4);
        }
    }

private:
    const uint8_t* p_;
    size_t n_, pos_ = 0;
    std::string prefix_;
};

}  // namespace tqkv::detail
