// KV bank codecs: int8 / int4 / int2 / fp8-e4m3 with fp16 scales (and zero points), per-row groups or per-channel
// params over row segments (capsules). Bit-exact twin of kvi_engine/bank/quant.py (the format spec lives there): stats in
// fp32, params rounded to fp16 before the codes are computed from them, round-half-even everywhere; intN ranges
// clipped by a deterministic MSE search whose error sums are integers (see clip_sse).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kvi/parallel.h"

namespace kvi::quant {

enum class Scheme { Int8, Int4, Int2, Fp8 };

inline Scheme parse_scheme(const std::string& s) {
    if (s == "int8") return Scheme::Int8;
    if (s == "int4") return Scheme::Int4;
    if (s == "int2") return Scheme::Int2;
    if (s == "fp8") return Scheme::Fp8;
    throw std::invalid_argument("unknown quantisation scheme '" + s + "' (expected int8, int4, int2 or fp8)");
}

inline int bits_of(Scheme s) { return s == Scheme::Int4 ? 4 : s == Scheme::Int2 ? 2 : 8; }
inline int64_t code_dim(Scheme s, int64_t d) { return d * bits_of(s) / 8; }
inline bool has_zero(Scheme s) { return s == Scheme::Int4 || s == Scheme::Int2; }

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE binary16, round to nearest even, overflow -> inf (what torch's .half() does).
inline uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                        // below 2^-14: subnormal half (or zero)
        float v = f32_from(ax) + 0.5f;              // 0.5 = 2^-1: aligns the 2^-24 unit at the mantissa's LSB
        return sign | static_cast<uint16_t>(f32_bits(v) - f32_bits(0.5f));
    }
    uint32_t mant_odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + mant_odd;                  // rebias exponent (-112 << 23) and round half to even
    return sign | static_cast<uint16_t>(ax >> 13);
}

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
        return f32_from(f32_bits(v) | sign);
    }
    if (exp == 31) return f32_from(sign | 0x7f800000u | (mant << 13));
    return f32_from(sign | ((exp + 112) << 23) | (mant << 13));
}

// float8 e4m3fn (no inf, max 448), round to nearest even; the caller clamps to [-448, 448]. Same algorithm as
// c10::detail::fp8e4m3fn_from_fp32_value so codes match torch's cast bit for bit.
inline uint8_t f32_to_e4m3(float f) {
    uint32_t x = f32_bits(f);
    const uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint8_t r;
    if (x >= (1087u << 20)) {
        r = 0x7f;
    } else if (x < (121u << 23)) {
        const uint32_t denorm = 141u << 23;
        r = static_cast<uint8_t>(f32_bits(f32_from(x) + f32_from(denorm)) - denorm);
    } else {
        uint32_t mant_odd = (x >> 20) & 1u;
        x += (static_cast<uint32_t>(7 - 127) << 23) + 0x7ffffu + mant_odd;
        r = static_cast<uint8_t>(x >> 20);
    }
    return r | static_cast<uint8_t>(sign >> 24);
}

inline float e4m3_to_f32(uint8_t c) {
    float sign = (c & 0x80) ? -1.0f : 1.0f;
    int exp = (c >> 3) & 0xf, mant = c & 7;
    if (exp == 15 && mant == 7) return std::nanf("");
    if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);
    return sign * std::ldexp(static_cast<float>(8 + mant), exp - 10);
}

struct Params {
    float s, z;  // fp16-rounded scale and zero, as fp32
};

// fp16 scale (and zero) of one group with stats lo/hi; writes the params, returns them as fp32.
inline Params make_params(Scheme sc, float lo, float hi, uint16_t* scale, uint16_t* zero) {
    if (sc == Scheme::Int8 || sc == Scheme::Fp8) {
        float amax = std::max(std::fabs(hi), std::fabs(lo));
        *scale = f32_to_f16(amax / (sc == Scheme::Int8 ? 127.0f : 448.0f));
        return {f16_to_f32(*scale), 0.0f};
    }
    float levels = static_cast<float>((1 << bits_of(sc)) - 1);
    *scale = f32_to_f16((hi - lo) / levels);
    *zero = f32_to_f16(lo);
    return {f16_to_f32(*scale), f16_to_f32(*zero)};
}

