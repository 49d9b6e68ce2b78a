// The decode kernel body, included by kvi/attention.h inside namespace v4 / v8 after attention_kernel.h (it uses
// that file's vf, loadv, storev, splat, hsum and expv, and reduce_lanes of its width; no include guard on purpose).
//
// One work item is one (batch row, kv head): its `group * q_len` query rows attend to the injected keys, then to the
// own keys, read once each from float32 [keys, head_dim] memory. Decode has a handful of query rows per kv head, so
// the key and value rows are the traffic: each is loaded into registers once and used by every query row, and the
// scores of all rows live in a small workspace between the two passes (scores, then values).
constexpr int64_t kPrefetchKeys = 32;  // software prefetch distance (keys ahead) of the key stream
constexpr int64_t kValueBlock = 32;    // value rows per block (32 x head_dim 64 floats = 8 KiB: stays in L1)
constexpr int kValueRows = 3;          // query rows per value micro-step (kValueRows x kValueVecs accumulators)
constexpr int kValueVecs = 4;          // vf of a value row per micro-step

// scores[r][j] = scale * q_r . k_j for rows [0, R) and keys [0, n), -inf where `keep(j, r)` is false. Keys go kW
// at a time (their rows stay in L1 while every query row reads them), one accumulator per key, reduced together.
template <class Keep>
inline void decode_scores(const float* q, int64_t R, const float* k, int64_t n, int64_t D, float scale, float* s,
                          int64_t stride, Keep keep) {
    const float ninf = -std::numeric_limits<float>::infinity();
    int64_t j0 = 0;
    for (; j0 + kW <= n; j0 += kW) {
        const float* kb = k + j0 * D;
        if (j0 + kPrefetchKeys + kW <= n)  // (only inside the array: pointers past it are not valid C++)
            for (int64_t c = 0; c < kW * D; c += 16) __builtin_prefetch(kb + kPrefetchKeys * D + c);
        for (int64_t r = 0; r < R; ++r) {
            const float* qr = q + r * D;
            vf a[kW] = {};
            for (int64_t d = 0; d < D; d += kW) {
                const vf qd = loadv(qr + d);
                for (int c = 0; c < kW; ++c) a[c] += qd * loadv(kb + c * D + d);
            }
            const vf sc = reduce_lanes(a) * splat(scale);
            vi kept;
            for (int c = 0; c < kW; ++c) kept[c] = keep(j0 + c, r) ? -1 : 0;
            storev(s + r * stride + j0, kept ? sc : splat(ninf));
        }
    }
    for (; j0 < n; ++j0) {  // the last n % kW keys
        const float* kj = k + j0 * D;
        for (int64_t r = 0; r < R; ++r) {
            vf a = {};
            for (int64_t d = 0; d < D; d += kW) a += loadv(q + r * D + d) * loadv(kj + d);
            s[r * stride + j0] = keep(j0, r) ? hsum(a) * scale : ninf;
        }
    }
}

// acc[r] += sum_j e[r][j] * v_j over keys [0, n) (acc: R rows of D floats). Keys go in blocks small enough for L1:
// each block's value rows come from memory once, then every (row block, channel chunk) pass over them -- with its
// accumulators in registers -- reads them from L1.
// V is float32 or fp16 bits (converted exactly as loaded: half the bytes of the stream, the same sums).
inline vf load_row(const float* p) { return loadv(p); }
inline vf load_row(const uint16_t* p) { return load_half(p); }

// One (row block, channel chunk) pass over a value block: NR x NV accumulators in registers (compile-time bounds,
// or GCC keeps the array on the stack and every FMA becomes a load and a store), the NR weights of a key splat
// once, each value vector loaded once for all NR rows.
template <int NR, int NV, class V>
inline void value_chunk(const float* e, int64_t stride, const V* v, int64_t j0, int64_t nb, int64_t D, int64_t d0,
                        float* acc) {
    vf a[NR][NV] = {};
    for (int64_t j = j0; j < j0 + nb; ++j) {
        vf w[NR];
        for (int r = 0; r < NR; ++r) w[r] = splat(e[r * stride + j]);
        const V* vj = v + j * D + d0;
        for (int c = 0; c < NV; ++c) {
            const vf vv = load_row(vj + c * kW);
            for (int r = 0; r < NR; ++r) a[r][c] += w[r] * vv;
        }
    }
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < NV; ++c) {
            float* o = acc + r * D + d0 + c * kW;
            storev(o, loadv(o) + a[r][c]);
        }
}

template <int NR, class V>
inline void value_rows(const float* e, int64_t stride, const V* v, int64_t j0, int64_t nb, int64_t D, float* acc) {
    int64_t d0 = 0;
    for (; d0 + kValueVecs * kW <= D; d0 += kValueVecs * kW)
        value_chunk<NR, kValueVecs>(e, stride, v, j0, nb, D, d0, acc);
    for (; d0 < D; d0 += kW) value_chunk<NR, 1>(e, stride, v, j0, nb, D, d0, acc);
}

