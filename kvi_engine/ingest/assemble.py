"""Analysed documents -> assets: the entity table, every sentence's mentions, triples and sentence capsules.

This step is corpus-wide (a name from one document links in every other), so it runs once over the analyses of all
documents (:mod:`kvi_engine.ingest.analysis`), in document order; its result depends only on the analyses, the given
entities and the options.

1. Entities: the given list first, then one per distinct title ("Kiss and Tell (1945 film)": name = the full
   title, alias "Kiss and Tell", type "film", description "1945 film"; a title whose name a given entity has is that
   entity), then NER names. An NER name resolves to its paragraph's title entity when it is (part of) that name,
   else to the title or given entity with its key (the most mentioned), else to an NER entity of that key.
2. Mentions per sentence: its NER names, the title entity when the sentence is about it (pronoun or "The film ..."
   subject), then a dictionary pass that links every sentence to every known name (longest match, on
   :func:`~kvi_engine.graph.names.name_key`, through the C++ entity linker; names of common words link only where
   written as a name, one-word common names never). An NER name nested in a longer known name ("Eden" in "Attics to
   Eden") is dropped; NER entities left with no mention leave before the full pass. A sentence of a paragraph whose
   title is "Eden, Utah" that says "Eden" mentions it.
3. Capsules, sentence by sentence: open triples (subject an entity; object an entity, or a literal that stays a
   typed value), relation-template triples over the entity names, LLM triples when an extractor is given, then the
   sentence capsule, linked to the paragraph's title entity and every entity it mentions.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from kvi_engine.capsules.capsule import SENTENCE_RELATION, Capsule, Entity
from kvi_engine.graph.linker import EntityLinker
from kvi_engine.graph.names import WordStats, fold_accents, name_key, words
from kvi_engine.ingest.analysis import DocumentAnalysis
from kvi_engine.ingest.openie import Arg
from kvi_engine.ingest.sentences import Sentence

NER_TYPES = {"PERSON": "person", "ORG": "organisation", "GPE": "place", "LOC": "location", "FAC": "facility",
             "NORP": "group", "EVENT": "event", "WORK_OF_ART": "work", "PRODUCT": "product", "LAW": "law",
             "LANGUAGE": "language"}
_WEIGHT = {"given": 5, "title": 3}
_NUMBER = re.compile(r"^-?\d[\d,.]*$")  # alias counts a name starts with (an NER mention adds 1)


@dataclass(slots=True)
class _Entity:
    name: str
    short: str = ""            # what text calls it (a title's name without the disambiguator)
    type: str = ""
    description: str = ""
    source: str = "ner"        # "given" | "title" | "ner"
    aliases: list[str] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)


@dataclass(slots=True)
class Assembled:
    sentences: list[Sentence]
    capsules: list[Capsule]
    entities: list[Entity]
    stats: dict
    notes: list[str]
    rejections: list = field(default_factory=list)


class _Table:
    """Entities and the alias counts of their keys."""

    def __init__(self):
        self.ents: list[_Entity] = []
        self.alias: dict[str, Counter] = {}
        self.ner_by_key: dict[str, int] = {}

    def add(self, e: _Entity, names: Sequence[str], weight: int) -> int:
        eid = len(self.ents)
        self.ents.append(e)
        for k in dict.fromkeys(name_key(n) for n in names):
            self.count(k, eid, weight)
        return eid

    def count(self, key: str, eid: int, n: int = 1) -> None:
        if key:
            self.alias.setdefault(key, Counter())[eid] += n

    def best(self, key: str, strong_only: bool = True) -> int:
        """The most counted entity of ``key`` (first counted on ties) if it is a title/given one, else -1."""
        hit = self.alias.get(key)
        if not hit:
            return -1
        best = max(hit, key=hit.get)
        return best if not strong_only or self.ents[best].source != "ner" else -1


def _partial_title(text: str, short: str, stats: WordStats) -> bool:
    """``text`` names the title entity by the part of its name before a comma ("Eden" of "Eden, Utah")."""
    target = name_key(short.split(",")[0]).split()
    ws = words(text)
    folded = [w.casefold() for w in ws]
    n = len(target)
    if not n:
        return False
    for i in range(len(ws) - n + 1):
        if folded[i:i + n] == target and stats.linkable_surface(" ".join(target), " ".join(ws[i:i + n])):
            return True
    return False


def _matches(linker: EntityLinker, texts: list[str], stats: WordStats) -> list[list[tuple[int, int, int]]]:
    """Per text: (start, end, entity id) of every accepted dictionary match (one per candidate entity)."""
    mptr, start, end, cptr, ent, _ = linker.link_arrays([fold_accents(t) for t in texts], num_threads=1)
    mptr, start, end, cptr, ent = mptr.tolist(), start.tolist(), end.tolist(), cptr.tolist(), ent.tolist()
    out = []
    for q, text in enumerate(texts):
        row = []
        for m in range(mptr[q], mptr[q + 1]):
            surface = text[start[m]:end[m]]
            if stats.linkable_surface(" ".join(w.casefold() for w in words(surface)), surface):
                row.extend((start[m], end[m], e) for e in ent[cptr[m]:cptr[m + 1]])
        out.append(row)
    return out


def _linker(table: _Table, stats: WordStats, keep) -> EntityLinker | None:
    names, ids = [], []
    for k, hit in table.alias.items():
        if not (stats.linkable(k) or len(k.split()) >= 2):
            continue  # a one-word common name ("This", "Young", "film") never links
        for e in hit:
            if keep(e):
                names.append(k), ids.append(e)
    return EntityLinker.build(names, np.asarray(ids, dtype=np.int64)) if names else None


def _drop_nested(ment: dict[int, str], ner: list[tuple[int, int, int]], spans: list[tuple[int, int, int]]) -> None:
    nested = {e for a, b, e in ner if any(x <= a and b <= y and b - a < y - x and e != d for x, y, d in spans)}
    for e in nested - ({e for _, _, e in ner} - nested):
        if ment.get(e) == "ner":
            del ment[e]


def assemble(analyses: Sequence[DocumentAnalysis], entities: Sequence[Entity] = (), *, rule_extractor=None,
             llm_extractor=None) -> Assembled:
    """Entities, mentions and capsules from per-document analyses (document order). ``rule_extractor(entities)``
    (e.g. :class:`~kvi_engine.ingest.rules.RuleExtractor`) and ``llm_extractor`` (an
    :class:`~kvi_engine.ingest.llm.LLMExtractor`) add their triples."""
    table = _Table()
    for e in entities:
        table.add(_Entity(e.name, e.name, e.type, e.description, "given", list(e.aliases)), e.names, _WEIGHT["given"])
    by_title: dict[str, int] = {}
    doc_entity: list[int] = []
    for a in analyses:
        t = a.title
        if t is None:
            doc_entity.append(-1)
            continue
        if t.full not in by_title:
            given = next((g for g in (table.best(name_key(t.full)), table.best(name_key(t.name)))
                          if g >= 0 and table.ents[g].source == "given"), -1)
            if given >= 0:
                by_title[t.full] = given
            else:
                name = t.full if t.disambiguator else t.name
                by_title[t.full] = table.add(
                    _Entity(name, t.name, t.type, t.disambiguator, "title", [t.name] if t.disambiguator else []),
                    (t.name, t.full), _WEIGHT["title"])
        doc_entity.append(by_title[t.full])

    sents = [(di, s) for di, a in enumerate(analyses) for s in a.sentences]
    texts = [s.text for _, s in sents]
    stats = WordStats(texts)
    mentions: list[dict[int, str]] = []
    ner_spans: list[list[tuple[int, int, int]]] = []
    name_ids: list[list[int]] = []
    for di, s in sents:
        te = doc_entity[di]
        ment: dict[int, str] = {}
        spans, ids = [], []
        for span in s.names:
            kk = name_key(span.text)
            eid = _resolve_name(table, kk, span.text, span.label, te)
            x = table.ents[eid]
            x.labels[span.label] += 1
            if kk != name_key(x.name) and kk not in {name_key(a) for a in x.aliases}:
                x.aliases.append(span.text)  # what the text calls it ("Wood" for Ed Wood)
            table.count(kk, eid)
            ment.setdefault(eid, "ner")
            spans.append((span.start, span.end, eid))
            ids.append(eid)
        if te >= 0 and s.about_topic:
            ment.setdefault(te, s.about_topic)
        mentions.append(ment), ner_spans.append(spans), name_ids.append(ids)

    strong = _linker(table, stats, lambda e: table.ents[e].source != "ner")
    if strong is not None:
        for ment, ner, spans in zip(mentions, ner_spans, _matches(strong, texts, stats)):
            _drop_nested(ment, ner, spans)
    alive = {e for m in mentions for e in m} | {e for e, x in enumerate(table.ents) if x.source != "ner"}
    full = _linker(table, stats, lambda e: e in alive)
    matches = _matches(full, texts, stats) if full is not None else [[] for _ in texts]
    for (di, s), ment, ner, spans in zip(sents, mentions, ner_spans, matches):
        for _, _, e in spans:
            ment.setdefault(e, "dict")
        te = doc_entity[di]
        if te >= 0 and te not in ment and _partial_title(s.text, table.ents[te].short, stats):
            ment[te] = "name"
        _drop_nested(ment, ner, spans)

    for x in table.ents:
        if not x.type and x.labels:
            x.type = NER_TYPES.get(max(x.labels, key=x.labels.get), "")

    triples: list[list[tuple]] = []
    used: set[int] = set()
    for (di, s), ids in zip(sents, name_ids):
        row = []
        for tr in s.triples:
            subj = _arg(table, tr.subject, ids, doc_entity[di])
            obj = _arg(table, tr.object, ids, doc_entity[di])
            if not isinstance(subj, int) or obj is None or subj == obj:
                continue
            row.append((subj, tr.predicate, obj, tr.attributes))
            used.add(subj)
            if isinstance(obj, int):
                used.add(obj)
        triples.append(row)

    keep = [e for e, x in enumerate(table.ents) if x.source != "ner" or e in used or any(e in m for m in mentions)]
    new_id = {e: i for i, e in enumerate(keep)}
    out_entities = _entities([table.ents[e] for e in keep])
    name = [out_entities[new_id[e]].name if e in new_id else "" for e in range(len(table.ents))]

    sentences = [Sentence(s.id, analyses[di].doc_id, s.text) for di, s in sents]
    extra: dict[str, list[Capsule]] = {}
    found: list[Capsule] = []
    notes: list[str] = []
    rejections = []
    if rule_extractor is not None:
        found += rule_extractor(out_entities).extract(sentences)
    if llm_extractor is not None:
        result = llm_extractor.extract(sentences)
        found += result.capsules
        rejections = result.rejections
    names_taken = {e.name for e in out_entities}
    for c in found:
        if _NUMBER.match(c.object) and c.object not in names_taken and not c.literal:
            c = replace(c, literal="number")  # a year or a count: a value, never an entity
        extra.setdefault(c.sentence_id, []).append(c)

    capsules: list[Capsule] = []
    seen: set[tuple[str, str, str]] = set()
    for (di, s), sentence, ment, row in zip(sents, sentences, mentions, triples):
        for subj, pred, obj, attrs in row:
            o_text, literal = (name[obj], "") if isinstance(obj, int) else obj
            _append(capsules, seen, Capsule(name[subj], pred, o_text, s.id, s.text, literal=literal,
                                            attributes=attrs))
        for c in extra.get(s.id, ()):
            _append(capsules, seen, c)
        te = doc_entity[di]
        linked = list(dict.fromkeys(([te] if te >= 0 else []) + list(ment)))
        names = tuple(name[e] for e in linked if e in new_id)
        subject = names[0] if names else (analyses[di].title.full if analyses[di].title else analyses[di].doc_id)
        capsules.append(Capsule(subject, SENTENCE_RELATION, s.id, s.id, s.text, kind="sentence", entities=names))

    for a in analyses:
        if not a.sentences:
            notes.append(f"document {a.doc_id!r}: no sentences (no letter or digit in its text); nothing ingested")
    stats_out = {"documents": len(analyses), "sentences": len(sentences), "tokens": sum(a.tokens for a in analyses),
                 "entities": len(out_entities), "triples": sum(c.kind == "triple" for c in capsules),
                 "mentions": sum(len(c.entities) for c in capsules if c.kind == "sentence")}
    return Assembled(sentences, capsules, out_entities, stats_out, notes, rejections)


def _resolve_name(table: _Table, kk: str, surface: str, label: str, te: int) -> int:
    if te >= 0:
        tk = name_key(table.ents[te].short)
        if kk == tk or kk == name_key(table.ents[te].short.split(",")[0]) or \
                (label == "PERSON" and set(kk.split()) <= set(tk.split())):
            return te
    best = table.best(kk)
    if best >= 0:
        return best
    if kk not in table.ner_by_key:
        table.ner_by_key[kk] = len(table.ents)
        table.ents.append(_Entity(surface, surface))
    return table.ner_by_key[kk]


def _arg(table: _Table, arg: Arg, ids: list[int], te: int):
    """An entity id, a (text, literal type) pair, or None (a topic where the paragraph names no entity)."""
    if arg.kind == "mention":
        return ids[arg.ref]
    if arg.kind == "topic":
        return te if te >= 0 else None
    if arg.kind == "literal":
        return (arg.text, arg.label)
    eid = table.best(name_key(arg.text))
    return eid if eid >= 0 else (arg.text, "phrase")


def _append(capsules: list[Capsule], seen: set, c: Capsule) -> None:
    if c.triple not in seen:
        seen.add(c.triple)
        capsules.append(c)


def _entities(ents: list[_Entity]) -> list[Entity]:
    """Public records with unique names (an NER name equal to another entity's name gets its type appended)."""
    out, taken = [], set()
    for x in ents:
        name = base = x.name
        k = 2
        while name in taken:
            name, k = f"{base} ({x.type or 'entity'}{'' if k == 2 else f' {k}'})", k + 1
        taken.add(name)
        aliases = tuple(a for a in dict.fromkeys(x.aliases) if a != name)
        out.append(Entity(name, x.type, aliases, x.description))
    return out
