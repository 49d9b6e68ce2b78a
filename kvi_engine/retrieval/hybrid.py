"""Graph + dense hybrid retrieval of sentence capsules: what the KVI path reads from knowledge built by open ingestion.

Per question:

1. dense: cosine of the question with every sentence capsule (one product with the embedding matrix);
2. seeds: the entities linked in the question (:class:`~kvi_engine.graph.question_linking.QuestionLinker`, links
   scoring >= ``min_link``), weighted prior x specificity; when nothing links, the ``dense_seeds`` nearest sentences
   (weighted by cosine) instead, and the trace says so;
3. graph proximity: personalised PageRank from the seeds over the entity-sentence mention graph
   (:mod:`kvi_engine.graph.ppr`: question entities -> their sentences -> co-mentioned bridge entities -> their
   sentences, as many hops as the walk goes), scaled by its maximum and raised to ``graph_power`` (a sentence a few
   hops out keeps a real share);
4. candidates: dense top ``dense_k`` united with graph top ``graph_k``; DRM fuses
   ``w_dense * cosine + w_lexical * lexical + w_graph * graph``; a candidate is eligible when its cosine reaches
   ``min_dense``, or an entity was linked and its graph score reaches ``min_graph`` (a minimum instead of always
   filling every slot);
5. selection: greedy within the budget (``top_k`` sentences, ``budget_tokens``), ``paragraph_penalty`` per sentence
   already taken from the same paragraph, then anchors of the linked entities that have content.

``use_graph=False`` is the "KVI w/o graph" ablation: dense candidates, cosine + lexical, the same eligibility and
selection, no linking, no walk. Tuned on 2WikiMultihopQA (even/odd split check) and applied unchanged elsewhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kvi_engine.capsules.statements import has_content
from kvi_engine.graph.ppr import MentionWalk
from kvi_engine.graph.question_linking import QuestionLinker
from kvi_engine.retrieval.drm import ScoredCapsule, select_capsules
from kvi_engine.retrieval.text import content_tokens

NO_LINK = "no linked entity: dense seeds only"


@dataclass(slots=True)
class HybridConfig:
    restart: float = 0.2
    iterations: int = 15
    min_link: float = 0.3
    dense_seeds: int = 3
    dense_k: int = 50
    graph_k: int = 50
    w_dense: float = 1.0
    w_lexical: float = 0.3
    w_graph: float = 1.0
    graph_power: float = 0.2
    min_dense: float = 0.3
    min_graph: float = 0.5
    paragraph_penalty: float = 0.1
    use_graph: bool = True

    def __post_init__(self):
        if not 0 < self.restart <= 1 or self.iterations < 0 or self.dense_k < 1 or self.graph_k < 0 \
                or self.dense_seeds < 0 or self.graph_power <= 0 or self.paragraph_penalty < 0:
            raise ValueError(f"invalid hybrid config {self}")


@dataclass(slots=True)
class Stages:
    """Seconds spent per stage, summed over the questions retrieved (for the latency benchmark)."""
    encode: float = 0.0
    dense: float = 0.0
    link: float = 0.0
    walk: float = 0.0
    score: float = 0.0
    questions: int = 0
    ppr_backend: str = ""

    def per_question_ms(self) -> dict[str, float]:
        n = max(self.questions, 1)
        return {k: round(1000 * getattr(self, k) / n, 3) for k in ("encode", "dense", "link", "walk", "score")}


@dataclass(slots=True)
class HybridResult:
    question: str
    linked: list = field(default_factory=list)          # Links used as seeds
    ranked: list[ScoredCapsule] = field(default_factory=list)
    selection: object = None
    anchor_ids: list[int] = field(default_factory=list)
    fallback: str | None = None


def paragraph_of(sentence_id: str) -> str:
    """The document (paragraph) of a sentence id ``<doc>:s<k>``."""
    doc, sep, k = sentence_id.rpartition(":s")
    return doc if sep and k.isdigit() else sentence_id


class HybridRetriever:
    def __init__(self, graph, encoder, *, capsule_tokens: Sequence[int] | None = None,
                 config: HybridConfig | None = None, linker: QuestionLinker | None = None, top_k: int = 8,
                 budget_tokens: int = 256, max_anchors: int = 4, embeddings: np.ndarray | None = None,
                 backend: str | None = None):
        self.graph, self.encoder = graph, encoder
        self.config = config or HybridConfig()
        self.top_k, self.budget_tokens, self.max_anchors = top_k, budget_tokens, max_anchors
        m = graph.mentions
        self.rows = np.flatnonzero(m.capsule >= 0)
        if not self.rows.size:
            raise ValueError("hybrid retrieval needs sentence capsules (knowledge built by open ingestion)")
        self.positions = m.capsule[self.rows]
        self.texts = [graph.sentence(int(k))[1] for k in self.rows]
        self.ids = [graph.sentence(int(k))[0] for k in self.rows]
        self.groups = [paragraph_of(i) for i in self.ids]
        if embeddings is None:
            embeddings = encoder.encode_passages(self.texts)
        if embeddings.shape[0] != len(self.texts):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(self.texts)} sentence capsules")
        self.emb = np.ascontiguousarray(embeddings, np.float32)
        self.lex = [frozenset(content_tokens(t)) for t in self.texts]
        if capsule_tokens is not None:
            self.tokens = np.asarray([capsule_tokens[int(p)] for p in self.positions], np.int64)
        else:
            self.tokens = np.asarray([len(t.split()) + 2 for t in self.texts], np.int64)
        self.linker = linker
        self.walk = None
        if self.config.use_graph:
            self.linker = linker or QuestionLinker(graph)
            self.walk = MentionWalk(m, backend=backend)
        self.stages = Stages(ppr_backend=self.walk.backend if self.walk else "")
        self._capsules: dict[int, object] = {}
        self.anchor_tokens: dict[int, int] = {}
        ents = graph.entities
        idx = graph.anchor_capsule_index(np.arange(graph.num_entities)) if graph.num_entities else []
        for e, a in enumerate(idx):
            if a >= 0 and has_content(ents[e]):
                self.anchor_tokens[e] = int(capsule_tokens[int(a)]) if capsule_tokens is not None \
                    else len(ents[e].name.split()) + 4

    def retrieve(self, questions: Sequence[str], query_embeddings: np.ndarray | None = None) -> list[HybridResult]:
        t = time.perf_counter()
        q = self.encoder.encode_queries(list(questions)) if query_embeddings is None else query_embeddings
        self.stages.encode += time.perf_counter() - t
        return [self._one(question, q[i]) for i, question in enumerate(questions)]

    def _one(self, question: str, q: np.ndarray) -> HybridResult:
        cfg, st = self.config, self.stages
        st.questions += 1
        t0 = time.perf_counter()
        dense = self.emb @ q
        n = dense.shape[0]
        res = HybridResult(question)
        g = np.zeros(n, np.float32)
        t = time.perf_counter()
        st.dense += t - t0
        t0 = t
        if cfg.use_graph:
            res.linked = [x for x in self.linker.link(question) if x.score >= cfg.min_link]
            t1 = time.perf_counter()
            st.link += t1 - t0
            g = self._graph_scores(res, dense)
            t0 = time.perf_counter()
            st.walk += t0 - t1
        kd = min(cfg.dense_k, n)
        cand = np.argpartition(-dense, kd - 1)[:kd]
        if cfg.use_graph and cfg.graph_k > 0 and g.max() > 0:
            kg = min(cfg.graph_k, n)
            cand = np.union1d(cand, np.argpartition(-g, kg - 1)[:kg])
        else:
            cand = np.sort(cand)
        q_tok = set(content_tokens(question))
        lex = np.asarray([len(q_tok & self.lex[i]) / len(q_tok) if q_tok else 0.0 for i in cand], np.float32)
        score = cfg.w_dense * dense[cand] + cfg.w_lexical * lex + cfg.w_graph * g[cand]
        ok = dense[cand] >= cfg.min_dense
        if res.linked:
            ok |= g[cand] >= cfg.min_graph
        order = np.lexsort((cand, -score))
        res.ranked = [ScoredCapsule(self._capsule(int(cand[j])), float(score[j]), float(lex[j]), float(dense[cand[j]]),
                                    1, int(self.positions[cand[j]]), float(g[cand[j]])) for j in order if ok[j]]
        row_of = {int(self.positions[i]): int(i) for i in cand}
        names = [self.graph.entity_name(x.entity) for x in res.linked if x.entity in self.anchor_tokens]
        anchor_tokens = {self.graph.entity_name(x.entity): self.anchor_tokens[x.entity] for x in res.linked
                         if x.entity in self.anchor_tokens}
        res.selection = select_capsules(res.ranked, lambda sc: int(self.tokens[row_of[sc.index]]), self.budget_tokens,
                                        self.top_k, names, self.max_anchors, anchor_tokens,
                                        group_of=lambda sc: self.groups[row_of[sc.index]],
                                        group_penalty=cfg.paragraph_penalty)
        by_name = {self.graph.entity_name(x.entity): x.entity for x in res.linked}
        res.anchor_ids = [int(self.graph.anchor_capsule_index([by_name[a]])[0]) for a in res.selection.anchors]
        st.score += time.perf_counter() - t0
        return res

    def _graph_scores(self, res: HybridResult, dense: np.ndarray) -> np.ndarray:
        cfg, w = self.config, self.walk
        reset_s = np.zeros(w.num_sentences, np.float32)
        reset_e = np.zeros(w.num_entities, np.float32)
        if res.linked:
            ids = np.asarray([x.entity for x in res.linked], np.int64)
            wts = np.asarray([x.score for x in res.linked]) * w.idf[ids]
            np.add.at(reset_e, ids, (wts / wts.sum()).astype(np.float32))
        elif cfg.dense_seeds > 0:
            res.fallback = NO_LINK
            k = min(cfg.dense_seeds, dense.shape[0])
            top = np.argpartition(-dense, k - 1)[:k]
            wts = np.clip(dense[top], 0, None)
            if wts.sum() > 0:
                reset_s[self.rows[top]] = wts / wts.sum()
        total = reset_s.sum() + reset_e.sum()
        if total <= 0:
            res.fallback = "no linked entity and no similar sentence: dense retrieval only"
            return np.zeros(dense.shape[0], np.float32)
        p_s, _ = w.run(reset_s / total, reset_e / total, cfg.restart, cfg.iterations)
        p = p_s[self.rows]
        top = p.max()
        return (p / top) ** cfg.graph_power if top > 0 else np.zeros_like(p)

    def _capsule(self, i: int):
        c = self._capsules.get(i)
        if c is None:
            c = self._capsules[i] = self.graph.sentence_capsule(int(self.rows[i]))
        return c
