"""QA datasets: JSONL, one ``{"id", "question", "answers": [...]}`` object per line, optionally ``hops`` (1, 2, ...),
``support`` (``[[subject, relation, object], ...]``, for analysis only: never ingested) and ``lang``.
Unknown fields, empty questions, empty answer lists and duplicate ids are errors naming the file and line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvi_engine.utils.jsonl import read_jsonl

ALLOWED_FIELDS = ("id", "question", "answers", "hops", "support", "lang")


class DatasetFormatError(ValueError):
    """Malformed dataset line; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class QAItem:
    id: str
    question: str
    answers: tuple[str, ...]
    hops: int | None = None
    support: tuple[tuple[str, str, str], ...] = ()
    lang: str = ""


def _item(obj: dict, where: str) -> QAItem:
    unknown = set(obj) - set(ALLOWED_FIELDS)
    if unknown:
        raise DatasetFormatError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {list(ALLOWED_FIELDS)}")
    qid = obj.get("id")
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid.strip():
        raise DatasetFormatError(f"{where}: 'id' must be a non-empty string or an integer")
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise DatasetFormatError(f"{where}: question {qid!r} is empty or not a string")
    answers = obj.get("answers")
    if (not isinstance(answers, list) or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)):
        raise DatasetFormatError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
    hops = obj.get("hops")
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or hops < 1):
        raise DatasetFormatError(f"{where}: 'hops' must be a positive integer, got {hops!r}")
    support = obj.get("support", [])
    if not isinstance(support, list) or not all(
            isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in support):
        raise DatasetFormatError(f"{where}: 'support' must be a list of [subject, relation, object] string triples")
    lang = obj.get("lang", "")
    if not isinstance(lang, str):
        raise DatasetFormatError(f"{where}: 'lang' must be a string")
    return QAItem(qid, q.strip(), tuple(answers), hops, tuple(tuple(t) for t in support), lang)


def load_dataset(path: str | os.PathLike) -> list[QAItem]:
    path = Path(path)
    items: list[QAItem] = []
    first_line: dict[str, int] = {}
    for lineno, obj in read_jsonl(path, DatasetFormatError, "dataset file"):
        where = f"{path}:{lineno}"
        item = _item(obj, where)
        if item.id in first_line:
            raise DatasetFormatError(f"{where}: id {item.id!r} already used on line {first_line[item.id]}")
        first_line[item.id] = lineno
        items.append(item)
    if not items:
        raise DatasetFormatError(f"{path}: dataset is empty")
    return items
