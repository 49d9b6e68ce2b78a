"""The compared methods, each described by three choices and nothing else, so they differ only where they say:

- retrieval: ``none``; ``dense`` (MiniLM sentence embeddings in hnswlib over the sentence store); ``graph`` (entity
  linking -> intent -> multi-hop traversal -> DRM -> budgeted top-k + anchors); ``flat`` (the same DRM scoring and
  selection over every triple capsule, preselected by dense similarity of the statements: no linking, no traversal)
- prompt text (the ``qa_prompt`` context): ``none``; ``evidence`` (the retrieved sentences: dense hits, or the
  provenance sentences of the selected capsules); ``statements`` (the statements of the capsules KVI would inject)
- KV channel: ``none``; ``capsules`` (the selected capsules from the capsule bank); ``sentences`` (the retrieved
  sentences, each compiled alone into a sentence bank exactly like a capsule)

Every method gets the same ``top_k`` and token budget, the same prompt template, decoding, dtype, post-processing and
grounding filter (run over the text of everything the method retrieved, whichever channel carried it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from kvi_engine.retrieval import Hit, Retrieval, ScoredCapsule, select_capsules

if TYPE_CHECKING:
    from kvi_engine.pipeline import QueryPipeline

RETRIEVALS = ("none", "dense", "graph", "flat")


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    retrieval: str
    prompt: str
    kv: str
    description: str

    def __post_init__(self):
        if (self.retrieval not in RETRIEVALS or self.prompt not in ("none", "evidence", "statements")
                or self.kv not in ("none", "capsules", "sentences")):
            raise ValueError(f"invalid method spec {self}")
        if self.kv == "capsules" and self.retrieval not in ("graph", "flat"):
            raise ValueError(f"{self.name}: capsule KV needs capsule retrieval (graph or flat)")
        if self.kv == "sentences" and self.retrieval != "dense":
            raise ValueError(f"{self.name}: sentence KV needs dense sentence retrieval")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("LLM", "none", "none", "none", "the question alone"),
    Method("RAG", "dense", "evidence", "none", "dense top-k sentences as prompt text"),
    Method("GraphRAG", "graph", "statements", "none", "graph-selected capsule statements as prompt text"),
    Method("KV Prefix", "dense", "none", "sentences", "dense top-k sentences injected as KV"),
    Method("KVI", "graph", "evidence", "capsules", "graph-selected capsules as KV + their evidence sentences"),
    Method("KVI w/o graph", "flat", "evidence", "capsules", "KVI with DRM over all capsules instead of traversal"),
    Method("KVI w/o KV", "graph", "evidence", "none", "KVI's evidence sentences only, no KV"),
)}
_KEYS = {"llm": "LLM", "rag": "RAG", "graphrag": "GraphRAG", "kv-prefix": "KV Prefix", "kvprefix": "KV Prefix",
         "kvi": "KVI", "kvi-no-graph": "KVI w/o graph", "kvi-no-kv": "KVI w/o KV"}


def method(name: str | Method) -> Method:
    """A method by display name ("KV Prefix", "KVI w/o graph") or key ("kv-prefix", "kvi-no-graph")."""
    if isinstance(name, Method):
        return name
    key = _KEYS.get(name.strip().lower().replace("_", "-").replace(" ", "-"), name.strip())
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(_KEYS)} (or {', '.join(METHODS)})")
    return METHODS[key]


def parse_methods(text: str | Sequence[str]) -> list[Method]:
    names = text.split(",") if isinstance(text, str) else list(text)
    out = list(dict.fromkeys(method(n) for n in names if n.strip()))
    if not out:
        raise ValueError("no methods given")
    return out


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


def retrieve(pipe: "QueryPipeline", kind: str, questions: Sequence[str]) -> list[Found]:
    if kind == "none":
        return [Found(q) for q in questions]
    if kind == "dense":
        return _dense(pipe, questions)
    if kind == "graph":
        return [_from_retrieval(pipe, r) for r in pipe.retriever.retrieve(questions)]
    if kind == "flat":
        return [_from_retrieval(pipe, r) for r in _flat(pipe, questions)]
    raise ValueError(f"unknown retrieval {kind!r}; expected one of {RETRIEVALS}")


def _from_retrieval(pipe: "QueryPipeline", r: Retrieval) -> Found:
    intent = r.intent.intents if r.intent is not None else ()
    return Found(r.question, list(r.entities), tuple(intent), list(r.selection.capsules), len(r.ranked),
                 [pipe.knowledge.bank_id(i) for i in r.capsule_ids], evidence=r.evidence, fallback=r.fallback)


def _dense(pipe: "QueryPipeline", questions: Sequence[str]) -> list[Found]:
    cfg, lengths = pipe.config, pipe.sentence_tokens
    out = []
    for q, hits in zip(questions, pipe.dense_index.search(list(questions), max(cfg.top_k, 1))):
        found, used = Found(q), 0
        for h in hits[:cfg.top_k]:
            sid = pipe.sentence_position[h.id]
            if used + lengths[sid] <= cfg.budget_tokens:
                found.passages.append(h)
                found.sentence_ids.append(sid)
                used += lengths[sid]
        found.evidence = [h.text for h in found.passages]
        found.candidates = len(hits)
        out.append(found)
    return out


def _flat(pipe: "QueryPipeline", questions: Sequence[str]) -> list[Retrieval]:
    """The graph ablation: candidates are every triple capsule (the ``max_candidates`` most similar statements when
    there are more), scored by the same DRM with hop 1, selected within the same budget; anchors of the chosen
    capsules' entities, looked up by name in the capsule list."""
    cfg, knowledge = pipe.config, pipe.knowledge
    index, positions = pipe.statement_index
    k = min(len(positions), cfg.max_candidates or len(positions))
    intents = pipe.retriever.intents.classify(list(questions))
    cands = [[positions[int(h.id)] for h in hits] for hits in index.search(list(questions), k)]
    caps = knowledge.capsules
    ranked = pipe.retriever.scorer.score(list(questions), [[caps[p] for p in row] for row in cands],
                                         hops=[[1] * len(row) for row in cands],
                                         relations=[it.relations for it in intents], indices=cands)
    anchors = knowledge.anchor_positions
    tokens = pipe.capsule_tokens
    out = []
    for q, it, r in zip(questions, intents, ranked):
        sel = select_capsules(r, lambda sc: tokens[sc.index], cfg.budget_tokens, cfg.top_k, (), cfg.max_anchors,
                              {n: tokens[a] for n, a in anchors.items()})
        out.append(Retrieval(q, [], it, r, sel, [anchors[n] for n in sel.anchors],
                             None if r else "no capsule to rank"))
    return out
