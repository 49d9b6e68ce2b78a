"""Fused prefix attention in Triton: bank gather + dequantisation + RoPE + attention over [injected ‖ own KV].

    out, lse = prefix_attention_fwd(query, own_k, own_v, own_mask, plan, layer, model, scaling)

Same contract as :func:`kvi_engine.attention.reference`. One program handles ``BLOCK_M`` query rows of one
(batch row, kv head): the rows are the ``group x q_len`` (query head, token) pairs sharing that kv head, so decode
(one token, ``group`` heads) fills a tile and each injected key is read once per kv head. Keys are loaded in two
halves so rotate_half needs no shuffle: ``k1' = k1 cos - k2 sin``, ``k2' = k2 cos + k1 sin``, and the scores are
``q1 k1'^T + q2 k2'^T``. cos/sin are evaluated in the kernel from the slot positions (float32 angles, rounded to the
activation dtype as HF does), so no table is read per key.
"""
from __future__ import annotations

import math
import os
import weakref

import torch
import triton
import triton.language as tl

from kvi_engine.attention import own_visibility

_BANK_ON_DEVICE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@triton.jit
def _load_half(ptr, row_off, cols, ok, dmask):
    return tl.load(ptr + row_off[:, None] + cols[None, :], mask=ok[:, None] & dmask[None, :], other=0.0)

@triton.jit
def _prefix_attn_kernel(Q, OWN_K, OWN_V, OWN_MASK, BANK_K, BANK_V, PRE_K, PRE_V, TOKEN, POS, VIS, INV_FREQ,
                        OUT, LSE,
                        s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_mb, s_mq,
                        num_slots, prefix_len, q_len, kv_len, kv_heads, group, scale, rope_scale,
                        HAS_MASK: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACT: tl.constexpr,
                        DOT: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // kv_heads
    h = pid_bh % kv_heads
    D = 2 * HALF
    rows = group * q_len
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = m < rows
    g = m // q_len
    qi = m % q_len
    hq = h * group + g
    d = tl.arange(0, BLOCK_H)
    dmask = d < HALF
    q_off = b * s_qb + hq * s_qh + qi * s_qm
    q1 = _load_half(Q, q_off, d, row_ok, dmask).to(ACT).to(DOT)
    q2 = _load_half(Q, q_off, d + HALF, row_ok, dmask).to(ACT).to(DOT)
    inv_freq = tl.load(INV_FREQ + d, mask=dmask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)

    # Injected slots: the shared prefix (slot < prefix_len) then bank tokens, each rotated to its position.
    for n0 in range(0, num_slots, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        in_range = n < num_slots
        tok = tl.load(TOKEN + b * num_slots + n, mask=in_range, other=0)
        pos = tl.load(POS + b * num_slots + n, mask=in_range, other=0)
        vis = (tl.load(VIS + b * num_slots + n, mask=in_range, other=0) != 0) & in_range
        pre = vis & (n < prefix_len)
        bnk = vis & (n >= prefix_len)
        off = (tok.to(tl.int64) * kv_heads + h) * D
        k1 = (_load_half(BANK_K, off, d, bnk, dmask).to(tl.float32)
              + _load_half(PRE_K, off, d, pre, dmask).to(tl.float32)).to(ACT).to(tl.float32)
        k2 = (_load_half(BANK_K, off, d + HALF, bnk, dmask).to(tl.float32)
              + _load_half(PRE_K, off, d + HALF, pre, dmask).to(tl.float32)).to(ACT).to(tl.float32)
        angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]
        cos = (tl.cos(angle) * rope_scale).to(ACT).to(tl.float32)
        sin = (tl.sin(angle) * rope_scale).to(ACT).to(tl.float32)
        kr1 = (k1 * cos - k2 * sin).to(ACT).to(DOT)
        kr2 = (k2 * cos + k1 * sin).to(ACT).to(DOT)
        s = tl.dot(q1, tl.trans(kr1), input_precision=PRECISION)
        s += tl.dot(q2, tl.trans(kr2), input_precision=PRECISION)
        s = tl.where(vis[None, :], s * scale, float("-inf"))
        v1 = (_load_half(BANK_V, off, d, bnk, dmask).to(tl.float32)
              + _load_half(PRE_V, off, d, pre, dmask).to(tl.float32)).to(ACT).to(DOT)
        v2 = (_load_half(BANK_V, off, d + HALF, bnk, dmask).to(tl.float32)
              + _load_half(PRE_V, off, d + HALF, pre, dmask).to(tl.float32)).to(ACT).to(DOT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v1, input_precision=PRECISION)
        acc2 = acc2 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v2, input_precision=PRECISION)
        m_i = m_new

    # Own KV: causal (query i sits at kv position kv_len - q_len + i) or the explicit mask.
    shift = kv_len - q_len
    kv_end = kv_len
    if not HAS_MASK:
        last = tl.minimum(pid_m * BLOCK_M + BLOCK_M - 1, rows - 1)
        first = pid_m * BLOCK_M
        i_max = tl.where(first // q_len == last // q_len, last % q_len, q_len - 1)
        kv_end = tl.minimum(kv_len, i_max + shift + 1)
    for n0 in range(0, kv_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        in_range = n < kv_len
        k_off = b * s_kb + h * s_kh + n.to(tl.int64) * s_kn
        v_off = b * s_vb + h * s_vh + n.to(tl.int64) * s_vn
        k1 = _load_half(OWN_K, k_off, d, in_range, dmask).to(ACT).to(DOT)
        k2 = _load_half(OWN_K, k_off, d + HALF, in_range, dmask).to(ACT).to(DOT)
        s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
        s += tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
        if HAS_MASK:
            allowed = tl.load(OWN_MASK + b * s_mb + qi[:, None] * s_mq + n[None, :],
                              mask=row_ok[:, None] & in_range[None, :], other=0) != 0
        else:
            allowed = (n[None, :] <= qi[:, None] + shift) & in_range[None, :]
        s = tl.where(allowed, s * scale, float("-inf"))
        v1 = _load_half(OWN_V, v_off, d, in_range, dmask).to(ACT).to(DOT)
        v2 = _load_half(OWN_V, v_off, d + HALF, in_range, dmask).to(ACT).to(DOT)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v1, input_precision=PRECISION)
        acc2 = acc2 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v2, input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    inv_l = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)
    o_off = b * s_ob + hq * s_oh + qi * s_om
    omask = row_ok[:, None] & dmask[None, :]
    tl.store(OUT + o_off[:, None] + d[None, :], (acc1 * inv_l[:, None]).to(OUT.dtype.element_ty), mask=omask)
    tl.store(OUT + o_off[:, None] + HALF + d[None, :], (acc2 * inv_l[:, None]).to(OUT.dtype.element_ty),
             mask=omask)
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(LSE + (b * (kv_heads * group) + hq) * q_len + qi, lse, mask=row_ok)


