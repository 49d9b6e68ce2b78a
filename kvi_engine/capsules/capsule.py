"""Knowledge capsules (subject, relation, object + provenance) and entities, with strict JSONL I/O.

A capsule line:  {"subject": "SFTSV", "relation": "causes", "object": "fever",
                  "sentence_id": "doc3:s2", "sentence": "SFTSV infection causes fever.", "kind": "triple"}
An entity line:  {"name": "SFTSV", "type": "virus", "aliases": ["SFTS virus"], "description": "..."}
Only ``subject``/``relation``/``object`` (capsules) and ``name`` (entities) are required. Unknown keys are errors:
a typo such as "sentense" must not silently drop provenance.

Kinds: ``triple`` (a fact), ``anchor`` (an entity's anchor statement) and ``sentence`` (a whole sentence, compiled as
it stands: subject = the entity it is about or its document, relation ``states``, object = its sentence id; its
``entities`` lists every entity it mentions). A triple's ``literal`` marks an object that is a value (a date,
number, quantity: "DATE", "CARDINAL", ...; "phrase" for a noun phrase naming no entity): the graph keeps it as a
leaf, never an entity to walk through. ``attributes`` are further literal values of the triple ([label, text]).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable

from kvi_engine.utils.atomic import atomic_open
from kvi_engine.utils.jsonl import read_jsonl

CAPSULE_KINDS = ("triple", "anchor", "sentence")
SENTENCE_RELATION = "states"


class CapsuleFormatError(ValueError):
    """Malformed capsule/entity input; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    type: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"entity name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True, slots=True)
class Capsule:
    """One unit of injectable knowledge. ``kind="anchor"`` is an entity's anchor statement
    (subject = the entity, relation = "is_a", object = its type)."""
    subject: str
    relation: str
    object: str
    sentence_id: str | None = None
    sentence: str = ""
    kind: str = "triple"
    entities: tuple[str, ...] = ()                   # sentence capsules: every entity the sentence mentions
    literal: str = ""                                # the object's literal type; "" = the object is an entity
    attributes: tuple[tuple[str, str], ...] = ()     # (label, text) literal values of the triple

    def __post_init__(self):
        for name in ("subject", "relation", "object"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"capsule {name} must be a non-empty string, got {v!r}")
        if self.kind not in CAPSULE_KINDS:
            raise ValueError(f"capsule kind must be one of {CAPSULE_KINDS}, got {self.kind!r}")
        if self.sentence_id is not None:
            object.__setattr__(self, "sentence_id", str(self.sentence_id))
        ents = tuple(self.entities)
        if not all(isinstance(e, str) and e.strip() for e in ents):
            raise ValueError(f"capsule entities must be non-empty strings, got {list(ents)!r}")
        object.__setattr__(self, "entities", ents)
        attrs = tuple(tuple(a) for a in self.attributes)
        if not all(len(a) == 2 and all(isinstance(x, str) for x in a) for a in attrs):
            raise ValueError(f"capsule attributes must be [label, text] string pairs, got {self.attributes!r}")
        object.__setattr__(self, "attributes", attrs)
        if not isinstance(self.literal, str):
            raise ValueError(f"capsule literal must be a string (the literal's type), got {self.literal!r}")
        if self.kind == "sentence" and not self.sentence:
            raise ValueError("a sentence capsule needs its sentence text")

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.subject, self.relation, self.object)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["entities"], d["attributes"] = list(self.entities), [list(a) for a in self.attributes]
        return {k: v for k, v in d.items() if v not in (None, "", []) and not (k == "kind" and v == "triple")}

    @classmethod
    def from_dict(cls, d: dict) -> "Capsule":
        """The inverse of :meth:`to_dict` (extra keys, such as a bank record's ``statement``, are ignored)."""
        return cls(d["subject"], d["relation"], d["object"], d.get("sentence_id"), d.get("sentence", ""),
                   d.get("kind", "triple"), tuple(d.get("entities", ())), d.get("literal", ""),
                   tuple(tuple(a) for a in d.get("attributes", ())))


_CAPSULE_KEYS = {"subject", "relation", "object", "sentence_id", "sentence", "kind", "entities", "literal",
                 "attributes"}
_ENTITY_KEYS = {"name", "type", "aliases", "description"}


def _read_jsonl(path: str | os.PathLike) -> Iterable[tuple[int, dict]]:
    return read_jsonl(path, CapsuleFormatError)


def _build(cls, keys: set[str], path, lineno: int, obj: dict):
    unknown = set(obj) - keys
    if unknown:
        raise CapsuleFormatError(f"{path}:{lineno}: unknown field(s) {sorted(unknown)}; allowed: {sorted(keys)}")
    try:
        if cls is Entity and "aliases" in obj:
            if not isinstance(obj["aliases"], list) or not all(isinstance(a, str) for a in obj["aliases"]):
                raise ValueError("aliases must be a list of strings")
            obj = {**obj, "aliases": tuple(obj["aliases"])}
        if cls is Capsule:
            for key in ("entities", "attributes"):
                if key in obj and not isinstance(obj[key], list):
                    raise ValueError(f"{key} must be a list")
            if not all(isinstance(a, list) for a in obj.get("attributes", [])):
                raise ValueError("attributes must be [label, text] pairs")
            obj = {**obj, "entities": tuple(obj.get("entities", ())),
                   "attributes": tuple(tuple(a) for a in obj.get("attributes", ()))}
        return cls(**obj)
    except (TypeError, ValueError) as e:
        raise CapsuleFormatError(f"{path}:{lineno}: {e}") from None


def load_capsules(path: str | os.PathLike) -> list[Capsule]:
    caps = [_build(Capsule, _CAPSULE_KEYS, path, n, o) for n, o in _read_jsonl(path)]
    if not caps:
        raise CapsuleFormatError(f"{path}: no capsules (file is empty)")
    return caps


def load_entities(path: str | os.PathLike) -> list[Entity]:
    ents = [_build(Entity, _ENTITY_KEYS, path, n, o) for n, o in _read_jsonl(path)]
    seen: dict[str, int] = {}
    for i, e in enumerate(ents):
        if e.name in seen:
            raise CapsuleFormatError(f"{path}: entity {e.name!r} defined twice (entries {seen[e.name] + 1} and {i + 1})")
        seen[e.name] = i
    return ents


def _write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    with atomic_open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def save_capsules(capsules: Iterable[Capsule], path: str | os.PathLike) -> None:
    _write_jsonl((c.to_dict() for c in capsules), path)


def save_entities(entities: Iterable[Entity], path: str | os.PathLike) -> None:
    _write_jsonl(({k: (list(v) if k == "aliases" else v) for k, v in asdict(e).items() if v not in ("", ())}
                  for e in entities), path)
