"""Distributed ingestion: shards of documents -> Ray tasks (the per-document stage of ingestion) -> one merge.

Ingestion has a per-document stage (sentence splitting and triple extraction: :func:`kvi_engine.ingest.assets.
extract_part`) and a corpus-wide one (duplicates across documents, new entities from unknown arguments, and with them
every id and order: :func:`kvi_engine.ingest.assets.assemble_assets`). Shards of contiguous documents run the first
as Ray tasks (:func:`~kvi_engine.distributed.shards.map_shards`, retried if their worker dies); the driver puts the
parts back in document order -- never completion order -- and runs the second once. Sentence ids (``<doc id>:s<k>``)
are per document; capsule and entity order are assigned in the merge. The result equals
:func:`kvi_engine.ingest.assets.build_assets` over all documents.

Open ingestion (:func:`build_open_assets`, no entity list) splits the same way: spaCy's analysis of each document
(sentences, NER, open triples: :class:`kvi_engine.ingest.analysis.Analyzer`, a pure function of the document) runs
in the tasks, each loading the pipeline once; the corpus-wide assembly (titles, NER names, the dictionary pass, the
optional LLM extractor) runs once on the driver, in document order.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from kvi_engine.capsules.capsule import Entity
from kvi_engine.distributed.shards import map_shards
from kvi_engine.ingest.assets import Assets, AssetsPart, assemble_assets, assemble_open_assets, extract_part
from kvi_engine.ingest.documents import Document
from kvi_engine.ingest.entities import merge_entities

DEFAULT_SHARD_DOCS = 256


def _ingest_shard(documents: list[Document], merged: list[Entity], make_extractor: Callable | None) -> AssetsPart:
    extractor = make_extractor(merged) if make_extractor is not None else None
    return extract_part(documents, merged, extractor)


def build_assets(documents: Sequence[Document], entities: Sequence[Entity] = (), *,
                 make_extractor: Callable | None = None, shard_docs: int = DEFAULT_SHARD_DOCS,
                 address: str | None = None, cpus_per_task: float = 1, max_retries: int = 3,
                 progress: bool = True) -> Assets:
    """:func:`kvi_engine.ingest.assets.build_assets` over ``documents`` on a Ray cluster, ``shard_docs`` documents a
    task. ``make_extractor(merged_entities)``, run in each task, builds the extractor (default: rule-based over the
    entities); it must be importable by reference (a module-level function or a ``functools.partial`` of one).
    ``address`` as in :func:`kvi_engine.distributed.cluster.connect` (``None``: the cluster this process joined,
    else a private local one)."""
    merged, _ = merge_entities(entities)
    parts = map_shards(_ingest_shard, documents, shard_docs, args=(merged, make_extractor), address=address,
                       cpus_per_task=cpus_per_task, max_retries=max_retries, progress=progress, unit="doc",
                       desc="ingest")
    return assemble_assets(parts, merged)


def _analyse_shard(documents: list[Document], options) -> list:
    from kvi_engine.ingest.analysis import Analyzer

    return Analyzer(options).analyse(documents)


def build_open_assets(documents: Sequence[Document], entities: Sequence[Entity] = (), *, options=None,
                      templates: bool = True, extractor=None, shard_docs: int = DEFAULT_SHARD_DOCS,
                      address: str | None = None, cpus_per_task: float = 1, max_retries: int = 3,
                      progress: bool = True) -> Assets:
    """:func:`kvi_engine.ingest.assets.build_open_assets` with the per-document analysis on a Ray cluster,
    ``shard_docs`` documents a task (each task loads the spaCy pipeline named by ``options``); ``extractor`` (an
    LLM) runs in the assembly on the driver. Equal to the single-process result."""
    documents = list(documents)
    if not documents:
        raise ValueError("no documents to ingest")
    t0 = time.perf_counter()
    shards = map_shards(_analyse_shard, documents, shard_docs, args=(options,), address=address,
                        cpus_per_task=cpus_per_task, max_retries=max_retries, progress=progress, unit="doc",
                        desc="analyse")
    analyses = [a for shard in shards for a in shard]
    return assemble_open_assets(analyses, entities, templates=templates, extractor=extractor,
                                analyse_s=time.perf_counter() - t0)
