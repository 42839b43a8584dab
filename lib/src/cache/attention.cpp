// Attention over a KVCache's codes: attend / attend_stats through attend_impl (the fused path: query
// tables, the kernels of kernels.hpp, online softmax over chunks), and the reference path
// (decode_keys / decode_values, attend_reference: exact attention in double precision).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "cache/impl.hpp"
#include "codec/shared.hpp"
#include "tqkv/packing.hpp"
#include "tqkv/threads.hpp"

namespace tqkv {

using namespace detail;

// ---------------------------------------------------------------------------------------------
// Attention
//
// One call attends each query over the tokens of its parts (one cache, or the caches of
// attend_stats in order). The tokens are cut into work units of kUnitTokens tokens (cut at
// fixed token counts, never by the thread count); each (query, KV head, unit) runs its own online
// softmax into a partial result (running max m, sum l, value accumulators), and the partials of a
// (query, KV head) are merged in unit order before the inverse rotation. Units run on up to
// AttendOptions::threads threads of the library's pool: results are the same bits for any thread
// count.

namespace {

constexpr int kChunkGroups = 8;                // online softmax: one max/rescale per 256 tokens
constexpr size_t kChunkTokens = size_t(kChunkGroups) * kGroupTokens;
constexpr size_t kUnitTokens = 8 * kChunkTokens;  // 2048 tokens per work unit
constexpr size_t kMaxBatchUnits = 64;          // units of a batch of queries (bounds the partials' memory)
constexpr int kMaxLimitHeads = 64;             // skipped values: query heads per KV head it handles

// A set of parts with the same codes within one attention call (see attend_impl): one query
// rotation, one set of look-up tables, one set of value accumulators.
struct AttendClass {
    const KVCache::Impl* codes = nullptr;  // the first part of the class
    float value_scale = 1;
    size_t lut_off = 0, acc_off = 0, prep_off = 0;  // floats into Workspace::lut / Partial acc / Workspace::prepared
    size_t index = 0;                                // this class's rows of a partial's lc and Workspace::shift
    bool fused_keys = false, fused_values = false, may_prepare = false;
    // precision = fast: integer key tables of every key segment at Workspace::prepared + fast_off
    // (fast_keys: wanted; Workspace::fast_ok: built for this query), int8 / int16 values (fast_values).
    size_t fast_off = 0;
    bool fast_keys = false, fast_values = false;
    // Accumulator floats per value coordinate: 16 lanes for the float kernels, one for the fast
    // ones (their integer sums become one float per coordinate and chunk).
    int acc_lanes = 16;
};

// Tokens [t0, t1) of one part: codes (t0 a multiple of 32) or exact rows. The first `lead` tokens
// are not seen (the attention window starts inside the first group): masked like those past t1.
// (24 bytes, as before the window: a workspace filled by an earlier call is not outgrown.)
struct Span {
    uint32_t part = 0;
    bool exact = false;
    uint8_t lead = 0;
    size_t t0 = 0, t1 = 0;
};

// A unit: spans [span0, span1) of query qi's span list, for one KV head.
struct Unit {
    uint32_t qi = 0, kvh = 0, span0 = 0, span1 = 0;
    uint32_t head = 0;  // the (query, KV head) of the batch it belongs to: index into first_unit / floor
};

// What every thread of a call reads: the classes and the units of the current batch of queries.
struct CallPlan {
    std::vector<AttendClass> classes;
    std::vector<uint32_t> part_class;
    std::vector<size_t> logit_base;  // per part: where its logits start
    size_t lut_floats = 0, acc_floats = 0, prep_floats = 0;
    // One unit's partial: m [r], l [r], lc [classes][r], acc [acc_floats], acc_exact [r][d]. lc: each
    // class's share of l (its value mean is added back with that weight).
    size_t partial_floats = 0;
    std::vector<Span> spans;
    std::vector<Unit> units;
    std::vector<uint32_t> first_unit;  // per (query of the batch, KV head): its first unit; then the end
    std::vector<float> partials;       // units x partial_floats
    std::vector<uint64_t> unit_groups, unit_skipped;  // per unit: value groups due / skipped
    // Skipped values: the anchor units (the first of each (query, KV head)) run first; their max and
    // sum per query head ([head][r]) is the floor the other units compare with.
    std::vector<uint32_t> anchors, others;
    std::vector<float> floor_m, floor_l;
    uint64_t id = 0;                   // tells the look-up tables of one call from the next
};

// Per-thread buffers: grown on first use, then reused (no allocation per call).
struct Workspace {
    std::vector<float> lut, scores, raw, raw2, w, buf, tmp, sq, norms, gammas;
    std::vector<float> qrot;         // the rotated queries of the key segments (build_tables)
    std::vector<float> prepared;     // the key tables in the kernel's own format (prepare_scores)
    std::vector<char> prepared_ok;   // per class: prepared holds its tables
    std::vector<char> fast_ok;       // per class: prepared holds its fast key tables (precision fast)
    std::vector<float> shift;        // per class and query head: the logit shift scale * q.key_mean (CacheConfig)
    uint64_t lut_call = 0;           // the tables in lut/prepared are for this call, query and KV head
    size_t lut_query = 0;
    uint32_t lut_kvh = 0;
    static void grow(std::vector<float>& v, size_t n) {
        if (v.size() < n) v.resize(n);
    }
};

Workspace& workspace() {
    thread_local Workspace ws;
    return ws;
}

std::atomic<uint64_t> g_call_id{0};

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

void check_options(const AttendOptions& o) {
    if (o.threads < 1 || o.threads > kMaxThreads)
        fail("attend: threads " + std::to_string(o.threads) + " out of range [1, " + std::to_string(kMaxThreads) + "]");
    if (!(o.skip_values >= 0 && o.skip_values < 1))
        fail("attend: skip_values " + std::to_string(o.skip_values) + " out of range [0, 1)");
}

}  // namespace

void KVCache::attend(std::span<const float> queries, std::span<float> out, bool causal, const AttendOptions& options) const {
    const Impl* self = impl_.get();
    attend_impl(std::span(&self, 1), {}, queries, out, causal, nullptr, nullptr, {}, false, options);
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
                           std::span<float> sum_exp, std::span<float> logits, const AttendOptions& options) const {
    const CacheConfig& c = impl_->cfg;
    check_stats_sizes(c, query.size(), acc.size(), max_logit.size(), sum_exp.size());
    if (!logits.empty() && logits.size() != size_t(c.heads) * impl_->n_tokens)
        fail("attend_stats: logits need heads * tokens() floats (or none)");
    if (impl_->n_tokens == 0) fail("attend: the cache is empty");
    if (impl_->cfg.attention_window) fail("attend_stats: not with an attention window (attend honours it)");
    const Impl* self = impl_.get();
    attend_impl(std::span(&self, 1), {}, query, acc, false, max_logit.data(), sum_exp.data(), logits, false, options);
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
                           std::span<const float> value_scales, bool continue_stats, const AttendOptions& options) {
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
        if (a.attention_window) fail("attend_stats: not with an attention window (attend honours it)");
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
    attend_impl(parts, scales, query, acc, false, max_logit.data(), sum_exp.data(), logits, continue_stats, options);
}

// Attention of the queries over the tokens of `parts` in order, as one cache, in one softmax
// (several parts only for attend_stats: one query, not causal). Parts with the same codes (shared
// codecs and scale: the segments of one tier of a budgeted cache) form a class that has one query
// rotation, one set of look-up tables and one set of value accumulators; each part is scored and
// accumulated with its own class's kernels and bit widths. value_scales: one factor per part on
// its values (empty: 1). continue_stats: out / stat_max / stat_sum hold on entry the statistics of
// tokens attended elsewhere (acc unnormalized), which the softmax starts from.
//
// Skipped values (options.skip_values = ε > 0). Units compare with a floor: the first unit of a
// (query, KV head) runs first (it holds the early tokens, where attention sinks are), and its max
// m_f and sum l_f are known to the other units. Within a unit, after a chunk of scores is folded
// into the unit's running max m and sum l (l includes the chunk), the values of a 32-token group
// are neither decoded nor accumulated when every weight w_t = exp(s_t - m) in it, for every query
// head of the KV head, is below ε (l + F), F = l_f exp(m_f - m) for the other units and 0 for the
// first; its weights stay in l, so the denominator is exact.
// The bound. Write Σ_X = sum_{t in X} e^{s_t} for a set of tokens X, and Σ for all tokens the
// final softmax sees (every unit, and the statistics continued from); p_t = e^{s_t} / Σ.
// At the test, l e^m = Σ over the tokens of unit u seen so far <= Σ_u, and l_f e^{m_f} = Σ_f (the
// first unit is finished). So a skipped token has
//     e^{s_t} = w_t e^m < ε (l e^m + F e^m) <= ε (Σ_u + Σ_f) <= ε Σ    (u != f: disjoint tokens;
//                                                                       u == f: F = 0),
// i.e. its final weight p_t < ε: whatever the thread count, unit size or floor. The output is
// sum_t p_t v_t (v_t: the decoded, debiased, value-scaled value; the value means and the exact
// rows are never skipped), so dropping the skipped tokens S moves it, per channel, by
//     |Δout_j| = |sum_{t in S} p_t v_tj| < ε |S| max_{t in S} |v_tj| <= ε n max_t |v_tj|,
// n the tokens attended (|S| = 32 x the skipped groups, counted in options.counters); up to the
// float rounding of l and exp (relative ~1e-6). attend_stats' unnormalized acc moves by Σ-scaled
// the same. Without the floor the middle units of a long context could not skip at all (on
// their own, their largest weight is 1 however small it is in the whole softmax).
void KVCache::attend_impl(std::span<const Impl* const> parts, std::span<const float> value_scales,
                          std::span<const float> queries, std::span<float> out, bool causal, float* stat_max,
                          float* stat_sum, std::span<float> logits, bool continue_stats, const AttendOptions& options) {
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
    check_options(options);
    // The attention window: the first query (the others see later tokens) must not need a
    // dropped token (only one part here: attend_stats refuses windows).
    if (const size_t first = m.visible_start(causal ? m.n_tokens - n_q + 1 : m.n_tokens); first < m.dropped)
        fail("attend: the query at position " + std::to_string(m.n_tokens - n_q) + " sees tokens from " + std::to_string(first) +
             " on, but tokens before " + std::to_string(m.dropped) + " left the attention window of " +
             std::to_string(c.attention_window) + " tokens and were dropped (attend the queries of the last appended chunk or later)");

    const AttentionKernels& ak = *m.ak;  // the same kernel tables for every part (checked by the callers)
    const KernelTable& k = *m.k;
    const float eps = options.skip_values;
    const size_t score_cols = kChunkTokens;
    // The caller's plan (thread-local: a call from a worker thread, e.g. nested in a parallel
    // benchmark, has its own); the call's threads only read it.
    thread_local CallPlan plan_storage;
    CallPlan& plan = plan_storage;
    plan.id = ++g_call_id;

    // The classes, their tables and accumulators laid out one after the other. The fused kernels
    // cover the common layouts: fp16 norms (stored little-endian, and every supported target is
    // little-endian), MSE keys, one segment or the two of a fractional rate (one fused call per
    // segment, the second added to the first).
    plan.classes.clear();
    plan.part_class.resize(parts.size());
    plan.logit_base.resize(parts.size());
    for (size_t p = 0, base = 0; p < parts.size(); base += size_t(c.heads) * parts[p]->n_tokens, ++p) plan.logit_base[p] = base;
    size_t lut_floats = 0, acc_floats = 0, prep_floats = 0;
    for (size_t p = 0; p < parts.size(); ++p) {
        const Impl& P = *parts[p];
        const float vs = value_scales.empty() ? 1.0f : value_scales[p];
        size_t ci = 0;
        while (ci < plan.classes.size() &&
               !(plan.classes[ci].codes->codecs == P.codecs && plan.classes[ci].codes->scale == P.scale &&
                 plan.classes[ci].value_scale == vs && plan.classes[ci].codes->cfg.precision == P.cfg.precision))
            ++ci;
        plan.part_class[p] = uint32_t(ci);
        if (ci < plan.classes.size()) continue;
        AttendClass cl;
        cl.codes = &P;
        cl.value_scale = vs;
        cl.index = plan.classes.size();
        cl.lut_off = lut_floats, cl.acc_off = acc_floats, cl.prep_off = prep_floats;
        for (auto& s : P.keys().segs) lut_floats += size_t(r) * s.dim * (s.table.size() + (s.prod ? 16 : 0));
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
        cl.fast_values = fast && f16 && small_values && ak.fast_chunk_accumulate;
        cl.acc_lanes = cl.fast_values ? 1 : 16;
        for (auto& s : P.values().segs) acc_floats += size_t(r) * s.dim * cl.acc_lanes;
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
        plan.classes.push_back(cl);
    }
    plan.lut_floats = lut_floats, plan.acc_floats = acc_floats, plan.prep_floats = prep_floats;
    // Partials: m and l [r], lc [classes][r], the class accumulators, then the exact tokens'
    // accumulator [r][d].
    const size_t n_classes = plan.classes.size();
    const size_t off_l = size_t(r), off_lc = 2 * size_t(r), off_acc = off_lc + n_classes * r, off_exact = off_acc + acc_floats;
    plan.partial_floats = (off_exact + size_t(r) * d + 15) / 16 * 16;
    // Centred keys shift every logit of a query by scale * q.key_mean, which one softmax over one
    // cache ignores; statistics, logits and several caches in one softmax need it added back.
    const bool add_shift = stat_max || !logits.empty() || parts.size() > 1;

    // Builds the look-up tables of query qi and KV head kvh for every class in this thread's
    // workspace (unless they are there already): rotate each query once per key segment, then the
    // fast integer tables from q' (precision fast) or the float ones, lut[j][code] =
    // q'_j * centroid[code]; for prod also the sketch table of S q'.
    auto build_tables = [&](Workspace& ws, size_t qi, uint32_t kvh) {
        if (ws.lut_call == plan.id && ws.lut_query == qi && ws.lut_kvh == kvh) return;
        const int padded = pad_lanes(d);
        Workspace::grow(ws.lut, plan.lut_floats);
        Workspace::grow(ws.prepared, plan.prep_floats + 1);
        Workspace::grow(ws.buf, padded);
        Workspace::grow(ws.tmp, padded);
        Workspace::grow(ws.sq, padded);
        Workspace::grow(ws.qrot, size_t(r) * d);
        ws.prepared_ok.resize(plan.classes.size());
        ws.fast_ok.resize(plan.classes.size());
        Workspace::grow(ws.shift, plan.classes.size() * r);
        const float* q0 = &queries[qi * qrow + size_t(kvh) * r * d];  // the r query heads of this KV head
        for (size_t ci = 0; ci < plan.classes.size(); ++ci) {
            const AttendClass& cl = plan.classes[ci];
            const auto& mean = cl.codes->codecs->key_mean;
            for (int hh = 0; hh < r; ++hh)
                ws.shift[ci * r + hh] =
                    add_shift && !mean.empty() ? ak.dot_f32(q0 + size_t(hh) * d, &mean[size_t(kvh) * d], d) * cl.codes->scale : 0.0f;
            // Each key segment's rotated queries q' (r rows of s.dim in ws.qrot, one segment after
            // the other), for prod also the sketch table of S q'; then the fast tables, which the
            // kernel builds from q' and the centroids, or else the float tables
            // lut[j][code] = q'_j * centroid[code].
            float* qrot = ws.qrot.data();
            float* lut = ws.lut.data() + cl.lut_off;
            for (auto& s : cl.codes->keys().segs) {
                const int sp = s.rot->padded_dim(), L = int(s.table.size());
                for (int hh = 0; hh < r; ++hh, qrot += s.dim) {
                    for (int j = 0; j < s.dim; ++j) ws.buf[j] = q0[size_t(hh) * d + s.channels[j]];
                    std::fill(ws.buf.begin() + s.dim, ws.buf.begin() + sp, 0.0f);
                    s.rot->forward_unscaled(ws.buf.data(), ws.tmp.data(), k);
                    k.scale(ws.buf.data(), sp, float(1.0 / s.rot->gain()));
                    std::copy_n(ws.buf.data(), s.dim, qrot);
                    if (s.prod) {  // (never fast)
                        float* sk = lut + size_t(r) * s.dim * L;
                        k.matvec(s.qjl, sp, s.dim, ws.buf.data(), ws.sq.data());
                        for (int j = 0; j < s.dim; ++j)
                            for (int e = 0; e < 16; ++e) sk[(size_t(hh) * s.dim + j) * 16 + e] = (e & 1) ? ws.sq[j] : -ws.sq[j];
                    }
                }
                lut += size_t(r) * s.dim * (L + (s.prod ? 16 : 0));
            }
            bool fast_ok = cl.fast_keys;  // (false for a table the kernel refuses: the float kernels then)
            if (cl.fast_keys) {
                float* ft = ws.prepared.data() + cl.fast_off;
                const float* q = ws.qrot.data();
                for (const auto& s : cl.codes->keys().segs) {
                    fast_ok = fast_ok && ak.fast_prepare_scores(q, s.table.data(), s.dim, s.bits, r, cl.codes->code_scale, ft);
                    ft += fast_table_floats(ak, s, r);
                    q += size_t(r) * s.dim;
                }
            }
            if (!fast_ok) {
                float* lut = ws.lut.data() + cl.lut_off;
                const float* q = ws.qrot.data();
                for (auto& s : cl.codes->keys().segs) {
                    const int L = int(s.table.size());
                    for (int hh = 0; hh < r; ++hh, q += s.dim)
                        for (int j = 0; j < s.dim; ++j)
                            for (int e = 0; e < L; ++e) lut[(size_t(hh) * s.dim + j) * L + e] = q[j] * s.table[e];
                    lut += size_t(r) * s.dim * (L + (s.prod ? 16 : 0));
                }
            }
            const auto& s0 = cl.codes->keys().segs[0];
            ws.prepared_ok[ci] = cl.may_prepare &&
                                 ak.prepare_scores(ws.lut.data() + cl.lut_off, s0.dim, s0.bits, r, ws.prepared.data() + cl.prep_off);
            ws.fast_ok[ci] = fast_ok;
        }
        ws.lut_call = plan.id, ws.lut_query = qi, ws.lut_kvh = kvh;
    };

    // One unit: its spans in one online softmax into its partial.
    auto run_unit = [&](size_t u, bool use_floor) {
        const Unit& unit = plan.units[u];
        const size_t qi = unit.qi;
        const uint32_t kvh = unit.kvh;
        Workspace& ws = workspace();
        build_tables(ws, qi, kvh);
        Workspace::grow(ws.scores, size_t(r) * score_cols);
        Workspace::grow(ws.raw, size_t(r) * kGroupTokens);
        Workspace::grow(ws.raw2, size_t(r) * kGroupTokens);
        Workspace::grow(ws.w, size_t(r) * kGroupTokens);
        Workspace::grow(ws.norms, kGroupTokens);
        Workspace::grow(ws.gammas, kGroupTokens);
        const float* q0 = &queries[qi * qrow + size_t(kvh) * r * d];
        float* part = &plan.partials[u * plan.partial_floats];
        float* pm = part;
        float* pl = part + off_l;
        float* plc = part + off_lc;
        float* pacc = part + off_acc;
        float* pexact = part + off_exact;
        std::fill(pm, pm + r, -std::numeric_limits<float>::infinity());
        std::fill(pl, pl + n_classes * r + plan.acc_floats + size_t(r) * d + r, 0.0f);  // l, lc, acc, acc_exact
        uint64_t groups = 0, skipped = 0;

        // Folds one chunk of scores of class `owner` (r rows of `cols`, row stride score_cols) into
        // the running max and sum, rescaling every class's accumulators when the max grows; leaves
        // exp(s - m) in place.
        auto softmax_chunk = [&](size_t cols, const AttendClass& owner) {
            for (int hh = 0; hh < r; ++hh) {
                float* s = &ws.scores[size_t(hh) * score_cols];
                const float cmax = ak.max_f32(s, int(cols));
                if (cmax > pm[hh]) {
                    const float corr = std::exp(pm[hh] - cmax);  // 0 on the first chunk
                    pl[hh] *= corr;
                    for (const AttendClass& cl : plan.classes) {
                        plc[cl.index * r + hh] *= corr;
                        float* acc = pacc + cl.acc_off;
                        for (auto& vs : cl.codes->values().segs) {
                            const size_t n = size_t(vs.dim) * cl.acc_lanes;
                            k.scale(acc + hh * n, int(n), corr);
                            acc += r * n;
                        }
                    }
                    for (int j = 0; j < d; ++j) pexact[size_t(hh) * d + j] *= corr;
                    pm[hh] = cmax;
                }
                const float sum = ak.exp_sum(s, int(cols), pm[hh]);
                pl[hh] += sum;
                plc[owner.index * r + hh] += sum;
            }
        };

        // logits: [heads][tokens] of each part, one part after the other.
        auto logit_row = [&](const Span& sp, int hh) {
            return &logits[plan.logit_base[sp.part] + (size_t(kvh) * r + hh) * parts[sp.part]->n_tokens];
        };

        for (uint32_t si = unit.span0; si < unit.span1; ++si) {
            const Span& sp = plan.spans[si];
            const Impl& P = *parts[sp.part];
            const AttendClass& cl = plan.classes[plan.part_class[sp.part]];
            const Impl& C = *cl.codes;  // the class's codecs, tables and scale
            const size_t ci = plan.part_class[sp.part];
            if (sp.exact) {
                // The exact recent tokens, in the same softmax (their values times the part's
                // value scale), a chunk at a time.
                for (size_t e0 = sp.t0; e0 < sp.t1; e0 += kChunkTokens) {
                    const size_t ne = std::min(kChunkTokens, sp.t1 - e0);
                    for (size_t i = 0; i < ne; ++i) {
                        const float* key = P.exact_key(e0 + i) + size_t(kvh) * d;
                        for (int hh = 0; hh < r; ++hh)
                            ws.scores[size_t(hh) * score_cols + i] =
                                ak.dot_f32(q0 + size_t(hh) * d, key, d) * P.scale + ws.shift[ci * r + hh];
                    }
                    if (!logits.empty())
                        for (int hh = 0; hh < r; ++hh) std::copy_n(&ws.scores[size_t(hh) * score_cols], ne, logit_row(sp, hh) + e0);
                    softmax_chunk(ne, cl);
                    for (size_t i = 0; i < ne; ++i) {
                        const float* val = P.exact_value(e0 + i) + size_t(kvh) * d;
                        for (int hh = 0; hh < r; ++hh)
                            ak.axpy_f32(ws.scores[size_t(hh) * score_cols + i] * cl.value_scale, val, &pexact[size_t(hh) * d], d);
                    }
                }
                continue;
            }
            // Compressed tokens, a chunk of groups at a time.
            const size_t n_groups = (sp.t1 - sp.t0 + kGroupTokens - 1) / kGroupTokens;
            const bool prefetch = P.n_compressed * P.group_bytes / kGroupTokens > (size_t(4) << 20);
            for (size_t g0 = 0; g0 < n_groups; g0 += kChunkGroups) {
                const size_t ng = std::min<size_t>(kChunkGroups, n_groups - g0);
                const uint8_t* chunk_groups[kChunkGroups];
                const size_t chunk_t0 = sp.t0 + g0 * kGroupTokens;
                P.groups(int(kvh), chunk_t0, ng, chunk_groups);
                // When a KV head's groups come from DRAM (larger than the L2/L3 share), fetch the
                // groups two chunks ahead into L2 while this one computes: hardware prefetchers stop
                // at 4 KiB pages (measured with one allocation per block, on AVX-512 at 64k tokens:
                // 3.0-3.2 ms per query against 3.7-4.0 ms one chunk ahead; 4 was no better, 16
                // worse). Groups are contiguous per arena now.
                if (prefetch)
                    for (size_t gi = 0; gi < ng && g0 + 2 * kChunkGroups + gi < n_groups; ++gi) {
                        const uint8_t* next = P.group(kvh, chunk_t0 + gi * kGroupTokens + 2 * kChunkTokens);
                        for (size_t off = 0; off < P.group_bytes; off += 64) __builtin_prefetch(next + off, 0, 1);
                    }
                if (ws.fast_ok[ci]) {
                    // The fast tables: one call per key segment for the whole chunk, the second
                    // segment's scores added to the first's.
                    const uint8_t* codes[kChunkGroups];
                    const uint16_t* norms[kChunkGroups];
                    const float* ftab = ws.prepared.data() + cl.fast_off;
                    for (size_t si2 = 0; si2 < C.keys().segs.size(); ++si2) {
                        const auto& s = C.keys().segs[si2];
                        for (size_t gi = 0; gi < ng; ++gi) {
                            codes[gi] = chunk_groups[gi] + s.codes_off;
                            norms[gi] = reinterpret_cast<const uint16_t*>(chunk_groups[gi] + s.norm_off);
                        }
                        ak.fast_chunk_scores(codes, norms, int(ng), s.dim, s.bits, ftab, r, ws.scores.data(), int(score_cols), si2 > 0);
                        ftab += fast_table_floats(ak, s, r);
                    }
                } else {
                    for (size_t gi = 0; gi < ng; ++gi) {
                        const uint8_t* g = chunk_groups[gi];
                        if (cl.fused_keys) {  // scores * norms * scale straight into the chunk, per segment
                            const float* klut = ws.lut.data() + cl.lut_off;
                            for (size_t si2 = 0; si2 < C.keys().segs.size(); ++si2) {
                                const auto& s = C.keys().segs[si2];
                                const auto* norms = reinterpret_cast<const uint16_t*>(g + s.norm_off);
                                float* dst = si2 == 0 ? &ws.scores[gi * kGroupTokens] : ws.raw.data();
                                const int stride = si2 == 0 ? int(score_cols) : kGroupTokens;
                                if (ws.prepared_ok[ci])
                                    ak.group_scores_prepared(g + s.codes_off, s.dim, s.bits, ws.prepared.data() + cl.prep_off, r,
                                                             norms, C.code_scale, dst, stride);
                                else
                                    ak.group_scores_normed(g + s.codes_off, s.dim, s.bits, klut, r, norms, C.code_scale, dst, stride);
                                if (si2 > 0)
                                    for (int hh = 0; hh < r; ++hh)
                                        ak.axpy_f32(1.0f, &ws.raw[size_t(hh) * kGroupTokens],
                                                    &ws.scores[size_t(hh) * score_cols + gi * kGroupTokens], kGroupTokens);
                                klut += size_t(r) * s.dim * s.table.size();
                            }
                            continue;
                        }
                        for (int hh = 0; hh < r; ++hh) std::fill_n(&ws.scores[size_t(hh) * score_cols + gi * kGroupTokens], kGroupTokens, 0.0f);
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
                        }
                    }
                }
                // Tokens outside the span: before the attention window in its first group, past its
                // end in its last.
                const size_t lead = g0 == 0 ? sp.lead : 0, valid = std::min(ng * kGroupTokens, sp.t1 - chunk_t0);
                for (int hh = 0; hh < r; ++hh) {
                    float* sc = &ws.scores[size_t(hh) * score_cols];
                    std::fill(sc, sc + lead, -std::numeric_limits<float>::infinity());
                    std::fill(sc + valid, sc + ng * kGroupTokens, -std::numeric_limits<float>::infinity());
                }
                for (int hh = 0; hh < r; ++hh)
                    if (const float sh = ws.shift[ci * r + hh]; sh != 0.0f)
                        for (size_t t = 0; t < ng * kGroupTokens; ++t) ws.scores[size_t(hh) * score_cols + t] += sh;
                if (!logits.empty())
                    for (int hh = 0; hh < r; ++hh)
                        std::copy_n(&ws.scores[size_t(hh) * score_cols], std::min(ng * kGroupTokens, sp.t1 - chunk_t0),
                                    logit_row(sp, hh) + chunk_t0);
                softmax_chunk(ng * kGroupTokens, cl);
                // Skipped values (see above): the threshold relative to this unit's max, ε (l + the
                // floor's sum at this max).
                float limit[kMaxLimitHeads];
                const bool skipping = eps > 0 && r <= kMaxLimitHeads;
                if (skipping)
                    for (int hh = 0; hh < r; ++hh) {
                        const float fm = use_floor ? plan.floor_m[size_t(unit.head) * r + hh] : -std::numeric_limits<float>::infinity();
                        const float fl = use_floor ? plan.floor_l[size_t(unit.head) * r + hh] : 0.0f;
                        limit[hh] = eps * (pl[hh] + (fl > 0 ? fl * std::exp(fm - pm[hh]) : 0.0f));
                    }
                // The groups whose values count (the fast path takes them all in one call).
                size_t kept[kChunkGroups], nk = 0;
                for (size_t gi = 0; gi < ng; ++gi) {
                    ++groups;
                    if (skipping) {
                        bool small = true;
                        for (int hh = 0; hh < r && small; ++hh)
                            small = ak.max_f32(&ws.scores[size_t(hh) * score_cols + gi * kGroupTokens], kGroupTokens) < limit[hh];
                        if (small) {
                            ++skipped;
                            continue;
                        }
                    }
                    kept[nk++] = gi;
                }
                if (cl.fast_values && nk > 0) {
                    const uint8_t* codes[kChunkGroups];
                    const uint16_t* norms[kChunkGroups];
                    const float* p[kChunkGroups];
                    float* acc = pacc + cl.acc_off;
                    for (auto& s : C.values().segs) {
                        for (size_t i = 0; i < nk; ++i) {
                            const uint8_t* g = chunk_groups[kept[i]];
                            codes[i] = g + s.codes_off;
                            norms[i] = reinterpret_cast<const uint16_t*>(g + s.norm_off);
                            p[i] = &ws.scores[kept[i] * kGroupTokens];
                        }
                        ak.fast_chunk_accumulate(codes, norms, p, int(nk), int(score_cols), s.dim, s.bits, s.fast_values, r, acc);
                        acc += size_t(r) * s.dim * cl.acc_lanes;
                    }
                    continue;
                }
                for (size_t i = 0; i < nk; ++i) {
                    const size_t gi = kept[i];
                    const uint8_t* g = chunk_groups[gi];
                    float* acc = pacc + cl.acc_off;
                    if (cl.fused_values) {
                        for (auto& s : C.values().segs) {
                            const auto* norms = reinterpret_cast<const uint16_t*>(g + s.norm_off);
                            ak.group_accumulate_normed(g + s.codes_off, s.dim, s.bits, s.table.data(), &ws.scores[gi * kGroupTokens],
                                                       int(score_cols), norms, r, acc);
                            acc += size_t(r) * s.dim * 16;
                        }
                        continue;
                    }
                    for (auto& s : C.values().segs) {
                        read_norms(k, g + s.norm_off, C.norm_bytes, ws.norms.data());
                        for (int hh = 0; hh < r; ++hh)
                            for (int t = 0; t < kGroupTokens; ++t)
                                ws.w[size_t(hh) * kGroupTokens + t] = ws.scores[size_t(hh) * score_cols + gi * kGroupTokens + t] * ws.norms[t];
                        ak.group_accumulate(g + s.codes_off, s.dim, s.bits, s.table.data(), ws.w.data(), r, acc);
                        acc += size_t(r) * s.dim * 16;
                    }
                }
            }
        }
        plan.unit_groups[u] = groups;
        plan.unit_skipped[u] = skipped;
    };

