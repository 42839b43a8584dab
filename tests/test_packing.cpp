#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "tqkv/tqkv.hpp"

using namespace tqkv;

TEST_CASE("packing round-trips every bit width and follows the documented layout", "[packing]") {
    Rng rng(3);
    for (int b = 1; b <= 8; ++b)
        for (size_t n : {1u, 3u, 7u, 8u, 9u, 80u, 128u, 1023u}) {
            std::vector<uint8_t> codes(n), back(n);
            for (auto& c : codes) c = uint8_t(rng.below(1u << b));
            std::vector<uint8_t> packed(packed_bytes(n, b) + 1, 0xEE);
            pack_codes(codes.data(), n, b, packed.data());
            CHECK(packed.back() == 0xEE);  // nothing written past ceil(n b / 8)
            unpack_codes(packed.data(), n, b, back.data());
            CHECK(codes == back);
            // Stream bit i*b + k is bit k of code i.
            for (size_t i = 0; i < n; ++i)
                for (int k = 0; k < b; ++k) {
                    const size_t s = i * b + k;
                    CHECK(((packed[s / 8] >> (s % 8)) & 1) == ((codes[i] >> k) & 1));
                }
        }
    const uint8_t four[4] = {0x1, 0x2, 0x3, 0xF};
    uint8_t out[2];
    pack_codes(four, 4, 4, out);
    CHECK(out[0] == 0x21);
    CHECK(out[1] == 0xF3);
    const uint8_t three[8] = {1, 2, 3, 4, 5, 6, 7, 0};
    uint8_t out3[3];
    pack_codes(three, 8, 3, out3);
    const uint32_t word = 1 | 2 << 3 | 3 << 6 | 4 << 9 | 5 << 12 | 6 << 15 | 7 << 18;
    CHECK(out3[0] == (word & 0xff));
    CHECK(out3[1] == ((word >> 8) & 0xff));
    CHECK(out3[2] == ((word >> 16) & 0xff));
}

namespace {

// Independent reference: the nearest binary16 value by search over all finite halves (positive
// finite halves are ordered like their bit patterns), ties to even, >= 65520 to inf.
uint16_t reference_half(float f) {
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    const double a = std::fabs(double(f));
    if (a >= 65520.0) return sign | 0x7c00;
    uint16_t lo = 0, hi = 0x7bff;
    while (lo < hi) {  // largest half <= a
        const uint16_t mid = uint16_t((lo + hi + 1) / 2);
        if (double(half_to_float(mid)) <= a) lo = mid; else hi = uint16_t(mid - 1);
    }
    const double below = half_to_float(lo);
    if (below == a || lo == 0x7bff) return sign | lo;
    const double above = half_to_float(uint16_t(lo + 1));
    if (a - below < above - a) return sign | lo;
    if (a - below > above - a) return sign | uint16_t(lo + 1);
    return sign | ((lo & 1) ? uint16_t(lo + 1) : lo);
}

}  // namespace

TEST_CASE("fp16 conversion is round-to-nearest-even", "[fp16]") {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN
        CHECK(float_to_half(half_to_float(uint16_t(h))) == h);
    }
    const float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e10f, 0x1p-24f, 0x1p-25f,
                           0x1.000002p-25f, 0x1.8p-24f, 0x1p-14f, 0x1.ffcp-15f, 0x1.ffep-15f, 1.0f + 0x1p-11f,
                           1.0f + 0x1.8p-11f, 1e-45f, 3.4e38f, INFINITY, -INFINITY};
    for (float f : edges) {
        INFO(f);
        CHECK(float_to_half(f) == reference_half(f));
    }
    Rng rng(9);
    for (int i = 0; i < 200000; ++i) {
        uint32_t bits = uint32_t(rng.next());
        // Concentrate on the interesting exponent range (subnormal halves to overflow).
        if (i % 2) bits = (bits & 0x807fffff) | uint32_t(100 + rng.below(45)) << 23;
        float f;
        std::memcpy(&f, &bits, 4);
        if (std::isnan(f)) continue;
        if (float_to_half(f) != reference_half(f)) {
            INFO(f);
            CHECK(float_to_half(f) == reference_half(f));
        }
    }
}

#include "cache/layout.hpp"

TEST_CASE("group layout: set_group_codes writes each part where the layout says, and nothing else", "[packing]") {
    using namespace tqkv::detail;
    Rng rng(11);
    for (int b = 1; b <= 8; ++b)
        for (int dim : {3, 5, 8, 17, 64, 80, 96, 128}) {
            INFO("bits " << b << " dim " << dim);
            const size_t bytes = group_code_bytes(dim, b);
            std::vector<uint8_t> g(bytes), expect(bytes);
            for (auto& x : g) x = uint8_t(rng.below(256));  // garbage around: must survive
            expect = g;
            std::vector<uint8_t> all(size_t(kGroupTokens) * dim);
            std::vector<bool> written(kGroupTokens, false);
            // Tokens in a random order, some written twice (the second value wins).
            for (int round = 0; round < 40; ++round) {
                const int t = int(rng.below(kGroupTokens));
                std::vector<uint8_t> codes(static_cast<size_t>(dim));
                for (auto& c : codes) c = uint8_t(rng.below(1u << b));
                set_group_codes(g.data(), dim, b, t, codes.data());
                // The same write through the documented positions (part_position), bit by bit.
                int w[3], shift = 0;
                size_t base = 0;
                for (int p = 0, np = code_parts(b, w); p < np; ++p) {
                    for (int j = 0; j < dim; ++j) {
                        size_t byte;
                        int bit;
                        part_position(j, w[p], t, byte, bit);
                        const int mask = (1 << w[p]) - 1;
                        const int part = (codes[size_t(j)] >> shift) & mask;
                        expect[base + byte] = uint8_t((expect[base + byte] & ~(mask << bit)) | (part << bit));
                    }
                    shift += w[p];
                    base += part_bytes(dim, w[p]);
                }
                CHECK(g == expect);
                std::copy(codes.begin(), codes.end(), all.begin() + size_t(t) * dim);
                written[size_t(t)] = true;
            }
            std::vector<uint8_t> unpacked(size_t(kGroupTokens) * dim);
            unpack_group(g.data(), dim, b, unpacked.data());
            for (int t = 0; t < kGroupTokens; ++t) {
                if (!written[size_t(t)]) continue;
                for (int j = 0; j < dim; ++j) {
                    CHECK(group_code(g.data(), dim, b, t, j) == all[size_t(t) * dim + j]);
                    CHECK(unpacked[size_t(t) * dim + j] == all[size_t(t) * dim + j]);
                }
            }
        }
}
