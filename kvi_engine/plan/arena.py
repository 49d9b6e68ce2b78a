"""Reusable CPU buffers for the copies a plan owns alone (the decode step's gathered KV).

A plan's decode steps hold a gathered copy of its injected KV (~2.7 MB a layer at 128 capsules of a 12/4-head,
head_dim 64 model). Allocated fresh for every request, that memory comes from the OS each time: glibc returns freed
blocks this large (trim threshold), and on this VM every first touch of a 4 KiB page is a fault of ~3 us, so the
first decode step of a 128-capsule request spent ~24 of its ~35 ms faulting pages in (``torch.zeros`` of the
copies: ~0.9 ms a MB). The arena keeps the buffers of finished plans and hands them to the next plan that asks for
the same size, so a server (or a benchmark's repeats) faults its step memory in once.

Only memory that nothing else can see is recycled: :meth:`Arena.adopt` takes the buffers of an owner that holds
the only views of them (a ``DecodeStep``), and gets them back when that owner is collected. Buffers come back with
stale contents: callers write every element (the C++ slot gather zeroes the slots it does not fill).
"""
from __future__ import annotations

import collections
import threading
import weakref

import torch

# Free buffers kept at most (bytes): a 16-client server at 128 capsules holds ~16 x 32 MB of steps.
DEFAULT_MAX_BYTES = 512 << 20


class Arena:
    """Free CPU byte buffers by size. :meth:`empty` is ``torch.empty`` from a recycled buffer of exactly its size
    where one is free; :meth:`adopt` recycles buffers when their owner dies. Thread-safe (servers build plans in
    several threads)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._free: collections.OrderedDict[int, list[torch.Tensor]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def free_bytes(self) -> int:
        return self._bytes

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised CPU tensor of ``shape`` and ``dtype``: a view of a recycled buffer of the same byte size,
        or a fresh allocation."""
        shape = tuple(int(s) for s in shape)
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        with self._lock:
            bufs = self._free.get(nbytes)
            if bufs:
                buf = bufs.pop()
                if not bufs:
                    del self._free[nbytes]
                self._bytes -= nbytes
                self.hits += 1
                return buf.view(dtype).view(shape)
            self.misses += 1
        return torch.empty(shape, dtype=dtype)

    def adopt(self, owner, tensors) -> None:
        """Recycle ``tensors`` (CPU, contiguous, from :meth:`empty` or not) when ``owner`` is garbage-collected. The
        caller promises that only ``owner`` holds views of them."""
        weakref.finalize(owner, self._give, [t.view(-1).view(torch.uint8) for t in tensors])

    def _give(self, bufs) -> None:
        with self._lock:
            for buf in bufs:
                n = buf.numel()
                if n > self.max_bytes:
                    continue
                self._free.setdefault(n, []).append(buf)
                self._free.move_to_end(n)
                self._bytes += n
            while self._bytes > self.max_bytes:  # drop the sizes freed longest ago
                n, old = next(iter(self._free.items()))
                old.pop(0)
                self._bytes -= n
                if not old:
                    del self._free[n]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


ARENA = Arena()
