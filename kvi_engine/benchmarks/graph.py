"""Graph store and traversal: (a) 2-hop queries/s, (b) full BFS, (d) build time and memory, on a synthetic
power-law graph (Chung-Lu endpoints), C++ core vs its Python twin vs networkx vs igraph.

    kvi bench graph                    # 200k entities, 1M triples
    kvi bench graph --triples 100000   # quicker

Writes bench/results/graph.{json,csv} (machine, commit, rows) and prints the table.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import BenchRow as Row
from kvi_engine.benchmarks.timing import best_of, rss_mb
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.utils.extras import require


def power_law_graph(n: int, t: int, r: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (np.arange(n) + 1.0) ** -0.75
    perm = rng.permutation(n)
    subj = perm[rng.choice(n, t, p=w / w.sum())].astype(np.int32)
    obj = perm[rng.choice(n, t, p=w / w.sum())].astype(np.int32)
    rel = rng.integers(0, r, t).astype(np.int32)
    return subj, rel, obj


def ms(bench, impl, times, detail=""):
    return Row(bench, impl, times[0] * 1e3, times[1] * 1e3, "ms", detail)


def rate(bench, impl, count, times, unit, detail=""):
    return Row(bench, impl, count / times[0], count / times[1], unit, detail)


def nx_hops(G, seed: int, max_hops: int, direction: str) -> list[int]:
    """Breadth-first triple collection with networkx edge iteration (edge key = triple id)."""
    edges = {"out": lambda u: G.out_edges(u, keys=True), "in": lambda u: G.in_edges(u, keys=True)}[direction]
    frontier, seen, out = [seed], {seed}, []
    for _ in range(max_hops):
        nxt = []
        for u in frontier:
            for a, b, k in edges(u):
                out.append(k)
                v = b if direction == "out" else a
                if v not in seen:
                    seen.add(v)
                    nxt.append(v)
        frontier = nxt
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench graph", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=200_000)
    ap.add_argument("--triples", type=int, default=1_000_000)
    ap.add_argument("--relations", type=int, default=32)
    ap.add_argument("--queries", type=int, default=20_000, help="2-hop queries for the C++ core")
    ap.add_argument("--slow-queries", type=int, default=300, help="2-hop queries for networkx and the twin")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(results.default_out("graph")))
    args = ap.parse_args(argv)
    for module in ("igraph", "networkx"):  # the comparison baselines: fail before the expensive part
        require(module, "bench", "kvi bench graph")
    n, t = args.entities, args.triples
    rows: list[Row] = []
    subj, rel, obj = power_law_graph(n, t, args.relations)
    names, relations = [f"entity {i}" for i in range(n)], [f"r{i}" for i in range(args.relations)]
    arrays = {"subj": subj, "rel": rel, "obj": obj}

    # (d) build, save, load
    g = None

    def build():
        nonlocal g
        g = KnowledgeGraph.from_arrays(arrays, names=names, relations=relations, backend="cpp")
    rows.append(ms("build", "cpp", best_of(build, 3), "CSR both ways + validation + string tables"))
    mem = sum(a.nbytes for a in g._a.values()) + sum(s.blob.nbytes + s.offsets.nbytes for s in g._t.values())
    mem += g._core.memory_bytes
    rows.append(Row("memory", "cpp", mem / 2**20, mem / 2**20, "MiB", "arrays, string tables, edge columns"))
    with tempfile.TemporaryDirectory() as d:
        rows.append(ms("save", "cpp", best_of(lambda: g.save(d), 3)))
        rows.append(ms("load", "cpp", best_of(lambda: KnowledgeGraph.load(d), 3), "mmap + crc32 + validation"))
        rows.append(ms("load", "cpp(verify=False)", best_of(lambda: KnowledgeGraph.load(d, verify=False), 3),
                       "mmap + validation"))
    twin = None

    def build_twin():
        nonlocal twin
        twin = KnowledgeGraph.from_arrays(arrays, names=names, relations=relations, backend="reference")
    rows.append(ms("build", "python twin", best_of(build_twin, 1)))

    import igraph
    import networkx as nx
    graphs = {}

    def build_igraph():
        graphs["ig"] = igraph.Graph(n=n, edges=np.stack([subj, obj], 1), directed=True)

    def build_nx():
        G = nx.MultiDiGraph()
        G.add_nodes_from(range(n))
        G.add_edges_from(zip(subj.tolist(), obj.tolist(), range(t)))
        graphs["nx"] = G
    for name, fn in (("igraph", build_igraph), ("networkx", build_nx)):
        before = rss_mb()
        rows.append(ms("build", name, best_of(fn, 1)))
        rows.append(Row("memory", name, rss_mb() - before, rss_mb() - before, "MiB", "RSS growth"))
    ig, G = graphs["ig"], graphs["nx"]

    # (a) 2-hop queries
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, n, args.queries).tolist()
    slow = seeds[:args.slow_queries]
    for q in slow[:20]:
        assert sorted(nx_hops(G, q, 2, "out")) == sorted(g.traverse([q], 2).triple_ids.tolist())
    per_query = np.mean([len(g.traverse([q], 2)) for q in slow])
    configs = [("uncapped", {}), ("fanout=32,max_candidates=256", {"fanout": 32, "max_candidates": 256})]
    for label, kw in configs:
        b = f"2-hop {label}"
        rows.append(rate(b, "cpp (one call per query)", len(seeds), best_of(lambda: [g.traverse([q], 2, **kw) for q in seeds], 3), "queries/s"))
        rows.append(rate(b, "cpp batch, 1 thread", len(seeds), best_of(lambda: g.traverse_batch([[q] for q in seeds], 2, num_threads=1, **kw), 3), "queries/s"))
        rows.append(rate(b, f"cpp batch, {args.threads} threads", len(seeds), best_of(lambda: g.traverse_batch([[q] for q in seeds], 2, num_threads=args.threads, **kw), 3), "queries/s"))
        rows.append(rate(b, "python twin", len(slow), best_of(lambda: [twin.traverse([q], 2, **kw) for q in slow], 1), "queries/s"))
    rows.append(rate("2-hop uncapped", "networkx", len(slow), best_of(lambda: [nx_hops(G, q, 2, "out") for q in slow], 1),
                     "queries/s", f"{per_query:.0f} triples/query"))

    # (b) full BFS from one entity over the whole graph, both directions (igraph mode="all")
    hub = int(np.argmax(np.bincount(subj, minlength=n)))
    full = g.traverse([hub], 10**9, direction="both")
    rows.append(ms("full BFS", "cpp", best_of(lambda: g.traverse([hub], 10**9, direction="both"), 7),
                   f"{len(full)} triples, max hop {int(full.hops.max())}"))
    rows.append(ms("full BFS", "igraph", best_of(lambda: ig.bfs(hub, mode="all"), 7),
                   f"{len(ig.bfs(hub, mode='all')[0])} vertices"))
    U = G.to_undirected(as_view=True)
    rows.append(ms("full BFS", "networkx", best_of(lambda: sum(1 for _ in nx.bfs_edges(U, hub)), 1)))
    rows.append(ms("full BFS", "python twin", best_of(lambda: twin.traverse([hub], 10**9, direction="both"), 1)))

    print(f"graph: {n} entities, {t} triples, {args.relations} relations (power-law endpoints); "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    print(results.format_table(rows, ["bench", "impl", "value", "per_cpu", "unit", "detail"]))
    results.write(args.out, "graph", rows, vars(args), load_average=os.getloadavg()[0])
    print(f"wrote {args.out}.json / .csv")
    return 0
