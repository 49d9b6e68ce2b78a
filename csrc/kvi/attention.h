// Fused prefix attention on the CPU: each query attends to its row's injected bank tokens (read in their storage
// format, dequantised and RoPE-rotated to their slots on the fly), then to its own KV (causal or an explicit mask).
// Returns the output and the log-sum-exp, so partial results merge exactly.
//
// Work items are (row, kv head, query tile): every item streams its row's injected keys/values once, in blocks of
// kBlock slots, and reuses each block for all `group * tile` query rows of that kv head (GQA sharing). Inner loops
// are register-blocked micro-kernels on GCC/Clang generic 4-float vectors (SSE/NEON without -march flags).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvi/parallel.h"
#include "kvi/quant.h"

namespace kvi::attn {

// Storage formats of kvi_engine/quant.py (the spec): floats, or codes with fp16 scale (+ zero) per group.
enum class Format : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3, i4 = 4, i2 = 5, fp8 = 6 };
// Rounding applied to injected K/V as the reference does (it converts them to the activation dtype first).
enum class Round : int { none = 0, f16 = 1, bf16 = 2 };

inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float f16_to_float(uint16_t h) {
    // Exact for normals and subnormals: shift the exponent/mantissa into place and rebias by 2^112.
    const uint32_t em = h & 0x7fffu;
    float f = bits_to_float(em << 13) * 0x1.0p+112f;
    uint32_t u = float_to_bits(f);
    if (em >= 0x7c00u) u |= 0x7f800000u;  // inf / nan
    return bits_to_float(u | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline float round_bf16(float f) {
    uint32_t u = float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;  // nan
    u += 0x7fffu + ((u >> 16) & 1u);
    return bits_to_float(u & 0xffff0000u);
}

inline uint16_t float_to_f16(float f) {
    // Round-to-nearest-even without branches on the value (FP16 library's formulation).
    float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = float_to_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xff000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = bits_to_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = float_to_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

inline float round_f16(float f) { return f16_to_float(float_to_f16(f)); }

// One layer's keys or values in storage: codes [tokens, kv_heads, code_dim] and, for quantised formats, fp16
// params [param_rows, kv_heads, head_dim / group] (scale, and zero for int4/int2). Params are indexed by token, or
// by the slot's capsule row when per_capsule (per-channel keys: group 1).
struct Source {
    const void* codes = nullptr;
    const uint16_t* scale = nullptr;
    const uint16_t* zero = nullptr;
    Format format = Format::f32;
    int64_t tokens = 0;
    int64_t param_rows = 0;
    int64_t group = 0;
    bool per_capsule = false;
};

inline bool quantised(Format f) { return static_cast<int>(f) >= static_cast<int>(Format::i8); }

inline int64_t code_dim(Format f, int64_t d) { return f == Format::i4 ? d / 2 : f == Format::i2 ? d / 4 : d; }

struct Problem {
    int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0;
    int64_t num_slots = 0;   // prefix_len + injected slots: the width of the slot tables
    int64_t prefix_len = 0;
    const float* query = nullptr;    // [batch, q_heads, q_len, head_dim]
    const float* own_k = nullptr;    // [batch, kv_heads, kv_len, head_dim]
    const float* own_v = nullptr;
    const uint8_t* own_mask = nullptr;  // [batch, q_len, kv_len], nonzero = attend; null = causal
    Source bank_k, bank_v, prefix_k, prefix_v;
    const int32_t* token = nullptr;    // [batch, num_slots]: prefix token (slot < prefix_len) or bank token
    const int32_t* capsule_row = nullptr;  // [batch, num_slots]: param row of per-capsule sources
    const uint8_t* visible = nullptr;  // [batch, num_slots]
    const float* cos = nullptr;        // [batch, num_slots, head_dim / 2]
    const float* sin = nullptr;
    float scale = 1.0f;
    Round round = Round::none;
    float* out = nullptr;  // [batch, q_heads, q_len, head_dim]
    float* lse = nullptr;  // [batch, q_heads, q_len]
};

inline void validate(const Problem& p) {
    auto fail = [](const std::string& m) { throw std::invalid_argument("prefix_attention: " + m); };
    if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1 || p.q_len < 0 || p.kv_len < 0 || p.num_slots < 0)
        fail("empty or negative dimension");
    if (p.q_heads % p.kv_heads) fail("q_heads " + std::to_string(p.q_heads) + " is not a multiple of kv_heads " +
                                     std::to_string(p.kv_heads));
    if (p.head_dim < 4 || p.head_dim % 4) fail("head_dim must be a multiple of 4, got " + std::to_string(p.head_dim));
    if (p.prefix_len < 0 || p.prefix_len > p.num_slots) fail("prefix_len exceeds the slot table width");
    if (p.prefix_k.tokens != p.prefix_len || p.prefix_v.tokens != p.prefix_len)
        fail("prefix K/V hold " + std::to_string(p.prefix_k.tokens) + " tokens, the plan expects " +
             std::to_string(p.prefix_len));
    if (p.bank_k.tokens != p.bank_v.tokens) fail("bank K and V hold different token counts");
    if (quantised(p.prefix_k.format) || quantised(p.prefix_v.format)) fail("the shared prefix is stored as floats");
    const bool per_capsule = p.bank_k.per_capsule || p.bank_v.per_capsule;
    if (per_capsule && !p.capsule_row) fail("per-capsule params need the capsule_row table");
    for (const Source* s : {&p.bank_k, &p.bank_v}) {
        if (!quantised(s->format)) continue;
        if (!s->scale || s->group < 1 || p.head_dim % s->group || (s->format == Format::i4 && p.head_dim % 2) ||
            (s->format == Format::i2 && p.head_dim % 4))
            fail("quantised source needs fp16 scales and a group size dividing head_dim (and whole code bytes)");
        const bool needs_zero = s->format == Format::i4 || s->format == Format::i2;
        if (needs_zero != (s->zero != nullptr)) fail(needs_zero ? "int4/int2 need zero points" : "unexpected zero points");
        if (!s->per_capsule && s->param_rows != s->tokens) fail("per-token params must have one row per token");
    }
    for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t j = 0; j < p.num_slots; ++j) {
            const int64_t i = b * p.num_slots + j;
            if (!p.visible[i]) continue;
            const int64_t limit = j < p.prefix_len ? p.prefix_len : p.bank_k.tokens;
            if (p.token[i] < 0 || p.token[i] >= limit)
                fail("slot " + std::to_string(j) + " of row " + std::to_string(b) + " reads token " +
                     std::to_string(p.token[i]) + ", outside [0, " + std::to_string(limit) + ")");
            if (per_capsule && j >= p.prefix_len)
                for (const Source* s : {&p.bank_k, &p.bank_v})
                    if (s->per_capsule && (p.capsule_row[i] < 0 || p.capsule_row[i] >= s->param_rows))
                        fail("slot " + std::to_string(j) + " of row " + std::to_string(b) + " reads capsule row " +
                             std::to_string(p.capsule_row[i]) + ", outside [0, " + std::to_string(s->param_rows) + ")");
        }
}

inline const float* fp8_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(256);
        for (int c = 0; c < 256; ++c) t[c] = kvi::quant::e4m3_to_f32(static_cast<uint8_t>(c));
        return t;
    }();
    return table.data();
}

