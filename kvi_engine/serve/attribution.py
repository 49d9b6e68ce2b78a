"""Per-capsule attribution: which injected capsule the generated tokens attended to.

For every generated token and every layer, the attention mass that the query choosing it (the last position of its
row) puts on each injected segment, mean over heads: ``mass_c = exp(lse_c - lse)``, where ``lse_c`` is the
log-sum-exp of the scores over capsule c's slots and ``lse`` over every key (injected and own). The attention
backends return both (:func:`kvi_engine.attention.op.prefix_attention` with ``capsule_lse``): the split decode path
from its own exponentials, the fused kernels with one more pass over the injected keys of that one query.

A response carries, per capsule, the mass averaged over tokens and layers (``mass``) and per layer (``per_layer``),
and per token the mass per capsule averaged over layers; ``prefix`` is the shared prefix (BOS) and ``own`` the
rest (prompt and generated tokens), so prefix + capsules + own = 1 for every token and layer.
"""
from __future__ import annotations

import torch


class Collector:
    """Receives every layer's segment log-sum-exp during one forward (``Injection.on_attention``); ``take()`` gives
    ``[layers, rows, 1 + capsules]`` masses of the last query position of each row."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._layers: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, plan, capsule_lse: torch.Tensor, lse: torch.Tensor) -> None:
        mass = torch.exp(capsule_lse[:, :, -1] - lse[:, :, -1:])  # [rows, heads, 1 + capsules]
        self._layers[layer] = mass.nan_to_num_(0.0).mean(1).float().cpu()

    def take(self) -> torch.Tensor | None:
        if not self._layers:
            return None
        out = torch.stack([self._layers[i] for i in sorted(self._layers)])
        self._layers = {}
        return out


def summarise(per_token: list[list[list[float]]], capsule_ids: list[int], num_layers: int) -> dict:
    """The response's ``attribution`` object from a choice's per-token ``[layers, 1 + capsules]`` masses."""
    if not per_token:
        return {"tokens": 0, "capsules": [], "prefix": 0.0, "own": 0.0, "per_token": []}
    t = torch.tensor(per_token, dtype=torch.float64)[:, :, : 1 + len(capsule_ids)]  # [tokens, layers, 1 + caps]
    caps = t[:, :, 1:]
    own = 1.0 - t.sum(-1)
    return {
        "tokens": t.shape[0],
        "capsules": [{"capsule_id": c, "mass": round(float(caps[:, :, i].mean()), 6),
                      "per_layer": [round(float(x), 6) for x in caps[:, :, i].mean(0)]}
                     for i, c in enumerate(capsule_ids)],
        "prefix": round(float(t[:, :, 0].mean()), 6),
        "own": round(float(own.mean()), 6),
        "per_token": [[round(float(x), 6) for x in row] for row in caps.mean(1)],
    }
