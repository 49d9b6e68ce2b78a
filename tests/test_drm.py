"""DRM relevance scoring: the supporting triple ranks first on hand-made cases; lexical and embedding parts each
matter; the encoder interface is checked; selection respects the token budget and the anchor cap."""
import json

import numpy as np
import pytest

from kvi_engine.capsules.capsule import Capsule, load_capsules
from kvi_engine.retrieval.drm import DRMConfig, DRMScorer, ScoredCapsule, lexical_overlap, select_capsules
from kvi_engine.retrieval.encoder import default_encoder
from kvi_engine.retrieval.intent import IntentClassifier
from kvi_engine.utils.paths import sample_dir

CAPS = load_capsules(sample_dir() / "capsules.jsonl")
QUESTIONS = [json.loads(line) for line in (sample_dir() / "questions.jsonl").read_text().splitlines()]


def around(*entities):
    """Hand-made candidate set: every sample capsule touching one of ``entities`` (what a 1-hop traversal yields)."""
    return [c for c in CAPS if c.subject in entities or c.object in entities]


@pytest.fixture(scope="module")
def minilm():
    return default_encoder()


@pytest.mark.parametrize("question, entity, expected", [
    ("Who founded Quillon Biotech?", "Quillon Biotech", ("Quillon Biotech", "founded_by", "Ines Marrow")),
    ("When was Quillon Biotech founded?", "Quillon Biotech", ("Quillon Biotech", "founded_in", "2011")),
    ("Which drug is used against Grellan fever?", "Grellan fever",
     {("Grellan fever", "treated_by", "Velotrex"), ("Velotrex", "treats", "Grellan fever")}),
    ("What spreads the Grellan virus?", "Grellan virus", ("Grellan virus", "transmitted_by", "copper tick")),
    ("Where was Mira Castellane born?", "Mira Castellane", ("Mira Castellane", "born_in", "Kestrel Bay")),
    ("Who runs Halbrook Pharmaceuticals?", "Halbrook Pharmaceuticals",
     ("Mira Castellane", "leads", "Halbrook Pharmaceuticals")),
])
def test_supporting_triple_ranks_first(minilm, question, entity, expected):
    intent = IntentClassifier(encoder=minilm).classify([question])[0]
    ranked = DRMScorer(minilm).score([question], [around(entity)], relations=[intent.relations])[0]
    expected = expected if isinstance(expected, set) else {expected}
    assert ranked[0].capsule.triple in expected, [(r.capsule.triple, round(r.score, 3)) for r in ranked[:3]]


def test_embedding_breaks_a_lexical_tie(minilm):
    # "lead to" shares no content word with causes/transmitted_by/discovered_by statements beyond the subject
    q = "What illness can the Grellan virus lead to?"
    cands = [c for c in around("Grellan virus") if c.subject == "Grellan virus"]
    lex_only = DRMScorer(config=DRMConfig(alpha=1.0, use_embedding=False)).score([q], [cands])[0]
    assert len({round(r.score, 6) for r in lex_only}) == 1
    ranked = DRMScorer(minilm).score([q], [cands])[0]
    assert ranked[0].capsule.relation == "causes"


def test_lexical_overlap_english_and_cjk():
    assert lexical_overlap("Who founded Quillon Biotech?", "Quillon Biotech was founded by Ines Marrow.") == 1.0
    assert lexical_overlap("Who founded Quillon Biotech?", "Ines Marrow was born in Tamsk.") == 0.0
    q = "格伦病毒引起什么疾病？"
    assert lexical_overlap(q, "格伦病毒引起格伦热。") > lexical_overlap(q, "格伦病毒由铜蜱传播。") > 0


def test_sample_questions_with_intent_rank_support_first(minilm):
    """Against all 56 sample capsules (no graph narrowing), DRM + intent puts a supporting triple first for
    31 of 32 questions (measured); lexical alone gets 29, embedding alone 23."""
    qs = [q["question"] for q in QUESTIONS]
    rels = [m.relations for m in IntentClassifier(encoder=minilm).classify(qs)]
    ranked = DRMScorer(minilm).score(qs, [CAPS] * len(qs), relations=rels)
    top1 = sum(r[0].capsule.triple in {tuple(t) for t in q["support"]} for q, r in zip(QUESTIONS, ranked))
    assert top1 >= 30


