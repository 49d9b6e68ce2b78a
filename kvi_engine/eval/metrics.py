"""Answer metrics. All compare a prediction with every gold answer and take the best.

- canonicalisation: Unicode NFKC, case-folded, punctuation (ASCII, Unicode and CJK) removed, English articles
  (a, an, the) removed, whitespace collapsed.
- strict EM: canonical prediction == canonical gold answer.
- token F1: SQuAD-style bag-of-tokens F1; tokens are words, and each CJK character is its own token.
- relaxed match: the canonical gold answer occurs in the canonical prediction as a whole-token span (CJK: as a
  substring). It credits verbose but correct answers ("It was founded by Ines Marrow.") and nothing else: a
  prediction listing several candidates gets credit if one is right, which is why it is reported beside EM, not
  instead of it.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Sequence

from kvi_engine.retrieval.text import is_cjk

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_CJK_CHAR = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])")


def canonicalize(text: str) -> str:
    s = unicodedata.normalize("NFKC", text).casefold()
    s = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def tokens(text: str) -> list[str]:
    return _CJK_CHAR.sub(r" \1 ", canonicalize(text)).split()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = canonicalize(prediction)
    return float(any(p == canonicalize(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    best = 0.0
    pred = tokens(prediction)
    for a in answers:
        gold = tokens(a)
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def relaxed_match(prediction: str, answers: Sequence[str]) -> float:
    p = canonicalize(prediction)
    if not p:
        return 0.0
    for a in answers:
        g = canonicalize(a)
        if not g:
            continue
        if is_cjk(g):
            if g in p.replace(" ", "") or g in p:
                return 1.0
        elif f" {g} " in f" {p} ":
            return 1.0
    return 0.0


METRICS = {"em": exact_match, "f1": token_f1, "relaxed": relaxed_match}


def score(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    return {name: fn(prediction, answers) for name, fn in METRICS.items()}
