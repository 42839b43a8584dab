// Attention over a KVCache's codes: attend / attend_stats through attend_impl (the fused path: query
// tables, the kernels of kernels.hpp, online softmax over chunks), and the reference path
// (decode_keys / decode_values, attend_reference: exact attention in double precision).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "cache/impl.hpp"
#include "codec/shared.hpp"
#include "tqkv/packing.hpp"

namespace tqkv {

using namespace detail;

namespace {

constexpr int kChunkGroups = 8;      // online softmax: one max/rescale per 256 tokens

}  // namespace

// ---------------------------------------------------------------------------------------------
// Attention

namespace {

// Per-thread buffers of attend(): grown on first use, then reused (no allocation per call).
// A set of parts with the same codes within one attention call (see attend_impl).
struct AttendClass {
    const KVCache::Impl* codes = nullptr;  // the first part of the class
    float value_scale = 1;
    size_t lut_off = 0, acc_off = 0, prep_off = 0;  // floats into Workspace::lut / acc / prepared
    size_t index = 0;                                // this class's rows of Workspace::lc / shift
    bool fused_keys = false, fused_values = false, may_prepare = false, prepared = false;
    // precision = fast: integer key tables of every key segment at prepared + fast_off (fast_keys:
    // wanted, fast_prepared: built for this query), int8 / int16 values (fast_values).
    size_t fast_off = 0;
    bool fast_keys = false, fast_prepared = false, fast_values = false;
};

struct Workspace {
    std::vector<float> lut, acc, acc_exact, scores, raw, raw2, w, m, l, buf, tmp, sq, norms, gammas;
    // Per class and query head: the class's share of the softmax sum (its value mean is added
    // back with that weight) and the logit shift scale * q.key_mean (see CacheConfig).
    std::vector<float> lc, shift;
    std::vector<float> prepared;  // the key tables in the kernel's own format (prepare_scores)
    std::vector<AttendClass> classes;
    std::vector<uint32_t> part_class;
    static void grow(std::vector<float>& v, size_t n) {
        if (v.size() < n) v.resize(n);
    }
};

Workspace& workspace() {
    thread_local Workspace ws;
    return ws;
}

// Floats of a key segment's fast tables in the workspace (64-byte multiples, as the prepared ones).
size_t fast_table_floats(const AttentionKernels& ak, const CacheSegment& s, int heads) {
    return (ak.fast_scores_table_bytes(s.dim, s.bits, heads) / sizeof(float) + 16) / 16 * 16;
}

void read_norms(const KernelTable& k, const uint8_t* p, size_t nb, float* out) {
    if (nb == 2) {
        uint16_t h[kGroupTokens];
        std::memcpy(h, p, sizeof h);  // little-endian targets only (x86, ARM64, wasm)
        k.from_half(h, kGroupTokens, out);
    } else {
        std::memcpy(out, p, kGroupTokens * sizeof(float));
    }
}

}  // namespace

void KVCache::attend(std::span<const float> queries, std::span<float> out, bool causal) const {
    const Impl* self = impl_.get();
    attend_impl(std::span(&self, 1), {}, queries, out, causal, nullptr, nullptr, {}, false);
}

namespace {
void check_stats_sizes(const CacheConfig& c, size_t query, size_t acc, size_t max_logit, size_t sum_exp) {
    if (query != size_t(c.heads) * c.head_dim)
        fail("attend_stats: query has " + std::to_string(query) + " floats, expected heads * head_dim = " +
             std::to_string(size_t(c.heads) * c.head_dim));
    if (acc != query) fail("attend_stats: acc needs heads * head_dim floats");
    if (max_logit != size_t(c.heads) || sum_exp != size_t(c.heads))
        fail("attend_stats: max_logit and sum_exp need one float per query head");
}
}  // namespace

void KVCache::attend_stats(std::span<const float> query, std::span<float> acc, std::span<float> max_logit,
                           std::span<float> sum_exp, std::span<float> logits) const {
    const CacheConfig& c = impl_->cfg;
    check_stats_sizes(c, query.size(), acc.size(), max_logit.size(), sum_exp.size());
    if (!logits.empty() && logits.size() != size_t(c.heads) * impl_->n_tokens)
        fail("attend_stats: logits need heads * tokens() floats (or none)");
    if (impl_->n_tokens == 0) fail("attend: the cache is empty");
    const Impl* self = impl_.get();
    attend_impl(std::span(&self, 1), {}, query, acc, false, max_logit.data(), sum_exp.data(), logits, false);
}

bool KVCache::same_codes(const KVCache& other) const {
    const CacheConfig &a = impl_->cfg, &b = other.impl_->cfg;
    return a.heads == b.heads && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim && a.key_bits == b.key_bits &&
           a.key_method == b.key_method && a.value_bits == b.value_bits && a.key_high_channels == b.key_high_channels &&
           a.value_high_channels == b.value_high_channels && a.seed == b.seed && a.norm == b.norm &&
           impl_->scale == other.impl_->scale && impl_->k == other.impl_->k && impl_->ak == other.impl_->ak;
}

void KVCache::attend_stats(std::span<const KVCache* const> caches, std::span<const float> query, std::span<float> acc,
                           std::span<float> max_logit, std::span<float> sum_exp, std::span<float> logits,
                           std::span<const float> value_scales, bool continue_stats) {
    if (caches.empty()) fail("attend_stats: no caches");
    if (!value_scales.empty() && value_scales.size() != caches.size())
        fail("attend_stats: value_scales needs one factor per cache (or none)");
    // Per-thread lists: a budgeted cache calls this for every query and KV head (no allocation
    // once they have grown).
    thread_local std::vector<const Impl*> parts;
    thread_local std::vector<float> scales;
    parts.clear();
    scales.clear();
    size_t total = 0;
    for (size_t i = 0; i < caches.size(); ++i) {
        const KVCache* cache = caches[i];
        if (!cache || !cache->impl_) fail("attend_stats: a null or moved-from cache");
        const CacheConfig &a = cache->impl_->cfg, &b = caches[0]->impl_->cfg;
        if (a.heads != b.heads || a.kv_heads != b.kv_heads || a.head_dim != b.head_dim || cache->impl_->k != caches[0]->impl_->k)
            fail("attend_stats: the caches differ in heads, KV heads, head_dim or kernel");
        const float vs = value_scales.empty() ? 1.0f : value_scales[i];
        if (!(std::isfinite(vs) && std::abs(vs) < 1e6f)) fail("attend_stats: value scale " + std::to_string(vs) + " is not finite or too large");
        total += cache->impl_->n_tokens;
        if (cache->impl_->n_tokens) parts.push_back(cache->impl_.get()), scales.push_back(vs);  // empty caches add nothing
    }
    const CacheConfig& c = caches[0]->impl_->cfg;
    check_stats_sizes(c, query.size(), acc.size(), max_logit.size(), sum_exp.size());
    if (!logits.empty() && logits.size() != size_t(c.heads) * total)
        fail("attend_stats: logits need heads * (sum of tokens()) floats (or none)");
    if (parts.empty()) fail("attend: the caches are empty");
    if (continue_stats) {  // statistics of earlier tokens: finite, or none (-inf, 0, zeros)
        for (size_t h = 0; h < max_logit.size(); ++h)
            if (std::isnan(max_logit[h]) || max_logit[h] == std::numeric_limits<float>::infinity() || !std::isfinite(sum_exp[h]) ||
                sum_exp[h] < 0)
                fail("attend_stats: the statistics to continue from are not finite");
        for (float x : acc)
            if (!std::isfinite(x)) fail("attend_stats: the acc to continue from is not finite");
    }
    attend_impl(parts, scales, query, acc, false, max_logit.data(), sum_exp.data(), logits, continue_stats);
}

// Attention of the queries over the tokens of `parts` in order, as one cache, in one online
// softmax (several parts only for attend_stats: one query, not causal). Parts with the same codes
// (shared codecs and scale: the segments of one tier of a budgeted cache) form a class that has one
// query rotation, one set of look-up tables and one set of value accumulators; each part is scored
// and accumulated with its own class's kernels and bit widths. value_scales: one factor per part
// on its values (empty: 1). continue_stats: out / stat_max / stat_sum hold on entry the statistics
// of tokens attended elsewhere (acc unnormalized), which the online softmax starts from.
void KVCache::attend_impl(std::span<const Impl* const> parts, std::span<const float> value_scales,
                          std::span<const float> queries, std::span<float> out, bool causal, float* stat_max,
                          float* stat_sum, std::span<float> logits, bool continue_stats) {
    const Impl& m = *parts[0];
    const CacheConfig& c = m.cfg;
    const int d = c.head_dim, r = m.group_size();
    const size_t qrow = size_t(c.heads) * d;
    if (queries.empty() || queries.size() % qrow != 0)
        fail("attend: queries have " + std::to_string(queries.size()) +
             " floats, expected a positive multiple of heads * head_dim = " + std::to_string(qrow));
    if (out.size() != queries.size())
        fail("attend: out has " + std::to_string(out.size()) + " floats, expected " + std::to_string(queries.size()));
    if (m.n_tokens == 0) fail("attend: the cache is empty");
    const size_t n_q = queries.size() / qrow;
    if (causal && n_q > m.n_tokens)
        fail("attend: " + std::to_string(n_q) + " causal queries but only " + std::to_string(m.n_tokens) +
             " tokens (append the chunk's keys and values first)");
    check_finite(queries, c, c.heads, "attend: query");

    const AttentionKernels& ak = *m.ak;  // the same kernel tables for every part (checked by the callers)
    const KernelTable& k = *m.k;
    Workspace& ws = workspace();
    const size_t chunk_tokens = size_t(kChunkGroups) * kGroupTokens;
    const size_t score_cols = chunk_tokens;

    // The classes, their tables and accumulators laid out one after the other in the workspace.
    // The fused kernels cover the common layouts: fp16 norms (stored little-endian, and every
    // supported target is little-endian), MSE keys, one segment or the two of a fractional rate
    // (one fused call per segment, the second added to the first).
    ws.classes.clear();
    ws.part_class.resize(parts.size());
    size_t lut_floats = 0, acc_floats = 0, prep_floats = 0;
    for (size_t p = 0; p < parts.size(); ++p) {
        const Impl& P = *parts[p];
        const float vs = value_scales.empty() ? 1.0f : value_scales[p];
        size_t ci = 0;
        while (ci < ws.classes.size() &&
               !(ws.classes[ci].codes->codecs == P.codecs && ws.classes[ci].codes->scale == P.scale && ws.classes[ci].value_scale == vs &&
                 ws.classes[ci].codes->cfg.precision == P.cfg.precision))
            ++ci;
        ws.part_class[p] = uint32_t(ci);
        if (ci < ws.classes.size()) continue;
        AttendClass cl;
        cl.codes = &P;
        cl.value_scale = vs;
        cl.index = ws.classes.size();
        cl.lut_off = lut_floats, cl.acc_off = acc_floats, cl.prep_off = prep_floats;
        for (auto& s : P.keys().segs) lut_floats += size_t(r) * s.dim * (s.table.size() + (s.prod ? 16 : 0));
        for (auto& s : P.values().segs) acc_floats += size_t(r) * s.dim * 16;
        const bool f16 = P.cfg.norm == NormFormat::F16;
        bool mse_keys = true;
        for (const auto& s : P.keys().segs) mse_keys = mse_keys && !s.prod;
        cl.fused_keys = ak.group_scores_normed && f16 && mse_keys;
        cl.fused_values = ak.group_accumulate_normed && f16;
        bool small_keys = true, small_values = true;  // codes of 1-4 bits: the fast kernels' range
        for (const auto& s : P.keys().segs) small_keys = small_keys && s.bits <= 4;
        for (const auto& s : P.values().segs) small_values = small_values && s.bits <= 4;
        const bool fast = P.cfg.precision == Precision::Fast;
        // (not tied to the float fused forms: the scalar table has none, and its fast entries are
        // the reference every ISA's match)
        cl.fast_keys = fast && f16 && mse_keys && small_keys && ak.fast_prepare_scores;
        cl.fast_values = fast && f16 && small_values && ak.fast_group_accumulate;
        if (cl.fast_keys) {
            cl.fast_off = prep_floats;
            for (const auto& s : P.keys().segs) prep_floats += fast_table_floats(ak, s, r);
        }
        // One-segment fused keys may also use tables the kernel prepares once per query (fixed
        // point on wasm and AVX2), 64-byte multiples apart.
        cl.may_prepare = !cl.fast_keys && cl.fused_keys && P.keys().segs.size() == 1 && ak.prepare_scores;
        if (cl.may_prepare) {
            const auto& s = P.keys().segs[0];
            prep_floats += (ak.scores_table_bytes(s.dim, s.bits, r) / sizeof(float) + 16) / 16 * 16;
        }
        ws.classes.push_back(cl);
    }
    const int padded = pad_lanes(d);
    Workspace::grow(ws.lut, lut_floats);
    Workspace::grow(ws.acc, acc_floats);
    Workspace::grow(ws.acc_exact, size_t(r) * d);
    Workspace::grow(ws.scores, size_t(r) * score_cols);
    Workspace::grow(ws.raw, size_t(r) * kGroupTokens);
    Workspace::grow(ws.raw2, size_t(r) * kGroupTokens);
    Workspace::grow(ws.w, size_t(r) * kGroupTokens);
    Workspace::grow(ws.m, r);
    Workspace::grow(ws.l, r);
    Workspace::grow(ws.buf, padded);
    Workspace::grow(ws.tmp, padded);
    Workspace::grow(ws.sq, padded);
    Workspace::grow(ws.norms, kGroupTokens);
    Workspace::grow(ws.gammas, kGroupTokens);
    Workspace::grow(ws.prepared, prep_floats + 1);
    Workspace::grow(ws.lc, ws.classes.size() * size_t(r));
    Workspace::grow(ws.shift, ws.classes.size() * size_t(r));
    // Centred keys shift every logit of a query by scale * q.key_mean, which one softmax over one
    // cache ignores; statistics, logits and several caches in one softmax need it added back.
    const bool add_shift = stat_max || !logits.empty() || parts.size() > 1;

    for (size_t qi = 0; qi < n_q; ++qi) {
        for (int kvh = 0; kvh < c.kv_heads; ++kvh) {
            const float* q0 = &queries[qi * qrow + size_t(kvh) * r * d];  // the r query heads of this KV head
            // 1. Per class: rotate each query once per key segment and build its look-up tables,
            //    lut[j][code] = q'_j * centroid[code]; for prod also the sketch table of S q'.
            for (AttendClass& cl : ws.classes) {
                float* lut = ws.lut.data() + cl.lut_off;
                for (auto& s : cl.codes->keys().segs) {
                    const int sp = s.rot->padded_dim(), L = int(s.table.size());
                    for (int hh = 0; hh < r; ++hh) {
                        for (int j = 0; j < s.dim; ++j) ws.buf[j] = q0[size_t(hh) * d + s.channels[j]];
                        std::fill(ws.buf.begin() + s.dim, ws.buf.begin() + sp, 0.0f);
                        s.rot->forward_unscaled(ws.buf.data(), ws.tmp.data(), k);
                        k.scale(ws.buf.data(), sp, float(1.0 / s.rot->gain()));
                        for (int j = 0; j < s.dim; ++j)
                            for (int e = 0; e < L; ++e) lut[(size_t(hh) * s.dim + j) * L + e] = ws.buf[j] * s.table[e];
                        if (s.prod) {
                            float* sk = lut + size_t(r) * s.dim * L;
                            k.matvec(s.qjl, sp, s.dim, ws.buf.data(), ws.sq.data());
                            for (int j = 0; j < s.dim; ++j)
                                for (int e = 0; e < 16; ++e) sk[(size_t(hh) * s.dim + j) * 16 + e] = (e & 1) ? ws.sq[j] : -ws.sq[j];
                        }
                    }
                    lut += size_t(r) * s.dim * (L + (s.prod ? 16 : 0));
                }
                const auto& s0 = cl.codes->keys().segs[0];
                cl.prepared = cl.may_prepare &&
                              ak.prepare_scores(ws.lut.data() + cl.lut_off, s0.dim, s0.bits, r, ws.prepared.data() + cl.prep_off);
                cl.fast_prepared = cl.fast_keys;  // (false for a table it refuses: the float kernels then)
                if (cl.fast_keys) {
                    float* ft = ws.prepared.data() + cl.fast_off;
                    const float* fl = ws.lut.data() + cl.lut_off;
                    for (const auto& s : cl.codes->keys().segs) {
                        cl.fast_prepared = cl.fast_prepared && ak.fast_prepare_scores(fl, s.dim, s.bits, r, cl.codes->code_scale, ft);
                        ft += fast_table_floats(ak, s, r);
                        fl += size_t(r) * s.dim * s.table.size();
                    }
                }
            }
            std::fill(ws.acc.begin(), ws.acc.begin() + acc_floats, 0.0f);
            std::fill(ws.lc.begin(), ws.lc.begin() + ws.classes.size() * size_t(r), 0.0f);
            for (const AttendClass& cl : ws.classes) {
                const auto& mean = cl.codes->codecs->key_mean;
                for (int hh = 0; hh < r; ++hh)
                    ws.shift[cl.index * r + hh] =
                        add_shift && !mean.empty()
                            ? ak.dot_f32(q0 + size_t(hh) * d, &mean[size_t(kvh) * d], d) * cl.codes->scale
                            : 0.0f;
            }
            const size_t sbase = size_t(kvh) * r;  // this KV head's query heads in the statistics
            if (continue_stats) {
                std::copy_n(&out[qi * qrow + size_t(kvh) * r * d], size_t(r) * d, ws.acc_exact.begin());
                std::copy_n(stat_max + sbase, r, ws.m.begin());
                std::copy_n(stat_sum + sbase, r, ws.l.begin());
            } else {
                std::fill(ws.acc_exact.begin(), ws.acc_exact.begin() + size_t(r) * d, 0.0f);
                std::fill(ws.m.begin(), ws.m.begin() + r, -std::numeric_limits<float>::infinity());
                std::fill(ws.l.begin(), ws.l.begin() + r, 0.0f);
            }

            // Folds one chunk of scores of class cl (r rows of `cols`, row stride score_cols) into the
            // running max and sum, rescaling every class's accumulators when the max grows; leaves
            // exp(s - m) in place.
            auto softmax_chunk = [&](size_t cols, const AttendClass& owner) {
                for (int hh = 0; hh < r; ++hh) {
                    float* s = &ws.scores[size_t(hh) * score_cols];
                    const float cmax = ak.max_f32(s, int(cols));
                    if (cmax > ws.m[hh]) {
                        const float corr = std::exp(ws.m[hh] - cmax);  // 0 on the first chunk
                        ws.l[hh] *= corr;
                        for (const AttendClass& cl : ws.classes) {
                            ws.lc[cl.index * r + hh] *= corr;
                            float* acc = ws.acc.data() + cl.acc_off;
                            for (auto& vs : cl.codes->values().segs) {
                                k.scale(acc + size_t(hh) * vs.dim * 16, vs.dim * 16, corr);
                                acc += size_t(r) * vs.dim * 16;
                            }
                        }
                        for (int j = 0; j < d; ++j) ws.acc_exact[size_t(hh) * d + j] *= corr;
                        ws.m[hh] = cmax;
                    }
                    const float mx = ws.m[hh];
                    for (size_t t = 0; t < cols; ++t) s[t] -= mx;
                    ak.exp_nonpositive(s, int(cols));
                    const float sum = ak.sum_f32(s, int(cols));
                    ws.l[hh] += sum;
                    ws.lc[owner.index * r + hh] += sum;
                }
            };

            size_t logit_base = 0;  // logits: [heads][tokens] of each part, one part after the other
            for (size_t pi = 0; pi < parts.size(); ++pi) {
                const Impl& P = *parts[pi];
                const AttendClass& cl = ws.classes[ws.part_class[pi]];
                const Impl& C = *cl.codes;  // the class's codecs, tables and scale
                const size_t visible = causal ? P.n_tokens - n_q + qi + 1 : P.n_tokens;
                const size_t visible_codes = P.codes_end(visible);  // then exact rows up to visible
                // 2. Compressed tokens, a chunk of groups at a time.
                const size_t n_groups = (visible_codes + kGroupTokens - 1) / kGroupTokens;
                const bool prefetch = n_groups * P.group_bytes > (size_t(4) << 20);
                for (size_t g0 = 0; g0 < n_groups; g0 += kChunkGroups) {
                    const size_t ng = std::min<size_t>(kChunkGroups, n_groups - g0);
                    for (size_t gi = 0; gi < ng; ++gi) {
                        const size_t t0 = (g0 + gi) * kGroupTokens;
                        const uint8_t* g = P.group(kvh, t0);
                        // When a KV head's groups come from DRAM (larger than the L2/L3 share), fetch
                        // the group two chunks ahead into L2 while this one computes: hardware
                        // prefetchers stop at 4 KiB pages (measured with one allocation per block, on
                        // AVX-512 at 64k tokens: 3.0-3.2 ms per query against 3.7-4.0 ms one chunk
                        // ahead; 4 was no better, 16 worse). Groups are contiguous per arena now.
                        if (prefetch && g0 + 2 * kChunkGroups + gi < n_groups) {
                            const uint8_t* next = P.group(kvh, (g0 + 2 * kChunkGroups + gi) * kGroupTokens);
                            for (size_t off = 0; off < P.group_bytes; off += 64) __builtin_prefetch(next + off, 0, 1);
                        }
                        const size_t valid = std::min<size_t>(kGroupTokens, visible_codes - t0);
                        if (cl.fused_keys || cl.fast_prepared) {  // scores * norms * scale straight into the chunk, per segment
                            const float* klut = ws.lut.data() + cl.lut_off;
                            const float* ftab = ws.prepared.data() + cl.fast_off;
                            for (size_t si = 0; si < C.keys().segs.size(); ++si) {
                                const auto& s = C.keys().segs[si];
                                const auto* norms = reinterpret_cast<const uint16_t*>(g + s.norm_off);
                                float* dst = si == 0 ? &ws.scores[gi * kGroupTokens] : ws.raw.data();
                                const int stride = si == 0 ? int(score_cols) : kGroupTokens;
                                if (cl.fast_prepared) {
                                    ak.fast_group_scores(g + s.codes_off, s.dim, s.bits, ftab, r, norms, dst, stride);
                                    ftab += fast_table_floats(ak, s, r);
                                } else if (cl.prepared)
                                    ak.group_scores_prepared(g + s.codes_off, s.dim, s.bits, ws.prepared.data() + cl.prep_off, r,
                                                             norms, C.code_scale, dst, stride);
                                else
                                    ak.group_scores_normed(g + s.codes_off, s.dim, s.bits, klut, r, norms, C.code_scale, dst, stride);
                                if (si > 0)
                                    for (int hh = 0; hh < r; ++hh)
                                        ak.axpy_f32(1.0f, &ws.raw[size_t(hh) * kGroupTokens],
                                                    &ws.scores[size_t(hh) * score_cols + gi * kGroupTokens], kGroupTokens);
                                klut += size_t(r) * s.dim * s.table.size();
                            }
                            for (int hh = 0; hh < r; ++hh)
                                for (size_t t = valid; t < kGroupTokens; ++t)
                                    ws.scores[size_t(hh) * score_cols + gi * kGroupTokens + t] = -std::numeric_limits<float>::infinity();
                            continue;
                        }
                        for (int hh = 0; hh < r; ++hh)
                            std::fill_n(&ws.scores[size_t(hh) * score_cols + gi * kGroupTokens], kGroupTokens, 0.0f);
                        const float* klut = ws.lut.data() + cl.lut_off;
                        for (auto& s : C.keys().segs) {
                            const int L = int(s.table.size());
                            ak.group_scores(g + s.codes_off, s.dim, s.bits, klut, r, ws.raw.data());
                            read_norms(k, g + s.norm_off, C.norm_bytes, ws.norms.data());
                            if (s.prod) {
                                ak.group_scores(g + s.signs_off, s.dim, 1, klut + size_t(r) * s.dim * L, r, ws.raw2.data());
                                read_norms(k, g + s.gamma_off, C.norm_bytes, ws.gammas.data());
                                const float qjl = float(std::sqrt(M_PI / 2.0) / s.dim);
                                for (int t = 0; t < kGroupTokens; ++t) ws.gammas[t] *= qjl;
                            }
                            for (int hh = 0; hh < r; ++hh) {
                                float* sc = &ws.scores[size_t(hh) * score_cols + gi * kGroupTokens];
                                const float* raw = &ws.raw[size_t(hh) * kGroupTokens];
                                const float* raw2 = &ws.raw2[size_t(hh) * kGroupTokens];
                                if (s.prod) {
                                    for (int t = 0; t < kGroupTokens; ++t) sc[t] += ws.norms[t] * (raw[t] + ws.gammas[t] * raw2[t]);
                                } else {
                                    for (int t = 0; t < kGroupTokens; ++t) sc[t] += ws.norms[t] * raw[t];
                                }
                            }
                            klut += size_t(r) * s.dim * (L + (s.prod ? 16 : 0));
                        }
                        for (int hh = 0; hh < r; ++hh) {
                            float* sc = &ws.scores[size_t(hh) * score_cols + gi * kGroupTokens];
                            for (int t = 0; t < kGroupTokens; ++t) sc[t] *= C.code_scale;
                            for (size_t t = valid; t < kGroupTokens; ++t) sc[t] = -std::numeric_limits<float>::infinity();
                        }
                    }
                    for (int hh = 0; hh < r; ++hh)
                        if (const float sh = ws.shift[cl.index * r + hh]; sh != 0.0f)
                            for (size_t t = 0; t < ng * kGroupTokens; ++t) ws.scores[size_t(hh) * score_cols + t] += sh;
                    if (!logits.empty())
                        for (int hh = 0; hh < r; ++hh) {
                            const size_t n_valid = std::min(ng * kGroupTokens, visible_codes - g0 * kGroupTokens);
                            std::copy_n(&ws.scores[size_t(hh) * score_cols], n_valid,
                                        &logits[logit_base + (size_t(kvh) * r + hh) * P.n_tokens + g0 * kGroupTokens]);
                        }
                    softmax_chunk(ng * kGroupTokens, cl);
                    for (size_t gi = 0; gi < ng; ++gi) {
                        const uint8_t* g = P.group(kvh, (g0 + gi) * kGroupTokens);
                        float* acc = ws.acc.data() + cl.acc_off;
                        if (cl.fused_values || cl.fast_values) {
                            for (auto& s : C.values().segs) {
                                const auto* norms = reinterpret_cast<const uint16_t*>(g + s.norm_off);
                                if (cl.fast_values)
                                    ak.fast_group_accumulate(g + s.codes_off, s.dim, s.bits, s.fast_values,
                                                             &ws.scores[gi * kGroupTokens], int(score_cols), norms, r, acc);
                                else
                                    ak.group_accumulate_normed(g + s.codes_off, s.dim, s.bits, s.table.data(),
                                                               &ws.scores[gi * kGroupTokens], int(score_cols), norms, r, acc);
                                acc += size_t(r) * s.dim * 16;
                            }
                            continue;
                        }
                        for (auto& s : C.values().segs) {
                            read_norms(k, g + s.norm_off, C.norm_bytes, ws.norms.data());
                            for (int hh = 0; hh < r; ++hh)
                                for (int t = 0; t < kGroupTokens; ++t)
                                    ws.w[size_t(hh) * kGroupTokens + t] =
                                        ws.scores[size_t(hh) * score_cols + gi * kGroupTokens + t] * ws.norms[t];
                            ak.group_accumulate(g + s.codes_off, s.dim, s.bits, s.table.data(), ws.w.data(), r, acc);
                            acc += size_t(r) * s.dim * 16;
                        }
                    }
                }

                // 3. The exact recent tokens, in the same softmax (their values times the part's
                //    value scale), a chunk at a time.
                for (size_t e0 = visible_codes; e0 < visible; e0 += chunk_tokens) {
                    const size_t ne = std::min(chunk_tokens, visible - e0);
                    for (size_t i = 0; i < ne; ++i) {
                        const float* key = P.exact_key(e0 + i) + size_t(kvh) * d;
                        for (int hh = 0; hh < r; ++hh)
                            ws.scores[size_t(hh) * score_cols + i] =
                                ak.dot_f32(q0 + size_t(hh) * d, key, d) * P.scale + ws.shift[cl.index * r + hh];
                    }
                    if (!logits.empty())
                        for (int hh = 0; hh < r; ++hh)
                            std::copy_n(&ws.scores[size_t(hh) * score_cols], ne,
                                        &logits[logit_base + (size_t(kvh) * r + hh) * P.n_tokens + e0]);
                    softmax_chunk(ne, cl);
                    for (size_t i = 0; i < ne; ++i) {
                        const float* val = P.exact_value(e0 + i) + size_t(kvh) * d;
                        for (int hh = 0; hh < r; ++hh)
                            ak.axpy_f32(ws.scores[size_t(hh) * score_cols + i] * cl.value_scale, val,
                                        &ws.acc_exact[size_t(hh) * d], d);
                    }
                }

                logit_base += size_t(c.heads) * P.n_tokens;
            }

            // 4. Per class, one inverse rotation per head and value segment; then normalize.
            for (int hh = 0; hh < r; ++hh) {
                float* o = &out[qi * qrow + (size_t(kvh) * r + hh) * d];
                // attend(): normalized output. attend_stats(): the unnormalized sum and its statistics.
                const float inv_l = stat_max ? 1.0f : 1.0f / ws.l[hh];
                if (stat_max) {
                    stat_max[sbase + hh] = ws.m[hh];
                    stat_sum[sbase + hh] = ws.l[hh];
                }
                std::fill(o, o + d, 0.0f);
                for (const AttendClass& cl : ws.classes) {
                    const float* acc = ws.acc.data() + cl.acc_off;
                    for (auto& s : cl.codes->values().segs) {
                        const int sp = s.rot->padded_dim();
                        const float* a = acc + size_t(hh) * s.dim * 16;
                        for (int j = 0; j < s.dim; ++j) {
                            float sum = 0;
                            for (int lane = 0; lane < 16; ++lane) sum += a[size_t(j) * 16 + lane];
                            ws.buf[j] = sum;
                        }
                        std::fill(ws.buf.begin() + s.dim, ws.buf.begin() + sp, 0.0f);
                        s.rot->inverse_unscaled(ws.buf.data(), ws.tmp.data(), k);
                        const float f = float(1.0 / s.rot->gain()) * inv_l * cl.value_scale * cl.codes->codecs->value_factor;
                        for (int j = 0; j < s.dim; ++j) o[s.channels[j]] += ws.buf[j] * f;
                        acc += size_t(r) * s.dim * 16;
                    }
                }
                for (int j = 0; j < d; ++j) o[j] += ws.acc_exact[size_t(hh) * d + j] * inv_l;
                // The value means, each with its class's share of the softmax weight.
                for (const AttendClass& cl : ws.classes)
                    if (const auto& mean = cl.codes->codecs->value_mean; !mean.empty())
                        ak.axpy_f32(ws.lc[cl.index * r + hh] * inv_l, &mean[size_t(kvh) * d], o, d);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference path: decode, then exact attention in double precision.

std::vector<float> KVCache::Impl::decode_side(const CacheSide& side, bool is_key, int kv_head) const {
    const int d = cfg.head_dim;
    std::vector<float> out(n_tokens * size_t(d));
    std::vector<uint8_t> enc, codes(d);
    std::vector<float> dec;
    for (auto& s : side.segs) {
        // Rebuild each token's bytes in the codec's own layout and let the codec decode them.
        enc.assign(n_compressed * s.codec_bytes, 0);
        for (size_t t = 0; t < n_compressed; ++t) {
            const uint8_t* g = group(kv_head, t);
            const size_t slot = t % kGroupTokens;
            uint8_t* e = &enc[t * s.codec_bytes];
            std::memcpy(e, g + s.norm_off + slot * norm_bytes, norm_bytes);
            size_t pos = norm_bytes;
            if (s.prod) {
                std::memcpy(e + pos, g + s.gamma_off + slot * norm_bytes, norm_bytes);
                pos += norm_bytes;
            }
            for (int j = 0; j < s.dim; ++j) codes[j] = uint8_t(group_code(g + s.codes_off, s.dim, s.bits, int(slot), j));
            pack_codes(codes.data(), size_t(s.dim), s.bits, e + pos);
            if (s.prod) {
                for (int j = 0; j < s.dim; ++j) codes[j] = uint8_t(group_code(g + s.signs_off, s.dim, 1, int(slot), j));
                pack_codes(codes.data(), size_t(s.dim), 1, e + pos + packed_bytes(size_t(s.dim), s.bits));
            }
        }
        dec.assign(n_compressed * size_t(s.dim), 0.0f);
        if (n_compressed) s.codec->decode_rows(enc.data(), s.codec_bytes, n_compressed, dec.data(), size_t(s.dim));
        for (size_t t = 0; t < n_compressed; ++t)
            for (int j = 0; j < s.dim; ++j) out[t * d + s.channels[j]] = dec[t * s.dim + j];
    }
    for (size_t t = n_compressed; t < n_tokens; ++t)
        std::memcpy(&out[t * d], (is_key ? exact_key(t) : exact_value(t)) + size_t(kv_head) * d, sizeof(float) * d);
    // What attention sees: coded tokens times the debias factor, every token plus the mean.
    const float f = is_key ? codecs->key_factor : codecs->value_factor;
    const std::vector<float>& mean = is_key ? codecs->key_mean : codecs->value_mean;
    for (size_t t = 0; t < n_tokens; ++t)
        for (int j = 0; j < d; ++j) {
            float& x = out[t * d + j];
            if (t < n_compressed) x *= f;
            if (!mean.empty()) x += mean[size_t(kv_head) * d + j];
        }
    return out;
}

std::vector<float> KVCache::decode_keys(int kv_head) const {
    if (kv_head < 0 || kv_head >= impl_->cfg.kv_heads) fail("decode_keys: kv_head out of range");
    return impl_->decode_side(impl_->keys(), true, kv_head);
}

std::vector<float> KVCache::decode_values(int kv_head) const {
    if (kv_head < 0 || kv_head >= impl_->cfg.kv_heads) fail("decode_values: kv_head out of range");
    return impl_->decode_side(impl_->values(), false, kv_head);
}

void KVCache::attend_reference(std::span<const float> queries, std::span<float> out, bool causal) const {
    const Impl& m = *impl_;
    const CacheConfig& c = m.cfg;
    const int d = c.head_dim, r = m.group_size();
    const size_t qrow = size_t(c.heads) * d;
    if (queries.empty() || queries.size() % qrow != 0 || out.size() != queries.size())
        fail("attend_reference: queries/out must be equal positive multiples of heads * head_dim");
    if (m.n_tokens == 0) fail("attend_reference: the cache is empty");
    const size_t n_q = queries.size() / qrow;
    if (causal && n_q > m.n_tokens) fail("attend_reference: more causal queries than tokens");
    std::vector<double> p(m.n_tokens);
    for (int kvh = 0; kvh < c.kv_heads; ++kvh) {
        const std::vector<float> K = decode_keys(kvh), V = decode_values(kvh);
        for (size_t qi = 0; qi < n_q; ++qi) {
            const size_t visible = causal ? m.n_tokens - n_q + qi + 1 : m.n_tokens;
            // Decoded codes before codes_end, exact rows from there (compressed tokens of the last
            // appended chunk too).
            const size_t codes_end = m.codes_end(visible);
            // (exact rows are stored centred: the means come back as in decode_keys/values)
            std::vector<float> xk(static_cast<size_t>(d)), xv(static_cast<size_t>(d));
            auto exact = [&](const float* row, const std::vector<float>& mean, std::vector<float>& buf) {
                for (int j = 0; j < d; ++j) buf[size_t(j)] = row[j] + (mean.empty() ? 0.0f : mean[size_t(kvh) * d + j]);
                return buf.data();
            };
            auto key = [&](size_t t) {
                return t >= codes_end && t < m.n_compressed ? exact(m.exact_key(t) + size_t(kvh) * d, m.codecs->key_mean, xk) : &K[t * d];
            };
            auto value = [&](size_t t) {
                return t >= codes_end && t < m.n_compressed ? exact(m.exact_value(t) + size_t(kvh) * d, m.codecs->value_mean, xv)
                                                            : &V[t * d];
            };
            for (int hh = 0; hh < r; ++hh) {
                const float* q = &queries[qi * qrow + (size_t(kvh) * r + hh) * d];
                double mx = -1e300, sum = 0;
                for (size_t t = 0; t < visible; ++t) {
                    double s = 0;
                    const float* kt = key(t);
                    for (int j = 0; j < d; ++j) s += double(q[j]) * kt[j];
                    p[t] = s * m.scale;
                    mx = std::max(mx, p[t]);
                }
                for (size_t t = 0; t < visible; ++t) sum += (p[t] = std::exp(p[t] - mx));
                float* o = &out[qi * qrow + (size_t(kvh) * r + hh) * d];
                for (int j = 0; j < d; ++j) {
                    double a = 0;
                    for (size_t t = 0; t < visible; ++t) a += p[t] * value(t)[j];
                    o[j] = float(a / sum);
                }
            }
        }
    }
}

}  // namespace tqkv
