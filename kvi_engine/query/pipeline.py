"""The query pipeline: questions -> retrieval (per method) -> prompt text + KV prefix -> one batched generation ->
post-processing -> grounding filter -> answers, each with its trace.

``QueryPipeline.compare`` runs several methods over the same questions (retrieval once per kind, shared by the
methods using it) and checks that every one of them saw exactly those questions in the shared prompt template.
"""
from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from kvi_engine.capsules.capsule import Entity
from kvi_engine.generate.engine import KVIEngine
from kvi_engine.query.encoders import make_encoder
from kvi_engine.query.knowledge import Knowledge
from kvi_engine.query.methods import METHODS, Method, method
from kvi_engine.query.prompts import qa_prompt
from kvi_engine.query.retrieve import RETRIEVALS, DenseRetrieval, FlatRetrieval, Found, GraphRetrieval, NoRetrieval
from kvi_engine.query.trace import Answer, Trace, postprocess
from kvi_engine.retrieval import (
    CapsuleRetriever,
    DenseIndex,
    DRMScorer,
    GroundingFilter,
    IntentClassifier,
    RetrievalConfig,
)


class QueryPipeline:
    def __init__(self, model, tokenizer, knowledge: Knowledge, *, encoder=None, config: RetrievalConfig | None = None,
                 grounding: GroundingFilter | None = None, engine: KVIEngine | None = None, intents=None):
        self.model, self.tokenizer, self.knowledge = model, tokenizer, knowledge
        self.config = config or RetrievalConfig()
        self.encoder = encoder if encoder is not None else make_encoder()
        self.capsule_tokens = [len(knowledge.bank.token_ids(i)) for i in knowledge.ids]
        scorer = DRMScorer(self.encoder)
        self.retriever = CapsuleRetriever(knowledge.graph, scorer=scorer,
                                          intents=intents or IntentClassifier(encoder=self.encoder),
                                          config=self.config, capsule_tokens=self.capsule_tokens)
        names = [e.name for e in knowledge.graph.entities]
        self.grounding = grounding or GroundingFilter(entities=names)
        self._engines = {"capsules": engine or KVIEngine(model, tokenizer, knowledge.bank)}
        self._retrievals: dict = {}

    @classmethod
    def from_engine(cls, engine: KVIEngine, entities: Sequence[Entity] = (), **kw) -> "QueryPipeline":
        if engine.bank is None:
            raise ValueError("the engine has no bank: the pipeline needs one (kvi compile)")
        return cls(engine.model, engine.tokenizer, Knowledge.from_bank(engine.bank, entities), engine=engine, **kw)

    # ---- the retrievals, each built on first use

    def _store(self):
        if self.knowledge.store is None:
            raise ValueError("dense retrieval (RAG, KV Prefix) needs a sentence store: build the pipeline with "
                             "build_knowledge(..., store=...) or `kvi eval --docs`")
        return self.knowledge.store

    def _sentence_tokens(self) -> list[int]:
        bank = self.knowledge.sentence_bank
        if bank is not None:
            return [len(bank.token_ids(i)) for i in range(bank.num_capsules)]
        return [len(self.tokenizer(s.text, add_special_tokens=False).input_ids) for s in self._store()]

    def retrieval(self, kind: str):
        """The retrieval of ``kind`` (one of :data:`~kvi_engine.query.retrieve.RETRIEVALS`) over this knowledge,
        built on first use."""
        if kind not in self._retrievals:
            self._retrievals[kind] = self._build_retrieval(kind)
        return self._retrievals[kind]

    def _build_retrieval(self, kind: str):
        k = self.knowledge
        if kind == "none":
            return NoRetrieval()
        if kind == "dense":
            return DenseRetrieval(DenseIndex.from_store(self._store(), self.encoder), self._sentence_tokens(),
                                  self.config)
        if kind == "graph":
            return GraphRetrieval(self.retriever, k.bank_id)
        if kind == "flat":
            return FlatRetrieval(k.capsules, self.capsule_tokens, self.retriever.scorer, self.retriever.intents,
                                 self.encoder, self.config, k.bank_id, graph=k.graph)
        raise ValueError(f"unknown retrieval {kind!r}; expected one of {RETRIEVALS}")

    def retrieve(self, kind: str, questions: Sequence[str]) -> list[Found]:
        return self.retrieval(kind).retrieve(_check_questions(questions))

    def engine(self, kv: str) -> KVIEngine:
        if kv not in self._engines:
            if self.knowledge.sentence_bank is None:
                raise ValueError("KV Prefix needs a sentence bank: build_knowledge(..., store=...)")
            self._engines[kv] = KVIEngine(self.model, self.tokenizer, self.knowledge.sentence_bank)
        return self._engines[kv]

    # ---- answering

    def answer(self, questions: Sequence[str], method_name: str | Method = "KVI", *, max_new_tokens: int = 32,
               chat: bool = False, batch_size: int = 16, found: Sequence[Found] | None = None) -> list[Answer]:
        """Answer ``questions`` with one method, generating ``batch_size`` rows at a time. ``found`` reuses a
        retrieval of the same kind (``compare`` retrieves once per kind)."""
        m = method(method_name)
        questions = _check_questions(questions)
        if found is None:
            found = self.retrieve(m.retrieval, questions)
        if [f.question for f in found] != questions:
            raise ValueError(f"{m.name}: the retrieval results are for other questions")
        plans = [self.inputs(m, f) for f in found]
        texts: list[str] = []
        starts = range(0, len(plans), batch_size)
        for s in tqdm(starts, desc=m.name, unit="batch", disable=len(starts) < 2, leave=False):
            chunk = plans[s:s + batch_size]
            prompts = [qa_prompt(f.question, evidence) for f, evidence, _ in chunk]
            ids = None if m.kv == "none" else [kv for _, _, kv in chunk]
            eng = self._engines["capsules"] if m.kv == "none" else self.engine(m.kv)
            texts += eng.generate(prompts, ids, max_new_tokens=max_new_tokens, chat=chat).texts
        return [self.finish(m, f, evidence, kv, raw) for (f, evidence, kv), raw in zip(plans, texts)]

    def inputs(self, m: Method, f: Found) -> tuple[Found, list[str], list[int]]:
        """What goes to the model for one retrieval: ``(found, prompt evidence lines, KV ids)`` (the prompt is
        ``qa_prompt(question, evidence)``); a server generates in its own batches between this and :meth:`finish`."""
        bank = self.knowledge.bank
        text = {"none": [], "evidence": f.evidence,
                "statements": [bank.statement(i) for i in f.capsule_ids]}[m.prompt]
        kv = {"none": [], "capsules": f.capsule_ids, "sentences": f.sentence_ids}[m.kv]
        return f, text, kv

    def finish(self, m: Method, f: Found, evidence: list[str], kv: list[int], raw: str) -> Answer:
        """Post-processing and grounding of the raw generation, and the answer's trace."""
        kv_bank = {"capsules": self.knowledge.bank, "sentences": self.knowledge.sentence_bank}.get(m.kv)
        injected = [kv_bank.statement(i) for i in kv] if kv_bank is not None else []
        # Grounded against everything the method retrieved, in whichever channel it went to the model.
        support = list(dict.fromkeys([*evidence, *injected]))
        g = self.grounding.filter(postprocess(raw), support)
        triples = [{"subject": sc.capsule.subject, "relation": sc.capsule.relation, "object": sc.capsule.object,
                    "score": round(sc.score, 4), "lexical": round(sc.lexical, 4), "embedding": round(sc.embedding, 4),
                    "hop": sc.hop, "capsule_id": self.knowledge.bank_id(sc.index),
                    "sentence": sc.capsule.sentence} for sc in f.triples]
        trace = Trace(m.name, f.entities, list(f.intent), triples, f.candidates,
                      [{"id": h.id, "text": h.text, "score": round(h.score, 4)} for h in f.passages], list(evidence),
                      list(kv), m.kv if m.kv != "none" else "", injected, f.fallback, raw,
                      [{"sentence": j.sentence, "support": round(j.support, 3), "reason": j.reason}
                       for j in g.dropped], g.checked, list(f.reached) if (evidence or kv) else [])
        return Answer(f.question, g.text, trace)

    def compare(self, questions: Sequence[str], methods: Sequence[str | Method] = tuple(METHODS), *,
                max_new_tokens: int = 32, chat: bool = False, batch_size: int = 16) -> dict[str, list[Answer]]:
        """Every method on the same questions; retrieval runs once per kind and is shared by the methods using it.
        Raises if any method's prompts are not ``qa_prompt(question, its evidence)`` for exactly these questions."""
        questions = _check_questions(questions)
        ms = [method(x) for x in methods]
        shared = {kind: self.retrieve(kind, questions) for kind in dict.fromkeys(m.retrieval for m in ms)}
        out = {}
        for m in tqdm(ms, desc="methods", unit="method"):
            answers = self.answer(questions, m, max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size,
                                  found=shared[m.retrieval])
            seen = [a.question for a in answers]
            if seen != questions:
                raise AssertionError(f"{m.name} answered different questions than the harness asked")
            out[m.name] = answers
        return out


def _check_questions(questions: Sequence[str]) -> list[str]:
    if isinstance(questions, str):
        raise TypeError("questions must be a list of strings, not one string")
    questions = list(questions)
    if not questions:
        raise ValueError("no questions given")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question #{i} is empty")
    return questions