inline uint8_t encode_one(Scheme sc, float x, Params p);

// Fixed-point squared reconstruction error of the n values x[i * stride] under the params of [lo, hi] (intN):
// sum of rint(u * u * 2^30), u = (q * s + z - x) / m. Integer, so the sum has no order: the PyTorch twin gets the
// same number whatever its reduction order. The terms are >= 0, so the sum stops once it reaches ``bound`` (the
// candidate cannot win then) -- the search's result is the same as with full sums.
inline int64_t clip_sse(Scheme sc, const float* x, int64_t n, int64_t stride, float lo, float hi, float m,
                        int64_t bound = std::numeric_limits<int64_t>::max()) {
    uint16_t s16, z16;
    const Params p = make_params(sc, lo, hi, &s16, &z16);
    const float levels = static_cast<float>((1 << bits_of(sc)) - 1);
    // Round-half-even by the add-and-subtract trick (default rounding mode, no -ffast-math): the same results as
    // nearbyint on these ranges (codes in [0, 15] after the clamp; terms < 2^51), and the loop vectorises.
    const float f_magic = 8388608.0f;            // 2^23
    const double d_magic = 6755399441055744.0;   // 1.5 * 2^52
    int64_t sse = 0;
    for (int64_t i0 = 0; i0 < n && sse < bound; i0 += 16) {
        double block = 0.0;  // sums of at most 16 integers < 2^36: exact in double
        for (int64_t i = i0, e = std::min(n, i0 + 16); i < e; ++i) {
            const float xi = x[i * stride];
            float r = p.s > 0 ? (xi - p.z) / p.s : 0.0f;
            r = std::min(levels, std::max(0.0f, r));
            const float q = (r + f_magic) - f_magic;
            const float u = (q * p.s + p.z - xi) / m;
            block += (static_cast<double>(u * u * 1073741824.0f) + d_magic) - d_magic;
        }
        sse += static_cast<int64_t>(block);
    }
    return sse;
}

// MSE-searched clipped range of an intN group (spec: kvi_engine/bank/quant.py): [lo + a*r, hi - b*r] over a grid of
// (a, b), first a = b, then each end alone; a candidate wins only with a strictly smaller error.
inline void clip_range(Scheme sc, const float* x, int64_t n, int64_t stride, float& lo, float& hi) {
    const float m = std::max(std::fabs(lo), std::fabs(hi)), r = hi - lo;
    if (!(r > 0.0f) || !(m < 32768.0f)) return;
    float a = 0.0f, b = 0.0f;
    int64_t best = clip_sse(sc, x, n, stride, lo, hi, m);
    auto try_ab = [&](float ca, float cb) {
        const int64_t e = clip_sse(sc, x, n, stride, lo + ca * r, hi - cb * r, m, best);
        if (e < best) best = e, a = ca, b = cb;
    };
    for (int i = 1; i <= 10; ++i) try_ab(static_cast<float>(i) / 32.0f, static_cast<float>(i) / 32.0f);
    const float a0 = a;
    for (int j = 0; j <= 8; ++j)
        if (j != 4) try_ab(a0 + static_cast<float>(j - 4) / 64.0f, b);
    const float b0 = b;
    for (int j = 0; j <= 8; ++j)
        if (j != 4) try_ab(a, b0 + static_cast<float>(j - 4) / 64.0f);
    const float lo2 = lo + a * r, hi2 = hi - b * r;
    lo = lo2, hi = hi2;
}