def test_hop_decay_and_indices():
    cap = Capsule("A", "leads", "B")
    r = DRMScorer(config=DRMConfig(alpha=1.0, use_embedding=False, hop_decay=0.5)).score(
        ["Who leads B?"], [[cap, cap]], hops=[[2, 1]], indices=[[7, 9]])[0]
    assert [(x.index, x.hop) for x in r] == [(9, 1), (7, 2)]
    assert r[1].score == pytest.approx(r[0].score * 0.5)


class CountingEncoder:
    """Bag-of-words hashing encoder obeying the interface; counts calls to prove batching."""

    def __init__(self, dtype=np.float32, normalise=True):
        self.calls, self.dtype, self.normalise = [], dtype, normalise

    def _enc(self, texts):
        x = np.zeros((len(texts), 64), dtype=np.float64)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                x[i, hash(w.strip("?.")) % 64] += 1
        if self.normalise:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(self.dtype)

    def encode_queries(self, texts):
        self.calls.append(("q", len(texts)))
        return self._enc(texts)

    def encode_passages(self, texts):
        self.calls.append(("p", len(texts)))
        return self._enc(texts)


def test_any_encoder_with_the_interface_is_batched_and_checked():
    enc = CountingEncoder()
    qs = ["Who leads Corvane Systems?", "Who founded Corvane Systems?", "Where was Selma Ardent born?"]
    cands = [around("Corvane Systems"), around("Corvane Systems"), around("Selma Ardent")]
    DRMScorer(enc).score(qs, cands)
    distinct = len({c.triple for row in cands for c in row})
    assert enc.calls == [("q", 3), ("p", distinct)]
    with pytest.raises(ValueError, match="float32"):
        DRMScorer(CountingEncoder(dtype=np.float64)).score(qs[:1], cands[:1])
    with pytest.raises(ValueError, match="L2-normalised"):
        DRMScorer(CountingEncoder(normalise=False)).score(qs[:1], cands[:1])
    with pytest.raises(ValueError, match="3 questions but 2"):
        DRMScorer(enc).score(qs, cands[:2])


def test_select_within_budget_with_capped_anchors():
    caps = [Capsule("A", "leads", "B"), Capsule("C", "leads", "D"), Capsule("E", "founded_in", "1999"),
            Capsule("F", "leads", "G")]
    ranked = [ScoredCapsule(c, 1.0 - i / 10, 0, 0, 1, i) for i, c in enumerate(caps)]
    length = {0: 6, 1: 10, 2: 3, 3: 4}
    sel = select_capsules(ranked, lambda sc: length[sc.index], budget_tokens=15, top_k=3, seed_entities=["Q"],
                          max_anchors=2, anchor_tokens={"Q": 1, "A": 1, "B": 1, "1999": 1})
    assert [sc.index for sc in sel.capsules] == [0, 2, 3]  # 1 does not fit after 0; 3 still does
    assert sel.anchors == ["Q", "A"] and sel.tokens == 6 + 3 + 4 + 1 + 1
    sel = select_capsules(ranked, lambda sc: length[sc.index], budget_tokens=100, top_k=1, max_anchors=5,
                          anchor_tokens={"A": 2})
    assert [sc.index for sc in sel.capsules] == [0] and sel.anchors == ["A"] and sel.tokens == 8
    assert select_capsules(ranked, lambda sc: 1, budget_tokens=0, top_k=4).capsules == []


def test_dense_index_hnsw_matches_exact_and_finds_the_evidence(minilm):
    from kvi_engine.ingest import load_documents, sentence_store_from_documents
    from kvi_engine.retrieval import DenseIndex

    store = sentence_store_from_documents(load_documents(sample_dir() / "docs.jsonl"))
    hnsw, exact = DenseIndex.from_store(store, minilm), DenseIndex.from_store(store, minilm, exact=True)
    qs = [q["question"] for q in QUESTIONS if q["hops"] == 1]
    a, b = hnsw.search(qs, 5), exact.search(qs, 5)
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    assert np.allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)
    by_triple = {c.triple: c.sentence_id for c in CAPS}
    found = sum(by_triple[tuple(q["support"][0])] in [h.id for h in r]
                for q, r in zip([q for q in QUESTIONS if q["hops"] == 1], a))
    assert found >= len(qs) - 2, found
    with pytest.raises(ValueError, match="k must be"):
        hnsw.search(qs, 0)
