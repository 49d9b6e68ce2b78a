"""LLM triple extraction: validation rejects what a model may emit wrongly; provenance comes from the input sentence.
Output quality is not tested (weights are random); the plumbing is."""
import json

import pytest

from kvi_engine.capsules.capsule import Entity
from kvi_engine.ingest import AliasTable, LLMExtractor, Sentence, parse_triples

S = Sentence("doc05:s2", "doc05", "The Grellan virus causes Grellan fever.")
RELS = ["causes", "treated_by"]
ALIASES = AliasTable([Entity("Grellan virus", aliases=("GLV",)), Entity("Grellan fever")])


def item(s="Grellan virus", r="causes", o="Grellan fever", **extra):
    return {"subject": s, "relation": r, "object": o, **extra}


def test_valid_output_keeps_provenance_and_canonical_names():
    out = "Sure: " + json.dumps([item(s="the grellan virus"), item(s="GLV", r="Causes")]) + " done"
    got = parse_triples(out, S, RELS, ALIASES)
    assert not got.rejections
    assert [(c.triple, c.sentence_id, c.sentence) for c in got.capsules] == [
        (("Grellan virus", "causes", "Grellan fever"), S.id, S.text)] * 2


@pytest.mark.parametrize("output, reason", [
    ("The virus causes fever.", "no JSON array"),
    ('[{"subject": "Grellan virus", "relation": "causes"', "malformed JSON"),
    (json.dumps(["Grellan virus causes Grellan fever"]), "item is a str"),
    (json.dumps([item(sentence_id="doc99:s1")]), "item keys"),
    (json.dumps([{"subject": "Grellan virus", "relation": "causes"}]), "item keys"),
    (json.dumps([item(o="")]), "object must be a non-empty string"),
    (json.dumps([item(o=3)]), "object must be a non-empty string"),
    (json.dumps([item(r="cures")]), "relation 'cures' is not allowed"),
    (json.dumps([item(o="Velotrex")]), "object 'Velotrex' does not occur in the sentence"),
])
def test_malformed_output_is_rejected_with_a_reason(output, reason):
    got = parse_triples(output, S, RELS, ALIASES)
    assert not got.capsules
    assert len(got.rejections) == 1 and reason in got.rejections[0].reason
    assert got.rejections[0].sentence_id == S.id


class ScriptedExtractor(LLMExtractor):
    """Returns a canned answer naming the sentence it was asked about, so misrouted provenance shows up."""

    def generate(self, prompts):
        self.batches.append(len(prompts))
        outs = []
        for p in prompts:
            sentence = p.rsplit("Sentence: ", 1)[1].split("\nJSON:")[0]
            subj, _, obj = sentence.rstrip(".").partition(" leads ")
            outs.append(json.dumps([item(subj, "leads", obj)]) if obj else "[]")
        return outs


def test_batched_extraction_routes_provenance_per_sentence():
    sents = [Sentence(f"d:s{i}", "d", f"P{i} leads O{i}." if i % 3 else f"Nothing in {i}.") for i in range(1, 8)]
    ex = ScriptedExtractor(model=None, tokenizer=None, relations=["leads"], batch_size=3)
    ex.batches = []
    got = ex.extract(sents)
    assert ex.batches == [3, 3, 1]
    assert [(c.triple, c.sentence_id) for c in got.capsules] == [
        ((f"P{i}", "leads", f"O{i}"), f"d:s{i}") for i in range(1, 8) if i % 3]
    assert not got.rejections


def test_tiny_random_model_end_to_end():
    from kvi_engine.testing import tiny as models
    tok = models.tiny_tokenizer()
    model = models.tiny_model("qwen2", tok)
    tok.pad_token = None  # like Llama tokenizers: the extractor pads with eos for the call and restores the state
    sents = [S, Sentence("doc06:s2", "doc06", "Grellan fever is treated by Velotrex.")]
    ex = LLMExtractor(model, tok, relations=RELS, entities=[Entity("Grellan virus")], batch_size=2,
                      max_new_tokens=12)
    got = ex.extract(sents)
    assert tok.pad_token is None and tok.padding_side == "left"
    # random weights: whatever came out, every sentence is accounted for and nothing unvalidated slipped through
    ids = {r.sentence_id for r in got.rejections} | {c.sentence_id for c in got.capsules}
    assert ids <= {s.id for s in sents}
    assert all(r.reason for r in got.rejections)
    assert len(got.rejections) + len(got.capsules) >= 1
