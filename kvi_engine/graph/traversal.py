"""Traversal: the triples a multi-hop breadth-first traversal reached, with their hop and parent (the path back)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Traversal:
    """Triples reached from the seeds, in breadth-first order. ``parents[k]`` is the triple through which the
    source entity of ``triple_ids[k]`` was first reached (-1: a seed), so ``path(k)`` recovers the chain."""
    triple_ids: np.ndarray  # int32 [M]
    hops: np.ndarray        # int32 [M], 1..max_hops
    parents: np.ndarray     # int32 [M], a triple id listed earlier, or -1

    def __len__(self) -> int:
        return int(self.triple_ids.shape[0])

    def path(self, k: int) -> list[int]:
        """Triple ids from the seed to ``triple_ids[k]``, first hop first."""
        where = {int(t): i for i, t in enumerate(self.triple_ids)}
        chain = [int(self.triple_ids[k])]
        parent = int(self.parents[k])
        while parent >= 0:
            chain.append(parent)
            parent = int(self.parents[where[parent]])
        return chain[::-1]