    // Merges the partials of (query qi, KV head kvh) — units [u0, u1) — in unit order into the
    // first one, then per class one inverse rotation per head and value segment, and normalizes.
    auto finish = [&](size_t qi, uint32_t kvh, size_t u0, size_t u1) {
        Workspace& ws = workspace();
        const int padded = pad_lanes(d);
        Workspace::grow(ws.buf, padded);
        Workspace::grow(ws.tmp, padded);
        float* first = &plan.partials[u0 * plan.partial_floats];
        float* pm = first;
        float* pl = first + off_l;
        float* plc = first + off_lc;
        float* pacc = first + off_acc;
        float* pexact = first + off_exact;
        const size_t sbase = size_t(kvh) * r;  // this KV head's query heads in the statistics
        float* o_all = &out[qi * qrow + size_t(kvh) * r * d];
        for (int hh = 0; hh < r; ++hh) {
            // The largest max over the units (and the statistics continued from).
            float M = pm[hh];
            for (size_t u = u0 + 1; u < u1; ++u) M = std::max(M, plan.partials[u * plan.partial_floats + hh]);
            if (continue_stats) M = std::max(M, stat_max[sbase + hh]);
            auto factor = [&](float mu) { return mu == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(mu - M); };
            const float f0 = factor(pm[hh]);
            float l = pl[hh] * f0;
            for (const AttendClass& cl : plan.classes) {
                plc[cl.index * r + hh] *= f0;
                float* acc = pacc + cl.acc_off;
                for (auto& vs : cl.codes->values().segs) {
                    const size_t n = size_t(vs.dim) * cl.acc_lanes;
                    if (f0 != 1.0f) k.scale(acc + hh * n, int(n), f0);
                    acc += r * n;
                }
            }
            float* ex = pexact + size_t(hh) * d;
            if (f0 != 1.0f)
                for (int j = 0; j < d; ++j) ex[j] *= f0;
            for (size_t u = u0 + 1; u < u1; ++u) {
                const float* part = &plan.partials[u * plan.partial_floats];
                const float f = factor(part[hh]);
                if (f == 0.0f) continue;
                l += part[off_l + hh] * f;
                for (const AttendClass& cl : plan.classes) {
                    plc[cl.index * r + hh] += part[off_lc + cl.index * r + hh] * f;
                    float* acc = pacc + cl.acc_off;
                    const float* src = part + off_acc + cl.acc_off;
                    for (auto& vs : cl.codes->values().segs) {
                        const size_t n = size_t(vs.dim) * cl.acc_lanes;
                        ak.axpy_f32(f, src + hh * n, acc + hh * n, int(n));
                        acc += r * n;
                        src += r * n;
                    }
                }
                ak.axpy_f32(f, part + off_exact + size_t(hh) * d, ex, d);
            }
            float* o = o_all + size_t(hh) * d;
            if (continue_stats) {  // the statistics of tokens attended elsewhere (acc in out, unnormalized)
                const float f = factor(stat_max[sbase + hh]);
                l += stat_sum[sbase + hh] * f;
                for (int j = 0; j < d; ++j) ex[j] += o[j] * f;
            }
            // attend(): normalized output. attend_stats(): the unnormalized sum and its statistics.
            const float inv_l = stat_max ? 1.0f : 1.0f / l;
            if (stat_max) {
                stat_max[sbase + hh] = M;
                stat_sum[sbase + hh] = l;
            }
            std::fill(o, o + d, 0.0f);
            for (const AttendClass& cl : plan.classes) {
                const float* acc = pacc + cl.acc_off;
                for (auto& s : cl.codes->values().segs) {
                    const int sp = s.rot->padded_dim();
                    const int lanes = cl.acc_lanes;
                    const float* a = acc + size_t(hh) * s.dim * lanes;
                    for (int j = 0; j < s.dim; ++j) {
                        float sum = 0;
                        for (int lane = 0; lane < lanes; ++lane) sum += a[size_t(j) * lanes + lane];
                        ws.buf[j] = sum;
                    }
                    std::fill(ws.buf.begin() + s.dim, ws.buf.begin() + sp, 0.0f);
                    s.rot->inverse_unscaled(ws.buf.data(), ws.tmp.data(), k);
                    const float f = float(1.0 / s.rot->gain()) * inv_l * cl.value_scale * cl.codes->codecs->value_factor;
                    for (int j = 0; j < s.dim; ++j) o[s.channels[j]] += ws.buf[j] * f;
                    acc += size_t(r) * s.dim * lanes;
                }
            }
            for (int j = 0; j < d; ++j) o[j] += ex[j] * inv_l;
            // The value means, each with its class's share of the softmax weight.
            for (const AttendClass& cl : plan.classes)
                if (const auto& mean = cl.codes->codecs->value_mean; !mean.empty())
                    ak.axpy_f32(plc[cl.index * r + hh] * inv_l, &mean[size_t(kvh) * d], o, d);
        }
    };

