// KVCache: construction from the config, append (encode into 32-token groups), truncate/clear,
// sizes. Attention over the codes is in cache/attention.cpp, ModelKVCache in cache/model_cache.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "cache/impl.hpp"
#include "codec/shared.hpp"
#include "tqkv/codebook.hpp"
#include "tqkv/packing.hpp"
#include "tqkv/rng.hpp"

namespace tqkv {

using namespace detail;

namespace {

constexpr size_t kMaxTokens = size_t(1) << 28;
constexpr int kMaxWindow = 4096;

// Centroids laid out as the attention kernels index them: for b <= 4, 16 entries with entry k the
// centroid of code k & (2^b - 1) (so garbage above bit b is ignored); otherwise 2^b entries.
std::vector<float> kernel_table(const std::vector<float>& centroids, int bits) {
    const int levels = 1 << bits, width = bits <= 4 ? 16 : levels;
    std::vector<float> t(width);
    for (int i = 0; i < width; ++i) t[i] = centroids[i & (levels - 1)];
    return t;
}

CacheSide make_side(const CodecConfig& cc) {
    CacheSide side;
    side.codec = make_codec(cc);
    auto add = [&](const VectorCodec& c, const std::vector<int>& channels) {
        CacheSegment s;
        s.channels = channels;
        s.dim = c.dim();
        s.codec = &c;
        s.codec_bytes = c.bytes_per_vector();
        if (auto* m = dynamic_cast<const TurboQuantMse*>(&c)) {
            s.rot = &m->rotation();
            s.cb = &m->codebook();
            s.bits = m->codebook().bits();
        } else if (auto* p = dynamic_cast<const TurboQuantProd*>(&c)) {
            s.rot = &p->rotation();
            s.cb = &p->codebook();
            s.bits = p->mse_bits();
            s.prod = true;
            s.qjl = p->qjl_columns().data();
        } else {
            fail("the cache supports mse and prod codecs only");
        }
        s.table = kernel_table(s.cb->centroids_f(), s.bits);
        if (s.bits <= 4) s.fast_values = detail::make_fast_values(s.table.data());
        side.segs.push_back(std::move(s));
    };
    if (auto* sp = dynamic_cast<const SplitCodec*>(side.codec.get())) {
        add(sp->high_codec(), sp->high_channels());
        add(sp->low_codec(), sp->low_channels());
    } else {
        std::vector<int> all(cc.dim);
        std::iota(all.begin(), all.end(), 0);
        add(*side.codec, all);
    }
    return side;
}

}  // namespace

namespace detail {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("tqkv: " + msg); }

void check_finite(std::span<const float> x, const CacheConfig& c, int per_token_heads, const char* what) {
    // A branch-free count over the exponent bits first (it vectorizes; append runs it on every
    // token), the search for the culprit only when there is one.
    uint32_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &x[i], 4);
        bad += (u & 0x7f800000u) == 0x7f800000u;
    }
    if (bad == 0) return;
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i])) {
            const size_t per_head = size_t(c.head_dim), per_token = per_head * per_token_heads;
            std::ostringstream m;
            m << what << " of token " << i / per_token << ", head " << (i % per_token) / per_head << ", channel "
              << i % per_head << " is not finite (" << x[i] << ")";
            fail(m.str());
        }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Construction and storage

