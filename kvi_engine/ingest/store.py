"""The sentence store: every sentence of the corpus by id, saved atomically with a checksum.

File format (version 1), JSONL: line 1 is the header ``{"format": "kvi-sentences", "version": 1, "count": N,
"sha256": H}``; lines 2.. are ``{"id", "doc_id", "text"}``. ``H`` is the SHA-256 of the bytes after the header line,
so a truncated or edited store is detected on load instead of serving wrong evidence.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from kvi_engine.ingest.documents import Document
from kvi_engine.ingest.sentences import Sentence
from kvi_engine.utils.atomic import atomic_write_bytes

FORMAT = "kvi-sentences"
VERSION = 1


class SentenceStoreError(ValueError):
    """A sentence store that is missing, corrupt, or of an unknown format; the message names the file."""


class SentenceStore:
    def __init__(self, sentences: Iterable[Sentence]):
        self._sentences = list(sentences)
        self._by_id: dict[str, Sentence] = {}
        for s in self._sentences:
            if s.id in self._by_id:
                raise SentenceStoreError(f"duplicate sentence id {s.id!r}")
            self._by_id[s.id] = s

    def __len__(self) -> int:
        return len(self._sentences)

    def __iter__(self) -> Iterator[Sentence]:
        return iter(self._sentences)

    def __contains__(self, sentence_id: str) -> bool:
        return sentence_id in self._by_id

    def get(self, sentence_id: str) -> Sentence:
        try:
            return self._by_id[sentence_id]
        except KeyError:
            raise KeyError(f"sentence id {sentence_id!r} is not in the store ({len(self)} sentences)") from None

    def texts(self, ids: Iterable[str]) -> list[str]:
        return [self.get(i).text for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        body = b"".join(json.dumps({"id": s.id, "doc_id": s.doc_id, "text": s.text}, ensure_ascii=False)
                        .encode() + b"\n" for s in self._sentences)
        header = {"format": FORMAT, "version": VERSION, "count": len(self._sentences),
                  "sha256": hashlib.sha256(body).hexdigest()}
        atomic_write_bytes(path, json.dumps(header).encode() + b"\n" + body)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SentenceStore":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such sentence store")
        data = path.read_bytes()
        head, _, body = data.partition(b"\n")
        try:
            header = json.loads(head)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SentenceStoreError(f"{path}: not a sentence store (unreadable header)") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SentenceStoreError(f"{path}: not a sentence store (format {header!r})")
        if header.get("version") != VERSION:
            raise SentenceStoreError(f"{path}: sentence store version {header.get('version')!r}; "
                                     f"this engine reads version {VERSION}")
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise SentenceStoreError(f"{path}: sentence store is corrupt (SHA-256 mismatch); re-run ingestion")
        sentences = [Sentence(**json.loads(line)) for line in body.splitlines() if line]
        if len(sentences) != header.get("count"):
            raise SentenceStoreError(f"{path}: header says {header.get('count')} sentences, "
                                     f"file holds {len(sentences)}")
        return cls(sentences)


def sentence_store_from_documents(documents: Iterable[Document]) -> SentenceStore:
    return SentenceStore(s for d in documents for s in d.sentences())
