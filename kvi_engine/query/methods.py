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

from dataclasses import dataclass
from typing import Sequence

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
