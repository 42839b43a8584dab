// The bounded-error fast path of the fused attention (CacheConfig::precision = fast), written once
// against the SIMD layer (simd.hpp) and instantiated per instruction set in kernels/<isa>/fast.cpp.
// Integer tables and integer sums, FAISS fast-scan style; every sum is exact, so all backends
// give the bits of the scalar reference (kernels/scalar/fast.cpp), which the tests check.
//
// ---------------------------------------------------------------------------------------------
// Keys: integer look-up tables
//
// The float kernels' tables are, per query head, lut[j][k] = q'_j * centroid_k (q' the rotated
// query, a float product; prepare_scores forms the same products from q' and the centroids). Here
// consecutive coordinates are merged into "units" that one 4-bit index addresses:
// bits 4 and 3: one coordinate per unit; bits 2: two (the nibble of a 16-bit half-word holds
// slots 2u, 2u+1); bits 1: four. Unit u's entry e is x_u[e] = sum of its coordinates' entries
// (field i of e = code of coordinate i, summed in float in order i = 0, 1, ...; coordinates past
// dim add nothing). With n_u units, m_u = min_e x_u[e], R = max_u (max_e x_u[e] - m_u) and
// L = 2^12 levels for 4-bit codes, 2^8 otherwise:
//   delta = fl(R / (L - 1)),  E_u[e] = round(fl(fl(x_u[e] - m_u) * fl((L - 1) / R)))  in [0, L - 1]
// (round: to nearest, ties to even)
//   score = ((float(S) * D) + B) * norm,  S = sum_u E_u[e_u] (exact integer),
//   D = fl(delta * scale),  B = fl(scale * sum_u m_u)  (sum in double, in unit order).
// Why 12 bits for 4-bit codes: on the tq-ref-128 dump, one 8-bit table (one scale per head, an
// offset per coordinate) adds a logit RMS error of 0.16 of the K4 codec's own (0.06 for K3, 0.02
// for K2), above the 1/10 the fast path may add; each further bit halves it, 12 bits take it to
// 0.01. (10 bits, 0.04, were within the 1/10 but moved ΔNLL of K4V4 on 16384 bytes of tq-ref-128
// by 0.021 percentage points against 0.008 at 12 bits; the allowed change is 0.02.)
// E = 64 A + B is stored as two byte planes, A = E >> 6 and B = E & 63, both in [0, 63], so a unit
// costs two byte look-ups, and each plane's bytes of a chunk's four units add in uint8
// (4 * 63 < 256) before they are widened.
//
// Sums (32 tokens per look-up; token t and t + 16 in the even and odd byte of a 16-bit lane):
//   - A byte plane is added to two uint16 sums, the whole lanes (even + 256 odd, mod 2^16) and the
//     odd bytes (shifted down); even = whole - 256 odd (mod 2^16) is exact because both true sums
//     are at most 255 * 256 < 2^16 over a block of 256 units. Each block is widened to int32.
//     (Two planes: the four bytes of a chunk, each <= 63, are first added in uint8.)
//   - S <= 4095 * 1024 < 2^24: float(S) is exact.
//
// Worst-case error (what kernel_score_bound stores in the table and the tests check). Let
// t_u = (x_u[e] - m_u) / delta (real). The rounded operand y satisfies |y / t_u - 1| <= 4 u
// (u = 2^-24: the subtraction, the division R / (L - 1) behind delta, the division (L - 1) / R and
// the product), and t_u <= L - 1 + 2^-11, so |y - t_u| < 4096 * 4 u < 1e-3 and
// |E_u - t_u| <= 0.501: rounding to an integer, never clamped. Hence
//   |sum_u E_u delta - sum_u (x_u[e_u] - m_u)| <= 0.501 n_u delta,
// and the float epilogue (product, rounding of D and B, the add: 4 roundings, each <= u times a
// value below n_u (L - 1) delta + sum_u max_e |x_u[e]|) adds at most 2^-21 times that sum. For
// units of several coordinates the float sum x_u[e] is itself within 2^-22 sum_j max_k |lut[j][k]|
// (j in the unit) of the exact one. So with A_max = sum_j max_k |lut[j][k]|,
//   |score / norm - scale * sum_j lut[j][code_j]| <= |scale| (0.501 n_u delta
//                                                   + 2^-21 (n_u (L - 1) delta + sum_u max_e |x_u[e]| + A_max))
// (plus the final product by the norm, one more rounding). RMS: the rounding errors of the entries
// a token meets are independent and uniform on [-delta/2, delta/2]: |scale| delta sqrt(n_u / 12).
//
// ---------------------------------------------------------------------------------------------
// Values: int8 centroids, int16 weights shared by a chunk of groups, exact integer sums
//
// The driver hands over a chunk: up to kFastChunkGroups groups of one KV head (its online-softmax
// chunk of 256 tokens). Per query head, w_gt = fl(p_gt * norm_gt) (p the softmax numerators of
// group g, token t), M = max over the chunk's w,
//   W_gt = round(fl(w_gt * fl(32767 / M)))  in [0, 32767],
// and per coordinate j the exact integer T_j = sum_g sum_t W_gt c8[code_gtj] (c8, inv_scale:
// FastValueTable) is added to the driver's accumulator of the coordinate (acc[h * dim + j]: one float
// per coordinate, so the driver's rescaling and merging touch dim floats per head, not 16 dim) as
// fl(float(T_j) * f), f = fl(fl(M * fl(1 / 32767)) * inv_scale).
// |T_j| <= 8 * 32 * 32767 * 127 < 2^31, so the int32 sums are exact in any order: a backend may
// sum the products as its instructions like and still give the reference's bits; float(T_j)
// rounds to nearest, on every backend alike. (The SIMD kernels sum c8 + 128 and subtract 128 sum W:
// the same integer, see "Decoding values" below.)
// Why one weight scale per chunk and not per group: the sums stay integers over the whole chunk and
// become floats once per coordinate and chunk (a float epilogue per group and coordinate cost as
// much as the products). Not relaxed SIMD's i32x4.dot_i8x16_i7x16_add (on two 7-bit planes of W):
// in Chromium 156 on an AVX2 CPU without VNNI it was no faster than the int16 products (0.9-1.0x),
// and Node 20's experimental relaxed SIMD returns twice the products.
//
// Worst-case error of the chunk's contribution G_j = fl(float(T_j) f) against the exact
// sum_{g,t} w_gt c[code_gtj]: with ws = M / 32767, |W ws - w| <= 0.501 ws (the rounding to an
// integer plus 3 u relative from the float product and quotient, times 32767 < 2^15), and
// |c8 inv_scale - c| <= e_c (FastValueTable::max_error), so
//   |G_j - sum w c| <= n_w 0.501 ws (c_max + e_c) + e_c sum w + 2^-21 |G_j|
// (n_w = tokens with w > 0, c_max = FastValueTable::max_abs; the last term: the roundings of
// float(T_j), of f and of the product, and ws against M * fl(1 / 32767)). A head whose weights in
// the chunk are all below 2^-100 adds nothing (at most 256 * 2^-100 * c_max dropped; softmax
// numerators are relative to the running maximum's 1). The RMS part of the first term is
// ws c_rms sqrt(n_w / 12): relative to the output, about 2^-15 / sqrt(12) per token of weight M,
// far below the value codec's own error (sqrt(D_b) of the token's weight); the centroid part is
// systematic but small: e_c is about 1/600 of c_max for the 4-bit codebook (make_fast_values picks
// the scale).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cache/layout.hpp"
#include "kernels/kernels.hpp"
#include "kernels/simd/simd.hpp"
#include "tqkv/codebook.hpp"

