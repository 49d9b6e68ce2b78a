// The one pybind11 bindings file of kvi_engine._core. Algorithms live in csrc/kvi/*.h (no pybind11 there);
// this file only checks and converts arguments, releases the GIL and maps errors: std::invalid_argument ->
// ValueError (pybind11's default), std::out_of_range -> IndexError, a wrong dtype -> TypeError.
// Arrays come in as numpy without copies (py::arg().noconvert(): a wrong dtype is an error, not a silent copy)
// and results go out as numpy arrays that own their buffers through a py::capsule.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvi/attention.h"
#include "kvi/graph.h"
#include "kvi/linker.h"
#include "kvi/normalize.h"
#include "kvi/parallel.h"
#include "kvi/ppr.h"
#include "kvi/quant.h"
#include "kvi/traverse.h"

namespace py = pybind11;

namespace {

template <class T>
const T* array_data(const py::array& a, const char* name, int64_t expected_len = -1) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                             ", got " + std::string(py::str(a.dtype())));
    if (a.ndim() != 1) throw std::invalid_argument(std::string(name) + ": expected a 1-D array, got " + std::to_string(a.ndim()) + "-D");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": array must be C-contiguous");
    if (expected_len >= 0 && a.shape(0) != expected_len)
        throw std::invalid_argument(std::string(name) + ": expected length " + std::to_string(expected_len) + ", got " +
                                    std::to_string(a.shape(0)));
    return static_cast<const T*>(a.data());
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* owned = new std::vector<T>(std::move(v));
    py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {sizeof(T)}, owned->data(), free_when_done);
}

template <class T>
std::vector<T> concat(const std::vector<std::vector<T>*>& parts) {
    size_t n = 0;
    for (auto* p : parts) n += p->size();
    std::vector<T> out;
    out.reserve(n);
    for (auto* p : parts) out.insert(out.end(), p->begin(), p->end());
    return out;
}

// ----------------------------------------------------------------------------------------------- graph

class PyGraph {
  public:
    PyGraph(py::array subj, py::array rel, py::array obj, py::array out_indptr, py::array out_triples,
            py::array in_indptr, py::array in_triples, int64_t num_entities, int64_t num_relations)
        : arrays_{subj, rel, obj, out_indptr, out_triples, in_indptr, in_triples} {
        if (num_entities < 0 || num_relations < 0) throw std::invalid_argument("graph: counts must be >= 0");
        const int64_t t = subj.ndim() == 1 ? subj.shape(0) : -1;
        g_.num_entities = num_entities;
        g_.num_relations = num_relations;
        g_.num_triples = t;
        g_.subj = array_data<int32_t>(subj, "subj", t);
        g_.rel = array_data<int32_t>(rel, "rel", t);
        g_.obj = array_data<int32_t>(obj, "obj", t);
        g_.out_indptr = array_data<int64_t>(out_indptr, "out_indptr", num_entities + 1);
        g_.out_triples = array_data<int32_t>(out_triples, "out_triples", t);
        g_.in_indptr = array_data<int64_t>(in_indptr, "in_indptr", num_entities + 1);
        g_.in_triples = array_data<int32_t>(in_triples, "in_triples", t);
        py::gil_scoped_release nogil;
        kvi::validate(g_);
        columns_.build(g_);
    }

    py::tuple traverse_batch(py::array seeds, py::array seeds_indptr, int64_t max_hops, std::optional<py::array> allowed,
                             int direction, int64_t fanout, int64_t max_candidates, int64_t num_threads) {
        if (max_hops < 0) throw std::invalid_argument("max_hops must be >= 0");
        if (direction != kvi::kOut && direction != kvi::kIn && direction != kvi::kBoth)
            throw std::invalid_argument("direction must be 1 (out), 2 (in) or 3 (both)");
        if (seeds_indptr.ndim() != 1 || seeds_indptr.shape(0) < 1)
            throw std::invalid_argument("seeds_indptr: expected a 1-D array of length num_queries + 1");
        const int64_t num_queries = seeds_indptr.shape(0) - 1;
        const int64_t* qptr = array_data<int64_t>(seeds_indptr, "seeds_indptr");
        const int64_t* s = array_data<int64_t>(seeds, "seeds");
        const int64_t num_seeds = seeds.shape(0);
        if (qptr[0] != 0 || qptr[num_queries] != num_seeds) throw std::invalid_argument("seeds_indptr must run from 0 to len(seeds)");
        for (int64_t q = 0; q < num_queries; ++q)
            if (qptr[q + 1] < qptr[q]) throw std::invalid_argument("seeds_indptr is not monotone at query " + std::to_string(q));
        for (int64_t i = 0; i < num_seeds; ++i)
            if (s[i] < 0 || s[i] >= g_.num_entities)
                throw py::index_error("seed entity id " + std::to_string(s[i]) + " is outside [0, " + std::to_string(g_.num_entities) + ")");
        kvi::TraverseParams p;
        p.max_hops = max_hops;
        p.direction = direction;
        p.fanout = fanout;
        p.max_candidates = max_candidates;
        if (allowed) {
            const py::array& a = *allowed;
            if (!a.dtype().is(py::dtype::of<uint8_t>())) throw py::type_error("allowed: expected dtype uint8");
            if (a.ndim() != 2 || a.shape(1) != g_.num_relations || !(a.shape(0) == 1 || a.shape(0) == max_hops))
                throw std::invalid_argument("allowed: expected shape [1 or max_hops, num_relations]");
            if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("allowed: array must be C-contiguous");
            p.allowed = static_cast<const uint8_t*>(a.data());
            p.allowed_rows = a.shape(0);
        }
        // Each worker appends to its own pooled buffer (capacity kept across calls: no page faults, no per-query
        // vectors); the spans are then copied once, in query order, into the output arrays.
        struct Span { int worker; int64_t begin, size; };
        std::vector<Span> spans(num_queries);
        std::vector<std::unique_ptr<Worker>> ws;
        int64_t total = 0;
        {
            py::gil_scoped_release nogil;
            const int workers = kvi::resolve_threads(num_threads, num_queries / 16 + 1);
            ws = acquire(workers);
            kvi::parallel_for(num_queries, workers, [&](int w, int64_t q) {
                auto& buf = ws[w]->out;
                const int64_t begin = static_cast<int64_t>(buf.triples.size());
                ws[w]->traversal.traverse(g_, p, s + qptr[q], qptr[q + 1] - qptr[q], buf);
                spans[q] = {w, begin, static_cast<int64_t>(buf.triples.size()) - begin};
            });
            for (const Span& sp : spans) total += sp.size;
        }
        py::array_t<int64_t> indptr(num_queries + 1);
        py::array_t<int32_t> triples(total), hops(total), parents(total);
        {
            py::gil_scoped_release nogil;
            int64_t* ip = indptr.mutable_data();
            int32_t *tp = triples.mutable_data(), *hp = hops.mutable_data(), *pp = parents.mutable_data();
            ip[0] = 0;
            for (int64_t q = 0; q < num_queries; ++q) {
                const Span& sp = spans[q];
                const auto& buf = ws[sp.worker]->out;
                std::copy_n(buf.triples.data() + sp.begin, sp.size, tp + ip[q]);
                std::copy_n(buf.hops.data() + sp.begin, sp.size, hp + ip[q]);
                std::copy_n(buf.parents.data() + sp.begin, sp.size, pp + ip[q]);
                ip[q + 1] = ip[q] + sp.size;
            }
            release(std::move(ws));
        }
        return py::make_tuple(indptr, triples, hops, parents);
    }

