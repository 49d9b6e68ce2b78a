"""Traversal: the C++ core against its Python twin (every option), and both against a networkx brute force."""
import itertools

import networkx as nx
import numpy as np
import pytest

from kvi_engine.graph.knowledge_graph import KnowledgeGraph


def random_graph(seed: int, n: int, t: int, r: int, backend: str) -> KnowledgeGraph:
    rng = np.random.default_rng(seed)
    # skewed endpoints (hubs), self loops and parallel triples all occur
    subj = np.minimum(rng.zipf(1.6, t) - 1, n - 1).astype(np.int32)
    obj = rng.integers(0, n, t).astype(np.int32)
    flip = rng.random(t) < 0.5
    subj[flip], obj[flip] = obj[flip], subj[flip].copy()
    rel = rng.integers(0, r, t).astype(np.int32)
    return KnowledgeGraph.from_arrays({"subj": subj, "rel": rel, "obj": obj}, names=[f"e{i}" for i in range(n)],
                                      relations=[f"r{i}" for i in range(r)], backend=backend)


def same(a, b):
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("triple_ids", "hops", "parents"))


GRAPHS = [(s, n, t, r) for s, (n, t, r) in enumerate([(1, 3, 1), (7, 20, 2), (53, 200, 3), (97, 700, 4), (300, 400, 5)])]


@pytest.mark.parametrize("spec", GRAPHS)
def test_core_matches_twin_on_every_option(spec):
    cpp, ref = random_graph(*spec, "cpp"), random_graph(*spec, "reference")
    rng = np.random.default_rng(spec[0] + 100)
    n, r = spec[1], spec[3]
    seed_lists = [list(rng.integers(0, n, rng.integers(0, 4))) for _ in range(12)] + [[0, 0, 0]]
    options = itertools.product([0, 1, 2, 3], ["out", "in", "both"], [None, 0, 1, 3], [None, 0, 5],
                                [None, "set", "per_hop"])
    for max_hops, direction, fanout, cap, rel_mode in options:
        relations = {None: None, "set": {f"r{i}" for i in range(0, r, 2)},
                     "per_hop": [{int(rng.integers(r))} if h % 2 else None for h in range(max_hops)] or None}[rel_mode]
        kw = dict(max_hops=max_hops, relations=relations, direction=direction, fanout=fanout, max_candidates=cap)
        got, want = cpp.traverse_batch(seed_lists, **kw), ref.traverse_batch(seed_lists, **kw)
        assert all(same(a, b) for a, b in zip(got, want)), kw


def brute_force(g: KnowledgeGraph, seeds, max_hops, allowed, direction):
    """Triple t is reached iff an endpoint it can be entered from lies within max_hops - 1 of the seeds in the
    relation-filtered graph; its hop is 1 + that distance."""
    G = nx.MultiDiGraph() if direction != "both" else nx.MultiGraph()
    G.add_nodes_from(range(g.num_entities))
    keep = [t for t in range(g.num_triples) if allowed is None or g.relations[g.relation_ids[t]] in allowed]
    for t in keep:
        s, o = int(g.subjects[t]), int(g.objects[t])
        G.add_edge(*((o, s) if direction == "in" else (s, o)))
    dist = nx.multi_source_dijkstra_path_length(G, set(seeds), cutoff=max_hops - 1) if seeds and max_hops else {}
    want = {}
    for t in keep:
        s, o = int(g.subjects[t]), int(g.objects[t])
        entries = {"out": [s], "in": [o], "both": [s, o]}[direction]
        d = [dist[e] for e in entries if e in dist]
        if d:
            want[t] = 1 + min(d)
    return want


@pytest.mark.parametrize("spec", GRAPHS[1:])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_matches_networkx_brute_force(spec, backend):
    g = random_graph(*spec, backend)
    rng = np.random.default_rng(spec[0])
    for trial in range(30):
        seeds = sorted({int(x) for x in rng.integers(0, g.num_entities, rng.integers(1, 4))})
        max_hops = int(rng.integers(0, 4))
        direction = ["out", "in", "both"][trial % 3]
        allowed = None if trial % 2 else {f"r{i}" for i in range(0, g.num_relations, 2)}
        tr = g.traverse(seeds, max_hops, relations=allowed, direction=direction)
        got = dict(zip(tr.triple_ids.tolist(), tr.hops.tolist()))
        assert len(got) == len(tr), "a triple was returned twice"
        assert got == brute_force(g, seeds, max_hops, allowed, direction)
        assert np.all(np.diff(tr.hops) >= 0), "breadth-first order"
        # the parent chain is a real path: each parent ends where its child starts, one hop earlier
        hop_of = got
        for t, h, p in zip(tr.triple_ids.tolist(), tr.hops.tolist(), tr.parents.tolist()):
            ends = {int(g.subjects[t]), int(g.objects[t])}
            if p < 0:
                assert h == 1 and ends & set(seeds)
            else:
                assert hop_of[p] == h - 1 and ends & {int(g.subjects[p]), int(g.objects[p])}


def test_caps_and_batching_invariants():
    g = random_graph(3, 97, 700, 4, "cpp")
    full = g.traverse([0, 1], 3, direction="both")
    capped = g.traverse([0, 1], 3, direction="both", max_candidates=40)
    assert np.array_equal(capped.triple_ids, full.triple_ids[:40])
    fan = g.traverse([0], 2, fanout=2)
    src = {}
    for t, p in zip(fan.triple_ids.tolist(), fan.parents.tolist()):
        src[(p, int(g.subjects[t]))] = src.get((p, int(g.subjects[t])), 0) + 1
    assert max(src.values()) <= 2
    queries = [[int(i)] for i in np.random.default_rng(0).integers(0, 97, 300)] + [[]]
    for threads in (1, 2, 4):
        batch = g.traverse_batch(queries, 2, direction="both", num_threads=threads)
        assert all(same(b, g.traverse(q, 2, direction="both")) for b, q in zip(batch, queries))
    assert len(batch[-1]) == 0


def test_empty_graph_and_zero_hops():
    for backend in ("cpp", "reference"):
        g = KnowledgeGraph.from_arrays({k: np.empty(0, np.int32) for k in ("subj", "rel", "obj")}, names=["a"],
                                       relations=[], backend=backend)
        assert len(g.traverse([0], 3, direction="both")) == 0
        assert len(random_graph(0, 7, 20, 2, backend).traverse([0], 0)) == 0
