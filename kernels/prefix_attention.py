"""Fused prefix attention in Triton: bank gather + dequantisation + RoPE + attention over [injected ‖ own KV].

    out, lse = prefix_attention_fwd(query, own_k, own_v, own_mask, bank_k, bank_v, k_scale, k_zero, v_scale, v_zero,
                                    prefix_k, prefix_v, token, position, visible, capsule_row, inv_freq, scheme=...)

Plain tensors in, plain tensors out: this module imports nothing from kvi_engine (the caller,
kvi_engine/attention/triton.py, turns a plan and a bank into these tables). Same contract as the float32 oracle
``kvi_engine.attention.reference.reference``. One program handles ``BLOCK_M`` query rows of one
(batch row, kv head): the rows are the ``group x q_len`` (query head, token) pairs sharing that kv head, so decode
(one token, ``group`` heads) fills a tile and each injected key is read once per kv head. Keys are loaded in two
halves so rotate_half needs no shuffle: ``k1' = k1 cos - k2 sin``, ``k2' = k2 cos + k1 sin``, and the scores are
``q1 k1'^T + q2 k2'^T``. cos/sin are evaluated in the kernel from the slot positions (float32 angles, rounded to the
activation dtype as HF does), so no table is read per key.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _load_half(ptr, row_off, cols, ok, dmask):
    return tl.load(ptr + row_off[:, None] + cols[None, :], mask=ok[:, None] & dmask[None, :], other=0.0)

@triton.jit
def _load_bank(CODES, SCALE, ZERO, row, param_row, cols, ok, dmask, FMT: tl.constexpr, D: tl.constexpr,
               G: tl.constexpr):
    """Channels ``cols`` of rows ``row`` (token * kv_heads + head) dequantised to fp32 (format: kvi_engine/bank/quant.py;
    FMT 0-2 float, 3 int8, 4 int4, 5 int2, 6 fp8 e4m3fn); params are read at ``param_row``."""
    m = ok[:, None] & dmask[None, :]
    if FMT < 3:
        x = tl.load(CODES + row[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    else:
        if FMT == 4:
            byte = tl.load(CODES + row[:, None] * (D // 2) + (cols // 2)[None, :], mask=m, other=0).to(tl.int32)
            q = ((byte >> ((cols % 2) * 4)[None, :]) & 15).to(tl.float32)
        elif FMT == 5:
            byte = tl.load(CODES + row[:, None] * (D // 4) + (cols // 4)[None, :], mask=m, other=0).to(tl.int32)
            q = ((byte >> ((cols % 4) * 2)[None, :]) & 3).to(tl.float32)
        elif FMT == 6:
            # e4m3fn from its bits (exact; the interpreter has no fp8): normal (8 + m) 2^(e - 10), subnormal m 2^-9
            c = tl.load(CODES + row[:, None] * D + cols[None, :], mask=m, other=0).to(tl.int32)
            e = (c >> 3) & 15
            mant = c & 7
            normal = (((e + 120) << 23) | (mant << 20)).to(tl.float32, bitcast=True)
            q = tl.where(e == 0, mant.to(tl.float32) * 0.001953125, normal)
            q = tl.where((c & 128) != 0, -q, q)
        else:
            q = tl.load(CODES + row[:, None] * D + cols[None, :], mask=m, other=0).to(tl.float32)
        p_off = param_row[:, None] * (D // G) + (cols // G)[None, :]
        x = q * tl.load(SCALE + p_off, mask=m, other=0.0).to(tl.float32)
        if FMT == 4 or FMT == 5:
            x += tl.load(ZERO + p_off, mask=m, other=0.0).to(tl.float32)
    return x


@triton.jit
def _softmax_step(s, v1, v2, m_i, l_i, acc1, acc2, ACT: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax update (FlashAttention) with a key block's scores ``s`` and value halves ``v1``/``v2``;
    fully masked rows keep m = -inf and contribute nothing."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc1 = acc1 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v1, input_precision=PRECISION)
    acc2 = acc2 * alpha[:, None] + tl.dot(p.to(ACT).to(DOT), v2, input_precision=PRECISION)
    return m_new, l_i, acc1, acc2


@triton.jit
def _prefix_attn_kernel(Q, OWN_K, OWN_V, OWN_MASK, BANK_K, BANK_V, K_SCALE, K_ZERO, V_SCALE, V_ZERO, PRE_K, PRE_V,
                        TOKEN, POS, VIS, CROW, INV_FREQ, OUT, LSE,
                        s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_mb, s_mq,
                        num_slots, prefix_len, q_len, kv_len, kv_heads, group, scale, rope_scale,
                        HAS_MASK: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACT: tl.constexpr,
                        DOT: tl.constexpr, PRECISION: tl.constexpr, FMT: tl.constexpr, GROUP_K: tl.constexpr,
                        GROUP_V: tl.constexpr, K_PER_CAPSULE: tl.constexpr):
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
        row = tok.to(tl.int64) * kv_heads + h
        prow = row
        if K_PER_CAPSULE:
            prow = tl.load(CROW + b * num_slots + n, mask=in_range, other=0).to(tl.int64) * kv_heads + h
        k1 = (_load_bank(BANK_K, K_SCALE, K_ZERO, row, prow, d, bnk, dmask, FMT, D, GROUP_K)
              + _load_half(PRE_K, row * D, d, pre, dmask).to(tl.float32)).to(ACT).to(tl.float32)
        k2 = (_load_bank(BANK_K, K_SCALE, K_ZERO, row, prow, d + HALF, bnk, dmask, FMT, D, GROUP_K)
              + _load_half(PRE_K, row * D, d + HALF, pre, dmask).to(tl.float32)).to(ACT).to(tl.float32)
        angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]
        cos = (tl.cos(angle) * rope_scale).to(ACT).to(tl.float32)
        sin = (tl.sin(angle) * rope_scale).to(ACT).to(tl.float32)
        kr1 = (k1 * cos - k2 * sin).to(ACT).to(DOT)
        kr2 = (k2 * cos + k1 * sin).to(ACT).to(DOT)
        s = tl.dot(q1, tl.trans(kr1), input_precision=PRECISION)
        s += tl.dot(q2, tl.trans(kr2), input_precision=PRECISION)
        s = tl.where(vis[None, :], s * scale, float("-inf"))
        v1 = (_load_bank(BANK_V, V_SCALE, V_ZERO, row, row, d, bnk, dmask, FMT, D, GROUP_V)
              + _load_half(PRE_V, row * D, d, pre, dmask).to(tl.float32)).to(ACT).to(DOT)
        v2 = (_load_bank(BANK_V, V_SCALE, V_ZERO, row, row, d + HALF, bnk, dmask, FMT, D, GROUP_V)
              + _load_half(PRE_V, row * D, d + HALF, pre, dmask).to(tl.float32)).to(ACT).to(DOT)
        m_i, l_i, acc1, acc2 = _softmax_step(s, v1, v2, m_i, l_i, acc1, acc2, ACT, DOT, PRECISION)

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
        m_i, l_i, acc1, acc2 = _softmax_step(s, v1, v2, m_i, l_i, acc1, acc2, ACT, DOT, PRECISION)

    seen = l_i > 0.0
    inv_l = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)
    o_off = b * s_ob + hq * s_oh + qi * s_om
    omask = row_ok[:, None] & dmask[None, :]
    tl.store(OUT + o_off[:, None] + d[None, :], (acc1 * inv_l[:, None]).to(OUT.dtype.element_ty), mask=omask)
    tl.store(OUT + o_off[:, None] + HALF + d[None, :], (acc2 * inv_l[:, None]).to(OUT.dtype.element_ty),
             mask=omask)
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(LSE + (b * (kv_heads * group) + hq) * q_len + qi, lse, mask=row_ok)


_FORMATS = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3, "int4": 4, "int2": 5, "fp8": 6}
_ACT = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def prefix_attention_fwd(query, own_k, own_v, own_mask, bank_k, bank_v, k_scale, k_zero, v_scale, v_zero, prefix_k,
                         prefix_v, token, position, visible, capsule_row, inv_freq, *, scheme: str, group_size: int,
                         key_per_capsule: bool, prefix_len: int, scale: float, rope_scale: float = 1.0):
    """Host launcher: checks shapes, dtypes and strides, then launches one kernel over (query tiles, batch x kv heads).

    ``query [B, Hq, Q, D]``, ``own_k/own_v [B, Hkv, KV, D]``, ``own_mask`` uint8 ``[B, Q, KV]`` or None (causal);
    bank codes ``[tokens, Hkv, D']`` and params as stored (kvi_engine/bank/quant.py), ``prefix_k/v [P, Hkv, D]``;
    tables ``token / position / capsule_row`` int32 ``[B, n]`` and ``visible`` uint8 ``[B, n]`` over the
    ``n = prefix_len + slots`` injected positions; ``inv_freq [D / 2]`` float32. Returns ``out [B, Hq, Q, D]``
    (query dtype) and ``lse [B, Hq, Q]`` float32."""
    _need(query.dim() == 4 and own_k.dim() == 4 and own_v.shape == own_k.shape,
          f"query [B, Hq, Q, D] and own_k/own_v [B, Hkv, KV, D] expected, got {tuple(query.shape)}, "
          f"{tuple(own_k.shape)}, {tuple(own_v.shape)}")
    B, Hq, Q, D = query.shape
    Hkv, KV = own_k.shape[1], own_k.shape[2]
    _need(own_k.shape[0] == B and own_k.shape[3] == D and Hq % Hkv == 0 and D % 2 == 0,
          f"incompatible shapes: query {tuple(query.shape)}, own_k {tuple(own_k.shape)}")
    if own_k.dtype not in _ACT or query.dtype != own_k.dtype:
        raise TypeError(f"query and own KV must share one of {list(_ACT)}, got {query.dtype} and {own_k.dtype}")
    _need(scheme in _FORMATS, f"unknown storage format {scheme!r}; expected one of {sorted(_FORMATS)}")
    n = token.shape[-1]
    for name, tab, dt in (("token", token, torch.int32), ("position", position, torch.int32),
                          ("capsule_row", capsule_row, torch.int32), ("visible", visible, torch.uint8)):
        _need(tab.shape == (B, n) and tab.dtype == dt and tab.is_contiguous(),
              f"{name}: expected a contiguous {dt} table [{B}, {n}], got {tab.dtype} {tuple(tab.shape)}")
    _need(bank_k.dim() == 3 and bank_k.shape[1] == Hkv and bank_v.shape == bank_k.shape,
          f"bank codes [tokens, {Hkv}, code_dim] expected, got {tuple(bank_k.shape)} / {tuple(bank_v.shape)}")
    _need(prefix_k.shape == (prefix_len, Hkv, D) and prefix_v.shape == prefix_k.shape,
          f"prefix K/V [{prefix_len}, {Hkv}, {D}] expected, got {tuple(prefix_k.shape)}")
    _need(inv_freq.shape == (D // 2,) and inv_freq.dtype == torch.float32, f"inv_freq: float32 [{D // 2}] expected")
    quantised = _FORMATS[scheme] >= 3
    _need(not quantised or (k_scale is not None and v_scale is not None), f"{scheme} storage needs its scales")
    device = query.device
    for name, x in (("bank_k", bank_k), ("token", token), ("prefix_k", prefix_k)):
        _need(x.device == device, f"{name} is on {x.device}, the query on {device}")
    query, own_k, own_v = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, own_k, own_v))
    bank_k, bank_v = bank_k.contiguous(), bank_v.contiguous()
    if own_mask is not None:
        _need(own_mask.shape == (B, Q, KV) and own_mask.dtype == torch.uint8,
              f"own_mask: uint8 [{B}, {Q}, {KV}] expected, got {own_mask.dtype} {tuple(own_mask.shape)}")
        own_mask = own_mask.contiguous()
    if Q == 0:
        return query.new_empty(B, Hq, 0, D), torch.empty(B, Hq, 0, dtype=torch.float32, device=device)
    rows = (Hq // Hkv) * Q
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    act = _ACT[query.dtype]
    # The interpreter's tl.dot mishandles bfloat16 operands: feed it the same (bf16-rounded) values in float32.
    dot = tl.float32 if act == tl.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1" else act
    # fp32 operands at BLOCK_N 64 need ~180 KB of shared memory at head_dim 128 (sm_90 compile): more than A100s have.
    block_n = 32 if query.dtype == torch.float32 and query.is_cuda else 64
    grid = (math.ceil(rows / block_m), B * Hkv)
    out = torch.empty(B, Hq, Q, D, dtype=query.dtype, device=device)
    lse = torch.empty(B, Hq, Q, dtype=torch.float32, device=device)
    dummy = bank_k
    _prefix_attn_kernel[grid](
        query, own_k, own_v, own_mask if own_mask is not None else out, bank_k, bank_v,
        *(t.contiguous() if t is not None else dummy for t in (k_scale, k_zero, v_scale, v_zero)),
        prefix_k.contiguous(), prefix_v.contiguous(), token, position, visible, capsule_row, inv_freq, out, lse,
        query.stride(0), query.stride(1), query.stride(2), own_k.stride(0), own_k.stride(1), own_k.stride(2),
        own_v.stride(0), own_v.stride(1), own_v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        own_mask.stride(0) if own_mask is not None else 0, own_mask.stride(1) if own_mask is not None else 0,
        n, prefix_len, Q, KV, Hkv, Hq // Hkv, scale, rope_scale,
        HAS_MASK=own_mask is not None, HALF=D // 2, BLOCK_H=max(16, triton.next_power_of_2(D // 2)),
        BLOCK_M=block_m, BLOCK_N=block_n, ACT=act, DOT=dot, PRECISION="ieee" if dot == tl.float32 else "tf32",
        FMT=_FORMATS[scheme], GROUP_K=1 if key_per_capsule else max(group_size, 1),
        GROUP_V=max(group_size, 1), K_PER_CAPSULE=key_per_capsule,
    )
    return out, lse