namespace {

std::shared_ptr<const CacheCodecs> build_codecs(const CacheConfig& cfg, size_t norm_bytes) {
    auto cc = std::make_shared<CacheCodecs>();
    CodecConfig kc;
    kc.dim = cfg.head_dim;
    kc.bits = cfg.key_bits;
    kc.method = cfg.key_method;
    kc.seed = derive_seed(cfg.seed, 0x4b /* K */);
    kc.norm = cfg.norm;
    kc.high_channels = cfg.key_high_channels;
    kc.kernel = cfg.kernel;
    CodecConfig vc = kc;
    vc.bits = cfg.value_bits;
    vc.method = Method::Mse;
    vc.seed = derive_seed(cfg.seed, 0x56 /* V */);
    vc.high_channels = cfg.value_high_channels;
    try {
        cc->keys = make_side(kc);
    } catch (const std::invalid_argument& e) {
        fail(std::string("keys: ") + e.what());
    }
    try {
        cc->values = make_side(vc);
    } catch (const std::invalid_argument& e) {
        fail(std::string("values: ") + e.what());
    }
    // Group layout: key segments, then value segments.
    size_t off = 0;
    for (auto* side : {&cc->keys, &cc->values})
        for (auto& s : side->segs) {
            s.norm_off = off;
            off += kGroupTokens * norm_bytes;
            if (s.prod) {
                s.gamma_off = off;
                off += kGroupTokens * norm_bytes;
            }
            s.codes_off = off;
            off += group_code_bytes(s.dim, s.bits);
            if (s.prod) {
                s.signs_off = off;
                off += group_code_bytes(s.dim, 1);
            }
            cc->max_codec_bytes = std::max(cc->max_codec_bytes, s.codec_bytes);
        }
    cc->group_bytes = off;
    // Preconditioning (CacheConfig): shared with empty_like copies like the codecs.
    cc->key_mean = cfg.key_mean;
    cc->value_mean = cfg.value_mean;
    if (cfg.debias_keys) cc->key_factor = float(1.0 / (1.0 - mse_distortion(cfg.key_bits, cfg.head_dim)));
    if (cfg.debias_values) cc->value_factor = float(1.0 / (1.0 - mse_distortion(cfg.value_bits, cfg.head_dim)));
    return cc;
}

}  // namespace

KVCache::Impl::Impl(const CacheConfig& c, std::shared_ptr<const CacheCodecs> shared) : cfg(c) {
    if (cfg.heads < 1 || cfg.heads > 4096) fail("heads " + std::to_string(cfg.heads) + " out of range [1, 4096]");
    if (cfg.kv_heads < 1 || cfg.kv_heads > cfg.heads || cfg.heads % cfg.kv_heads != 0)
        fail("kv_heads " + std::to_string(cfg.kv_heads) + " must divide heads " + std::to_string(cfg.heads));
    if (cfg.head_dim < kMinDim || cfg.head_dim > kMaxDim)
        fail("head_dim " + std::to_string(cfg.head_dim) + " out of range [3, 1024]");
    if (cfg.block_tokens < kGroupTokens || cfg.block_tokens > 4096 || cfg.block_tokens % kGroupTokens != 0)
        fail("block_tokens " + std::to_string(cfg.block_tokens) + " must be a multiple of 32 in [32, 4096]");
    if (cfg.window < 0 || cfg.window > kMaxWindow)
        fail("window " + std::to_string(cfg.window) + " out of range [0, 4096]");
    if (!std::isfinite(cfg.scale) || cfg.scale < 0) fail("scale must be finite and >= 0 (0 = 1/sqrt(head_dim))");
    if (cfg.key_method == Method::Qjl) fail("key_method must be mse or prod");
    if (cfg.max_tokens > kMaxTokens) fail("max_tokens above 2^28");
    if (cfg.attention_window > kMaxTokens) fail("attention_window above 2^28");
    if (cfg.attention_window && cfg.max_tokens)
        fail("attention_window with max_tokens: a capacity allocates every block at once, a window frees blocks as "
             "they leave it (set one of them)");
    for (auto [mean, what] : {std::pair{&cfg.key_mean, "key_mean"}, std::pair{&cfg.value_mean, "value_mean"}}) {
        if (!mean->empty() && mean->size() != row())
            fail(std::string(what) + " has " + std::to_string(mean->size()) + " floats, expected 0 or kv_heads * head_dim = " +
                 std::to_string(row()));
        for (float x : *mean)
            if (!std::isfinite(x)) fail(std::string(what) + " holds a non-finite value");
    }
    if (cfg.debias_keys && cfg.key_method != Method::Mse)
        fail("debias_keys needs mse keys (prod inner products are unbiased already)");
    capacity = cfg.max_tokens ? cfg.max_tokens : kMaxTokens;
    scale = cfg.scale > 0 ? cfg.scale : float(1.0 / std::sqrt(double(cfg.head_dim)));

    k = &kernels_by_name(cfg.kernel.c_str());
    ak = &attention_for(*k);
    norm_bytes = detail::norm_bytes(cfg.norm);
    codecs = shared ? std::move(shared) : build_codecs(cfg, norm_bytes);
    group_bytes = codecs->group_bytes;
    code_scale = scale * codecs->key_factor;
    max_codec_bytes = codecs->max_codec_bytes;
    groups_per_block = size_t(cfg.block_tokens) / kGroupTokens;
    block_bytes = size_t(cfg.kv_heads) * groups_per_block * group_bytes;

    ring_rows = size_t(cfg.window);
    exact_k.assign(ring_rows * row(), 0.0f);
    exact_v.assign(ring_rows * row(), 0.0f);
}