def device_layer_kv(bank, layer: int, device: torch.device):
    """The bank's layer ``(k, v, prefix_k, prefix_v)`` on ``device``, uploaded once per (bank, layer, device)."""
    if device.type == "cpu":
        return (*bank.layer_kv(layer), *bank.prefix_kv(layer))
    per_bank = _BANK_ON_DEVICE.setdefault(bank, {})
    key = (layer, str(device))
    if key not in per_bank:
        per_bank[key] = tuple(t.to(device) for t in (*bank.layer_kv(layer), *bank.prefix_kv(layer)))
    return per_bank[key]


_ACT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def prefix_attention_fwd(query, own_k, own_v, own_mask, plan, layer, model=None, scaling=None, return_lse=True):
    """Host launcher: checks shapes and strides, then launches one kernel over (query tiles, batch x kv heads)."""
    if query.dim() != 4 or own_k.dim() != 4 or own_v.shape != own_k.shape:
        raise ValueError(f"query [B, Hq, Q, D] and own_k/own_v [B, Hkv, KV, D] expected, got {tuple(query.shape)}, "
                         f"{tuple(own_k.shape)}, {tuple(own_v.shape)}")
    B, Hq, Q, D = query.shape
    Hkv, KV = own_k.shape[1], own_k.shape[2]
    if own_k.shape[0] != B or own_k.shape[3] != D or Hq % Hkv or D % 2:
        raise ValueError(f"incompatible shapes: query {tuple(query.shape)}, own_k {tuple(own_k.shape)}")
    if plan.batch_size != B:
        raise ValueError(f"batch of {B} rows but the injection plan has {plan.batch_size} rows")
    if own_k.dtype not in _ACT or query.dtype != own_k.dtype:
        raise TypeError(f"query and own KV must share one of {list(_ACT)}, got {query.dtype} and {own_k.dtype}")
    device = query.device
    query, own_k, own_v = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, own_k, own_v))
    bank_k, bank_v, pre_k, pre_v = device_layer_kv(plan.bank, layer, device)
    if bank_k.shape[1:] != (Hkv, D):
        raise ValueError(f"bank stores [tokens, {bank_k.shape[1]}, {bank_k.shape[2]}] per layer; the model's "
                         f"own KV has {Hkv} kv heads of dim {D}")
    tables = plan.slot_tables(device)
    mask = own_visibility(own_mask, B, Q, KV)
    if mask is not None:
        mask = mask.to(torch.uint8).contiguous()
    out = torch.empty(B, Hq, Q, D, dtype=query.dtype, device=device)
    lse = torch.empty(B, Hq, Q, dtype=torch.float32, device=device)
    if Q == 0:
        return out, lse
    half = D // 2
    rows = (Hq // Hkv) * Q
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    act = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[query.dtype]
    # The interpreter's tl.dot mishandles bfloat16 operands: feed it the same (bf16-rounded) values in float32.
    dot = tl.float32 if act == tl.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1" else act
    grid = (math.ceil(rows / block_m), B * Hkv)
    _prefix_attn_kernel[grid](
        query, own_k, own_v, mask if mask is not None else out, bank_k, bank_v, pre_k, pre_v,
        tables.token, tables.position, tables.layer_visible(layer), tables.inv_freq, out, lse,
        query.stride(0), query.stride(1), query.stride(2), own_k.stride(0), own_k.stride(1), own_k.stride(2),
        own_v.stride(0), own_v.stride(1), own_v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        mask.stride(0) if mask is not None else 0, mask.stride(1) if mask is not None else 0,
        tables.token.shape[1], tables.prefix_len, Q, KV, Hkv, Hq // Hkv,
        scaling if scaling is not None else 1 / math.sqrt(D), tables.attention_scaling,
        HAS_MASK=mask is not None, HALF=half, BLOCK_H=max(16, triton.next_power_of_2(half)), BLOCK_M=block_m,
        BLOCK_N=64, ACT=act, DOT=dot, PRECISION="ieee" if dot == tl.float32 else "tf32",
    )
    return out, lse


