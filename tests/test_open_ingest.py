"""Open ingestion, stage by stage, on real paragraphs of the shared sets (2WikiMultihopQA, MuSiQue, PubMedQA):
splitting, titles as entities, pronoun attachment, literals as values (never walked through), open triples with
provenance, sentence capsules, and the dictionary pass's refusal of common words. Reads ../shared/data in place."""
import pytest

from kvi_engine.capsules.capsule import Capsule
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.graph.names import name_key
from kvi_engine.ingest.assets import build_open_assets
from kvi_engine.testing import realdata

WIKI = ["2wiki-00000", "2wiki-00004", "2wiki-00005", "2wiki-00006", "2wiki-00007", "2wiki-00008", "2wiki-00009",
        "2wiki-00012", "2wiki-00018", "2wiki-00298", "2wiki-00320", "2wiki-00546", "2wiki-00633"]
MUSIQUE = ["musique-00083", "musique-00185"]


@pytest.fixture(scope="module")
def assets():
    realdata.pipeline()
    docs = realdata.documents("2wikimultihopqa_dev200", WIKI) + realdata.documents("musique_ans_dev100", MUSIQUE)
    pub = realdata.documents("pubmedqa_pqal")[:3]
    return build_open_assets(docs + pub)


@pytest.fixture(scope="module")
def texts(assets):
    return [s.text for s in assets.store]


def by_name(assets):
    return {e.name: e for e in assets.entities}


@pytest.mark.parametrize("sentence", [
    "Bhoomiyude Avakashikal ( English:\" The Inheritors of the Earth\") is a 2012 Malayalam feature film written and "
    "directed by T. V. Chandran.",                                                           # initials
    "At the age of 19, she left New Zealand and settled in England, where she became a friend of writers such as "
    "D. H. Lawrence and Virginia Woolf.",
    "Dr. Petrie is absent from this film.",                                                  # abbreviation
    "According to the\" Journal Citation Reports\", the journal has a 2017 impact factor of 3.882.",   # decimal
    "There are 15 counties in the U.S. state of Arizona.",
    "The editor- in- chief is Prof. Andrea Serrani( The Ohio State University).",             # parentheses
])
def test_splitting_survives_initials_abbreviations_decimals_parentheses(texts, sentence):
    assert sentence in texts


def test_sentence_ids_are_stable_and_ordered(assets):
    ids = [s.id for s in assets.store if s.doc_id == "2wiki-00298"]
    assert ids == [f"2wiki-00298:s{k}" for k in range(1, len(ids) + 1)] and len(ids) >= 8


def test_disambiguated_title_is_its_name_with_a_type(assets):
    e = by_name(assets)["Polish-Russian War (film)"]
    assert e.aliases[0] == "Polish-Russian War" and e.type == "film" and e.description == "film"
    snow = by_name(assets)["Snow White and the Seven Dwarfs (1955 film)"]
    assert snow.type == "film" and snow.description == "1955 film" and "Snow White and the Seven Dwarfs" in snow.aliases


def test_identifier_titles_name_no_entity(assets):
    assert not any(e.name.startswith("PMID") for e in assets.entities)
    pub = [c for c in assets.capsules if c.kind == "sentence" and c.sentence_id.startswith("pmid")]
    assert pub and all(c.subject == c.sentence_id.rsplit(":s", 1)[0] or c.entities for c in pub)


def test_pronoun_sentences_attach_to_the_title_entity(assets):
    sc = {c.sentence_id: c for c in assets.capsules if c.kind == "sentence"}
    assert "Katherine Mansfield" in sc["2wiki-00320:s2"].entities          # "..., she left New Zealand ..."
    assert "Alexandre Gaydamak" in sc["2wiki-00546:s2"].entities           # "..., he is the only son of ..."
    son = [c for c in assets.capsules if c.relation == "son_of" and c.sentence_id == "2wiki-00546:s2"]
    assert [(c.subject, c.object) for c in son] == [("Alexandre Gaydamak", "Arcadi Gaydamak")]


def test_literals_are_values_never_entities(assets):
    names = {e.name for e in assets.entities}
    assert not names & {"2012", "1932", "2017", "3.882", "19", "15"}
    lits = [c for c in assets.capsules if c.kind == "triple" and c.literal]
    assert lits and all(c.object not in names for c in lits)
    dated = [c for c in assets.capsules if c.kind == "triple" and any(lab == "DATE" for lab, _ in c.attributes)]
    assert dated, "dates under a predicate become the triple's attributes"


def test_literals_are_not_walked_through(assets):
    caps = list(assets.capsules)
    g = KnowledgeGraph.from_capsules(caps, assets.entities)
    lit = g.literal_mask
    assert lit.any()
    objs = g.objects
    for e in lit.nonzero()[0][:200]:
        assert (objs == e).sum() == 1 and (g.subjects == e).sum() == 0  # a leaf of its own
    # two films of 1932 are not two hops apart through the year
    year = [t for t in range(g.num_triples) if g.entity_name(int(objs[t])) == "1932" and lit[objs[t]]]
    for t in year:
        tr = g.traverse([int(g.subjects[t])], max_hops=2, direction="both")
        reached = {int(objs[x]) for x in tr.triple_ids} | {int(g.subjects[x]) for x in tr.triple_ids}
        others = {int(objs[u]) for u in year if u != t}
        assert not reached & others


