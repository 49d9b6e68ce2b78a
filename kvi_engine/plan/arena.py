"""Reusable CPU buffers for the copies a plan owns alone (the decode step's gathered KV).

A plan's decode steps hold a gathered copy of its injected KV (~2.7 MB a layer at 128 capsules of a 12/4-head,
head_dim 64 model). Allocated fresh for every request, that memory comes from the OS each time: glibc returns freed
blocks this large (trim threshold), and on this VM every first touch of a 4 KiB page is a fault of ~3 us, so the
first decode step of a 128-capsule request spent ~24 of its ~38 ms faulting pages in (``torch.zeros`` of the
copies: ~0.9 ms a MB). The arena keeps the buffers of finished plans and hands them to the next plan that asks for
about the same size, so a server (or a benchmark's repeats) faults its step memory in once.

Buffers are kept by size class (the size rounded up to an eighth of its power of two: at most 12.5% slack), so a
continuously batching server, whose plans differ in rows and slots from step to step, still finds one that fits.
Only memory that nothing else can see is recycled: :meth:`Arena.adopt` takes the buffers of an owner that holds
the only views of them (a ``DecodeStep``), and gets them back when that owner is collected. Buffers come back with
stale contents: callers write every element (the C++ slot gather zeroes the slots it does not fill).
"""
from __future__ import annotations

import collections
import math
import os
import threading
import weakref

import torch

# Free buffers kept at most (bytes): a 16-client server at 128 capsules holds ~16 x 32 MB of steps.
# KVI_STEP_ARENA_MAX_MB sets it for the process's arena (0: recycle nothing).
DEFAULT_MAX_BYTES = 512 << 20


class Arena:
    """Free CPU byte buffers by size class. :meth:`empty` is ``torch.empty`` from a recycled buffer of its size
    class where one is free; :meth:`adopt` recycles buffers when their owner dies. Thread-safe (servers build
    plans in several threads)."""

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
        """An uninitialised CPU tensor of ``shape`` and ``dtype``: a view of the head of a recycled buffer of its
        size class, or of a fresh one of that class (so that it can serve a slightly larger request later)."""
        shape = tuple(int(s) for s in shape)
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        cls = size_class(nbytes)
        with self._lock:
            bufs = self._free.get(cls)
            if bufs:
                buf = bufs.pop()
                if not bufs:
                    del self._free[cls]
                self._bytes -= cls
                self.hits += 1
            else:
                buf = None
                self.misses += 1
        if buf is None:
            buf = torch.empty(cls, dtype=torch.uint8)
        return buf[:nbytes].view(dtype).view(shape)

    def adopt(self, owner, tensors) -> None:
        """Recycle the buffers under ``tensors`` (CPU tensors from :meth:`empty`; a storage that is not a whole
        size-class buffer is left alone) when ``owner`` is garbage-collected. The caller promises that only
        ``owner`` holds views of them."""
        bufs = []
        for t in tensors:
            storage = t.untyped_storage()
            if t.storage_offset() == 0 and storage.nbytes() == size_class(storage.nbytes()):
                bufs.append(torch.empty(0, dtype=torch.uint8).set_(storage))
        weakref.finalize(owner, self._give, bufs)

    def _give(self, bufs) -> None:
        with self._lock:
            for buf in bufs:
                n = buf.numel()
                if n > self.max_bytes:
                    continue
                self._free.setdefault(n, []).append(buf)
                self._free.move_to_end(n)
                self._bytes += n
            while self._bytes > self.max_bytes:  # drop the classes freed longest ago
                n, old = next(iter(self._free.items()))
                old.pop(0)
                self._bytes -= n
                if not old:
                    del self._free[n]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of an eighth of its power of two (at least 4 KiB: a page)."""
    if nbytes <= 4096:
        return 4096
    step = (1 << (nbytes.bit_length() - 1)) // 8
    return -(-nbytes // step) * step


_ITEMSIZE = {dt: torch.empty((), dtype=dt).element_size() for dt in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32,
    torch.int64, torch.bool)}

def _max_bytes_from_env() -> int:
    raw = os.environ.get("KVI_STEP_ARENA_MAX_MB")
    if raw is None:
        return DEFAULT_MAX_BYTES
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"KVI_STEP_ARENA_MAX_MB must be a number of MiB, got {raw!r}") from None
    if mb < 0:
        raise ValueError(f"KVI_STEP_ARENA_MAX_MB must be >= 0, got {raw!r}")
    return int(mb * 2**20)


ARENA = Arena(_max_bytes_from_env())
