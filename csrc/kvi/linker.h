// Dictionary entity linker: a trie over normalised names; longest non-overlapping matches on word
// boundaries, scanning left to right; every entity sharing the matched name is a candidate, with its prior.
//
// Build: names are normalised (kvi/normalize.h), sorted, and inserted in order, so trie nodes are created
// with children in ascending label order and the child lists come out sorted for binary search.
// Candidates of one name: duplicate (name, entity) rows keep their highest prior; without priors each of the
// k distinct entities gets 1/k. Candidates are ordered by prior descending, then entity id ascending.
// Link: a name counts only if its best prior >= min_prior, so a thresholded name yields to a shorter match.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "kvi/normalize.h"

namespace kvi {

struct LinkOut {
    std::vector<int64_t> start, end, num_candidates, entity;
    std::vector<float> prior;
    void clear() { start.clear(); end.clear(); num_candidates.clear(); entity.clear(); prior.clear(); }
};

struct LinkScratch {
    Normalized text;
    std::vector<uint32_t> cps;
};

class Linker {
  public:
    // names: UTF-8 blob with offsets [num_names + 1]; priors may be null.
    Linker(std::shared_ptr<const Normalizer> norm, const char* blob, const int64_t* offsets, int64_t num_names,
           const int64_t* entity_ids, const float* priors)
        : norm_(std::move(norm)), num_names_(num_names) {
        if (num_names < 0 || num_names > INT32_MAX) fail("linker: number of names must be in [0, 2^31)");
        if (offsets[0] != 0) fail("linker: name offsets must start at 0");
        for (int64_t i = 0; i < num_names; ++i)
            if (offsets[i + 1] < offsets[i]) fail("linker: name offsets are not monotone at row " + std::to_string(i));
        std::vector<uint32_t> keys;
        std::vector<int64_t> key_off{0};
        key_off.reserve(num_names + 1);
        Normalized nt;
        std::vector<uint32_t> scratch;
        for (int64_t i = 0; i < num_names; ++i) {
            if (entity_ids[i] < 0) fail("linker: row " + std::to_string(i) + " has negative entity id");
            if (priors && !(std::isfinite(priors[i]) && priors[i] >= 0.0f))
                fail("linker: row " + std::to_string(i) + " has prior " + std::to_string(priors[i]) + "; priors must be finite and >= 0");
            try {
                norm_->normalize_name(std::string_view(blob + offsets[i], offsets[i + 1] - offsets[i]), nt, scratch);
            } catch (const std::invalid_argument& e) {
                fail("linker: name at row " + std::to_string(i) + ": " + e.what());
            }
            if (nt.cp.empty()) fail("linker: name at row " + std::to_string(i) + " is empty after normalisation");
            keys.insert(keys.end(), nt.cp.begin(), nt.cp.end());
            key_off.push_back(static_cast<int64_t>(keys.size()));
        }
        auto key = [&](int64_t i) {
            return std::basic_string_view<uint32_t>(keys.data() + key_off[i], key_off[i + 1] - key_off[i]);
        };
        std::vector<int64_t> order(num_names);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
            int c = key(a).compare(key(b));
            if (c != 0) return c < 0;
            if (entity_ids[a] != entity_ids[b]) return entity_ids[a] < entity_ids[b];
            float pa = priors ? priors[a] : 0.f, pb = priors ? priors[b] : 0.f;
            return pa != pb ? pa > pb : a < b;
        });

