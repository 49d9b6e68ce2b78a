"""Evidence that reaches the model, and retrieval latency, on the shared real QA sets (no language model needed).

    kvi bench retrieval                                   # the three sets, RAG vs KVI vs KVI w/o graph
    kvi bench retrieval --sets musique_ans_dev100 --limit 50
    kvi bench retrieval --kpr models/kpr                  # also KPR as the dense scorer of RAG and KVI
    kvi bench retrieval --latency-only --scale-to 100000  # latency on the sets tiled to 100K sentences

Each set's documents are pooled into one corpus and ingested openly (no entity list; cached under
``bench/cache``). Methods: RAG (dense MiniLM top-k sentences), KVI (the graph + dense hybrid over sentence capsules,
:mod:`kvi_engine.retrieval.hybrid`) and KVI w/o graph (its dense + lexical half). Every method gets the same budget:
``--top-k`` sentences (8) within ``--budget-tokens`` (256) MiniLM word pieces. Metrics per method and per question
type: support_recall, support_all, doc_recall (:mod:`kvi_engine.eval.support`). Latency: one thread, one question
at a time, question encoding included (median / p90 ms), with the hybrid's stages; ``--scale-to N`` tiles a set's
capsules (renamed copies, embeddings reused) to N sentences. Writes ``bench/results/retrieval.{json,csv}``.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import asdict, replace

import numpy as np

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.realsets import CachedEncoder, corpus, default_cache
from kvi_engine.utils.paths import SHARED_SETS


def _retrievals(c, encoder, config, tag: str) -> dict:
    from kvi_engine.query.retrieve import DenseRetrieval, FlatRetrieval, GraphRetrieval
    from kvi_engine.retrieval import CapsuleRetriever, DenseIndex, DRMScorer, IntentClassifier

    scorer = DRMScorer(encoder)
    intents = IntentClassifier()
    kvi = CapsuleRetriever(c.graph, scorer=scorer, intents=intents, config=config, capsule_tokens=c.capsule_tokens)
    return {f"RAG{tag}": DenseRetrieval(DenseIndex.from_store(c.store, encoder), c.sentence_tokens, config),
            f"KVI{tag}": GraphRetrieval(kvi, lambda p: p),
            f"KVI w/o graph{tag}": FlatRetrieval(c.capsules, c.capsule_tokens, scorer, intents, encoder, config,
                                                 lambda p: p, graph=c.graph)}


def quality(c, encoders: dict, config, limit: int | None) -> list[dict]:
    from kvi_engine.eval.support import support_report

    data = c.dataset[:limit] if limit else c.dataset
    questions = [it.question for it in data]
    reached, slots = {}, {}
    for tag, enc in encoders.items():
        for name, r in _retrievals(c, enc, config, tag).items():
            found = r.retrieve(questions)
            reached[name] = [f.reached for f in found]
            slots[name] = float(np.mean([len(f.reached) for f in found]))
    rep = support_report(data, reached, c.store, c.capsules)
    rows = []
    for name, v in rep["methods"].items():
        rows.append({"set": c.name, "method": name, "type": "all", "n": v["n"],
                     **{k: round(100 * v[k], 1) for k in ("support_recall", "support_all", "doc_recall")},
                     "slots": round(slots[name], 2)})
        for t, w in v["by_type"].items():
            rows.append({"set": c.name, "method": name, "type": t, "n": w["n"],
                         **{k: round(100 * w[k], 1) for k in ("support_recall", "support_all", "doc_recall")}})
    return rows


def tiled(c, k: int):
    """The corpus repeated ``k`` times: copies of every capsule with renamed entities and sentence ids, so only the
    original links to question names and the walk, the dense product and selection run at k times the size."""
    from kvi_engine.capsules.capsule import Entity
    from kvi_engine.graph.knowledge_graph import KnowledgeGraph

    def rename(n: str, r: int) -> str:
        return n if r == 0 else f"{n} #{r}"

    caps, ents = [], []
    for r in range(k):
        ents += [Entity(rename(e.name, r), e.type, tuple(rename(a, r) for a in e.aliases), e.description)
                 for e in c.entities]
        for cap in c.capsules:
            sid = None if cap.sentence_id is None else (cap.sentence_id if r == 0 else f"r{r}-{cap.sentence_id}")
            obj = sid if cap.kind == "sentence" else (cap.object if cap.literal else rename(cap.object, r))
            caps.append(replace(cap, subject=rename(cap.subject, r), object=obj, sentence_id=sid,
                                entities=tuple(rename(n, r) for n in cap.entities)))
    return KnowledgeGraph.from_capsules(caps, ents), c.capsule_tokens * k


def latency(c, encoder, config, n_questions: int, scale_to: int | None) -> dict:
    import torch

    from kvi_engine.retrieval.hybrid import HybridRetriever

    torch.set_num_threads(1)
    kw = {"config": config.hybrid, "top_k": config.top_k, "budget_tokens": config.budget_tokens}
    h = HybridRetriever(c.graph, encoder, capsule_tokens=c.capsule_tokens, **kw)
    graph, k, build = c.graph, 1, 0.0
    if scale_to:
        k = max(1, -(-scale_to // h.rows.size))
        t = time.perf_counter()
        graph, tokens = tiled(c, k)
        build = time.perf_counter() - t
        h = HybridRetriever(graph, encoder, capsule_tokens=tokens, embeddings=np.tile(h.emb, (k, 1)), **kw)
    qs = [it.question for it in c.dataset[:n_questions]]
    for q in qs[:5]:
        h.retrieve([q])  # warm-up
    h.stages = type(h.stages)(ppr_backend=h.stages.ppr_backend)
    wall, cpu = [], []
    for q in qs:
        t, p = time.perf_counter(), time.process_time()
        h.retrieve([q])
        wall.append(1000 * (time.perf_counter() - t)), cpu.append(1000 * (time.process_time() - p))
    reset_s = np.zeros(h.walk.num_sentences, np.float32)
    reset_e = np.zeros(h.walk.num_entities, np.float32)
    reset_e[int(np.argmax(h.walk.df))] = 1.0
    t = time.perf_counter()
    for _ in range(20):
        h.walk.run(reset_s, reset_e, config.hybrid.restart, config.hybrid.iterations)
    ppr_ms = (time.perf_counter() - t) / 20 * 1000
    return {"set": c.name, "sentences": int(h.rows.size), "entities": graph.num_entities,
            "mentions": int(graph.mentions.entities.shape[0]), "tiles": k, "questions": len(qs),
            "median_ms": round(float(np.median(wall)), 2), "p90_ms": round(float(np.percentile(wall, 90)), 2),
            "median_cpu_ms": round(float(np.median(cpu)), 2), **{f"{s}_ms": v for s, v in
                                                                  h.stages.per_question_ms().items()},
            "ppr_ms": round(ppr_ms, 2), "ppr_backend": h.stages.ppr_backend, "graph_build_s": round(build, 2),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main(argv=None) -> int:
    from kvi_engine.benchmarks.results import format_table
    from kvi_engine.retrieval import MiniLMEncoder, RetrievalConfig

    ap = argparse.ArgumentParser(prog="kvi bench retrieval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SHARED_SETS))
    ap.add_argument("--limit", type=int, help="only the first N questions of each set")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--budget-tokens", type=int, default=256)
    ap.add_argument("--kpr", help="a KPR model directory: also run RAG and KVI with KPR as the dense scorer")
    ap.add_argument("--latency-questions", type=int, default=100)
    ap.add_argument("--scale-to", type=int, nargs="*", default=[], help="also time the sets tiled to N sentences")
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--cache", default=str(default_cache()))
    ap.add_argument("--out", default=str(results.default_out("retrieval")))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from pathlib import Path
    cache = Path(args.cache)
    config = RetrievalConfig(top_k=args.top_k, budget_tokens=args.budget_tokens)
    encoders = {"": CachedEncoder(MiniLMEncoder(), cache, "minilm")}
    if args.kpr:
        from kvi_engine.kpr.encoder import KPREncoder
        encoders[" (KPR)"] = CachedEncoder(KPREncoder(args.kpr), cache, "kpr-" + Path(args.kpr).name)
    rows, timing = [], []
    for name in args.sets:
        c = corpus(name, cache)
        if not args.latency_only:
            rows += quality(c, encoders, config, args.limit)
            print(format_table([r for r in rows if r["set"] == name and r["type"] == "all"],
                               ["set", "method", "n", "support_recall", "support_all", "doc_recall", "slots"]),
                  flush=True)
        for scale in [None, *args.scale_to]:
            timing.append(latency(c, encoders[""], config, args.latency_questions, scale))
            print(timing[-1], flush=True)
    results.write(args.out, "retrieval", rows, {**vars(args), "retrieval": asdict(config)}, latency=timing)
    return 0
