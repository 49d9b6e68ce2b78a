"""Capsule retrieval for a batch of questions: entity linking -> intent -> multi-hop traversal -> DRM scoring ->
top-k capsules within a token budget + entity anchors. Returns everything a trace needs.

Knowledge built by open ingestion holds sentence capsules; there the graph + dense hybrid
(:class:`~kvi_engine.retrieval.hybrid.HybridRetriever`: linked entities -> personalised PageRank over the mention
graph, united with dense top-k, fused scores, a minimum score, paragraph spread) chooses the capsules and returns
the same :class:`Retrieval`. Triple-only knowledge (e.g. the sample corpus, extracted over a given entity list)
goes through the traversal: when pruning by the question's intent leaves no candidate, the traversal is redone over
every relation (``fallback`` says so). Anchors whose statement says nothing ("X is an entity.") are never injected.

Capsule indices are positions in the capsule list the ``KnowledgeGraph`` was built from (``graph.capsule_index``),
which are the bank's capsule ids when the bank was compiled from the same list. A question with no linked entity gets
no capsules and ``fallback`` says why (the engine then generates without knowledge).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from kvi_engine.capsules.statements import has_content, render_statement
from kvi_engine.retrieval.drm import DRMScorer, ScoredCapsule, Selection, select_capsules
from kvi_engine.retrieval.hybrid import HybridConfig, HybridRetriever
from kvi_engine.retrieval.intent import IntentClassifier, IntentMatch

NO_ENTITY = "no linked entity: plain generation"
INTENT_FALLBACK = "intent pruning left no candidate: traversed every relation"


@dataclass(slots=True)
class RetrievalConfig:
    max_hops: int = 2
    direction: str = "both"
    top_k: int = 8
    budget_tokens: int = 256
    max_anchors: int = 4
    fanout: int | None = None
    max_candidates: int | None = 512
    prune_by_intent: bool = True  # traverse only the intent's relations when it has any (else: all relations)
    min_score: float = 0.0        # triple path: capsules scoring below are never selected
    hybrid: HybridConfig = field(default_factory=HybridConfig)   # knowledge with sentence capsules

    def __post_init__(self):
        if self.max_hops < 1 or self.top_k < 0 or self.budget_tokens < 0 or self.max_anchors < 0:
            raise ValueError(f"invalid retrieval config {self}")


@dataclass(slots=True)
class Retrieval:
    question: str
    entities: list[str] = field(default_factory=list)  # linked entity names, in order of mention
    intent: IntentMatch | None = None
    ranked: list[ScoredCapsule] = field(default_factory=list)  # every candidate, best first
    selection: Selection = field(default_factory=Selection)
    anchor_ids: list[int] = field(default_factory=list)  # capsule indices of the selected anchors (-1 skipped)
    fallback: str | None = None

    @property
    def capsule_ids(self) -> list[int]:
        """Capsule indices to inject: selected triples in rank order, then anchors."""
        return [sc.index for sc in self.selection.capsules] + self.anchor_ids

    @property
    def evidence(self) -> list[str]:
        """Provenance sentences of the selected capsules (the text channel), de-duplicated, in rank order."""
        return list(dict.fromkeys(sc.capsule.sentence or render_statement(sc.capsule)
                                  for sc in self.selection.capsules))


class CapsuleRetriever:
    def __init__(self, graph, linker=None, scorer: DRMScorer | None = None, intents: IntentClassifier | None = None,
                 config: RetrievalConfig | None = None, capsule_tokens: Sequence[int] | None = None):
        from kvi_engine.graph.linker import EntityLinker

        self.graph = graph
        self.linker = linker or EntityLinker.from_graph(graph)
        self.scorer = scorer or DRMScorer()
        self.intents = intents or IntentClassifier(encoder=self.scorer.encoder)
        self.config = config or RetrievalConfig()
        self.capsule_tokens = capsule_tokens
        self._hybrid: HybridRetriever | None = None

    @property
    def hybrid(self) -> HybridRetriever | None:
        """The hybrid retriever when the graph holds sentence capsules (built on first use: it embeds them)."""
        if self._hybrid is None and self.graph.mentions.num_sentence_capsules > 0:
            cfg = self.config
            self._hybrid = HybridRetriever(self.graph, self.scorer.encoder, capsule_tokens=self.capsule_tokens,
                                           config=cfg.hybrid, top_k=cfg.top_k, budget_tokens=cfg.budget_tokens,
                                           max_anchors=cfg.max_anchors)
        return self._hybrid

    def _tokens(self, sc: ScoredCapsule) -> int:
        if self.capsule_tokens is not None:
            return int(self.capsule_tokens[sc.index])
        return len(render_statement(sc.capsule).split()) + 2  # rough words->tokens estimate without a bank

    def retrieve(self, questions: Sequence[str]) -> list[Retrieval]:
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question #{i} is empty")
        cfg, g = self.config, self.graph
        if self.hybrid is not None:
            return [Retrieval(r.question, [g.entity_name(x.entity) for x in r.linked], None, r.ranked, r.selection,
                              r.anchor_ids, r.fallback) for r in self.hybrid.retrieve(questions)]
        mentions = self.linker.link(list(questions))
        seeds = [list(dict.fromkeys(e for m in ms for e, _ in m.candidates)) for ms in mentions]
        intents = self.intents.classify(questions)
        out = [Retrieval(q, [g.entity_name(e) for e in s], it) for q, s, it in zip(questions, seeds, intents)]
        todo = [i for i, s in enumerate(seeds) if s]
        for i in set(range(len(questions))) - set(todo):
            out[i].fallback = NO_ENTITY
        if not todo:
            return out
        traversals = []
        for i in todo:  # relation pruning differs per question, so traverse_batch is used per intent group
            rels = intents[i].relations if cfg.prune_by_intent else None
            tr = g.traverse(seeds[i], cfg.max_hops, rels, cfg.direction, cfg.fanout, cfg.max_candidates)
            if rels is not None and not len(tr):
                tr = g.traverse(seeds[i], cfg.max_hops, None, cfg.direction, cfg.fanout, cfg.max_candidates)
                out[i].fallback = INTENT_FALLBACK
            traversals.append(tr)
        cands = [[g.capsule(int(t)) for t in tr.triple_ids] for tr in traversals]
        ranked = self.scorer.score([questions[i] for i in todo], cands,
                                   hops=[tr.hops.tolist() for tr in traversals],
                                   relations=[intents[i].relations for i in todo],
                                   indices=[g.capsule_index(tr.triple_ids).tolist() for tr in traversals])
        for i, r in zip(todo, ranked):
            res = out[i]
            res.ranked = r
            anchors = self._anchors(r, seeds[i])
            lengths = {n: (int(self.capsule_tokens[a]) if self.capsule_tokens is not None else len(n.split()) + 4)
                       for n, a in anchors.items()}
            res.selection = select_capsules(r, self._tokens, cfg.budget_tokens, cfg.top_k, res.entities,
                                            cfg.max_anchors, lengths, min_score=cfg.min_score)
            res.anchor_ids = [anchors[n] for n in res.selection.anchors]
            if not r:
                res.fallback = "linked entities have no facts within reach"
        return out

    def _anchors(self, ranked: list[ScoredCapsule], seed_ids: list[int]) -> dict[str, int]:
        """Entity name -> anchor capsule index, for the seeds and every entity of the candidates that has one."""
        g = self.graph
        ids = dict.fromkeys(seed_ids)
        for sc in ranked:
            for name in (sc.capsule.subject, sc.capsule.object):
                try:
                    ids.setdefault(g.entity_id(name))
                except KeyError:
                    pass
        ids = list(ids)
        idx = g.anchor_capsule_index(ids).tolist() if ids else []
        return {g.entity_name(e): a for e, a in zip(ids, idx) if a >= 0 and has_content(g.entity(e))}