inline uint8_t encode_one(Scheme sc, float x, Params p) {
    if (sc == Scheme::Int8) {
        float r = p.s > 0 ? std::nearbyint(x / p.s) : 0.0f;
        return static_cast<uint8_t>(static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, r))));
    }
    if (sc == Scheme::Fp8) {
        float r = p.s > 0 ? x / p.s : 0.0f;
        return f32_to_e4m3(std::min(448.0f, std::max(-448.0f, r)));
    }
    float levels = static_cast<float>((1 << bits_of(sc)) - 1);
    float r = p.s > 0 ? std::nearbyint((x - p.z) / p.s) : 0.0f;
    return static_cast<uint8_t>(std::min(levels, std::max(0.0f, r)));
}

inline void put_code(Scheme sc, uint8_t* row, int64_t d, uint8_t q) {
    const int b = bits_of(sc);
    if (b == 8) {
        row[d] = q;
        return;
    }
    const int per = 8 / b;
    row[d / per] |= static_cast<uint8_t>(q << ((d % per) * b));
}

inline float decode_one(Scheme sc, const uint8_t* row, int64_t d, float s, float z) {
    switch (sc) {
        case Scheme::Int8: return static_cast<float>(static_cast<int8_t>(row[d])) * s;
        case Scheme::Fp8: return e4m3_to_f32(row[d]) * s;
        default: {
            const int b = bits_of(sc), per = 8 / b;
            int q = (row[d / per] >> ((d % per) * b)) & ((1 << b) - 1);
            return static_cast<float>(q) * s + z;
        }
    }
}

inline void check_finite(const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) throw std::invalid_argument("cannot quantise non-finite keys/values (inf or nan in the input)");
}

inline void check_group(Scheme sc, int64_t d, int64_t g) {
    const int per = 8 / bits_of(sc);
    if (d <= 0 || g <= 0 || d % g || g % per || d % per)
        throw std::invalid_argument("group size " + std::to_string(g) + " must divide head_dim " + std::to_string(d) +
                                    " and hold whole bytes");
    if ((sc == Scheme::Int8 || sc == Scheme::Fp8) && g != d)
        throw std::invalid_argument("int8/fp8 use one scale per row: group size must equal head_dim");
}

// x [n, d] -> codes [n, code_dim], scale/zero [n, d/g] (zero only for int4/int2).
inline void encode_rows(Scheme sc, const float* x, int64_t n, int64_t d, int64_t g, uint8_t* codes, uint16_t* scale,
                        uint16_t* zero, int threads) {
    check_group(sc, d, g);
    check_finite(x, n * d);
    const int64_t cd = code_dim(sc, d), ng = d / g, chunk = 256;
    parallel_for((n + chunk - 1) / chunk, resolve_threads(threads, (n + chunk - 1) / chunk), [&](int, int64_t c) {
        for (int64_t r = c * chunk, e = std::min(n, r + chunk); r < e; ++r) {
            const float* xr = x + r * d;
            uint8_t* out = codes + r * cd;
            std::memset(out, 0, cd);
            for (int64_t gi = 0; gi < ng; ++gi) {
                const float* xg = xr + gi * g;
                float lo = xg[0], hi = xg[0];
                for (int64_t j = 1; j < g; ++j) lo = std::min(lo, xg[j]), hi = std::max(hi, xg[j]);
                if (has_zero(sc)) clip_range(sc, xg, g, 1, lo, hi);
                uint16_t zdummy;
                Params p = make_params(sc, lo, hi, scale + r * ng + gi, zero ? zero + r * ng + gi : &zdummy);
                for (int64_t j = 0; j < g; ++j) put_code(sc, out, gi * g + j, encode_one(sc, xg[j], p));
            }
        }
    });
}

