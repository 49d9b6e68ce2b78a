"""Entity-match capsule selection: capsules whose subject or object is mentioned in the question.

The simple, exact 1-hop selector used by ``kvi ask --top-k`` and the demo. The full query pipeline (graph
traversal, DRM scoring, token budgets) builds on the same linker.
"""
from __future__ import annotations

from typing import Sequence

from kvi_engine.bank import KVBank
from kvi_engine.capsules import Entity
from kvi_engine.linker import EntityLinker


class CapsuleSelector:
    def __init__(self, bank: KVBank):
        self.bank = bank
        caps = [bank.capsule(i) for i in range(bank.num_capsules)]
        names = sorted({c.subject for c in caps} | {c.object for c in caps if c.kind == "triple"})
        self.names = names
        self.linker = EntityLinker.from_entities([Entity(n) for n in names])
        index = {n: i for i, n in enumerate(names)}
        self.by_entity: dict[int, list[int]] = {}
        for cid, c in enumerate(caps):
            # Subject matches first (anchors and facts about the entity), object matches after.
            self.by_entity.setdefault(index[c.subject], []).append(cid)
        for cid, c in enumerate(caps):
            if c.kind == "triple":
                self.by_entity.setdefault(index[c.object], []).append(cid)

    def select(self, questions: Sequence[str], top_k: int = 8) -> list[list[int]]:
        out = []
        for mentions in self.linker.link(list(questions)):
            chosen: list[int] = []
            for m in mentions:
                for ent, _prior in m.candidates:
                    for cid in self.by_entity.get(ent, ()):
                        if cid not in chosen:
                            chosen.append(cid)
            out.append(chosen[:top_k])
        return out
