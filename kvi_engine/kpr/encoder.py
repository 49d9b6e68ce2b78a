"""Dense text encoders behind one retriever-agnostic interface: ``encode_queries(texts)`` and
``encode_passages(texts)`` -> float32 [N, H], L2-normalised. ``TextEncoder`` is a plain Hugging Face encoder
(the base the KPR model starts from); ``KPREncoder`` is a KPR model directory with its entity knowledge."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from kvi_engine.kpr.config import POOLINGS


def _check_texts(texts) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty or not a string ({t!r}): nothing to embed")
    return texts


def _batches(texts: list[str], batch_size: int, desc: str | None):
    """Length-sorted batches (less padding); yields (indices, texts)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    it = range(0, len(texts), batch_size)
    for s in tqdm(it, desc=desc, disable=desc is None or len(texts) <= batch_size, leave=False):
        idx = order[s:s + batch_size]
        yield idx, [texts[i] for i in idx]


class TextEncoder:
    """``pooling`` "mean" (all-MiniLM-L6-v2, as its Sentence Transformers config) or "cls" (BGE)."""

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
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for idx, chunk in _batches(texts, self.batch_size, desc):
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


class KPREncoder:
    """A KPR model directory (``kvi kpr build``/``train`` output) as a dense retriever."""

    def __init__(self, directory: str | os.PathLike, max_length: int = 256, batch_size: int = 64,
                 device: str | None = None):
        from kvi_engine.kpr.model import KPRModel
        from kvi_engine.kpr.tokenizer import KPRTokenizer

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: not a KPR model directory (no config.json)")
        self.directory = directory
        self.tokenizer = KPRTokenizer.from_pretrained(str(directory))
        self.model = KPRModel.from_pretrained(str(directory)).eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.max_length, self.batch_size = max_length, batch_size

    def features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def encode(self, texts, desc: str | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for idx, chunk in _batches(texts, self.batch_size, desc):
            emb = self.model.encode(**self.features(chunk))
            out[idx] = torch.nn.functional.normalize(emb, dim=-1).float().cpu().numpy()
        return out

    encode_queries = encode
    encode_passages = encode
