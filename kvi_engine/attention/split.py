"""Concatenation-free attention over [injected ‖ own] KV for decode steps: the two key sets are attended as two
partial softmaxes that share one running maximum and one denominator (merge_state, fused), so nothing is copied per
step -- the former path concatenated the injected and own KV and their masks at every layer of every token.

Grouped-query attention without repeating KV: a query head ``h`` reads KV head ``h // group``, so the query is viewed
as ``[batch, kv_heads, group * q_len, head_dim]`` against ``[batch, kv_heads, keys, head_dim]`` (one GEMM per KV
head). The per-segment log-sum-exp (attribution: mass of capsule c = ``exp(lse_c - lse)``) comes from the same
exponentials.
"""
from __future__ import annotations

import math

import torch

from kvi_engine import dispatch

OP = "decode_attention"


def _bias(visible: torch.Tensor, dtype) -> torch.Tensor:
    """Additive mask: 0 where visible, -inf elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def split_attention(query, k_inj, v_inj, inj_valid, own_k, own_v, own_visible, scaling=None, segments=None):
    """``query [B, Hq, Q, D]``; injected ``k_inj/v_inj [B, Hkv, S, D]`` with ``inj_valid [B, S]`` bool; own
    ``own_k/own_v [B, Hkv, T, D]`` with ``own_visible [B, Q, T]`` bool (None: causal, query i sees own keys up to
    ``T - Q + i``); ``segments [B, S, n]`` one-hot or None. Returns ``out [B, Hq, Q, D]`` (query dtype),
    ``lse [B, Hq, Q]`` float32 and, given ``segments``, ``[B, Hq, Q, n]`` float32 (else None)."""
    B, Hq, Q, D = query.shape
    Hkv, S, T = own_k.shape[1], k_inj.shape[2], own_k.shape[2]
    g = Hq // Hkv
    dtype = torch.float32  # softmax statistics in float32 whatever the activations (a no-op for fp32 models)
    f32 = (lambda x: x) if query.dtype == dtype else (lambda x: x.to(dtype))  # noqa: E731
    scale = scaling if scaling is not None else 1 / math.sqrt(D)
    q = f32(query).reshape(B, Hkv, g * Q, D)
    # Per-op overhead dominates at batch 1 (a dozen ops per layer per token): masks are additive biases, the
    # scores of both parts share one tensor, and fully masked queries are handled by clamps instead of branches.
    if own_visible is None:
        i = torch.arange(Q, device=query.device).unsqueeze(1) + (T - Q)
        own_visible = (torch.arange(T, device=query.device).unsqueeze(0) <= i).expand(B, Q, T)
    own_bias = _bias(own_visible, dtype)[:, None, None].expand(B, 1, g, Q, T).reshape(B, 1, g * Q, T)
    scores = torch.cat([torch.matmul(q, f32(k_inj).transpose(-1, -2)).add_(_bias(inj_valid, dtype)[:, None, None]),
                        torch.matmul(q, f32(own_k).transpose(-1, -2)).add_(own_bias)], dim=-1).mul_(scale)
    m = scores.amax(-1, keepdim=True).clamp_(min=torch.finfo(dtype).min)  # -inf rows: exp gives zeros
    e = scores.sub_(m).exp_()
    denom = e.sum(-1, keepdim=True)
    out = torch.matmul(e[..., :S], f32(v_inj)).add_(torch.matmul(e[..., S:], f32(own_v)))
    out = out.div_(denom.clamp(min=torch.finfo(dtype).tiny))  # a query that sees nothing outputs zeros
    lse = (m + torch.log(denom)).reshape(B, Hq, Q)
    seg = None
    if segments is not None:
        seg = (m + torch.log(torch.matmul(e[..., :S], segments.to(dtype).unsqueeze(1)))).reshape(B, Hq, Q, -1)
    return out.reshape(B, Hq, Q, D).to(query.dtype), lse, seg


def decode_backend(dtype: torch.dtype, device) -> tuple[str, object]:
    """``(name, fn)`` of op ``decode_attention`` for activations of ``dtype`` on ``device``: the C++ kernel for
    float32 on the CPU, this module's PyTorch twin (:func:`split_attention`, also its oracle) elsewhere; ``fn``
    takes :func:`split_attention`'s arguments."""
    prefer = None if dtype == torch.float32 else "reference"  # the C++ kernel is float32 only
    return dispatch.select(OP, device=device, prefer=prefer)


def decode_attention(query, k_inj, v_inj, inj_valid, own_k, own_v, own_visible, scaling=None, segments=None):
    """:func:`split_attention` by the backend :func:`decode_backend` picks."""
    _, fn = decode_backend(query.dtype, query.device)
    return fn(query, k_inj, v_inj, inj_valid, own_k, own_v, own_visible, scaling, segments)


def _cpp(*args, **kwargs):
    from kvi_engine.attention.decode_cpp import decode_attention_cpp
    return decode_attention_cpp(*args, **kwargs)


dispatch.register(OP, "reference", split_attention, devices=dispatch.ANY)
dispatch.register(OP, "cpp", _cpp, devices=("cpu",), available=lambda: dispatch.core_has("decode_attention"),
                  why_not="kvi_engine._core lacks decode_attention (rebuild the extension)")
