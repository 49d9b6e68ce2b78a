"""Intent -> relation set: patterns cover the sample questions (both hops of 2-hop ones), Chinese patterns work,
open-domain paraphrases fall back to embeddings, unrelated questions get no restriction, configs are validated."""
import json

import pytest

from kvi_engine.retrieval.encoder import default_encoder
from kvi_engine.retrieval.intent import DEFAULT_INTENTS, Intent, IntentClassifier, load_intents
from kvi_engine.utils.paths import sample_dir

QUESTIONS = [json.loads(line) for line in (sample_dir() / "questions.jsonl").read_text().splitlines()]


def test_patterns_cover_every_hop_of_the_sample_questions():
    matches = IntentClassifier().classify([q["question"] for q in QUESTIONS])
    for q, m in zip(QUESTIONS, matches):
        assert m.method == "pattern", q["question"]
        assert {t[1] for t in q["support"]} <= m.relations, (q["question"], m)


def test_chinese_patterns_and_no_match_without_encoder():
    ic = IntentClassifier()
    founder, cause, none = ic.classify(["谁创立了奎隆生物？", "格伦病毒引起什么疾病？", "Tell me something nice."])
    assert founder.relations == {"founded_by"} and cause.relations == {"causes"}
    assert none.relations is None and none.method == "none"


@pytest.mark.parametrize("question, intent", [
    ("What gets rid of Grellan fever?", "treatment"),
    ("Who manages Corvane Systems?", "leader"),
    ("Which firm sells Amberlin?", "product"),
])
def test_embedding_fallback_for_open_domain_questions(question, intent):
    ic = IntentClassifier(encoder=default_encoder())
    assert not any(p.search(question) for pats in ic._compiled for p in pats)  # really no pattern match
    m = ic.classify([question])[0]
    assert m.method == "embedding" and m.intents == (intent,), m


def test_unrelated_question_gets_no_restriction():
    m = IntentClassifier(encoder=default_encoder()).classify(["Tell me about the weather tomorrow."])[0]
    assert m.relations is None and m.method == "none"


def test_custom_config(tmp_path):
    p = tmp_path / "intents.json"
    p.write_text(json.dumps([{"name": "price", "relations": ["costs"], "patterns": [r"\bhow much\b"]}]))
    ic = IntentClassifier(load_intents(p))
    assert ic.classify(["How much is Velotrex?"])[0].relations == {"costs"}
    assert ic.all_relations == {"costs"}
    p.write_text(json.dumps([{"name": "x", "relations": ["r"], "pattern": ["typo"]}]))
    with pytest.raises(ValueError, match=r"intent #1: unknown field\(s\) \['pattern'\]"):
        load_intents(p)
    p.write_text(json.dumps([{"name": "x", "relations": ["r"], "patterns": ["(unclosed"]}]))
    with pytest.raises(ValueError, match="bad pattern"):
        load_intents(p)
    with pytest.raises(ValueError, match="at least one relation"):
        Intent("x", frozenset())
    with pytest.raises(ValueError, match="duplicate intent names"):
        IntentClassifier([DEFAULT_INTENTS[0], DEFAULT_INTENTS[0]])
