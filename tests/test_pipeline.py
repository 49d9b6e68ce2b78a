"""The query pipeline on the sample corpus with a tiny random Llama (BOS prefix): answer traces, the
no-entity fallback equals plain generation, one grounding filter for every method, and bad input."""
import pytest
import torch

from kvi_engine import KVIEngine
from kvi_engine.capsules.capsule import load_entities
from kvi_engine.capsules.statements import render_statement
from kvi_engine.generate.engine import Generation
from kvi_engine.ingest import build_assets, load_documents
from kvi_engine.query.encoders import make_encoder
from kvi_engine.query.knowledge import Knowledge, build_knowledge
from kvi_engine.query.methods import METHODS, method, parse_methods
from kvi_engine.query.pipeline import QueryPipeline
from kvi_engine.query.trace import postprocess
from kvi_engine.retrieval import NO_ENTITY
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer
from kvi_engine.utils.paths import sample_dir

D = sample_dir()
TWO_HOP = "Who founded the company that produces Velotrex?"
NONE = "Tell me a joke."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second intra-op thread only adds contention
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    assets = build_assets(load_documents(D / "docs.jsonl"), load_entities(D / "entities.jsonl"))
    tok = tiny_tokenizer(bos=True)
    model = tiny_model("llama", tok)
    knowledge = build_knowledge(model, tok, assets.capsules, assets.entities, tmp_path_factory.mktemp("kn"),
                                store=assets.store)
    return QueryPipeline(model, tok, knowledge)


def test_engine_answer_traces_and_no_entity_fallback(pipe):
    engine = KVIEngine(pipe.model, pipe.tokenizer, pipe.knowledge.bank)
    # the pipeline over an engine: graph rebuilt from the bank's own capsule records
    kvi, none = QueryPipeline.from_engine(engine).answer([TWO_HOP, NONE], max_new_tokens=4)
    t = kvi.trace
    assert t.method == "KVI" and t.entities == ["Velotrex"] and t.fallback is None and t.bank == "capsules"
    hops = {(x["subject"], x["relation"], x["object"]): x["hop"] for x in t.triples}
    assert hops[("Quillon Biotech", "produces", "Velotrex")] == 1
    assert hops[("Quillon Biotech", "founded_by", "Ines Marrow")] == 2
    assert t.evidence[:2] == ["Quillon Biotech produces Velotrex.", "Quillon Biotech was founded by Ines Marrow."]
    assert t.injected[:len(t.triples)] == [x["capsule_id"] for x in t.triples] and len(t.injected) > len(t.triples)
    bank = pipe.knowledge.bank
    assert t.injected_statements == [bank.statement(i) for i in t.injected]
    assert all(x["score"] >= y["score"] for x, y in zip(t.triples, t.triples[1:]))
    assert none.trace.fallback == NO_ENTITY and none.trace.injected == [] and none.trace.evidence == []
    # zero capsules == the plain model: the fallback row generates exactly what LLM generates
    plain = pipe.answer([TWO_HOP, NONE], "llm", max_new_tokens=4)
    assert none.trace.raw == plain[1].trace.raw and not plain[1].trace.grounded


def test_batched_equals_one_by_one(pipe):
    qs = [TWO_HOP, "Where is Quillon Biotech headquartered?", "What disease does the Grellan virus cause?"]
    batch = pipe.answer(qs, "KVI", max_new_tokens=3)
    for q, a in zip(qs, batch):
        (single,) = pipe.answer([q], "KVI", max_new_tokens=3)
        assert single.trace.injected == a.trace.injected and single.trace.evidence == a.trace.evidence
        assert single.trace.raw == a.trace.raw


