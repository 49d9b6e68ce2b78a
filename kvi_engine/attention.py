"""The injected attention op: each query attends to its row's injected tokens, then causally to its own KV.

    out, lse = prefix_attention(query, own_k, own_v, own_mask, plan, layer, model, scaling)

Shapes follow HF's attention interface: ``query [batch, q_heads, q_len, head_dim]``, ``own_k/own_v
[batch, kv_heads, kv_len, head_dim]`` (already rotated and taken from the cache), ``own_mask`` bool
``[batch, 1, q_len, kv_len]`` (True = attend) or None for plain causal. Returns ``out [batch, q_heads, q_len,
head_dim]`` and the log-sum-exp ``lse [batch, q_heads, q_len]`` (float32) so partial results can be merged
exactly (:func:`merge_state`). The reference gathers and rotates injected KV in PyTorch; fused backends read the
bank through the plan's tables. Every backend registers here with :mod:`kvi_engine.dispatch`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kvi_engine import dispatch

OP = "prefix_attention"


def causal_mask(q_len: int, kv_len: int, batch: int, device) -> torch.Tensor:
    """Bool ``[batch, 1, q_len, kv_len]``: query i sits at kv position ``kv_len - q_len + i``."""
    q = torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)
    return (torch.arange(kv_len, device=device).unsqueeze(0) <= q).expand(batch, 1, q_len, kv_len)


def _full_mask(slot_valid: torch.Tensor, own_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor:
    B = slot_valid.shape[0]
    if own_mask is None:
        own_mask = causal_mask(q_len, kv_len, B, slot_valid.device)
    elif own_mask.dtype != torch.bool:
        own_mask = own_mask == 0  # additive float mask: 0 = attend
    own_mask = own_mask.expand(B, 1, q_len, kv_len)
    inj = slot_valid[:, None, None, :].expand(B, 1, q_len, slot_valid.shape[1])
    return torch.cat([inj, own_mask], dim=-1)


def reference(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=True):
    """PyTorch reference: explicit softmax in float32 (the oracle every backend is tested against)."""
    B, Hq, Q, D = query.shape
    k_inj, v_inj, slot_valid = plan.layer_kv(layer, model, own_k.dtype, own_k.device)
    keys = torch.cat([k_inj, own_k], dim=2).float()
    values = torch.cat([v_inj, own_v], dim=2).float()
    group = Hq // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    mask = _full_mask(slot_valid, own_mask, Q, own_k.shape[2])
    scores = query.float() @ keys.transpose(-1, -2) * (scaling if scaling is not None else 1 / math.sqrt(D))
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp(min=torch.finfo(torch.float32).min))
    out = (probs @ values).nan_to_num_(0.0)  # rows with nothing visible (padding queries) output zeros
    return out.to(query.dtype), lse


def torch_sdpa(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=False):
    """Same op through torch SDPA over the concatenated KV (fast on CPU; no lse unless asked for)."""
    if return_lse:
        return reference(query, own_k, own_v, own_mask, plan, layer, model, scaling, True)
    k_inj, v_inj, slot_valid = plan.layer_kv(layer, model, own_k.dtype, own_k.device)
    keys, values = torch.cat([k_inj, own_k], dim=2), torch.cat([v_inj, own_v], dim=2)
    mask = _full_mask(slot_valid, own_mask, query.shape[2], own_k.shape[2])
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                         enable_gqa=keys.shape[1] != query.shape[1])
    return out, None


def merge_state(out_a, lse_a, out_b, lse_b):
    """Exactly combine two attention results over disjoint key sets (FlashInfer's merge_state)."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa = torch.exp(lse_a - lse).nan_to_num_(0.0).unsqueeze(-1)
    wb = torch.exp(lse_b - lse).nan_to_num_(0.0).unsqueeze(-1)
    return (out_a.float() * wa + out_b.float() * wb).to(out_a.dtype), lse


dispatch.register(OP, "reference", torch_sdpa)


def prefix_attention(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, *, backend=None,
                     return_lse=False):
    _, fn = dispatch.select(OP, backend)
    return fn(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=return_lse)
