"""The PyTorch implementations of prefix attention: the float32 oracle and the SDPA path, plus the masks and the
exact merge of partial results they share with the fused backends.

Shapes follow HF's attention interface: ``query [batch, q_heads, q_len, head_dim]``, ``own_k/own_v
[batch, kv_heads, kv_len, head_dim]`` (already rotated and taken from the cache), ``own_mask`` bool
``[batch, 1, q_len, kv_len]`` (True = attend), an additive float mask (0 = attend), or None for plain causal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kvi_engine.plan.gather import injected_kv


def causal_mask(q_len: int, kv_len: int, batch: int, device) -> torch.Tensor:
    """Bool ``[batch, 1, q_len, kv_len]``: query i sits at kv position ``kv_len - q_len + i``."""
    q = torch.arange(q_len, device=device).unsqueeze(1) + (kv_len - q_len)
    return (torch.arange(kv_len, device=device).unsqueeze(0) <= q).expand(batch, 1, q_len, kv_len)


def own_visibility(own_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int) -> torch.Tensor | None:
    """``own_mask`` as bool ``[batch, q_len, kv_len]`` (True = attend), or None for plain causal."""
    if own_mask is None:
        return None
    if own_mask.dtype != torch.bool:
        own_mask = own_mask == 0  # additive float mask: 0 = attend
    return own_mask.expand(batch, 1, q_len, kv_len).reshape(batch, q_len, kv_len)


def full_mask(slot_valid: torch.Tensor, own_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor:
    """Bool ``[batch, 1, q_len, injected + kv_len]``: the injected slots visible at this layer, then own KV."""
    B = slot_valid.shape[0]
    own = own_visibility(own_mask, B, q_len, kv_len)
    own_mask = causal_mask(q_len, kv_len, B, slot_valid.device) if own is None else own.unsqueeze(1)
    inj = slot_valid[:, None, None, :].expand(B, 1, q_len, slot_valid.shape[1])
    return torch.cat([inj, own_mask], dim=-1)


def segment_lse(scores: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp of ``scores [batch, heads, q_len, slots]`` (-inf = masked) over each segment of
    ``segments [batch, slots, n]`` (one-hot): ``[batch, heads, q_len, n]`` float32, -inf for an empty segment."""
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    sums = torch.einsum("bhqs,bsn->bhqn", torch.exp(scores.float() - m), segments.to(torch.float32))
    return (m + torch.log(sums)).float()


def reference(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=True,
              capsule_lse=False):
    """The oracle: explicit softmax in float32 over [injected ‖ own] KV; returns ``(out, lse)``, lse
    ``[batch, q_heads, q_len]`` float32 (``-inf`` where a query sees nothing; its output is zeros). With
    ``capsule_lse`` also the log-sum-exp over each injected segment (:meth:`InjectionPlan.segments`):
    ``[batch, q_heads, q_len, 1 + max_capsules]``, whose ``exp(capsule_lse - lse)`` is each capsule's attention
    mass."""
    B, Hq, Q, D = query.shape
    k_inj, v_inj, slot_valid = injected_kv(plan, layer, model, own_k.dtype, own_k.device)
    keys = torch.cat([k_inj, own_k], dim=2).float()
    values = torch.cat([v_inj, own_v], dim=2).float()
    group = Hq // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    mask = full_mask(slot_valid, own_mask, Q, own_k.shape[2])
    scores = query.float() @ keys.transpose(-1, -2) * (scaling if scaling is not None else 1 / math.sqrt(D))
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp(min=torch.finfo(torch.float32).min))
    out = (probs @ values).nan_to_num_(0.0)  # rows with nothing visible (padding queries) output zeros
    if capsule_lse:
        return out.to(query.dtype), lse, segment_lse(scores[..., :k_inj.shape[2]], plan.segments(query.device))
    return out.to(query.dtype), lse


def sdpa(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=False, capsule_lse=False):
    """Over the plan's gathered injected KV (gathered once, reused by every decode step), in the activation dtype.
    Decode steps (one query token) run op ``decode_attention`` (:mod:`kvi_engine.attention.split`; C++ for float32
    on the CPU): the injected part and the own part as one softmax over two key sets, which copies nothing per step
    and gives the lse (and per-capsule lse) for free. Longer queries run torch SDPA over the concatenated KV; SDPA
    returns no log-sum-exp, so there ``return_lse`` / ``capsule_lse`` defer to the oracle."""
    from kvi_engine.attention.split import decode_backend

    k_inj, v_inj, slot_valid = injected_kv(plan, layer, model, own_k.dtype, own_k.device)
    if query.shape[2] == 1:
        own = own_visibility(own_mask, query.shape[0], 1, own_k.shape[2])
        _, decode = plan.cached(("decode_attention", query.dtype, str(query.device)),
                                lambda: decode_backend(query.dtype, query.device))
        out, lse, seg = decode(query, k_inj, v_inj, slot_valid, own_k, own_v, own, scaling,
                               plan.segments(query.device) if capsule_lse else None)
        return (out, lse, seg) if capsule_lse else (out, lse)
    if return_lse or capsule_lse:
        return reference(query, own_k, own_v, own_mask, plan, layer, model, scaling, True, capsule_lse)
    keys, values = torch.cat([k_inj, own_k], dim=2), torch.cat([v_inj, own_v], dim=2)
    mask = full_mask(slot_valid, own_mask, query.shape[2], own_k.shape[2])
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                         enable_gqa=keys.shape[1] != query.shape[1])
    return out, None


def merge_state(out_a, lse_a, out_b, lse_b):
    """Exactly combine two attention results over disjoint key sets (FlashInfer's merge_state)."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa = torch.exp(lse_a - lse).nan_to_num_(0.0).unsqueeze(-1)
    wb = torch.exp(lse_b - lse).nan_to_num_(0.0).unsqueeze(-1)
    return (out_a.float() * wa + out_b.float() * wb).to(out_a.dtype), lse