    int64_t num_entities() const { return g_.num_entities; }
    int64_t num_triples() const { return g_.num_triples; }
    int64_t num_relations() const { return g_.num_relations; }
    size_t memory_bytes() const { return columns_.out_far.size() * 16; }

  private:
    // Workspaces (graph-sized mark arrays, output buffers) are pooled across calls: a query never allocates
    // them anew. Concurrent calls (the GIL is released) each take their own.
    struct Worker {
        kvi::TraverseWorkspace traversal;
        kvi::TraversalOut out;
    };
    std::vector<std::unique_ptr<Worker>> acquire(int n) {
        std::lock_guard<std::mutex> lock(pool_mutex_);
        std::vector<std::unique_ptr<Worker>> out;
        while (static_cast<int>(out.size()) < n) {
            if (pool_.empty()) out.push_back(std::make_unique<Worker>());
            else out.push_back(std::move(pool_.back())), pool_.pop_back();
            out.back()->out.triples.clear(), out.back()->out.hops.clear(), out.back()->out.parents.clear();
        }
        return out;
    }
    void release(std::vector<std::unique_ptr<Worker>>&& ws) {
        std::lock_guard<std::mutex> lock(pool_mutex_);
        for (auto& w : ws) pool_.push_back(std::move(w));
    }

    std::vector<py::array> arrays_;  // keeps the viewed buffers alive
    kvi::GraphView g_;
    kvi::EdgeColumns columns_;
    std::mutex pool_mutex_;
    std::vector<std::unique_ptr<Worker>> pool_;
};

