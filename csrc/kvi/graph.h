// Knowledge-graph store: triples (subject, relation, object) and CSR adjacency in both directions.
// Arrays are owned elsewhere (numpy / a memory-mapped file); GraphView only points at them, so a
// graph opened from disk costs nothing until traversed. validate() is the gate every view passes
// before use: a malformed file must raise, never index out of bounds.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvi {

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

struct GraphView {
    int64_t num_entities = 0;
    int64_t num_relations = 0;
    int64_t num_triples = 0;
    const int32_t* subj = nullptr;
    const int32_t* rel = nullptr;
    const int32_t* obj = nullptr;
    const int64_t* out_indptr = nullptr;  // [num_entities + 1] into out_triples
    const int32_t* out_triples = nullptr;  // triple ids grouped by subject
    const int64_t* in_indptr = nullptr;   // [num_entities + 1] into in_triples
    const int32_t* in_triples = nullptr;   // triple ids grouped by object
    // Edge columns parallel to out_triples / in_triples (far endpoint, relation): traversal then reads them
    // sequentially instead of gathering obj[t] / rel[t] at random. Derived, never stored (see EdgeColumns).
    const int32_t* out_far = nullptr;
    const int32_t* out_rel = nullptr;
    const int32_t* in_far = nullptr;
    const int32_t* in_rel = nullptr;
};

struct EdgeColumns {
    std::vector<int32_t> out_far, out_rel, in_far, in_rel;

    // Call after validate(g); points g's edge columns at this object's storage.
    void build(GraphView& g) {
        const size_t n = static_cast<size_t>(g.num_triples);
        out_far.resize(n), out_rel.resize(n), in_far.resize(n), in_rel.resize(n);
        for (size_t j = 0; j < n; ++j) {
            out_far[j] = g.obj[g.out_triples[j]], out_rel[j] = g.rel[g.out_triples[j]];
            in_far[j] = g.subj[g.in_triples[j]], in_rel[j] = g.rel[g.in_triples[j]];
        }
        g.out_far = out_far.data(), g.out_rel = out_rel.data(), g.in_far = in_far.data(), g.in_rel = in_rel.data();
    }
};

// Stable counting sort of triple ids by key: group k holds, in ascending triple id, every t with key[t] == k.
inline void build_csr(const int32_t* key, int64_t n, int64_t num_keys, int64_t* indptr, int32_t* order) {
    if (num_keys < 0) fail("build_csr: num_keys must be >= 0");
    if (n > INT32_MAX) fail("build_csr: more than 2^31-1 triples");
    std::fill(indptr, indptr + num_keys + 1, int64_t{0});
    for (int64_t i = 0; i < n; ++i) {
        int64_t k = key[i];
        if (k < 0 || k >= num_keys)
            fail("build_csr: key " + std::to_string(k) + " of row " + std::to_string(i) + " is outside [0, " +
                 std::to_string(num_keys) + ")");
        ++indptr[k + 1];
    }
    for (int64_t k = 0; k < num_keys; ++k) indptr[k + 1] += indptr[k];
    std::vector<int64_t> cursor(indptr, indptr + num_keys);
    for (int64_t i = 0; i < n; ++i) order[cursor[key[i]]++] = static_cast<int32_t>(i);
}

// indptr must be a monotone [0..n] partition and order a permutation of 0..n-1 with key[order[j]] == k inside group k.
inline void validate_csr(const char* name, const int64_t* indptr, const int32_t* order, const int32_t* key,
                         int64_t num_keys, int64_t n) {
    const std::string what = std::string("graph ") + name + ": ";
    if (indptr[0] != 0) fail(what + "indptr[0] must be 0");
    if (indptr[num_keys] != n)
        fail(what + "indptr[-1] is " + std::to_string(indptr[num_keys]) + ", expected num_triples " + std::to_string(n));
    std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
    for (int64_t k = 0; k < num_keys; ++k) {
        if (indptr[k + 1] < indptr[k] || indptr[k + 1] > n)
            fail(what + "indptr is not monotone in [0, num_triples] at entity " + std::to_string(k));
        for (int64_t j = indptr[k]; j < indptr[k + 1]; ++j) {
            int64_t t = order[j];
            if (t < 0 || t >= n) fail(what + "triple id " + std::to_string(t) + " out of range at position " + std::to_string(j));
            if (key[t] != k) fail(what + "triple " + std::to_string(t) + " is filed under entity " + std::to_string(k));
            if (seen[t]) fail(what + "triple " + std::to_string(t) + " appears twice");
            seen[t] = 1;
        }
    }
}

inline void validate(const GraphView& g) {
    if (g.num_entities < 0 || g.num_relations < 0 || g.num_triples < 0) fail("graph: negative counts");
    if (g.num_entities > INT32_MAX || g.num_relations > INT32_MAX || g.num_triples > INT32_MAX)
        fail("graph: counts must fit in int32");
    for (int64_t t = 0; t < g.num_triples; ++t) {
        if (g.subj[t] < 0 || g.subj[t] >= g.num_entities || g.obj[t] < 0 || g.obj[t] >= g.num_entities)
            fail("graph: triple " + std::to_string(t) + " names an entity outside [0, " + std::to_string(g.num_entities) + ")");
        if (g.rel[t] < 0 || g.rel[t] >= g.num_relations)
            fail("graph: triple " + std::to_string(t) + " has relation " + std::to_string(g.rel[t]) + " outside [0, " +
                 std::to_string(g.num_relations) + ")");
    }
    validate_csr("out adjacency", g.out_indptr, g.out_triples, g.subj, g.num_entities, g.num_triples);
    validate_csr("in adjacency", g.in_indptr, g.in_triples, g.obj, g.num_entities, g.num_triples);
}

}  // namespace kvi
