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
import os

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvi_engine import dispatch

OP = "prefix_attention"


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


def _full_mask(slot_valid: torch.Tensor, own_mask: torch.Tensor | None, q_len: int, kv_len: int) -> torch.Tensor:
    B = slot_valid.shape[0]
    own = own_visibility(own_mask, B, q_len, kv_len)
    own_mask = causal_mask(q_len, kv_len, B, slot_valid.device) if own is None else own.unsqueeze(1)
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


@dataclass(frozen=True, slots=True)
class BankLayer:
    """One layer of the bank as stored (format spec: :mod:`kvi_engine.quant`), what fused kernels read: codes
    ``[tokens, kv_heads, code_dim]`` (the values themselves for float schemes) and fp16 params ``[tokens,
    kv_heads, head_dim / group_size]`` (per-capsule keys: ``[capsules, kv_heads, head_dim]``)."""
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


_ROUND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_FLOAT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
CPP_VECTOR_WIDTH = 0  # 0: widest the CPU runs (AVX2+FMA 8-wide, else 4-wide); tests pin 4 to cover the baseline


def _numpy(t: torch.Tensor):
    """Zero-copy numpy view; bfloat16 (no numpy dtype) crosses as its uint16 bits."""
    return t.view(torch.int16).numpy().view("uint16") if t.dtype == torch.bfloat16 else t.numpy()


def _cpp_bank_args(plan, layer: int, dtype: torch.dtype) -> list[dict]:
    """Per bank segment, the kernel's bank and table arguments at ``layer`` as numpy views, built once per plan
    (decode calls the op once per layer per token: this keeps its Python overhead to the activations)."""
    key = ("cpp_args", layer, dtype)
    if key not in plan._cache:
        cos, sin = plan.rope_table(dtype)
        passes = []
        for tables in plan.slot_tables("cpu"):
            src = bank_layer(plan.bank, layer, tables.segment)
            passes.append(dict(
                bank_k=_numpy(src.k), bank_v=_numpy(src.v), bank_format=src.scheme, prefix_k=_numpy(src.prefix_k),
                prefix_v=_numpy(src.prefix_v), prefix_format=_FLOAT_NAMES[src.prefix_k.dtype],
                token=tables.token.numpy(), visible=tables.layer_visible(layer).numpy(), cos=cos.numpy(),
                sin=sin.numpy(), group_size=src.group_size, key_per_capsule=src.key_per_capsule,
                capsule_row=tables.capsule_row.numpy(),
                **{n: None if t is None else _numpy(t) for n, t in (("k_scale", src.k_scale), ("k_zero", src.k_zero),
                                                                  ("v_scale", src.v_scale), ("v_zero", src.v_zero))}))
        plan._cache[key] = passes
    return plan._cache[key]


def cpp(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, return_lse=True):
    """C++ CPU kernel (kvi_engine._core.prefix_attention): reads the bank in its storage format through the plan's
    slot tables. Activations are computed in float32 (CPUs have no fast half arithmetic); injected K/V are rounded
    to the activation dtype on the way, as the reference does."""
    from kvi_engine import _core

    if query.device.type != "cpu":
        raise ValueError(f"the C++ prefix_attention backend runs on CPU tensors, got {query.device}")
    if own_k.dtype not in _ROUND:
        raise TypeError(f"unsupported activation dtype {own_k.dtype}")
    B, Hq, Q, D = query.shape
    KV = own_k.shape[2]
    mask = own_visibility(own_mask, B, Q, KV)
    mask = None if mask is None else mask.to(torch.uint8).contiguous()
    q, k, v = (x.detach().float().contiguous() for x in (query, own_k, own_v))
    result = None
    for bank_args in _cpp_bank_args(plan, layer, own_k.dtype):
        own = slice(None) if result is None else slice(0)  # own KV is attended in the first pass only
        out = torch.empty(B, Hq, Q, D, dtype=torch.float32)
        lse = torch.empty(B, Hq, Q, dtype=torch.float32)
        _core.prefix_attention(q.numpy(), k[:, :, own].numpy(), v[:, :, own].numpy(),
                               None if mask is None else mask[:, :, own].contiguous().numpy(), out=out.numpy(),
                               lse=lse.numpy(), scale=scaling if scaling is not None else 1 / math.sqrt(D),
                               round=_ROUND[own_k.dtype], num_threads=torch.get_num_threads(),
                               vector_width=CPP_VECTOR_WIDTH, **bank_args)
        result = (out, lse) if result is None else merge_state(*result, out, lse)
    out, lse = result
    return out.to(query.dtype), lse


