"""Pure-Python twin of the C++ graph core (csrc/kvi/graph.h, csrc/kvi/traverse.h): CSR building, validation
and multi-hop traversal with the same semantics step for step. It is the CPU fallback when the extension is
missing and the oracle the native code is tested against."""
from __future__ import annotations

import numpy as np

OUT, IN, BOTH = 1, 2, 3


def _check(a, name: str, dtype, length: int | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        raise TypeError(f"{name}: expected a numpy array of dtype {np.dtype(dtype)}, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got {a.ndim}-D")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got {a.shape[0]}")
    return a


def build_csr(key: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr int64[num_keys+1], order int32[n])``: row ids grouped by key, ascending within a group."""
    _check(key, "key", np.int32)
    if not 0 <= num_keys <= 2**31:  # the C++ core's bound: keys are int32
        raise ValueError(f"num_keys must be in [0, 2^31], got {num_keys}")
    if key.size and (key.min() < 0 or key.max() >= num_keys):
        bad = int(np.flatnonzero((key < 0) | (key >= num_keys))[0])
        raise ValueError(f"build_csr: key {int(key[bad])} of row {bad} is outside [0, {num_keys})")
    indptr = np.zeros(num_keys + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=num_keys), out=indptr[1:])
    return indptr, np.argsort(key, kind="stable").astype(np.int32)


def _validate_csr(name: str, indptr: np.ndarray, order: np.ndarray, key: np.ndarray, num_keys: int, n: int) -> None:
    what = f"graph {name}: "
    if indptr[0] != 0 or indptr[-1] != n:
        raise ValueError(what + f"indptr must run from 0 to num_triples {n}")
    if np.any(np.diff(indptr) < 0):
        raise ValueError(what + "indptr is not monotone")
    if n and (order.min() < 0 or order.max() >= n):
        raise ValueError(what + "triple id out of range")
    if np.any(np.bincount(order, minlength=n) != 1):
        raise ValueError(what + "triple ids are not a permutation")
    if np.any(key[order] != np.repeat(np.arange(num_keys, dtype=np.int64), np.diff(indptr))):
        raise ValueError(what + "a triple is filed under the wrong entity")


class GraphTwin:
    """Same constructor and ``traverse_batch`` as ``_core.Graph``."""

    def __init__(self, subj, rel, obj, out_indptr, out_triples, in_indptr, in_triples, num_entities, num_relations):
        if num_entities < 0 or num_relations < 0:
            raise ValueError("graph: counts must be >= 0")
        t = subj.shape[0] if isinstance(subj, np.ndarray) and subj.ndim == 1 else None
        for a, name, dt, n in ((subj, "subj", np.int32, t), (rel, "rel", np.int32, t), (obj, "obj", np.int32, t),
                               (out_indptr, "out_indptr", np.int64, num_entities + 1),
                               (out_triples, "out_triples", np.int32, t),
                               (in_indptr, "in_indptr", np.int64, num_entities + 1),
                               (in_triples, "in_triples", np.int32, t)):
            _check(a, name, dt, n)
        if t and (min(subj.min(), obj.min()) < 0 or max(subj.max(), obj.max()) >= num_entities):
            raise ValueError(f"graph: a triple names an entity outside [0, {num_entities})")
        if t and (rel.min() < 0 or rel.max() >= num_relations):
            raise ValueError(f"graph: a triple has a relation outside [0, {num_relations})")
        _validate_csr("out adjacency", out_indptr, out_triples, subj, num_entities, t)
        _validate_csr("in adjacency", in_indptr, in_triples, obj, num_entities, t)
        self.num_entities, self.num_relations, self.num_triples = num_entities, num_relations, t
        self._subj, self._rel, self._obj = subj.tolist(), rel.tolist(), obj.tolist()
        self._out = (out_indptr.tolist(), out_triples.tolist())
        self._in = (in_indptr.tolist(), in_triples.tolist())

    def traverse_batch(self, seeds, seeds_indptr, max_hops, allowed=None, direction=OUT, fanout=-1, max_candidates=-1,
                       num_threads=0):
        if max_hops < 0:
            raise ValueError("max_hops must be >= 0")
        if direction not in (OUT, IN, BOTH):
            raise ValueError("direction must be 1 (out), 2 (in) or 3 (both)")
        _check(seeds_indptr, "seeds_indptr", np.int64)
        _check(seeds, "seeds", np.int64)
        if seeds_indptr.shape[0] < 1 or seeds_indptr[0] != 0 or seeds_indptr[-1] != seeds.shape[0]:
            raise ValueError("seeds_indptr must run from 0 to len(seeds)")
        if np.any(np.diff(seeds_indptr) < 0):
            raise ValueError("seeds_indptr is not monotone")
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_entities):
            bad = int(seeds[(seeds < 0) | (seeds >= self.num_entities)][0])
            raise IndexError(f"seed entity id {bad} is outside [0, {self.num_entities})")
        rows = None
        if allowed is not None:
            if not isinstance(allowed, np.ndarray) or allowed.dtype != np.uint8:
                raise TypeError("allowed: expected dtype uint8")
            if allowed.ndim != 2 or allowed.shape[1] != self.num_relations or allowed.shape[0] not in (1, max_hops):
                raise ValueError("allowed: expected shape [1 or max_hops, num_relations]")
            rows = [row.astype(bool).tolist() for row in allowed]
        indptr, triples, hops, parents = [0], [], [], []
        qptr = seeds_indptr.tolist()
        flat = seeds.tolist()
        for q in range(len(qptr) - 1):
            self._traverse(flat[qptr[q]:qptr[q + 1]], max_hops, rows, direction, fanout, max_candidates,
                           triples, hops, parents)
            indptr.append(len(triples))
        return (np.asarray(indptr, dtype=np.int64), np.asarray(triples, dtype=np.int32),
                np.asarray(hops, dtype=np.int32), np.asarray(parents, dtype=np.int32))

    def _traverse(self, seeds, max_hops, rows, direction, fanout, max_candidates, triples, hops, parents):
        entered = set()
        frontier = []
        for s in seeds:
            if s not in entered:
                entered.add(s)
                frontier.append((s, -1))
        emitted = set()
        count = 0
        if max_candidates == 0:
            return
        passes = [p for p in ((OUT, self._out, self._obj), (IN, self._in, self._subj)) if direction & p[0]]
        for h in range(1, max_hops + 1):
            if not frontier:
                break
            row = None if rows is None else rows[0 if len(rows) == 1 else h - 1]
            nxt = []
            for u, parent in frontier:
                taken = 0
                for _, (indptr, adj), far in passes:
                    for t in adj[indptr[u]:indptr[u + 1]]:
                        if row is not None and not row[self._rel[t]]:
                            continue
                        if t in emitted:
                            continue
                        if 0 <= fanout <= taken:
                            break
                        emitted.add(t)
                        taken += 1
                        triples.append(t)
                        hops.append(h)
                        parents.append(parent)
                        count += 1
                        if 0 <= max_candidates <= count:
                            return
                        v = far[t]
                        if h < max_hops and v not in entered:
                            entered.add(v)
                            nxt.append((v, t))
                    else:
                        continue
                    break
            frontier = nxt

