"""The query pipeline: questions -> retrieval (per method) -> prompt text + KV prefix -> one batched generation ->
post-processing -> grounding filter -> answers, each with its trace.

``Knowledge`` is what the methods draw on: the capsule bank (capsules, then one anchor per entity), the graph built
from the same capsule list (so graph capsule positions are bank ids), and for the dense baselines the sentence store
and a sentence bank (every sentence compiled alone, like a capsule). ``QueryPipeline.compare`` runs several methods
over the same questions and checks that every one of them saw exactly those questions in the shared prompt template.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from kvi_engine.bank import KVBank
from kvi_engine.capsules import Capsule, Entity
from kvi_engine.engine import KVIEngine
from kvi_engine.graph import KnowledgeGraph
from kvi_engine.methods import METHODS, Found, Method, method, retrieve
from kvi_engine.prompts import qa_prompt
from kvi_engine.retrieval import (CapsuleRetriever, DenseIndex, DRMScorer, GroundingFilter, IntentClassifier,
                                  RetrievalConfig)
from kvi_engine.statements import anchor_capsule

SENTENCE_RELATION = "states"  # sentence-bank capsules: subject = the sentence, object = its id


def make_encoder(spec: str = "minilm"):
    """``minilm`` (all-MiniLM-L6-v2, offline) or ``kpr:DIR`` (a KPR model directory): the dense retriever of RAG /
    KV Prefix and the embedding half of DRM."""
    if spec == "minilm":
        from kvi_engine.retrieval import default_encoder
        return default_encoder()
    if spec.startswith("kpr:") and spec[4:]:
        from kvi_engine.kpr.encoder import KPREncoder
        return KPREncoder(spec[4:])
    raise ValueError(f"unknown retriever {spec!r}; expected 'minilm' or 'kpr:DIR'")


@dataclass
class Knowledge:
    bank: KVBank
    graph: KnowledgeGraph
    capsules: list[Capsule]  # graph positions; capsules[p] is bank capsule ids[p]
    ids: list[int]
    store: object | None = None  # SentenceStore
    sentence_bank: KVBank | None = None

    def bank_id(self, position: int) -> int:
        return self.ids[position]

    @functools.cached_property
    def anchor_positions(self) -> dict[str, int]:
        return {c.subject: p for p, c in enumerate(self.capsules) if c.kind == "anchor"}

    @classmethod
    def from_bank(cls, bank: KVBank, entities: Sequence[Entity] = (), store=None,
                  sentence_bank: KVBank | None = None) -> "Knowledge":
        """The graph rebuilt from the bank's own capsule records (``entities`` restore aliases for linking)."""
        ids = bank.live_ids()
        caps = [bank.capsule(i) for i in ids]
        return cls(bank, KnowledgeGraph.from_capsules(caps, list(entities)), caps, ids, store, sentence_bank)


def sentence_capsules(store) -> list[Capsule]:
    return [Capsule(s.text, SENTENCE_RELATION, s.id, s.id, s.text) for s in store]


def build_knowledge(model, tokenizer, capsules: Sequence[Capsule], entities: Sequence[Entity], out: str | os.PathLike,
                    *, store=None, quant: str = "fp32", batch_size: int = 32) -> Knowledge:
    """Compile the capsule bank (``out/capsules``) and, with a sentence store, the sentence bank (``out/sentences``)."""
    from kvi_engine.compile import compile_bank

    out = Path(out)
    bank = compile_bank(model, tokenizer, capsules, out / "capsules", quant=quant, entities=entities,
                        batch_size=batch_size)
    sentence_bank = None
    if store is not None:
        sentence_bank = compile_bank(model, tokenizer, sentence_capsules(store), out / "sentences", quant=quant,
                                     templates={SENTENCE_RELATION: "{subject}"}, batch_size=batch_size)
    caps = list(capsules) + [anchor_capsule(e) for e in entities]
    return Knowledge(bank, KnowledgeGraph.from_capsules(caps, entities), caps, list(range(len(caps))), store,
                     sentence_bank)


@dataclass(slots=True)
class Trace:
    method: str
    entities: list[str] = field(default_factory=list)
    intent: list[str] = field(default_factory=list)
    triples: list[dict] = field(default_factory=list)  # selected: subject, relation, object, score, hop, capsule_id
    candidates: int = 0
    passages: list[dict] = field(default_factory=list)  # dense hits: id, text, score
    evidence: list[str] = field(default_factory=list)  # prompt text channel
    injected: list[int] = field(default_factory=list)  # ids in ``bank``
    bank: str = ""  # "capsules" | "sentences" | "" (no KV)
    injected_statements: list[str] = field(default_factory=list)
    fallback: str | None = None
    raw: str = ""  # model output before post-processing and grounding
    dropped: list[dict] = field(default_factory=list)  # grounding: sentence, support, reason
    grounded: bool = False  # False: no evidence to check against (text unchanged)


