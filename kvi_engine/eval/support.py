"""Support metrics: how much of each question's gold evidence reached the model, per method and per question type.
Model-independent, so meaningful even with a random model.

Gold units of a question, located in the sentence store (documents split by whatever ingestion ran):

- a supporting sentence (``supporting: [{"doc_id", "sentence": "..."}]``, 2WikiMultihopQA) is found in its document
  (whitespace ignored); it is *reached* when the sentences of that document that reached the model cover at least
  ``cover`` (default half) of its characters -- our sentence boundaries need not be the source's;
- a supporting paragraph (``"sentence": null``: MuSiQue, PubMedQA) is reached when any of its sentences is;
- a supporting fact (``support: [[subject, relation, object]]``, the sample corpus) is reached when its provenance
  sentence (the capsule with that triple) is.

A sentence reaches the model as prompt text, or as an injected capsule whose provenance it is (``Trace.reached``).
Per question: support_recall = share of its units reached; support_all = 1 if every unit is; doc_recall = share of
its gold documents touched by any reached sentence. Every method is averaged over the same questions (those with gold
evidence), overall and per :attr:`~kvi_engine.eval.dataset.QAItem.group` (type, else hops).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

KEYS = ("support_recall", "support_all", "doc_recall")


def _squeeze(text: str) -> str:
    return "".join(text.split())


class SupportGold:
    """Gold units of questions, located in a sentence store."""

    def __init__(self, store, capsules=(), cover: float = 0.5):
        if not 0 < cover <= 1:
            raise ValueError(f"cover must be in (0, 1], got {cover}")
        self.cover = cover
        self.doc_text: dict[str, str] = {}
        self.span: dict[str, tuple[str, int, int]] = {}   # sentence id -> (doc, start, end) in the squeezed doc
        parts: dict[str, list[str]] = defaultdict(list)
        lengths: dict[str, int] = defaultdict(int)
        for s in store:
            t = _squeeze(s.text)
            self.span[s.id] = (s.doc_id, lengths[s.doc_id], lengths[s.doc_id] + len(t))
            parts[s.doc_id].append(t)
            lengths[s.doc_id] += len(t)
        self.doc_text = {d: "".join(p) for d, p in parts.items()}
        self.fact_sentence = {c.triple: c.sentence_id for c in capsules if c.kind == "triple" and c.sentence_id}

    def units(self, item) -> list[tuple]:
        """``(doc, start, end)`` per supporting sentence, ``(doc, None, None)`` per paragraph, ``("fact", sid)``."""
        out = []
        for doc, sentence in item.supporting:
            if doc not in self.doc_text:
                raise ValueError(f"question {item.id!r}: supporting document {doc!r} is not among the ingested "
                                 f"documents ({len(self.doc_text)} ingested); pass its documents with --docs")
            if sentence is None:
                out.append((doc, None, None))
                continue
            g = _squeeze(sentence)
            a = self.doc_text[doc].find(g)
            if a < 0 or not g:
                raise ValueError(f"question {item.id!r}: supporting sentence not found in document {doc!r}: "
                                 f"{sentence[:60]!r}")
            out.append((doc, a, a + len(g)))
        for t in item.support:
            sid = self.fact_sentence.get(tuple(t))
            out.append(("fact", sid))
        return list(dict.fromkeys(out))

    def score(self, units: list[tuple], reached: Sequence[str]) -> dict[str, float]:
        by_doc: dict[str, list[tuple[int, int]]] = defaultdict(list)
        ids = set(reached)
        for sid in ids:
            if sid in self.span:
                d, a, b = self.span[sid]
                by_doc[d].append((a, b))
        hits = []
        for u in units:
            if u[0] == "fact":
                hits.append(u[1] is not None and u[1] in ids)
            elif u[1] is None:
                hits.append(u[0] in by_doc)
            else:
                doc, a, b = u
                covered = np.zeros(b - a, dtype=bool)
                for s, e in by_doc.get(doc, ()):
                    lo, hi = max(s, a), min(e, b)
                    if lo < hi:
                        covered[lo - a:hi - a] = True
                hits.append(bool(covered.mean() >= self.cover))
        docs = {u[0] for u in units if u[0] != "fact"} | {self.span[u[1]][0] for u in units
                                                           if u[0] == "fact" and u[1] in self.span}
        return {"support_recall": float(np.mean(hits)), "support_all": float(all(hits)),
                "doc_recall": len(docs & set(by_doc)) / len(docs) if docs else float(all(hits))}


def support_report(dataset, reached: Mapping[str, Sequence[Sequence[str]]], store, capsules=(),
                   cover: float = 0.5) -> dict:
    """``{"questions": n, "methods": {method: {support_recall, support_all, doc_recall, n, by_type: {...}}}}``
    (shares in [0, 1]) over the questions that have gold evidence; ``reached[method][i]``: sentence ids that reached
    the model for ``dataset[i]``."""
    gold = SupportGold(store, capsules, cover)
    units = [gold.units(it) for it in dataset]
    scored = [i for i, u in enumerate(units) if u]
    out: dict = {"questions": len(scored), "cover": cover, "methods": {}}
    for name, rows in reached.items():
        if len(rows) != len(dataset):
            raise ValueError(f"{name}: {len(rows)} results for {len(dataset)} questions")
        per = [(dataset[i].group, gold.score(units[i], rows[i])) for i in scored]
        out["methods"][name] = _summary([s for _, s in per]) | {
            "by_type": {g: _summary([s for t, s in per if t == g]) for g in sorted({t for t, _ in per})}}
    return out


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {k: 0.0 for k in KEYS} | {"n": 0}
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {"n": len(rows)}


def support_markdown(report: dict) -> str:
    """The per-method table (and per type) in percent."""
    methods = report["methods"]
    if not methods:
        return ""
    lines = ["", f"Evidence reaching the model ({report['questions']} questions with gold evidence; %): "
             "support_recall / support_all / doc_recall", "",
             "| method | support_recall | support_all | doc_recall |", "|---|---|---|---|"]
    for m, v in methods.items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * v[k]:.1f}" for k in KEYS) + " |")
    types = sorted({t for v in methods.values() for t in v["by_type"]})
    if len(types) > 1:
        lines += ["", "By question type (support_recall / support_all, %):", "",
                  "| method | " + " | ".join(f"{t} (n={methods[next(iter(methods))]['by_type'][t]['n']})"
                                            for t in types) + " |", "|---|" + "---|" * len(types)]
        for m, v in methods.items():
            lines.append(f"| {m} | " + " | ".join(
                f"{100 * v['by_type'][t]['support_recall']:.1f} / {100 * v['by_type'][t]['support_all']:.1f}"
                if t in v["by_type"] else "—" for t in types) + " |")
    return "\n".join(lines) + "\n"
