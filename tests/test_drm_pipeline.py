"""Retrieval on the sample corpus: linking -> intent -> traversal -> DRM -> selection finds the supporting triples of
single- and 2-hop questions, ids point at the right capsules/anchors, and bad input is handled."""
import json

import pytest

from kvi_engine.capsules.capsule import load_capsules, load_entities
from kvi_engine.capsules.statements import anchor_capsule
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.retrieval.capsule_retriever import NO_ENTITY, CapsuleRetriever, RetrievalConfig
from kvi_engine.utils.paths import sample_dir

D = sample_dir()
QUESTIONS = [json.loads(line) for line in (D / "questions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def world():
    ents = load_entities(D / "entities.jsonl")
    caps = load_capsules(D / "capsules.jsonl") + [anchor_capsule(e) for e in ents]
    return caps, KnowledgeGraph.from_capsules(caps, ents)


@pytest.fixture(scope="module")
def results(world):
    _, graph = world
    return CapsuleRetriever(graph, config=RetrievalConfig(top_k=4)).retrieve([q["question"] for q in QUESTIONS])


def test_support_is_ranked_first_and_selected(results):
    one_hop_first, two_hop_selected = 0, 0
    for q, r in zip(QUESTIONS, results):
        support = {tuple(t) for t in q["support"]}
        assert support <= {sc.capsule.triple for sc in r.ranked}, f"{q['id']}: traversal missed support"
        if q["hops"] == 1:
            one_hop_first += r.ranked[0].capsule.triple in support
        else:
            two_hop_selected += support <= {sc.capsule.triple for sc in r.selection.capsules}
    # measured: 16/16 and 16/16 (without intent pruning of the traversal: 16/16 and 10/16)
    assert one_hop_first == 16 and two_hop_selected >= 15


def test_ids_point_at_the_right_capsules_and_anchors(world, results):
    caps, _ = world
    for r in results:
        assert len(r.capsule_ids) == len(r.selection.capsules) + len(r.anchor_ids)
        for sc in r.selection.capsules:
            assert caps[sc.index].triple == sc.capsule.triple and caps[sc.index].kind == "triple"
        for name, cid in zip(r.selection.anchors, r.anchor_ids):
            assert caps[cid].kind == "anchor" and caps[cid].subject == name
        assert len(r.anchor_ids) <= 4 and r.evidence and r.fallback is None
    r = results[17]  # "Who founded the company that produces Velotrex?"
    assert r.entities == ["Velotrex"] and r.intent.relations == {"founded_by", "produces"}
    assert r.evidence[:2] == ["Quillon Biotech produces Velotrex.", "Quillon Biotech was founded by Ines Marrow."]


def test_budget_no_entity_and_empty_question(world):
    caps, graph = world
    lengths = [14] * len(caps)
    retriever = CapsuleRetriever(graph, config=RetrievalConfig(top_k=8, budget_tokens=40, max_anchors=1),
                                 capsule_tokens=lengths)
    r, none = retriever.retrieve(["Who founded the company that produces Velotrex?", "Tell me a joke."])
    assert len(r.selection.capsules) == 2 and len(r.anchor_ids) == 0 and r.selection.tokens == 28
    assert none.fallback == NO_ENTITY and none.capsule_ids == [] and none.evidence == []
    with pytest.raises(ValueError, match="question #1 is empty"):
        retriever.retrieve(["Who leads Corvane Systems?", "  "])
