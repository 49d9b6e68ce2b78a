"""DRM relevance scoring of candidate capsules for a question, and selection within a token budget.

score = alpha * lexical + (1 - alpha) * embedding + relation_bonus * [relation in the intent's relation set],
then multiplied by hop_decay ** (hop - 1) for a capsule reached ``hop`` steps from a linked entity.

- lexical: the share of the question's content tokens (``text.content_tokens``: stemmed non-stop words, CJK bigrams)
  that occur in the capsule statement — the overlap score of the KVI paper, normalised by the question so a long
  capsule does not win by size.
- embedding: cosine of the question and the statement embeddings (all-MiniLM-L6-v2 by default, or any encoder with
  ``encode_queries``/``encode_passages``); clipped at 0.
Each question's candidates are ranked by score, ties broken by the candidate order given (traversal order).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from kvi_engine.capsules.capsule import Capsule
from kvi_engine.capsules.statements import render_statement
from kvi_engine.retrieval.encoder import Encoder
from kvi_engine.retrieval.text import content_tokens


@dataclass(slots=True)
class DRMConfig:
    alpha: float = 0.5
    relation_bonus: float = 0.15
    hop_decay: float = 0.9
    use_embedding: bool = True

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.hop_decay <= 1.0:
            raise ValueError(f"hop_decay must be in (0, 1], got {self.hop_decay}")
        if self.relation_bonus < 0:
            raise ValueError(f"relation_bonus must be >= 0, got {self.relation_bonus}")


@dataclass(frozen=True, slots=True)
class ScoredCapsule:
    capsule: Capsule
    score: float
    lexical: float
    embedding: float
    hop: int = 1
    index: int = -1  # position in the caller's candidate list (e.g. the bank capsule id)
    graph: float = 0.0  # graph proximity (hybrid retrieval: scaled personalised PageRank), 0 when unused


def lexical_overlap(question: str, statement: str) -> float:
    return _overlap(set(content_tokens(question)), set(content_tokens(statement)))


def _overlap(q: set[str], c: set[str]) -> float:
    return len(q & c) / len(q) if q else 0.0


class DRMScorer:
    def __init__(self, encoder: Encoder | None = None, config: DRMConfig | None = None,
                 templates: dict[str, str] | None = None):
        self.config = config or DRMConfig()
        if encoder is None and self.config.use_embedding and self.config.alpha < 1.0:
            from kvi_engine.retrieval.encoder import default_encoder
            encoder = default_encoder()
        self.encoder = encoder
        self.templates = templates

    def statement(self, capsule: Capsule) -> str:
        return render_statement(capsule, self.templates)

    def score(self, questions: Sequence[str], candidates: Sequence[Sequence[Capsule]],
              hops: Sequence[Sequence[int]] | None = None,
              relations: Sequence[set[str] | None] | None = None,
              indices: Sequence[Sequence[int]] | None = None) -> list[list[ScoredCapsule]]:
        """Rank each question's candidates, best first. One encoder call for all questions and one for all distinct
        statements of the batch."""
        if len(candidates) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(candidates)} candidate lists")
        for name, arg in (("hops", hops), ("relations", relations), ("indices", indices)):
            if arg is not None and len(arg) != len(questions):
                raise ValueError(f"{name} has {len(arg)} rows for {len(questions)} questions")
        cfg = self.config
        statements = [[self.statement(c) for c in row] for row in candidates]
        emb = self._embedding_scores(questions, statements)
        tokens = {t: set(content_tokens(t)) for row in statements for t in row}
        out = []
        for qi, (q, row) in enumerate(zip(questions, candidates)):
            q_tokens = set(content_tokens(q))
            rels = relations[qi] if relations is not None else None
            scored = []
            for ci, cap in enumerate(row):
                hop = hops[qi][ci] if hops is not None else 1
                lex = _overlap(q_tokens, tokens[statements[qi][ci]])
                e = emb[qi][ci]
                s = cfg.alpha * lex + (1 - cfg.alpha) * e if cfg.use_embedding else lex
                if rels and cap.relation in rels:
                    s += cfg.relation_bonus
                s *= cfg.hop_decay ** max(hop - 1, 0)
                idx = indices[qi][ci] if indices is not None else ci
                scored.append(ScoredCapsule(cap, float(s), lex, e, hop, idx))
            order = sorted(range(len(scored)), key=lambda i: (-scored[i].score, i))
            out.append([scored[i] for i in order])
        return out

    def _embedding_scores(self, questions, statements) -> list[list[float]]:
        if not self.config.use_embedding or self.encoder is None:
            return [[0.0] * len(row) for row in statements]
        flat = list(dict.fromkeys(s for row in statements for s in row))
        if not flat:
            return [[] for _ in statements]
        q = self.encoder.encode_queries(list(questions))
        p = self.encoder.encode_passages(flat)
        _check_embeddings(q, len(questions), "encode_queries")
        _check_embeddings(p, len(flat), "encode_passages")
        sims = np.clip(q @ p.T, 0.0, 1.0)
        col = {s: i for i, s in enumerate(flat)}
        return [[float(sims[qi, col[s]]) for s in row] for qi, row in enumerate(statements)]


def _check_embeddings(x, n: int, what: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"encoder.{what} must return float32 [{n}, dim], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    norms = np.linalg.norm(x, axis=1)
    if n and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"encoder.{what} must return L2-normalised rows (norms {norms.min():.3f}..{norms.max():.3f})")


@dataclass(slots=True)
class Selection:
    capsules: list[ScoredCapsule] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)  # entity names whose anchor capsules are injected
    tokens: int = 0


def select_capsules(ranked: Sequence[ScoredCapsule], token_count: Callable[[ScoredCapsule], int],
                    budget_tokens: int, top_k: int, seed_entities: Sequence[str] = (), max_anchors: int = 4,
                    anchor_tokens: Mapping[str, int] | None = None, min_score: float = 0.0,
                    group_of: Callable[[ScoredCapsule], str] | None = None,
                    group_penalty: float = 0.0) -> Selection:
    """Greedy in rank order: take a capsule if it fits the remaining budget (a capsule that does not fit is skipped,
    smaller ones after it may still fit), up to ``top_k``; capsules scoring below ``min_score`` are never taken, so
    a question about nothing in the knowledge gets fewer (or no) capsules. With ``group_penalty`` > 0, each step takes
    the best capsule after subtracting ``group_penalty`` per capsule already taken from its group (``group_of``:
    e.g. its paragraph), spreading the budget over paragraphs without a hard cap; ties go to the earlier-ranked one.
    Then entity anchors, at most ``max_anchors``: first the question's linked entities, then the entities of the
    chosen capsules in rank order, as long as they fit. ``anchor_tokens`` maps entity name -> anchor length; names
    missing from it have no anchor (e.g. a year, or an entity whose anchor says nothing). With
    ``anchor_tokens=None`` anchors are not budgeted and every name qualifies."""
    if budget_tokens < 0 or top_k < 0 or max_anchors < 0 or group_penalty < 0:
        raise ValueError("budget_tokens, top_k, max_anchors and group_penalty must be >= 0")
    sel = Selection()
    if group_penalty > 0 and group_of is not None:
        _select_spread(sel, ranked, token_count, budget_tokens, top_k, min_score, group_of, group_penalty)
    else:
        for sc in ranked:
            if len(sel.capsules) >= top_k:
                break
            if sc.score < min_score:
                continue
            n = token_count(sc)
            if sel.tokens + n <= budget_tokens:
                sel.capsules.append(sc)
                sel.tokens += n
    _select_anchors(sel, seed_entities, max_anchors, anchor_tokens, budget_tokens)
    return sel


def _select_spread(sel: Selection, ranked, token_count, budget_tokens, top_k, min_score, group_of, penalty) -> None:
    alive = [sc for sc in ranked if sc.score >= min_score]
    groups = [group_of(sc) for sc in alive]
    taken: dict[str, int] = {}
    left = list(range(len(alive)))
    while left and len(sel.capsules) < top_k:
        best = max(left, key=lambda i: (alive[i].score - penalty * taken.get(groups[i], 0), -i))
        left.remove(best)
        if alive[best].score - penalty * taken.get(groups[best], 0) < min_score:
            continue
        n = token_count(alive[best])
        if sel.tokens + n > budget_tokens:
            continue
        sel.capsules.append(alive[best])
        sel.tokens += n
        taken[groups[best]] = taken.get(groups[best], 0) + 1


def _select_anchors(sel: Selection, seed_entities, max_anchors, anchor_tokens, budget_tokens) -> None:
    wanted = list(dict.fromkeys([*seed_entities, *(x for sc in sel.capsules
                                                     for x in (sc.capsule.subject, sc.capsule.object))]))
    for name in wanted:
        if len(sel.anchors) >= max_anchors:
            break
        if anchor_tokens is None:
            sel.anchors.append(name)
            continue
        n = anchor_tokens.get(name)
        if n is not None and sel.tokens + n <= budget_tokens:
            sel.anchors.append(name)
            sel.tokens += n
