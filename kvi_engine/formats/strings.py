"""StringTable: strings as one UTF-8 blob plus ``offsets[n + 1]`` -- two container sections, decoded on access,
so a memory-mapped graph or linker file costs nothing until a name is read."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from kvi_engine.formats.container import FormatError


class StringTable(Sequence[str]):
    """Strings as one UTF-8 blob plus ``offsets[n + 1]``; decoded on access, so a loaded graph costs nothing."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, what: str = "strings"):
        if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != blob.shape[0] \
                or np.any(np.diff(offsets) < 0):
            raise FormatError(f"{what}: offsets do not partition the blob")
        self.blob, self.offsets, self.what = blob, offsets, what

    @classmethod
    def from_list(cls, strings: Iterable[str], what: str = "strings") -> "StringTable":
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets, what)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.what}: index {i} out of range [0, {len(self)})")
        i %= len(self)
        try:
            return bytes(self.blob[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise FormatError(f"{self.what}: entry {i} is not valid UTF-8") from None
