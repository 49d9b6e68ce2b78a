"""Op ``slot_gather``: the unfused path's injected KV -- a plan's tokens gathered from the bank, dequantised and
rotated to their slots, ``[batch, kv_heads, prefix + slots, head_dim]``, kept in the plan's cache so decode steps
reuse it. Two implementations: the PyTorch twin (any dtype and device) and one fused C++ pass (float32 on the CPU),
bit-identical on visible slots. Without a model (``model=None``: the vLLM worker has none) cos/sin come from the
bank's RoPE parameters, computed as HF's rotary modules compute them (:func:`kvi_engine.plan.tables.rope_table`).
"""
from __future__ import annotations

import torch

from kvi_engine import dispatch
from kvi_engine.models import rope
from kvi_engine.plan.tables import native_args, rope_table

OP = "slot_gather"


def _cos_sin(plan, model, dtype, device):
    def build():
        if model is None:
            cos, sin = rope_table(plan, dtype)
            return (torch.cat([cos, cos], -1).to(device, dtype), torch.cat([sin, sin], -1).to(device, dtype))
        pre = torch.arange(plan.prefix_len).expand(plan.batch_size, -1)
        return rope.cos_sin(model, torch.cat([pre, plan.positions], dim=1).to(device), dtype)
    return plan.cached(("cos_sin", dtype, str(device), model is None), build)


def gather_reference(plan, layer: int, model, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    B = plan.token_index.shape[0]
    # Only the plan's tokens are read (and dequantised, for quantised banks): [B, S, kv_heads, head_dim].
    k, v = plan.bank.gather_kv(layer, plan.token_index)
    if plan.prefix_len:
        pk, pv = plan.bank.prefix_kv(layer)
        k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=1)
        v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=1)
    k = k.to(device=device, dtype=dtype).transpose(1, 2)
    v = v.to(device=device, dtype=dtype).transpose(1, 2).contiguous()
    cos, sin = _cos_sin(plan, model, dtype, device)
    return rope.apply_rope(k, cos, sin).contiguous(), v


def gather_cpp(plan, layer: int, model, dtype, device, values: torch.dtype = torch.float32, empty=torch.empty
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One C++ pass over the plan's tokens (float32, CPU), bit-identical to :func:`gather_reference` on visible
    slots; slots masked at ``layer`` hold zeros (attention never reads them). ``values=torch.float16`` (fp16
    storage only, see :func:`fp16_values`): the values as their stored fp16 bits, no float32 copy. ``empty(shape,
    dtype)`` allocates the outputs (the pass writes every element): ``Arena.empty`` recycles a finished plan's."""
    from kvi_engine import _core

    if not (dtype == torch.float32 and dispatch.device_type(device) == "cpu"):
        raise dispatch.BackendUnavailable(f"the C++ slot gather writes float32 on the CPU, not {dtype} on {device}")
    shape = plan.bank.shape
    dims = (plan.batch_size, shape.num_kv_heads, plan.num_slots, shape.head_dim)
    k, v = empty(dims, dtype=torch.float32), empty(dims, dtype=values)
    for i, args in enumerate(native_args(plan, layer, torch.float32)):  # one pass per bank segment
        _core.prefix_gather(out_k=k.numpy(), out_v=v.numpy(), num_threads=torch.get_num_threads(), zero_masked=i == 0,
                            **args)
    return k, v


def fp16_values(plan) -> bool:
    """Whether every injected value of ``plan`` is stored as fp16 (an fp16 bank: its prefix is fp16 too), so a copy
    of the values in fp16 is exact."""
    return all(seg.spec.scheme == "fp16" for seg in plan.bank.segments)


def gather(plan, layer: int, model, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Injected keys (rotated to their slots) and values ``[batch, kv_heads, prefix + slots, head_dim]`` at
    ``layer`` by the backend the dispatch chooses, not cached (``model=None``: RoPE from the bank)."""
    prefer = None if dtype == torch.float32 else "reference"  # the C++ pass writes float32 only
    _, fn = dispatch.select(OP, device=device, prefer=prefer)
    return fn(plan, layer, model, dtype, device)


def injected_kv(plan, layer: int, model, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """:func:`gather` and the visibility mask ``[batch, prefix + slots]`` at ``layer``, gathered once per (layer,
    dtype, device) and kept in the plan's cache."""
    def build():
        k, v = gather(plan, layer, model, dtype, device)
        return k, v, plan.slot_valid(layer).to(device)
    return plan.cached((layer, dtype, str(device)), build)


def cached_injected_kv(plan, layer: int, dtype: torch.dtype, device):
    """What :func:`injected_kv` holds for these arguments if it was built already, else None (builds nothing)."""
    return plan.peek((layer, dtype, str(device)))


dispatch.register(OP, "reference", gather_reference, devices=dispatch.ANY)
dispatch.register(OP, "cpp", gather_cpp, devices=("cpu",), available=lambda: dispatch.core_has("prefix_gather"),
                  why_not="kvi_engine._core lacks prefix_gather (rebuild the extension)")