static void bind_graph(py::module_& m) {
    m.def(
        "build_csr",
        [](py::array key, int64_t num_keys) {
            const int32_t* k = array_data<int32_t>(key, "key");
            // keys are int32: more groups than 2^31 cannot be addressed (and would only allocate a huge indptr)
            if (num_keys < 0 || num_keys > static_cast<int64_t>(INT32_MAX) + 1)
                throw std::invalid_argument("num_keys must be in [0, 2^31], got " + std::to_string(num_keys));
            const int64_t n = key.shape(0);
            std::vector<int64_t> indptr(num_keys + 1);
            std::vector<int32_t> order(n);
            {
                py::gil_scoped_release nogil;
                kvi::build_csr(k, n, num_keys, indptr.data(), order.data());
            }
            return py::make_tuple(to_numpy(std::move(indptr)), to_numpy(std::move(order)));
        },
        py::arg("key").noconvert(), py::arg("num_keys"),
        "CSR grouping of row ids by key: (indptr int64[num_keys+1], order int32[n]), ascending row id per group.");

    m.def(
        "ppr",
        [](py::array s_indptr, py::array s_entities, py::array s_weight, py::array e_indptr, py::array e_sentences,
           py::array e_weight, py::array reset_s, py::array reset_e, double restart, int64_t iterations) {
            kvi::MentionWalk w;
            w.num_sentences = reset_s.ndim() == 1 ? reset_s.shape(0) : -1;
            w.num_entities = reset_e.ndim() == 1 ? reset_e.shape(0) : -1;
            w.num_mentions = s_entities.ndim() == 1 ? s_entities.shape(0) : -1;
            const float* rs = array_data<float>(reset_s, "reset_s");
            const float* re = array_data<float>(reset_e, "reset_e");
            w.s_indptr = array_data<int64_t>(s_indptr, "s_indptr", w.num_sentences + 1);
            w.s_entities = array_data<int32_t>(s_entities, "s_entities");
            w.s_weight = array_data<float>(s_weight, "s_weight", w.num_mentions);
            w.e_indptr = array_data<int64_t>(e_indptr, "e_indptr", w.num_entities + 1);
            w.e_sentences = array_data<int32_t>(e_sentences, "e_sentences", w.num_mentions);
            w.e_weight = array_data<float>(e_weight, "e_weight", w.num_mentions);
            if (!(restart > 0.0 && restart <= 1.0) || iterations < 0 || iterations > INT32_MAX)
                throw std::invalid_argument("ppr: restart must be in (0, 1] and iterations >= 0, got " +
                                            std::to_string(restart) + ", " + std::to_string(iterations));
            kvi::validate(w);
            std::vector<float> out_s(w.num_sentences), out_e(w.num_entities);
            {
                py::gil_scoped_release nogil;
                kvi::ppr(w, rs, re, restart, static_cast<int>(iterations), out_s.data(), out_e.data());
            }
            return py::make_tuple(to_numpy(std::move(out_s)), to_numpy(std::move(out_e)));
        },
        py::arg("s_indptr").noconvert(), py::arg("s_entities").noconvert(), py::arg("s_weight").noconvert(),
        py::arg("e_indptr").noconvert(), py::arg("e_sentences").noconvert(), py::arg("e_weight").noconvert(),
        py::arg("reset_s").noconvert(), py::arg("reset_e").noconvert(), py::arg("restart"), py::arg("iterations"),
        "Personalised PageRank over the sentence-entity mention graph: (p_sentences float32[S], p_entities "
        "float32[N]).");

    py::class_<PyGraph>(m, "Graph", "Validated view of a knowledge graph's triple and CSR arrays (no copies).")
        .def(py::init<py::array, py::array, py::array, py::array, py::array, py::array, py::array, int64_t, int64_t>(),
             py::arg("subj").noconvert(), py::arg("rel").noconvert(), py::arg("obj").noconvert(),
             py::arg("out_indptr").noconvert(), py::arg("out_triples").noconvert(), py::arg("in_indptr").noconvert(),
             py::arg("in_triples").noconvert(), py::arg("num_entities"), py::arg("num_relations"))
        .def("traverse_batch", &PyGraph::traverse_batch, py::arg("seeds").noconvert(),
             py::arg("seeds_indptr").noconvert(), py::arg("max_hops"), py::arg("allowed").noconvert() = py::none(),
             py::arg("direction") = 1, py::arg("fanout") = -1, py::arg("max_candidates") = -1, py::arg("num_threads") = 0,
             "Traverse every query (seeds[seeds_indptr[q]:seeds_indptr[q+1]]) with the GIL released; returns "
             "(indptr int64[Q+1], triple_ids int32[M], hops int32[M], parents int32[M]).")
        .def_property_readonly("num_entities", &PyGraph::num_entities)
        .def_property_readonly("num_triples", &PyGraph::num_triples)
        .def_property_readonly("num_relations", &PyGraph::num_relations)
        .def_property_readonly("memory_bytes", &PyGraph::memory_bytes,
                               "Bytes the core owns beyond the viewed arrays (derived edge columns).");
}

// ---------------------------------------------------------------------------------------------- linker

std::string_view bytes_view(const py::handle& h, const char* what, size_t i) {
    if (!PyBytes_Check(h.ptr())) throw py::type_error(std::string(what) + " " + std::to_string(i) + ": expected bytes");
    return {PyBytes_AS_STRING(h.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(h.ptr()))};
}

