"""Deterministic rule-based triple extraction for offline use.

Each relation template ("{subject} was founded by {object}.") yields a verb phrase ("was founded by"); a few active
forms ("X founded Y" -> (Y, founded_by, X)) are added. In a sentence, every occurrence of a phrase splits it into a left
and a right part; the subject is the longest run of words ending the left part that the alias table resolves to an
entity, the object the longest run starting the right part (or a number such as a year). Longer phrases are tried
first and a matched span is not reused, so "is a member of" wins over "is a". With ``require_known_entities=False``
unresolved arguments fall back to the words next to the phrase (open extraction; noisier).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.capsules.statements import DEFAULT_TEMPLATES
from kvi_engine.ingest.entities import AliasTable, canonicalize_capsules, normalize
from kvi_engine.ingest.sentences import Sentence

# Active-voice phrasings of passive templates: phrase -> (relation, arguments swapped)
ACTIVE_PATTERNS: dict[str, tuple[str, bool]] = {
    "founded": ("founded_by", True),
    "discovered": ("discovered_by", True),
    "is produced by": ("produces", True),
    "is led by": ("leads", True),
}
_NUMBER = re.compile(r"^\d[\d,.]*$")
_OPEN_STOP = re.compile(r",|;|\s(?:in|on|at|and|with|which|that|who|since|during|for)\s", re.IGNORECASE)
_MAX_ARG_WORDS = 8


@dataclass(frozen=True, slots=True)
class Pattern:
    phrase: str
    relation: str
    swapped: bool
    regex: re.Pattern


def template_patterns(templates: dict[str, str]) -> list[Pattern]:
    """Verb-phrase patterns from templates of the form "{a} <phrase> {b}[.]", longest phrase first."""
    out = []
    for rel, tpl in templates.items():
        m = re.fullmatch(r"\s*\{(subject|object)\}\s+(.+?)\s+\{(subject|object)\}\s*\.?\s*", tpl)
        if m and m.group(1) != m.group(3):
            out.append(_pattern(m.group(2), rel, swapped=m.group(1) == "object"))
    return out


def _pattern(phrase: str, relation: str, swapped: bool) -> Pattern:
    return Pattern(phrase, relation, swapped, re.compile(r"(?<=\s)" + re.escape(phrase) + r"(?=\s)", re.IGNORECASE))


class RuleExtractor:
    def __init__(self, entities: Iterable[Entity], templates: dict[str, str] | None = None,
                 active_patterns: dict[str, tuple[str, bool]] | None = None, require_known_entities: bool = True):
        self.aliases = AliasTable(entities)
        self.require_known = require_known_entities
        pats = template_patterns(DEFAULT_TEMPLATES if templates is None else templates)
        known = {p.phrase.lower() for p in pats}
        active = ACTIVE_PATTERNS if active_patterns is None else active_patterns
        pats += [_pattern(ph, rel, sw) for ph, (rel, sw) in active.items() if ph.lower() not in known]
        self.patterns = sorted(pats, key=lambda p: -len(p.phrase))

    def extract(self, sentences: Iterable[Sentence]) -> list[Capsule]:
        """Capsules in sentence order, canonical entity names, exact duplicates dropped (first provenance kept)."""
        caps = [c for s in sentences for c in self.extract_sentence(s)]
        return canonicalize_capsules(caps, self.aliases)

    def extract_sentence(self, sentence: Sentence) -> list[Capsule]:
        text = sentence.text.rstrip().rstrip(".!?;")
        used: list[tuple[int, int]] = []
        out = []
        for p in self.patterns:
            for m in p.regex.finditer(text):
                if any(m.start() < e and s < m.end() for s, e in used):
                    continue
                left = self._left_argument(text[:m.start()])
                right = self._right_argument(text[m.end():])
                if left is None or right is None:
                    continue
                subj, obj = (right, left) if p.swapped else (left, right)
                if _NUMBER.match(subj) or normalize(subj) == normalize(obj):
                    continue
                used.append((m.start(), m.end()))
                out.append(Capsule(subj, p.relation, obj, sentence.id, sentence.text))
        return out

    def _left_argument(self, left: str) -> str | None:
        words = left.split()
        for i in range(max(0, len(words) - _MAX_ARG_WORDS), len(words)):
            name = self.aliases.resolve(" ".join(words[i:]))
            if name:
                return name
        if self.require_known or not words or len(words) > _MAX_ARG_WORDS:
            return None
        return _strip_article(" ".join(words))

    def _right_argument(self, right: str) -> str | None:
        words = right.split()
        for j in range(min(len(words), _MAX_ARG_WORDS), 0, -1):
            name = self.aliases.resolve(" ".join(words[:j]))
            if name:
                return name
        if words and _NUMBER.match(words[0].rstrip(",")):
            return words[0].rstrip(",")
        if self.require_known or not words:
            return None
        head = _OPEN_STOP.split(" " + right + " ", maxsplit=1)[0].strip()
        return _strip_article(head) if head and len(head.split()) <= _MAX_ARG_WORDS else None


def _strip_article(s: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", s.strip(), flags=re.IGNORECASE)
