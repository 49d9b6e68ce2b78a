"""The four kinds of retrieval the compared methods draw on, each an object owning exactly what it reads:

- ``none``: nothing;
- ``dense``: MiniLM (or any encoder) sentence embeddings in hnswlib over the sentence store, top-k within the budget;
- ``graph``: entity linking -> intent -> multi-hop traversal -> DRM -> budgeted top-k + anchors
  (:class:`~kvi_engine.retrieval.capsule_retriever.CapsuleRetriever`);
- ``flat``: the graph ablation -- the same DRM scoring and selection over every triple capsule, preselected by dense
  similarity of the statements: no linking, no traversal.

Each returns one :class:`Found` per question: what reaches the model, in which channel, and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from kvi_engine.retrieval import (
    CapsuleRetriever,
    DenseIndex,
    DRMScorer,
    Hit,
    IntentClassifier,
    Retrieval,
    RetrievalConfig,
    ScoredCapsule,
    select_capsules,
)
from kvi_engine.retrieval.hybrid import HybridRetriever

RETRIEVALS = ("none", "dense", "graph", "flat")


@dataclass(slots=True)
class Found:
    """What one retrieval found for one question. Capsule ids index the capsule bank, sentence ids the sentence
    bank (= sentence store order)."""
    question: str
    entities: list[str] = field(default_factory=list)
    intent: tuple[str, ...] = ()
    triples: list[ScoredCapsule] = field(default_factory=list)  # selected, best first (index = capsule position)
    candidates: int = 0
    capsule_ids: list[int] = field(default_factory=list)  # triples then anchors
    passages: list[Hit] = field(default_factory=list)
    sentence_ids: list[int] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    fallback: str | None = None
    reached: list[str] = field(default_factory=list)  # sentence ids that reach the model, in either channel


def _found(r: Retrieval, bank_id: Callable[[int], int]) -> Found:
    intent = r.intent.intents if r.intent is not None else ()
    reached = list(dict.fromkeys(sc.capsule.sentence_id for sc in r.selection.capsules if sc.capsule.sentence_id))
    return Found(r.question, list(r.entities), tuple(intent), list(r.selection.capsules), len(r.ranked),
                 [bank_id(i) for i in r.capsule_ids], evidence=r.evidence, fallback=r.fallback, reached=reached)


class NoRetrieval:
    def retrieve(self, questions: Sequence[str]) -> list[Found]:
        return [Found(q) for q in questions]


class DenseRetrieval:
    """Sentences by embedding similarity, taken in rank order while they fit the token budget, until ``top_k``
    (from the ``pool`` x top_k nearest, so a long sentence that does not fit leaves its slot to the next one)."""

    def __init__(self, index: DenseIndex, sentence_tokens: Sequence[int], config: RetrievalConfig, pool: int = 8):
        self.index, self.tokens, self.config, self.pool = index, sentence_tokens, config, pool
        self.position = {sid: i for i, sid in enumerate(index.ids)}

    def retrieve(self, questions: Sequence[str]) -> list[Found]:
        cfg, out = self.config, []
        for q, hits in zip(questions, self.index.search(list(questions), max(cfg.top_k * self.pool, 1))):
            found, used = Found(q), 0
            for h in hits:
                if len(found.passages) >= cfg.top_k:
                    break
                sid = self.position[h.id]
                if used + self.tokens[sid] <= cfg.budget_tokens:
                    found.passages.append(h)
                    found.sentence_ids.append(sid)
                    used += self.tokens[sid]
            found.evidence = [h.text for h in found.passages]
            found.reached = [h.id for h in found.passages]
            found.candidates = len(hits)
            out.append(found)
        return out


class GraphRetrieval:
    def __init__(self, retriever: CapsuleRetriever, bank_id: Callable[[int], int]):
        self.retriever, self.bank_id = retriever, bank_id

    def retrieve(self, questions: Sequence[str]) -> list[Found]:
        return [_found(r, self.bank_id) for r in self.retriever.retrieve(questions)]


class FlatRetrieval:
    """The graph ablation: candidates are every triple capsule (the ``max_candidates`` most similar statements when
    there are more), scored by the same DRM with hop 1, selected within the same budget; anchors of the chosen
    capsules' entities, looked up by name in the capsule list."""

    def __init__(self, capsules, capsule_tokens: Sequence[int], scorer: DRMScorer, intents: IntentClassifier,
                 encoder, config: RetrievalConfig, bank_id: Callable[[int], int], graph=None):
        self.capsules, self.tokens, self.scorer, self.intents = capsules, capsule_tokens, scorer, intents
        self.config, self.bank_id = config, bank_id
        self.hybrid = None
        if graph is not None and graph.mentions.num_sentence_capsules > 0:
            # knowledge from open ingestion: the hybrid without its graph (dense + lexical, same budget and minimum)
            self.hybrid = HybridRetriever(graph, encoder, capsule_tokens=capsule_tokens,
                                          config=replace(config.hybrid, use_graph=False), top_k=config.top_k,
                                          budget_tokens=config.budget_tokens, max_anchors=config.max_anchors)
            return
        self.positions = [p for p, c in enumerate(capsules) if c.kind == "triple"]
        if not self.positions:
            raise ValueError("the knowledge holds no triple capsules to rank")
        texts = [scorer.statement(capsules[p]) for p in self.positions]
        self.index = DenseIndex([str(i) for i in range(len(self.positions))], texts, encoder, exact=True)
        self.anchors = {c.subject: p for p, c in enumerate(capsules) if c.kind == "anchor"}

    def retrieve(self, questions: Sequence[str]) -> list[Found]:
        cfg, questions = self.config, list(questions)
        if self.hybrid is not None:
            return [_found(Retrieval(r.question, [], None, r.ranked, r.selection, [], r.fallback), self.bank_id)
                    for r in self.hybrid.retrieve(questions)]
        k = min(len(self.positions), cfg.max_candidates or len(self.positions))
        intents = self.intents.classify(questions)
        cands = [[self.positions[int(h.id)] for h in hits] for hits in self.index.search(questions, k)]
        ranked = self.scorer.score(questions, [[self.capsules[p] for p in row] for row in cands],
                                   hops=[[1] * len(row) for row in cands],
                                   relations=[it.relations for it in intents], indices=cands)
        anchor_tokens = {n: self.tokens[a] for n, a in self.anchors.items()}
        out = []
        for q, it, r in zip(questions, intents, ranked):
            sel = select_capsules(r, lambda sc: self.tokens[sc.index], cfg.budget_tokens, cfg.top_k, (),
                                  cfg.max_anchors, anchor_tokens)
            out.append(_found(Retrieval(q, [], it, r, sel, [self.anchors[n] for n in sel.anchors],
                                        None if r else "no capsule to rank"), self.bank_id))
        return out
