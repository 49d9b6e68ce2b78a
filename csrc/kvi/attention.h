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
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kvi/parallel.h"
#include "kvi/quant.h"

namespace kvi::attn {

// Storage formats of kvi_engine/bank/quant.py (the spec): floats, or codes with fp16 scale (+ zero) per group.
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
    int vector_width = 0;  // 0: the widest the CPU runs (8 with AVX2+FMA, else 4); 4 or 8 to force one
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
constexpr int64_t kRowsTarget = 192;  // query rows (group x tile) sharing one pass over the keys
constexpr int64_t kRowBlock = 4;     // rows per micro-kernel step (row counts are padded to a multiple)

// Decode-step attention over float K/V already gathered and rotated (the plan's copy): query rows attend to the
// injected keys [batch, kv_heads, slots, head_dim] (inj_valid [batch, slots]) and then to their own keys [batch,
// kv_heads, kv_len, head_dim] (own_mask [batch, q_len, kv_len], or causal: query i sees own keys up to
// kv_len - q_len + i), as one softmax. segment [batch, slots] (-1: none) names each injected slot's segment; with
// segments > 0 the log-sum-exp over each segment goes to seg_lse [batch, q_heads, q_len, segments] (attribution).
struct DecodeProblem {
    int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, head_dim = 0, slots = 0, kv_len = 0, segments = 0;
    const float* query = nullptr;
    const float* inj_k = nullptr;
    const float* inj_v = nullptr;
    const uint16_t* inj_v16 = nullptr;  // or the injected values as fp16 bits (exact for an fp16 bank's values)
    const uint8_t* inj_valid = nullptr;
    const float* own_k = nullptr;
    const float* own_v = nullptr;
    const uint8_t* own_mask = nullptr;
    const int32_t* segment = nullptr;
    float scale = 1.0f;
    float* out = nullptr;      // [batch, q_heads, q_len, head_dim]
    float* lse = nullptr;      // [batch, q_heads, q_len]
    float* seg_lse = nullptr;  // [batch, q_heads, q_len, segments]
};

namespace v4 {
constexpr int kW = 4;
#include "kvi/attention_kernel.h"
// Lane c of the result is the sum of the lanes of a[c] (kW vectors -> one): pairwise shuffles and adds instead of
// a horizontal sum per vector (decode scores of kW keys at once).
inline vf reduce_lanes(const vf* a) {
    const vf t0 = __builtin_shufflevector(a[0], a[1], 0, 4, 2, 6) + __builtin_shufflevector(a[0], a[1], 1, 5, 3, 7);
    const vf t1 = __builtin_shufflevector(a[2], a[3], 0, 4, 2, 6) + __builtin_shufflevector(a[2], a[3], 1, 5, 3, 7);
    return __builtin_shufflevector(t0, t1, 0, 1, 4, 5) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7);
}
inline vf load_half(const uint16_t* p) {  // kW fp16 values as floats (exact)
    vf v;
    for (int i = 0; i < kW; ++i) v[i] = quant::f16_to_f32(p[i]);
    return v;
}
#include "kvi/decode_kernel.h"
}  // namespace v4

#if defined(__GNUC__) && defined(__x86_64__)
#define KVI_ATTN_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace v8 {
constexpr int kW = 8;
#include "kvi/attention_kernel.h"
inline vf reduce_lanes(const vf* a) {  // as v4's, three rounds
    vf t[4], u[2];
    for (int i = 0; i < 4; ++i)
        t[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; ++i)
        u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
inline vf load_half(const uint16_t* p) {  // one vcvtph2ps (F16C): exact
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    vf v;
    std::memcpy(&v, &x, sizeof v);
    return v;
}
#include "kvi/decode_kernel.h"
}  // namespace v8
#pragma GCC pop_options
#endif

// 8-wide AVX2/FMA kernels where the CPU has them (measured ~2x the SSE2 baseline on prefill), else 4-wide.
inline bool use_avx2(int64_t head_dim) {
#ifdef KVI_ATTN_AVX2
    static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                            __builtin_cpu_supports("f16c");
    return cpu && head_dim % 8 == 0;
#else
    (void)head_dim;
    return false;
#endif
}