// Per-thread staging of append(): shared by every cache a thread appends to (a cache holding a
// few tokens, e.g. one tier segment, must not carry tens of KB of buffers), grown to the largest
// chunk seen and then reused, so appends allocate nothing once warm.
namespace {
struct Staging {
    std::vector<float> k, v, seg_in, centred_k, centred_v;
    std::vector<uint8_t> seg_out, token_codes;
    template <class T>
    static T* grow(std::vector<T>& v, size_t n) {
        if (v.size() < n) v.resize(n);
        return v.data();
    }
};

Staging& staging() {
    thread_local Staging s;
    return s;
}
}  // namespace

void KVCache::Impl::reserve_blocks(size_t blocks, bool exact) {
    const size_t have = allocated_blocks();
    if (blocks <= have) return;
    const size_t max_blocks = (capacity + cfg.block_tokens - 1) / cfg.block_tokens;
    // With a capacity, all of it at once (one arena); otherwise an eighth of what is held (not
    // counting blocks freed by the attention window), at least what is missing.
    const size_t n = exact            ? blocks - have
                     : cfg.max_tokens ? max_blocks - have
                                      : std::min(std::max(blocks - have, held_blocks() / 8), max_blocks - have);
    const size_t head_run = n * groups_per_block * group_bytes;  // a multiple of 64: groups are
    const size_t bytes = size_t(cfg.kv_heads) * head_run;
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!p) throw std::bad_alloc();
    BlockPtr mem(p);
    // Both tables grow before anything changes (their reserve may throw too).
    if (arenas.capacity() == arenas.size()) arenas.reserve(2 * arenas.size() + 1);
    block_heads.reserve(std::max(block_heads.capacity(), (held_blocks() + n) * cfg.kv_heads));
    std::memset(p, 0, bytes);
    for (size_t b = 0; b < n; ++b)
        for (int h = 0; h < cfg.kv_heads; ++h) block_heads.push_back(p + size_t(h) * head_run + b * groups_per_block * group_bytes);
    arenas.push_back(Arena{std::move(mem), have, n});
}

void KVCache::Impl::release_blocks(size_t blocks) {
    while (!arenas.empty() && arenas.back().first_block >= blocks) arenas.pop_back();
    block_heads.resize(arenas.empty() ? 0 : (arenas.back().first_block + arenas.back().blocks - first_block) * cfg.kv_heads);
}

void KVCache::Impl::drop_before(size_t token) {
    if (token <= dropped) return;
    const size_t bt = size_t(cfg.block_tokens);
    // Arenas whose every block ends at or before `token` go (blocks of a partly dropped arena stay
    // until the whole arena has left the window).
    size_t gone = 0, arenas_gone = 0;
    while (arenas_gone < arenas.size() && (arenas[arenas_gone].first_block + arenas[arenas_gone].blocks) * bt <= token)
        gone += arenas[arenas_gone++].blocks;
    arenas.erase(arenas.begin(), arenas.begin() + std::ptrdiff_t(arenas_gone));
    block_heads.erase(block_heads.begin(), block_heads.begin() + std::ptrdiff_t(gone * cfg.kv_heads));
    first_block += gone;
    if (arenas.empty()) first_block = std::max(first_block, token / bt);  // the next arena starts there
    // The codes of dropped tokens in the blocks that stay are zeroed (tokens never coded are zero).
    const size_t lo = std::max(dropped, first_block * bt), hi = std::min({token, n_compressed, allocated_blocks() * bt});
    if (lo < hi) clear_tokens(lo, hi);
    dropped = token;
}

