// Personalised PageRank over the bipartite sentence-entity mention graph (twin: kvi_engine/graph/ppr.py).
// Both directions come as CSR with the transition weight of each pair: s_* (sentence-major, weight = the
// entity -> sentence step) and e_* (entity-major, weight = the sentence -> entity step). Synchronous updates in
// double precision from p = reset; validate() guards every index before the loops run.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvi {

struct MentionWalk {
    int64_t num_sentences = 0, num_entities = 0, num_mentions = 0;
    const int64_t* s_indptr = nullptr;   // [S + 1]
    const int32_t* s_entities = nullptr; // [M]
    const float* s_weight = nullptr;     // [M]
    const int64_t* e_indptr = nullptr;   // [N + 1]
    const int32_t* e_sentences = nullptr;// [M]
    const float* e_weight = nullptr;     // [M]
};

inline void validate(const MentionWalk& w) {
    auto bad = [](const std::string& m) { throw std::invalid_argument("ppr: " + m); };
    const int64_t M = w.num_mentions;
    for (int side = 0; side < 2; ++side) {
        const int64_t* p = side ? w.e_indptr : w.s_indptr;
        const int64_t rows = side ? w.num_entities : w.num_sentences;
        if (p[0] != 0 || p[rows] != M) bad(std::string(side ? "e_indptr" : "s_indptr") + " must rise from 0 to " +
                                           std::to_string(M));
        for (int64_t i = 0; i < rows; ++i)
            if (p[i + 1] < p[i]) bad(std::string(side ? "e_indptr" : "s_indptr") + " must rise from 0 to " +
                                     std::to_string(M));
    }
    for (int64_t k = 0; k < M; ++k) {
        if (w.s_entities[k] < 0 || w.s_entities[k] >= w.num_entities ||
            w.e_sentences[k] < 0 || w.e_sentences[k] >= w.num_sentences)
            bad("a mention names a node out of range");
    }
}

// out_s[S], out_e[N]: the walk's scores after `iterations` updates.
inline void ppr(const MentionWalk& w, const float* reset_s, const float* reset_e, double restart, int iterations,
                float* out_s, float* out_e) {
    const int64_t S = w.num_sentences, N = w.num_entities;
    std::vector<double> ps(reset_s, reset_s + S), pe(reset_e, reset_e + N), pe_new(N);
    std::vector<double> ps_new(S);
    const double a = restart, b = 1.0 - restart;
    for (int it = 0; it < iterations; ++it) {
        for (int64_t e = 0; e < N; ++e) {
            double acc = 0.0;
            for (int64_t k = w.e_indptr[e]; k < w.e_indptr[e + 1]; ++k)
                acc += ps[w.e_sentences[k]] * static_cast<double>(w.e_weight[k]);
            pe_new[e] = a * reset_e[e] + b * acc;
        }
        for (int64_t s = 0; s < S; ++s) {
            double acc = 0.0;
            for (int64_t k = w.s_indptr[s]; k < w.s_indptr[s + 1]; ++k)
                acc += pe[w.s_entities[k]] * static_cast<double>(w.s_weight[k]);
            ps_new[s] = a * reset_s[s] + b * acc;
        }
        ps.swap(ps_new);
        pe.swap(pe_new);
    }
    for (int64_t s = 0; s < S; ++s) out_s[s] = static_cast<float>(ps[s]);
    for (int64_t e = 0; e < N; ++e) out_e[e] = static_cast<float>(pe[e]);
}

}  // namespace kvi