// The unfused path's gather, fused: every visible slot's key (dequantised, rotated to its slot) and value as fp32
// (or fp16 bits, see gather_slots), into out_k/out_v [batch, kv_heads, num_slots, head_dim]. Other slots are left as
// they are (a bank of several segments is gathered in one pass per segment), or zeroed with `zero_masked` (the
// first pass: attention gives them weight 0, and 0 times stale memory could be NaN), so the outputs need no
// zeroing beforehand. One pass over the plan's tokens instead of PyTorch's gather, concatenate, transpose and five
// rotation ops. Products and sums are rounded one by one, never fused (this is compiled for the baseline target, and
// contraction is switched off where a compiler could use FMA), so the result equals the PyTorch gather + rotation
// bit for bit.
template <Format F>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void gather_format(const Problem& p, int threads, float* out_k, float* out_v, uint16_t* out_v16, bool zero_masked) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const int64_t D = p.head_dim, half = D / 2, H = p.kv_heads, S = p.num_slots;
    // Slots outer, heads inner: a token's rows of every head are adjacent in the bank and its cos/sin are read once,
    // so the reads are a few sequential streams (heads outer read the bank at a stride of kv_heads rows: 1.5 ->
    // 0.7 ms a layer at 1,700 slots with everything out of cache). Work items are chunks of slots.
    constexpr int64_t kChunk = 64;
    const int64_t chunks = (S + kChunk - 1) / kChunk;
    const int workers = resolve_threads(threads, p.batch * chunks);
    std::vector<std::vector<float>> rows(workers, std::vector<float>(D));
    parallel_for(p.batch * chunks, workers, [&](int worker, int64_t item) {
        const int64_t b = item / chunks, j0 = item % chunks * kChunk, j1 = std::min(S, j0 + kChunk);
        float* k = rows[worker].data();
        for (int64_t j = j0; j < j1; ++j) {
            const int64_t i = b * S + j;
            if (!p.visible[i]) {
                for (int64_t h = 0; zero_masked && h < H; ++h) {
                    const int64_t o = ((b * H + h) * S + j) * D;
                    std::memset(out_k + o, 0, D * sizeof(float));
                    if (out_v16)
                        std::memset(out_v16 + o, 0, D * sizeof(uint16_t));
                    else
                        std::memset(out_v + o, 0, D * sizeof(float));
                }
                continue;
            }
            const float* c = p.cos + i * half;
            const float* sn = p.sin + i * half;
            for (int64_t h = 0; h < H; ++h) {
                const int64_t o = ((b * H + h) * S + j) * D;
                float* ko = out_k + o;
                const bool prefix = j < p.prefix_len;
                const Source& src_v = prefix ? p.prefix_v : p.bank_v;
                if (out_v16)  // fp16 storage (checked by gather_slots): the value row's bits as they are
                    std::memcpy(out_v16 + o, static_cast<const uint16_t*>(src_v.codes) + (p.token[i] * H + h) * D,
                                D * sizeof(uint16_t));
                if (prefix) {
                    load_prefix_row(p.prefix_k, p.token[i], h, H, D, k);
                    if (!out_v16) load_prefix_row(p.prefix_v, p.token[i], h, H, D, out_v + o);
                } else {
                    const int64_t crow = p.capsule_row ? p.capsule_row[i] : 0;
                    load_row<F>(p.bank_k, p.token[i], crow, h, H, D, k);
                    if (!out_v16) load_row<F>(p.bank_v, p.token[i], crow, h, H, D, out_v + o);
                }
                for (int64_t d = 0; d < half; ++d) {
                    const float a = k[d] * c[d], b2 = k[d + half] * sn[d];
                    const float a2 = k[d + half] * c[d], b1 = k[d] * sn[d];
                    ko[d] = a - b2;
                    ko[d + half] = a2 + b1;
                }
            }
        }
    });
}

