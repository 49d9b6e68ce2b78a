"""Pure-Python twin of the C++ entity linker (csrc/kvi/linker.h): same constructor, same ``link_batch`` result,
same matching rules (see kvi_engine/graph/linker.py). A dictionary of normalised names plus the set of their prefixes
stands in for the trie: the scan stops exactly where a trie walk would."""
from __future__ import annotations

import numpy as np

from kvi_engine.graph import normalize as nt


class LinkerTwin:
    def __init__(self, normalizer, blob: bytes, offsets: np.ndarray, entity_ids: np.ndarray, priors=None):
        del normalizer  # the twin normalises with kvi_engine.graph.normalize directly
        n = entity_ids.shape[0]
        for a, name, dt, length in ((offsets, "offsets", np.int64, n + 1), (entity_ids, "entity_ids", np.int64, n),
                                    (priors, "priors", np.float32, n)):
            if a is None:
                continue
            if not isinstance(a, np.ndarray) or a.dtype != dt:
                raise TypeError(f"{name}: expected dtype {np.dtype(dt)}")
            if a.ndim != 1 or a.shape[0] != length:
                raise ValueError(f"{name}: expected a 1-D array of length {length}")
        if not isinstance(blob, bytes):
            raise TypeError("blob: expected bytes")
        if offsets[0] != 0 or offsets[-1] != len(blob):
            raise ValueError("offsets must run from 0 to len(blob)")
        rows: dict[str, dict[int, float]] = {}
        off = offsets.tolist()
        for i in range(n):
            if off[i + 1] < off[i]:
                raise ValueError(f"linker: name offsets are not monotone at row {i}")
            e = int(entity_ids[i])
            if e < 0:
                raise ValueError(f"linker: row {i} has negative entity id")
            p = None if priors is None else float(priors[i])
            if p is not None and not (np.isfinite(p) and p >= 0):
                raise ValueError(f"linker: row {i} has prior {p}; priors must be finite and >= 0")
            try:
                key = nt.normalize_name(blob[off[i]:off[i + 1]].decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError as err:
                raise ValueError(f"linker: name at row {i}: invalid UTF-8 ({err.reason})") from None
            if not key:
                raise ValueError(f"linker: name at row {i} is empty after normalisation")
            cands = rows.setdefault(key, {})
            cands[e] = max(cands.get(e, -1.0), 0.0 if p is None else p)
        self.num_names = n
        self.table: dict[str, list[tuple[int, float]]] = {}
        self.prefixes: set[str] = set()
        for key, cands in rows.items():
            if priors is None:
                uniform = float(np.float32(1.0) / np.float32(len(cands)))
                cands = dict.fromkeys(cands, uniform)
            self.table[key] = sorted(cands.items(), key=lambda c: (-c[1], c[0]))
            self.prefixes.update(key[:k] for k in range(1, len(key) + 1))
        self.num_keys = len(self.table)

    def link_one(self, text: str, min_prior: float):
        norm, begin, end = nt.normalize(text)
        n = len(norm)
        mentions = []
        a = 0
        while a < n:
            if norm[a] == " " or not nt.boundary(norm, a):
                a += 1
                continue
            best = None
            for b in range(a + 1, n + 1):
                key = norm[a:b]
                if key not in self.prefixes:
                    break
                cands = self.table.get(key)
                if cands and cands[0][1] >= min_prior and nt.boundary(norm, b):
                    best = (b, cands)
            if best is None:
                a += 1
                continue
            b, cands = best
            mentions.append((begin[a], end[b - 1], [c for c in cands if c[1] >= min_prior]))
            a = b
        return mentions

    def link_batch(self, texts, min_prior: float = 0.0, num_threads: int = 0):
        mptr, start, stop, cptr, ent, pri = [0], [], [], [0], [], []
        for i, t in enumerate(texts):
            if not isinstance(t, bytes):
                raise TypeError(f"text {i}: expected bytes")
            try:
                text = t.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as err:
                raise ValueError(f"text {i}: invalid UTF-8 ({err.reason})") from None
            for s, e, cands in self.link_one(text, min_prior):
                start.append(s), stop.append(e)
                ent.extend(c[0] for c in cands), pri.extend(c[1] for c in cands)
                cptr.append(len(ent))
            mptr.append(len(start))
        return (np.asarray(mptr, np.int64), np.asarray(start, np.int64), np.asarray(stop, np.int64),
                np.asarray(cptr, np.int64), np.asarray(ent, np.int64), np.asarray(pri, np.float32))
