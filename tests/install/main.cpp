// A separate CMake project that finds the installed library with find_package(tqkv): encodes,
// decodes and attends through the public headers only. Run by scripts/test.sh.
#include <tqkv/tqkv.hpp>

#include <cmath>
#include <cstdio>

int main() {
    tqkv::CodecConfig c;
    const auto codec = tqkv::make_codec(c);
    std::vector<float> x(128);
    for (int i = 0; i < 128; ++i) x[i] = std::sin(0.1f * i);
    const auto y = codec->decode(codec->encode(x));
    double e = 0, n = 0;
    for (int i = 0; i < 128; ++i) e += (x[i] - y[i]) * (x[i] - y[i]), n += x[i] * x[i];
    tqkv::KVCache cache(tqkv::CacheConfig{});
    std::vector<float> kv(4 * 128 * 10, 0.25f), q(4 * 128, 0.5f), o(q.size());
    cache.append(kv, kv);
    cache.attend(q, o);
    std::printf("installed tqkv: kernel %s, 4-bit relative error %.3f, attention output %.3f\n", codec->kernel(),
                std::sqrt(e / n), o[0]);
    return std::sqrt(e / n) < 0.2 && std::fabs(o[0] - 0.25f) < 0.05f ? 0 : 1;
}
