"""KVBank: the compiled, memory-mapped store of capsule keys (position-free) and values.

Storage is layer-major with one token axis shared by all layers: capsule ``i`` is the token range
``[token_start, token_start + length)`` in every layer's ``k``/``v`` arrays of shape
``[num_layers, num_tokens, num_kv_heads, head_dim]``. The shared prefix (e.g. BOS) is stored once in
``prefix_k``/``prefix_v`` ``[num_layers, prefix_len, num_kv_heads, head_dim]``.

A bank is a directory (``bank.kvb`` plus files other components put next to it, e.g. ``graph/``) or a bare
``.kvb`` file. Opening parses the header only; tables and tensors are mapped on first use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import msgpack
import numpy as np
import torch

from kvi_engine import fingerprint as fp
from kvi_engine.bank_format import BankFormatError, Container
from kvi_engine.capsules import Capsule

BANK_FILE = "bank.kvb"
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class BankShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int


def bank_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / BANK_FILE if p.is_dir() or not p.suffix else p


class KVBank:
    def __init__(self, container: Container):
        self._c = container
        h = container.header
        try:
            self.shape = BankShape(int(h["num_layers"]), int(h["num_kv_heads"]), int(h["head_dim"]))
            self.num_capsules = int(h["num_capsules"])
            self.num_tokens = int(h["num_tokens"])
            self.quant = dict(h["quant"])
            self.fingerprint = dict(h["fingerprint"])
            self.rope = dict(h["rope"])
            self.prefix_token_ids = [int(t) for t in h["prefix_token_ids"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BankFormatError(f"{container.path}: header lacks or mangles field {e}") from None
        if self.quant.get("scheme") not in STORAGE_DTYPES:
            raise BankFormatError(f"{container.path}: storage scheme {self.quant.get('scheme')!r} is not supported "
                                  f"by this engine (supported: {sorted(STORAGE_DTYPES)})")
        self._layer_cache: dict[tuple[str, int], torch.Tensor] = {}

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> "KVBank":
        """Open a bank directory or ``.kvb`` file. O(1) in bank size unless ``verify`` checks every section."""
        bank = cls(Container(bank_file(path)))
        if verify:
            bank.verify()
        return bank

    def verify(self) -> None:
        """Check every section against its checksum; raises :class:`BankFormatError` naming the section."""
        self._c.verify()

    @property
    def path(self) -> Path:
        return self._c.path

    @property
    def header(self) -> dict:
        return self._c.header

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    @property
    def storage_dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.quant["scheme"]]

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_token_ids)

    # -- tables ----------------------------------------------------------------------------------------------
    def _checked(self, name: str) -> np.ndarray:
        if name not in self._verified:
            self._c.verify([name])
            self._verified.add(name)
        return self._c.array(name)

    @cached_property
    def _verified(self) -> set[str]:
        return set()

    @cached_property
    def ranges(self) -> torch.Tensor:
        """``[num_capsules, 2]`` int64: (token_start, length) of each capsule, valid for every layer."""
        t = torch.from_numpy(np.asarray(self._checked("capsule_table")))
        if t.shape != (self.num_capsules, 2) or (t.numel() and (t[:, 0].min() < 0 or t[:, 1].min() < 1 or
                                                                (t[:, 0] + t[:, 1]).max() > self.num_tokens)):
            raise BankFormatError(f"{self.path}: section 'capsule_table' holds out-of-range token ranges")
        return t

    @cached_property
    def _token_ids(self) -> np.ndarray:
        return self._checked("token_ids")

    @cached_property
    def _meta(self) -> list[dict]:
        return msgpack.unpackb(self._checked("capsule_meta").tobytes(), raw=False)

    def _check_id(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"capsule id must be an int, got {type(i).__name__}")
        if not 0 <= i < self.num_capsules:
            raise IndexError(f"capsule id {i} out of range: the bank holds {self.num_capsules} capsules (0..."
                             f"{self.num_capsules - 1})")
        return int(i)

    def token_ids(self, i: int) -> list[int]:
        start, length = self.ranges[self._check_id(i)].tolist()
        return [int(t) for t in self._token_ids[start:start + length]]

    def capsule(self, i: int) -> Capsule:
        m = self._meta[self._check_id(i)]
        return Capsule(m["subject"], m["relation"], m["object"], m.get("sentence_id"), m.get("sentence", ""),
                       m.get("kind", "triple"))

    def statement(self, i: int) -> str:
        return self._meta[self._check_id(i)]["statement"]

    # -- tensors ---------------------------------------------------------------------------------------------
    def _tensor(self, name: str) -> torch.Tensor:
        arr = self._c.array(name)
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.quant["scheme"] == "bf16" else t

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position-free keys and values of every capsule token at ``layer``: ``[num_tokens, kv_heads, head_dim]``
        each, zero-copy views of the mapped file."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range (bank has {self.num_layers} layers)")
        return self._tensor("k")[layer], self._tensor("v")[layer]

    def prefix_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensor("prefix_k")[layer], self._tensor("prefix_v")[layer]

    # -- sizes and checks ------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size

    @property
    def kv_bytes(self) -> int:
        return sum(s.nbytes for n, s in self._c.sections.items() if n in ("k", "v"))

    @property
    def bytes_per_token(self) -> float:
        """KV bytes per capsule token over all layers (keys + values, scales included)."""
        return self.kv_bytes / max(self.num_tokens, 1)

    def check_model(self, model, tokenizer=None) -> None:
        """Raise if ``model`` (and ``tokenizer``) is not the one this bank was compiled with."""
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        got = BankShape(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim)
        if got != self.shape:
            raise fp.FingerprintMismatch(f"{self.path}: bank shape {self.shape} does not match the model's {got}")
        fp.check(self.fingerprint, model, tokenizer, where=str(self.path))

    def describe(self) -> dict:
        return {"path": str(self.path), "format_version": self.header["format_version"],
                "num_capsules": self.num_capsules, "num_tokens": self.num_tokens,
                "num_layers": self.num_layers, "num_kv_heads": self.shape.num_kv_heads,
                "head_dim": self.shape.head_dim, "storage": self.quant["scheme"],
                "prefix_token_ids": self.prefix_token_ids, "bytes_per_token": self.bytes_per_token,
                "kv_bytes": self.kv_bytes, "file_bytes": self.nbytes, "model": self.fingerprint.get("name_or_path"),
                "model_type": self.fingerprint.get("model_type"), "rope_type": self.rope.get("rope_type"),
                "sections": {n: s.nbytes for n, s in self._c.sections.items()}}

    def __repr__(self) -> str:
        return (f"KVBank({str(self.path)!r}, capsules={self.num_capsules}, tokens={self.num_tokens}, "
                f"layers={self.num_layers}, storage={self.quant['scheme']})")
