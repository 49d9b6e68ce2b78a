// The CPU kernel body, included by kvi/attention.h once per vector width kW (no include guard on purpose): inside
// namespace kvi::attn::v4 (default target) and, on x86 GCC/Clang, kvi::attn::v8 under `#pragma GCC target("avx2,fma")`
// so one build carries both and picks at run time.
// GCC/Clang generic vectors of kW floats (kW is set by the includer): SSE/NEON or AVX2 code without -march.
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));

inline vf loadv(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// x - 0 (not 0 + x): IEEE lets the compiler fold it (-0 - 0 = -0), so this is one broadcast; 0 + x costs an add.
inline vf splat(float x) { return x - vf{}; }
inline vi lane_ids() {
    vi v;
    for (int i = 0; i < kW; ++i) v[i] = i;
    return v;
}
inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < kW; ++i) s += v[i];
    return s;
}

// e^x, Cephes single-precision polynomial (about 1 ulp); -inf and underflow give 0.
inline vf expv(vf x) {
    const vf lo = splat(-87.3365447504f), hi = splat(88.3762626647949f);
    const vi under = x < lo;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    vf fx = x * splat(1.44269504088896341f) + splat(0.5f);
    vi n = __builtin_convertvector(fx, vi);
    vf fn = __builtin_convertvector(n, vf);
    const vi too_big = fn > fx;
    n += too_big;  // true lanes are -1: floor for negative inputs
    fn = __builtin_convertvector(n, vf);
    const vf r = x - fn * splat(0.693359375f) - fn * splat(-2.12194440e-4f);
    vf y = splat(1.9875691500e-4f);
    y = y * r + splat(1.3981999507e-3f);
    y = y * r + splat(8.3334519073e-3f);
    y = y * r + splat(4.1665795894e-2f);
    y = y * r + splat(1.6666665459e-1f);
    y = y * r + splat(5.0000001201e-1f);
    y = y * (r * r) + r + splat(1.0f);
    vf pow2;
    const vi bits = (n + 127) << 23;
    std::memcpy(&pow2, &bits, sizeof pow2);
    y = y * pow2;
    return under ? splat(0.0f) : y;
}

struct Workspace {
    std::vector<float> q, acc, s, kT, v, m, l, row;
    std::vector<int64_t> last;            // causal own KV: last key index row r may see
    std::vector<const uint8_t*> mask_row;  // explicit own mask: row r's [kv_len] mask
    void resize(int64_t rows, int64_t D) {
        q.resize(rows * D), acc.resize(rows * D), s.resize(rows * kBlock), kT.resize(D * kBlock);
        v.resize(kBlock * D), m.resize(rows), l.resize(rows), row.resize(2 * D), last.resize(rows);
        mask_row.resize(rows);
    }
};

enum class Masking { none, causal, explicit_mask };

