// The fast-path kernels (kernels/simd/fast_attention.hpp) on the NEON backend.
#include "kernels/simd/neon.hpp"
#include "kernels/simd/fast_attention.hpp"

namespace tqkv::detail {

using Backend = simd::Neon;

bool neon_fast_prepare_scores(const float* q, const float* centroids, int dim, int bits, int heads, float scale,
                              void* table) {
    return fast::prepare_scores<Backend>(q, centroids, dim, bits, heads, scale, table);
}

void neon_fast_chunk_scores(const uint8_t* const* codes, const uint16_t* const* norms, int groups, int dim, int bits,
                            const void* table, int heads, float* out, int out_stride, bool add) {
    fast::chunk_scores<Backend>(codes, norms, groups, dim, bits, table, heads, out, out_stride, add);
}

void neon_fast_chunk_accumulate(const uint8_t* const* codes, const uint16_t* const* norms, const float* const* p, int groups,
                                int p_stride, int dim, int bits, const FastValueTable& table, int heads, float* acc) {
    fast::chunk_accumulate<Backend>(codes, norms, p, groups, p_stride, dim, bits, table, heads, acc);
}

}  // namespace tqkv::detail
