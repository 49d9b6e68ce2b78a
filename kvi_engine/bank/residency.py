"""DeviceKVCache: the one device residency cache of a bank -- hot capsules resident on a device, paged, LRU.

The pool holds ``num_blocks * block`` token slots at every layer; a capsule occupies whole blocks (paged, so
variable-length capsules never fragment the pool) and is resident at every layer at once. Two forms:

- storage form (``dtype=None``): the bank's own codes and fp16 scales, exactly as stored (per-capsule key params,
  ``key_mode="channel"``, sit at the capsule's first block), so a fused kernel reads and dequantises them as it
  reads a segment -- the Triton path (:mod:`kvi_engine.attention.triton`) injects from this form through
  :meth:`KVBank.device_cache`, one kernel pass whatever the number of segments;
- float form (``dtype=torch.float16`` ...): dequantised keys and values, for consumers that want plain tensors.

:meth:`fetch` makes a set of capsules resident and returns where their tokens sit. Misses are loaded in ONE
coalesced transfer per section (float form: per layer): the missing tokens gathered on the host, staged in pinned
memory when the device is CUDA, one copy to the device, one scatter into the pool. The cache belongs to one bank
snapshot; ``epoch`` counts evictions, so a table built over pool slots knows when to rebuild.

Thread safety: residency changes (``fetch``/``place``/``gather``) hold the cache's lock, so two threads never hand
out the same blocks. A table built over pool slots stays valid only until the next fetch that evicts: the engine runs
one forward at a time per cache (a server batches requests into one forward rather than running forwards side by
side), and every table checks ``epoch`` before use.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from kvi_engine.bank.layer import BankLayer
from kvi_engine.bank.spec import capsule_axis, kv_sections

_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16, np.dtype(np.int8): torch.int8,
          np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.bfloat16}


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_to_device: int = 0


class DeviceKVCache:
    def __init__(self, bank, device="cpu", *, capacity_tokens: int, block: int = 16,
                 dtype: torch.dtype | None = torch.float16):
        if capacity_tokens < block or block < 1:
            raise ValueError(f"capacity_tokens ({capacity_tokens}) must hold at least one block of {block} tokens")
        self.bank, self.device, self.block, self.dtype = bank, torch.device(device), block, dtype
        self.num_blocks = capacity_tokens // block
        L, H, D = bank.num_layers, bank.shape.num_kv_heads, bank.shape.head_dim
        slots = self.num_blocks * block
        if dtype is not None:
            self.pool = {"k": torch.zeros(L, slots, H, D, dtype=dtype, device=self.device),
                         "v": torch.zeros(L, slots, H, D, dtype=dtype, device=self.device)}
        else:
            first = bank.segments[0]
            self.pool = {}
            for name in kv_sections(bank.spec):
                src = first.c.array(name)
                rows = self.num_blocks if capsule_axis(bank.spec, name) else slots
                self.pool[name] = torch.zeros(L, rows, *src.shape[2:], dtype=_TORCH[src.dtype], device=self.device)
            pk, pv = (torch.stack([t for t in (bank.prefix_kv(layer)[i] for layer in range(L))]) for i in (0, 1))
            self.prefix = (pk.to(self.device), pv.to(self.device))
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()  # capsule id -> its pool token slots (CPU)
        self._pin = self.device.type == "cuda"
        self.epoch = 0
        self.stats = CacheStats()
        self._lock = threading.RLock()

    @property
    def k(self) -> torch.Tensor:
        """Float form: ``[num_layers, slots, kv_heads, head_dim]`` keys (position-free)."""
        return self.pool["k"]

    @property
    def v(self) -> torch.Tensor:
        return self.pool["v"]

    def _evict_until(self, blocks: int, keep: set[int]) -> None:
        while len(self._free) < blocks:
            victim = next((c for c in self._lru if c not in keep), None)
            if victim is None:
                raise ValueError(f"capsules need {blocks} free blocks but the cache holds only {self.num_blocks}")
            slots = self._lru.pop(victim)
            self._free.extend(sorted({int(s) // self.block for s in slots.tolist()}, reverse=True))
            self.stats.evictions += 1
            self.epoch += 1

    def _make_resident(self, ids: list[int]) -> None:
        ranges = self.bank.ranges
        missing = [c for c in dict.fromkeys(ids) if c not in self._lru]
        self.stats.hits += len(ids) - len(missing)
        self.stats.misses += len(missing)
        for c in ids:
            if c in self._lru:
                self._lru.move_to_end(c)
        if not missing:
            return
        need = [-(-int(ranges[c, 1]) // self.block) for c in missing]
        if sum(need) > self.num_blocks:
            raise ValueError(f"{len(missing)} capsules need {sum(need)} blocks; the cache has {self.num_blocks} "
                             f"(raise its capacity with KVI_DEVICE_CACHE_TOKENS, in token slots)")
        self._evict_until(sum(need), set(ids))
        placed: dict[int, torch.Tensor] = {}
        for c, nb in zip(missing, need):
            start, n = ranges[c].tolist()
            blocks = torch.tensor([self._free.pop() for _ in range(nb)])
            placed[c] = (blocks[:, None] * self.block + torch.arange(self.block)).reshape(-1)[:n]
        try:
            if self.dtype is not None:
                src = torch.cat([torch.arange(int(ranges[c, 0]), int(ranges[c, 0]) + len(placed[c])) for c in missing])
                self._load_float(src, torch.cat([placed[c] for c in missing]).to(self.device))
            else:
                self._load_stored(placed)
        except BaseException:
            # A failed load registers nothing: its blocks go back to the free list, the pool's other residents stand.
            for slots in placed.values():
                self._free.extend(sorted({int(s) // self.block for s in slots.tolist()}, reverse=True))
            raise
        self._lru.update(placed)

    def fetch(self, capsule_ids) -> torch.Tensor:
        """Make ``capsule_ids`` resident; returns their tokens' pool slots, concatenated in the given order
        (int64, on the cache's device)."""
        ids = [self.bank._check_id(int(c)) for c in capsule_ids]
        with self._lock:
            self._make_resident(ids)
            return torch.cat([self._lru[c] for c in ids]).to(self.device)

    def place(self, capsule_ids) -> dict[int, tuple[torch.Tensor, int]]:
        """Make ``capsule_ids`` resident; ``{id: (token slots [n] int64 on the CPU, pool capsule row)}``."""
        ids = [self.bank._check_id(int(c)) for c in capsule_ids]
        with self._lock:
            self._make_resident(ids)
            return {c: (self._lru[c], int(self._lru[c][0]) // self.block) for c in ids}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self._pin:
            x = x.pin_memory()
        self.stats.bytes_to_device += x.numel() * x.element_size()
        return x.to(self.device, non_blocking=self._pin)

    def _load_float(self, tokens: torch.Tensor, slots: torch.Tensor) -> None:
        for layer in range(self.bank.num_layers):
            k, v = self.bank.gather_kv(layer, tokens)
            kv = self._to_device(torch.stack([k, v]).to(self.dtype))
            self.k[layer].index_copy_(0, slots, kv[0])
            self.v[layer].index_copy_(0, slots, kv[1])

    def _load_stored(self, placed: dict[int, torch.Tensor]) -> None:
        """Copy the capsules' codes and params from their segments into their ``placed`` pool slots, bytes
        unchanged."""
        snap = self.bank.snapshot
        seg_of, row_of = snap.locations
        by_segment: dict[int, list[int]] = {}
        for c in placed:
            by_segment.setdefault(int(seg_of[c]), []).append(c)
        for s, caps in by_segment.items():
            seg = snap.segments[s]
            rows = np.array([int(row_of[c]) for c in caps], np.int64)
            local = np.concatenate([np.arange(a, a + n) for a, n in seg.table[rows]])
            slots = torch.cat([placed[c] for c in caps]).to(self.device)
            first_blocks = torch.tensor([int(placed[c][0]) // self.block for c in caps], device=self.device)
            for name, pool in self.pool.items():
                per_capsule = capsule_axis(self.bank.spec, name)
                arr = np.ascontiguousarray(seg.c.array(name)[:, rows if per_capsule else local])
                x = torch.from_numpy(arr)
                x = x.view(torch.bfloat16) if arr.dtype == np.uint16 else x
                pool.index_copy_(1, first_blocks if per_capsule else slots, self._to_device(x))

    def layer(self, layer: int) -> BankLayer:
        """Storage form: the pool at ``layer`` as the kernels read a segment (tokens = pool slots)."""
        if self.dtype is not None:
            raise ValueError("layer() reads the storage form; this cache holds dequantised float KV")
        spec = self.bank.spec
        get = lambda n: self.pool[n][layer] if n in self.pool else None  # noqa: E731
        group = spec.group_for(self.bank.shape.head_dim) if spec.quantised else 0
        return BankLayer(spec.scheme, get("k"), get("v"), get("k_scale"), get("k_zero"), get("v_scale"),
                         get("v_zero"), group, spec.key_mode == "channel", self.prefix[0][layer], self.prefix[1][layer])

    def gather(self, layer: int, capsule_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``[tokens, kv_heads, head_dim]`` keys and values of ``capsule_ids`` (concatenated) from the pool, in the
        pool's float dtype (storage form: dequantised to float32 with the reference codec)."""
        rows = self.place(capsule_ids)  # one residency change: hits and misses counted once
        idx = torch.cat([rows[int(c)][0] for c in capsule_ids]).to(self.device)
        if self.dtype is not None:
            return self.k[layer].index_select(0, idx), self.v[layer].index_select(0, idx)
        from kvi_engine.bank import quant

        spec, out = self.bank.spec, []
        crow = torch.cat([torch.full((len(rows[int(c)][0]),), rows[int(c)][1]) for c in capsule_ids]).to(self.device)
        for p in ("k", "v"):
            codes = self.pool[p][layer].index_select(0, idx)
            if not spec.quantised:
                out.append(codes.float())
                continue
            params = crow if capsule_axis(spec, p + "_scale") else idx
            zero = self.pool[p + "_zero"][layer].index_select(0, params) if spec.has_zero else None
            out.append(quant.decode(codes, self.pool[p + "_scale"][layer].index_select(0, params), zero, spec.scheme))
        return out[0], out[1]

    @property
    def resident(self) -> list[int]:
        """Resident capsule ids, least recently used first."""
        return list(self._lru)
