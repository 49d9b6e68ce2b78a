"""BankLayer: one layer of one bank segment as stored -- what fused kernels read, in the storage format.

Codes ``[tokens, kv_heads, code_dim]`` (the values themselves for float schemes) and fp16 params ``[tokens, kv_heads,
head_dim / group_size]`` (per-capsule keys, ``key_mode="channel"``: ``[capsules, kv_heads, head_dim]``), plus the
bank's shared prefix ``[prefix_len, kv_heads, head_dim]`` in float. The format is specified in
:mod:`kvi_engine.bank.quant`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class BankLayer:
    scheme: str
    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None
    k_zero: torch.Tensor | None
    v_scale: torch.Tensor | None
    v_zero: torch.Tensor | None
    group_size: int
    key_per_capsule: bool
    prefix_k: torch.Tensor
    prefix_v: torch.Tensor

    PARAMS = ("k_scale", "k_zero", "v_scale", "v_zero")

    def to(self, device) -> "BankLayer":
        return BankLayer(**{f: x.to(device) if isinstance(x, torch.Tensor) else x
                            for f in self.__slots__ for x in [getattr(self, f)]})


def bank_layer(bank, layer: int, segment: int = 0) -> BankLayer:
    """``layer`` of bank ``segment`` as stored: zero-copy views of the mapped file."""
    seg = bank.segments[segment]
    spec = seg.spec

    def section(name):
        if name not in seg.c.sections:
            return None
        t = torch.from_numpy(seg.c.array(name)[layer])
        return t.view(torch.bfloat16) if spec.scheme == "bf16" and name in ("k", "v") else t

    prefix_k, prefix_v = bank.prefix_kv(layer)
    group = spec.group_for(bank.shape.head_dim) if spec.quantised else 0
    return BankLayer(spec.scheme, section("k"), section("v"), section("k_scale"), section("k_zero"),
                     section("v_scale"), section("v_zero"), group, spec.key_mode == "channel", prefix_k, prefix_v)
