"""The knowledge graph: entities, relation vocabulary, triples with provenance, CSR adjacency both ways.

Ids: entity ``e`` in ``[0, num_entities)``, relation ``r`` in ``[0, num_relations)``, triple ``t`` in
``[0, num_triples)``. Triple ``t`` is the ``t``-th non-anchor capsule of the list it was built from;
``capsule_index(t)`` gives its position in that list (anchors included), ``anchor_capsule_index(e)`` the position
of entity ``e``'s anchor (-1 if none). Inverse relations are edges of the in-adjacency, never duplicate triples.

Literal objects (a capsule's ``literal`` type, or an object that is a plain number and names no given entity) are
leaves: each such triple gets its own literal node (``is_literal``), never shared, never linked, so traversal can
reach a value ("founded_in 1987") but never walk through it to everything else of 1987. Sentence capsules
(``kind="sentence"``) add the mention adjacency (:mod:`kvi_engine.graph.mentions`): sentence <-> every entity it
names.

On disk (``<dir>/graph.kvig``) the graph is one container (:mod:`kvi_engine.formats.container`, kind
``kvi-graph``), memory-mapped on load. Loading checks the container (magic, versions, header checksum, every
section's bounds, dtype, shape and, with ``verify``, crc32) and the graph invariants (ids in range, CSR a
permutation grouped by entity), so a damaged file raises :class:`FormatError` naming the file, never crashes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from kvi_engine import dispatch
from kvi_engine.capsules.capsule import SENTENCE_RELATION, Capsule, Entity
from kvi_engine.formats.container import Container, FormatError, write_container
from kvi_engine.formats.strings import StringTable
from kvi_engine.graph import twin as graph_twin
from kvi_engine.graph.mentions import ARRAYS as MENTION_ARRAYS
from kvi_engine.graph.mentions import Mentions
from kvi_engine.graph.traversal import Traversal

DIRECTIONS = {"out": graph_twin.OUT, "in": graph_twin.IN, "both": graph_twin.BOTH}
GRAPH_VERSION = 2    # 2: entity kinds (literal leaves) and the mention adjacency; version 1 files still load
GRAPH_FILE = "graph.kvig"
ENTITY, LITERAL = 0, 1
_NUMBER = re.compile(r"^-?\d[\d,.]*$")

def _cpp_graph(*args):
    from kvi_engine import _core
    return _core.Graph(*args)


def _cpp_build_csr(key, num_keys):
    from kvi_engine import _core
    return _core.build_csr(key, num_keys)


dispatch.register("graph", "cpp", _cpp_graph, available=lambda: dispatch.core_has("Graph"),
                  why_not="kvi_engine._core lacks Graph")
dispatch.register("graph", "reference", graph_twin.GraphTwin)
dispatch.register("graph.build_csr", "cpp", _cpp_build_csr, available=lambda: dispatch.core_has("build_csr"),
                  why_not="kvi_engine._core lacks build_csr")
dispatch.register("graph.build_csr", "reference", graph_twin.build_csr)


# -------------------------------------------------------------------------------------- the graph

_ARRAYS = {  # section -> dtype; every graph file holds exactly these
    "subj": "<i4", "rel": "<i4", "obj": "<i4", "sentence": "<i4", "triple_capsule": "<i8", "anchor_capsule": "<i8",
    "out_indptr": "<i8", "out_triples": "<i4", "in_indptr": "<i8", "in_triples": "<i4", "alias_indptr": "<i8",
    "entity_kind": "|u1",
}
_TABLES = ("entity_names", "entity_types", "entity_descriptions", "aliases", "relations", "sentence_ids", "sentences")


class KnowledgeGraph:
    """Entities, relations and triples with provenance; traversal runs on the C++ core or its Python twin
    (chosen by :mod:`kvi_engine.dispatch`, op ``"graph"``). Build with :meth:`from_capsules`, or :meth:`load`."""

    def __init__(self, arrays: dict[str, np.ndarray], tables: dict[str, StringTable], *, backend: str | None = None,
                 source: str = "graph"):
        for name, dt in _ARRAYS.items():
            a = arrays.get(name)
            if a is None or a.dtype.str != dt or a.ndim != 1:
                raise FormatError(f"{source}: array {name!r} missing or not 1-D {dt}")
        self._a, self._t = arrays, tables
        n, t = len(tables["entity_names"]), arrays["subj"].shape[0]
        for name, length in (("sentence", t), ("triple_capsule", t), ("anchor_capsule", n), ("alias_indptr", n + 1)):
            if arrays[name].shape[0] != length:
                raise FormatError(f"{source}: array {name!r} has length {arrays[name].shape[0]}, expected {length}")
        for name in ("entity_types", "entity_descriptions"):
            if len(tables[name]) != n:
                raise FormatError(f"{source}: table {name!r} has {len(tables[name])} rows, expected {n}")
        if len(tables["sentence_ids"]) != len(tables["sentences"]):
            raise FormatError(f"{source}: sentence_ids and sentences differ in length")
        ap = arrays["alias_indptr"]
        if ap[0] != 0 or ap[-1] != len(tables["aliases"]) or np.any(np.diff(ap) < 0):
            raise FormatError(f"{source}: alias_indptr does not partition the aliases")
        sent = arrays["sentence"]
        if t and (sent.min() < -1 or sent.max() >= len(tables["sentences"])):
            raise FormatError(f"{source}: a triple's sentence index is out of range")
        if arrays["entity_kind"].shape[0] != n or (n and arrays["entity_kind"].max() > LITERAL):
            raise FormatError(f"{source}: array 'entity_kind' must hold one kind (0 or 1) per entity")
        self.mentions = Mentions.from_arrays(arrays, len(tables["sentences"]), n, source)
        self.backend, make = dispatch.select("graph", backend)
        try:
            self._core = make(arrays["subj"], arrays["rel"], arrays["obj"], arrays["out_indptr"],
                              arrays["out_triples"], arrays["in_indptr"], arrays["in_triples"], n,
                              len(tables["relations"]))
        except (ValueError, TypeError) as e:
            raise FormatError(f"{source}: {e}") from None
        self._entity_index: dict[str, int] | None = None
        self._relation_index: dict[str, int] | None = None

    # ---- construction and storage

    @classmethod
    def from_capsules(cls, capsules: Sequence[Capsule], entities: Sequence[Entity] | None = None, *,
                      backend: str | None = None) -> "KnowledgeGraph":
        """Entities: those given (ids in order), then every other subject/object (and sentence-capsule entity) in
        order of first appearance. A capsule names an entity by canonical name, or by an alias that only one entity
        has. Anchor capsules (``kind="anchor"``) are not triples; they set the entity's anchor (and its type when it
        has none). Sentence capsules add their sentence and its mention edges. A literal object becomes a leaf of
        its own (see the module docstring)."""
        names, types, descs, aliases, kinds = [], [], [], [], []
        index: dict[str, int] = {}
        by_alias: dict[str, set[int]] = {}

        def add(e: Entity) -> int:
            if e.name in index:
                raise ValueError(f"entity {e.name!r} given twice")
            index[e.name] = len(names)
            names.append(e.name), types.append(e.type), descs.append(e.description), aliases.append(e.aliases)
            kinds.append(ENTITY)
            for a in e.aliases:
                by_alias.setdefault(a, set()).add(index[e.name])
            return index[e.name]

        def resolve(name: str) -> int:
            if name in index:
                return index[name]
            owners = by_alias.get(name, ())
            return next(iter(owners)) if len(owners) == 1 else add(Entity(name))

        def literal(c: Capsule) -> int:
            names.append(c.object), types.append(c.literal or "number"), descs.append(""), aliases.append(())
            kinds.append(LITERAL)
            return len(names) - 1

        def sentence_index(ci: int, c: Capsule) -> int:
            key = c.sentence_id if c.sentence_id is not None else c.sentence
            if not key:
                return -1
            if key in sentences:
                k = sentences[key]
                if c.sentence and sentence_texts[k] and c.sentence != sentence_texts[k]:
                    raise ValueError(f"capsule {ci}: sentence {key!r} has two different texts")
                sentence_texts[k] = sentence_texts[k] or c.sentence
                return k
            sentences[key] = len(sentence_ids)
            sentence_ids.append(c.sentence_id or ""), sentence_texts.append(c.sentence)
            sentence_caps.append(-1)
            return sentences[key]

        for e in entities or ():
            add(e)
        given = set(index)
        relations: dict[str, int] = {}
        sentences: dict[str, int] = {}
        sentence_ids, sentence_texts, sentence_caps = [], [], []
        pairs: list[tuple[int, int]] = []
        subj, rel, obj, sent, triple_capsule, anchors = [], [], [], [], [], {}
        for ci, c in enumerate(capsules):
            if not isinstance(c, Capsule):
                raise TypeError(f"capsule {ci}: expected kvi.Capsule, got {type(c).__name__}")
            if c.kind == "anchor":
                e = resolve(c.subject)
                if e in anchors:
                    raise ValueError(f"capsule {ci}: entity {names[e]!r} already has an anchor (capsule {anchors[e]})")
                anchors[e] = ci
                types[e] = types[e] or c.object
                continue
            if c.kind == "sentence":
                k = sentence_index(ci, c)
                if sentence_caps[k] >= 0:
                    raise ValueError(f"capsule {ci}: sentence {c.sentence_id!r} already has a sentence capsule "
                                     f"(capsule {sentence_caps[k]})")
                sentence_caps[k] = ci
                pairs.extend((k, resolve(n)) for n in c.entities)
                continue
            subj.append(resolve(c.subject))
            is_literal = c.literal or (_NUMBER.match(c.object) and c.object not in given)
            obj.append(literal(c) if is_literal else resolve(c.object))
            rel.append(relations.setdefault(c.relation, len(relations)))
            sent.append(sentence_index(ci, c))
            triple_capsule.append(ci)
        n = len(names)
        anchor = np.full(n, -1, dtype=np.int64)
        for e, ci in anchors.items():
            anchor[e] = ci
        arrays = {"subj": np.asarray(subj, np.int32), "rel": np.asarray(rel, np.int32), "obj": np.asarray(obj, np.int32),
                  "sentence": np.asarray(sent, np.int32), "triple_capsule": np.asarray(triple_capsule, np.int64),
                  "anchor_capsule": anchor, "entity_kind": np.asarray(kinds, np.uint8)}
        return cls.from_arrays(arrays, names=names, relations=list(relations), types=types, descriptions=descs,
                               aliases=aliases, sentence_ids=sentence_ids, sentences=sentence_texts,
                               mentions=(pairs, sentence_caps), backend=backend)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, names: Sequence[str], relations: Sequence[str],
                    types=None, descriptions=None, aliases=None, sentence_ids=(), sentences=(), mentions=None,
                    backend: str | None = None) -> "KnowledgeGraph":
        """Build from ``subj``/``rel``/``obj`` int32 arrays (and optional ``sentence``, ``triple_capsule``,
        ``anchor_capsule``, ``entity_kind``); the CSR adjacency is built here, by the C++ core when available.
        ``mentions``: ``(pairs, sentence_capsule)``, (sentence, entity) pairs and each sentence's capsule position."""
        n, t = len(names), arrays["subj"].shape[0]
        arrays = dict(arrays)
        arrays.setdefault("sentence", np.full(t, -1, np.int32))
        arrays.setdefault("triple_capsule", np.arange(t, dtype=np.int64))
        arrays.setdefault("anchor_capsule", np.full(n, -1, np.int64))
        arrays.setdefault("entity_kind", np.zeros(n, np.uint8))
        _, build_csr = dispatch.select("graph.build_csr", backend)
        if mentions is None:
            m = Mentions.empty(len(sentences), n)
        else:
            pairs, caps = mentions
            if len(caps) != len(sentences):
                raise ValueError(f"mentions: {len(caps)} sentence capsule positions for {len(sentences)} sentences")
            m = Mentions.build(pairs, caps, n, build_csr)
        arrays.update(m.arrays())
        arrays["out_indptr"], arrays["out_triples"] = build_csr(arrays["subj"], n)
        arrays["in_indptr"], arrays["in_triples"] = build_csr(arrays["obj"], n)
        aliases = list(aliases) if aliases is not None else [()] * n
        alias_indptr = np.zeros(n + 1, np.int64)
        np.cumsum([len(a) for a in aliases], out=alias_indptr[1:])
        arrays["alias_indptr"] = alias_indptr
        tables = {"entity_names": names, "entity_types": types or [""] * n,
                  "entity_descriptions": descriptions or [""] * n, "aliases": [a for al in aliases for a in al],
                  "relations": relations, "sentence_ids": sentence_ids, "sentences": sentences}
        return cls(arrays, {k: StringTable.from_list(v, k) for k, v in tables.items()}, backend=backend)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/graph.kvig`` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: self._a[k] for k in _ARRAYS}
        arrays.update(self.mentions.arrays())
        for name in _TABLES:
            arrays[f"{name}.blob"], arrays[f"{name}.offsets"] = self._t[name].blob, self._t[name].offsets
        meta = {"num_entities": self.num_entities, "num_relations": self.num_relations, "num_triples": self.num_triples}
        return write_container(directory / GRAPH_FILE, "kvi-graph", GRAPH_VERSION, meta, arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, backend: str | None = None, verify: bool = True) -> "KnowledgeGraph":
        """Memory-map ``<directory>/graph.kvig``; ``verify`` checks every section's crc32 (reads the file once)."""
        path = Path(directory) / GRAPH_FILE
        c = Container(path, "kvi-graph", (1, GRAPH_VERSION))
        if verify:
            c.verify()
        sections = {n: c.array(n) for n in c.sections}
        tables = {}
        for name in _TABLES:
            blob, offsets = sections.get(f"{name}.blob"), sections.get(f"{name}.offsets")
            if blob is None or offsets is None or blob.dtype != np.uint8 or offsets.dtype != np.int64 or \
                    blob.ndim != 1:
                raise FormatError(f"{path}: string table {name!r} missing or mistyped")
            tables[name] = StringTable(blob, offsets, f"{path}: {name}")
        arrays = {k: sections.get(k, np.empty(0, np.int8)) for k in (*_ARRAYS, *MENTION_ARRAYS)}
        if c.header.get("version") == 1:  # before literal leaves and mentions: no literals, no sentence capsules
            n, n_sent = len(tables["entity_names"]), len(tables["sentences"])
            arrays["entity_kind"] = np.zeros(n, np.uint8)
            arrays.update(Mentions.empty(n_sent, n).arrays())
        g = cls(arrays, tables, backend=backend, source=str(path))
        counts = {"num_entities": g.num_entities, "num_relations": g.num_relations, "num_triples": g.num_triples}
        if c.meta != counts:
            raise FormatError(f"{path}: header counts {c.meta} disagree with the arrays")
        return g

    # ---- vocabulary

    @property
    def num_entities(self) -> int:
        return len(self._t["entity_names"])

    @property
    def num_relations(self) -> int:
        return len(self._t["relations"])

    @property
    def num_triples(self) -> int:
        return int(self._a["subj"].shape[0])

    @property
    def relations(self) -> list[str]:
        return list(self._t["relations"])

    def relation_id(self, name: str) -> int:
        if self._relation_index is None:
            self._relation_index = {r: i for i, r in enumerate(self._t["relations"])}
        if name not in self._relation_index:
            raise KeyError(f"unknown relation {name!r}")
        return self._relation_index[name]

    def entity_id(self, name: str) -> int:
        """Id of the entity with this canonical name, else of the one entity having it as an alias."""
        if self._entity_index is None:
            index = {}
            for i, a in enumerate(self._t["aliases"]):
                index.setdefault(a, []).append(i)
            owner = np.repeat(np.arange(self.num_entities), np.diff(self._a["alias_indptr"]))
            self._entity_index = {a: int(owner[ix[0]]) for a, ix in index.items() if len({owner[j] for j in ix}) == 1}
            kind = self._a["entity_kind"]
            self._entity_index.update((n, i) for i, n in enumerate(self._t["entity_names"]) if kind[i] == ENTITY)
        if name not in self._entity_index:
            raise KeyError(f"unknown entity {name!r}")
        return self._entity_index[name]

    def is_literal(self, entity_id: int) -> bool:
        """Whether the node is a literal leaf (a value such as a year), not an entity."""
        return bool(self._a["entity_kind"][entity_id] == LITERAL)

    @property
    def literal_mask(self) -> np.ndarray:
        """bool [num_entities]: True for literal leaves."""
        return self._a["entity_kind"] == LITERAL

    @property
    def num_sentences(self) -> int:
        return len(self._t["sentences"])

    def entity_name(self, entity_id: int) -> str:
        return self._t["entity_names"][entity_id]

    def entity(self, entity_id: int) -> Entity:
        a = self._a["alias_indptr"]
        return Entity(self._t["entity_names"][entity_id], self._t["entity_types"][entity_id],
                      tuple(self._t["aliases"][int(a[entity_id]):int(a[entity_id + 1])]),
                      self._t["entity_descriptions"][entity_id])

    @property
    def entities(self) -> list[Entity]:
        return [self.entity(i) for i in range(self.num_entities)]

    # ---- triples and provenance

    @property
    def subjects(self) -> np.ndarray:
        return self._a["subj"]

    @property
    def relation_ids(self) -> np.ndarray:
        return self._a["rel"]

    @property
    def objects(self) -> np.ndarray:
        return self._a["obj"]

    def triple(self, t: int) -> tuple[int, int, int, int]:
        """``(subject_id, relation_id, object_id, sentence_index)``; sentence_index is -1 without provenance."""
        if not -self.num_triples <= t < self.num_triples:
            raise IndexError(f"triple {t} out of range [0, {self.num_triples})")
        return tuple(int(self._a[k][t]) for k in ("subj", "rel", "obj", "sentence"))

    def sentence(self, sentence_index: int) -> tuple[str, str]:
        """``(sentence_id, text)`` of a provenance sentence."""
        return self._t["sentence_ids"][sentence_index], self._t["sentences"][sentence_index]

    def capsule(self, t: int) -> Capsule:
        s, r, o, k = self.triple(t)
        sid, text = self.sentence(k) if k >= 0 else (None, "")
        literal = self._t["entity_types"][o] if self.is_literal(o) else ""
        return Capsule(self.entity_name(s), self._t["relations"][r], self.entity_name(o), sid or None, text,
                       literal=literal)

    def sentence_capsule(self, k: int) -> Capsule:
        """Sentence ``k`` as a sentence capsule (subject: its first entity, else its id; entities: its mentions)."""
        sid, text = self.sentence(k)
        names = tuple(self.entity_name(int(e)) for e in self.mentions.of_sentence(k))
        label = sid or f"sentence {k}"
        return Capsule(names[0] if names else label, SENTENCE_RELATION, label, sid or None, text, kind="sentence",
                       entities=names)

    def capsule_index(self, triple_ids) -> np.ndarray:
        """Positions, in the capsule list the graph was built from, of these triples."""
        return self._a["triple_capsule"][np.asarray(triple_ids, dtype=np.int64)]

    def anchor_capsule_index(self, entity_ids) -> np.ndarray:
        """Positions of the entities' anchor capsules (-1: none)."""
        return self._a["anchor_capsule"][np.asarray(entity_ids, dtype=np.int64)]

    # ---- traversal

    def traverse(self, seeds, max_hops: int = 2, relations=None, direction: str = "out", fanout: int | None = None,
                 max_candidates: int | None = None) -> Traversal:
        """Breadth-first from ``seeds`` (entity ids or names) up to ``max_hops``.

        ``relations``: None (all), a collection of relation names/ids allowed at every hop, or a list of
        ``max_hops`` such collections (None = all), one per hop; names absent from the vocabulary match nothing.
        ``direction``: "out" (subject -> object), "in" (object -> subject) or "both". ``fanout`` caps the
        triples taken from each entity, ``max_candidates`` the triples returned (nearest first)."""
        return self.traverse_batch([seeds], max_hops, relations, direction, fanout, max_candidates, num_threads=1)[0]

    def traverse_batch(self, seed_lists: Sequence, max_hops: int = 2, relations=None, direction: str = "out",
                       fanout: int | None = None, max_candidates: int | None = None,
                       num_threads: int = 0) -> list[Traversal]:
        """One traversal per seed list; the C++ core runs them on ``num_threads`` threads (0: all cores)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        if isinstance(seed_lists, (str, int, np.integer)):
            raise TypeError("traverse_batch takes a list of seed lists")
        flat: list[int] = []
        bounds = [0]
        for q in seed_lists:
            for s in ([q] if isinstance(q, (str, int, np.integer)) else q):
                flat.append(s if type(s) is int else self._seed_id(s))
            bounds.append(len(flat))
        qptr, t, h, p = self._core.traverse_batch(
            np.array(flat, dtype=np.int64), np.array(bounds, dtype=np.int64), int(max_hops),
            self._allowed(relations, max_hops), DIRECTIONS[direction], -1 if fanout is None else int(fanout),
            -1 if max_candidates is None else int(max_candidates), num_threads)
        if len(bounds) == 2:
            return [Traversal(t, h, p)]
        qptr = qptr.tolist()
        return [Traversal(t[a:b], h[a:b], p[a:b]) for a, b in zip(qptr[:-1], qptr[1:])]

    def _seed_id(self, s) -> int:
        if isinstance(s, str):
            return self.entity_id(s)
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            return int(s)
        raise TypeError(f"seed {s!r}: expected an entity id or name")

    def _allowed(self, relations, max_hops: int) -> np.ndarray | None:
        if relations is None:
            return None
        if isinstance(relations, (str, int, np.integer)):
            raise TypeError("relations: expected a collection of relation names/ids, or a per-hop list of them")
        per_hop = isinstance(relations, (list, tuple)) and all(
            r is None or not isinstance(r, (str, int, np.integer)) for r in relations) and len(relations) > 0
        hops = list(relations) if per_hop else [relations]
        if per_hop and len(hops) != max_hops:
            raise ValueError(f"relations: a per-hop list needs {max_hops} entries (max_hops), got {len(hops)}")
        mask = np.zeros((len(hops), self.num_relations), np.uint8)
        for row, allowed in zip(mask, hops):
            if allowed is None:
                row[:] = 1
                continue
            for r in allowed:
                if isinstance(r, str):
                    try:
                        row[self.relation_id(r)] = 1
                    except KeyError:
                        pass  # allowing a relation the graph lacks allows nothing
                elif isinstance(r, (int, np.integer)) and 0 <= r < self.num_relations:
                    row[int(r)] = 1
                else:
                    raise ValueError(f"relations: {r!r} is not a relation name or an id in [0, {self.num_relations})")
        return mask

    def __repr__(self) -> str:
        return (f"KnowledgeGraph(entities={self.num_entities}, relations={self.num_relations}, "
                f"triples={self.num_triples}, backend={self.backend!r})")
