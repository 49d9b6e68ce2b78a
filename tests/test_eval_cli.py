"""End-to-end `kvi eval` on the shipped sample with a tiny random model: report structure, identical inputs for all
methods, traces (2-hop facts reached through the pipeline), and bad input -> one clear error line, exit 2."""
import hashlib
import json

import pytest
import torch

from kvi_engine.cli.main import main
from kvi_engine.eval import load_dataset
from kvi_engine.query.methods import METHODS
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer
from kvi_engine.utils.paths import sample_dir

D = sample_dir()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: a second intra-op thread only adds contention (measured: 4x slower retrieval + generation).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tok = tiny_tokenizer()
    tiny_model("qwen2", tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["eval", str(D / "questions.jsonl"), "--model", str(model_dir), "--out", str(out),
               "--max-new-tokens", "3", "--resamples", "300"])
    assert rc == 0
    return out


def test_report_structure_and_identical_inputs(run):
    report = json.loads((run / "report.json").read_text())
    dataset = load_dataset(D / "questions.jsonl")
    assert list(report["methods"]) == list(METHODS) and report["reference"] == "KVI" and report["version"] == 2
    digest = hashlib.sha256(b"".join(it.question.encode() + b"\0" for it in dataset)).hexdigest()
    for name, m in report["methods"].items():
        assert m["n"] == len(dataset) and m["inputs_sha256"] == digest
        assert set(m["metrics"]) == {"em", "f1", "relaxed"} and set(m["by_hops"]) == {"1", "2"}
        assert {"support_recall", "support_all", "doc_recall", "support_by_type"} <= set(m)
        for v in m["metrics"].values():
            assert v["ci_low"] <= v["mean"] <= v["ci_high"]
            assert (v["p_vs_reference"] is None) == (name == "KVI")
    assert report["methods"]["KVI"]["support_all"] == 1.0  # the sample: every supporting fact reaches the model
    cfg = report["config"]
    assert cfg["decoding"] == "greedy" and set(cfg["methods"]) == set(METHODS)
    assert len(report["items"]) == len(dataset) and all(set(METHODS) <= set(it) for it in report["items"])
    md = (run / "report.md").read_text()
    assert "| method | EM | F1 | relaxed |" in md and all(f"| {m} |" in md for m in METHODS)
    assert len((run / "report.csv").read_text().splitlines()) == 1 + 3 * len(METHODS)
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("sentences", "capsules", "entities"):
        assert (run / "assets" / f"{name}.jsonl").is_file()


def test_traces_carry_each_methods_knowledge(run):
    rows = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    questions = {q["id"]: q for q in map(json.loads, (D / "questions.jsonl").read_text().splitlines())}
    assert len(rows) == len(questions)
    two_hop_found = 0
    for row in rows:
        t = {m: row["methods"][m]["trace"] for m in METHODS}
        assert all(row["methods"][m]["question"] == row["question"] for m in METHODS)
        assert t["LLM"]["evidence"] == [] and t["LLM"]["injected"] == [] and not t["LLM"]["grounded"]
        assert t["RAG"]["passages"] and t["RAG"]["evidence"] == [p["text"] for p in t["RAG"]["passages"]]
        assert t["KV Prefix"]["bank"] == "sentences" and t["KV Prefix"]["evidence"] == []
        assert t["KV Prefix"]["injected_statements"] == t["RAG"]["evidence"]
        kvi = t["KVI"]
        assert kvi["bank"] == "capsules" and kvi["entities"] and kvi["fallback"] is None
        assert [x["capsule_id"] for x in kvi["triples"]] == kvi["injected"][:len(kvi["triples"])]
        assert t["GraphRAG"]["evidence"] == kvi["injected_statements"] and t["GraphRAG"]["injected"] == []
        assert t["KVI w/o KV"]["evidence"] == kvi["evidence"] and t["KVI w/o KV"]["injected"] == []
        assert t["KVI w/o graph"]["entities"] == [] and all(x["hop"] == 1 for x in t["KVI w/o graph"]["triples"])
        q = questions[row["id"]]
        found = {(x["subject"], x["relation"], x["object"]): x["hop"] for x in kvi["triples"]}
        if q["hops"] == 2 and all(tuple(s) in found for s in q["support"]):
            two_hop_found += any(found[tuple(s)] == 2 for s in q["support"])
    assert two_hop_found >= 15  # of 16 two-hop questions: both facts selected, one reached at hop 2
    recall = json.loads((run / "support_recall.json").read_text())["methods"]
    assert set(recall) == set(METHODS) and recall["LLM"]["support_all"] == 0.0
    assert recall["KVI"]["support_all"] == 1.0 and recall["KVI"] == recall["KVI w/o KV"] == recall["GraphRAG"]
    assert set(recall["KVI"]["by_type"]) == {"1-hop", "2-hop"}
    assert "Evidence reaching the model" in (run / "report.md").read_text()


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvi eval: error:") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_bad_input_is_one_clear_line(tmp_path, capsys, run):
    ds = tmp_path / "qa.jsonl"
    ds.write_text('{"id": "a", "question": "Who leads Corvane Systems?", "answers": ["x"]}\n'
                  '{"id": "b", "question": "Q?", "answers": ["y"], "difficulty": 3}\n')
    _fails(capsys, ["eval", str(ds), "--out", str(tmp_path / "o")], f"{ds}:2", "difficulty")
    ds.write_text('{"id": "a", "question": "  ", "answers": ["x"]}\n')
    _fails(capsys, ["eval", str(ds), "--out", str(tmp_path / "o")], f"{ds}:1", "empty")
    _fails(capsys, ["eval", str(D / "questions.jsonl"), "--methods", "kvi,hyde", "--out", str(tmp_path / "o")],
           "unknown method 'hyde'")
    _fails(capsys, ["eval", str(D / "questions.jsonl"), "--docs", str(D / "questions.jsonl"),
                    "--out", str(tmp_path / "o")], "cannot also be a document source")
    store = tmp_path / "assets"
    store.mkdir()
    for name in ("capsules", "entities"):
        (store / f"{name}.jsonl").write_bytes((run / "assets" / f"{name}.jsonl").read_bytes())
    lines = (run / "assets" / "sentences.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"text": "', '"text": "Not ', 1)
    (store / "sentences.jsonl").write_text("\n".join(lines) + "\n")
    _fails(capsys, ["eval", str(D / "questions.jsonl"), "--assets", str(store), "--out", str(tmp_path / "o")],
           "sentences.jsonl", "corrupt")