// Row (token, head) of `s` dequantised to fp32: dst[d] = code(d) * scale[d / G] (+ zero[d / G]).
template <Format F>
inline void load_row(const Source& s, int64_t token, int64_t param_row, int64_t h, int64_t H, int64_t n, float* dst) {
    const int64_t row = token * H + h;
    if constexpr (F == Format::f32) {
        const float* x = static_cast<const float*>(s.codes) + row * n;
        for (int64_t d = 0; d < n; ++d) dst[d] = x[d];
    } else if constexpr (F == Format::f16) {
        const uint16_t* x = static_cast<const uint16_t*>(s.codes) + row * n;
        for (int64_t d = 0; d < n; ++d) dst[d] = f16_to_float(x[d]);
    } else if constexpr (F == Format::bf16) {
        const uint16_t* x = static_cast<const uint16_t*>(s.codes) + row * n;
        for (int64_t d = 0; d < n; ++d) dst[d] = bf16_to_float(x[d]);
    } else {
        const uint8_t* x = static_cast<const uint8_t*>(s.codes) + row * code_dim(F, n);
        const int64_t G = s.group, pr = (s.per_capsule ? param_row : token) * H + h;
        const uint16_t* scale = s.scale + pr * (n / G);
        const uint16_t* zero = s.zero ? s.zero + pr * (n / G) : nullptr;
        const float* lut = F == Format::fp8 ? fp8_table() : nullptr;
        for (int64_t g = 0, d0 = 0; d0 < n; ++g, d0 += G) {
            const float sc = f16_to_float(scale[g]);
            float* o = dst + d0;
            if constexpr (F == Format::i8) {
                const int8_t* q = reinterpret_cast<const int8_t*>(x) + d0;
                for (int64_t e = 0; e < G; ++e) o[e] = static_cast<float>(q[e]) * sc;
            } else if constexpr (F == Format::fp8) {
                for (int64_t e = 0; e < G; ++e) o[e] = lut[x[d0 + e]] * sc;
            } else if constexpr (F == Format::i4) {
                const float z = f16_to_float(zero[g]);
                for (int64_t e = 0; e < G; ++e) {
                    const int64_t d = d0 + e;
                    o[e] = static_cast<float>((x[d >> 1] >> ((d & 1) * 4)) & 15) * sc + z;
                }
            } else {
                const float z = f16_to_float(zero[g]);
                for (int64_t e = 0; e < G; ++e) {
                    const int64_t d = d0 + e;
                    o[e] = static_cast<float>((x[d >> 2] >> ((d & 3) * 2)) & 3) * sc + z;
                }
            }
        }
    }
}

