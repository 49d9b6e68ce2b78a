"""InjectionPlan: host-side work done once per batch (FlashInfer's plan/run split).

Given per-row capsule lists it builds the slot table every layer's attention reads: which bank tokens each row
injects, at which positions, and where each row's prompt starts. Layouts:

- ``stacked`` (default): shared prefix at ``0..p-1``, then the row's capsules back to back in ranked order; the
  prompt starts at ``p + sum(lengths)``.
- ``parallel``: every capsule starts at ``p`` (capsules overlap in position, like parallel context windows);
  the prompt starts at ``p + max(lengths)``.

Ragged rows are padded to the longest row; padding slots are invalid (masked), never attended. Layer masks make a
capsule invisible at layers where it is not injected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from kvi_engine import dispatch, rope
from kvi_engine.bank import KVBank

LAYOUTS = ("stacked", "parallel")


@dataclass(slots=True)
class InjectionPlan:
    bank: KVBank
    capsule_ids: list[list[int]]
    layout: str
    # CSR description, for kernels: row r injects capsule_indices[capsule_indptr[r]:capsule_indptr[r+1]],
    # capsule j starting at position capsule_pos[j].
    capsule_indptr: torch.Tensor   # [batch + 1] int64
    capsule_indices: torch.Tensor  # [nnz] int64
    capsule_pos: torch.Tensor      # [nnz] int64
    # Dense slot table (prefix excluded), padded to the longest row.
    token_index: torch.Tensor      # [batch, slots] int64 index into the bank's token axis (0 where invalid)
    positions: torch.Tensor        # [batch, slots] int64 position each slot is rotated to
    valid: torch.Tensor            # [batch, slots] bool
    layer_valid: torch.Tensor | None  # [num_layers, batch, slots] bool, None when every layer sees every capsule
    prompt_offset: torch.Tensor    # [batch] int64 position of each row's first prompt token
    prefix_len: int
    _cache: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.capsule_ids)

    @property
    def num_slots(self) -> int:
        return self.prefix_len + self.token_index.shape[1]

    def slot_valid(self, layer: int) -> torch.Tensor:
        """``[batch, prefix + slots]`` bool: which injected tokens are visible at ``layer``."""
        valid = self.valid if self.layer_valid is None else self.valid & self.layer_valid[layer]
        pre = torch.ones(self.batch_size, self.prefix_len, dtype=torch.bool)
        return torch.cat([pre, valid], dim=1)

    def layer_kv(self, layer: int, model, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Injected keys (rotated to their slots) and values ``[batch, kv_heads, prefix + slots, head_dim]`` and the
        visibility mask ``[batch, prefix + slots]`` at ``layer``: gathered from the bank once and kept for the
        plan's life, so decode steps reuse them (the unfused reference path). Op ``slot_gather``: one fused C++ pass
        for float32 on the CPU, else PyTorch (the twin it equals bit for bit on visible slots)."""
        key = (layer, dtype, str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        name, gather = dispatch.select(SLOT_GATHER)
        if name == "cpp" and not (dtype == torch.float32 and torch.device(device).type == "cpu"):
            if dispatch.requested_backend(SLOT_GATHER) == "cpp":
                raise dispatch.BackendUnavailable(f"the C++ slot gather writes float32 on the CPU, not {dtype} on "
                                                  f"{device}")
            gather = _gather_reference
        k, v = gather(self, layer, model, dtype, device)
        out = (k, v, self.slot_valid(layer).to(device))
        self._cache[key] = out
        return out

    def slot_tables(self, device) -> list["SlotTables"]:
        """The plan as fused kernels read it on ``device``, one table per bank segment holding injected tokens
        (the first always, with the shared prefix): a kernel pass reads one segment's arrays, and passes merge
        exactly through their log-sum-exp. Built once, cached for the plan's life."""
        key = ("slot_tables", str(device))
        if key not in self._cache:
            B, p = self.batch_size, self.prefix_len
            segments = self.bank.segments
            offsets = torch.tensor([0] + [s.num_tokens for s in segments]).cumsum(0)
            seg_of = torch.searchsorted(offsets[1:], self.token_index, right=True)
            position = torch.cat([torch.arange(p).expand(B, p), self.positions], dim=1)
            valid = self.valid if self.layer_valid is None else self.valid & self.layer_valid
            valid = valid if valid.dim() == 3 else valid.unsqueeze(0)
            inv_freq = torch.tensor(self.bank.rope["inv_freq"], dtype=torch.float32).to(device)
            scaling = float(self.bank.rope.get("attention_scaling", 1.0))
            tables = []
            for si, seg in enumerate(segments):
                mine = (seg_of == si) & self.valid
                if si and not mine.any():
                    continue
                local = torch.where(mine, self.token_index - offsets[si], 0)
                rows = torch.from_numpy(seg.token_rows(local.numpy()).astype("int64")) if seg.num_capsules else local
                rows = torch.where(mine, rows, 0)
                head = torch.arange(p).expand(B, p)
                token, capsule_row = torch.cat([head, local], 1), torch.cat([torch.zeros_like(head), rows], 1)
                pre = torch.full((*valid.shape[:-1], p), si == 0, dtype=torch.bool)
                visible = torch.cat([pre, valid & mine], dim=-1)
                i32 = [x.to(device, torch.int32).contiguous() for x in (token, position, capsule_row)]
                tables.append(SlotTables(*i32, visible.to(device, torch.uint8).contiguous(), inv_freq, scaling, p,
                                         si))
            self._cache[key] = tables
        return self._cache[key]

    def rope_table(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[batch, prefix + slots, head_dim / 2]`` float32 on the CPU, computed as HF computes them
        (float32 angles, then rounded to the activation ``dtype``), for kernels that do not evaluate them."""
        key = ("rope_table", dtype)
        if key not in self._cache:
            t = self.slot_tables("cpu")[0]
            angles = t.position.float().unsqueeze(-1) * t.inv_freq
            cos = (angles.cos() * t.attention_scaling).to(dtype).float().contiguous()
            sin = (angles.sin() * t.attention_scaling).to(dtype).float().contiguous()
            self._cache[key] = (cos, sin)
        return self._cache[key]

    def _cos_sin(self, model, dtype, device):
        key = ("cos_sin", dtype, str(device))
        if key not in self._cache:
            pre = torch.arange(self.prefix_len).expand(self.batch_size, -1)
            pos = torch.cat([pre, self.positions], dim=1).to(device)
            self._cache[key] = rope.cos_sin(model, pos, dtype)
        return self._cache[key]


@dataclass(frozen=True, slots=True)
class SlotTables:
    """Kernel view of a plan over its ``n = prefix_len + slots`` injected positions (the shared prefix first)."""
    token: torch.Tensor      # [batch, n] int32: prefix token for slot < prefix_len, then token of the segment
    position: torch.Tensor   # [batch, n] int32: position the slot's key is rotated to
    capsule_row: torch.Tensor  # [batch, n] int32: capsule row in the segment (per-capsule quantisation params)
    visible: torch.Tensor    # [num_layers or 1, batch, n] uint8: slot attended at that layer (1 = everywhere)
    inv_freq: torch.Tensor   # [head_dim / 2] float32 RoPE inverse frequencies
    attention_scaling: float  # cos/sin scale of the RoPE variant
    prefix_len: int
    segment: int             # bank segment whose arrays the tokens index

    def layer_visible(self, layer: int) -> torch.Tensor:
        return self.visible[layer if self.visible.shape[0] > 1 else 0]


def _layer_sets(num_layers: int, spec) -> list[bool]:
    if spec is None:
        return [True] * num_layers
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        spec = range(*spec)
    chosen = [False] * num_layers
    for layer in spec:
        if not 0 <= int(layer) < num_layers:
            raise ValueError(f"layer {layer} out of range: the model has {num_layers} layers")
        chosen[int(layer)] = True
    return chosen


def build_plan(bank: KVBank, capsule_ids: Sequence[Sequence[int]], *, layout: str = "stacked",
               layers: Iterable[int] | tuple[int, int] | None = None,
               capsule_layers: Mapping[int, Iterable[int] | tuple[int, int]] | None = None) -> InjectionPlan:
    """Plan the injection of ``capsule_ids[r]`` into batch row ``r``.

    ``layers``: layers at which capsules are visible (a ``(start, stop)`` range or an iterable; default all).
    ``capsule_layers``: per-capsule override ``{capsule_id: layers}``. The shared prefix is visible everywhere.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if isinstance(capsule_ids, (str, bytes)) or not isinstance(capsule_ids, Sequence) or len(capsule_ids) == 0:
        raise ValueError("capsule_ids must be a non-empty list with one list of capsule ids per batch row")
    rows: list[list[int]] = []
    for r, row in enumerate(capsule_ids):
        if isinstance(row, (int, str)) or not isinstance(row, Iterable):
            raise TypeError(f"capsule_ids[{r}] must be a list of capsule ids (one list per batch row), got {row!r}")
        row = list(row)
        for c in row:
            try:
                bank._check_id(c)
            except (IndexError, TypeError) as e:
                raise type(e)(f"capsule_ids[{r}]: {e}") from None
        if len(set(row)) != len(row):
            raise ValueError(f"capsule_ids[{r}] injects a capsule twice: {row}")
        rows.append([int(c) for c in row])

    L, p = bank.num_layers, bank.prefix_len
    ranges = bank.ranges.numpy()
    default_layers = _layer_sets(L, layers)
    per_capsule = {int(c): _layer_sets(L, spec) for c, spec in (capsule_layers or {}).items()}
    lengths = [ranges[row, 1] for row in rows]
    width = max([int(ls.sum()) for ls in lengths] + [0])
    B = len(rows)
    # Built in numpy, a row at a time (a capsule at a time costs ~4 ms at 128 capsules: TTFT on small models).
    token_index = np.zeros((B, width), dtype=np.int64)
    positions = np.zeros((B, width), dtype=np.int64)
    valid = np.zeros((B, width), dtype=bool)
    masked = any(not all(s) for s in [default_layers, *per_capsule.values()])
    layer_valid = np.ones((L, B, width), dtype=bool) if masked else None
    indptr, indices, cpos, offsets = [0], [], [], []
    for r, (row, lens) in enumerate(zip(rows, lengths)):
        n = int(lens.sum())
        first = np.cumsum(lens) - lens  # slot of each capsule's first token
        within = np.arange(n) - np.repeat(first, lens)
        token_index[r, :n] = np.repeat(ranges[row, 0], lens) + within
        valid[r, :n] = True
        starts = p + (first if layout == "stacked" else np.zeros_like(first))
        positions[r, :n] = np.repeat(starts, lens) + within
        if layer_valid is not None and row:
            vis = np.array([per_capsule.get(c, default_layers) for c in row], dtype=bool)  # [capsules, L]
            layer_valid[:, r, :n] = np.repeat(vis, lens, axis=0).T
        indices += row
        cpos += starts.tolist()
        indptr.append(len(indices))
        offsets.append(p + n if layout == "stacked" else p + int(lens.max(initial=0)))
    token_index, positions, valid = (torch.from_numpy(x) for x in (token_index, positions, valid))
    layer_valid = None if layer_valid is None else torch.from_numpy(layer_valid)
    return InjectionPlan(bank, rows, layout, torch.tensor(indptr), torch.tensor(indices, dtype=torch.long),
                         torch.tensor(cpos, dtype=torch.long), token_index, positions, valid, layer_valid,
                         torch.tensor(offsets, dtype=torch.long), p)


# -- the gather of the unfused path (op "slot_gather"): PyTorch twin and fused C++ ---------------------------------
SLOT_GATHER = "slot_gather"


def _gather_reference(plan: InjectionPlan, layer: int, model, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    B = plan.token_index.shape[0]
    # Only the plan's tokens are read (and dequantised, for quantised banks): [B, S, kv_heads, head_dim].
    k, v = plan.bank.gather_kv(layer, plan.token_index)
    if plan.prefix_len:
        pk, pv = plan.bank.prefix_kv(layer)
        k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=1)
        v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=1)
    k = k.to(device=device, dtype=dtype).transpose(1, 2)
    v = v.to(device=device, dtype=dtype).transpose(1, 2).contiguous()
    cos, sin = plan._cos_sin(model, dtype, device)
    return rope.apply_rope(k, cos, sin).contiguous(), v


def _gather_cpp(plan: InjectionPlan, layer: int, model, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One C++ pass over the plan's tokens (float32, CPU), bit-identical to :func:`_gather_reference` on visible
    slots; slots masked at ``layer`` hold zeros (attention never reads them)."""
    from kvi_engine import _core
    from kvi_engine.attention import _cpp_bank_args

    shape = plan.bank.shape
    k = torch.zeros(plan.batch_size, shape.num_kv_heads, plan.num_slots, shape.head_dim)
    v = torch.zeros_like(k)
    for args in _cpp_bank_args(plan, layer, torch.float32):
        _core.prefix_gather(out_k=k.numpy(), out_v=v.numpy(), num_threads=torch.get_num_threads(), **args)
    return k, v


dispatch.register(SLOT_GATHER, "reference", _gather_reference)
dispatch.register(SLOT_GATHER, "cpp", _gather_cpp, available=lambda: dispatch.core_has("prefix_gather"),
                  why_not="kvi_engine._core lacks prefix_gather (rebuild the extension)")
