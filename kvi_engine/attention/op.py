"""The injected attention op: each query attends to its row's injected tokens, then causally to its own KV.

    out, lse = prefix_attention(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=True)

Shapes and masks: :mod:`kvi_engine.attention.reference`. Returns ``out [batch, q_heads, q_len, head_dim]`` and, with
``return_lse``, the log-sum-exp ``lse [batch, q_heads, q_len]`` (float32) so partial results merge exactly
(:func:`~kvi_engine.attention.reference.merge_state`). Backends (one dispatch point, :mod:`kvi_engine.dispatch`):
``reference`` (float32 oracle), ``sdpa`` (PyTorch SDPA over the plan's gathered KV), ``cpp`` (fused C++ kernel, CPU)
and ``triton`` (fused Triton kernel, CUDA).
"""
from __future__ import annotations

import math
import os

import torch

from kvi_engine import dispatch
from kvi_engine.attention import split  # noqa: F401  (registers op decode_attention)
from kvi_engine.attention.cpp import prefix_attention_cpp
from kvi_engine.attention.reference import reference, sdpa, segment_lse
from kvi_engine.plan import gather
from kvi_engine.plan.arena import ARENA
from kvi_engine.plan.gather import injected_kv

OP = "prefix_attention"


def _triton(*args, **kwargs):
    from kvi_engine.attention.triton import prefix_attention_triton
    return prefix_attention_triton(*args, **kwargs)


dispatch.register(OP, "reference", reference, devices=dispatch.ANY)
dispatch.register(OP, "sdpa", sdpa, devices=dispatch.ANY)
dispatch.register(OP, "cpp", prefix_attention_cpp, devices=("cpu",),
                  available=lambda: dispatch.core_has("prefix_attention"),
                  why_not="kvi_engine._core lacks prefix_attention (rebuild the extension)")
dispatch.register(OP, "triton", _triton, devices=dispatch.triton_devices, available=dispatch.triton_runnable,
                  auto=dispatch.cuda_available,
                  why_not=dispatch.triton_why_not)


def gathered_kv_bytes(plan) -> int:
    """Bytes of the float32 injected K/V the unfused path keeps for the plan's life (all layers)."""
    shape = plan.bank.shape
    return plan.batch_size * plan.num_slots * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * 4


def _prefer(device, plan, q_len: int) -> str | None:
    # Measured on the CPU (kvi bench attention, 1 thread, bench model geometry, int8 bank):
    # - prefill: the fused C++ kernel beats even the C++ slot gather + SDPA (1 x 2,058 injected tokens: 4.1 vs
    #   5.2 ms a layer; 64 x 519: 65 vs 147 ms), so it is the automatic choice for more than one query token;
    # - decode: once the plan's gathered float copy exists, attending over it (op decode_attention, C++) is faster
    #   than re-reading the bank every step (bench model, 128 capsules, batch 1, one layer, KV out of cache: 0.51 ms
    #   against 1.24 for the fused kernel on an int8 bank, 0.44 against 3.6 on fp16), so decode prefers that path while the copy stays under a memory
    #   cap; past the cap the fused kernel, which needs no copy, takes over.
    if plan is None or dispatch.device_type(device) != "cpu" or q_len > 1:
        return None
    cap = float(os.environ.get("KVI_REFERENCE_CACHE_MAX_MB", "256")) * 2**20
    return "sdpa" if gathered_kv_bytes(plan) <= cap else None


def select(device: torch.device, backend: str | None = None, plan=None, q_len: int = 1) -> tuple[str, object]:
    """Backend for tensors on ``device``: a forced one must be able to run there; the automatic choice takes the
    first preferred backend that can (on the CPU, given the plan: SDPA over the gathered KV for decode steps while
    that copy stays small)."""
    return dispatch.select(OP, backend, device=device, prefer=_prefer(device, plan, q_len))


