// Multi-hop traversal: breadth-first from seed entities, one hop per level, emitting triples with their hop
// distance and the parent triple through which their source entity was first reached (-1 from a seed).
//
// Semantics (the Python twin kvi_engine/graph/twin.py follows them step for step):
//   frontier(0) = seeds, deduplicated, in the given order; each entity is entered at most once.
//   For hop h = 1..max_hops, for u in frontier(h-1) in order, scan u's out-triples (CSR order) then in-triples
//   (direction "both"), skipping triples whose relation is not allowed at hop h and triples already emitted;
//   the first `fanout` remaining triples of u are emitted with (hop h, parent(u)), and each endpoint v not yet
//   entered joins frontier(h) with parent(v) = that triple. Stop once `max_candidates` triples were emitted.
// Per-query cost follows the neighbourhood: marks are epoch-stamped arrays reused across queries.
#pragma once

#include <cstdint>
#include <vector>

#include "kvi/graph.h"

namespace kvi {

enum Direction : int { kOut = 1, kIn = 2, kBoth = 3 };

struct TraverseParams {
    int64_t max_hops = 2;
    int direction = kOut;
    const uint8_t* allowed = nullptr;  // [allowed_rows, num_relations]; rows 0 = all, 1 = every hop, max_hops = per hop
    int64_t allowed_rows = 0;
    int64_t fanout = -1;          // < 0: no cap
    int64_t max_candidates = -1;  // < 0: no cap
};

// int32 throughout: triple ids fit (validate() caps graphs at 2^31 triples) and the output is written twice
// (worker buffer, then the numpy result), so its width is most of a large traversal's memory traffic.
struct TraversalOut {
    std::vector<int32_t> triples, hops, parents;
};

class TraverseWorkspace {
  public:
    // Appends this query's triples to out. g must carry its edge columns (EdgeColumns::build).
    void traverse(const GraphView& g, const TraverseParams& p, const int64_t* seeds, int64_t num_seeds, TraversalOut& out) {
        const bool both = p.direction == kBoth;
        // "Already emitted" in direction both: without a fan-out cap and with one relation filter for every hop,
        // a triple was emitted before iff its other endpoint was expanded first, i.e. entered with a smaller
        // sequence number (or it is a self loop, met again in the in-pass). Otherwise triples are marked.
        const bool mark_triples = both && (p.fanout >= 0 || p.allowed_rows > 1);
        begin(g, mark_triples);
        frontier_.clear();
        uint32_t seq = 0;
        for (int64_t i = 0; i < num_seeds; ++i) {
            const int64_t s = seeds[i];
            if (!entered(s)) enter(s, seq), frontier_.push_back({static_cast<int32_t>(s), seq++, -1});
        }
        if (p.max_candidates == 0) return;
        const size_t cap = out.triples.size() + static_cast<size_t>(p.max_candidates);  // out may hold earlier queries
        for (int64_t h = 1; h <= p.max_hops && !frontier_.empty(); ++h) {
            const uint8_t* row = p.allowed_rows == 0 ? nullptr
                                 : p.allowed + (p.allowed_rows == 1 ? 0 : (h - 1)) * g.num_relations;
            const bool last = h == p.max_hops;
            next_.clear();
            for (const Visit& f : frontier_) {
                int64_t taken = 0;
                for (int pass = 0; pass < 2; ++pass) {
                    const bool outward = pass == 0;
                    if (!(p.direction & (outward ? kOut : kIn))) continue;
                    const int64_t* indptr = outward ? g.out_indptr : g.in_indptr;
                    const int32_t* adj = outward ? g.out_triples : g.in_triples;
                    const int32_t* far = outward ? g.out_far : g.in_far;
                    const int32_t* rel = outward ? g.out_rel : g.in_rel;
                    for (int64_t j = indptr[f.node], end = indptr[f.node + 1]; j < end; ++j) {
                        // the visited mark of an endpoint a few edges ahead: a cache miss per edge otherwise
                        if (j + kPrefetch < end) __builtin_prefetch(&node_mark_[far[j + kPrefetch]]);
                        if (row && !row[rel[j]]) continue;
                        const int32_t t = adj[j], v = far[j];
                        if (mark_triples) {
                            if (triple_mark_[t] == epoch_) continue;
                        } else if (both) {
                            if (!outward && v == f.node) continue;
                            if (entered(v) && seq_of(v) < f.seq) continue;
                        }
                        if (p.fanout >= 0 && taken >= p.fanout) goto next_node;
                        if (mark_triples) triple_mark_[t] = epoch_;
                        ++taken;
                        out.triples.push_back(t);
                        out.hops.push_back(static_cast<int32_t>(h));
                        out.parents.push_back(f.parent);
                        if (p.max_candidates >= 0 && out.triples.size() >= cap) return;
                        if (!last && !entered(v)) enter(v, seq), next_.push_back({v, seq++, t});
                    }
                }
            next_node:;
            }
            frontier_.swap(next_);
        }
    }

  private:
    static constexpr int64_t kPrefetch = 8;
    struct Visit {
        int32_t node;
        uint32_t seq;
        int32_t parent;
    };

    bool entered(int64_t v) const { return (node_mark_[v] >> 32) == epoch_; }
    uint32_t seq_of(int64_t v) const { return static_cast<uint32_t>(node_mark_[v]); }
    void enter(int64_t v, uint32_t seq) { node_mark_[v] = (uint64_t{epoch_} << 32) | seq; }

    void begin(const GraphView& g, bool need_triples) {
        if (node_mark_.size() != static_cast<size_t>(g.num_entities)) node_mark_.assign(g.num_entities, 0), reset();
        if (need_triples && triple_mark_.size() != static_cast<size_t>(g.num_triples))
            triple_mark_.assign(g.num_triples, 0), reset();
        if (++epoch_ == 0) reset(), ++epoch_;
    }
    void reset() {
        std::fill(node_mark_.begin(), node_mark_.end(), uint64_t{0});
        std::fill(triple_mark_.begin(), triple_mark_.end(), 0u);
        epoch_ = 0;
    }

    std::vector<uint64_t> node_mark_;  // epoch << 32 | entering sequence number
    std::vector<uint32_t> triple_mark_;
    uint32_t epoch_ = 0;
    std::vector<Visit> frontier_, next_;
};

}  // namespace kvi
