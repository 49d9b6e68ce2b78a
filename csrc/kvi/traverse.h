// Multi-hop traversal: breadth-first from seed entities, one hop per level, emitting triples with their hop
// distance and the parent triple through which their source entity was first reached (-1 from a seed).
//
// Semantics (the Python twin kvi_engine/graph_twin.py follows them step for step):
//   frontier(0) = seeds, deduplicated, in the given order; each entity is entered at most once.
//   For hop h = 1..max_hops, for u in frontier(h-1) in order, scan u's out-triples (CSR order) then in-triples
//   (direction "both"), skipping triples whose relation is not allowed at hop h and triples already emitted;
//   the first `fanout` remaining triples of u are emitted with (hop h, parent(u)), and each endpoint v not yet
//   entered joins frontier(h) with parent(v) = that triple. Stop once `max_candidates` triples were emitted.
// Per-query cost follows the neighbourhood: marks are epoch-stamped arrays reused across queries.
#pragma once

#include <cstdint>
#include <utility>
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

struct TraversalOut {
    std::vector<int64_t> triples;
    std::vector<int32_t> hops;
    std::vector<int64_t> parents;
    void clear() { triples.clear(); hops.clear(); parents.clear(); }
};

class TraverseWorkspace {
  public:
    void traverse(const GraphView& g, const TraverseParams& p, const int64_t* seeds, int64_t num_seeds, TraversalOut& out) {
        begin(g, p.direction == kBoth);
        frontier_.clear();
        for (int64_t i = 0; i < num_seeds; ++i) {
            int64_t s = seeds[i];
            if (node_mark_[s] != epoch_) {
                node_mark_[s] = epoch_;
                frontier_.emplace_back(static_cast<int32_t>(s), -1);
            }
        }
        const auto cap = static_cast<size_t>(p.max_candidates);
        if (p.max_candidates == 0) return;
        for (int64_t h = 1; h <= p.max_hops && !frontier_.empty(); ++h) {
            const uint8_t* row = p.allowed_rows == 0 ? nullptr
                                 : p.allowed + (p.allowed_rows == 1 ? 0 : (h - 1)) * g.num_relations;
            next_.clear();
            const bool last = h == p.max_hops;
            for (const auto& [u, parent] : frontier_) {
                int64_t taken = 0;
                for (int pass = 0; pass < 2; ++pass) {
                    const bool outward = pass == 0;
                    if (!(p.direction & (outward ? kOut : kIn))) continue;
                    const int64_t* indptr = outward ? g.out_indptr : g.in_indptr;
                    const int32_t* adj = outward ? g.out_triples : g.in_triples;
                    const int32_t* far = outward ? g.obj : g.subj;
                    for (int64_t j = indptr[u]; j < indptr[u + 1]; ++j) {
                        const int32_t t = adj[j];
                        if (row && !row[g.rel[t]]) continue;
                        if (p.direction == kBoth) {
                            if (triple_mark_[t] == epoch_) continue;
                        }
                        if (p.fanout >= 0 && taken >= p.fanout) goto next_node;
                        if (p.direction == kBoth) triple_mark_[t] = epoch_;
                        ++taken;
                        out.triples.push_back(t);
                        out.hops.push_back(static_cast<int32_t>(h));
                        out.parents.push_back(parent);
                        if (p.max_candidates >= 0 && out.triples.size() >= cap) return;
                        const int32_t v = far[t];
                        if (!last && node_mark_[v] != epoch_) {
                            node_mark_[v] = epoch_;
                            next_.emplace_back(v, t);
                        }
                    }
                }
            next_node:;
            }
            frontier_.swap(next_);
        }
    }

  private:
    void begin(const GraphView& g, bool need_triples) {
        if (node_mark_.size() != static_cast<size_t>(g.num_entities)) node_mark_.assign(g.num_entities, 0), reset_epoch();
        if (need_triples && triple_mark_.size() != static_cast<size_t>(g.num_triples))
            triple_mark_.assign(g.num_triples, 0), reset_epoch();
        if (++epoch_ == 0) reset_epoch(), ++epoch_;
    }
    void reset_epoch() {
        std::fill(node_mark_.begin(), node_mark_.end(), 0u);
        std::fill(triple_mark_.begin(), triple_mark_.end(), 0u);
        epoch_ = 0;
    }

    std::vector<uint32_t> node_mark_, triple_mark_;
    uint32_t epoch_ = 0;
    std::vector<std::pair<int32_t, int64_t>> frontier_, next_;
};

}  // namespace kvi