    // Batches of queries: per query its spans (the same for every KV head), cut into units of
    // kUnitTokens tokens counted over the parts in order; every unit of the batch in one parallel
    // call, then the merges.
    uint64_t total_groups = 0, total_skipped = 0;
    thread_local std::vector<uint32_t> unit_starts;
    for (size_t qb = 0; qb < n_q;) {
        plan.spans.clear();
        plan.units.clear();
        plan.first_unit.clear();
        size_t qe = qb;
        while (qe < n_q && (qe == qb || plan.units.size() < kMaxBatchUnits)) {
            // Spans of this query, cut at unit boundaries; unit_starts: the span each unit starts at.
            const uint32_t span_begin = uint32_t(plan.spans.size());
            size_t unit_fill = 0;  // tokens in the unit being cut
            unit_starts.clear();
            unit_starts.push_back(span_begin);
            auto add = [&](uint32_t part, bool exact, size_t t0, size_t t1, size_t lead) {
                while (t0 < t1) {
                    const size_t take = std::min(t1 - t0, kUnitTokens - unit_fill);
                    plan.spans.push_back(Span{part, exact, uint8_t(lead), t0, t0 + take});
                    lead = 0;  // (only the first piece starts before the window)
                    t0 += take;
                    unit_fill += take;
                    if (unit_fill == kUnitTokens) {
                        unit_starts.push_back(uint32_t(plan.spans.size()));
                        unit_fill = 0;
                    }
                }
            };
            for (size_t pi = 0; pi < parts.size(); ++pi) {
                const Impl& P = *parts[pi];
                const size_t visible = causal ? P.n_tokens - n_q + qe + 1 : P.n_tokens;
                // Codes from the first token in the attention window (from the start of its group:
                // the tokens before it are masked), then exact rows up to visible.
                const size_t start = P.visible_start(visible), visible_codes = std::max(start, P.codes_end(visible));
                if (visible_codes > start)
                    add(uint32_t(pi), false, start / kGroupTokens * kGroupTokens, visible_codes, start % kGroupTokens);
                add(uint32_t(pi), true, visible_codes, visible, 0);
            }
            if (unit_starts.back() != plan.spans.size()) unit_starts.push_back(uint32_t(plan.spans.size()));
            for (uint32_t kvh = 0; kvh < uint32_t(c.kv_heads); ++kvh) {  // (every query sees a token: >= 1 unit)
                plan.first_unit.push_back(uint32_t(plan.units.size()));
                for (size_t i = 0; i + 1 < unit_starts.size(); ++i)
                    plan.units.push_back(
                        Unit{uint32_t(qe), kvh, unit_starts[i], unit_starts[i + 1], uint32_t(plan.first_unit.size() - 1)});
            }
            ++qe;
        }
        plan.first_unit.push_back(uint32_t(plan.units.size()));
        const size_t n_units = plan.units.size();
        if (plan.partials.size() < n_units * plan.partial_floats) plan.partials.resize(n_units * plan.partial_floats);
        plan.unit_groups.resize(n_units);
        plan.unit_skipped.resize(n_units);
        const size_t heads_of_batch = plan.first_unit.size() - 1;
        // (std::function holds a lambda of one reference without allocating: decode allocates nothing)
        if (eps == 0) {
            parallel_for(n_units, options.threads, [&run_unit](size_t u) { run_unit(u, false); });
        } else {
            // The first unit of each (query, KV head) first (it holds the early tokens, where the
            // attention sinks are), then the others against its max and sum.
            plan.anchors.clear();
            plan.others.clear();
            for (size_t i = 0; i < heads_of_batch; ++i)
                for (uint32_t u = plan.first_unit[i]; u < plan.first_unit[i + 1]; ++u)
                    (u == plan.first_unit[i] ? plan.anchors : plan.others).push_back(u);
            auto run_anchor = [&](size_t i) { run_unit(plan.anchors[i], false); };
            parallel_for(plan.anchors.size(), options.threads, [&run_anchor](size_t i) { run_anchor(i); });
            if (!plan.others.empty()) {
                plan.floor_m.resize(heads_of_batch * r);
                plan.floor_l.resize(heads_of_batch * r);
                for (size_t i = 0; i < heads_of_batch; ++i) {
                    const float* a = &plan.partials[size_t(plan.first_unit[i]) * plan.partial_floats];
                    for (int hh = 0; hh < r; ++hh) plan.floor_m[i * r + hh] = a[hh], plan.floor_l[i * r + hh] = a[off_l + hh];
                }
                auto run_other = [&](size_t i) { run_unit(plan.others[i], true); };
                parallel_for(plan.others.size(), options.threads, [&run_other](size_t i) { run_other(i); });
            }
        }
        auto finish_head = [&](size_t i) {
            finish(qb + i / c.kv_heads, uint32_t(i % c.kv_heads), plan.first_unit[i], plan.first_unit[i + 1]);
        };
        parallel_for(heads_of_batch, options.threads, [&finish_head](size_t i) { finish_head(i); });
        for (size_t u = 0; u < n_units; ++u) total_groups += plan.unit_groups[u], total_skipped += plan.unit_skipped[u];
        qb = qe;
    }
    if (options.counters) {
        options.counters->value_groups += total_groups;
        options.counters->skipped_value_groups += total_skipped;
    }
}

