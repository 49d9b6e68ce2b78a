"""Question-side entity linking over a knowledge graph with mentions: exact names, priors, a type-word boost and a
fuzzy token fallback.

1. Exact: the C++ entity linker (or its twin) over the graph's names and aliases as
   :func:`~kvi_engine.graph.names.name_key` keys, on the accent-folded question: longest match, insensitive to case,
   punctuation, accents, possessives and a leading article. The same rule as the ingestion's dictionary pass: names
   of common words link only where written as a name, a one-word common name ("This", "Young", "film") never.
2. Priors: the candidates of one name ("Kiss and Tell" names a film and a play) share it in proportion to how many
   sentences mention each; a candidate whose type word ("film") the question contains (outside the name) counts
   ``type_boost`` times more, one whose type word it lacks that many times less. Scores are scaled so the best
   candidate of a span has 1.
3. Fuzzy: a capitalised run of words the exact pass did not cover links to entities sharing its rare words, scored by
   IDF-weighted token overlap (>= ``fuzzy_min``; a one-word run only when its word names at most 3 entities).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from kvi_engine.graph.linker import EntityLinker
from kvi_engine.graph.names import CONNECTORS, STOPWORDS, WordStats, fold_accents, name_key, words

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Link:
    entity: int     # graph entity id
    score: float    # in (0, 1]
    span: str       # the question's words that named it
    how: str        # "exact" | "fuzzy"


def _title_type(type_: str, description: str) -> str:
    """The type word a title's disambiguator gave ("film" of "1945 film"); "" for types of other origin."""
    t = type_.casefold()
    return t if t and t.isalpha() and t in description.casefold().split() else ""


class QuestionLinker:
    def __init__(self, graph, stats: WordStats | None = None, *, fuzzy_min: float = 0.6, type_boost: float = 2.0,
                 backend: str | None = None):
        self.graph = graph
        self.fuzzy_min, self.type_boost = fuzzy_min, type_boost
        self.stats = stats if stats is not None else WordStats(graph.sentence(k)[1] for k in range(graph.num_sentences))
        literal = graph.literal_mask
        m = graph.mentions
        self.df = np.diff(m.entity_indptr).astype(np.float64)
        self.types: dict[int, str] = {}
        keys: dict[str, list[int]] = {}
        for e, ent in enumerate(graph.entities):
            if literal[e]:
                continue
            self.types[e] = _title_type(ent.type, ent.description)
            for n in ent.names:
                k = name_key(n)
                if k and e not in keys.setdefault(k, []):
                    keys[k].append(e)
        self.keys = keys
        names, ids = [], []
        for k, es in keys.items():
            if self.stats.linkable(k) or len(k.split()) >= 2:
                names += [k] * len(es)
                ids += es
        self.linker = EntityLinker.build(names, np.asarray(ids, np.int64), backend=backend) if names else None
        # fuzzy fallback: rare words of the names -> entities
        self.tok_index: dict[str, set[int]] = {}
        self.ent_tokens: dict[int, set[str]] = {}
        for k, es in keys.items():
            toks = set(k.split())
            for e in es:
                self.ent_tokens.setdefault(e, set()).update(toks)
            for t in toks:
                if t not in STOPWORDS and not self.stats.is_common(t):
                    self.tok_index.setdefault(t, set()).update(es)
        n = max(len(self.types), 1)
        self.idf = {t: math.log(1 + n / len(es)) for t, es in self.tok_index.items()}
        self._default_idf = math.log(1 + n)

    def link(self, question: str) -> list[Link]:
        """Links for one question, best first."""
        folded = fold_accents(question)
        spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(folded)]
        q_words = {w.casefold() for _, _, w in spans}
        links: dict[int, Link] = {}
        covered: set[int] = set()
        if self.linker is not None:
            for mention in self.linker.link([folded], num_threads=1)[0]:
                surface = question[mention.start:mention.end]
                key = " ".join(w.casefold() for w in words(surface))
                if not self.stats.linkable_surface(key, surface):
                    continue
                covered.update(i for i, (a, b, _) in enumerate(spans) if a < mention.end and mention.start < b)
                self._exact(mention, surface, set(key.split()), q_words, links)
        for run in self._capitalised_runs([w for _, _, w in spans], covered):
            for e, s in self._fuzzy(run):
                if e not in links:
                    links[e] = Link(e, s, " ".join(run), "fuzzy")
        return sorted(links.values(), key=lambda x: (-x.score, x.entity))

    def _exact(self, mention, surface: str, span_words: set[str], q_words: set[str], links: dict) -> None:
        cands = [e for e, _ in mention.candidates]
        raw = {e: self.df[e] + 1.0 for e in cands}
        total = sum(raw.values())
        scores = {}
        for e in cands:
            p = raw[e] / total
            kind = self.types.get(e, "")
            if len(cands) > 1 and kind:
                p *= self.type_boost if (kind in q_words and kind not in span_words) else 1.0 / self.type_boost
            scores[e] = p
        best = max(scores.values())
        for e, p in scores.items():
            if e not in links or links[e].score < p / best:
                links[e] = Link(e, p / best, surface, "exact")

    @staticmethod
    def _capitalised_runs(cased: list[str], covered: set[int]) -> list[list[str]]:
        runs, cur = [], []
        for i, w in enumerate(cased):
            ok = i not in covered and (w[:1].isupper() or (bool(cur) and w.casefold() in CONNECTORS))
            if ok and (i > 0 or w.casefold() not in STOPWORDS):
                cur.append(w)
            else:
                if cur:
                    runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        out = []
        for r in runs:
            while r and r[-1].casefold() in CONNECTORS:
                r = r[:-1]
            if r:
                out.append(r)
        return out

    def _fuzzy(self, run: list[str], limit: int = 3) -> list[tuple[int, float]]:
        toks = [w.casefold() for w in run if w.casefold() in self.tok_index]
        if not toks or (len(run) == 1 and len(self.tok_index[toks[0]]) > 3):
            return []
        shared: dict[int, float] = {}
        for t in toks:
            for e in self.tok_index[t]:
                shared[e] = shared.get(e, 0.0) + self.idf[t]
        q = {w.casefold() for w in run} - STOPWORDS
        out = []
        for e, s in shared.items():
            union = sum(self.idf.get(t, self._default_idf) for t in q | (self.ent_tokens[e] - STOPWORDS))
            score = s / union if union else 0.0
            if score >= self.fuzzy_min:
                out.append((e, score))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out[:limit]
