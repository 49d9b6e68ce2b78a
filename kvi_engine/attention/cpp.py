"""The C++ CPU backend of prefix attention (``kvi_engine._core.prefix_attention``): reads the bank in its storage
format through the plan's per-segment slot tables, one kernel pass per segment holding injected tokens, passes
merged exactly through their log-sum-exp. Activations are computed in float32 (CPUs have no fast half arithmetic);
injected K/V are rounded to the activation dtype on the way, as the reference does."""
from __future__ import annotations

import math

import torch

from kvi_engine.attention.reference import merge_state, own_visibility
from kvi_engine.plan.tables import native_args

ROUND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
VECTOR_WIDTH = 0  # 0: widest the CPU runs (AVX2+FMA 8-wide, else 4-wide); tests pin 4 to cover the baseline


def prefix_attention_cpp(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=True):
    from kvi_engine import _core

    if query.device.type != "cpu":
        raise ValueError(f"the C++ prefix_attention backend runs on CPU tensors, got {query.device}")
    if own_k.dtype not in ROUND:
        raise TypeError(f"unsupported activation dtype {own_k.dtype}")
    B, Hq, Q, D = query.shape
    KV = own_k.shape[2]
    mask = own_visibility(own_mask, B, Q, KV)
    mask = None if mask is None else mask.to(torch.uint8).contiguous()
    q, k, v = (x.detach().float().contiguous() for x in (query, own_k, own_v))
    result = None
    for bank_args in native_args(plan, layer, own_k.dtype):
        own = slice(None) if result is None else slice(0)  # own KV is attended in the first pass only
        out = torch.empty(B, Hq, Q, D, dtype=torch.float32)
        lse = torch.empty(B, Hq, Q, dtype=torch.float32)
        _core.prefix_attention(q.numpy(), k[:, :, own].numpy(), v[:, :, own].numpy(),
                               None if mask is None else mask[:, :, own].contiguous().numpy(), out=out.numpy(),
                               lse=lse.numpy(), scale=scaling if scaling is not None else 1 / math.sqrt(D),
                               round=ROUND[own_k.dtype], num_threads=torch.get_num_threads(),
                               vector_width=VECTOR_WIDTH, **bank_args)
        result = (out, lse) if result is None else merge_state(*result, out, lse)
    out, lse = result
    return out.to(query.dtype), lse