static void bind_linker(py::module_& m) {
    py::class_<kvi::Normalizer, std::shared_ptr<kvi::Normalizer>>(
        m, "Normalizer", "Unicode tables for linking (built by kvi_engine.graph.normalize.native_tables()).")
        .def(py::init([](py::array fold, py::array cls, py::array pool, py::array pool_indptr, py::array comp_keys,
                         py::array comp_vals) {
                 const uint32_t* f = array_data<uint32_t>(fold, "fold", kvi::kNumCodePoints);
                 const uint8_t* c = array_data<uint8_t>(cls, "cls", kvi::kNumCodePoints);
                 const uint32_t* p = array_data<uint32_t>(pool, "pool");
                 const int64_t* pi = array_data<int64_t>(pool_indptr, "pool_indptr");
                 const uint64_t* ck = array_data<uint64_t>(comp_keys, "comp_keys");
                 const uint32_t* cv = array_data<uint32_t>(comp_vals, "comp_vals", comp_keys.shape(0));
                 return std::make_shared<kvi::Normalizer>(
                     std::vector<uint32_t>(f, f + kvi::kNumCodePoints), std::vector<uint8_t>(c, c + kvi::kNumCodePoints),
                     std::vector<uint32_t>(p, p + pool.shape(0)), std::vector<int64_t>(pi, pi + pool_indptr.shape(0)), ck, cv,
                     static_cast<size_t>(comp_keys.shape(0)));
             }),
             py::arg("fold").noconvert(), py::arg("cls").noconvert(), py::arg("pool").noconvert(),
             py::arg("pool_indptr").noconvert(), py::arg("comp_keys").noconvert(), py::arg("comp_vals").noconvert())
        .def(
            "normalize",
            [](const kvi::Normalizer& n, py::bytes text) {
                std::string_view v = bytes_view(text, "text", 0);
                kvi::Normalized out;
                std::vector<uint32_t> scratch;
                n.normalize(v, out, scratch);
                return py::make_tuple(to_numpy(std::move(out.cp)), to_numpy(std::move(out.begin)), to_numpy(std::move(out.end)));
            },
            py::arg("text"), "(code points uint32, begin int64, end int64): normalised text and its source ranges.");

    py::class_<kvi::Linker>(m, "Linker", "Trie of normalised names; longest non-overlapping word-boundary matches.")
        .def(py::init([](std::shared_ptr<kvi::Normalizer> norm, py::bytes blob, py::array offsets, py::array entity_ids,
                         std::optional<py::array> priors) {
                 const int64_t n = entity_ids.ndim() == 1 ? entity_ids.shape(0) : -1;
                 const int64_t* e = array_data<int64_t>(entity_ids, "entity_ids");
                 const int64_t* off = array_data<int64_t>(offsets, "offsets", n + 1);
                 const float* pr = priors ? array_data<float>(*priors, "priors", n) : nullptr;
                 std::string_view b = bytes_view(blob, "blob", 0);
                 if (off[n] != static_cast<int64_t>(b.size())) throw std::invalid_argument("offsets[-1] must equal len(blob)");
                 py::gil_scoped_release nogil;
                 return std::make_unique<kvi::Linker>(norm, b.data(), off, n, e, pr);
             }),
             py::arg("normalizer"), py::arg("blob"), py::arg("offsets").noconvert(), py::arg("entity_ids").noconvert(),
             py::arg("priors").noconvert() = py::none())
        .def(
            "link_batch",
            [](const kvi::Linker& l, py::list texts, double min_prior, int64_t num_threads) {
                const int64_t q = static_cast<int64_t>(texts.size());
                std::vector<std::string_view> views;
                views.reserve(q);
                for (size_t i = 0; i < texts.size(); ++i) views.push_back(bytes_view(texts[i], "text", i));
                std::vector<kvi::LinkOut> results(q);
                {
                    py::gil_scoped_release nogil;
                    const int workers = kvi::resolve_threads(num_threads, q / 64 + 1);
                    std::vector<kvi::LinkScratch> scratch(workers);
                    kvi::parallel_for(q, workers, [&](int w, int64_t i) {
                        try {
                            l.link(views[i], min_prior, results[i], scratch[w]);
                        } catch (const std::invalid_argument& e) {
                            throw std::invalid_argument("text " + std::to_string(i) + ": " + e.what());
                        }
                    });
                }
                std::vector<int64_t> mptr{0}, cptr{0};
                std::vector<std::vector<int64_t>*> st, en, ent;
                std::vector<std::vector<float>*> pri;
                for (auto& r : results) {
                    mptr.push_back(mptr.back() + static_cast<int64_t>(r.start.size()));
                    for (int64_t c : r.num_candidates) cptr.push_back(cptr.back() + c);
                    st.push_back(&r.start), en.push_back(&r.end), ent.push_back(&r.entity), pri.push_back(&r.prior);
                }
                return py::make_tuple(to_numpy(std::move(mptr)), to_numpy(concat(st)), to_numpy(concat(en)),
                                      to_numpy(std::move(cptr)), to_numpy(concat(ent)), to_numpy(concat(pri)));
            },
            py::arg("texts"), py::arg("min_prior") = 0.0, py::arg("num_threads") = 0,
            "Link UTF-8 texts (bytes) with the GIL released; returns (mention_indptr[Q+1], start[M], end[M], "
            "candidate_indptr[M+1], entity[C], prior[C]); offsets are in code points of the decoded text.")
        .def_property_readonly("num_names", &kvi::Linker::num_names)
        .def_property_readonly("num_keys", &kvi::Linker::num_keys)
        .def_property_readonly("num_nodes", &kvi::Linker::num_nodes)
        .def_property_readonly("memory_bytes", &kvi::Linker::memory_bytes);
}

// ----------------------------------------------------------------------------------------------- attention

// Checked view of an N-D C-contiguous array; shape entries < 0 match any size.
const void* nd_raw(const py::array& a, const char* name, const py::dtype& dtype, const std::vector<int64_t>& shape) {
    if (!a.dtype().is(dtype))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(dtype)) + ", got " +
                             std::string(py::str(a.dtype())));
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "[", got = "[";
        for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
        for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
        throw std::invalid_argument(std::string(name) + ": expected shape " + want + "], got " + got + "]");
    }
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": array must be C-contiguous");
    return a.data();
}

template <class T>
const T* nd_data(const py::array& a, const char* name, const std::vector<int64_t>& shape) {
    return static_cast<const T*>(nd_raw(a, name, py::dtype::of<T>(), shape));
}

static const py::dtype& half_or_bits(const py::array& a) {
    static const py::dtype f16("float16"), u16 = py::dtype::of<uint16_t>();
    return a.dtype().is(f16) ? f16 : u16;  // numpy float16, or fp16/bf16 bits as uint16
}

static const std::map<std::string, kvi::attn::Format>& formats() {
    using F = kvi::attn::Format;
    static const std::map<std::string, F> m{{"fp32", F::f32}, {"fp16", F::f16}, {"bf16", F::bf16}, {"int8", F::i8},
                                            {"int4", F::i4},  {"int2", F::i2},  {"fp8", F::fp8}};
    return m;
}

