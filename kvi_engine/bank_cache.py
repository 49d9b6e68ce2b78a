"""DeviceKVCache: hot capsules' dequantised KV resident on a device (GPU, or host), LRU, paged.

The pool is ``[num_layers, num_blocks * block, kv_heads, head_dim]`` per K and V; a capsule occupies whole blocks
(paged, so variable-length capsules never fragment the pool). :meth:`fetch` makes a set of capsules resident and
returns where their tokens sit in the pool. Misses are loaded per layer in ONE coalesced transfer: one
``bank.gather_kv`` over every missing token (dequantising only those), staged in pinned host memory when the device
is CUDA, one copy to the device, one scatter into the pool. The cache belongs to one bank snapshot.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from kvi_engine.bank import KVBank


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_to_device: int = 0


class DeviceKVCache:
    def __init__(self, bank: KVBank, device="cpu", *, capacity_tokens: int, block: int = 16,
                 dtype: torch.dtype = torch.float16):
        if capacity_tokens < block or block < 1:
            raise ValueError(f"capacity_tokens ({capacity_tokens}) must hold at least one block of {block} tokens")
        self.bank, self.device, self.block, self.dtype = bank, torch.device(device), block, dtype
        self.num_blocks = capacity_tokens // block
        L, H, D = bank.num_layers, bank.shape.num_kv_heads, bank.shape.head_dim
        shape = (L, self.num_blocks * block, H, D)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()  # capsule id -> its pool token indices (CPU)
        self._pin = self.device.type == "cuda"
        self.stats = CacheStats()

    def _evict_until(self, blocks: int, keep: set[int]) -> None:
        while len(self._free) < blocks:
            victim = next((c for c in self._lru if c not in keep), None)
            if victim is None:
                raise ValueError(f"capsules need {blocks} free blocks but the cache holds only {self.num_blocks}")
            slots = self._lru.pop(victim)
            self._free.extend(sorted({int(s) // self.block for s in slots.tolist()}, reverse=True))
            self.stats.evictions += 1

    def fetch(self, capsule_ids) -> torch.Tensor:
        """Make ``capsule_ids`` resident; returns their tokens' pool indices, concatenated in the given order
        (int64, on the cache's device)."""
        ids = [self.bank._check_id(int(c)) for c in capsule_ids]
        ranges = self.bank.ranges
        missing = [c for c in dict.fromkeys(ids) if c not in self._lru]
        self.stats.hits += len(ids) - len(missing)
        self.stats.misses += len(missing)
        for c in ids:
            if c in self._lru:
                self._lru.move_to_end(c)
        if missing:
            need = [-(-int(ranges[c, 1]) // self.block) for c in missing]
            if sum(need) > self.num_blocks:
                raise ValueError(f"{len(missing)} capsules need {sum(need)} blocks; the cache has {self.num_blocks}")
            self._evict_until(sum(need), set(ids))
            src, dst = [], []
            for c, nb in zip(missing, need):
                start, n = ranges[c].tolist()
                blocks = torch.tensor([self._free.pop() for _ in range(nb)])
                slots = (blocks[:, None] * self.block + torch.arange(self.block)).reshape(-1)[:n]
                self._lru[c] = slots
                src.append(torch.arange(start, start + n))
                dst.append(slots)
            self._load(torch.cat(src), torch.cat(dst).to(self.device))
        return torch.cat([self._lru[c] for c in ids]).to(self.device)

    def _load(self, tokens: torch.Tensor, slots: torch.Tensor) -> None:
        for layer in range(self.bank.num_layers):
            k, v = self.bank.gather_kv(layer, tokens)
            kv = torch.stack([k, v]).to(self.dtype)
            if self._pin:
                kv = kv.pin_memory()
            kv = kv.to(self.device, non_blocking=self._pin)
            self.stats.bytes_to_device += kv.numel() * kv.element_size()
            self.k[layer].index_copy_(0, slots, kv[0])
            self.v[layer].index_copy_(0, slots, kv[1])

    def gather(self, layer: int, capsule_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``[tokens, kv_heads, head_dim]`` keys and values of ``capsule_ids`` (concatenated) from the pool."""
        idx = self.fetch(capsule_ids)
        return self.k[layer].index_select(0, idx), self.v[layer].index_select(0, idx)

    @property
    def resident(self) -> list[int]:
        """Resident capsule ids, least recently used first."""
        return list(self._lru)
