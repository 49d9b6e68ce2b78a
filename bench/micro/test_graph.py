"""2-hop traversal on a power-law graph: the C++ core vs its Python twin vs networkx (ego graph of radius 2)."""
import numpy as np
import pytest

from kvi_engine.benchmarks.graph import power_law_graph
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.utils.extras import require

N, T, R, QUERIES = 20_000, 100_000, 16, 64


@pytest.fixture(scope="module")
def graph():
    subj, rel, obj = power_law_graph(N, T, R)
    arrays = {"subj": subj, "rel": rel, "obj": obj}
    names, relations = [f"e{i}" for i in range(N)], [f"r{i}" for i in range(R)]
    seeds = np.random.default_rng(1).integers(0, N, QUERIES).tolist()
    return {b: KnowledgeGraph.from_arrays(arrays, names=names, relations=relations, backend=b)
            for b in ("cpp", "reference")}, arrays, seeds


@pytest.mark.parametrize("backend", ["cpp", "reference", "networkx"])
def test_two_hop(benchmark, graph, backend):
    graphs, arrays, seeds = graph
    benchmark.extra_info.update(op="traverse_2hop", backend=backend, entities=N, triples=T, queries=len(seeds))
    if backend == "networkx":
        nx = require("networkx", "bench", "the networkx traversal baseline")
        g = nx.MultiDiGraph()
        g.add_edges_from(zip(arrays["subj"].tolist(), arrays["obj"].tolist()))
        u = g.to_undirected(as_view=True)
        benchmark.extra_info["queries"] = 2  # networkx is ~1000x slower: two queries keep the run short
        benchmark.pedantic(lambda: [len(nx.ego_graph(u, s, radius=2)) for s in seeds[:2]], rounds=3, iterations=1)
        return
    kg = graphs[backend]
    benchmark(lambda: kg.traverse_batch([[s] for s in seeds], max_hops=2, direction="both", num_threads=1))
