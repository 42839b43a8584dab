// A small portable random number generator.
//
// Everything random in tqkv (rotations, sign flips, permutations, QJL matrices, synthetic data)
// comes from here, never from <random>: std::normal_distribution differs between libstdc++ and
// libc++ (which Emscripten uses), and the codes of a (config, seed) must match on every target.
// Only integer arithmetic, + - * / and sqrt are used, all of which IEEE 754 rounds identically.
#pragma once
#include <cstdint>
#include <cstring>

namespace tqkv {

// SplitMix64: turns any 64-bit seed into well-mixed state words.
inline uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Derives an independent stream seed from a user seed and a purpose tag.
inline uint64_t derive_seed(uint64_t seed, uint64_t tag) {
    uint64_t s = seed ^ (tag * 0xd1b54a32d192ed03ull);
    return splitmix64(s);
}

// Natural logarithm from + - * / only (so it is bit-identical everywhere, unlike libm's log).
// x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172.
inline double portable_log(double x) {
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    int e = int((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // m in [1, 2)
    double m;
    std::memcpy(&m, &bits, sizeof m);
    if (m > 1.4142135623730951) { m *= 0.5; e += 1; }
    const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double term = s, sum = 0.0;
    for (int k = 1; k <= 29; k += 2) {  // s^31/31 < 1e-25: far below double precision
        sum += term / k;
        term *= s2;
    }
    return 2.0 * sum + e * 0.6931471805599453;  // ln 2
}

// xoshiro256** (Blackman & Vigna), seeded through SplitMix64.
class Rng {
public:
    explicit Rng(uint64_t seed) {
        for (auto& w : s_) w = splitmix64(seed);
    }

    uint64_t next() {
        const uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    // Uniform in [0, 1), 53 random bits.
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }

    // Uniform integer in [0, n), unbiased (rejection).
    uint64_t below(uint64_t n) {
        const uint64_t threshold = (0 - n) % n;
        for (;;) {
            const uint64_t r = next();
            if (r >= threshold) return r % n;
        }
    }

    // Standard normal, Marsaglia's polar method with portable_log.
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u, v, s;
        do {
            u = 2.0 * uniform() - 1.0;
            v = 2.0 * uniform() - 1.0;
            s = u * u + v * v;
        } while (s >= 1.0 || s == 0.0);
        const double f = __builtin_sqrt(-2.0 * portable_log(s) / s);
        spare_ = v * f;
        has_spare_ = true;
        return u * f;
    }

private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t s_[4];
    double spare_ = 0.0;
    bool has_spare_ = false;
};

}  // namespace tqkv
