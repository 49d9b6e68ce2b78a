"""Entity linking: find the names and aliases of known entities in text, with every candidate entity and its prior.

Rules (the C++ core csrc/kvi/linker.h and its twin kvi_engine/graph/linker_twin.py implement them identically):
- Names and texts are normalised alike (kvi_engine/graph/normalize.py: NFKC, case folding, punctuation and
  whitespace folding, canonical composition of combining marks); matching happens on the normalised text and
  spans are reported in characters of the original text (``text[m.start:m.end]``).
- Matches begin and end on word boundaries ("us" never matches inside "Houston"); characters of Han, kana, Thai
  and similar scripts are words by themselves, so names match inside unspaced CJK text.
- Scanning left to right, the longest name starting at a position wins; matches never overlap.
- Candidates of a name: every entity having it (after normalisation); duplicate rows keep their highest prior;
  without priors each of the k entities of a name gets 1/k. Sorted by prior descending, then entity id.
- ``min_prior``: candidates below it are dropped, and a name whose best candidate is below it does not match
  (a shorter name may then match instead).

File format (``save``/``load``): a container (:mod:`kvi_engine.formats.container`) of kind ``kvi-linker`` holding the
input rows (UTF-8 names, entity ids, priors); loading rebuilds the trie, so a file never depends on the Unicode
tables of the Python that wrote it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kvi_engine import dispatch
from kvi_engine.capsules.capsule import Entity
from kvi_engine.formats.container import Container, FormatError, write_container
from kvi_engine.formats.strings import StringTable
from kvi_engine.graph import linker_twin
from kvi_engine.graph.normalize import native_normalizer

LINKER_VERSION = 1


@dataclass(frozen=True, slots=True)
class Mention:
    start: int  # character offsets into the original text, end exclusive
    end: int
    text: str
    candidates: list[tuple[int, float]] = field(default_factory=list)  # (entity id, prior), best first


def _cpp_linker(blob, offsets, entity_ids, priors):
    from kvi_engine import _core
    return _core.Linker(native_normalizer(), blob, offsets, entity_ids, priors)


def _twin_linker(blob, offsets, entity_ids, priors):
    return linker_twin.LinkerTwin(None, blob, offsets, entity_ids, priors)


dispatch.register("linker", "cpp", _cpp_linker, available=lambda: dispatch.core_has("Linker"),
                  why_not="kvi_engine._core lacks Linker")
dispatch.register("linker", "reference", _twin_linker)


class EntityLinker:
    """Dictionary linker over (name, entity id, prior) rows; the C++ core or its Python twin (op ``"linker"``)."""

    def __init__(self, names: StringTable, entity_ids: np.ndarray, priors: np.ndarray | None, *,
                 backend: str | None = None):
        self._names, self._entity_ids, self._priors = names, entity_ids, priors
        self.backend, make = dispatch.select("linker", backend)
        self._core = make(bytes(names.blob), names.offsets, entity_ids, priors)

    @classmethod
    def build(cls, names: Sequence[str], entity_ids: np.ndarray, priors: np.ndarray | None = None, *,
              backend: str | None = None) -> "EntityLinker":
        """One row per (name, entity): ``names[i]`` refers to entity ``entity_ids[i]`` with prior ``priors[i]``."""
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError("names: expected a list of str")
        if not isinstance(entity_ids, np.ndarray) or entity_ids.dtype != np.int64 or entity_ids.ndim != 1:
            raise TypeError(f"entity_ids: expected a 1-D int64 numpy array, got {getattr(entity_ids, 'dtype', type(entity_ids))}")
        if len(names) != entity_ids.shape[0]:
            raise ValueError(f"entity_ids: {entity_ids.shape[0]} rows for {len(names)} names")
        if priors is not None:
            if not isinstance(priors, np.ndarray) or priors.dtype != np.float32 or priors.ndim != 1:
                raise TypeError(f"priors: expected a 1-D float32 numpy array, got {getattr(priors, 'dtype', type(priors))}")
            if priors.shape[0] != len(names):
                raise ValueError(f"priors: {priors.shape[0]} rows for {len(names)} names")
        return cls(StringTable.from_list(names, "names"), np.ascontiguousarray(entity_ids),
                   None if priors is None else np.ascontiguousarray(priors), backend=backend)

    @classmethod
    def from_entities(cls, entities: Sequence[Entity], *, backend: str | None = None) -> "EntityLinker":
        """Names and aliases of ``entities``; entity id = position in the list."""
        names, ids = [], []
        for i, e in enumerate(entities):
            for n in dict.fromkeys(e.names):
                names.append(n), ids.append(i)
        return cls.build(names, np.asarray(ids, dtype=np.int64), backend=backend)

    @classmethod
    def from_graph(cls, graph, *, backend: str | None = None) -> "EntityLinker":
        """Names and aliases of a :class:`kvi.KnowledgeGraph`'s entities, with the graph's entity ids (literal
        leaves, such as years, are not names)."""
        literal = graph.literal_mask
        names, ids = [], []
        for i, e in enumerate(graph.entities):
            if not literal[i]:
                for n in dict.fromkeys(e.names):
                    names.append(n), ids.append(i)
        return cls.build(names, np.asarray(ids, dtype=np.int64), backend=backend)

    def __len__(self) -> int:
        return self._core.num_names

    @property
    def num_keys(self) -> int:
        """Distinct names after normalisation."""
        return self._core.num_keys

    def link_arrays(self, texts: Sequence[str], *, min_prior: float = 0.0, num_threads: int = 0):
        """Raw result in CSR form: ``(mention_indptr[Q+1], start[M], end[M], candidate_indptr[M+1], entity[C],
        prior[C])``; mentions of text q are rows ``mention_indptr[q]:mention_indptr[q+1]``."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a list of str")
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        return self._core.link_batch(encoded, float(min_prior), num_threads)

    def link(self, texts: Sequence[str], *, min_prior: float = 0.0, num_threads: int = 0) -> list[list[Mention]]:
        mptr, start, end, cptr, ent, pri = self.link_arrays(texts, min_prior=min_prior, num_threads=num_threads)
        start, end, cptr, ent, pri = start.tolist(), end.tolist(), cptr.tolist(), ent.tolist(), pri.tolist()
        out = []
        for q, text in enumerate(texts):
            out.append([Mention(start[m], end[m], text[start[m]:end[m]], list(zip(ent[cptr[m]:cptr[m + 1]],
                                                                                  pri[cptr[m]:cptr[m + 1]])))
                        for m in range(mptr[q], mptr[q + 1])])
        return out

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"names.blob": self._names.blob, "names.offsets": self._names.offsets, "entity_ids": self._entity_ids}
        if self._priors is not None:
            arrays["priors"] = self._priors
        write_container(path, "kvi-linker", LINKER_VERSION, {"num_names": len(self)}, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str | None = None) -> "EntityLinker":
        c = Container(path, "kvi-linker", (LINKER_VERSION,))
        c.verify()
        meta, s = c.meta, {n: c.array(n) for n in c.sections}
        want = {"names.blob": np.uint8, "names.offsets": np.int64, "entity_ids": np.int64}
        for name, dt in want.items():
            if name not in s or s[name].dtype != dt or s[name].ndim != 1:
                raise FormatError(f"{path}: section {name!r} missing or mistyped")
        priors = s.get("priors")
        if priors is not None and (priors.dtype != np.float32 or priors.ndim != 1):
            raise FormatError(f"{path}: section 'priors' mistyped")
        if meta.get("num_names") != s["entity_ids"].shape[0]:
            raise FormatError(f"{path}: header says {meta.get('num_names')!r} names, arrays hold {s['entity_ids'].shape[0]}")
        try:
            return cls(StringTable(s["names.blob"], s["names.offsets"], f"{path}: names"), s["entity_ids"], priors,
                       backend=backend)
        except (ValueError, TypeError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return f"EntityLinker(names={len(self)}, keys={self.num_keys}, backend={self.backend!r})"