// Encodes `count` tokens (rows of kv_heads x head_dim floats) into the groups of tokens
// first_token .. first_token + count - 1. The codecs produce their own byte layout, which is
// re-arranged here into the group layout.
void KVCache::Impl::compress(const float* k_rows, const float* v_rows, size_t count, size_t first_token) {
    const int d = cfg.head_dim;
    Staging& st = staging();
    float* seg_in = Staging::grow(st.seg_in, count * size_t(d));
    uint8_t* seg_out = Staging::grow(st.seg_out, count * max_codec_bytes);
    uint8_t* token_codes = Staging::grow(st.token_codes, size_t(pad_lanes(d)));  // kernels may write whole lanes
    for (int h = 0; h < cfg.kv_heads; ++h)
        for (auto* side : {&keys(), &values()}) {
            const float* src = side == &keys() ? k_rows : v_rows;
            for (auto& s : side->segs) {
                if (s.dim == d) {  // all channels in order: encode in place, no gather
                    s.codec->encode_rows(src + size_t(h) * d, count, row(), seg_out, s.codec_bytes);
                } else {
                    for (size_t i = 0; i < count; ++i)
                        for (int j = 0; j < s.dim; ++j) seg_in[i * s.dim + j] = src[i * row() + size_t(h) * d + s.channels[j]];
                    s.codec->encode_rows(seg_in, count, size_t(s.dim), seg_out, s.codec_bytes);
                }
                for (size_t i = 0; i < count; ++i) {
                    const size_t t = first_token + i, slot = t % kGroupTokens;
                    uint8_t* g = group(h, t);
                    const uint8_t* enc = seg_out + i * s.codec_bytes;
                    std::memcpy(g + s.norm_off + slot * norm_bytes, enc, norm_bytes);
                    size_t pos = norm_bytes;
                    if (s.prod) {
                        std::memcpy(g + s.gamma_off + slot * norm_bytes, enc + pos, norm_bytes);
                        pos += norm_bytes;
                    }
                    k->unpack(enc + pos, s.dim, s.bits, token_codes);
                    set_group_codes(g + s.codes_off, s.dim, s.bits, int(slot), token_codes);
                    if (s.prod) {
                        k->unpack(enc + pos + packed_bytes(size_t(s.dim), s.bits), s.dim, 1, token_codes);
                        set_group_codes(g + s.signs_off, s.dim, 1, int(slot), token_codes);
                    }
                }
            }
        }
}

void KVCache::Impl::clear_tokens(size_t from, size_t to) {
    static const uint8_t token_codes[kMaxDim] = {};
    for (size_t t = from; t < to; ++t) {
        const int slot = int(t % kGroupTokens);
        for (int h = 0; h < cfg.kv_heads; ++h) {
            uint8_t* g = group(h, t);
            for (auto* side : {&keys(), &values()})
                for (auto& s : side->segs) {
                    std::memset(g + s.norm_off + slot * norm_bytes, 0, norm_bytes);
                    if (s.prod) std::memset(g + s.gamma_off + slot * norm_bytes, 0, norm_bytes);
                    set_group_codes(g + s.codes_off, s.dim, s.bits, slot, token_codes);
                    if (s.prod) set_group_codes(g + s.signs_off, s.dim, 1, slot, token_codes);
                }
        }
    }
}

KVCache::KVCache(const CacheConfig& cfg) : impl_(std::make_unique<Impl>(cfg)) {}
KVCache::KVCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KVCache::~KVCache() = default;
KVCache::KVCache(KVCache&&) noexcept = default;
KVCache& KVCache::operator=(KVCache&&) noexcept = default;

const CacheConfig& KVCache::config() const { return impl_->cfg; }
size_t KVCache::tokens() const { return impl_->n_tokens; }
size_t KVCache::compressed_tokens() const { return impl_->n_compressed; }
size_t KVCache::dropped_tokens() const { return impl_->dropped; }

