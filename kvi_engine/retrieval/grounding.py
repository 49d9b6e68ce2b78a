"""Grounding filter: drop output sentences that the evidence does not support.

An output sentence is supported when at least ``min_support`` of its content tokens (stemmed non-stop words; CJK
character bigrams, see ``text.content_tokens``) occur in the evidence, pooled over all evidence sentences so that a
2-hop answer stitched from two sentences survives. With ``entities`` given, a sentence that names one of them which
no evidence sentence names is dropped whatever its overlap (a named hallucination). Sentences without content tokens
("Yes.") carry no claim and are kept. With no evidence at all nothing can be checked: the text is returned unchanged
and ``checked`` is False, so methods without retrieval are post-processed by the same code without being emptied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from kvi_engine.ingest.entities import normalize
from kvi_engine.ingest.sentences import split_sentences
from kvi_engine.retrieval.text import content_tokens, is_cjk


@dataclass(frozen=True, slots=True)
class Judgement:
    sentence: str
    support: float  # share of the sentence's content tokens found in the evidence
    kept: bool
    reason: str = ""


@dataclass(slots=True)
class GroundedAnswer:
    text: str
    judgements: list[Judgement] = field(default_factory=list)
    checked: bool = True

    @property
    def dropped(self) -> list[Judgement]:
        return [j for j in self.judgements if not j.kept]


class GroundingFilter:
    def __init__(self, min_support: float = 0.5, entities: Iterable[str] = (), fallback: str = ""):
        if not 0.0 <= min_support <= 1.0:
            raise ValueError(f"min_support must be in [0, 1], got {min_support}")
        self.min_support = min_support
        self.entities = {normalize(e): e for e in entities if normalize(e)}
        self.fallback = fallback

    def __call__(self, output: str, evidence: Sequence[str]) -> GroundedAnswer:
        return self.filter(output, evidence)

    def filter(self, output: str, evidence: Sequence[str]) -> GroundedAnswer:
        sentences = [s for line in output.splitlines() for s in split_sentences(line)]
        if not any(e.strip() for e in evidence):
            return GroundedAnswer(output.strip(), [Judgement(s, 0.0, True, "no evidence") for s in sentences], False)
        pool = {t for e in evidence for t in content_tokens(e)}
        evidence_text = normalize(" ".join(evidence))
        judgements = [self._judge(s, pool, evidence_text) for s in sentences]
        kept = [j.sentence for j in judgements if j.kept]
        joiner = "" if kept and all(is_cjk(k) for k in kept) else " "
        return GroundedAnswer(joiner.join(kept) if kept else self.fallback, judgements)

    def filter_batch(self, outputs: Sequence[str], evidence: Sequence[Sequence[str]]) -> list[GroundedAnswer]:
        if len(outputs) != len(evidence):
            raise ValueError(f"{len(outputs)} outputs but {len(evidence)} evidence lists")
        return [self.filter(o, e) for o, e in zip(outputs, evidence)]

    def _judge(self, sentence: str, pool: set[str], evidence_text: str) -> Judgement:
        toks = set(content_tokens(sentence))
        if not toks:
            return Judgement(sentence, 1.0, True, "no content")
        support = len(toks & pool) / len(toks)
        if self.entities:
            said = normalize(sentence)
            missing = [name for key, name in self.entities.items() if key in said and key not in evidence_text]
            if missing:
                return Judgement(sentence, support, False, f"names {missing[0]!r}, absent from the evidence")
        if support < self.min_support:
            return Judgement(sentence, support, False, f"support {support:.2f} < {self.min_support}")
        return Judgement(sentence, support, True)
