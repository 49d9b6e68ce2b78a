"""The keys and values written for a request's placeholder tokens: the plan's slots gathered from the bank,
dequantised and rotated to their absolute positions by the engine's own slot gather (op ``slot_gather``), without
an HF model (cos/sin from the bank's RoPE parameters)."""
from __future__ import annotations

import torch

from kvi_engine.plan import gather


def injected_kv(plan, layer: int, dtype: torch.dtype, device, start: int = 0, stop: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (rotated) and values ``[stop - start, kv_heads, head_dim]`` in ``dtype`` on ``device`` of injected
    tokens ``start..stop-1`` (shared prefix first, then the capsules) of a one-row ``plan`` at ``layer``: what the
    model would have computed for those tokens at those positions, up to the bank's storage precision."""
    if plan.batch_size != 1:
        raise ValueError(f"a vLLM request injects one capsule set; the plan has {plan.batch_size} rows")
    stop = plan.num_slots if stop is None else stop
    if not 0 <= start < stop <= plan.num_slots:
        raise ValueError(f"injected tokens {start}..{stop} outside the plan's 0..{plan.num_slots}")
    k, v = gather.gather(plan, layer, None, dtype, "cpu")  # bank and C++ pass live on the host
    k, v = k[0, :, start:stop].transpose(0, 1), v[0, :, start:stop].transpose(0, 1)
    return k.to(device).contiguous(), v.to(device).contiguous()


def local_heads(x: torch.Tensor, num_local: int, rank: int, world: int) -> torch.Tensor:
    """Tensor-parallel rank ``rank``'s KV heads of ``x [tokens, kv_heads, head_dim]``, split as vLLM's
    ``QKVParallelLinear`` splits them: contiguous blocks when ``kv_heads >= world``, else each head replicated on
    ``world / kv_heads`` ranks. (Written for TP > 1; only TP = 1 runs in the tests, on the CPU.)"""
    total = x.shape[1]
    if num_local == total:
        return x
    if total >= world:
        return x[:, rank * num_local:(rank + 1) * num_local].contiguous()
    return x[:, rank // (world // total)].unsqueeze(1).contiguous()