void KVCache::set_attention_window(size_t window) {
    Impl& m = *impl_;
    if (window == m.cfg.attention_window) return;
    if (m.dropped)
        fail("set_attention_window: " + std::to_string(m.dropped) + " tokens were dropped under the window of " +
             std::to_string(m.cfg.attention_window) + " tokens; another window needs a cleared cache");
    if (window > kMaxTokens) fail("set_attention_window: " + std::to_string(window) + " is above 2^28");
    if (window && m.cfg.max_tokens)
        fail("set_attention_window: not with max_tokens (a capacity allocates every block at once, a window frees "
             "blocks as they leave it)");
    m.cfg.attention_window = window;
}
const char* KVCache::kernel() const { return impl_->k->name; }
void KVCache::set_precision(Precision p) { impl_->cfg.precision = p; }
float KVCache::scale() const { return impl_->scale; }
double KVCache::key_debias() const { return impl_->codecs->key_factor; }
double KVCache::value_debias() const { return impl_->codecs->value_factor; }
const VectorCodec& KVCache::key_codec() const { return *impl_->keys().codec; }
const VectorCodec& KVCache::value_codec() const { return *impl_->values().codec; }

double KVCache::format_bytes() const {
    const Impl& m = *impl_;  // tokens held: not the dropped ones
    const size_t coded = m.n_compressed > m.dropped ? m.n_compressed - m.dropped : 0;
    const size_t exact = m.n_tokens - std::max(m.n_compressed, m.dropped);
    return compressed_bytes_per_token() * double(coded) + double(exact) * 2.0 * double(m.row()) * 2.0;
}

void KVCache::Impl::resize_ring(size_t rows) {
    const size_t r = row();
    std::vector<float> ring_k(rows * r), ring_v(rows * r);  // allocated first: on failure nothing changed
    for (size_t t = n_compressed; t < n_tokens; ++t) {  // the window's rows move to their new slots
        std::memcpy(&ring_k[(t % rows) * r], exact_key(t), r * sizeof(float));
        std::memcpy(&ring_v[(t % rows) * r], exact_value(t), r * sizeof(float));
    }
    exact_k.swap(ring_k);
    exact_v.swap(ring_v);
    ring_rows = rows;
}