template <class V>
inline void decode_values(const float* e, int64_t stride, int64_t R, const V* v, int64_t n, int64_t D,
                          float* acc) {
    for (int64_t j0 = 0; j0 < n; j0 += kValueBlock) {
        const int64_t nb = std::min<int64_t>(kValueBlock, n - j0);
        const int64_t next = std::min<int64_t>(kValueBlock, std::max<int64_t>(0, n - j0 - kValueBlock));
        for (int64_t c = 0; c < next * D; c += 64 / sizeof(V)) __builtin_prefetch(v + (j0 + kValueBlock) * D + c);
        int64_t r0 = 0;
        for (; r0 + kValueRows <= R; r0 += kValueRows)
            value_rows<kValueRows>(e + r0 * stride, stride, v, j0, nb, D, acc + r0 * D);
        if (R - r0 == 2) value_rows<2>(e + r0 * stride, stride, v, j0, nb, D, acc + r0 * D);
        if (R - r0 == 1) value_rows<1>(e + r0 * stride, stride, v, j0, nb, D, acc + r0 * D);
    }
}

inline void split_decode_run(const DecodeProblem& p, int threads) {
    const int64_t B = p.batch, Hkv = p.kv_heads, g = p.q_heads / p.kv_heads, Q = p.q_len, D = p.head_dim;
    const int64_t S = p.slots, T = p.kv_len, R = g * Q, n = p.segments;
    const int64_t width = (S + T + kW - 1) / kW * kW;  // scores row, padded with -inf (exp gives 0)
    const float ninf = -std::numeric_limits<float>::infinity();
    const int workers = resolve_threads(threads, B * Hkv);
    struct Buf {
        std::vector<float> s, acc, seg;
    };
    std::vector<Buf> bufs(workers);
    parallel_for(B * Hkv, workers, [&](int worker, int64_t item) {
        const int64_t b = item / Hkv, h = item % Hkv;
        Buf& w = bufs[worker];
        w.s.assign(R * width, ninf);
        w.acc.assign(R * D, 0.0f);
        float* s = w.s.data();
        // Query rows of this kv head: heads h*g .. h*g+g-1 are contiguous in [B, Hq, Q, D], row r = (head, query).
        const float* q = p.query + (b * p.q_heads + h * g) * Q * D;
        const uint8_t* valid = p.inj_valid + b * S;
        decode_scores(q, R, p.inj_k + (b * Hkv + h) * S * D, S, D, p.scale, s, width,
                      [&](int64_t j, int64_t) { return valid[j] != 0; });
        const uint8_t* mask = p.own_mask ? p.own_mask + b * Q * T : nullptr;
        decode_scores(q, R, p.own_k + (b * Hkv + h) * T * D, T, D, p.scale, s + S, width, [&](int64_t j, int64_t r) {
            const int64_t i = r % Q;  // query index of row r
            return mask ? mask[i * T + j] != 0 : j <= T - Q + i;
        });
        std::vector<float> m(R), denom(R);
        for (int64_t r = 0; r < R; ++r) {
            float* sr = s + r * width;
            vf vmax = splat(ninf);
            for (int64_t j = 0; j < width; j += kW) {
                const vf x = loadv(sr + j);
                vmax = vmax > x ? vmax : x;
            }
            float mr = ninf;
            for (int i = 0; i < kW; ++i) mr = std::max(mr, vmax[i]);
            // A row that sees nothing: exp(-inf - lowest) is 0, its sum 0, its output 0 and its lse -inf.
            m[r] = std::max(mr, std::numeric_limits<float>::lowest());
            vf sum = {};
            for (int64_t j = 0; j < width; j += kW) {
                const vf e = expv(loadv(sr + j) - splat(m[r]));
                storev(sr + j, e);
                sum += e;
            }
            denom[r] = hsum(sum);
        }
        if (p.inj_v16)
            decode_values(s, width, R, p.inj_v16 + (b * Hkv + h) * S * D, S, D, w.acc.data());
        else
            decode_values(s, width, R, p.inj_v + (b * Hkv + h) * S * D, S, D, w.acc.data());
        decode_values(s + S, width, R, p.own_v + (b * Hkv + h) * T * D, T, D, w.acc.data());
        for (int64_t r = 0; r < R; ++r) {
            const int64_t row = (b * p.q_heads + h * g) * Q + r;  // [B, Hq, Q] flattened
            const float inv = denom[r] > 0 ? 1.0f / denom[r] : 0.0f;
            for (int64_t d = 0; d < D; ++d) p.out[row * D + d] = w.acc[r * D + d] * inv;
            p.lse[row] = denom[r] > 0 ? m[r] + std::log(denom[r]) : ninf;
            if (n) {
                w.seg.assign(n, 0.0f);
                const int32_t* seg = p.segment + b * S;
                const float* er = s + r * width;
                for (int64_t j = 0; j < S; ++j)
                    if (seg[j] >= 0) w.seg[seg[j]] += er[j];
                for (int64_t k = 0; k < n; ++k)
                    p.seg_lse[row * n + k] = w.seg[k] > 0 ? m[r] + std::log(w.seg[k]) : ninf;
            }
        }
    });
}