// Codes [tokens, heads, code_dim] (+ fp16 params [param_rows, heads, dim / group]) in `format`.
static kvi::attn::Source bank_source(const py::array& codes, const std::string& format, const char* name, int64_t heads,
                                     int64_t dim, const std::optional<py::array>& scale = std::nullopt,
                                     const std::optional<py::array>& zero = std::nullopt, int64_t group = 0,
                                     bool per_capsule = false) {
    using F = kvi::attn::Format;
    auto it = formats().find(format);
    if (it == formats().end()) throw std::invalid_argument(std::string(name) + ": unknown storage format '" + format + "'");
    kvi::attn::Source s;
    s.format = it->second;
    const int64_t cd = kvi::attn::code_dim(s.format, dim);
    const std::vector<int64_t> shape{-1, heads, cd};
    switch (s.format) {
        case F::f32: s.codes = nd_data<float>(codes, name, shape); break;
        case F::f16: case F::bf16: s.codes = nd_raw(codes, name, half_or_bits(codes), shape); break;
        case F::i8: s.codes = nd_data<int8_t>(codes, name, shape); break;
        default: s.codes = nd_data<uint8_t>(codes, name, shape); break;
    }
    s.tokens = codes.shape(0);
    if (!kvi::attn::quantised(s.format)) {
        if (scale || zero) throw std::invalid_argument(std::string(name) + ": float storage takes no scales");
        return s;
    }
    if (!scale) throw std::invalid_argument(std::string(name) + ": " + format + " storage needs its scales");
    s.group = per_capsule ? 1 : group;
    s.per_capsule = per_capsule;
    if (s.group < 1 || dim % s.group)
        throw std::invalid_argument(std::string(name) + ": group size " + std::to_string(s.group) + " does not divide head_dim " +
                                    std::to_string(dim));
    std::vector<int64_t> pshape{per_capsule ? -1 : s.tokens, heads, dim / s.group};
    s.scale = static_cast<const uint16_t*>(nd_raw(*scale, (std::string(name) + " scale").c_str(), half_or_bits(*scale), pshape));
    s.param_rows = scale->shape(0);
    if (zero) {
        pshape[0] = s.param_rows;
        s.zero = static_cast<const uint16_t*>(nd_raw(*zero, (std::string(name) + " zero").c_str(), half_or_bits(*zero), pshape));
    }
    return s;
}