// out_v16 (instead of out_v): the values as fp16 bits, for fp16 storage only (bank and prefix): exact copies.
inline void gather_slots(const Problem& p, int threads, float* out_k, float* out_v, uint16_t* out_v16 = nullptr,
                         bool zero_masked = false) {
    validate(p);
    if (p.prefix_k.format != p.prefix_v.format || p.bank_k.format != p.bank_v.format)
        throw std::invalid_argument("prefix_gather: K and V must share a storage format");
    if (out_v16 && (p.bank_v.format != Format::f16 || (p.prefix_len && p.prefix_v.format != Format::f16)))
        throw std::invalid_argument("prefix_gather: fp16 out_v needs fp16 storage (bank and prefix); the values "
                                    "would not be exact");
    switch (p.bank_k.format) {
        case Format::f32: return gather_format<Format::f32>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::f16: return gather_format<Format::f16>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::bf16: return gather_format<Format::bf16>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::i8: return gather_format<Format::i8>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::i4: return gather_format<Format::i4>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::i2: return gather_format<Format::i2>(p, threads, out_k, out_v, out_v16, zero_masked);
        case Format::fp8: return gather_format<Format::fp8>(p, threads, out_k, out_v, out_v16, zero_masked);
    }
    throw std::invalid_argument("prefix_gather: unknown bank format");
}

inline void prefix_attention(const Problem& p, int threads) {
    validate(p);
    if (p.q_len == 0) return;
    if (p.prefix_k.format != p.prefix_v.format || p.bank_k.format != p.bank_v.format)
        throw std::invalid_argument("prefix_attention: K and V must share a storage format");
    if (p.vector_width != 0 && p.vector_width != 4 && p.vector_width != 8)
        throw std::invalid_argument("prefix_attention: vector_width must be 0, 4 or 8");
    if (p.vector_width == 8 && !use_avx2(p.head_dim))
        throw std::invalid_argument("prefix_attention: 8-wide kernels need AVX2+FMA and head_dim % 8 == 0");
#ifdef KVI_ATTN_AVX2
    if (p.vector_width != 4 && use_avx2(p.head_dim)) return v8::run(p, threads);
#endif
    v4::run(p, threads);
}

// Decode attention (split_decode_run): 8-wide where AVX2+FMA run and head_dim % 8 == 0, else 4-wide.
inline void split_decode(const DecodeProblem& p, int threads) {
    auto fail = [](const std::string& m) { throw std::invalid_argument("decode_attention: " + m); };
    if (p.batch < 0 || p.q_heads <= 0 || p.kv_heads <= 0 || p.q_len < 0 || p.slots < 0 || p.kv_len < 0 ||
        p.segments < 0)
        fail("negative or zero sizes");
    if (p.q_heads % p.kv_heads) fail("q_heads must be a multiple of kv_heads");
    if (p.head_dim <= 0 || p.head_dim % 4) fail("head_dim must be a positive multiple of 4");
    if (p.segments && !p.segment) fail("segments > 0 needs the segment table");
    if (p.segments && !p.seg_lse) fail("segments > 0 needs seg_lse");
    if ((p.inj_v != nullptr) == (p.inj_v16 != nullptr) && p.batch * p.slots > 0)
        fail("the injected values come as float32 or as fp16, exactly one of them");
    if (p.batch == 0 || p.q_len == 0) return;
    if (p.segments)
        for (int64_t i = 0; i < p.batch * p.slots; ++i)
            if (p.segment[i] < -1 || p.segment[i] >= p.segments)
                fail("segment index " + std::to_string(p.segment[i]) + " at slot " + std::to_string(i % p.slots) +
                     " of row " + std::to_string(i / p.slots) + " is outside [-1, " + std::to_string(p.segments) + ")");
#ifdef KVI_ATTN_AVX2
    if (use_avx2(p.head_dim)) return v8::split_decode_run(p, threads);
#endif
    v4::split_decode_run(p, threads);
}

}  // namespace kvi::attn