inline void load_prefix_row(const Source& s, int64_t token, int64_t h, int64_t H, int64_t n, float* dst) {
    switch (s.format) {
        case Format::f16: return load_row<Format::f16>(s, token, 0, h, H, n, dst);
        case Format::bf16: return load_row<Format::bf16>(s, token, 0, h, H, n, dst);
        default: return load_row<Format::f32>(s, token, 0, h, H, n, dst);
    }
}

inline void round_row(Round r, float* x, int64_t n) {
    if (r == Round::f16)
        for (int64_t d = 0; d < n; ++d) x[d] = round_f16(x[d]);
    else if (r == Round::bf16)
        for (int64_t d = 0; d < n; ++d) x[d] = round_bf16(x[d]);
}

constexpr int64_t kBlock = 64;       // slots per block: kT is head_dim x kBlock floats
constexpr int64_t kRowsTarget = 64;  // query rows (group x tile) sharing one pass over the keys
constexpr int64_t kRowBlock = 4;     // rows per micro-kernel step (row counts are padded to a multiple)

// GCC/Clang generic vectors: 4 floats map to SSE/NEON on any target, no -march needed.
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
    f32x4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store4(float* p, f32x4 v) { std::memcpy(p, &v, sizeof v); }
inline f32x4 splat4(float x) { return f32x4{x, x, x, x}; }

// e^x, Cephes single-precision polynomial (about 1 ulp); -inf and underflow give 0.
inline f32x4 exp4(f32x4 x) {
    const f32x4 lo = splat4(-87.3365447504f), hi = splat4(88.3762626647949f);
    const i32x4 under = x < lo;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    f32x4 fx = x * splat4(1.44269504088896341f) + splat4(0.5f);
    i32x4 n = __builtin_convertvector(fx, i32x4);
    f32x4 fn = __builtin_convertvector(n, f32x4);
    const i32x4 too_big = fn > fx;
    n += too_big;  // true lanes are -1: floor for negative inputs
    fn = __builtin_convertvector(n, f32x4);
    const f32x4 r = x - fn * splat4(0.693359375f) - fn * splat4(-2.12194440e-4f);
    f32x4 y = splat4(1.9875691500e-4f);
    y = y * r + splat4(1.3981999507e-3f);
    y = y * r + splat4(8.3334519073e-3f);
    y = y * r + splat4(4.1665795894e-2f);
    y = y * r + splat4(1.6666665459e-1f);
    y = y * r + splat4(5.0000001201e-1f);
    y = y * (r * r) + r + splat4(1.0f);
    f32x4 pow2;
    const i32x4 bits = (n + 127) << 23;
    std::memcpy(&pow2, &bits, sizeof pow2);
    y = y * pow2;
    return under ? splat4(0.0f) : y;
}

struct Workspace {
    std::vector<float> q, acc, s, kT, v, m, l, row;
    void resize(int64_t rows, int64_t D) {
        q.resize(rows * D), acc.resize(rows * D), s.resize(rows * kBlock), kT.resize(D * kBlock);
        v.resize(kBlock * D), m.resize(rows), l.resize(rows), row.resize(2 * D);
    }
};

