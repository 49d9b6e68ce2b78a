"""Dense sentence retrieval for the RAG and KV-Prefix baselines: MiniLM (or any encoder) embeddings in an hnswlib
inner-product index. ``exact=True`` does brute-force numpy search instead (the oracle in tests; fine for small stores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvi_engine.retrieval.encoder import Encoder


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    text: str
    score: float


class DenseIndex:
    def __init__(self, ids: Sequence[str], texts: Sequence[str], encoder: Encoder, *, exact: bool = False,
                 m: int = 16, ef_construction: int = 200, ef: int = 64, seed: int = 0):
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        if not texts:
            raise ValueError("cannot build a dense index over zero passages")
        if len(set(ids)) != len(ids):
            raise ValueError("passage ids must be unique")
        self.ids, self.texts, self.encoder, self.exact = list(ids), list(texts), encoder, exact
        self.embeddings = encoder.encode_passages(self.texts)
        if self.embeddings.dtype != np.float32 or self.embeddings.shape[0] != len(texts):
            raise ValueError(f"encoder.encode_passages must return float32 [{len(texts)}, dim], "
                             f"got {self.embeddings.dtype} {self.embeddings.shape}")
        self._hnsw = None
        if not exact:
            import hnswlib

            self._hnsw = hnswlib.Index(space="ip", dim=self.embeddings.shape[1])
            self._hnsw.init_index(max_elements=len(texts), ef_construction=ef_construction, M=m, random_seed=seed)
            self._hnsw.add_items(self.embeddings, np.arange(len(texts)))
            self._hnsw.set_ef(max(ef, 1))

    @classmethod
    def from_store(cls, store, encoder: Encoder, **kw) -> "DenseIndex":
        """Index every sentence of a ``SentenceStore``."""
        sentences = list(store)
        return cls([s.id for s in sentences], [s.text for s in sentences], encoder, **kw)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, questions: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-``k`` passages per question by inner product (cosine for normalised encoders), best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.ids))
        q = self.encoder.encode_queries(list(questions))
        if self._hnsw is None:
            sims = q @ self.embeddings.T
            idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(sims, idx, axis=1)
        else:
            idx, dist = self._hnsw.knn_query(q, k=k)
            scores = 1.0 - dist  # hnswlib "ip" distance is 1 - <q, p>
        return [[Hit(self.ids[j], self.texts[j], float(s)) for j, s in zip(row, srow)]
                for row, srow in zip(idx, scores)]