def test_one_grounding_filter_for_every_method(pipe, monkeypatch):
    """Every method's output goes through the same post-processing and filter, against whatever it retrieved."""
    def fake(self, prompts, capsule_ids=None, **kw):
        return Generation(["Lurov is the capital of Drevany.\nQuestion: more?"] * len(prompts), [], [], 0.0, 0.0)

    monkeypatch.setattr(KVIEngine, "generate", fake)
    out = pipe.compare(["Who founded Quillon Biotech?"], max_new_tokens=2)
    assert list(out) == list(METHODS)
    for name, (a,) in out.items():
        t = a.trace
        support = " ".join(t.evidence + t.injected_statements)
        assert t.raw.startswith("Lurov") and t.grounded == bool(support)
        if not support:
            assert a.text == "Lurov is the capital of Drevany.", name
        elif "Lurov" not in support:
            assert a.text == "" and "absent from the evidence" in t.dropped[0]["reason"], name
    assert out["LLM"][0].text == "Lurov is the capital of Drevany." and out["KVI"][0].text == ""


def test_method_names_and_postprocess():
    assert method("kv-prefix").name == "KV Prefix" and method("KVI w/o graph") is METHODS["KVI w/o graph"]
    assert [m.name for m in parse_methods("llm, kvi,kvi-no-kv")] == ["LLM", "KVI", "KVI w/o KV"]
    with pytest.raises(ValueError, match="unknown method 'hyde'"):
        parse_methods("kvi,hyde")
    assert postprocess("\n  Ines Marrow.\nQuestion: who?") == "Ines Marrow." and postprocess("  \n") == ""


def test_bad_input(pipe):
    for m in METHODS:
        with pytest.raises(ValueError, match="question #1 is empty"):
            pipe.answer(["Who leads Corvane Systems?", "  "], m)
    with pytest.raises(ValueError, match="no questions"):
        pipe.answer([], "KVI")
    with pytest.raises(TypeError):
        pipe.answer("Who leads Corvane Systems?", "KVI")
    no_store = QueryPipeline(pipe.model, pipe.tokenizer, Knowledge.from_bank(pipe.knowledge.bank),
                             encoder=pipe.encoder)
    for m in ("RAG", "KV Prefix"):
        with pytest.raises(ValueError, match="sentence store"):
            no_store.answer(["Who leads Corvane Systems?"], m)
    with pytest.raises(ValueError, match="unknown retriever"):
        make_encoder("bm25")
    with pytest.raises(FileNotFoundError, match="not a KPR model directory"):
        make_encoder("kpr:/nonexistent/kpr-model")


def test_kpr_retriever_drives_dense_retrieval_and_drm(pipe, tmp_path):
    """`--retriever kpr:DIR`: a (tiny, untrained) KPR model replaces MiniLM in RAG/KV Prefix and in DRM."""
    from kvi_engine.cli.main import main as kpr
    from kvi_engine.kpr.make_dataset import generate, write
    from kvi_engine.testing.kpr import tiny_base

    write(tmp_path / "data", generate(3, n_people=24, n_orgs=6, n_places=5))
    assert kpr(["kpr", "build", "--base", str(tiny_base(tmp_path / "base")), "--entities",
                str(tmp_path / "data" / "entities_train.jsonl"), "--contexts", str(tmp_path / "data" / "contexts.jsonl"),
                "--out", str(tmp_path / "kpr")]) == 0
    enc = make_encoder(f"kpr:{tmp_path / 'kpr'}")
    q = "Who founded Quillon Biotech?"
    out = QueryPipeline(pipe.model, pipe.tokenizer, pipe.knowledge, encoder=enc).compare([q], ["RAG", "KVI"],
                                                                                          max_new_tokens=1)
    store = list(pipe.knowledge.store)
    sims = enc.encode_queries([q]) @ enc.encode_passages([s.text for s in store]).T
    rag = out["RAG"][0].trace
    assert rag.passages[0]["id"] == store[int(sims.argmax())].id
    assert rag.passages[0]["score"] == pytest.approx(float(sims.max()), abs=1e-3)
    top = out["KVI"][0].trace.triples[0]
    cap = next(c for c in pipe.knowledge.capsules if c.triple == (top["subject"], top["relation"], top["object"]))
    e = float((enc.encode_queries([q]) @ enc.encode_passages([render_statement(cap)]).T)[0, 0])
    assert top["embedding"] == pytest.approx(max(e, 0.0), abs=1e-3)
