"""QA leak: `kvi eval` builds its graph and banks from the documents only. A planted question whose answer appears in
no document must leave no trace of that answer (or of the question) in the assets, the graph or either bank, and the
assets must be byte-identical to those built without any dataset at all."""
import json

import pytest
import torch

from kvi_engine import KVBank
from kvi_engine.capsules.capsule import load_capsules, load_entities
from kvi_engine.capsules.statements import anchor_capsule
from kvi_engine.cli.main import main
from kvi_engine.graph.knowledge_graph import KnowledgeGraph
from kvi_engine.ingest import SentenceStore, save_assets
from kvi_engine.ingest.assets import assets_from_documents
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer
from kvi_engine.utils.paths import sample_dir

D = sample_dir()
PLANTED = [
    {"id": "leak1", "question": "Who founded Quillon Biotech?", "answers": ["Obadiah Quenton"], "hops": 1,
     "support": [["Quillon Biotech", "founded_by", "Obadiah Quenton"]]},
    {"id": "leak2", "question": "What is the capital of the Zemblan Republic?", "answers": ["Port Xandrel"]},
    {"id": "real", "question": "Who leads Corvane Systems?", "answers": ["Tomas Brekke"], "hops": 1},
]
SECRETS = ("Obadiah Quenton", "Obadiah", "Quenton", "Port Xandrel", "Xandrel", "Zemblan")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("leak")
    tok = tiny_tokenizer()
    tiny_model("qwen2", tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    ds = d / "planted.jsonl"
    ds.write_text("".join(json.dumps(q) + "\n" for q in PLANTED))
    try:
        assert main(["eval", str(ds), "--model", str(d / "model"), "--out", str(d / "out"), "--methods", "kvi,rag",
                     "--max-new-tokens", "1", "--resamples", "50"]) == 0
    finally:
        torch.set_num_threads(old)
    return d / "out"


def test_planted_answers_reach_neither_assets_nor_banks(out):
    docs = (D / "docs.jsonl").read_text()
    assert not any(s in docs for s in SECRETS)  # the premise: the answers are in no document
    files = [p for sub in ("assets", "banks") for p in (out / sub).rglob("*") if p.is_file()]
    assert len(files) >= 5
    # the byte check can see text: a real fact is found in the capsule bank's and the assets' bytes
    for where in ("banks/capsules", "banks/sentences", "assets"):
        assert any(b"Ines Marrow" in p.read_bytes() for p in (out / where).rglob("*") if p.is_file()), where
    for p in files:  # raw bytes: statements and capsule records are stored as UTF-8 text
        data = p.read_bytes()
        for s in (*SECRETS, *(q["question"] for q in PLANTED)):
            assert s.encode() not in data, f"{s!r} leaked into {p}"
    texts = []
    for name in ("capsules", "sentences"):
        bank = KVBank.open(out / "banks" / name)
        texts += [bank.statement(i) for i in range(bank.num_capsules)]
        texts += [" ".join(bank.capsule(i).triple) + bank.capsule(i).sentence for i in range(bank.num_capsules)]
    caps = load_capsules(out / "assets" / "capsules.jsonl")
    ents = load_entities(out / "assets" / "entities.jsonl")
    graph = KnowledgeGraph.from_capsules(caps + [anchor_capsule(e) for e in ents], ents)
    texts += [n for e in graph.entities for n in e.names] + [graph.capsule(t).sentence for t in
                                                               range(graph.num_triples)]
    texts += [s.text for s in SentenceStore.load(out / "assets" / "sentences.jsonl")]
    assert len(texts) > 200
    for s in SECRETS:
        assert not any(s in t for t in texts), s
    # the false fact is not in the graph either, under any spelling of its subject
    assert ("Quillon Biotech", "founded_by", "Ines Marrow") in {c.triple for c in caps}
    assert not [c for c in caps if c.subject == "Quillon Biotech" and c.relation == "founded_by"
                and c.object != "Ines Marrow"]


def test_assets_do_not_depend_on_the_dataset(out, tmp_path):
    save_assets(assets_from_documents([D / "docs.jsonl"], D / "entities.jsonl"), tmp_path)
    for name in ("sentences", "capsules", "entities"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (out / "assets" / f"{name}.jsonl").read_bytes(), name
