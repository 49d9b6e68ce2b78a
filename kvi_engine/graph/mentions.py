"""The mention adjacency of a knowledge graph: which entities each sentence capsule mentions, as CSR both ways.

Sentence ``k`` (the graph's sentence table) mentions entities ``entities[indptr[k]:indptr[k+1]]``; entity ``e`` is
mentioned by sentences ``sentences[entity_indptr[e]:entity_indptr[e+1]]``; ``capsule[k]`` is the position of the
sentence's capsule in the capsule list the graph was built from (-1: the sentence is only a triple's provenance).
This is the bipartite entity-sentence graph that personalised PageRank walks
(:mod:`kvi_engine.retrieval.hybrid`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvi_engine.formats.container import FormatError

ARRAYS = {"sentence_capsule": "<i8", "mention_indptr": "<i8", "mention_entities": "<i4",
          "entity_mention_indptr": "<i8", "entity_mention_sentences": "<i4"}


@dataclass(frozen=True, slots=True)
class Mentions:
    capsule: np.ndarray         # int64 [S]
    indptr: np.ndarray          # int64 [S + 1]
    entities: np.ndarray        # int32 [M]
    entity_indptr: np.ndarray   # int64 [N + 1]
    sentences: np.ndarray       # int32 [M]

    @property
    def num_sentence_capsules(self) -> int:
        return int(np.count_nonzero(self.capsule >= 0))

    def of_sentence(self, k: int) -> np.ndarray:
        return self.entities[self.indptr[k]:self.indptr[k + 1]]

    def of_entity(self, e: int) -> np.ndarray:
        return self.sentences[self.entity_indptr[e]:self.entity_indptr[e + 1]]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sentence_capsule": self.capsule, "mention_indptr": self.indptr, "mention_entities": self.entities,
                "entity_mention_indptr": self.entity_indptr, "entity_mention_sentences": self.sentences}

    @classmethod
    def build(cls, pairs: list[tuple[int, int]], capsule: list[int], num_entities: int, build_csr) -> "Mentions":
        """From (sentence, entity) pairs (duplicates dropped, order kept) and each sentence's capsule position."""
        pairs = list(dict.fromkeys(pairs))
        s = np.asarray([p[0] for p in pairs], np.int32)
        e = np.asarray([p[1] for p in pairs], np.int32)
        n_sent = len(capsule)
        indptr, order = build_csr(s, n_sent)
        ents = e[order].astype(np.int32)
        sent_of_row = s[order]
        e_indptr, e_order = build_csr(ents, num_entities)
        return cls(np.asarray(capsule, np.int64), indptr, ents, e_indptr, sent_of_row[e_order].astype(np.int32))

    @classmethod
    def empty(cls, num_sentences: int, num_entities: int) -> "Mentions":
        return cls(np.full(num_sentences, -1, np.int64), np.zeros(num_sentences + 1, np.int64), np.zeros(0, np.int32),
                   np.zeros(num_entities + 1, np.int64), np.zeros(0, np.int32))

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], num_sentences: int, num_entities: int, source: str) -> "Mentions":
        for name, dt in ARRAYS.items():
            if a.get(name) is None or a[name].dtype.str != dt or a[name].ndim != 1:
                raise FormatError(f"{source}: array {name!r} missing or not 1-D {dt}")
        m = cls(a["sentence_capsule"], a["mention_indptr"], a["mention_entities"], a["entity_mention_indptr"],
                a["entity_mention_sentences"])
        m.validate(num_sentences, num_entities, source)
        return m

    def validate(self, num_sentences: int, num_entities: int, source: str) -> None:
        """CSR shapes, monotone pointers, ids in range, and the two directions holding the same pairs."""
        n_m = self.entities.shape[0]
        for name, ptr, rows in (("mention_indptr", self.indptr, num_sentences),
                                ("entity_mention_indptr", self.entity_indptr, num_entities)):
            if ptr.shape[0] != rows + 1 or ptr[0] != 0 or ptr[-1] != n_m or np.any(np.diff(ptr) < 0):
                raise FormatError(f"{source}: {name} does not partition the {n_m} mentions over {rows} rows")
        if self.capsule.shape[0] != num_sentences or self.sentences.shape[0] != n_m:
            raise FormatError(f"{source}: mention arrays disagree in length")
        if n_m and (self.entities.min() < 0 or self.entities.max() >= num_entities
                    or self.sentences.min() < 0 or self.sentences.max() >= num_sentences):
            raise FormatError(f"{source}: a mention names an entity or sentence out of range")
        fwd = np.repeat(np.arange(num_sentences, dtype=np.int64), np.diff(self.indptr)) * num_entities + self.entities
        bwd = self.sentences.astype(np.int64) * num_entities + \
            np.repeat(np.arange(num_entities, dtype=np.int64), np.diff(self.entity_indptr))
        if not np.array_equal(np.sort(fwd), np.sort(bwd)):
            raise FormatError(f"{source}: the two mention directions hold different pairs")
