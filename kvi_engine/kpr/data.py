"""Retrieval-set files: corpus {"id", "text"}, training pairs {"query", "positive", "negatives"} and test queries
{"query", "positives", "subset"?}; every error names the file and line."""
from __future__ import annotations

import os

from kvi_engine.utils.jsonl import read_jsonl


def _rows(path: str | os.PathLike, required: dict[str, type]):
    for lineno, obj in read_jsonl(path):
        for key, typ in required.items():
            if not isinstance(obj.get(key), typ):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a {typ.__name__}")
        yield lineno, obj


def load_corpus(path: str | os.PathLike) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for lineno, obj in _rows(path, {"id": str, "text": str}):
        if obj["id"] in corpus:
            raise ValueError(f"{path}:{lineno}: passage id {obj['id']!r} repeated")
        corpus[obj["id"]] = obj["text"]
    if not corpus:
        raise ValueError(f"{path}: empty corpus")
    return corpus


def load_pairs(path: str | os.PathLike, corpus: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    pairs = []
    for lineno, obj in _rows(path, {"query": str, "positive": str}):
        negs = obj.get("negatives", [])
        if not isinstance(negs, list) or not all(isinstance(n, str) for n in negs):
            raise ValueError(f"{path}:{lineno}: field 'negatives' must be a list of passage ids")
        for pid in [obj["positive"], *negs]:
            if pid not in corpus:
                raise ValueError(f"{path}:{lineno}: passage {pid!r} is not in the corpus")
        pairs.append((obj["query"], obj["positive"], list(negs)))
    if not pairs:
        raise ValueError(f"{path}: no training pairs")
    return pairs


def load_queries(path: str | os.PathLike, corpus: dict[str, str]) -> list[dict]:
    queries = []
    for lineno, obj in _rows(path, {"query": str, "positives": list}):
        if not all(isinstance(p, str) for p in obj["positives"]):
            raise ValueError(f"{path}:{lineno}: field 'positives' must be a list of passage ids")
        missing = [p for p in obj["positives"] if p not in corpus]
        if missing or not obj["positives"]:
            raise ValueError(f"{path}:{lineno}: positives {missing or '[]'} not in the corpus")
        queries.append({"query": obj["query"], "positives": obj["positives"], "subset": obj.get("subset", "all")})
    if not queries:
        raise ValueError(f"{path}: no queries")
    return queries
