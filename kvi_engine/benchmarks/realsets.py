"""The shared real QA sets as the benchmarks read them: documents and questions from ``shared_data_dir()``, open
ingestion cached per set (re-run only when the documents or the ingestion code change), passage embeddings cached
on disk, the knowledge graph over capsules + anchors, and capsule lengths in MiniLM word pieces (the budget's unit
when no language model is involved)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvi_engine.capsules.statements import anchor_capsule, anchor_statement, render_statement
from kvi_engine.utils.paths import shared_data_dir

_INGEST_CODE = ("ingest/analysis.py", "ingest/assemble.py", "ingest/openie.py", "ingest/titles.py", "ingest/nlp.py",
                "graph/names.py")


def default_cache() -> Path:
    return Path("bench") / "cache"


def _stamp(docs: Path) -> str:
    h = hashlib.sha256(docs.read_bytes())
    root = Path(__file__).resolve().parent.parent
    for rel in _INGEST_CODE:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def ingested(name: str, cache: Path, data: Path | None = None, progress: bool = True):
    """``(documents, dataset, assets, ingest_stats)`` of one shared set; assets from the cache when still valid."""
    from kvi_engine.eval.dataset import load_dataset
    from kvi_engine.ingest.assets import build_open_assets, load_assets, save_assets
    from kvi_engine.ingest.documents import load_documents

    folder = (data or shared_data_dir()) / name
    docs_path = folder / "docs.jsonl"
    documents = load_documents(docs_path)
    dataset = load_dataset(folder / "questions.jsonl")
    out = cache / name
    stamp = _stamp(docs_path)
    meta = out / "stamp.json"
    if meta.is_file() and json.loads(meta.read_text()).get("stamp") == stamp:
        return documents, dataset, load_assets(out), json.loads(meta.read_text()).get("stats", {})
    assets = build_open_assets(documents, progress=progress)
    save_assets(assets, out)
    meta.write_text(json.dumps({"stamp": stamp, "stats": assets.stats}))
    return documents, dataset, assets, assets.stats


class CachedEncoder:
    """An encoder whose passage embeddings are kept on disk (keyed by the texts), so re-runs skip encoding."""

    def __init__(self, encoder, cache: Path, tag: str):
        self.encoder, self.cache, self.tag = encoder, cache, tag

    def encode_queries(self, texts):
        return self.encoder.encode_queries(texts)

    def encode_passages(self, texts):
        texts = list(texts)
        if len(texts) < 256:
            return self.encoder.encode_passages(texts)
        key = hashlib.sha256(("\n".join(texts) + self.tag).encode()).hexdigest()[:16]
        path = self.cache / f"emb-{self.tag}-{key}.npy"
        if path.is_file():
            e = np.load(path)
            if e.shape[0] == len(texts):
                return e
        e = self.encoder.encode_passages(texts)
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, e)
        return e


@dataclass
class Corpus:
    """A set ready for retrieval: capsules + anchors (bank order), their graph and lengths."""
    name: str
    dataset: list
    store: object
    capsules: list
    entities: list
    graph: object
    capsule_tokens: list[int]
    sentence_tokens: list[int]
    stats: dict


def word_pieces(texts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    from kvi_engine.utils.paths import minilm_path
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def corpus(name: str, cache: Path, data: Path | None = None) -> Corpus:
    from kvi_engine.graph.knowledge_graph import KnowledgeGraph

    _, dataset, assets, stats = ingested(name, cache, data)
    caps = list(assets.capsules) + [anchor_capsule(e) for e in assets.entities]
    texts = [render_statement(c) for c in assets.capsules] + [anchor_statement(e) for e in assets.entities]
    graph = KnowledgeGraph.from_capsules(caps, assets.entities)
    return Corpus(name, dataset, assets.store, caps, assets.entities, graph, word_pieces(texts),
                  word_pieces([s.text for s in assets.store]), stats)