// Online-softmax update of `rows` (a multiple of kRowBlock) query rows with a block of nb keys (kT: [D][kBlock],
// columns past nb hold finite stale values) and values (v: [nb][D]). mask(r, n) -> false hides key n from row r.
template <class Mask>
inline void attend_block(Workspace& w, int64_t rows, int64_t nb, int64_t D, float scale, const float* v, Mask&& mask) {
    const float ninf = -std::numeric_limits<float>::infinity();
    const int64_t nb4 = (nb + 3) & ~int64_t(3), nb8 = (nb + 7) & ~int64_t(7);
    // Scores: 4 rows x 8 keys of accumulators, one kT row load shared by 4 rows.
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const float* q0 = w.q.data() + r0 * D;
        for (int64_t n0 = 0; n0 < nb8; n0 += 8) {
            f32x4 a[kRowBlock][2] = {};
            for (int64_t d = 0; d < D; ++d) {
                const float* kd = w.kT.data() + d * kBlock + n0;
                const f32x4 k0 = load4(kd), k1 = load4(kd + 4);
                for (int64_t r = 0; r < kRowBlock; ++r) {
                    const f32x4 qd = splat4(q0[r * D + d]);
                    a[r][0] += qd * k0;
                    a[r][1] += qd * k1;
                }
            }
            for (int64_t r = 0; r < kRowBlock; ++r) {
                float* sr = w.s.data() + (r0 + r) * kBlock + n0;
                store4(sr, a[r][0]);
                store4(sr + 4, a[r][1]);
            }
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        float* sr = w.s.data() + r * kBlock;
        float bmax = ninf;
        for (int64_t n = 0; n < nb4; ++n) {
            sr[n] = n < nb && mask(r, n) ? sr[n] * scale : ninf;
            bmax = std::max(bmax, sr[n]);
        }
        const float m_new = std::max(w.m[r], bmax);
        if (m_new == ninf) {
            std::fill(sr, sr + nb4, 0.0f);
            continue;
        }
        const float corr = w.m[r] == ninf ? 0.0f : std::exp(w.m[r] - m_new);
        f32x4 sum4 = {};
        for (int64_t n = 0; n < nb4; n += 4) {
            const f32x4 e = exp4(load4(sr + n) - splat4(m_new));
            store4(sr + n, e);
            sum4 += e;
        }
        w.l[r] = w.l[r] * corr + (sum4[0] + sum4[1] + sum4[2] + sum4[3]);
        w.m[r] = m_new;
        float* ar = w.acc.data() + r * D;
        if (corr != 1.0f)
            for (int64_t d = 0; d < D; ++d) ar[d] *= corr;
    }
    // acc += P V: 4 rows x 4 channels of accumulators, one V load shared by 4 rows.
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const float* p0 = w.s.data() + r0 * kBlock;
        for (int64_t d0 = 0; d0 < D; d0 += 4) {
            f32x4 a[kRowBlock];
            for (int64_t r = 0; r < kRowBlock; ++r) a[r] = load4(w.acc.data() + (r0 + r) * D + d0);
            for (int64_t n = 0; n < nb; ++n) {
                const f32x4 vn = load4(v + n * D + d0);
                for (int64_t r = 0; r < kRowBlock; ++r) a[r] += splat4(p0[r * kBlock + n]) * vn;
            }
            for (int64_t r = 0; r < kRowBlock; ++r) store4(w.acc.data() + (r0 + r) * D + d0, a[r]);
        }
    }
}