void KVCache::append(std::span<const float> keys, std::span<const float> values) {
    Impl& m = *impl_;
    const size_t row = m.row();
    if (keys.empty() || keys.size() % row != 0)
        fail("append: keys have " + std::to_string(keys.size()) + " floats, expected a positive multiple of kv_heads * head_dim = " +
             std::to_string(row));
    if (values.size() != keys.size())
        fail("append: values have " + std::to_string(values.size()) + " floats, keys " + std::to_string(keys.size()));
    const size_t n = keys.size() / row;
    if (n > m.capacity - m.n_tokens)
        fail("append: " + std::to_string(n) + " tokens exceed the capacity of " + std::to_string(m.capacity) +
             " tokens (" + std::to_string(m.n_tokens) + " held)");
    check_finite(keys, m.cfg, m.cfg.kv_heads, "append: key");
    check_finite(values, m.cfg, m.cfg.kv_heads, "append: value");
    // Centring: from here on the cache holds k - key_mean and v - value_mean (exact window too).
    for (auto [x, mean, buf] : {std::tuple{&keys, &m.codecs->key_mean, &staging().centred_k},
                                std::tuple{&values, &m.codecs->value_mean, &staging().centred_v}}) {
        if (mean->empty()) continue;
        float* c = Staging::grow(*buf, x->size());
        for (size_t i = 0; i < x->size(); ++i) c[i] = (*x)[i] - (*mean)[i % row];
        *x = std::span<const float>(c, x->size());
    }
    // Every appended token will be compressed one day: its norms must fit now.
    try {
        m.keys().codec->check_rows(keys.data(), n * m.cfg.kv_heads, size_t(m.cfg.head_dim));
        m.values().codec->check_rows(values.data(), n * m.cfg.kv_heads, size_t(m.cfg.head_dim));
    } catch (const std::invalid_argument& e) {
        fail(std::string("append: ") + e.what() + " (counting rows as token * kv_heads + head)");
    }

    const size_t total = m.n_tokens + n, in_window = std::min<size_t>(m.cfg.window, total);
    const size_t target = total - in_window;  // tokens compressed after this call
    // Exact rows held after this call: the window before it and the new chunk (none without a
    // window), so that the chunk's causal queries see what token-by-token decode would have seen
    // (Impl::codes_end): the window before each query's position exactly, even where this call
    // compresses it. At most window + chunk rows, released with the next append.
    const size_t W = size_t(m.cfg.window), keep_from = W ? m.n_compressed : total, keep_rows = total - keep_from;
    // Allocate first: if that fails, nothing has changed.
    m.reserve_blocks((target + m.cfg.block_tokens - 1) / m.cfg.block_tokens);
    // The ring grows to the rows kept, and shrinks back when a chunk needs less than half of it
    // (decode after a long prefill chunk); decode steps of one size reallocate nothing.
    if (W && (keep_rows > m.ring_rows || keep_rows * 2 < m.ring_rows)) m.resize_ring(keep_rows);

    // The attention window: the chunk's first query (at position n_tokens) sees tokens from
    // n_tokens + 1 - W on; older ones are dropped (their blocks freed as whole arenas leave).
    const size_t AW = m.cfg.attention_window;
    const size_t drop = AW && m.n_tokens + 1 > AW ? std::max(m.dropped, m.n_tokens + 1 - AW) : m.dropped;
    m.drop_before(drop);
    // Compress tokens [n_compressed, target): the oldest window tokens first, then new tokens;
    // dropped ones are never coded.
    for (size_t t0 = std::max(m.n_compressed, drop); t0 < target;) {
        const size_t count = std::min<size_t>(target - t0, size_t(m.cfg.block_tokens));
        Staging& st = staging();
        float* stage_k = Staging::grow(st.k, count * row);
        float* stage_v = Staging::grow(st.v, count * row);
        for (size_t i = 0; i < count; ++i) {
            const size_t t = t0 + i;
            const float* ks = t < m.n_tokens ? m.exact_key(t) : &keys[(t - m.n_tokens) * row];
            const float* vs = t < m.n_tokens ? m.exact_value(t) : &values[(t - m.n_tokens) * row];
            std::memcpy(&stage_k[i * row], ks, row * sizeof(float));
            std::memcpy(&stage_v[i * row], vs, row * sizeof(float));
        }
        m.compress(stage_k, stage_v, count, t0);
        t0 += count;
    }
    // The new tokens' exact rows go to the ring (the ring holds keep_rows >= window + n tokens,
    // so they overwrite none of the rows kept).
    for (size_t t = keep_from > m.n_tokens ? keep_from : m.n_tokens; t < total; ++t) {
        std::memcpy(&m.exact_k[(t % m.ring_rows) * row], &keys[(t - m.n_tokens) * row], row * sizeof(float));
        std::memcpy(&m.exact_v[(t % m.ring_rows) * row], &values[(t - m.n_tokens) * row], row * sizeof(float));
    }
    m.exact_from = keep_from;
    m.n_compressed = target;
    m.n_tokens = total;
}

