"""Text units shared by relevance scoring and grounding: content tokens for Latin and CJK text.

Latin words are lower-cased, stop words dropped and crudely stemmed ("founded", "founder" -> "found"); CJK runs
become overlapping character bigrams (a single character stays a unigram), the usual unit for CJK overlap since
there are no spaces to split words on.
"""
from __future__ import annotations

import re
import unicodedata

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)
_CJK_RUN = re.compile(rf"[{_CJK}]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "er", "ed", "es", "s", "e")

STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from as into onto about over under than then that this these those
is are was were be been being am do does did has have had having it its it's he she they them his her their we you i
me my our your who whom whose what which where when why how there here not no yes so such can could would should will
shall may might must also very just only any some all each both other same own too s t one
""".split())


def stem(word: str) -> str:
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)]
    return word


def is_cjk(text: str) -> bool:
    return bool(_CJK_RUN.search(text))


def content_tokens(text: str) -> list[str]:
    """Stemmed non-stop Latin words and CJK character bigrams, in order of appearance."""
    out: list[str] = []
    for tok in _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _CJK_RUN.fullmatch(tok):
            out.extend([tok] if len(tok) == 1 else [tok[i:i + 2] for i in range(len(tok) - 1)])
        elif tok not in STOPWORDS:
            out.append(stem(tok))
    return out
