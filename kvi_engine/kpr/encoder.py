"""``KPREncoder``: a KPR model directory with its entity knowledge as a dense retriever, behind the encoder interface
of :mod:`kvi_engine.retrieval.encoder` (whose ``TextEncoder`` is the plain base a KPR model starts from)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kvi_engine.retrieval.encoder import TextEncoder, batches, check_texts

__all__ = ["KPREncoder", "TextEncoder"]


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
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for idx, chunk in batches(texts, self.batch_size, desc):
            emb = self.model.encode(**self.features(chunk))
            out[idx] = torch.nn.functional.normalize(emb, dim=-1).float().cpu().numpy()
        return out

    encode_queries = encode
    encode_passages = encode
