"""The shipped sample corpus is self-consistent: every capsule's provenance is a real sentence of the corpus, every
question's supporting triples exist, and 2-hop questions really chain through a shared entity."""
import json

import pytest

from kvi_engine.capsules.capsule import load_capsules, load_entities
from kvi_engine.capsules.statements import DEFAULT_TEMPLATES
from kvi_engine.ingest import load_documents, sentence_store_from_documents
from kvi_engine.utils.paths import sample_dir

SAMPLE = sample_dir()


@pytest.fixture(scope="module")
def sample():
    caps = load_capsules(SAMPLE / "capsules.jsonl")
    ents = load_entities(SAMPLE / "entities.jsonl")
    store = sentence_store_from_documents(load_documents(SAMPLE / "docs.jsonl"))
    questions = [json.loads(line) for line in (SAMPLE / "questions.jsonl").read_text().splitlines()]
    return caps, ents, store, questions


def test_sizes(sample):
    caps, ents, store, questions = sample
    assert len({s.doc_id for s in store}) >= 20
    assert len(ents) >= 20 and len(caps) >= 40
    hops = [q["hops"] for q in questions]
    assert hops.count(1) >= 10 and hops.count(2) >= 10


def test_capsule_provenance_points_into_the_corpus(sample):
    caps, ents, store, _ = sample
    names = {n for e in ents for n in e.names}
    for c in caps:
        assert store.get(c.sentence_id).text == c.sentence, c
        assert c.relation in DEFAULT_TEMPLATES, c.relation
        assert c.subject in names
        assert c.object in names or c.object.isdigit()


def test_questions_are_supported_and_chain(sample):
    caps, _, _, questions = sample
    triples = {c.triple for c in caps}
    for q in questions:
        support = [tuple(t) for t in q["support"]]
        assert len(support) == q["hops"] and all(t in triples for t in support), q["id"]
        ends = [{t[0], t[2]} for t in support]
        assert any(a in ends[-1] for a in q["answers"]), q["id"]
        if q["hops"] == 2:
            assert ends[0] & ends[1], f"{q['id']}: the two hops share no entity"
            assert not any(a in q["question"] for a in q["answers"]), q["id"]
