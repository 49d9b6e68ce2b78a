"""Knowledge: what the compared methods draw on -- the capsule bank (capsules, then one anchor per entity), the graph
built from the same capsule list (so graph capsule positions are bank ids), and for the dense baselines the sentence
store and a sentence bank (every sentence compiled alone, like a capsule)."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kvi_engine.bank.bank import KVBank
from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.capsules.statements import anchor_capsule
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.graph.knowledge_graph import KnowledgeGraph

SENTENCE_RELATION = "states"  # sentence-bank capsules: subject = the sentence, object = its id


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