namespace tqkv::detail::fast {

// ---------------------------------------------------------------------------------------------
// Key table format: per head a 32-byte header, then per unit its byte planes, each 16 bytes
// stored twice (32 bytes: a 256-bit backend loads both copies at once instead of broadcasting).

struct ScoresHeader {
    float D, B;        // score = ((float(S) * D) + B) * norm
    float bound;       // worst-case |score / norm - scale * sum_j lut[j][code_j]| (see above)
    float rms;         // the RMS model of that error: |scale| delta sqrt(n_u / 12)
    int32_t units, planes, levels, reserved;
};
static_assert(sizeof(ScoresHeader) == 32);

constexpr int score_planes(int bits) { return bits == 4 ? 2 : 1; }
constexpr int score_levels(int bits) { return bits == 4 ? 4096 : 256; }
constexpr int kLowPlaneBits = 6;  // two planes: E = (A << kLowPlaneBits) + B
constexpr int unit_coords(int bits) { return bits == 3 ? 1 : 4 / bits; }
// Units of a segment: whole chunks for 4, 2 and 1 bits (4 units per chunk), dim for 3 bits.
constexpr int score_units(int dim, int bits) {
    if (bits == 3) return dim;
    const int per_chunk = 16 / bits;
    return (dim + per_chunk - 1) / per_chunk * 4;
}
constexpr size_t scores_table_bytes(int dim, int bits, int heads) {
    if (bits < 1 || bits > 4 || dim < 1 || dim > kMaxDim) return 0;
    return size_t(heads) * (sizeof(ScoresHeader) + size_t(score_units(dim, bits)) * score_planes(bits) * 32);
}

// Builds the tables (see the top of this file) from the rotated queries q[h * dim + j] and the
// segment's centroids c[k] (16 entries, replicated as kernel tables are): lut[j][k] = fl(q_j c_k),
// the products the driver's float tables hold, so the bytes are those of tables built from that
// float table. Element-wise IEEE operations and exact min / max only: the same bytes on every
// backend.
template <class S>
bool prepare_scores(const float* q, const float* c, int dim, int bits, int heads, float scale, void* table) {
    using F = typename S::F;
    if (bits < 1 || bits > 4 || dim < 1 || dim > kMaxDim || !std::isfinite(scale)) return false;
    float cmin = c[0], cmax = c[0];
    for (int e = 0; e < 16; ++e) {
        if (!std::isfinite(c[e])) return false;
        cmin = c[e] < cmin ? c[e] : cmin;
        cmax = c[e] > cmax ? c[e] : cmax;
    }
    const float cabs = std::fabs(cmin) > std::fabs(cmax) ? std::fabs(cmin) : std::fabs(cmax);
    const int units = score_units(dim, bits), planes = score_planes(bits), L = score_levels(bits);
    const int per = unit_coords(bits), mask = (1 << bits) - 1;
    uint8_t* out = static_cast<uint8_t*>(table);
    static_assert(kMaxDim % 8 == 0);
    alignas(32) float mins[kMaxDim], maxs[kMaxDim], qp[kMaxDim];
    const F c0 = S::fload(c), c1 = S::fload(c + 8), zero = S::fset(0.0f);
    for (int h = 0; h < heads; ++h) {
        // This head's query, zero past dim up to a multiple of 8 units (units past dim add nothing).
        const float* qh = q + size_t(h) * dim;
        const int padded = per == 1 ? (units + 7) / 8 * 8 : dim;  // (units <= kMaxDim, a multiple of 8)
        for (int j = 0; j < dim; ++j) qp[j] = qh[j];
        for (int j = dim; j < padded; ++j) qp[j] = 0.0f;
        // Unit u's 16 entries x_u[e] as entries 0-7 and 8-15: fl(q_u c_e) for one coordinate per
        // unit, else the unit's coordinates' entries summed in order (field i of e: coordinate i's code).
        auto entries = [&](int u, F& lo8, F& hi8) TQKV_SIMD_LAMBDA {
            if (per == 1) {
                const F qu = S::fset(qp[u]);
                lo8 = S::fmul(qu, c0), hi8 = S::fmul(qu, c1);
                return;
            }
            alignas(32) float buf[16];
            for (int e = 0; e < 16; ++e) buf[e] = 0.0f;
            for (int i = 0; i < per && u * per + i < dim; ++i)
                for (int e = 0; e < 16; ++e) buf[e] += qp[u * per + i] * c[(e >> (bits * i)) & mask];
            lo8 = S::fload(buf), hi8 = S::fload(buf + 8);
        };
        F bad = S::fset(0.0f);  // x - x summed: NaN when an entry is NaN or infinite
        if (per == 1) {
            // Eight units at a time: rounding is monotone, so min_e fl(q c_e) and max_e fl(q c_e)
            // are fl(q cmin) and fl(q cmax) in some order. (+ 0: -0 becomes +0, so the result does
            // not depend on which zero a comparison kept.)
            for (int u = 0; u < units; u += 8) {
                const F qu = S::fload(qp + u), a = S::fmul(qu, S::fset(cmin)), b = S::fmul(qu, S::fset(cmax));
                const F lo = S::fadd(S::fmin(a, b), zero), hi = S::fadd(S::fmax(a, b), zero);
                bad = S::fadd(bad, S::fadd(S::fsub(lo, lo), S::fsub(hi, hi)));
                S::fstore(mins + u, lo);
                S::fstore(maxs + u, hi);
            }
        } else {
            for (int u = 0; u < units; ++u) {
                F a, b;
                entries(u, a, b);
                bad = S::fadd(bad, S::fadd(S::fsub(a, a), S::fsub(b, b)));
                mins[u] = S::hmin(S::fmin(a, b)) + 0.0f;
                maxs[u] = S::hmax(S::fmax(a, b)) + 0.0f;
            }
        }
        alignas(32) float bad_lanes[8];
        S::fstore(bad_lanes, bad);
        for (float b : bad_lanes)
            if (b != 0.0f) return false;  // NaN or infinity in the table
        float R = 0.0f;
        double x_abs = 0;  // sum_u max_e |x_u[e]|
        for (int u = 0; u < units; ++u) {
            const float lo = mins[u], hi = maxs[u];
            // (Comparisons, not std::fmax, a call in wasm.)
            R = hi - lo > R ? hi - lo : R;
            x_abs += std::fabs(lo) > std::fabs(hi) ? std::fabs(lo) : std::fabs(hi);
        }
        if (!std::isfinite(R)) return false;  // finite entries whose range overflows
        const float delta = R / float(L - 1), inv = R > 0.0f ? float(L - 1) / R : 0.0f;
        if (!std::isfinite(inv)) return false;  // a range of denormal size
        // sum_j max_k |lut[j][k]|: the same as x_abs for one coordinate per unit; else by monotone
        // rounding max_k |fl(q_j c_k)| = fl(|q_j| max_k |c_k|).
        double a_max = x_abs;
        if (per > 1) {
            a_max = 0;
            for (int j = 0; j < dim; ++j) a_max += std::fabs(qp[j]) * cabs;
        }
        double bias = 0;
        for (int u = 0; u < units; ++u) bias += mins[u];
        ScoresHeader hd{};
        hd.D = delta * scale;
        hd.B = float(bias * double(scale));
        const double d = delta, n_u = units;
        hd.bound = float(std::fabs(double(scale)) * (0.501 * n_u * d + std::ldexp(n_u * (L - 1) * d + x_abs + a_max, -21)) *
                         (1 + 1e-6));
        hd.rms = float(std::fabs(double(scale)) * d * std::sqrt(n_u / 12.0));
        hd.units = units, hd.planes = planes, hd.levels = L;
        std::memcpy(out, &hd, sizeof hd);
        out += sizeof hd;
        // E = round((x - m) * inv) to nearest even; never above L - 1 (see above).
        const F vinv = S::fset(inv);
        const auto low = S::set32((1 << kLowPlaneBits) - 1);
        for (int u = 0; u < units; ++u, out += 32 * planes) {
            F a, b;
            entries(u, a, b);
            const F m = S::fset(mins[u]);
            const auto E0 = S::round_to_int(S::fmul(S::fsub(a, m), vinv));
            const auto E1 = S::round_to_int(S::fmul(S::fsub(b, m), vinv));
            if (planes == 1) {
                S::store_u8x16(out, E0, E1);
            } else {
                S::store_u8x16(out, S::template srl32<kLowPlaneBits>(E0), S::template srl32<kLowPlaneBits>(E1));
                S::store_u8x16(out + 32, S::and_(E0, low), S::and_(E1, low));
            }
            for (int p = 0; p < planes; ++p) std::memcpy(out + 32 * p + 16, out + 32 * p, 16);
        }
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// Decoding a group's codes into 4-bit indexes of 32 tokens (the order of cache/layout.hpp)
//
// A 64-byte chunk loaded as two V (words 0-7, 8-15): each 32-bit word i holds token i (i + 8 for
// the second) in its low 16 bits and token i + 16 in its high ones. Packing the low bytes of the
// 16-bit lanes of both (and then the high bytes) gives, per half, 16 bytes whose even bytes belong
// to tokens < 16 and odd bytes to the same token + 16: s01 holds bits 0-7 of each token's half-word
// (slots 0-1 of a 4-bit part), s23 bits 8-15. A 16-bit shift and a byte mask then give any field.

template <class S>
struct Chunk {
    typename S::V s01, s23;
    static TQKV_SIMD_INLINE Chunk load(const uint8_t* p, typename S::V m00ff) {
        const typename S::V a = S::load(p), b = S::load(p + 32);
        return {S::packus16(S::and_(a, m00ff), S::and_(b, m00ff)),
                S::packus16(S::template srl16<8>(a), S::template srl16<8>(b))};
    }
};

// The W-bit field in slot `Slot` (of 16 / W) of a chunk's tokens, masked to W bits.
template <class S, int W, int Slot>
TQKV_SIMD_INLINE typename S::V field(const Chunk<S>& c, typename S::V mask) {
    constexpr int bit = W * Slot;
    const typename S::V x = bit < 8 ? c.s01 : c.s23;
    return S::and_(S::template srl16<bit % 8>(x), mask);
}

// Calls coord(integral_constant<s>) for the slots s < N of a run of coordinates starting at j0 that
// lie below dim (s a compile-time constant: the field shifts depend on it).
template <int N, class Fn>
TQKV_SIMD_INLINE void for_slots(int j0, int dim, Fn&& coord) {
    if (j0 + N <= dim) {
        [&]<int... s>(std::integer_sequence<int, s...>) TQKV_SIMD_LAMBDA {
            (coord(std::integral_constant<int, s>{}), ...);
        }(std::make_integer_sequence<int, N>{});
    } else {
        [&]<int... s>(std::integer_sequence<int, s...>) TQKV_SIMD_LAMBDA {
            ((j0 + s < dim ? coord(std::integral_constant<int, s>{}) : void()), ...);
        }(std::make_integer_sequence<int, N>{});
    }
}

// Bit 2 of the 3-bit codes of slot s (of a byte's 8 coordinates): bit s of each byte of y (the
// 1-bit part's bits), moved to bit 2 and masked (m4 = 4 in every byte).
template <class S, int s>
TQKV_SIMD_INLINE typename S::V bit2(typename S::V y, typename S::V m4) {
    if constexpr (s >= 2)
        return S::and_(S::template srl16<s - 2>(y), m4);
    else
        return S::and_(S::template sll16<2 - s>(y), m4);
}

// The 3-bit code of slot s of a run of 8 coordinates: bits 0-1 from the 2-bit part's chunk `two`,
// bit 2 from bit s of each byte of y (one half of the 1-bit part's chunk).
template <class S, int s>
TQKV_SIMD_INLINE typename S::V three_bit_field(const Chunk<S>& two, typename S::V y, typename S::V m3, typename S::V m4) {
    return S::or_(field<S, 2, s>(two, m3), bit2<S, s>(y, m4));
}

// Calls f(j, idx) for each coordinate j in [begin, end) of 3-bit codes (end <= dim, begin a
// multiple of 16) in order, idx its code: the 2-bit part (bits 0-1) in chunks of 8 coordinates,
// the 1-bit part (bit 2) in chunks of 16, each loaded once.
template <class S, class Fn>
TQKV_SIMD_INLINE void for_each_coordinate3(const uint8_t* codes, int dim, int begin, int end, Fn&& f) {
    using V = typename S::V;
    const V m00ff = S::set16(0x00ff), m3 = S::set8(3), m4 = S::set8(4);
    const uint8_t* ones = codes + part_bytes(dim, 2);
    for (int j0 = begin; j0 < end; j0 += 16) {
        const Chunk<S> one = Chunk<S>::load(ones + size_t(j0 / 16) * 64, m00ff);
        for (int q = 0; q < 2 && j0 + 8 * q < end; ++q) {
            const Chunk<S> two = Chunk<S>::load(codes + size_t(j0 / 8 + q) * 64, m00ff);
            const V y = q == 0 ? one.s01 : one.s23;
            for_slots<8>(j0 + 8 * q, end, [&](auto sc) TQKV_SIMD_LAMBDA {
                constexpr int s = decltype(sc)::value;
                f(j0 + 8 * q + s, three_bit_field<S, s>(two, y, m3, m4));
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key scores

// uint16 sums of one head (see the top of this file): whole lanes and odd bytes of planes A and B.
template <class S, int PLANES>
struct KeySums {
    using V = typename S::V;
    V aw, ao, bw, bo;
    TQKV_SIMD_INLINE void clear() { aw = ao = bw = bo = S::zero(); }
    static TQKV_SIMD_INLINE void add(V& whole, V& odd, V bytes) {
        whole = S::add16(whole, bytes);
        odd = S::add16(odd, S::template srl16<8>(bytes));
    }
    // One-plane units, one at a time.
    TQKV_SIMD_INLINE void add(const uint8_t* t, V idx) { add(aw, ao, S::lookup(S::table(t), idx)); }
    // Two-plane units, the four of a chunk (unit k's planes at t + 64 k and t + 64 k + 32): each
    // plane's four bytes (each <= 63) summed in uint8 before the uint16 sums.
    TQKV_SIMD_INLINE void add4(const uint8_t* t, const V idx[4]) {
        static_assert(4 * ((score_levels(4) - 1) >> kLowPlaneBits) < 256 && 4 * ((1 << kLowPlaneBits) - 1) < 256);
        V a = S::lookup(S::table(t), idx[0]), b = S::lookup(S::table(t + 32), idx[0]);
        for (int k = 1; k < 4; ++k) {
            a = S::add8(a, S::lookup(S::table(t + 64 * k), idx[k]));
            b = S::add8(b, S::lookup(S::table(t + 64 * k + 32), idx[k]));
        }
        add(aw, ao, a);
        add(bw, bo, b);
    }
    // After at most 256 units: into the int32 totals (tokens 0-7, 8-15, 16-23, 24-31), then clear.
    TQKV_SIMD_INLINE void fold(V tot[4]) {
        const V z = S::zero();
        const V ae = S::sub16(aw, S::template sll16<8>(ao));
        V t[4] = {S::unpacklo16(ae, z), S::unpackhi16(ae, z), S::unpacklo16(ao, z), S::unpackhi16(ao, z)};
        if constexpr (PLANES == 2) {
            const V be = S::sub16(bw, S::template sll16<8>(bo));
            const V u[4] = {S::unpacklo16(be, z), S::unpackhi16(be, z), S::unpacklo16(bo, z), S::unpackhi16(bo, z)};
            for (int k = 0; k < 4; ++k) t[k] = S::add32(S::template sll32<kLowPlaneBits>(t[k]), u[k]);
        }
        for (int k = 0; k < 4; ++k) tot[k] = S::add32(tot[k], t[k]);
        clear();
    }
};

// Integer scores S of H heads (tables tab[h], after the header) for the tokens of a group whose
// codes are at `codes` in rows of 32 bytes (S::V wide: all 32 tokens; S::Half: 16 of them).
template <class S, int BITS, int H>
__attribute__((noinline)) void key_sums_pass(const uint8_t* codes, int dim, const uint8_t* const* tab,
                                             typename S::V (*tot)[4]) {
    using V = typename S::V;
    constexpr int P = score_planes(BITS), stride = 32 * P;
    KeySums<S, P> acc[H];
    for (int h = 0; h < H; ++h) {
        acc[h].clear();
        for (int k = 0; k < 4; ++k) tot[h][k] = S::zero();
    }
    if constexpr (BITS == 3) {
        // One unit per coordinate, blocks of 256 folded after each (no branch in the loop).
        for (int j0 = 0; j0 < dim; j0 += 256) {
            for_each_coordinate3<S>(codes, dim, j0, dim - j0 < 256 ? dim : j0 + 256, [&](int j, V idx) TQKV_SIMD_LAMBDA {
                for (int h = 0; h < H; ++h) acc[h].add(tab[h] + size_t(j) * stride, idx);
            });
            for (int h = 0; h < H; ++h) acc[h].fold(tot[h]);
        }
    } else {
        // Nibble units, four per chunk (see Chunk): one coordinate (4 bits), two (2) or four (1).
        // Blocks of at most 64 chunks (256 units), folded after each: no branch in the inner loop,
        // whose sums then stay in registers (V8 spilled them where a fold branch merged).
        const V m00ff = S::set16(0x00ff), m0f = S::set8(0x0f);
        const int chunks = score_units(dim, BITS) / 4;
        for (int c0 = 0; c0 < chunks; c0 += 64) {
            const int c1 = chunks - c0 < 64 ? chunks : c0 + 64;
            for (int c = c0; c < c1; ++c) {
                const Chunk<S> ch = Chunk<S>::load(codes + size_t(c) * 64, m00ff);
                const V idx[4] = {S::and_(ch.s01, m0f), S::and_(S::template srl16<4>(ch.s01), m0f), S::and_(ch.s23, m0f),
                                  S::and_(S::template srl16<4>(ch.s23), m0f)};
                for (int h = 0; h < H; ++h) {
                    if constexpr (P == 2)
                        acc[h].add4(tab[h] + size_t(4 * c) * stride, idx);
                    else
                        for (int k = 0; k < 4; ++k) acc[h].add(tab[h] + size_t(4 * c + k) * stride, idx[k]);
                }
            }
            for (int h = 0; h < H; ++h) acc[h].fold(tot[h]);
        }
    }
}

// Integer scores S of H heads for the 32 tokens of a group. A backend with a Half (simd.hpp) runs
// the first and the second 16 bytes of each 32-byte row of codes as two passes (tokens 0-3, 8-11
// and their + 16; then 4-7, 12-15 and theirs): the same integers, in fewer registers.
template <class S, int BITS, int H>
TQKV_SIMD_INLINE void key_sums(const uint8_t* codes, int dim, const uint8_t* const* tab, typename S::V (*tot)[4]) {
    if constexpr (requires { typename S::Half; }) {
        using Hf = typename S::Half;
        typename Hf::V t0[H][4], t1[H][4];
        key_sums_pass<Hf, BITS, H>(codes, dim, tab, t0);
        key_sums_pass<Hf, BITS, H>(codes + 16, dim, tab, t1);
        for (int h = 0; h < H; ++h)
            for (int k = 0; k < 4; ++k) tot[h][k] = S::join(t0[h][k], t1[h][k]);
    } else {
        key_sums_pass<S, BITS, H>(codes, dim, tab, tot);
    }
}

// Groups per call of chunk_scores and per chunk_accumulate batch (for values the T_j bound above,
// asserted below for the biased centroids, the larger one).
constexpr int kFastChunkGroups = 8;

template <class S, int BITS>
void chunk_scores_bits(const uint8_t* const* codes, const float* n, int groups, int dim, const uint8_t* table, int heads,
                       float* out, int out_stride, bool add) {
    using V = typename S::V;
    using F = typename S::F;
    constexpr int HP = S::kHeadsPerPass;
    const size_t head_bytes = scores_table_bytes(dim, BITS, 1);
    for (int g = 0; g < groups; ++g) {
        for (int h0 = 0; h0 < heads;) {
            const int hn = heads - h0 >= HP ? HP : 1;  // passes of HP heads, then one at a time
            const uint8_t* tab[HP];
            ScoresHeader hd[HP];
            for (int h = 0; h < hn; ++h) {
                const uint8_t* p = table + size_t(h0 + h) * head_bytes;
                std::memcpy(&hd[h], p, sizeof(ScoresHeader));
                tab[h] = p + sizeof(ScoresHeader);
            }
            V tot[HP][4];
            if (hn == HP)
                key_sums<S, BITS, HP>(codes[g], dim, tab, tot);
            else
                key_sums<S, BITS, 1>(codes[g], dim, tab, tot);
            for (int h = 0; h < hn; ++h) {
                const F D = S::fset(hd[h].D), B = S::fset(hd[h].B);
                float* o = out + size_t(h0 + h) * out_stride + size_t(g) * kGroupTokens;
                for (int k = 0; k < 4; ++k) {
                    const F x = S::fmul(S::fadd(S::fmul(S::to_float(tot[h][k]), D), B), S::fload(n + g * kGroupTokens + 8 * k));
                    S::fstore(o + 8 * k, add ? S::fadd(S::fload(o + 8 * k), x) : x);
                }
            }
            h0 += hn;
        }
    }
}

// codes[g], norms[g]: group g of a chunk (g < groups <= kFastChunkGroups); its scores at
// out + h * out_stride + 32 g, stored or (add) added to what is there.
template <class S>
void chunk_scores(const uint8_t* const* codes, const uint16_t* const* norms, int groups, int dim, int bits,
                  const void* table, int heads, float* out, int out_stride, bool add) {
    if (groups < 1 || groups > kFastChunkGroups) return;
    alignas(32) float n[kFastChunkGroups * kGroupTokens];
    for (int g = 0; g < groups; ++g) S::halves_to_float(norms[g], n + g * kGroupTokens, kGroupTokens);
    const uint8_t* t = static_cast<const uint8_t*>(table);
    switch (bits) {
        case 1: return chunk_scores_bits<S, 1>(codes, n, groups, dim, t, heads, out, out_stride, add);
        case 2: return chunk_scores_bits<S, 2>(codes, n, groups, dim, t, heads, out, out_stride, add);
        case 3: return chunk_scores_bits<S, 3>(codes, n, groups, dim, t, heads, out, out_stride, add);
        case 4: return chunk_scores_bits<S, 4>(codes, n, groups, dim, t, heads, out, out_stride, add);
        default: return;  // prepare_scores refused other widths
    }
}

// ---------------------------------------------------------------------------------------------
// Values

// One group's 32 int16 weights in the order of the stored codes (cache/layout.hpp): per 32-byte
// half k of a chunk (words 8k..8k+7), 32-bit lane i holds W of token 8k + i in its low 16 bits and
// of token 16 + 8k + i in its high ones, as the word of codes it meets. W <= 32767, so the halves
// never carry into each other.
template <class S>
struct GroupWeights {
    typename S::V half[2];
};

template <class S>
TQKV_SIMD_INLINE GroupWeights<S> group_weights(const float* p, const float* n, typename S::F inv, typename S::V& total) {
    typename S::V W[4];
    for (int k = 0; k < 4; ++k) W[k] = S::round_to_int(S::fmul(S::fmul(S::fload(p + 8 * k), S::fload(n + 8 * k)), inv));
    total = S::add32(total, S::add32(S::add32(W[0], W[1]), S::add32(W[2], W[3])));
    return {{S::or_(W[0], S::template sll32<16>(W[2])), S::or_(W[1], S::template sll32<16>(W[3]))}};
}

// The total of the 32-bit lanes of a vector (vpmaddwd's partial sums of one coordinate and head, or
// the weights' partial sums), modulo 2^32 as the SIMD adds wrap. For finite weights every lane is
// >= 0 and the totals stay below 2^31 (see above); a hostile cache whose norms make the softmax NaN
// gives garbage weights, whose sums then wrap instead of overflowing a signed int.
template <class S>
TQKV_SIMD_INLINE uint32_t lane_total(typename S::V v) {
    alignas(32) uint32_t lanes[sizeof(v) / 4];
    S::store(lanes, v);
    uint32_t sum = 0;
    for (uint32_t x : lanes) sum += x;
    return sum;
}

// Decoding values in the stored order (no transposition; cf. Chunk, which the key scores need
// because a table serves one coordinate). In a 32-byte half of a chunk of a w-bit part, the 16-bit
// lanes alternate token i and token i + 16 (the two halves of word i); bits [ws, ws + w) of a
// lane's low byte are slot s, of its high byte slot s + 8 / w. So one shift and one byte mask give,
// for s < 8 / w, the codes of two coordinates: slot s in the even bytes and slot s + 8 / w in the
// odd ones. The looked-up centroids are biased by 128 (FastValueTable::biased, in [1, 255]): the
// even bytes are a mask away and the odd ones a shift away from int16 lanes that multiply the
// weights of their tokens (vpmaddwd), and each int32 lane sums two tokens of one coordinate.
// The bias is taken off once per coordinate: T_j = T'_j - 128 sum W, with
// T'_j <= 8 * 32 * 32767 * 255 < 2^31 (all terms >= 0).
static_assert(int64_t(kFastChunkGroups) * kGroupTokens * 32767 * 255 < (int64_t(1) << 31));

// Slots (of 8 / w in a half) a value block covers; the block's coordinates are slot s and s + 8 / w
// for its slots. 4 bits: the whole chunk (4 coordinates); 2 and 3 bits: the whole chunk of the
// 2-bit part (8); 1 bit: half the chunk's 8 slot pairs (8 of its 16 coordinates).
template <int BITS>
constexpr int block_slots() {
    return BITS == 4 ? 2 : 4;
}
template <int BITS>
constexpr int chunk_coords() {  // coordinates of one chunk of the value part that sets the blocks
    return BITS == 4 ? 4 : BITS == 1 ? 16 : 8;
}

// Calls f(i, idx) for slots S0 + i, i < block_slots, of half k of a chunk of the part that sets the
// blocks, idx the codes of its 16 tokens (even bytes: slot S0 + i, odd: that + 8 / w).
template <class S, int BITS, int S0, class Fn>
TQKV_SIMD_INLINE void decode_value_half(const uint8_t* codes, int dim, int chunk, int k, Fn&& f) {
    using V = typename S::V;
    constexpr int NS = block_slots<BITS>();
    const V r = S::load(codes + size_t(chunk) * 64 + 32 * k);
    if constexpr (BITS == 3) {
        // Bits 0-1: the 2-bit part's chunk; bit 2: byte (chunk & 1) of each token's 16 bits in the
        // 1-bit part's chunk / 2 (coordinates 8 chunk .. 8 chunk + 7), spread so that bits 0-3 of
        // the even byte hold slots 0-3 and bits 0-3 of the odd byte slots 4-7.
        const V r1 = S::load(codes + part_bytes(dim, 2) + size_t(chunk / 2) * 64 + 32 * k);
        const V z = (chunk & 1) ? S::template srl16<8>(r1) : S::and_(r1, S::set16(0x00ff));
        const V y = S::or_(z, S::template sll16<4>(z)), m3 = S::set8(3), m4 = S::set8(4);
        [&]<int... i>(std::integer_sequence<int, i...>) TQKV_SIMD_LAMBDA {
            (f(i, S::or_(S::and_(S::template srl16<2 * i>(r), m3), bit2<S, i>(y, m4))), ...);
        }(std::make_integer_sequence<int, NS>{});
    } else {
        const V mask = S::set8((1 << BITS) - 1);
        [&]<int... i>(std::integer_sequence<int, i...>) TQKV_SIMD_LAMBDA {
            (f(i, S::and_(S::template srl16<BITS*(S0 + i)>(r), mask)), ...);
        }(std::make_integer_sequence<int, NS>{});
    }
}

// The integer sums of one block (slots S0 .. S0 + block_slots - 1 of chunk c, each with its pair)
// over the chunk's groups for H heads, added to the int32 lanes of sum[h][i] ([2i]: slot S0 + i,
// [2i + 1]: slot S0 + i + PAIR). B is the backend of the pass: S itself, or S::Half over the
// 16-byte half `part` of every 32-byte row (codes from byte 16 * part, the weights' half `part`).
template <class S, class B, int BITS, int H, int S0>
TQKV_SIMD_INLINE void value_sums(const uint8_t* const* codes, int groups, int dim, int c, typename B::V ct, int part,
                                 const GroupWeights<S>* w, typename B::V (*sum)[2 * block_slots<BITS>()]) {
    using V = typename B::V;
    const V m00ff = B::set16(0x00ff);
    for (int g = 0; g < groups; ++g)
        for (int k = 0; k < 2; ++k)
            decode_value_half<B, BITS, S0>(codes[g] + 16 * part, dim, c, k, [&](int i, V idx) TQKV_SIMD_LAMBDA {
                const V v = B::lookup(ct, idx);
                const V ev = B::and_(v, m00ff), od = B::template srl16<8>(v);
                for (int h = 0; h < H; ++h) {
                    V wk;
                    if constexpr (std::is_same_v<B, S>)
                        wk = w[h * kFastChunkGroups + g].half[k];
                    else
                        wk = S::part(w[h * kFastChunkGroups + g].half[k], part);
                    sum[h][2 * i] = B::add32(sum[h][2 * i], B::madd16(ev, wk));
                    sum[h][2 * i + 1] = B::add32(sum[h][2 * i + 1], B::madd16(od, wk));
                }
            });
}

// One block over the chunk's groups for H heads, added to the accumulator rows a[h]. A backend
// with a Half (simd.hpp) runs each 16-byte half of the rows as its own pass; the integer totals
// are the same either way (sums modulo 2^32, in any order).
template <class S, int BITS, int H, int S0>
TQKV_SIMD_INLINE void value_block(const uint8_t* const* codes, int groups, int dim, int c, typename S::V ct,
                                  const GroupWeights<S>* w, const float* f, const uint32_t* bias, float* const* a) {
    constexpr int NS = block_slots<BITS>(), PAIR = BITS == 3 ? 4 : 8 / BITS;
    uint32_t T[H][2 * NS];
    if constexpr (requires { typename S::Half; }) {
        // Both passes add to the same lanes (the second continues the first's sums): one
        // horizontal total per sum, not one per pass.
        using Hf = typename S::Half;
        const typename Hf::V cth = S::part(ct, 0);
        typename Hf::V sum[H][2 * NS];
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < 2 * NS; ++i) sum[h][i] = Hf::zero();
        value_sums<S, Hf, BITS, H, S0>(codes, groups, dim, c, cth, 0, w, sum);
        value_sums<S, Hf, BITS, H, S0>(codes, groups, dim, c, cth, 1, w, sum);
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < 2 * NS; ++i) T[h][i] = lane_total<Hf>(sum[h][i]);
    } else {
        typename S::V sum[H][2 * NS];
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < 2 * NS; ++i) sum[h][i] = S::zero();
        value_sums<S, S, BITS, H, S0>(codes, groups, dim, c, ct, 0, w, sum);
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < 2 * NS; ++i) T[h][i] = lane_total<S>(sum[h][i]);
    }
    for (int h = 0; h < H; ++h)
        for (int i = 0; i < 2 * NS; ++i) {
            const int j = c * chunk_coords<BITS>() + S0 + i / 2 + (i & 1) * PAIR;
            if (j >= dim) continue;  // unused slots of the last chunk
            float& r = a[h][j];
            r = r + float(int32_t(T[h][i] - bias[h])) * f[h];
        }
}

// One pass over the chunk's codes for H heads: weights w[h * kFastChunkGroups + g], factors f[h],
// bias corrections bias[h] = 128 sum W, accumulator rows a[h].
template <class S, int BITS, int H>
__attribute__((noinline)) void accumulate_heads(const uint8_t* const* codes, int groups, int dim, const FastValueTable& vt,
                                                const GroupWeights<S>* w, const float* f, const uint32_t* bias,
                                                float* const* a) {
    const typename S::V ct = S::broadcast16(vt.biased);
    const int chunks = (dim + chunk_coords<BITS>() - 1) / chunk_coords<BITS>();
    for (int c = 0; c < chunks; ++c) {
        value_block<S, BITS, H, 0>(codes, groups, dim, c, ct, w, f, bias, a);
        if constexpr (BITS == 1) value_block<S, BITS, H, 4>(codes, groups, dim, c, ct, w, f, bias, a);
    }
}

template <class S, int BITS>
void chunk_accumulate_bits(const uint8_t* const* codes, const float* n, const float* const* p, int groups, int p_stride,
                           int dim, const FastValueTable& vt, int heads, float* acc) {
    using F = typename S::F;
    constexpr int HP = S::kValueHeadsPerPass, kBatch = 8;
    GroupWeights<S> w[kBatch * kFastChunkGroups];
    float f[kBatch];
    uint32_t bias[kBatch];
    float* a[kBatch];
    for (int b0 = 0; b0 < heads; b0 += kBatch) {
        // The heads with a weight above 2^-100 in this chunk (the others' rows stay as they are).
        int active = 0;
        for (int h = b0; h < heads && h < b0 + kBatch; ++h) {
            // M: the largest weight (fmax(w, m) = w > m ? w : m passes a NaN weight over, as the
            // reference's max does; one horizontal max per head and chunk).
            F m = S::fset(0.0f);
            for (int g = 0; g < groups; ++g) {
                const float* pg = p[g] + size_t(h) * p_stride;
                const float* ng = n + g * kGroupTokens;
                for (int k = 0; k < 4; ++k) m = S::fmax(S::fmul(S::fload(pg + 8 * k), S::fload(ng + 8 * k)), m);
            }
            const float M = S::hmax(m) + 0.0f;
            if (!(M > 0x1p-100f)) continue;  // (32767 / M must stay finite)
            const F inv = S::fset(32767.0f / M);
            typename S::V total = S::zero();
            for (int g = 0; g < groups; ++g)
                w[active * kFastChunkGroups + g] =
                    group_weights<S>(p[g] + size_t(h) * p_stride, n + g * kGroupTokens, inv, total);
            f[active] = (M * (1.0f / 32767.0f)) * vt.inv_scale;
            bias[active] = 128u * lane_total<S>(total);
            a[active++] = acc + size_t(h) * dim;
        }
        int i = 0;
        for (; i + HP <= active; i += HP)
            accumulate_heads<S, BITS, HP>(codes, groups, dim, vt, w + i * kFastChunkGroups, f + i, bias + i, a + i);
        for (; i < active; ++i)
            accumulate_heads<S, BITS, 1>(codes, groups, dim, vt, w + i * kFastChunkGroups, f + i, bias + i, a + i);
    }
}

// codes[g], norms[g], p[g]: group g's value codes, fp16 norms and softmax numerators (head h at
// p[g] + h * p_stride), g < groups; batches of kFastChunkGroups.
template <class S>
void chunk_accumulate(const uint8_t* const* codes, const uint16_t* const* norms, const float* const* p, int groups,
                      int p_stride, int dim, int bits, const FastValueTable& vt, int heads, float* acc) {
    for (int g0 = 0; g0 < groups; g0 += kFastChunkGroups) {
        const int ng = groups - g0 < kFastChunkGroups ? groups - g0 : kFastChunkGroups;
        alignas(32) float n[kFastChunkGroups * kGroupTokens];
        for (int g = 0; g < ng; ++g) S::halves_to_float(norms[g0 + g], n + g * kGroupTokens, kGroupTokens);
        const uint8_t* const* c = codes + g0;
        const float* const* pg = p + g0;
        switch (bits) {
            case 1: chunk_accumulate_bits<S, 1>(c, n, pg, ng, p_stride, dim, vt, heads, acc); break;
            case 2: chunk_accumulate_bits<S, 2>(c, n, pg, ng, p_stride, dim, vt, heads, acc); break;
            case 3: chunk_accumulate_bits<S, 3>(c, n, pg, ng, p_stride, dim, vt, heads, acc); break;
            case 4: chunk_accumulate_bits<S, 4>(c, n, pg, ng, p_stride, dim, vt, heads, acc); break;
            default: return;  // the driver uses the exact kernels above 4 bits
        }
    }
}

}  // namespace tqkv::detail::fast

// Defines isa_fast_prepare_scores, isa_fast_chunk_scores and isa_fast_chunk_accumulate (the fast
// entries kernels.hpp declares) on backend B: one line in each kernels/<isa>/fast.cpp.
#define TQKV_DEFINE_FAST_KERNELS(isa, B)                                                                        \
    namespace tqkv::detail {                                                                                 \
    bool isa##_fast_prepare_scores(const float* q, const float* centroids, int dim, int bits, int heads,       \
                                   float scale, void* table) {                                                \
        return fast::prepare_scores<B>(q, centroids, dim, bits, heads, scale, table);                          \
    }                                                                                                          \
    void isa##_fast_chunk_scores(const uint8_t* const* codes, const uint16_t* const* norms, int groups,       \
                                 int dim, int bits, const void* table, int heads, float* out, int out_stride,  \
                                 bool add) {                                                                   \
        fast::chunk_scores<B>(codes, norms, groups, dim, bits, table, heads, out, out_stride, add);             \
    }                                                                                                          \
    void isa##_fast_chunk_accumulate(const uint8_t* const* codes, const uint16_t* const* norms,               \
                                     const float* const* p, int groups, int p_stride, int dim, int bits,        \
                                     const FastValueTable& table, int heads, float* acc) {                      \
        fast::chunk_accumulate<B>(codes, norms, p, groups, p_stride, dim, bits, table, heads, acc);             \
    }                                                                                                          \
    }  // namespace tqkv::detail
