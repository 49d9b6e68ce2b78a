"""Documents -> assets: the sentence store, capsules with provenance, and normalised entities.

Only documents are read. A QA dataset is never an input here, so no question -> answer fact can reach the capsules
(and a QA file passed by mistake is rejected by the document loader: its fields are not ``id/text/title``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from kvi_engine.capsules.capsule import Capsule, Entity, load_capsules, load_entities, save_capsules, save_entities
from kvi_engine.capsules.statements import DEFAULT_TEMPLATES
from kvi_engine.ingest.analysis import AnalysisOptions, Analyzer
from kvi_engine.ingest.assemble import assemble
from kvi_engine.ingest.documents import Document, load_documents
from kvi_engine.ingest.entities import AliasTable, canonicalize_capsules, merge_entities
from kvi_engine.ingest.llm import LLMExtractor, Rejection
from kvi_engine.ingest.rules import RuleExtractor
from kvi_engine.ingest.sentences import Sentence
from kvi_engine.ingest.store import SentenceStore, sentence_store_from_documents


@dataclass(slots=True)
class Assets:
    store: SentenceStore
    capsules: list[Capsule]
    entities: list[Entity]
    rejections: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # documented fallbacks (e.g. a document with no sentences)
    stats: dict = field(default_factory=dict)


def build_assets(documents: Sequence[Document], entities: Sequence[Entity] = (),
                 extractor: RuleExtractor | LLMExtractor | None = None) -> Assets:
    """Split, extract (rule-based over ``entities`` unless an extractor is given), merge entity aliases, and
    canonicalise capsule arguments. Arguments that are not known entities and not numbers become new entities.

    Two stages: :func:`extract_part` (per document: sentences and extraction) and :func:`assemble_assets` (over the
    whole corpus: duplicates, new entities). :func:`kvi_engine.distributed.build_assets` runs the first on shards
    of documents in parallel and the second once, over the parts in document order: the same result."""
    merged, _ = merge_entities(entities)
    return assemble_assets([extract_part(documents, merged, extractor)], merged)


@dataclass(slots=True)
class AssetsPart:
    """What the per-document stage yields for some documents: their sentences, extracted capsules, rejections."""
    sentences: list[Sentence]
    capsules: list[Capsule]
    rejections: list[Rejection] = field(default_factory=list)


def extract_part(documents: Sequence[Document], merged: Sequence[Entity],
                 extractor: RuleExtractor | LLMExtractor | None = None) -> AssetsPart:
    """Sentences of ``documents`` and the capsules extracted from them (``merged``: already merged entities)."""
    sentences = [s for d in documents for s in d.sentences()]
    extractor = extractor or RuleExtractor(merged)
    if isinstance(extractor, LLMExtractor):
        result = extractor.extract(sentences)
        return AssetsPart(sentences, result.capsules, result.rejections)
    return AssetsPart(sentences, extractor.extract(sentences))


def assemble_assets(parts: Sequence[AssetsPart], merged: Sequence[Entity]) -> Assets:
    """The corpus-wide stage over ``parts`` in document order: the sentence store, capsule arguments canonicalised
    and exact duplicates dropped (first provenance kept), unknown arguments made entities."""
    store = SentenceStore(s for p in parts for s in p.sentences)
    capsules = canonicalize_capsules((c for p in parts for c in p.capsules), AliasTable(merged))
    rejections = [r for p in parts for r in p.rejections]
    merged = list(merged)
    known = {e.name for e in merged}
    extra = [n for n in dict.fromkeys(x for c in capsules for x in (c.subject, c.object))
             if n not in known and not n.replace(",", "").replace(".", "").isdigit()]
    if extra:
        merged, rename = merge_entities([*merged, *(Entity(n) for n in extra)])
        capsules = [replace(c, subject=rename.get(c.subject, c.subject), object=rename.get(c.object, c.object))
                    for c in capsules]
    return Assets(store, capsules, merged, rejections)


# The relation templates that open ingestion runs besides the parse: all but the copula ones, which the parse reads
# with their real arguments ("X (born 1976 in France) is a French businessman" is not "France is a French").
OPEN_TEMPLATES = {r: t for r, t in DEFAULT_TEMPLATES.items() if r not in ("is_a", "instance_of")}


def build_open_assets(documents: Sequence[Document], entities: Sequence[Entity] = (), *,
                      options: AnalysisOptions | None = None, templates: bool = True,
                      extractor: LLMExtractor | None = None, nlp=None, progress: bool = False) -> Assets:
    """Open ingestion, no entity list needed: spaCy analysis of every document (sentences, NER, open triples), then
    the corpus-wide assembly (titles, NER names and ``entities`` as entities; mentions; triples from the parse, the
    relation templates when ``templates`` and ``extractor`` when given; one sentence capsule per sentence). A pure
    function of its arguments: shards analysed apart (``Analyzer.analyse``) assemble to the same assets in document
    order (``assemble``)."""
    documents = list(documents)
    if not documents:
        raise ValueError("no documents to ingest")
    t0 = time.perf_counter()
    analyses = Analyzer(options, nlp).analyse(documents, progress=progress)
    return assemble_open_assets(analyses, entities, templates=templates, extractor=extractor,
                                analyse_s=time.perf_counter() - t0)


def assemble_open_assets(analyses: Sequence, entities: Sequence[Entity] = (), *, templates: bool = True,
                         extractor: LLMExtractor | None = None, analyse_s: float = 0.0) -> Assets:
    """The corpus-wide stage of :func:`build_open_assets` over per-document analyses in document order (from one
    :class:`Analyzer` or from shards analysed apart: :func:`kvi_engine.distributed.build_open_assets`)."""
    t1 = time.perf_counter()
    merged, _ = merge_entities(entities)
    rules = (lambda ents: RuleExtractor(ents, OPEN_TEMPLATES)) if templates else None
    a = assemble(analyses, merged, rule_extractor=rules, llm_extractor=extractor)
    if not a.sentences:
        raise ValueError(f"no sentences in {len(analyses)} document(s): nothing to ingest "
                         f"({a.notes[0] if a.notes else 'every document is empty'})")
    stats = {**a.stats, "analyse_s": round(analyse_s, 3), "assemble_s": round(time.perf_counter() - t1, 3)}
    return Assets(SentenceStore(a.sentences), a.capsules, a.entities, list(a.rejections), a.notes, stats)


def save_assets(assets: Assets, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``sentences.jsonl`` (checksummed store), ``capsules.jsonl``, ``entities.jsonl``; each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"sentences": out / "sentences.jsonl", "capsules": out / "capsules.jsonl",
             "entities": out / "entities.jsonl"}
    if not assets.capsules:
        raise ValueError("no capsules were extracted; nothing to save (check the entity list and the documents)")
    assets.store.save(paths["sentences"])
    save_capsules(assets.capsules, paths["capsules"])
    save_entities(assets.entities, paths["entities"])
    return paths


def load_assets(directory) -> Assets:
    """Assets written by ``save_assets`` (e.g. an earlier ``kvi eval --out``): the store's checksum is verified."""

    d = Path(directory)
    return Assets(SentenceStore.load(d / "sentences.jsonl"), load_capsules(d / "capsules.jsonl"),
                  load_entities(d / "entities.jsonl"))


def assets_from_documents(docs, entities_path=None, capsules_path=None, progress: bool = False) -> Assets:
    """Assets from documents only: the sentence store from ``docs``, capsules from ``capsules_path`` when given,
    else extracted by the rule extractor over the entities, else (no entity list) by open ingestion
    (:func:`build_open_assets`). The QA dataset is not an argument, by design."""

    documents = load_documents(*docs)
    entities = load_entities(entities_path) if entities_path else []
    if capsules_path:
        return Assets(sentence_store_from_documents(documents), load_capsules(capsules_path), entities)
    if not entities:
        return build_open_assets(documents, progress=progress)
    assets = build_assets(documents, entities)
    if not assets.capsules:
        raise ValueError(f"no capsules were extracted from {', '.join(map(str, docs))}; check --entities")
    return assets