@dataclass(slots=True)
class Answer:
    question: str
    text: str
    trace: Trace

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "trace": asdict(self.trace)}


def postprocess(text: str) -> str:
    """The first non-empty line: models continue with a new "Question:" after answering."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


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

    @classmethod
    def from_engine(cls, engine: KVIEngine, entities: Sequence[Entity] = (), **kw) -> "QueryPipeline":
        if engine.bank is None:
            raise ValueError("the engine has no bank: the pipeline needs one (kvi compile)")
        return cls(engine.model, engine.tokenizer, Knowledge.from_bank(engine.bank, entities), engine=engine, **kw)

    # ---- lazily built parts of the dense baselines and the graph ablation

    def _store(self):
        if self.knowledge.store is None:
            raise ValueError("dense retrieval (RAG, KV Prefix) needs a sentence store: build the pipeline with "
                             "build_knowledge(..., store=...) or `kvi eval --docs`")
        return self.knowledge.store

    @functools.cached_property
    def dense_index(self) -> DenseIndex:
        return DenseIndex.from_store(self._store(), self.encoder)

    @functools.cached_property
    def sentence_position(self) -> dict[str, int]:
        return {s.id: i for i, s in enumerate(self._store())}

    @functools.cached_property
    def sentence_tokens(self) -> list[int]:
        bank = self.knowledge.sentence_bank
        if bank is not None:
            return [len(bank.token_ids(i)) for i in range(bank.num_capsules)]
        return [len(self.tokenizer(s.text, add_special_tokens=False).input_ids) for s in self._store()]

    @functools.cached_property
    def statement_index(self) -> tuple[DenseIndex, list[int]]:
        scorer = self.retriever.scorer
        positions = [p for p, c in enumerate(self.knowledge.capsules) if c.kind == "triple"]
        if not positions:
            raise ValueError("the knowledge holds no triple capsules to rank")
        texts = [scorer.statement(self.knowledge.capsules[p]) for p in positions]
        return DenseIndex([str(i) for i in range(len(positions))], texts, self.encoder, exact=True), positions

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
            found = retrieve(self, m.retrieval, questions)
        if [f.question for f in found] != questions:
            raise ValueError(f"{m.name}: the retrieval results are for other questions")
        plans = [self._plan(m, f) for f in found]
        texts: list[str] = []
        starts = range(0, len(plans), batch_size)
        for s in tqdm(starts, desc=m.name, unit="batch", disable=len(starts) < 2, leave=False):
            chunk = plans[s:s + batch_size]
            prompts = [qa_prompt(f.question, evidence) for f, evidence, _ in chunk]
            ids = None if m.kv == "none" else [kv for _, _, kv in chunk]
            eng = self._engines["capsules"] if m.kv == "none" else self.engine(m.kv)
            texts += eng.generate(prompts, ids, max_new_tokens=max_new_tokens, chat=chat).texts
        return [self._finish(m, f, evidence, kv, raw) for (f, evidence, kv), raw in zip(plans, texts)]

    def _plan(self, m: Method, f: Found) -> tuple[Found, list[str], list[int]]:
        bank = self.knowledge.bank
        text = {"none": [], "evidence": f.evidence,
                "statements": [bank.statement(i) for i in f.capsule_ids]}[m.prompt]
        kv = {"none": [], "capsules": f.capsule_ids, "sentences": f.sentence_ids}[m.kv]
        return f, text, kv

    def _finish(self, m: Method, f: Found, evidence: list[str], kv: list[int], raw: str) -> Answer:
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
                       for j in g.dropped], g.checked)
        return Answer(f.question, g.text, trace)

    def compare(self, questions: Sequence[str], methods: Sequence[str | Method] = tuple(METHODS), *,
                max_new_tokens: int = 32, chat: bool = False, batch_size: int = 16) -> dict[str, list[Answer]]:
        """Every method on the same questions; retrieval runs once per kind and is shared by the methods using it.
        Raises if any method's prompts are not ``qa_prompt(question, its evidence)`` for exactly these questions."""
        questions = _check_questions(questions)
        ms = [method(x) for x in methods]
        shared = {kind: retrieve(self, kind, questions) for kind in dict.fromkeys(m.retrieval for m in ms)}
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