// x [n, d] with rows grouped by indptr [c + 1] -> codes [n, code_dim], scale/zero [c, d]: one param per channel
// per segment (keys per channel within a capsule).
inline void encode_columns(Scheme sc, const float* x, int64_t n, int64_t d, const int64_t* indptr, int64_t c,
                           uint8_t* codes, uint16_t* scale, uint16_t* zero, int threads) {
    check_group(sc, d, sc == Scheme::Int8 || sc == Scheme::Fp8 ? d : 8 / bits_of(sc));
    if (indptr[0] != 0 || indptr[c] != n)
        throw std::invalid_argument("indptr must start at 0 and end at the number of rows");
    for (int64_t i = 0; i < c; ++i)
        if (indptr[i + 1] < indptr[i]) throw std::invalid_argument("indptr must be non-decreasing");
    check_finite(x, n * d);
    const int64_t cd = code_dim(sc, d);
    std::memset(codes, 0, static_cast<size_t>(n * cd));
    parallel_for(c, resolve_threads(threads, c), [&](int, int64_t s) {
        const int64_t r0 = indptr[s], r1 = indptr[s + 1];
        for (int64_t j = 0; j < d; ++j) {
            float lo = r1 > r0 ? x[r0 * d + j] : 0.0f, hi = lo;
            for (int64_t r = r0 + 1; r < r1; ++r) lo = std::min(lo, x[r * d + j]), hi = std::max(hi, x[r * d + j]);
            uint16_t zdummy;
            if (r1 == r0) {
                lo = std::numeric_limits<float>::infinity(), hi = -lo;  // empty segment: what amin/amax give
            } else if (has_zero(sc)) {
                clip_range(sc, x + r0 * d + j, r1 - r0, d, lo, hi);
            }
            Params p = make_params(sc, lo, hi, scale + s * d + j, zero ? zero + s * d + j : &zdummy);
            for (int64_t r = r0; r < r1; ++r) put_code(sc, codes + r * cd, j, encode_one(sc, x[r * d + j], p));
        }
    });
}

// out[i] = decode(codes[code_rows[i]]) with params row param_rows[i] of scale/zero [*, ng]; out [m, d] fp32.
inline void gather_decode(Scheme sc, const uint8_t* codes, int64_t num_code_rows, int64_t d, const uint16_t* scale,
                          const uint16_t* zero, int64_t num_param_rows, int64_t ng, const int64_t* code_rows,
                          const int64_t* param_rows, int64_t m, float* out, int threads) {
    const int per = 8 / bits_of(sc);
    if (d <= 0 || d % per)
        throw std::invalid_argument("head_dim " + std::to_string(d) + " does not fill whole code bytes (" +
                                    std::to_string(per) + " values per byte)");
    if (ng <= 0 || d % ng) throw std::invalid_argument("params per row must divide head_dim");
    for (int64_t i = 0; i < m; ++i) {
        if (code_rows[i] < 0 || code_rows[i] >= num_code_rows)
            throw std::out_of_range("code row " + std::to_string(code_rows[i]) + " out of range [0, " +
                                    std::to_string(num_code_rows) + ")");
        if (param_rows[i] < 0 || param_rows[i] >= num_param_rows)
            throw std::out_of_range("param row " + std::to_string(param_rows[i]) + " out of range [0, " +
                                    std::to_string(num_param_rows) + ")");
    }
    const int64_t cd = code_dim(sc, d), g = d / ng, chunk = 256;
    parallel_for((m + chunk - 1) / chunk, resolve_threads(threads, (m + chunk - 1) / chunk), [&](int, int64_t c) {
        for (int64_t i = c * chunk, e = std::min(m, i + chunk); i < e; ++i) {
            const uint8_t* row = codes + code_rows[i] * cd;
            const uint16_t* sr = scale + param_rows[i] * ng;
            const uint16_t* zr = zero ? zero + param_rows[i] * ng : nullptr;
            float* o = out + i * d;
            for (int64_t gi = 0; gi < ng; ++gi) {
                const float s = f16_to_f32(sr[gi]), z = zr ? f16_to_f32(zr[gi]) : 0.0f;
                for (int64_t j = gi * g; j < (gi + 1) * g; ++j) o[j] = decode_one(sc, row, j, s, z);
            }
        }
    });
}

}  // namespace kvi::quant
