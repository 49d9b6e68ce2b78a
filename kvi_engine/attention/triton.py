"""The Triton backend of prefix attention: the bank's capsules made resident on the device in storage form (the
bank's :class:`~kvi_engine.bank.residency.DeviceKVCache`), the plan's tokens pointing at pool slots, one launch of
the fused kernel (:mod:`kvi_engine.kernels.prefix_attention`, which takes plain tensors) per layer."""
from __future__ import annotations

import math

import torch

from kvi_engine.attention.reference import own_visibility
from kvi_engine.plan.tables import pool_tables


def prefix_attention_triton(query, own_k, own_v, own_mask, plan, layer, model=None, scaling=None, return_lse=True):
    from kvi_engine.kernels.prefix_attention import prefix_attention_fwd

    B, Hq, Q, D = query.shape
    if plan.batch_size != B:
        raise ValueError(f"batch of {B} rows but the injection plan has {plan.batch_size} rows")
    if plan.bank.shape.num_kv_heads != own_k.shape[1] or plan.bank.shape.head_dim != D:
        raise ValueError(f"the bank stores {plan.bank.shape.num_kv_heads} kv heads of dim {plan.bank.shape.head_dim};"
                         f" the model's own KV has {own_k.shape[1]} of dim {D}")
    cache = plan.bank.device_cache(query.device)
    tables = pool_tables(plan, cache)
    pool = cache.layer(layer)
    mask = own_visibility(own_mask, B, Q, own_k.shape[2])
    if mask is not None:
        mask = mask.to(torch.uint8).contiguous()
    return prefix_attention_fwd(
        query, own_k, own_v, mask, pool.k, pool.v, pool.k_scale, pool.k_zero, pool.v_scale, pool.v_zero,
        pool.prefix_k, pool.prefix_v, tables.token, tables.position, tables.layer_visible(layer), tables.capsule_row,
        tables.inv_freq, scheme=pool.scheme, group_size=pool.group_size, key_per_capsule=pool.key_per_capsule,
        prefix_len=tables.prefix_len, scale=scaling if scaling is not None else 1 / math.sqrt(D),
        rope_scale=tables.attention_scaling)
