"""Name keys and corpus word statistics: the one rule by which ingestion (the dictionary pass) and question linking
decide that a span of text names an entity.

- ``fold_accents``: every character that decomposes into one base character plus combining marks becomes that base
  ("Lương" -> "Luong", "é" -> "e"; also đ ł ø). It is length-preserving (one character for one), so a span found in
  the folded text indexes the original text.
- ``name_key``: the accent-folded name under the linker's normalisation (:mod:`kvi_engine.graph.normalize`: NFKC,
  case folding, punctuation -> space, spaces collapsed) without a leading article: "The Mask of Fu-Manchu" ->
  "mask of fu manchu". The entity linker is built over these keys and run over accent-folded text, so matching
  ignores case, punctuation, accents and a leading article; a possessive needs no rule ("Tell's" normalises to
  "tell s", and the name "kiss and tell" ends at the word boundary before "s").
- ``WordStats``: how often each word is written lower-case vs capitalised inside sentences. A word usually written
  lower-case ("young", "film", "this") is a common word: a name made only of common words links only where it is
  written as a name ("Snow White"), and a one-word common name never links.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from typing import Iterable

from kvi_engine.graph.normalize import normalize_name

ARTICLES = frozenset({"the", "a", "an"})
# Short words a capitalised name may contain in lower case ("Kiss and Tell", "Ludwig van Beethoven").
CONNECTORS = frozenset({"of", "and", "the", "a", "an", "in", "on", "for", "to", "de", "la", "le", "von", "van", "der",
                        "du", "del", "da", "no"})
# Words that are never a one-word name, whatever the corpus says (function words and the generic nouns that titles'
# disambiguators use).
STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from as into onto about over under than then that this these those
is are was were be been being am do does did has have had having it its he she they them his her their we you i me my
our your who whom whose what which where when why how there here not no yes so such can could would should will shall
may might must also very just only any some all each both other same own too one two first second new old young
film films movie band song album series novel book play show station river city town county state country
""".split())
_SPECIAL = {"đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "ø": "o", "Ø": "O"}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class _AccentTable(dict):
    """``str.translate`` table computed on first sight of each non-ASCII character."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        out = _SPECIAL.get(ch)
        if out is None:
            base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))
            out = base if len(base) == 1 else ch
        self[cp] = out
        return out


_ACCENTS = _AccentTable()


def fold_accents(text: str) -> str:
    """``text`` with accents removed, one character for one (offsets are unchanged)."""
    return text if text.isascii() else text.translate(_ACCENTS)


@functools.lru_cache(maxsize=1 << 18)
def name_key(name: str) -> str:
    """The lookup key of a name: accent-folded, linker-normalised, without a leading article ("" if nothing is
    left)."""
    words = normalize_name(fold_accents(name)).split()
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    return " ".join(words)


def words(text: str) -> list[str]:
    """The words of ``text`` (runs of letters and digits), accent-folded, case kept."""
    return _WORD.findall(fold_accents(text))


class WordStats:
    """Per word (case-folded): how often it occurs lower-case and capitalised after the first word of a sentence."""

    def __init__(self, sentences: Iterable[str] = ()):
        self.lower: Counter = Counter()
        self.upper: Counter = Counter()
        for s in sentences:
            self.add(s)

    def add(self, sentence: str) -> None:
        for w in words(sentence)[1:]:
            if not w[0].isalpha():
                continue
            (self.upper if w[0].isupper() else self.lower)[w.casefold()] += 1

    def is_common(self, word: str, threshold: float = 0.2) -> bool:
        w = fold_accents(word).casefold()
        if w in STOPWORDS or len(w) < 2 or w.isdigit():
            return True
        lo, up = self.lower[w], self.upper[w]
        return lo >= 3 and lo / (lo + up) > threshold

    def linkable(self, key: str) -> bool:
        """A name with this key may link whatever its case: one of its words is not a common word."""
        ws = key.split()
        return bool(ws) and any(not self.is_common(w) for w in ws)

    def linkable_surface(self, key: str, surface: str) -> bool:
        """``linkable``, or a name of two or more common words written as a name here ("Snow White", not "snow
        white"): every word capitalised except short connectors. A one-word common name never links."""
        if self.linkable(key):
            return True
        ws = words(surface)
        if len(ws) < 2 or not ws[0][:1].isupper():
            return False
        return all(w[:1].isupper() or w.casefold() in CONNECTORS for w in ws)