void KVCache::truncate(size_t n_tokens) {
    Impl& m = *impl_;
    if (n_tokens > m.n_tokens)
        fail("truncate: " + std::to_string(n_tokens) + " tokens requested, the cache holds " +
             std::to_string(m.n_tokens));
    if (m.dropped && n_tokens + 1 < m.dropped + m.cfg.attention_window)
        fail("truncate: " + std::to_string(n_tokens) + " tokens: the next query (position " + std::to_string(n_tokens) +
             ") would see tokens from " + std::to_string(n_tokens + 1 > m.cfg.attention_window ? n_tokens + 1 - m.cfg.attention_window : 0) +
             " on, but tokens before " + std::to_string(m.dropped) + " left the attention window of " +
             std::to_string(m.cfg.attention_window) + " tokens and were dropped (keep at least " +
             std::to_string(m.dropped + m.cfg.attention_window - 1) + " tokens)");
    if (n_tokens < m.n_compressed) {
        // Tokens that go back into the window: those whose exact rows the cache still holds (after
        // a rollback within the last appended chunk, all of the window: the same cache as never
        // having gone further). Older ones stay codes; the window then holds fewer tokens than it
        // could and refills with the next appends.
        const size_t W = size_t(m.cfg.window), decode_codes = n_tokens > W ? n_tokens - W : 0;
        const size_t keep = std::min(n_tokens, std::max(decode_codes, m.exact_from));  // tokens still coded
        const size_t group_end = std::min(m.n_compressed, (keep + kGroupTokens - 1) / kGroupTokens * kGroupTokens);
        const size_t held_from = m.first_block * m.cfg.block_tokens;  // (tokens before it were dropped)
        m.clear_tokens(std::max(keep, held_from), std::max(group_end, held_from));
        // Arenas past the kept blocks go; groups past the last kept token in the arenas that stay
        // are zeroed (the next appends and save() expect zeros there).
        m.release_blocks((keep + m.cfg.block_tokens - 1) / m.cfg.block_tokens);
        for (size_t t = std::max(group_end, held_from); t < std::min(m.n_compressed, m.allocated_blocks() * m.cfg.block_tokens);
             t += kGroupTokens)
            for (int h = 0; h < m.cfg.kv_heads; ++h) std::memset(m.group(h, t), 0, m.group_bytes);
        m.n_compressed = keep;
        m.exact_from = std::min(m.exact_from, keep);
    }
    m.n_tokens = n_tokens;
}

void KVCache::release_chunk_rows() {
    Impl& m = *impl_;
    const size_t W = size_t(m.cfg.window);
    if (!W || m.exact_from == m.n_compressed) return;
    // The window's rows stay where they are. A ring of more than twice the window (a prefill
    // chunk's) is replaced by one of `window` rows (allocated first: if that fails, nothing has
    // changed); after a decode step (window + 1 rows) nothing is reallocated.
    if (m.ring_rows <= 2 * W) {
        m.exact_from = m.n_compressed;
        return;
    }
    m.resize_ring(W);
    m.exact_from = m.n_compressed;
}

void KVCache::clear() {
    impl_->release_blocks(0);
    impl_->n_tokens = impl_->n_compressed = impl_->exact_from = impl_->dropped = impl_->first_block = 0;
}

size_t KVCache::block_bytes() const { return impl_->block_bytes; }
double KVCache::compressed_bytes_per_token() const { return double(impl_->block_bytes) / impl_->cfg.block_tokens; }
size_t KVCache::fp16_bytes_per_token() const { return 2 * impl_->row() * 2; }

size_t KVCache::table_bytes() const {
    const Impl& m = *impl_;
    size_t tables = m.keys().codec->table_bytes() + m.values().codec->table_bytes();
    for (auto* side : {&m.keys(), &m.values()})
        for (auto& s : side->segs) tables += s.table.size() * sizeof(float) + s.channels.size() * sizeof(int);
    return tables;
}

size_t KVCache::bytes_used() const {
    const Impl& m = *impl_;
    size_t arena_blocks = 0;  // (a partly dropped arena is held whole)
    for (const auto& a : m.arenas) arena_blocks += a.blocks;
    return arena_blocks * m.block_bytes + m.block_heads.capacity() * sizeof(uint8_t*) +
           m.arenas.capacity() * sizeof(Impl::Arena) +
           (m.exact_k.size() + m.exact_v.size()) * sizeof(float) + table_bytes();
}

KVCache KVCache::empty_like() const { return KVCache(std::make_unique<Impl>(impl_->cfg, impl_->codecs)); }

double KVCache::bytes_per_token() const {
    const size_t held = impl_->n_tokens - impl_->dropped;  // not the tokens the attention window dropped
    return held ? double(bytes_used()) / double(held) : 0.0;
}

}  // namespace tqkv
