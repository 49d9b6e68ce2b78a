"""Tiny stand-ins for tests and demos: a random BERT encoder with the real all-MiniLM-L6-v2 word pieces, and a
deterministic text encoder for builder tests (no model: a vector per text from its hash)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from kvi_engine.utils.paths import minilm_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_base(directory: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random BertModel (hidden ``hidden``, ``layers`` layers, 128 positions) saved with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from kvi_engine.kpr.hub import atomic_copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (minilm_path() / name).is_file():
            atomic_copy(minilm_path() / name, directory / name)
    return directory


class HashEncoder:
    """``encode(texts)`` -> unit vectors derived from each text's SHA-1; counts the texts it was asked for."""

    mask_token = "[MASK]"

    def __init__(self, dim: int = 16):
        self.dim, self.calls = dim, []

    def encode(self, texts) -> np.ndarray:
        texts = list(texts)
        self.calls.extend(texts)
        out = np.stack([np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:12], 16)).standard_normal(
            self.dim) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)
