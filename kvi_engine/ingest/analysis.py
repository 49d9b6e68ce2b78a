"""Per-document analysis with spaCy: sentences, NER names, literal values, whether a sentence is about the
paragraph's subject, and open triples. Each document is analysed on its own (a pure function of the document and
the options), so shards of a corpus can be analysed anywhere and assembled in document order
(:func:`kvi_engine.ingest.assemble.assemble`).

Text is cut into paragraphs at blank lines (Markdown headings dropped, markup removed, as for the rule-based path),
whitespace inside a paragraph collapsed, and each paragraph parsed; spaCy's parser sets the sentence boundaries
(initials, abbreviations, decimals and parentheses survive: "Dr. C. Robert Cargill wrote ...", "$2.5 million
(approx.) in its first year"). Sentence ids are ``<doc id>:s<k>``, k counted from 1 over sentences that hold a
letter or digit. A paragraph longer than ``chunk_chars`` is parsed in pieces cut at a sentence end (or a space).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from kvi_engine.graph.names import STOPWORDS, name_key
from kvi_engine.ingest.documents import Document, DocumentFormatError
from kvi_engine.ingest.nlp import load_pipeline, pipe_exclusions, verb_lemma
from kvi_engine.ingest.openie import LITERAL_LABELS, PRONOUNS, OpenTriple, extract_triples
from kvi_engine.ingest.sentences import paragraphs
from kvi_engine.ingest.titles import Title, parse_title

# NER labels that name things; the LITERAL_LABELS values stay literals (triple attributes, never graph nodes)
ENTITY_LABELS = frozenset({"PERSON", "ORG", "GPE", "LOC", "FAC", "NORP", "EVENT", "WORK_OF_ART", "PRODUCT", "LAW",
                           "LANGUAGE"})


@dataclass(slots=True)
class AnalysisOptions:
    pipeline: str = "en_core_web_sm"
    max_document_chars: int = 2_000_000  # a longer document is an error naming it (split it first)
    chunk_chars: int = 100_000           # longer paragraphs are parsed in pieces (spaCy's limit is 1M)
    batch_size: int = 64
    triples: bool = True

    def __post_init__(self):
        if self.max_document_chars < 1 or self.chunk_chars < 1000 or self.batch_size < 1:
            raise ValueError(f"invalid analysis options {self}")


@dataclass(frozen=True, slots=True)
class NameSpan:
    start: int   # character offsets into the sentence text
    end: int
    text: str
    label: str   # PERSON, ORG, ...


@dataclass(slots=True)
class SentenceAnalysis:
    id: str
    text: str
    names: list[NameSpan] = field(default_factory=list)           # NER names (entity labels only)
    literals: list[tuple[str, str]] = field(default_factory=list)  # (text, label) of DATE, CARDINAL, ... values
    about_topic: str = ""    # "pronoun" | "definite" when the sentence is about the paragraph's title entity
    triples: list[OpenTriple] = field(default_factory=list)


@dataclass(slots=True)
class DocumentAnalysis:
    doc_id: str
    title: Title | None
    sentences: list[SentenceAnalysis] = field(default_factory=list)
    tokens: int = 0


def chunks(text: str, limit: int) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a sentence end (else a space)."""
    start = 0
    while len(text) - start > limit:
        window = text[start:start + limit]
        cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "))
        cut = cut + 1 if cut > 0 else window.rfind(" ")
        cut = limit if cut <= 0 else cut
        yield text[start:start + cut]
        start += cut
    yield text[start:]


def _about_topic(sent, topic_type: str) -> str:
    first = next((t for t in sent if not t.is_punct and not t.is_space), None)
    if first is None:
        return ""
    if first.lower_ in PRONOUNS:
        return "pronoun"
    for ch in sent.root.children:
        if ch.dep_ in ("nsubj", "nsubjpass"):
            if ch.lower_ in PRONOUNS:
                return "pronoun"
            dets = [c.lower_ for c in ch.children if c.dep_ == "det"]
            if dets and dets[0] in ("the", "this") and topic_type and ch.lower_ == topic_type:
                return "definite"
    return ""


def _name_ok(text: str) -> bool:
    k = name_key(text)
    return bool(k) and len(k) >= 2 and k not in STOPWORDS and not k.replace(" ", "").isdigit()


class Analyzer:
    """Runs the spaCy pipeline over documents; ``analyse`` returns one :class:`DocumentAnalysis` per document."""

    def __init__(self, options: AnalysisOptions | None = None, nlp=None):
        self.options = options or AnalysisOptions()
        self.nlp = nlp if nlp is not None else load_pipeline(self.options.pipeline)
        self._exclude = pipe_exclusions(self.nlp)

    def _pieces(self, documents: Sequence[Document]) -> Iterator[tuple[str, int]]:
        for di, d in enumerate(documents):
            for para in paragraphs(d.text, d.markdown):
                for piece in chunks(" ".join(para.split()), self.options.chunk_chars):
                    yield piece, di

    def analyse(self, documents: Sequence[Document], progress: bool = False) -> list[DocumentAnalysis]:
        documents = list(documents)
        limit = self.options.max_document_chars
        for d in documents:
            if len(d.text) > limit:
                raise DocumentFormatError(
                    f"document {d.id!r}: {len(d.text):,} characters, more than the ingestion limit of {limit:,} "
                    f"(split it, or raise max_document_chars / --max-doc-chars)")
        out = [DocumentAnalysis(d.id, parse_title(d.title)) for d in documents]
        counters = [0] * len(documents)
        lemma = lambda tok: verb_lemma(self.nlp, tok)  # noqa: E731
        with tqdm(total=len(documents), desc="analyse", unit="doc", disable=not progress) as bar:
            for doc, di in self.nlp.pipe(self._pieces(documents), as_tuples=True,
                                         batch_size=self.options.batch_size, disable=self._exclude):
                if di > bar.n:
                    bar.update(di - bar.n)
                a = out[di]
                a.tokens += len(doc)
                topic_type = None if a.title is None else a.title.type
                for sent in doc.sents:
                    s = self._sentence(sent, documents[di].id, counters[di] + 1, topic_type, lemma)
                    if s is not None:
                        counters[di] += 1
                        a.sentences.append(s)
            bar.update(len(documents) - bar.n)
        return out

    def _sentence(self, sent, doc_id: str, k: int, topic_type: str | None, lemma) -> SentenceAnalysis | None:
        text = sent.text.strip()
        if not any(ch.isalnum() for ch in text):
            return None
        s0 = sent.start_char + (len(sent.text) - len(sent.text.lstrip()))
        s = SentenceAnalysis(f"{doc_id}:s{k}", text)
        mention_of: dict[int, int] = {}
        for ent in sent.ents:
            if ent.label_ in LITERAL_LABELS:
                s.literals.append((ent.text, ent.label_))
            elif ent.label_ in ENTITY_LABELS and _name_ok(ent.text):
                for tok in ent:
                    mention_of[tok.i] = len(s.names)
                s.names.append(NameSpan(ent.start_char - s0, ent.end_char - s0, ent.text, ent.label_))
        if topic_type is not None:
            s.about_topic = _about_topic(sent, topic_type)
        if self.options.triples:
            s.triples = extract_triples(sent, mention_of, topic_type, lemma)
        return s
