"""The knowledge graph: entities, relation vocabulary, triples with provenance, CSR adjacency both ways.

Ids: entity ``e`` in ``[0, num_entities)``, relation ``r`` in ``[0, num_relations)``, triple ``t`` in
``[0, num_triples)``. Triple ``t`` is the ``t``-th non-anchor capsule of the list it was built from;
``capsule_index(t)`` gives its position in that list (anchors included), ``anchor_capsule_index(e)`` the position
of entity ``e``'s anchor (-1 if none). Inverse relations are edges of the in-adjacency, never duplicate triples.

On disk (``<bank>/graph/graph.kvig``) the graph is one sectioned container, memory-mapped on load:

    magic b"KVISECT\\0" | u32 container version | u32 header length | u32 header crc32 | u32 0
    | header (msgpack: kind, version, meta, sections[name, dtype, shape, offset, nbytes, crc32])
    | sections, each 64-byte aligned

Loading checks the magic, versions, the header checksum, every section's bounds, dtype, shape and crc32, and the
graph invariants (ids in range, CSR a permutation grouped by entity), so a damaged file raises
:class:`FileFormatError` naming the file, never crashes.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import msgpack
import numpy as np

from kvi_engine import dispatch, graph_twin
from kvi_engine.atomic import atomic_open
from kvi_engine.capsules import Capsule, Entity

MAGIC = b"KVISECT\0"
CONTAINER_VERSION = 1
GRAPH_VERSION = 1
_PREFIX = struct.Struct("<8sIIII")
_ALIGN = 64
_DTYPES = {"<i4", "<i8", "<u4", "<u8", "<f4", "|u1"}
DIRECTIONS = {"out": graph_twin.OUT, "in": graph_twin.IN, "both": graph_twin.BOTH}


class FileFormatError(ValueError):
    """A graph or linker file that is malformed, truncated, of another kind or version; the message names it."""


# ------------------------------------------------------------------------------------------ container


def _data_start(header_len: int) -> int:
    return -(-(_PREFIX.size + header_len) // _ALIGN) * _ALIGN


def write_sections(path: str | os.PathLike, kind: str, version: int, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Section offsets are relative to the first 64-byte boundary after the header."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    sections, offset = [], 0
    for name, a in arrays.items():
        if a.dtype.str not in _DTYPES:
            raise TypeError(f"section {name!r}: unsupported dtype {a.dtype}")
        sections.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                         "nbytes": a.nbytes, "crc32": zlib.crc32(a.data.cast("B")) if a.nbytes else 0})
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    header = msgpack.packb({"kind": kind, "version": version, "meta": meta, "sections": sections})
    with atomic_open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, CONTAINER_VERSION, len(header), zlib.crc32(header), 0))
        f.write(header)
        pos = _PREFIX.size + len(header)
        start = _data_start(len(header))
        for s, a in zip(sections, arrays.values()):
            f.write(b"\0" * (start + s["offset"] - pos))
            f.write(a.data.cast("B"))
            pos = start + s["offset"] + a.nbytes


def read_sections(path: str | os.PathLike, kind: str, version: int, verify: bool = True) -> tuple[dict, dict]:
    """``(meta, arrays)``; arrays are read-only views of one memory map of the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size

    def bad(msg: str) -> FileFormatError:
        return FileFormatError(f"{path}: {msg}")

    if size < _PREFIX.size:
        raise bad(f"truncated ({size} bytes; not a {kind} file)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    magic, cversion, hlen, hcrc, _ = _PREFIX.unpack(bytes(buf[:_PREFIX.size]))
    if magic != MAGIC:
        raise bad(f"not a kvi-engine file (magic {magic!r})")
    if cversion != CONTAINER_VERSION:
        raise bad(f"container version {cversion} is not supported (expected {CONTAINER_VERSION})")
    if _PREFIX.size + hlen > size:
        raise bad("truncated header")
    raw = bytes(buf[_PREFIX.size:_PREFIX.size + hlen])
    if zlib.crc32(raw) != hcrc:
        raise bad("header checksum mismatch")
    try:
        header = msgpack.unpackb(raw, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise bad(f"unreadable header ({type(e).__name__})") from None
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise bad(f"not a {kind} file")
    if header.get("version") != version:
        raise bad(f"{kind} version {header.get('version')!r} is not supported (expected {version})")
    meta, sections = header.get("meta"), header.get("sections")
    if not isinstance(meta, dict) or not isinstance(sections, list):
        raise bad("header lacks meta/sections")
    arrays = {}
    for s in sections:
        try:
            name, dtype, shape, off, nbytes, crc = (s["name"], s["dtype"], s["shape"], s["offset"], s["nbytes"],
                                                    s["crc32"])
            ok = (isinstance(name, str) and dtype in _DTYPES and isinstance(shape, list)
                  and all(type(d) is int and d >= 0 for d in shape)
                  and all(type(x) is int and x >= 0 for x in (off, nbytes, crc)))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise bad(f"malformed section entry {s!r:.200}")
        dt = np.dtype(dtype)
        if nbytes != math.prod(shape) * dt.itemsize:
            raise bad(f"section {name!r}: {nbytes} bytes do not hold shape {shape} of {dtype}")
        off += _data_start(hlen)
        if off % _ALIGN or off + nbytes > size:
            raise bad(f"section {name!r} lies outside the file (truncated?)")
        view = buf[off:off + nbytes]
        if verify and zlib.crc32(view) != crc:
            raise bad(f"section {name!r}: checksum mismatch")
        arrays[name] = view.view(dt).reshape(shape)
    return meta, arrays


# ---------------------------------------------------------------------------------------- string tables


class StringTable(Sequence[str]):
    """Strings as one UTF-8 blob plus ``offsets[n + 1]``; decoded on access, so a loaded graph costs nothing."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, what: str = "strings"):
        if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != blob.shape[0] \
                or np.any(np.diff(offsets) < 0):
            raise FileFormatError(f"{what}: offsets do not partition the blob")
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
            raise FileFormatError(f"{self.what}: entry {i} is not valid UTF-8") from None


# ------------------------------------------------------------------------------------------- traversal


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
}
_TABLES = ("entity_names", "entity_types", "entity_descriptions", "aliases", "relations", "sentence_ids", "sentences")
GRAPH_FILE = "graph.kvig"


class KnowledgeGraph:
    """Entities, relations and triples with provenance; traversal runs on the C++ core or its Python twin
    (chosen by :mod:`kvi_engine.dispatch`, op ``"graph"``). Build with :meth:`from_capsules`, or :meth:`load`."""

    def __init__(self, arrays: dict[str, np.ndarray], tables: dict[str, StringTable], *, backend: str | None = None,
                 source: str = "graph"):
        for name, dt in _ARRAYS.items():
            a = arrays.get(name)
            if a is None or a.dtype.str != dt or a.ndim != 1:
                raise FileFormatError(f"{source}: array {name!r} missing or not 1-D {dt}")
        self._a, self._t = arrays, tables
        n, t = len(tables["entity_names"]), arrays["subj"].shape[0]
        for name, length in (("sentence", t), ("triple_capsule", t), ("anchor_capsule", n), ("alias_indptr", n + 1)):
            if arrays[name].shape[0] != length:
                raise FileFormatError(f"{source}: array {name!r} has length {arrays[name].shape[0]}, expected {length}")
        for name in ("entity_types", "entity_descriptions"):
            if len(tables[name]) != n:
                raise FileFormatError(f"{source}: table {name!r} has {len(tables[name])} rows, expected {n}")
        if len(tables["sentence_ids"]) != len(tables["sentences"]):
            raise FileFormatError(f"{source}: sentence_ids and sentences differ in length")
        ap = arrays["alias_indptr"]
        if ap[0] != 0 or ap[-1] != len(tables["aliases"]) or np.any(np.diff(ap) < 0):
            raise FileFormatError(f"{source}: alias_indptr does not partition the aliases")
        sent = arrays["sentence"]
        if t and (sent.min() < -1 or sent.max() >= len(tables["sentences"])):
            raise FileFormatError(f"{source}: a triple's sentence index is out of range")
        self.backend, make = dispatch.select("graph", backend)
        try:
            self._core = make(arrays["subj"], arrays["rel"], arrays["obj"], arrays["out_indptr"],
                              arrays["out_triples"], arrays["in_indptr"], arrays["in_triples"], n,
                              len(tables["relations"]))
        except (ValueError, TypeError) as e:
            raise FileFormatError(f"{source}: {e}") from None
        self._entity_index: dict[str, int] | None = None
        self._relation_index: dict[str, int] | None = None

    # ---- construction and storage

    @classmethod
    def from_capsules(cls, capsules: Sequence[Capsule], entities: Sequence[Entity] | None = None, *,
                      backend: str | None = None) -> "KnowledgeGraph":
        """Entities: those given (ids in order), then every other subject/object in order of first appearance.
        A capsule names an entity by canonical name, or by an alias that only one entity has. Anchor capsules
        (``kind="anchor"``) are not triples; they set the entity's anchor (and its type when it has none)."""
        names, types, descs, aliases = [], [], [], []
        index: dict[str, int] = {}
        by_alias: dict[str, set[int]] = {}

        def add(e: Entity) -> int:
            if e.name in index:
                raise ValueError(f"entity {e.name!r} given twice")
            index[e.name] = len(names)
            names.append(e.name), types.append(e.type), descs.append(e.description), aliases.append(e.aliases)
            for a in e.aliases:
                by_alias.setdefault(a, set()).add(index[e.name])
            return index[e.name]

        def resolve(name: str) -> int:
            if name in index:
                return index[name]
            owners = by_alias.get(name, ())
            return next(iter(owners)) if len(owners) == 1 else add(Entity(name))

        for e in entities or ():
            add(e)
        relations: dict[str, int] = {}
        sentences: dict[str, int] = {}
        sentence_ids, sentence_texts = [], []
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
            subj.append(resolve(c.subject)), obj.append(resolve(c.object))
            rel.append(relations.setdefault(c.relation, len(relations)))
            key = c.sentence_id if c.sentence_id is not None else c.sentence
            if not key:
                sent.append(-1)
            elif key in sentences:
                k = sentences[key]
                if c.sentence and sentence_texts[k] and c.sentence != sentence_texts[k]:
                    raise ValueError(f"capsule {ci}: sentence {key!r} has two different texts")
                sentence_texts[k] = sentence_texts[k] or c.sentence
                sent.append(k)
            else:
                sentences[key] = len(sentence_ids)
                sentence_ids.append(c.sentence_id or ""), sentence_texts.append(c.sentence)
                sent.append(sentences[key])
            triple_capsule.append(ci)
        n = len(names)
        anchor = np.full(n, -1, dtype=np.int64)
        for e, ci in anchors.items():
            anchor[e] = ci
        arrays = {"subj": np.asarray(subj, np.int32), "rel": np.asarray(rel, np.int32), "obj": np.asarray(obj, np.int32),
                  "sentence": np.asarray(sent, np.int32), "triple_capsule": np.asarray(triple_capsule, np.int64),
                  "anchor_capsule": anchor}
        return cls.from_arrays(arrays, names=names, relations=list(relations), types=types, descriptions=descs,
                               aliases=aliases, sentence_ids=sentence_ids, sentences=sentence_texts, backend=backend)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, names: Sequence[str], relations: Sequence[str],
                    types=None, descriptions=None, aliases=None, sentence_ids=(), sentences=(),
                    backend: str | None = None) -> "KnowledgeGraph":
        """Build from ``subj``/``rel``/``obj`` int32 arrays (and optional ``sentence``, ``triple_capsule``,
        ``anchor_capsule``); the CSR adjacency is built here, by the C++ core when available."""
        n, t = len(names), arrays["subj"].shape[0]
        arrays = dict(arrays)
        arrays.setdefault("sentence", np.full(t, -1, np.int32))
        arrays.setdefault("triple_capsule", np.arange(t, dtype=np.int64))
        arrays.setdefault("anchor_capsule", np.full(n, -1, np.int64))
        _, build_csr = dispatch.select("graph.build_csr", backend)
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
        for name in _TABLES:
            arrays[f"{name}.blob"], arrays[f"{name}.offsets"] = self._t[name].blob, self._t[name].offsets
        meta = {"num_entities": self.num_entities, "num_relations": self.num_relations, "num_triples": self.num_triples}
        write_sections(directory / GRAPH_FILE, "kvi-graph", GRAPH_VERSION, meta, arrays)
        return directory / GRAPH_FILE

    @classmethod
    def load(cls, directory: str | os.PathLike, *, backend: str | None = None, verify: bool = True) -> "KnowledgeGraph":
        """Memory-map ``<directory>/graph.kvig``; ``verify`` checks every section's crc32 (reads the file once)."""
        path = Path(directory) / GRAPH_FILE
        meta, sections = read_sections(path, "kvi-graph", GRAPH_VERSION, verify=verify)
        tables = {}
        for name in _TABLES:
            blob, offsets = sections.get(f"{name}.blob"), sections.get(f"{name}.offsets")
            if blob is None or offsets is None or blob.dtype != np.uint8 or offsets.dtype != np.int64:
                raise FileFormatError(f"{path}: string table {name!r} missing or mistyped")
            try:
                tables[name] = StringTable(blob, offsets, f"{path}: {name}")
            except FileFormatError as e:
                raise FileFormatError(str(e)) from None
        g = cls({k: sections.get(k, np.empty(0, np.int8)) for k in _ARRAYS}, tables, backend=backend, source=str(path))
        if meta != {"num_entities": g.num_entities, "num_relations": g.num_relations, "num_triples": g.num_triples}:
            raise FileFormatError(f"{path}: header counts {meta} disagree with the arrays")
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
            self._entity_index.update((n, i) for i, n in enumerate(self._t["entity_names"]))
        if name not in self._entity_index:
            raise KeyError(f"unknown entity {name!r}")
        return self._entity_index[name]

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
        return Capsule(self.entity_name(s), self._t["relations"][r], self.entity_name(o), sid or None, text)

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
