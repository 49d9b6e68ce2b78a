"""QA datasets: JSONL, one ``{"id", "question", "answers": [...]}`` object per line, optionally

- ``hops``: a positive integer, or a list of the single-hop sub-questions (MuSiQue; ``hops`` is then its length);
- ``support``: gold facts ``[[subject, relation, object], ...]`` (the sample corpus);
- ``supporting``: gold evidence ``[{"doc_id", "sentence"}, ...]`` (``sentence`` null for paragraph-level support);
- ``type``: the question type (2WikiMultihopQA "compositional", MuSiQue "3hop1", ...), ``lang``;
- ``context_doc_ids`` and the extras the shared sets carry (``pmid``, ``year``, ``long_answer``, ...), kept as
  they are in ``extra``.

Gold fields are for evaluation only and never ingested. Unknown fields, empty questions, empty answer lists and
duplicate ids are errors naming the file and line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kvi_engine.utils.jsonl import read_jsonl

ALLOWED_FIELDS = ("id", "question", "answers", "hops", "support", "supporting", "type", "lang", "context_doc_ids")
EXTRA_FIELDS = ("pmid", "year", "long_answer", "answerable", "question_decomposition", "level", "evidences")


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
    supporting: tuple[tuple[str, str | None], ...] = ()   # (doc_id, sentence or None)
    type: str = ""
    context_doc_ids: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def group(self) -> str:
        """The breakdown key: the question type, else "<hops>-hop", else "all"."""
        return self.type or (f"{self.hops}-hop" if self.hops is not None else "all")


def _item(obj: dict, where: str) -> QAItem:
    unknown = set(obj) - set(ALLOWED_FIELDS) - set(EXTRA_FIELDS)
    if unknown:
        raise DatasetFormatError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: "
                                 f"{list(ALLOWED_FIELDS + EXTRA_FIELDS)}")
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
    extra = {k: obj[k] for k in EXTRA_FIELDS if k in obj}
    if isinstance(hops, list):
        if not hops or not all(isinstance(h, dict) for h in hops):
            raise DatasetFormatError(f"{where}: 'hops' as a list must hold one object per sub-question")
        extra["hops"], hops = hops, len(hops)
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or hops < 1):
        raise DatasetFormatError(f"{where}: 'hops' must be a positive integer or a list of sub-questions, "
                                 f"got {hops!r}")
    support = obj.get("support", [])
    if not isinstance(support, list) or not all(
            isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in support):
        raise DatasetFormatError(f"{where}: 'support' must be a list of [subject, relation, object] string triples")
    lang = obj.get("lang", "")
    if not isinstance(lang, str):
        raise DatasetFormatError(f"{where}: 'lang' must be a string")
    supporting = []
    if not isinstance(obj.get("supporting", []), list):
        raise DatasetFormatError(f"{where}: 'supporting' must be a list of {{doc_id, sentence}} objects")
    for n, s in enumerate(obj.get("supporting", [])):
        if not isinstance(s, dict) or set(s) - {"doc_id", "sentence"} or not isinstance(s.get("doc_id"), str) \
                or not s["doc_id"] or not isinstance(s.get("sentence"), (str, type(None))):
            raise DatasetFormatError(f"{where}: 'supporting'[{n}] must be {{\"doc_id\": str, \"sentence\": str | null}}")
        supporting.append((s["doc_id"], s.get("sentence") or None))
    qtype = obj.get("type", "")
    if not isinstance(qtype, str):
        raise DatasetFormatError(f"{where}: 'type' must be a string")
    ctx = obj.get("context_doc_ids", [])
    if not isinstance(ctx, list) or not all(isinstance(d, str) for d in ctx):
        raise DatasetFormatError(f"{where}: 'context_doc_ids' must be a list of document ids")
    return QAItem(qid, q.strip(), tuple(answers), hops, tuple(tuple(t) for t in support), lang, tuple(supporting),
                  qtype, tuple(ctx), extra)


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