def decode_step(plan, layer: int, model, dtype: torch.dtype, device, backend: str | None = None):
    """The prepared decode step of ``layer``
    (:class:`~kvi_engine.attention.decode_cpp.DecodeStep`) wherever :func:`prefix_attention` would run op
    ``decode_attention``'s C++ kernel over the gathered KV for one query token (backend ``sdpa`` chosen for decode,
    float32 CPU activations), else None. Same kernel, same arguments, so the same bits as the general path."""
    from kvi_engine.attention.decode_cpp import DecodeStep
    from kvi_engine.attention.split import decode_backend

    name, _ = plan.cached(("backend", str(device), backend, True), lambda: select(device, backend, plan, 1))
    if name != "sdpa":
        return None
    kernel, _ = plan.cached(("decode_attention", dtype, str(device)), lambda: decode_backend(dtype, device))
    if kernel != "cpp":
        return None
    # The step's own copy of the injected KV, from the C++ gather into arena memory: it goes back to the arena with
    # the step, and the next plan's step reuses it instead of faulting fresh pages in (~20 ms of the first decode
    # step at 128 capsules). An fp16 bank's values stay fp16 there (exact; the gather copies their bits: another
    # ~20 ms less allocation and conversion than a float32 copy). Other banks share the plan's float32 copy where
    # an earlier pass (attribution over a prefill) built one, instead of holding two.
    fp16 = gather.fp16_values(plan)
    gather_backend, _ = dispatch.select(gather.OP, device=device)
    if (gather_backend == "cpp" and dtype == torch.float32 and
            (fp16 or gather.cached_injected_kv(plan, layer, dtype, device) is None)):
        k, v = gather.gather_cpp(plan, layer, model, dtype, device, values=torch.float16 if fp16 else torch.float32,
                                 empty=ARENA.empty)
        step = DecodeStep(k, v, plan.slot_valid(layer).to(device))
        ARENA.adopt(step, (k, v))
        return step
    return DecodeStep(*injected_kv(plan, layer, model, dtype, device), values_fp16=fp16)


def injected_lse(query, plan, layer, model, dtype, scaling=None):
    """Log-sum-exp of ``query`` over each injected segment (the shared prefix, then each capsule of the row):
    ``[batch, q_heads, q_len, 1 + max_capsules]`` float32, from the plan's gathered keys -- the attribution pass for
    backends that return only the lse over all keys (the fused kernels)."""
    k_inj, _, slot_valid = injected_kv(plan, layer, model, dtype, query.device)
    B, Hq, Q, D = query.shape
    keys = k_inj.float().repeat_interleave(Hq // k_inj.shape[1], dim=1)
    scores = query.float() @ keys.transpose(-1, -2) * (scaling if scaling is not None else 1 / math.sqrt(D))
    scores = scores.masked_fill(~slot_valid[:, None, None, :], float("-inf"))
    return segment_lse(scores, plan.segments(query.device))


def prefix_attention(query, own_k, own_v, own_mask, plan, layer, model, scaling=None, *, backend=None,
                     return_lse=False, capsule_lse=False):
    """``(out, lse)`` (lse None unless ``return_lse``, for backends that skip it); with ``capsule_lse``
    ``(out, lse, capsule_lse)``: the PyTorch backends compute the per-segment lse from their own scores, the fused
    kernels get it from :func:`injected_lse` (one more pass over the injected keys)."""
    # Chosen once per plan and call shape (prefill / decode): the choice depends on the plan, the device and the
    # environment, none of which changes while a plan serves, and decode asks 12+ times a token.
    q1 = query.shape[2] == 1
    name, fn = (select(query.device, backend, plan, query.shape[2]) if plan is None else
                plan.cached(("backend", str(query.device), backend, q1),
                            lambda: select(query.device, backend, plan, query.shape[2])))
    if not capsule_lse:
        return fn(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=return_lse)
    if name in ("reference", "sdpa"):
        return fn(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=True, capsule_lse=True)
    out, lse = fn(query, own_k, own_v, own_mask, plan, layer, model, scaling, return_lse=True)
    return out, lse, injected_lse(query, plan, layer, model, own_k.dtype, scaling)
