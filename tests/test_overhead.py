"""The overhead benchmark: token-level inputs per method are what the docstring says, and a smoke run through
`kvi bench overhead --tiny` writes the JSON/CSV/PNG with every cell of the grid."""
import csv
import json

import pytest
import torch

from kvi_engine import compile_bank
from kvi_engine.benchmarks import overhead as bo
from kvi_engine.benchmarks.ttft import synthetic_capsules
from kvi_engine.cli.main import main
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_inputs_per_method(tmp_path):
    tok = tiny_tokenizer(bos=True)
    model = tiny_model("llama", tok)
    caps = compile_bank(model, tok, synthetic_capsules(6), tmp_path / "c", quant="fp32", progress=False)
    sents = compile_bank(model, tok, bo.synthetic_sentences(6), tmp_path / "s", quant="fp32",
                         templates={"states": "{subject}"}, progress=False)
    assert sents.statement(2) == "Survey station 2 stands near Orrin Vale." and caps.prefix_token_ids
    prompt = caps.prefix_token_ids + tok("which district holds station 3?", add_special_tokens=False).input_ids
    b = bo.Bench(model, tok, caps, sents, prompt, new_tokens=2, evidence=2)
    knowledge = [t for c in range(5) for t in caps.token_ids(c)]
    ids, cap_ids, n_know, _ = b.inputs("llm", 5, 3)
    assert ids.tolist() == [prompt] * 3 and cap_ids is None and n_know == 0
    ids, cap_ids, n_know, _ = b.inputs("rag", 5, 1)
    assert ids.tolist() == [caps.prefix_token_ids + knowledge + prompt[1:]] and n_know == len(knowledge)
    ids, cap_ids, n_know, cache = b.inputs("kvi", 5, 2)
    assert ids.tolist() == [prompt[1:]] * 2 and cap_ids == [[0, 1, 2, 3, 4]] * 2 and n_know == len(knowledge)
    assert cache == len(prompt) - 1  # injected KV is read from the bank, not held in the request's cache
    ids, cap_ids, n_know, _ = b.inputs("kv-prefix", 5, 1)
    assert n_know == sum(len(sents.token_ids(c)) for c in range(5)) and cap_ids == [[0, 1, 2, 3, 4]]
    ids, cap_ids, n_know, _ = b.inputs("kvi-dual", 5, 1)
    evidence = [t for c in range(2) for t in caps.token_ids(c)]
    assert ids.tolist() == [evidence + prompt[1:]] and n_know == len(knowledge) + len(evidence)
    ttft, total = b.run("kvi", *b.inputs("kvi", 5, 2)[:2])
    assert 0 < ttft <= total


def test_smoke_run_writes_every_cell(tmp_path, capsys):
    out = tmp_path / "overhead"
    assert main(["bench", "overhead", "--tiny", "--capsules", "0", "4", "--batch", "1", "2", "--batch-capsules",
                 "4", "--repeats", "1", "--warmup", "0", "--new-tokens", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ttft_ratio_to_llm" in printed and "decode_tok_s" in printed
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 5 + 2 * 5 and {r["method"] for r in rows} == set(bo.METHODS)
    assert data["machine"]["commit"] is not None and "RSS" in data["memory"] and data["complete"]
    for r in rows:
        assert r["ttft_ms"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_mib"] >= 0 and r["cache_mib"] > 0
        if r["method"] == "llm":
            assert r["ttft_ratio_to_llm"] == 1.0 and r["decode_ratio_to_llm"] == 1.0
        assert r["decode_ratio_to_llm"] > 0
    assert len(list(csv.DictReader(out.with_suffix(".csv").open()))) == len(rows)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_breakdown_accounts_for_the_ttft(tmp_path, capsys):
    """`--breakdown`: plan, attach, prefill and detach add up to KVI's first-token time, the attention op's time is
    inside the prefill, and the FLOP floor grows with the injected tokens."""
    out = tmp_path / "ovh"
    assert main(["bench", "overhead", "--tiny", "--breakdown", "--capsules", "0", "2", "8", "--repeats", "2",
                 "--out", str(out)]) == 0
    assert "attention_gflops" in capsys.readouterr().out
    rows = json.loads((tmp_path / "ovh_breakdown.json").read_text())["rows"]
    assert [r["capsules"] for r in rows] == [2, 8] and rows[1]["injected_tokens"] > rows[0]["injected_tokens"]
    for r in rows:
        parts = r["plan_ms"] + r["attach_ms"] + r["prefill_ms"] + r["detach_ms"]
        assert 0 < r["attention_ms"] < r["prefill_ms"] and abs(parts - r["kvi_ms"]) < 0.35 * r["kvi_ms"]
        assert r["llm_ms"] > 0 and r["kvi_over_llm"] > 0
    assert 1 < rows[0]["flops_ratio"] < rows[1]["flops_ratio"]
