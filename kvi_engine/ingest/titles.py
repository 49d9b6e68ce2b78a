"""Document titles as entities: "Kiss and Tell (1945 film)" names the entity Kiss and Tell, a film.

A title "Name (disambiguator)" gives the name ``Name`` (what text calls it), the disambiguator as description and its
last word that is not a number as type ("1945 film" -> "film"). A title that looks like an identifier (a run of five
or more digits: "PMID 21645374 - RESULTS") or has no letters names no entity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_DISAMBIGUATED = re.compile(r"^(.*?\S)\s*\(([^()]+)\)\s*$")
_IDENTIFIER = re.compile(r"\d{5,}")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Title:
    full: str           # "Kiss and Tell (1945 film)", whitespace collapsed
    name: str           # "Kiss and Tell"
    disambiguator: str  # "1945 film" ("" when none)
    type: str           # "film" ("" when none)


def parse_title(title: str) -> Title | None:
    full = " ".join(title.split())
    if not full or _IDENTIFIER.search(full) or not any(c.isalpha() for c in full):
        return None
    m = _DISAMBIGUATED.match(full)
    if m is None:
        return Title(full, full, "", "")
    name, dis = m.group(1), m.group(2).strip()
    words = _WORD.findall(dis.casefold())
    return Title(full, name, dis, words[-1] if words else "")
