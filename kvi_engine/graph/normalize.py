"""Text normalisation for entity linking: the definition, its pure-Python twin, and the tables of the C++ core.

Normalising maps a text to a sequence of code points, each remembering the ``[begin, end)`` character range of
the original text it came from, so matches report spans in the caller's string:

1. A base character followed by combining marks (Unicode category M*) is composed canonically, pair by pair
   (``"e" + U+0301 -> "é"``; marks are expected in canonical order).
2. Each character ``c`` becomes ``casefold(NFKC(c))``, with punctuation, separators and control characters
   (categories P*, Z*, Cc) turned into a space and format characters (Cf: zero-width joiners, soft hyphen, BOM)
   removed. Accents are kept: "Café" and "Cafe" are different names.
3. Runs of spaces collapse to one; leading spaces drop (names also lose a trailing one).

Word boundaries: letters, digits and marks (L*, N*, M*) are word characters, except scripts written without
spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar), whose characters are words by themselves. A match
may begin or end at position ``i`` unless the characters on both sides of ``i`` are word characters, so "us"
never matches inside "Houston" while a Chinese name matches inside a Chinese sentence.

The C++ core runs the same definition from tables built here (:func:`native_tables`) from this Python's
``unicodedata`` (Unicode ``unicodedata.unidata_version``), so both sides agree by construction on normalisation;
tests check the code that applies the tables.
"""
from __future__ import annotations

import functools
import unicodedata

import numpy as np

SPACE, WORD, STANDALONE, OTHER = 0, 1, 2, 3
COMBINING = 4
NUM_CODE_POINTS = 0x110000
MULTI = 0x80000000

# Scripts written without spaces between words: each character is a word of its own.
STANDALONE_RANGES = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x31F0, 0x31FF),    # Katakana phonetic extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B..H
)


def _standalone(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in STANDALONE_RANGES)


@functools.lru_cache(maxsize=None)
def char_class(ch: str) -> int:
    """Class of a normalised character (SPACE / WORD / STANDALONE / OTHER), plus COMBINING for marks."""
    cat = unicodedata.category(ch)
    if cat[0] in "PZ" or cat == "Cc":
        return SPACE
    if cat[0] in "LNM":
        return (STANDALONE if _standalone(ord(ch)) else WORD) | (COMBINING if cat[0] == "M" else 0)
    return OTHER


def is_word(ch: str) -> bool:
    return char_class(ch) & 3 == WORD


@functools.lru_cache(maxsize=None)
def fold(ch: str) -> str:
    cat = unicodedata.category(ch)
    if cat == "Cf":
        return ""
    if cat in ("Cn", "Cs", "Co"):
        return ch
    return "".join(" " if char_class(c) & 3 == SPACE else c for c in unicodedata.normalize("NFKC", ch).casefold())


@functools.lru_cache(maxsize=None)
def compose(base: str, mark: str) -> str | None:
    """Canonical composition of a pair, or None (composition exclusions and singletons never compose)."""
    if not char_class(mark) & COMBINING:
        return None
    c = unicodedata.normalize("NFC", base + mark)
    if len(c) != 1:
        return None
    d = unicodedata.decomposition(c)
    if not d or d.startswith("<") or [int(x, 16) for x in d.split()] != [ord(base), ord(mark)]:
        return None
    return c


def normalize(text: str) -> tuple[str, list[int], list[int]]:
    """``(normalised, begin, end)``: character ``k`` of ``normalised`` comes from ``text[begin[k]:end[k]]``."""
    out: list[str] = []
    begin: list[int] = []
    end: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        j = i + 1
        while j < n and char_class(text[j]) & COMBINING:
            composed = compose(c, text[j])
            if composed is None:
                break
            c, j = composed, j + 1
        for o in fold(c):
            if char_class(o) & 3 == SPACE:
                if not out or out[-1] == " ":
                    continue
                o = " "
            out.append(o)
            begin.append(i)
            end.append(j)
        i = j
    return "".join(out), begin, end


def normalize_name(name: str) -> str:
    return normalize(name)[0].rstrip(" ")


def boundary(norm: str, i: int) -> bool:
    return i == 0 or i >= len(norm) or not (is_word(norm[i - 1]) and is_word(norm[i]))


@functools.cache
def native_tables() -> dict[str, np.ndarray]:
    """Arrays for ``_core.Normalizer``: fold/class per code point, expansion pool, composition pairs."""
    fold_table = np.arange(NUM_CODE_POINTS, dtype=np.uint32)
    cls = np.full(NUM_CODE_POINTS, OTHER, dtype=np.uint8)
    pool: list[int] = []
    pool_indptr = [0]
    comp_keys: list[int] = []
    comp_vals: list[int] = []
    for cp in range(NUM_CODE_POINTS):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat in ("Cn", "Cs", "Co"):
            continue
        cls[cp] = char_class(ch)
        f = fold(ch)
        if len(f) == 1:
            fold_table[cp] = ord(f)
        else:
            fold_table[cp] = MULTI | (len(pool_indptr) - 1)
            pool.extend(map(ord, f))
            pool_indptr.append(len(pool))
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                base, mark = chr(int(parts[0], 16)), chr(int(parts[1], 16))
                if compose(base, mark) == ch:
                    comp_keys.append((ord(base) << 21) | ord(mark))
                    comp_vals.append(cp)
    return {
        "fold": fold_table,
        "cls": cls,
        "pool": np.asarray(pool, dtype=np.uint32),
        "pool_indptr": np.asarray(pool_indptr, dtype=np.int64),
        "comp_keys": np.asarray(comp_keys, dtype=np.uint64),
        "comp_vals": np.asarray(comp_vals, dtype=np.uint32),
    }


@functools.cache
def native_normalizer():
    from kvi_engine import _core
    return _core.Normalizer(**native_tables())
