"""Intent -> relation set: which relations a question asks about, to focus traversal and DRM.

Each intent has question patterns (regular expressions, English and Chinese by default), the relations it selects and
example questions. Every intent whose pattern matches contributes its relations, so a 2-hop question ("Where was the
founder of X born?") gets both hops' relations. When no pattern matches and an encoder is given, the nearest intent
by embedding similarity to its examples is used if it clears ``threshold`` (open-domain fallback); otherwise the
question gets no relation restriction (``relations=None``: use every relation).

A JSON config replaces the defaults: ``[{"name", "relations": [...], "patterns": [...], "examples": [...]}]``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kvi_engine.retrieval.encoder import Encoder


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    relations: frozenset[str]
    patterns: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or not self.relations:
            raise ValueError(f"intent needs a name and at least one relation, got {self.name!r}")
        object.__setattr__(self, "relations", frozenset(self.relations))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "examples", tuple(self.examples))
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"intent {self.name!r}: bad pattern {p!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class IntentMatch:
    intents: tuple[str, ...]
    relations: frozenset[str] | None  # None: no restriction
    method: str  # "pattern" | "embedding" | "none"
    score: float = 1.0


def _i(name, relations, patterns, examples):
    return Intent(name, frozenset(relations), tuple(patterns), tuple(examples))


DEFAULT_INTENTS: tuple[Intent, ...] = (
    _i("founder", ["founded_by"], [r"\bwho\s+(?:\w+\s+)?(?:founded|established|started|created)\b",
                                   r"\bfounder", r"\bfounded\s+by\b", r"创始人|创立|创办|创建"],
       ["Who founded the company?", "Who started this organisation?"]),
    _i("founding_date", ["founded_in"], [r"\b(?:when|what\s+year|which\s+year|in\s+which\s+year)\b.*\bfounded\b",
                                         r"哪一年|何时成立|成立于"],
       ["When was the company established?", "In what year was it set up?"]),
    _i("headquarters", ["headquartered_in", "located_in"], [r"\bheadquarter", r"\bbased\b", r"总部"],
       ["Where is the company based?", "Where are its main offices?"]),
    _i("location", ["located_in", "headquartered_in", "capital_of"],
       [r"\blocated\b", r"\bin\s+which\s+(?:country|city|region)\b",
        r"\bwhich\s+(?:country|city)\b", r"位于|哪个国家|哪个城市"],
       ["Which country is the town in?", "Where is the place located?"]),
    _i("capital", ["capital_of"], [r"\bcapital\b", r"首都"], ["What is the capital of the country?"]),
    _i("birthplace", ["born_in"], [r"\bborn\b", r"\bbirthplace\b", r"\bnative\s+of\b", r"出生"],
       ["Where does this person come from?", "What is his home town?"]),
    _i("employer", ["works_for"], [r"\bworks?\s+(?:for|at)\b", r"\bemploy", r"\bemployer\b", r"工作"],
       ["Which organisation employs her?", "Where does he have his job?"]),
    _i("leader", ["leads"], [r"\bwho\s+(?:leads|heads|runs|directs)\b", r"\bleader\b", r"\bhead\s+of\b",
                             r"\bchief\s+executive\b|\bCEO\b", r"\bperson\s+who\s+leads\b", r"领导|负责人"],
       ["Who is in charge of the company?", "Who is the boss of the organisation?"]),
    _i("membership", ["member_of"], [r"\bmember\b", r"\bbelongs?\s+to\b", r"成员"],
       ["Which alliance has the company joined?"]),
    _i("part", ["part_of"], [r"\bpart\s+of\b", r"隶属|属于"], ["Which larger body includes the institute?"]),
    _i("cause", ["causes"], [r"\bcaus", r"\bresults?\s+in\b", r"\bsymptom", r"引起|导致|症状"],
       ["What illness does the virus give people?", "What are the symptoms of the infection?"]),
    _i("treatment", ["treats", "treated_by"], [r"\btreat", r"\bcure", r"\bdrug\b", r"\bmedicine\b", r"治疗|药"],
       ["What medication helps against the disease?", "How is the illness managed?"]),
    _i("transmission", ["transmitted_by"], [r"\btransmit", r"\bspread", r"\bvector\b", r"\bcarr(?:y|ies)\b",
                                            r"传播"],
       ["How do people catch the virus?", "Which animal passes on the infection?"]),
    _i("discovery", ["discovered_by"], [r"\bdiscover", r"\bidentified\b", r"发现"],
       ["Who first described the virus?", "Who found the pathogen?"]),
    _i("product", ["produces"], [r"\bproduc", r"\bmanufactur", r"\bmakes?\b", r"\bmade\s+by\b", r"生产|制造"],
       ["Which firm sells the drug?", "What does the company sell?"]),
    _i("approval", ["approved_by"], [r"\bapprov", r"\bregulator\b", r"\blicens", r"批准"],
       ["Which agency authorised the medicine?"]),
    _i("usage", ["uses"], [r"\bwho\s+uses\b", r"\bused\s+by\b", r"使用"], ["Which institute relies on the sensor?"]),
)


class IntentClassifier:
    def __init__(self, intents: Sequence[Intent] = DEFAULT_INTENTS, encoder: Encoder | None = None,
                 threshold: float = 0.45):
        if not intents:
            raise ValueError("at least one intent is required")
        names = [i.name for i in intents]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate intent names in {names}")
        self.intents = tuple(intents)
        self._compiled = [[re.compile(p, re.IGNORECASE) for p in i.patterns] for i in self.intents]
        self.encoder, self.threshold = encoder, threshold
        self._example_owner: list[int] = []
        self._example_emb: np.ndarray | None = None

    @property
    def all_relations(self) -> frozenset[str]:
        return frozenset(r for i in self.intents for r in i.relations)

    def classify(self, questions: Sequence[str]) -> list[IntentMatch]:
        out: list[IntentMatch | None] = []
        for q in questions:
            hit = [k for k, pats in enumerate(self._compiled) if any(p.search(q) for p in pats)]
            if hit:
                rels = frozenset(r for k in hit for r in self.intents[k].relations)
                out.append(IntentMatch(tuple(self.intents[k].name for k in hit), rels, "pattern"))
            else:
                out.append(None)
        todo = [n for n, m in enumerate(out) if m is None]
        if todo and self.encoder is not None:
            for n, m in zip(todo, self._nearest([questions[n] for n in todo])):
                out[n] = m
        return [m or IntentMatch((), None, "none", 0.0) for m in out]

    def _nearest(self, questions: list[str]) -> list[IntentMatch | None]:
        if self._example_emb is None:
            texts = [(k, t) for k, i in enumerate(self.intents) for t in (i.examples or (i.name.replace("_", " "),))]
            self._example_owner = [k for k, _ in texts]
            self._example_emb = self.encoder.encode_passages([t for _, t in texts])
        sims = self.encoder.encode_queries(questions) @ self._example_emb.T
        out = []
        for row in sims:
            j = int(np.argmax(row))
            if row[j] >= self.threshold:
                intent = self.intents[self._example_owner[j]]
                out.append(IntentMatch((intent.name,), intent.relations, "embedding", float(row[j])))
            else:
                out.append(None)
        return out


_INTENT_KEYS = {"name", "relations", "patterns", "examples"}


def load_intents(path: str | os.PathLike) -> tuple[Intent, ...]:
    """Intents from a JSON list; unknown keys and bad patterns are errors naming the entry."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of intents")
    out = []
    for n, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: intent #{n} is not an object")
        unknown = set(obj) - _INTENT_KEYS
        if unknown:
            raise ValueError(f"{path}: intent #{n}: unknown field(s) {sorted(unknown)}; "
                             f"allowed: {sorted(_INTENT_KEYS)}")
        try:
            out.append(Intent(obj.get("name", ""), frozenset(obj.get("relations", ())), tuple(obj.get("patterns", ())),
                              tuple(obj.get("examples", ()))))
        except ValueError as e:
            raise ValueError(f"{path}: intent #{n}: {e}") from None
    return tuple(out)
