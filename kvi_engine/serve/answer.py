"""The query pipeline behind ``POST /v1/answer`` and ``"kvi": {"retrieve": true}``: retrieval (entity linking,
intent, multi-hop traversal, DRM) runs in a worker thread on the request's own bank snapshot; generation joins the
shared batches of the scheduler like any request; grounding and the trace follow. One
:class:`~kvi_engine.query.pipeline.QueryPipeline` per bank generation, built on first use (the graph is rebuilt
from that snapshot's capsule records), sharing one sentence encoder."""
from __future__ import annotations

import threading

from kvi_engine.generate.engine import KVIEngine
from kvi_engine.query.knowledge import Knowledge
from kvi_engine.query.methods import Method, method
from kvi_engine.query.pipeline import QueryPipeline
from kvi_engine.query.prompts import qa_prompt
from kvi_engine.query.trace import Answer
from kvi_engine.retrieval import RetrievalConfig

SERVED_RETRIEVALS = ("none", "graph", "flat")  # a server loads no sentence store: no dense retrieval


class Answerer:
    def __init__(self, model, tokenizer, entities=(), *, encoder=None, config: RetrievalConfig | None = None):
        self.model, self.tokenizer, self.entities = model, tokenizer, list(entities)
        self.config = config or RetrievalConfig()
        self._encoder = encoder
        self._pipelines: dict[tuple, QueryPipeline] = {}
        self._lock = threading.Lock()

    def method(self, name: str) -> Method:
        m = method(name)
        if m.retrieval not in SERVED_RETRIEVALS or m.kv == "sentences":
            raise ValueError(f"method {m.name!r} needs dense sentence retrieval, which kvi serve does not load; "
                             f"use one of KVI, KVI w/o graph, KVI w/o KV, GraphRAG, LLM")
        return m

    def pipeline(self, bank) -> QueryPipeline:
        key = (str(bank.root), bank.generation)
        with self._lock:
            pipe = self._pipelines.get(key)
            if pipe is None:
                if self._encoder is None:
                    from kvi_engine.query.encoders import make_encoder
                    self._encoder = make_encoder()
                engine = KVIEngine(self.model, self.tokenizer, bank, check=False)
                pipe = QueryPipeline(self.model, self.tokenizer, Knowledge.from_bank(bank, self.entities),
                                     encoder=self._encoder, config=self.config, engine=engine)
                self._pipelines = {k: v for k, v in self._pipelines.items() if k[0] != key[0] or k[1] > key[1] - 2}
                self._pipelines[key] = pipe
            return pipe

    def prepare(self, bank, question: str, m: Method):
        """Retrieval for one question: ``(found, evidence, kv ids, prompt text)``."""
        pipe = self.pipeline(bank)
        found = pipe.retrieve(m.retrieval, [question])[0]
        found, evidence, kv = pipe.inputs(m, found)
        return found, evidence, kv, qa_prompt(question, evidence)

    def triples(self, bank, found) -> list[dict]:
        """The selected triples of a retrieval with their bank ids, scores and hops (the graph path, in hops)."""
        k = self.pipeline(bank).knowledge
        return [{"subject": sc.capsule.subject, "relation": sc.capsule.relation, "object": sc.capsule.object,
                 "score": round(sc.score, 4), "hop": sc.hop, "capsule_id": k.bank_id(sc.index)}
                for sc in found.triples]

    def finish(self, bank, m: Method, found, evidence, kv, raw: str) -> Answer:
        return self.pipeline(bank).finish(m, found, evidence, kv, raw)