// ---------------------------------------------------------------------------------------------
// Reference path: decode, then exact attention in double precision.

std::vector<float> KVCache::Impl::decode_side(const CacheSide& side, bool is_key, int kv_head) const {
    const int d = cfg.head_dim;
    std::vector<float> out(n_tokens * size_t(d));
    std::vector<uint8_t> enc, codes(d);
    std::vector<float> dec;
    const size_t c0 = std::min(dropped, n_compressed), nc = n_compressed - c0;  // coded tokens held: [c0, n_compressed)
    for (auto& s : side.segs) {
        // Rebuild each token's bytes in the codec's own layout and let the codec decode them.
        enc.assign(nc * s.codec_bytes, 0);
        for (size_t t = c0; t < n_compressed; ++t) {
            const uint8_t* g = group(kv_head, t);
            const size_t slot = t % kGroupTokens;
            uint8_t* e = &enc[(t - c0) * s.codec_bytes];
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
        dec.assign(nc * size_t(s.dim), 0.0f);
        if (nc) s.codec->decode_rows(enc.data(), s.codec_bytes, nc, dec.data(), size_t(s.dim));
        for (size_t t = c0; t < n_compressed; ++t)
            for (int j = 0; j < s.dim; ++j) out[t * d + s.channels[j]] = dec[(t - c0) * s.dim + j];
    }
    for (size_t t = std::max(n_compressed, dropped); t < n_tokens; ++t)
        std::memcpy(&out[t * d], (is_key ? exact_key(t) : exact_value(t)) + size_t(kv_head) * d, sizeof(float) * d);
    // What attention sees: coded tokens times the debias factor, every token plus the mean
    // (dropped tokens stay zeros).
    const float f = is_key ? codecs->key_factor : codecs->value_factor;
    const std::vector<float>& mean = is_key ? codecs->key_mean : codecs->value_mean;
    for (size_t t = dropped; t < n_tokens; ++t)
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
    if (m.visible_start(causal ? m.n_tokens - n_q + 1 : m.n_tokens) < m.dropped)
        fail("attend_reference: the first query needs tokens dropped by the attention window");
    std::vector<double> p(m.n_tokens);
    for (int kvh = 0; kvh < c.kv_heads; ++kvh) {
        const std::vector<float> K = decode_keys(kvh), V = decode_values(kvh);
        for (size_t qi = 0; qi < n_q; ++qi) {
            const size_t visible = causal ? m.n_tokens - n_q + qi + 1 : m.n_tokens, start = m.visible_start(visible);
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
                for (size_t t = start; t < visible; ++t) {
                    double s = 0;
                    const float* kt = key(t);
                    for (int j = 0; j < d; ++j) s += double(q[j]) * kt[j];
                    p[t] = s * m.scale;
                    mx = std::max(mx, p[t]);
                }
                for (size_t t = start; t < visible; ++t) sum += (p[t] = std::exp(p[t] - mx));
                float* o = &out[qi * qrow + (size_t(kvh) * r + hh) * d];
                for (int j = 0; j < d; ++j) {
                    double a = 0;
                    for (size_t t = start; t < visible; ++t) a += p[t] * value(t)[j];
                    o[j] = float(a / sum);
                }
            }
        }
    }
}

}  // namespace tqkv
