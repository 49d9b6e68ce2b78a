"""The plan as kernels read it: per bank segment slot tables, RoPE tables and the native kernel's arguments.

All three are derived from an :class:`~kvi_engine.plan.plan.InjectionPlan` once and kept in its cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvi_engine.bank.layer import bank_layer


@dataclass(frozen=True, slots=True)
class SlotTables:
    """Kernel view of a plan over its ``n = prefix_len + slots`` injected positions (the shared prefix first)."""
    token: torch.Tensor      # [batch, n] int32: prefix token for slot < prefix_len, then token of the segment / pool
    position: torch.Tensor   # [batch, n] int32: position the slot's key is rotated to
    capsule_row: torch.Tensor  # [batch, n] int32: capsule row in the segment / pool (per-capsule key params)
    visible: torch.Tensor    # [num_layers or 1, batch, n] uint8: slot attended at that layer (1 = everywhere)
    inv_freq: torch.Tensor   # [head_dim / 2] float32 RoPE inverse frequencies
    attention_scaling: float  # cos/sin scale of the RoPE variant
    prefix_len: int
    segment: int             # bank segment whose arrays the tokens index (-1: a device pool)

    def layer_visible(self, layer: int) -> torch.Tensor:
        return self.visible[layer if self.visible.shape[0] > 1 else 0]


def _visibility(plan) -> torch.Tensor:
    valid = plan.valid if plan.layer_valid is None else plan.valid & plan.layer_valid
    return valid if valid.dim() == 3 else valid.unsqueeze(0)


def _positions(plan) -> torch.Tensor:
    B, p = plan.batch_size, plan.prefix_len
    return torch.cat([torch.arange(p).expand(B, p), plan.positions], dim=1)


def _rope(plan, device) -> tuple[torch.Tensor, float]:
    inv_freq = torch.tensor(plan.bank.rope["inv_freq"], dtype=torch.float32).to(device)
    return inv_freq, float(plan.bank.rope.get("attention_scaling", 1.0))


def slot_tables(plan, device) -> list[SlotTables]:
    """One table per bank segment holding injected tokens (the first always, with the shared prefix): a kernel
    pass reads one segment's arrays, and passes merge exactly through their log-sum-exp."""
    def build():
        B, p = plan.batch_size, plan.prefix_len
        segments = plan.bank.segments
        offsets = torch.tensor([0] + [s.num_tokens for s in segments]).cumsum(0)
        seg_of = torch.searchsorted(offsets[1:], plan.token_index, right=True)
        position, valid = _positions(plan), _visibility(plan)
        inv_freq, scaling = _rope(plan, device)
        head = torch.arange(p).expand(B, p)
        tables = []
        for si, seg in enumerate(segments):
            mine = (seg_of == si) & plan.valid
            if si and not mine.any():
                continue
            local = torch.where(mine, plan.token_index - offsets[si], 0)
            rows = torch.from_numpy(seg.token_rows(local.numpy()).astype("int64")) if seg.num_capsules else local
            rows = torch.where(mine, rows, 0)
            token, capsule_row = torch.cat([head, local], 1), torch.cat([torch.zeros_like(head), rows], 1)
            pre = torch.full((*valid.shape[:-1], p), si == 0, dtype=torch.bool)
            visible = torch.cat([pre, valid & mine], dim=-1)
            i32 = [x.to(device, torch.int32).contiguous() for x in (token, position, capsule_row)]
            tables.append(SlotTables(*i32, visible.to(device, torch.uint8).contiguous(), inv_freq, scaling, p, si))
        return tables
    return plan.cached(("slot_tables", str(device)), build)


def pool_tables(plan, cache) -> SlotTables:
    """The plan over a :class:`~kvi_engine.bank.residency.DeviceKVCache` in storage form: every injected capsule
    made resident (at once: a capsule is resident at every layer), tokens indexing pool slots -- one kernel pass,
    whatever the number of segments. Valid while the cache keeps the plan's capsules (it evicts only for a later
    fetch that needs the room): the entry stores the cache's ``epoch`` after placing, and a later use after any
eviction rebuilds (placing the capsules again). One entry per cache, so a long-lived plan does not pile up tables."""
    def build():
        B, p = plan.batch_size, plan.prefix_len
        ids = list(dict.fromkeys(c for row in plan.capsule_ids for c in row))
        where = cache.place(ids)  # capsule id -> (pool token slots [n], pool capsule row)
        token = torch.zeros(B, plan.num_slots, dtype=torch.int64)
        capsule_row = torch.zeros_like(token)
        token[:, :p] = torch.arange(p)
        for r, row in enumerate(plan.capsule_ids):
            at = p
            for c in row:
                slots, crow = where[c]
                token[r, at:at + len(slots)] = slots
                capsule_row[r, at:at + len(slots)] = crow
                at += len(slots)
        visible = torch.cat([torch.ones(*_visibility(plan).shape[:-1], p, dtype=torch.bool), _visibility(plan)], -1)
        inv_freq, scaling = _rope(plan, cache.device)
        i32 = [x.to(cache.device, torch.int32).contiguous() for x in (token, _positions(plan), capsule_row)]
        tables = SlotTables(*i32, visible.to(cache.device, torch.uint8).contiguous(), inv_freq, scaling, p, -1)
        return cache.epoch, tables  # the epoch after placing: our own evictions do not make the entry stale
    return plan.cached(("pool_tables", id(cache)), build, valid=lambda hit: hit[0] == cache.epoch)[1]


def rope_table(plan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[batch, prefix + slots, head_dim / 2]`` float32 on the CPU, computed as HF computes them
    (float32 angles, then rounded to the activation ``dtype``), for kernels that do not evaluate them."""
    def build():
        t = slot_tables(plan, "cpu")[0]
        angles = t.position.float().unsqueeze(-1) * t.inv_freq
        cos = (angles.cos() * t.attention_scaling).to(dtype).float().contiguous()
        sin = (angles.sin() * t.attention_scaling).to(dtype).float().contiguous()
        return cos, sin
    return plan.cached(("rope_table", dtype), build)


_FLOAT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _numpy(t: torch.Tensor):
    """Zero-copy numpy view; bfloat16 (no numpy dtype) crosses as its uint16 bits."""
    return t.view(torch.int16).numpy().view("uint16") if t.dtype == torch.bfloat16 else t.numpy()


def native_args(plan, layer: int, dtype: torch.dtype) -> list[dict]:
    """Per bank segment, the native kernels' bank and table arguments at ``layer`` (``_core.prefix_attention`` and
    ``_core.prefix_gather``) as numpy views, built once per plan: decode calls the op once per layer per token, and
    this keeps its Python overhead to the activations."""
    def build():
        cos, sin = rope_table(plan, dtype)
        passes = []
        for tables in slot_tables(plan, "cpu"):
            src = bank_layer(plan.bank, layer, tables.segment)
            passes.append(dict(
                bank_k=_numpy(src.k), bank_v=_numpy(src.v), bank_format=src.scheme, prefix_k=_numpy(src.prefix_k),
                prefix_v=_numpy(src.prefix_v), prefix_format=_FLOAT_NAMES[src.prefix_k.dtype],
                token=tables.token.numpy(), visible=tables.layer_visible(layer).numpy(), cos=cos.numpy(),
                sin=sin.numpy(), group_size=src.group_size, key_per_capsule=src.key_per_capsule,
                capsule_row=tables.capsule_row.numpy(),
                **{n: None if getattr(src, n) is None else _numpy(getattr(src, n)) for n in src.PARAMS}))
        return passes
    return plan.cached(("native_args", layer, dtype), build)