def _triton(*args, **kwargs):
    from kvi_engine.kernels.prefix_attention import prefix_attention_fwd
    return prefix_attention_fwd(*args, **kwargs)


dispatch.register(OP, "reference", torch_sdpa)
dispatch.register(OP, "cpp", cpp, available=lambda: dispatch.core_has("prefix_attention"),
                  why_not="kvi_engine._core lacks prefix_attention (rebuild the extension)")
dispatch.register(OP, "triton", _triton, available=dispatch.triton_runnable, auto=dispatch.cuda_available,
                  why_not="needs Triton and a CUDA device (or TRITON_INTERPRET=1 for CPU correctness runs)")

_DEVICES = {"cpp": ("cpu",), "triton": ("cuda",)}


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type in _DEVICES.get(name, (device.type,))


def reference_cache_bytes(plan) -> int:
    """Bytes of the float32 injected K/V the reference path keeps for the plan's life (all layers)."""
    shape = plan.bank.shape
    return plan.batch_size * plan.num_slots * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * 4


def _prefer(device: torch.device, plan, q_len: int) -> str | None:
    # Measured on the CPU (bench/bench_attention.py, 1 thread, bench model geometry, int8 bank):
    # - prefill: the fused C++ kernel beats even the C++ slot gather + SDPA (1 x 2,058 injected tokens: 4.1 vs
    #   5.2 ms a layer; 64 x 519: 65 vs 147 ms), so it is the automatic choice for more than one query token;
    # - decode: once the plan's gathered float copy exists, SDPA over it is faster than re-reading the bank every
    #   step (bench model, 128 capsules, batch 1: 37-39 vs 47-50 ms a token), so decode prefers the cached reference
    #   while that copy stays under a memory cap; past the cap the kernel, which needs no copy, takes over.
    if plan is None or device.type != "cpu" or q_len > 1:
        return None
    cap = float(os.environ.get("KVI_REFERENCE_CACHE_MAX_MB", "256")) * 2**20
    return "reference" if reference_cache_bytes(plan) <= cap else None


def select(device: torch.device, backend: str | None = None, plan=None, q_len: int = 1) -> tuple[str, object]:
    """Backend for tensors on ``device``: a forced one must be able to run there; the automatic choice takes the
    first preferred backend that can (on the CPU, given the plan: the cached reference for decode steps while its
    KV copy stays small)."""
    name, fn = dispatch.select(OP, backend, prefer=_prefer(device, plan, q_len))
    if _runs_on(name, device):
        return name, fn
    if dispatch.requested_backend(OP, backend) is not None:
        raise dispatch.BackendUnavailable(f"backend {name!r} for op {OP!r} cannot run on {device} tensors")
    for other in dispatch.PREFERENCE[dispatch.PREFERENCE.index(name) + 1:]:
        try:
            name, fn = dispatch.select(OP, other)
        except dispatch.BackendUnavailable:
            continue
        if _runs_on(name, device):
            return name, fn
    raise dispatch.BackendUnavailable(f"no backend of op {OP!r} runs on {device} tensors")


def prefix_attention(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, *, backend=None,
                     return_lse=False):
    _, fn = select(query.device, backend, plan, query.shape[2])
    return fn(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=return_lse)