static void bind_attention(py::module_& m) {
    m.def(
        "prefix_attention",
        [](py::array query, py::array own_k, py::array own_v, std::optional<py::array> own_mask, py::array bank_k,
           py::array bank_v, const std::string& bank_format, py::array prefix_k, py::array prefix_v,
           const std::string& prefix_format, py::array token, py::array visible, py::array cos, py::array sin,
           py::array out, py::array lse, double scale, int round, std::optional<py::array> k_scale,
           std::optional<py::array> k_zero, std::optional<py::array> v_scale, std::optional<py::array> v_zero,
           int64_t group_size, bool key_per_capsule, std::optional<py::array> capsule_row, int64_t num_threads,
           int vector_width) {
            if (query.ndim() != 4 || own_k.ndim() != 4)
                throw std::invalid_argument("query and own_k must be 4-D [batch, heads, len, head_dim]");
            if (round < 0 || round > 2) throw std::invalid_argument("round must be 0 (none), 1 (fp16) or 2 (bf16)");
            kvi::attn::Problem p;
            p.batch = query.shape(0), p.q_heads = query.shape(1), p.q_len = query.shape(2), p.head_dim = query.shape(3);
            p.kv_heads = own_k.shape(1), p.kv_len = own_k.shape(2), p.num_slots = token.ndim() == 2 ? token.shape(1) : -1;
            const int64_t B = p.batch, D = p.head_dim;
            p.query = nd_data<float>(query, "query", {B, p.q_heads, p.q_len, D});
            p.own_k = nd_data<float>(own_k, "own_k", {B, p.kv_heads, p.kv_len, D});
            p.own_v = nd_data<float>(own_v, "own_v", {B, p.kv_heads, p.kv_len, D});
            if (own_mask) p.own_mask = nd_data<uint8_t>(*own_mask, "own_mask", {B, p.q_len, p.kv_len});
            p.bank_k = bank_source(bank_k, bank_format, "bank_k", p.kv_heads, D, k_scale, k_zero, group_size,
                                   key_per_capsule);
            p.bank_v = bank_source(bank_v, bank_format, "bank_v", p.kv_heads, D, v_scale, v_zero, group_size);
            p.prefix_k = bank_source(prefix_k, prefix_format, "prefix_k", p.kv_heads, D);
            p.prefix_v = bank_source(prefix_v, prefix_format, "prefix_v", p.kv_heads, D);
            p.prefix_len = p.prefix_k.tokens;
            p.token = nd_data<int32_t>(token, "token", {B, p.num_slots});
            p.visible = nd_data<uint8_t>(visible, "visible", {B, p.num_slots});
            if (capsule_row) p.capsule_row = nd_data<int32_t>(*capsule_row, "capsule_row", {B, p.num_slots});
            p.cos = nd_data<float>(cos, "cos", {B, p.num_slots, D / 2});
            p.sin = nd_data<float>(sin, "sin", {B, p.num_slots, D / 2});
            if (!out.writeable() || !lse.writeable()) throw std::invalid_argument("out and lse must be writeable");
            p.out = const_cast<float*>(nd_data<float>(out, "out", {B, p.q_heads, p.q_len, D}));
            p.lse = const_cast<float*>(nd_data<float>(lse, "lse", {B, p.q_heads, p.q_len}));
            p.scale = static_cast<float>(scale);
            p.round = static_cast<kvi::attn::Round>(round);
            p.vector_width = vector_width;
            py::gil_scoped_release nogil;
            kvi::attn::prefix_attention(p, static_cast<int>(num_threads));
        },
        py::arg("query").noconvert(), py::arg("own_k").noconvert(), py::arg("own_v").noconvert(),
        py::arg("own_mask").noconvert(), py::arg("bank_k").noconvert(), py::arg("bank_v").noconvert(),
        py::arg("bank_format"), py::arg("prefix_k").noconvert(), py::arg("prefix_v").noconvert(),
        py::arg("prefix_format"), py::arg("token").noconvert(), py::arg("visible").noconvert(),
        py::arg("cos").noconvert(), py::arg("sin").noconvert(), py::arg("out").noconvert(),
        py::arg("lse").noconvert(), py::arg("scale"), py::arg("round") = 0, py::arg("k_scale").noconvert() = py::none(),
        py::arg("k_zero").noconvert() = py::none(), py::arg("v_scale").noconvert() = py::none(),
        py::arg("v_zero").noconvert() = py::none(), py::arg("group_size") = 0, py::arg("key_per_capsule") = false,
        py::arg("capsule_row").noconvert() = py::none(), py::arg("num_threads") = 0, py::arg("vector_width") = 0,
        "Fused prefix attention (GIL released): writes out [B, Hq, Q, D] and lse [B, Hq, Q] in place. Injected "
        "K/V are read from bank_k/bank_v [tokens, kv_heads, code_dim] (+ fp16 k/v scale and zero [rows, kv_heads, "
        "D/group]; per-capsule key params are indexed by capsule_row [B, slots]) and prefix_k/prefix_v, dequantised "
        "and rotated by cos/sin [B, slots, D/2]; own_mask [B, Q, KV] uint8 or None for causal.");
    m.def(
        "prefix_gather",
        [](py::array bank_k, py::array bank_v, const std::string& bank_format, py::array prefix_k, py::array prefix_v,
           const std::string& prefix_format, py::array token, py::array visible, py::array cos, py::array sin,
           py::array out_k, py::array out_v, std::optional<py::array> k_scale, std::optional<py::array> k_zero,
           std::optional<py::array> v_scale, std::optional<py::array> v_zero, int64_t group_size,
           bool key_per_capsule, std::optional<py::array> capsule_row, int64_t num_threads, bool zero_masked) {
            if (out_k.ndim() != 4) throw std::invalid_argument("out_k must be 4-D [batch, kv_heads, slots, head_dim]");
            if (!out_k.writeable() || !out_v.writeable()) throw std::invalid_argument("out_k and out_v must be writeable");
            kvi::attn::Problem p;
            p.batch = out_k.shape(0), p.kv_heads = p.q_heads = out_k.shape(1), p.num_slots = out_k.shape(2);
            p.head_dim = out_k.shape(3);
            const int64_t B = p.batch, H = p.kv_heads, S = p.num_slots, D = p.head_dim;
            auto* ok = const_cast<float*>(nd_data<float>(out_k, "out_k", {B, H, S, D}));
            static const py::dtype f16("float16");
            float* ov = nullptr;
            uint16_t* ov16 = nullptr;  // fp16 values (fp16 storage only; gather_slots checks)
            if (out_v.dtype().is(f16))
                ov16 = static_cast<uint16_t*>(const_cast<void*>(nd_raw(out_v, "out_v", f16, {B, H, S, D})));
            else
                ov = const_cast<float*>(nd_data<float>(out_v, "out_v", {B, H, S, D}));
            p.bank_k = bank_source(bank_k, bank_format, "bank_k", H, D, k_scale, k_zero, group_size, key_per_capsule);
            p.bank_v = bank_source(bank_v, bank_format, "bank_v", H, D, v_scale, v_zero, group_size);
            p.prefix_k = bank_source(prefix_k, prefix_format, "prefix_k", H, D);
            p.prefix_v = bank_source(prefix_v, prefix_format, "prefix_v", H, D);
            p.prefix_len = p.prefix_k.tokens;
            p.token = nd_data<int32_t>(token, "token", {B, S});
            p.visible = nd_data<uint8_t>(visible, "visible", {B, S});
            if (capsule_row) p.capsule_row = nd_data<int32_t>(*capsule_row, "capsule_row", {B, S});
            p.cos = nd_data<float>(cos, "cos", {B, S, D / 2});
            p.sin = nd_data<float>(sin, "sin", {B, S, D / 2});
            py::gil_scoped_release nogil;
            kvi::attn::gather_slots(p, static_cast<int>(num_threads), ok, ov, ov16, zero_masked);
        },
        py::arg("bank_k").noconvert(), py::arg("bank_v").noconvert(), py::arg("bank_format"),
        py::arg("prefix_k").noconvert(), py::arg("prefix_v").noconvert(), py::arg("prefix_format"),
        py::arg("token").noconvert(), py::arg("visible").noconvert(), py::arg("cos").noconvert(),
        py::arg("sin").noconvert(), py::arg("out_k").noconvert(), py::arg("out_v").noconvert(),
        py::arg("k_scale").noconvert() = py::none(), py::arg("k_zero").noconvert() = py::none(),
        py::arg("v_scale").noconvert() = py::none(), py::arg("v_zero").noconvert() = py::none(),
        py::arg("group_size") = 0, py::arg("key_per_capsule") = false, py::arg("capsule_row").noconvert() = py::none(),
        py::arg("num_threads") = 0, py::arg("zero_masked") = false,
        "The unfused path's gather, fused (GIL released): writes every visible slot's key, dequantised and rotated by "
        "cos/sin [B, slots, D/2], and value into out_k/out_v [B, kv_heads, slots, D] float32 (out_v may be float16 "
        "for fp16 storage: the values' own bits); other slots are left as they are, or zeroed with zero_masked. "
        "Bank and table arguments as prefix_attention's.");
    m.def(
        "decode_attention",
        [](py::array query, py::array inj_k, py::array inj_v, py::array inj_valid, py::array own_k, py::array own_v,
           std::optional<py::array> own_mask, py::array out, py::array lse, double scale,
           std::optional<py::array> segment, std::optional<py::array> seg_lse, int64_t num_threads) {
            if (query.ndim() != 4 || inj_k.ndim() != 4 || own_k.ndim() != 4)
                throw std::invalid_argument("query, inj_k and own_k must be 4-D [batch, heads, len, head_dim]");
            if (!out.writeable() || !lse.writeable()) throw std::invalid_argument("out and lse must be writeable");
            if (segment.has_value() != seg_lse.has_value())
                throw std::invalid_argument("segment and seg_lse go together");
            kvi::attn::DecodeProblem p;
            p.batch = query.shape(0), p.q_heads = query.shape(1), p.q_len = query.shape(2), p.head_dim = query.shape(3);
            p.kv_heads = inj_k.shape(1), p.slots = inj_k.shape(2), p.kv_len = own_k.shape(2);
            const int64_t B = p.batch, Hq = p.q_heads, H = p.kv_heads, Q = p.q_len, D = p.head_dim;
            p.query = nd_data<float>(query, "query", {B, Hq, Q, D});
            p.inj_k = nd_data<float>(inj_k, "inj_k", {B, H, p.slots, D});
            static const py::dtype f16("float16");
            if (inj_v.dtype().is(f16))  // an fp16 bank's values, exact in half the bytes
                p.inj_v16 = static_cast<const uint16_t*>(nd_raw(inj_v, "inj_v", f16, {B, H, p.slots, D}));
            else
                p.inj_v = nd_data<float>(inj_v, "inj_v", {B, H, p.slots, D});
            p.inj_valid = nd_data<uint8_t>(inj_valid, "inj_valid", {B, p.slots});
            p.own_k = nd_data<float>(own_k, "own_k", {B, H, p.kv_len, D});
            p.own_v = nd_data<float>(own_v, "own_v", {B, H, p.kv_len, D});
            if (own_mask) p.own_mask = nd_data<uint8_t>(*own_mask, "own_mask", {B, Q, p.kv_len});
            p.out = const_cast<float*>(nd_data<float>(out, "out", {B, Hq, Q, D}));
            p.lse = const_cast<float*>(nd_data<float>(lse, "lse", {B, Hq, Q}));
            if (segment) {
                if (seg_lse->ndim() != 4) throw std::invalid_argument("seg_lse must be 4-D [batch, q_heads, q_len, segments]");
                if (!seg_lse->writeable()) throw std::invalid_argument("seg_lse must be writeable");
                p.segments = seg_lse->shape(3);
                p.segment = nd_data<int32_t>(*segment, "segment", {B, p.slots});
                p.seg_lse = const_cast<float*>(nd_data<float>(*seg_lse, "seg_lse", {B, Hq, Q, p.segments}));
            }
            p.scale = static_cast<float>(scale);
            py::gil_scoped_release nogil;
            kvi::attn::split_decode(p, static_cast<int>(num_threads));
        },
        py::arg("query").noconvert(), py::arg("inj_k").noconvert(), py::arg("inj_v").noconvert(),
        py::arg("inj_valid").noconvert(), py::arg("own_k").noconvert(), py::arg("own_v").noconvert(),
        py::arg("own_mask").noconvert(), py::arg("out").noconvert(), py::arg("lse").noconvert(), py::arg("scale"),
        py::arg("segment").noconvert() = py::none(), py::arg("seg_lse").noconvert() = py::none(),
        py::arg("num_threads") = 0,
        "Decode attention over float32 injected K/V already gathered and rotated (GIL released; inj_v may be "
        "float16): query [B, Hq, Q, D] attends to inj_k/inj_v [B, Hkv, S, D] where inj_valid [B, S] (uint8) and to own_k/own_v "
        "[B, Hkv, T, D] (own_mask [B, Q, T] uint8, or None: causal) as one softmax; writes out [B, Hq, Q, D] and "
        "lse [B, Hq, Q] in place, and with segment [B, S] int32 (-1: none) the log-sum-exp over each segment into "
        "seg_lse [B, Hq, Q, n].");
}