// Online-softmax update of `rows` (a multiple of kRowBlock) query rows with a block of nb keys j0.. (kT: [D][kBlock],
// columns past nb hold finite stale values) and values (v: [nb][D]); own-KV blocks are masked per row from
// Workspace::last (causal) or Workspace::mask_row (explicit).
template <Masking M>
inline void attend_block(Workspace& w, int64_t rows, int64_t nb, int64_t j0, int64_t D, float scale, const float* v) {
    const float ninf = -std::numeric_limits<float>::infinity();
    const int64_t nbw = (nb + kW - 1) / kW * kW, nb2w = (nb + 2 * kW - 1) / (2 * kW) * (2 * kW);
    // Scores: 4 rows x 2kW keys of accumulators, one kT row load shared by 4 rows.
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const float* q0 = w.q.data() + r0 * D;
        for (int64_t n0 = 0; n0 < nb2w; n0 += 2 * kW) {
            vf a[kRowBlock][2] = {};
            for (int64_t d = 0; d < D; ++d) {
                const float* kd = w.kT.data() + d * kBlock + n0;
                const vf k0 = loadv(kd), k1 = loadv(kd + kW);
                for (int64_t r = 0; r < kRowBlock; ++r) {
                    const vf qd = splat(q0[r * D + d]);
                    a[r][0] += qd * k0;
                    a[r][1] += qd * k1;
                }
            }
            for (int64_t r = 0; r < kRowBlock; ++r) {
                float* sr = w.s.data() + (r0 + r) * kBlock + n0;
                storev(sr, a[r][0]);
                storev(sr + kW, a[r][1]);
            }
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        float* sr = w.s.data() + r * kBlock;
        int64_t visible = nb;
        if constexpr (M == Masking::causal) visible = std::clamp<int64_t>(w.last[r] - j0 + 1, 0, nb);
        // Scale, mask and block max, kW lanes at a time: a scalar running max is a latency chain (3 cycles an
        // element) that cost as much as a third of the score FMAs.
        vf vmax = splat(ninf);
        for (int64_t n = 0; n < nbw; n += kW) {
            vi keep = (lane_ids() + static_cast<int32_t>(n)) < static_cast<int32_t>(visible);
            if constexpr (M == Masking::explicit_mask)
                for (int i = 0; i < kW; ++i)
                    if (keep[i] && !w.mask_row[r][j0 + n + i]) keep[i] = 0;
            const vf x = keep ? loadv(sr + n) * splat(scale) : splat(ninf);
            storev(sr + n, x);
            vmax = vmax > x ? vmax : x;
        }
        float bmax = ninf;
        for (int i = 0; i < kW; ++i) bmax = std::max(bmax, vmax[i]);
        const float m_new = std::max(w.m[r], bmax);
        if (m_new == ninf) {
            std::fill(sr, sr + nbw, 0.0f);
            continue;
        }
        const float corr = w.m[r] == ninf ? 0.0f : std::exp(w.m[r] - m_new);
        vf sum = {};
        for (int64_t n = 0; n < nbw; n += kW) {
            const vf e = expv(loadv(sr + n) - splat(m_new));
            storev(sr + n, e);
            sum += e;
        }
        w.l[r] = w.l[r] * corr + hsum(sum);
        w.m[r] = m_new;
        float* ar = w.acc.data() + r * D;
        if (corr != 1.0f)
            for (int64_t d = 0; d < D; ++d) ar[d] *= corr;
    }
    // acc += P V: 4 rows x kW channels of accumulators, one V load shared by 4 rows.
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const float* p0 = w.s.data() + r0 * kBlock;
        int64_t d0 = 0;
        for (; d0 + 2 * kW <= D; d0 += 2 * kW) {
            vf a[kRowBlock][2];
            for (int64_t r = 0; r < kRowBlock; ++r)
                a[r][0] = loadv(w.acc.data() + (r0 + r) * D + d0), a[r][1] = loadv(w.acc.data() + (r0 + r) * D + d0 + kW);
            for (int64_t n = 0; n < nb; ++n) {
                const vf v0 = loadv(v + n * D + d0), v1 = loadv(v + n * D + d0 + kW);
                for (int64_t r = 0; r < kRowBlock; ++r) {
                    const vf pn = splat(p0[r * kBlock + n]);
                    a[r][0] += pn * v0;
                    a[r][1] += pn * v1;
                }
            }
            for (int64_t r = 0; r < kRowBlock; ++r)
                storev(w.acc.data() + (r0 + r) * D + d0, a[r][0]), storev(w.acc.data() + (r0 + r) * D + d0 + kW, a[r][1]);
        }
        for (; d0 < D; d0 += kW) {
            vf a[kRowBlock];
            for (int64_t r = 0; r < kRowBlock; ++r) a[r] = loadv(w.acc.data() + (r0 + r) * D + d0);
            for (int64_t n = 0; n < nb; ++n) {
                const vf vn = loadv(v + n * D + d0);
                for (int64_t r = 0; r < kRowBlock; ++r) a[r] += splat(p0[r * kBlock + n]) * vn;
            }
            for (int64_t r = 0; r < kRowBlock; ++r) storev(w.acc.data() + (r0 + r) * D + d0, a[r]);
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
        attend_block<Masking::none>(w, padded, nb, 0, D, p.scale, w.v.data());
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
    for (int64_t r = 0; r < padded; ++r) {
        const int64_t i = q0 + r % tile;
        w.last[r] = i + shift;
        if (p.own_mask) w.mask_row[r] = p.own_mask + (b * p.q_len + i) * p.kv_len;
    }
    for (int64_t j0 = 0; j0 < end; j0 += kBlock) {
        const int64_t n = std::min(kBlock, end - j0);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t d = 0; d < D; ++d) w.kT[d * kBlock + t] = ok[(j0 + t) * D + d];
        if (p.own_mask)
            attend_block<Masking::explicit_mask>(w, padded, n, j0, D, p.scale, ov + j0 * D);
        else
            attend_block<Masking::causal>(w, padded, n, j0, D, p.scale, ov + j0 * D);
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

inline void run(const Problem& p, int threads) {
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
