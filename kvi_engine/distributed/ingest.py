"""Distributed ingestion: shards of documents -> Ray tasks (the per-document stage of ingestion) -> one merge.

Ingestion has a per-document stage (sentence splitting and triple extraction: :func:`kvi_engine.ingest.assets.
extract_part`) and a corpus-wide one (duplicates across documents, new entities from unknown arguments, and with them
every id and order: :func:`kvi_engine.ingest.assets.assemble_assets`). Shards of contiguous documents run the first
as Ray tasks (:func:`~kvi_engine.distributed.shards.map_shards`, retried if their worker dies); the driver puts the
parts back in document order -- never completion order -- and runs the second once. Sentence ids (``<doc id>:s<k>``)
are per document; capsule and entity order are assigned in the merge. The result equals
:func:`kvi_engine.ingest.assets.build_assets` over all documents.
"""
from __future__ import annotations

from typing import Callable, Sequence

from kvi_engine.capsules.capsule import Entity
from kvi_engine.distributed.shards import map_shards
from kvi_engine.ingest.assets import Assets, AssetsPart, assemble_assets, extract_part
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