// ----------------------------------------------------------------------------------------------- quant

static const py::array& quant_2d(const py::array& a, const char* name, const py::dtype& dt, int64_t cols = -1) {
    if (!a.dtype().is(dt))
        throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(dt)) + ", got " +
                             std::string(py::str(a.dtype())));
    if (a.ndim() != 2) throw std::invalid_argument(std::string(name) + ": expected a 2-D array, got " + std::to_string(a.ndim()) + "-D");
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + ": array must be C-contiguous");
    if (cols >= 0 && a.shape(1) != cols)
        throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(cols) + " columns, got " +
                                    std::to_string(a.shape(1)));
    return a;
}

static py::array quant_new(const py::dtype& dt, int64_t rows, int64_t cols) {
    return py::array(dt, std::vector<py::ssize_t>{static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

static py::dtype quant_code_dtype(kvi::quant::Scheme sc) {
    return sc == kvi::quant::Scheme::Int8 ? py::dtype::of<int8_t>() : py::dtype::of<uint8_t>();
}

static void bind_quant(py::module_& m) {
    namespace q = kvi::quant;
    m.def(
        "quant_encode_rows",
        [](py::array x, const std::string& scheme, int64_t group_size, int num_threads) {
            const q::Scheme sc = q::parse_scheme(scheme);
            quant_2d(x, "x", py::dtype::of<float>());
            const int64_t n = x.shape(0), d = x.shape(1);
            if (group_size <= 0 || d % group_size) throw std::invalid_argument("group_size must divide head_dim");
            py::array codes = quant_new(quant_code_dtype(sc), n, q::code_dim(sc, d));
            py::array scale = quant_new(py::dtype("float16"), n, d / group_size);
            py::object zero = py::none();
            uint16_t* zp = nullptr;
            if (q::has_zero(sc)) {
                py::array z = quant_new(py::dtype("float16"), n, d / group_size);
                zp = static_cast<uint16_t*>(z.mutable_data());
                zero = z;
            }
            auto* cp = static_cast<uint8_t*>(codes.mutable_data());
            auto* sp = static_cast<uint16_t*>(scale.mutable_data());
            const auto* xp = static_cast<const float*>(x.data());
            {
                py::gil_scoped_release nogil;
                q::encode_rows(sc, xp, n, d, group_size, cp, sp, zp, num_threads);
            }
            return py::make_tuple(codes, scale, zero);
        },
        py::arg("x").noconvert(), py::arg("scheme"), py::arg("group_size"), py::arg("num_threads") = 0,
        "Quantise rows x [n, d] float32 with per-row groups -> (codes, scale [n, d/g] fp16, zero | None).");
    m.def(
        "quant_encode_columns",
        [](py::array x, const std::string& scheme, py::array indptr, int num_threads) {
            const q::Scheme sc = q::parse_scheme(scheme);
            quant_2d(x, "x", py::dtype::of<float>());
            const int64_t n = x.shape(0), d = x.shape(1);
            if (!indptr.dtype().is(py::dtype::of<int64_t>())) throw py::type_error("indptr: expected dtype int64");
            if (indptr.ndim() != 1 || indptr.shape(0) < 1 || !(indptr.flags() & py::array::c_style))
                throw std::invalid_argument("indptr: expected a contiguous 1-D array of at least one entry");
            const int64_t c = indptr.shape(0) - 1;
            py::array codes = quant_new(quant_code_dtype(sc), n, q::code_dim(sc, d));
            py::array scale = quant_new(py::dtype("float16"), c, d);
            py::object zero = py::none();
            uint16_t* zp = nullptr;
            if (q::has_zero(sc)) {
                py::array z = quant_new(py::dtype("float16"), c, d);
                zp = static_cast<uint16_t*>(z.mutable_data());
                zero = z;
            }
            auto* cp = static_cast<uint8_t*>(codes.mutable_data());
            auto* sp = static_cast<uint16_t*>(scale.mutable_data());
            const auto* xp = static_cast<const float*>(x.data());
            const auto* ip = static_cast<const int64_t*>(indptr.data());
            {
                py::gil_scoped_release nogil;
                q::encode_columns(sc, xp, n, d, ip, c, cp, sp, zp, num_threads);
            }
            return py::make_tuple(codes, scale, zero);
        },
        py::arg("x").noconvert(), py::arg("scheme"), py::arg("indptr").noconvert(), py::arg("num_threads") = 0,
        "Quantise x [n, d] float32 with per-channel params over row segments indptr [c + 1] -> (codes, scale [c, d], "
        "zero | None).");
    m.def(
        "quant_gather_decode",
        [](py::array codes, py::array scale, std::optional<py::array> zero, const std::string& scheme, int64_t head_dim,
           py::array code_rows, py::array param_rows, int num_threads) {
            const q::Scheme sc = q::parse_scheme(scheme);
            const int per = 8 / q::bits_of(sc);
            if (head_dim <= 0 || head_dim % per)  // a partial code byte would be read past the end of its row
                throw std::invalid_argument("head_dim " + std::to_string(head_dim) + " must be > 0 and fill whole "
                                            "code bytes (" + std::to_string(per) + " values per byte for " + scheme + ")");
            quant_2d(codes, "codes", quant_code_dtype(sc), q::code_dim(sc, head_dim));
            quant_2d(scale, "scale", py::dtype("float16"));
            const int64_t ng = scale.shape(1);
            if (q::has_zero(sc) != zero.has_value())
                throw std::invalid_argument(std::string("zero: ") + (zero ? "not used by " : "required by ") + scheme);
            if (zero) {
                quant_2d(*zero, "zero", py::dtype("float16"), ng);
                if (zero->shape(0) != scale.shape(0)) throw std::invalid_argument("zero and scale differ in rows");
            }
            const int64_t m = code_rows.ndim() == 1 ? code_rows.shape(0) : -1;
            const int64_t* cr = array_data<int64_t>(code_rows, "code_rows", m);
            const int64_t* pr = array_data<int64_t>(param_rows, "param_rows", m);
            py::array out = quant_new(py::dtype::of<float>(), m, head_dim);
            const auto* cp = static_cast<const uint8_t*>(codes.data());
            const auto* sp = static_cast<const uint16_t*>(scale.data());
            const auto* zp = zero ? static_cast<const uint16_t*>(zero->data()) : nullptr;
            auto* op = static_cast<float*>(out.mutable_data());
            const int64_t ncr = codes.shape(0), npr = scale.shape(0);
            {
                py::gil_scoped_release nogil;
                q::gather_decode(sc, cp, ncr, head_dim, sp, zp, npr, ng, cr, pr, m, op, num_threads);
            }
            return out;
        },
        py::arg("codes").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(), py::arg("scheme"),
        py::arg("head_dim"), py::arg("code_rows").noconvert(), py::arg("param_rows").noconvert(),
        py::arg("num_threads") = 0,
        "Dequantise codes[code_rows] with params scale/zero[param_rows] -> float32 [len(code_rows), head_dim].");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "kvi-engine native core (graph store, traversal, entity linker, bank codecs, CPU attention)";
    m.attr("__version__") = "0.1.0";
    kvi::install_fork_guard();  // a fork()ed child must not enter the parent's OpenMP pool (kvi/parallel.h)
    m.def("num_threads_default", []() { return kvi::resolve_threads(0, INT32_MAX); },
          "Threads used by batched calls when num_threads=0 (hardware concurrency).");
    bind_graph(m);
    bind_linker(m);
    bind_attention(m);
    bind_quant(m);
}