def test_open_triples_carry_their_provenance(assets):
    store = {s.id: s.text for s in assets.store}
    triples = [c for c in assets.capsules if c.kind == "triple"]
    assert len(triples) > 30
    for c in triples:
        assert store[c.sentence_id] == c.sentence
    pairs = {(c.subject, c.relation, c.object) for c in triples}
    assert ("Polish-Russian War (film)", "directed_by", "Xawery Żuławski") in pairs   # the title's name, resolved
    assert ("Xawery Żuławski", "son_of", "Małgorzata Braunek") in pairs                # "He is the son of ..."
    assert ("The Mask of Fu Manchu", "written_by", "Edgar Allan Woolf") in pairs      # each conjunct its own
    assert ("Katherine Mansfield", "settle_in", "England") in pairs


def test_every_sentence_is_a_capsule_linked_to_what_it_mentions(assets):
    sc = [c for c in assets.capsules if c.kind == "sentence"]
    assert [c.sentence_id for c in sc] == [s.id for s in assets.store]
    d = {c.sentence_id: c for c in sc}
    assert {"D. H. Lawrence", "Virginia Woolf", "New Zealand", "England"} <= set(d["2wiki-00320:s2"].entities)
    # the dictionary pass: a name found by NER in one document links where it recurs in another
    names = set(by_name(assets))
    for c in sc:
        assert set(c.entities) <= names


def test_accents_and_case_do_not_matter_for_names(assets):
    assert name_key("Xawery Żuławski") == name_key("XAWERY ZULAWSKI") == "xawery zulawski"
    mention = [c for c in assets.capsules if c.kind == "sentence" and "Xawery Żuławski" in c.entities]
    assert any(c.sentence_id.startswith("2wiki-00004") for c in mention)  # the film's paragraph names its director


def test_common_words_never_link(assets):
    names = {e.name for e in assets.entities}
    assert not names & {"This", "Young", "film", "The film", "It", "He", "She"}
    for c in assets.capsules:
        if c.kind == "sentence":
            assert not set(c.entities) & {"This", "Young", "film"}


def test_sentence_capsules_round_trip_through_jsonl(tmp_path, assets):
    from kvi_engine.capsules.capsule import load_capsules, save_capsules

    caps = assets.capsules[:50]
    save_capsules(caps, tmp_path / "c.jsonl")
    assert load_capsules(tmp_path / "c.jsonl") == caps
    with pytest.raises(ValueError, match="sentence text"):
        Capsule("x", "states", "d:s1", "d:s1", "", kind="sentence")


def test_triple_path_falls_back_to_every_relation_when_pruning_empties_it(assets):
    """Triple-only knowledge (no sentence capsules) goes through the traversal: "born" asks for born_in, which
    Xawery Żuławski's paragraph never states; pruning would leave nothing, so every relation is traversed and the
    trace says so. A minimum score leaves slots empty; anchors that say nothing are never injected."""
    from kvi_engine.capsules.statements import anchor_capsule, has_content
    from kvi_engine.retrieval.capsule_retriever import INTENT_FALLBACK, CapsuleRetriever, RetrievalConfig

    caps = [c for c in assets.capsules if c.kind == "triple"] + [anchor_capsule(e) for e in assets.entities]
    graph = KnowledgeGraph.from_capsules(caps, assets.entities)
    born = "Where was Xawery Żuławski born?"
    pruned, = CapsuleRetriever(graph, config=RetrievalConfig(top_k=4)).retrieve([born])
    assert pruned.entities == ["Xawery Żuławski"] and pruned.intent.relations == {"born_in"}
    assert pruned.fallback == INTENT_FALLBACK
    got = {sc.capsule.triple for sc in pruned.selection.capsules}
    assert ("Xawery Żuławski", "son_of", "Małgorzata Braunek") in got and len(got) == 4
    assert ("Xawery Żuławski", "son_of", "Andrzej Żuławski") in {c.triple for c in caps}   # the stray conjunct
    ents = by_name(assets)
    assert pruned.anchor_ids and not all(has_content(e) for e in assets.entities)
    for cid in pruned.anchor_ids:
        assert caps[cid].kind == "anchor" and has_content(ents[caps[cid].subject])
    strict, = CapsuleRetriever(graph, config=RetrievalConfig(top_k=4, min_score=10.0)).retrieve([born])
    assert strict.selection.capsules == [] and strict.fallback == INTENT_FALLBACK
    directed, = CapsuleRetriever(graph, config=RetrievalConfig(top_k=4)).retrieve(
        ["Who directed Polish-Russian War?"])
    assert directed.fallback is None
    assert ("Polish-Russian War (film)", "directed_by", "Xawery Żuławski") in {
        sc.capsule.triple for sc in directed.selection.capsules}