        std::vector<int32_t> edge_parent;
        std::vector<uint32_t> edge_label;
        std::vector<int32_t> path{0};
        int64_t num_nodes = 1;
        node_term_.push_back(-1);
        term_indptr_.push_back(0);
        std::basic_string_view<uint32_t> prev;
        for (size_t g = 0; g < order.size();) {
            const auto k = key(order[g]);
            size_t lcp = 0;
            while (lcp < k.size() && lcp < prev.size() && k[lcp] == prev[lcp]) ++lcp;
            path.resize(lcp + 1);
            for (size_t d = lcp; d < k.size(); ++d) {
                if (num_nodes >= INT32_MAX) fail("linker: trie exceeds 2^31 nodes");
                edge_parent.push_back(path.back());
                edge_label.push_back(k[d]);
                node_term_.push_back(-1);
                path.push_back(static_cast<int32_t>(num_nodes++));
            }
            node_term_[path.back()] = static_cast<int32_t>(term_indptr_.size() - 1);
            size_t e = g;
            const size_t first = entity_.size();
            for (; e < order.size() && key(order[e]) == k; ++e) {
                const int64_t row = order[e];
                if (entity_.size() > first && entity_.back() == entity_ids[row]) continue;  // kept the higher prior
                entity_.push_back(entity_ids[row]);
                prior_.push_back(priors ? priors[row] : 0.f);
            }
            const size_t count = entity_.size() - first;
            if (!priors) std::fill(prior_.begin() + first, prior_.end(), 1.0f / static_cast<float>(count));
            sort_candidates(first, entity_.size());
            term_indptr_.push_back(static_cast<int64_t>(entity_.size()));
            prev = k;
            g = e;
        }
        // Children grouped by parent; a stable counting sort keeps the ascending label order of creation.
        const size_t num_edges = edge_parent.size();
        std::vector<int64_t> child_begin(num_nodes + 1, 0);
        for (int32_t p : edge_parent) ++child_begin[p + 1];
        for (int64_t u = 0; u < num_nodes; ++u) child_begin[u + 1] += child_begin[u];
        edges_.resize(num_edges);
        std::vector<int64_t> cursor(child_begin.begin(), child_begin.end() - 1);
        for (size_t e = 0; e < num_edges; ++e) {
            const int64_t c = static_cast<int64_t>(e) + 1;  // edge e created node e + 1
            const int32_t term = node_term_[c];
            edges_[cursor[edge_parent[e]]++] = {edge_label[e], static_cast<uint32_t>(child_begin[c]),
                                                static_cast<uint32_t>(child_begin[c + 1] - child_begin[c]), term,
                                                term >= 0 ? prior_[term_indptr_[term]] : 0.f};
        }
        num_nodes_ = num_nodes;
        root_count_ = static_cast<uint32_t>(child_begin[1]);
        std::vector<int32_t>().swap(node_term_);
        root_bmp_.assign(0x10000, -1);
        for (uint32_t j = 0; j < root_count_; ++j)
            if (edges_[j].label < 0x10000) root_bmp_[edges_[j].label] = static_cast<int32_t>(j);
    }

    int64_t num_names() const { return num_names_; }
    int64_t num_keys() const { return static_cast<int64_t>(term_indptr_.size()) - 1; }
    int64_t num_nodes() const { return num_nodes_; }
    size_t memory_bytes() const {
        return edges_.size() * sizeof(Edge) + term_indptr_.size() * 8 +
               entity_.size() * 12 + root_bmp_.size() * 4;
    }

    void link(std::string_view text, double min_prior, LinkOut& out, LinkScratch& s) const {
        norm_->normalize(text, s.text, s.cps);
        const Normalized& t = s.text;
        const size_t n = t.size();
        for (size_t a = 0; a < n;) {
            if (t.cp[a] == ' ' || !norm_->boundary(t, a)) { ++a; continue; }
            size_t best = 0;
            int32_t best_term = -1;
            const Edge* e = root_child(t.cp[a]);
            for (size_t b = a; e;) {
                if (e->term >= 0 && e->best_prior >= min_prior && norm_->boundary(t, b + 1))
                    best = b + 1, best_term = e->term;
                if (++b == n) break;
                e = find(e->child_begin, e->child_count, t.cp[b]);
            }
            if (best_term < 0) { ++a; continue; }
            out.start.push_back(t.begin[a]);
            out.end.push_back(t.end[best - 1]);
            int64_t kept = 0;
            for (int64_t c = term_indptr_[best_term]; c < term_indptr_[best_term + 1] && prior_[c] >= min_prior; ++c, ++kept) {
                out.entity.push_back(entity_[c]);
                out.prior.push_back(prior_[c]);
            }
            out.num_candidates.push_back(kept);
            a = best;
        }
    }

  private:
    // An edge carries what the walk needs of the node it leads to (its child range, the name ending there and
    // that name's best prior), so each step of a walk touches one place in memory: the current child range.
    struct Edge {
        uint32_t label;
        uint32_t child_begin, child_count;  // the child node's own children, in edges_
        int32_t term;                       // index of the name ending at the child, or -1
        float best_prior;                   // that name's highest prior
    };

    const Edge* root_child(uint32_t label) const {
        if (label < 0x10000) return root_bmp_[label] < 0 ? nullptr : &edges_[root_bmp_[label]];
        return find(0, root_count_, label);
    }
    const Edge* find(uint32_t begin, uint32_t count, uint32_t label) const {
        const Edge* lo = edges_.data() + begin;
        const Edge* hi = lo + count;
        if (count <= 8) {
            for (; lo < hi; ++lo)
                if (lo->label >= label) return lo->label == label ? lo : nullptr;
            return nullptr;
        }
        lo = std::lower_bound(lo, hi, label, [](const Edge& e, uint32_t l) { return e.label < l; });
        return (lo != hi && lo->label == label) ? lo : nullptr;
    }
    void sort_candidates(size_t b, size_t e) {
        if (e - b < 2) return;
        std::vector<size_t> idx(e - b);
        std::iota(idx.begin(), idx.end(), b);
        std::sort(idx.begin(), idx.end(), [&](size_t x, size_t y) {
            return prior_[x] != prior_[y] ? prior_[x] > prior_[y] : entity_[x] < entity_[y];
        });
        std::vector<int64_t> ent(e - b);
        std::vector<float> pri(e - b);
        for (size_t i = 0; i < idx.size(); ++i) ent[i] = entity_[idx[i]], pri[i] = prior_[idx[i]];
        std::copy(ent.begin(), ent.end(), entity_.begin() + b);
        std::copy(pri.begin(), pri.end(), prior_.begin() + b);
    }

    std::shared_ptr<const Normalizer> norm_;
    int64_t num_names_;
    std::vector<int32_t> node_term_;  // during the build only
    std::vector<Edge> edges_;         // grouped by parent node (the root's first), ascending label
    std::vector<int32_t> root_bmp_;   // index in edges_ of the root's child by code point (BMP): the hottest lookup
    uint32_t root_count_ = 0;
    int64_t num_nodes_ = 0;
    std::vector<int64_t> term_indptr_;   // per key: range in entity_ / prior_
    std::vector<int64_t> entity_;
    std::vector<float> prior_;
};

}  // namespace kvi
