"""Open relation triples from spaCy's dependency parse (ClearNLP labels); provenance is the sentence they come from.

For every predicate of a sentence (the root verb, verbs conjoined to it, and participles modifying the copula's
complement: "X is a 2009 film directed by Y"):

- subject: ``nsubj`` / ``nsubjpass`` (inherited by conjoined verbs and by participles of the complement);
- object and predicate: ``dobj`` / ``attr`` / ``oprd`` / ``dative`` -> the verb's lemma ("win"), ``is_a`` for the
  copula; ``prep`` / ``agent`` -> its ``pobj`` with predicate verb + preposition ("born_in", "directed_by"); an
  ``attr`` noun with an "of" phrase -> noun + "_of" ("He is the son of A and B": son_of A, son_of B); each conjunct of
  an object gives its own triple.

Arguments are described, not resolved (resolution needs the whole corpus, :mod:`kvi_engine.ingest.assemble`):
``mention`` (an NER name covering the token), ``topic`` (a pronoun, or "the film" in a paragraph titled "... (film)":
the paragraph's title entity), ``literal`` (a DATE / CARDINAL / ... value, never an entity) or ``phrase`` (a noun
phrase, which may still turn out to be a known name). Literal values under the predicate that are not its object
become the triple's attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

LITERAL_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})
PRONOUNS = frozenset({"he", "she", "it", "they", "his", "her", "its", "their", "him", "them", "hers", "theirs"})
_OBJECTS = ("dobj", "attr", "oprd", "dative")
_NP_LEFT = ("compound", "amod", "flat", "nmod", "poss")
MAX_TRIPLES = 12  # per sentence: long enumerations add little and cost compile time


@dataclass(frozen=True, slots=True)
class Arg:
    kind: str         # "mention" | "topic" | "literal" | "phrase"
    text: str = ""    # surface text (literal value, noun phrase); "" for topic
    ref: int = -1     # mention: index into the sentence's NER names
    label: str = ""   # literal: its NER label (DATE, CARDINAL, ...)


@dataclass(frozen=True, slots=True)
class OpenTriple:
    subject: Arg
    predicate: str
    object: Arg
    attributes: tuple[tuple[str, str], ...] = ()  # (label, text) of literal values under the predicate


def _subject(verb):
    for ch in verb.children:
        if ch.dep_ in ("nsubj", "nsubjpass"):
            return ch
    if verb.dep_ == "conj":
        return _subject(verb.head) if verb.head != verb else None
    if verb.dep_ in ("acl", "relcl") and verb.head.dep_ == "attr":  # "X is a film directed by Y"
        return _subject(verb.head.head)
    if verb.dep_ in ("acl", "relcl"):
        return verb.head
    return None


def _argument(tok, mention_of: dict[int, int], topic_type: str | None) -> Arg | None:
    if tok.lower_ in PRONOUNS and topic_type is not None:
        return Arg("topic")
    if tok.i in mention_of:
        return Arg("mention", ref=mention_of[tok.i])
    for t in tok.subtree:
        if t.dep_ in ("compound", "flat", "poss", "appos") and t.i in mention_of and t.head == tok:
            return Arg("mention", ref=mention_of[t.i])
    if tok.ent_type_ in LITERAL_LABELS:
        ent = next((e for e in tok.sent.ents if e.start <= tok.i < e.end), None)
        return Arg("literal", ent.text if ent is not None else tok.text, label=tok.ent_type_)
    if topic_type and tok.lower_ == topic_type and \
            any(c.dep_ == "det" and c.lower_ in ("the", "this") for c in tok.children):
        return Arg("topic")
    if tok.pos_ in ("PRON", "DET", "NUM") or tok.is_stop:
        return None
    left = [c for c in tok.lefts if c.dep_ in _NP_LEFT and c.ent_type_ not in LITERAL_LABELS]
    start = min([tok.i, *(c.left_edge.i for c in left)])
    text = " ".join(t.text for t in tok.doc[start:tok.i + 1] if not t.is_punct)
    return Arg("phrase", text) if text else None


def _predicate(verb, lemma: Callable) -> str:
    passive = any(c.dep_ in ("nsubjpass", "auxpass") for c in verb.children) or \
        (verb.dep_ in ("acl", "relcl") and verb.tag_ == "VBN")
    return verb.lower_ if passive else lemma(verb)


def _predicates(sent) -> list:
    root = sent.root
    out = [root, *[c for c in root.children if c.dep_ == "conj" and c.pos_ in ("VERB", "AUX")]]
    for c in root.children:
        if c.dep_ == "attr":
            out += [g for g in c.children if g.dep_ in ("acl", "relcl") and g.pos_ == "VERB"]
    return out


def extract_triples(sent, mention_of: dict[int, int], topic_type: str | None, lemma: Callable) -> list[OpenTriple]:
    """Triples of one parsed sentence. ``mention_of``: token index -> index of the NER name covering it;
    ``topic_type``: the paragraph title's type word ("film"; "" when untyped), None when the paragraph names no
    entity; ``lemma(token)``: a verb's lemma."""
    out: list[OpenTriple] = []
    for verb in _predicates(sent):
        s_tok = _subject(verb)
        subj = _argument(s_tok, mention_of, topic_type) if s_tok is not None else None
        if subj is None:
            continue
        base = _predicate(verb, lemma)
        copula = verb.lemma_ == "be" or base in ("be", "is", "was", "are", "were")
        used: set[int] = set()
        first = len(out)
        for ch in verb.children:
            pairs = []
            if ch.dep_ in _OBJECTS:
                pred = "is_a" if copula and ch.dep_ == "attr" else base
                of = [g for p in ch.children if p.dep_ == "prep" and p.lower_ == "of"
                      for g in p.children if g.dep_ == "pobj"] if ch.dep_ == "attr" else []
                # "the son of A and director B": the parser often hangs the name B on "son", not on A; a name
                # conjoined to a common noun that has an "of" phrase is one more object of that phrase
                stray = [c for c in ch.conjuncts if of and ch.pos_ == "NOUN" and c.pos_ == "PROPN"]
                pairs = [(pred, o) for o in (ch, *ch.conjuncts) if o not in stray]
                pairs += [(f"{ch.lower_}_of", o) for g in of for o in (g, *g.conjuncts, *stray)]
            elif ch.dep_ in ("prep", "agent"):
                pairs = [(f"{base}_{ch.lower_}", o) for g in ch.children if g.dep_ == "pobj"
                         for o in (g, *g.conjuncts)]
            for pred, o_tok in pairs:
                obj = _argument(o_tok, mention_of, topic_type)
                if obj is None:
                    continue
                used.add(o_tok.i)
                out.append(OpenTriple(subj, pred, obj))
        attrs = tuple((e.label_, e.text) for e in sent.ents if e.label_ in LITERAL_LABELS
                      and verb.left_edge.i <= e.start and e.end - 1 <= verb.right_edge.i and e.root.i not in used)
        if attrs:
            out[first:] = [OpenTriple(t.subject, t.predicate, t.object, attrs) for t in out[first:]]
        if len(out) >= MAX_TRIPLES:
            break
    return out[:MAX_TRIPLES]