template <Format F>
void run_item(const Problem& p, Workspace& w, int64_t b, int64_t h, int64_t q0, int64_t q1) {
    const int64_t D = p.head_dim, half = D / 2, group = p.q_heads / p.kv_heads, tile = q1 - q0;
    const int64_t rows = group * tile, padded = (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
    const float ninf = -std::numeric_limits<float>::infinity();
    std::fill(w.q.begin() + rows * D, w.q.begin() + padded * D, 0.0f);
    for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < tile; ++i)
            std::memcpy(w.q.data() + (g * tile + i) * D,
                        p.query + (((b * p.q_heads + h * group + g) * p.q_len) + q0 + i) * D, D * sizeof(float));
    std::fill(w.acc.begin(), w.acc.begin() + padded * D, 0.0f);
    std::fill(w.m.begin(), w.m.begin() + padded, ninf);
    std::fill(w.l.begin(), w.l.begin() + padded, 0.0f);

    // Injected slots: gather visible ones into blocks, dequantise, rotate, attend.
    const int32_t* tok = p.token + b * p.num_slots;
    const uint8_t* vis = p.visible + b * p.num_slots;
    float* k = w.row.data();
    int64_t nb = 0;
    auto flush = [&]() {
        attend_block(w, padded, nb, D, p.scale, w.v.data(), [](int64_t, int64_t) { return true; });
        nb = 0;
    };
    for (int64_t j = 0; j < p.num_slots; ++j) {
        if (!vis[j]) continue;
        float* vrow = w.v.data() + nb * D;
        if (j < p.prefix_len) {
            load_prefix_row(p.prefix_k, tok[j], h, p.kv_heads, D, k);
            load_prefix_row(p.prefix_v, tok[j], h, p.kv_heads, D, vrow);
        } else {
            const int64_t crow = p.capsule_row ? p.capsule_row[b * p.num_slots + j] : 0;
            load_row<F>(p.bank_k, tok[j], crow, h, p.kv_heads, D, k);
            load_row<F>(p.bank_v, tok[j], crow, h, p.kv_heads, D, vrow);
        }
        round_row(p.round, k, D);
        round_row(p.round, vrow, D);
        const float* c = p.cos + (b * p.num_slots + j) * half;
        const float* s = p.sin + (b * p.num_slots + j) * half;
        float* kr = k + D;
        for (int64_t d = 0; d < half; ++d) {
            kr[d] = k[d] * c[d] - k[d + half] * s[d];
            kr[d + half] = k[d + half] * c[d] + k[d] * s[d];
        }
        round_row(p.round, kr, D);
        for (int64_t d = 0; d < D; ++d) w.kT[d * kBlock + nb] = kr[d];
        if (++nb == kBlock) flush();
    }
    if (nb) flush();

    // Own KV: causal (query i sits at kv position kv_len - q_len + i) or the explicit mask.
    const int64_t shift = p.kv_len - p.q_len;
    const int64_t end = p.own_mask ? p.kv_len : std::min(p.kv_len, std::max<int64_t>(0, q1 + shift));
    const float* ok = p.own_k + (b * p.kv_heads + h) * p.kv_len * D;
    const float* ov = p.own_v + (b * p.kv_heads + h) * p.kv_len * D;
    for (int64_t j0 = 0; j0 < end; j0 += kBlock) {
        const int64_t n = std::min(kBlock, end - j0);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t d = 0; d < D; ++d) w.kT[d * kBlock + t] = ok[(j0 + t) * D + d];
        if (p.own_mask) {
            const uint8_t* mb = p.own_mask + b * p.q_len * p.kv_len;
            attend_block(w, padded, n, D, p.scale, ov + j0 * D,
                         [&](int64_t r, int64_t t) { return mb[(q0 + r % tile) * p.kv_len + j0 + t] != 0; });
        } else {
            attend_block(w, padded, n, D, p.scale, ov + j0 * D,
                         [&](int64_t r, int64_t t) { return j0 + t <= q0 + r % tile + shift; });
        }
    }

    for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < tile; ++i) {
            const int64_t r = g * tile + i, hq = h * group + g;
            const int64_t o = (b * p.q_heads + hq) * p.q_len + q0 + i;
            const float l = w.l[r];
            float* dst = p.out + o * D;
            const float* ar = w.acc.data() + r * D;
            if (l > 0.0f) {
                const float inv = 1.0f / l;
                for (int64_t d = 0; d < D; ++d) dst[d] = ar[d] * inv;
                p.lse[o] = w.m[r] + std::log(l);
            } else {
                for (int64_t d = 0; d < D; ++d) dst[d] = 0.0f;
                p.lse[o] = ninf;
            }
        }
}

template <Format F>
void run_format(const Problem& p, int threads) {
    const int64_t group = p.q_heads / p.kv_heads;
    const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(p.q_len, kRowsTarget / group));
    const int64_t tiles = (p.q_len + tile - 1) / tile;
    const int64_t items = p.batch * p.kv_heads * tiles;
    const int workers = resolve_threads(threads, items);
    std::vector<Workspace> ws(workers);
    for (auto& w : ws) w.resize((group * tile + kRowBlock - 1) / kRowBlock * kRowBlock, p.head_dim);
    parallel_for(items, workers, [&](int worker, int64_t item) {
        const int64_t t = item % tiles, bh = item / tiles;
        const int64_t q0 = t * tile, q1 = std::min(p.q_len, q0 + tile);
        run_item<F>(p, ws[worker], bh / p.kv_heads, bh % p.kv_heads, q0, q1);
    });
}

inline void prefix_attention(const Problem& p, int threads) {
    validate(p);
    if (p.q_len == 0) return;
    if (p.prefix_k.format != p.prefix_v.format || p.bank_k.format != p.bank_v.format)
        throw std::invalid_argument("prefix_attention: K and V must share a storage format");
    switch (p.bank_k.format) {
        case Format::f32: return run_format<Format::f32>(p, threads);
        case Format::f16: return run_format<Format::f16>(p, threads);
        case Format::bf16: return run_format<Format::bf16>(p, threads);
        case Format::i8: return run_format<Format::i8>(p, threads);
        case Format::i4: return run_format<Format::i4>(p, threads);
        case Format::i2: return run_format<Format::i2>(p, threads);
        case Format::fp8: return run_format<Format::fp8>(p, threads);
    }
    throw std::invalid_argument("prefix_attention: unknown bank format");
}

}  // namespace kvi::attn
