"""TTFT harness: every method runs on the same prompt; RAG carries exactly the tokens KVI injects."""

from kvi_engine import compile_bank
from kvi_engine.benchmarks.results import format_table, write
from kvi_engine.benchmarks.ttft import measure_ttft, synthetic_capsules
from kvi_engine.testing.helpers import model, tokenizer


def test_measure_ttft_rows_and_results(tmp_path):
    m, tok = model("llama", True), tokenizer(True)
    caps = synthetic_capsules(6)
    assert len({c.subject for c in caps}) == 6
    bank = compile_bank(m, tok, caps, tmp_path / "b", quant="fp32", progress=False)
    prompt = tok("Which district holds station 3?").input_ids
    rows = measure_ttft(m, bank, prompt, [4, 1, 3], batch=2, repeats=2, warmup=0)
    assert [r.method for r in rows] == ["llm", "rag", "kvi"]
    knowledge = sum(len(bank.token_ids(c)) for c in [4, 1, 3])
    assert [r.knowledge_tokens for r in rows] == [0, knowledge, knowledge]
    assert rows[1].prompt_tokens == len(prompt) and prompt[:1] == bank.prefix_token_ids
    assert rows[0].ratio_to_llm == 1.0 and all(r.ttft_ms >= r.ttft_ms_min > 0 for r in rows)
    assert rows[0].ratio_paired == 1.0 and all(r.ratio_paired > 0 for r in rows)
    write(tmp_path / "res" / "ttft", "ttft", rows, note="test")
    assert (tmp_path / "res" / "ttft.csv").read_text().splitlines()[0].startswith("method,capsules")
    assert "ratio_to_llm" in format_table(rows, ["method", "ratio_to_llm"])
    assert m.config._attn_implementation == "sdpa"  # the timed KVI runs leave no patch behind
