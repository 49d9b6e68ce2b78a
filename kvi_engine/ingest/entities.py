"""Entity normalisation and alias merging.

``normalize`` turns a surface form into a lookup key (Unicode NFKC, case-folded, whitespace collapsed, a leading
article and trailing punctuation removed), so "The Grellan virus," and "grellan  virus" are one key. An
``AliasTable`` maps keys to canonical entity names; ``merge_entities`` folds entities whose names or aliases share a
key into one (the first one seen keeps its name, the others become aliases).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from typing import Iterable

from kvi_engine.capsules.capsule import Capsule, Entity

_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_EDGE_PUNCT = re.compile(r"^[\s\"'“”‘’(\[「『《]+|[\s\"'“”‘’)\]」』》.,;:!?。，、；：！？]+$")


def normalize(surface: str) -> str:
    s = unicodedata.normalize("NFKC", surface)
    s = _EDGE_PUNCT.sub("", " ".join(s.split()))
    s = _ARTICLE.sub("", s)
    return s.casefold()


def _singular(key: str) -> str | None:
    if key.endswith("ies") and len(key) > 4:
        return key[:-3] + "y"
    if key.endswith("s") and not key.endswith("ss") and len(key) > 3:
        return key[:-1]
    return None


class AliasTable:
    """Surface form -> canonical entity name. A key claimed by two different entities is ambiguous and resolves to
    nothing (``resolve`` returns None) rather than to an arbitrary one of them."""

    def __init__(self, entities: Iterable[Entity]):
        self._canon: dict[str, str] = {}
        self._ambiguous: dict[str, set[str]] = {}
        self.entities: dict[str, Entity] = {}
        for e in entities:
            self.entities[e.name] = e
            for n in e.names:
                self._add(normalize(n), e.name)

    def _add(self, key: str, name: str) -> None:
        if not key:
            return
        if key in self._ambiguous:
            self._ambiguous[key].add(name)
        elif self._canon.get(key, name) != name:
            self._ambiguous[key] = {self._canon.pop(key), name}
        else:
            self._canon[key] = name

    def resolve(self, surface: str) -> str | None:
        """Canonical name for ``surface`` (exact key, then a naive singular), or None if unknown or ambiguous."""
        key = normalize(surface)
        if key in self._canon:
            return self._canon[key]
        single = _singular(key)
        return self._canon.get(single) if single else None

    def is_ambiguous(self, surface: str) -> bool:
        return normalize(surface) in self._ambiguous

    def __contains__(self, surface: str) -> bool:
        return self.resolve(surface) is not None


def merge_entities(entities: Iterable[Entity]) -> tuple[list[Entity], dict[str, str]]:
    """Fold entities that share a normalised name or alias. Returns the merged list (first-seen order) and a map from
    every input name to its canonical name. Type and description come from the first entity that has one."""
    merged: list[dict] = []
    owner: dict[str, int] = {}
    rename: dict[str, str] = {}
    for e in entities:
        keys = {normalize(n) for n in e.names} - {""}
        hits = sorted({owner[k] for k in keys if k in owner})
        if not hits:
            idx = len(merged)
            merged.append({"name": e.name, "type": e.type, "aliases": [], "description": e.description, "keys": set()})
        else:
            idx = hits[0]
            for other in hits[1:]:  # e bridges two earlier groups: fold the later group into the first
                _absorb(merged[idx], merged[other])
                for k in merged[other]["keys"]:
                    owner[k] = idx
                for old, new in rename.items():
                    if new == merged[other]["name"]:
                        rename[old] = merged[idx]["name"]
                merged[other] = None
        group = merged[idx]
        _absorb(group, {"name": e.name, "type": e.type, "aliases": list(e.aliases), "description": e.description,
                        "keys": keys})
        for k in keys:
            owner[k] = idx
        rename[e.name] = group["name"]
    out = [Entity(g["name"], g["type"], tuple(g["aliases"]), g["description"]) for g in merged if g is not None]
    return out, rename


def _absorb(group: dict, other: dict) -> None:
    present = {normalize(n) for n in (group["name"], *group["aliases"])}
    for n in (other["name"], *other["aliases"]):
        if normalize(n) not in present:
            group["aliases"].append(n)
            present.add(normalize(n))
    group["type"] = group["type"] or other["type"]
    group["description"] = group["description"] or other["description"]
    group["keys"] |= other["keys"]


def canonicalize_capsules(capsules: Iterable[Capsule], table: AliasTable) -> list[Capsule]:
    """Rewrite subjects/objects to canonical entity names where the table knows them, then drop exact duplicates
    (the first occurrence, in document order, keeps its provenance)."""
    out: list[Capsule] = []
    seen: set[tuple[str, str, str]] = set()
    for c in capsules:
        s = table.resolve(c.subject) or c.subject
        o = table.resolve(c.object) or c.object
        if (s, c.relation, o) in seen:
            continue
        seen.add((s, c.relation, o))
        out.append(replace(c, subject=s, object=o))
    return out
