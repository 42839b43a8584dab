// Cache spec strings from hostile text (the C ABI and the web demo take them from users): make_cache
// and make_budget_cache must build a working cache or throw std::invalid_argument. A cache that is
// built takes a few tokens and queries. Input: 1 byte of budget size, then the spec.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "tqkv/budget.hpp"
#include "tqkv/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1 || size > 200) return 0;
    const tqkv::CacheShape shape{2, 4, 2, 32};
    const std::string spec(reinterpret_cast<const char*>(data + 1), size - 1);
    const size_t budget = size_t(data[0]) * 1024;  // 0 .. 255 KiB
    std::unique_ptr<tqkv::AttentionCache> cache;
    try {
        cache = (data[0] & 1) ? tqkv::make_budget_cache(spec, shape, budget) : tqkv::make_cache(spec, shape);
    } catch (const std::invalid_argument&) {
        return 0;
    }
    std::vector<float> k(size_t(shape.kv_heads) * shape.head_dim), q(size_t(shape.heads) * shape.head_dim), out(q.size());
    for (int t = 0; t < 40; ++t) {
        for (size_t i = 0; i < k.size(); ++i) k[i] = float((i * 7 + size_t(t) * 13) % 17) / 8.0f - 1.0f;
        for (size_t i = 0; i < q.size(); ++i) q[i] = float((i * 5 + size_t(t)) % 11) / 5.0f - 1.0f;
        for (int l = 0; l < shape.layers; ++l) {
            try {
                cache->append(l, k, k);
            } catch (const std::invalid_argument&) {
                return 0;  // e.g. a budget too small for the protected tokens
            }
            cache->attend(l, q, out);
        }
    }
    return 0;
}
