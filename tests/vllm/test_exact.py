"""vLLM with capsules injected by KVIConnector == kvi.inject on HF with the same weights (fp32): greedy tokens
identical, logprobs of the generated tokens within 1e-4, on Llama (BOS prefix) and Qwen2, also with llama3 and YaRN
RoPE scaling."""
from __future__ import annotations

import pytest
from support import BLOCK, EIGHT, ONE, assert_same, greedy_params, hf_greedy, hf_plain_greedy, max_diff, run_vllm

from kvi_engine.integrations.vllm import capsule_request

FAMILIES = ["llama", "qwen2", "llama-llama3", "qwen2-yarn"]
CASES = {  # name -> [(capsule ids, prompt, bank)] sent as one batch
    "1 capsule": [(ONE, 0, "fp32")],
    "8 capsules": [(EIGHT, 1, "fp32")],
    "2 requests, different sets, one batch": [([1, 6], 0, "fp32"), ([8, 10, 2], 2, "fp32")],
    "the same set twice in one batch": [([3, 7, 9, 0], 0, "fp32"), ([3, 7, 9, 0], 2, "fp32")],
    "int8 bank, 1 and 8 capsules": [(ONE, 0, "int8"), (EIGHT, 1, "int8")],
    "fp32 and int8 banks in one batch": [(EIGHT, 0, "fp32"), (EIGHT, 0, "int8"), ([2, 5], 1, "int8")],
}


def generate(e, cases):
    reqs = [capsule_request(e.banks[q], ids, e.prompts[p], bank_name=q) for ids, p, q in cases]
    return reqs, run_vllm(e.llm, [r.prompt for r in reqs], [r.sampling_params(**greedy_params()) for r in reqs])


@pytest.mark.parametrize("engine", FAMILIES, indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_vllm_equals_kvi_inject(engine, case):
    reqs, outs = generate(engine, CASES[case])
    for (ids, p, q), r, got in zip(CASES[case], reqs, outs):
        want = hf_greedy(engine.hf, engine.banks[q], ids, engine.prompts[p])
        assert_same(got, *want, f"{engine.name} {case} {ids} ({q})")
        assert got["receipt"]["error"] is None and got["receipt"]["injected_tokens"] == r.num_injected


@pytest.mark.parametrize("engine", FAMILIES, indirect=True)
def test_one_capsule_equals_a_plain_forward(engine):
    """Independent of kvi's own code: one capsule is the model run on [prefix, capsule tokens, prompt]."""
    bank = engine.banks["fp32"]
    (got,) = generate(engine, [([5], 2, "fp32")])[1]
    seq = bank.prefix_token_ids + bank.token_ids(5) + engine.prompts[2]
    assert_same(got, *hf_plain_greedy(engine.hf, seq), f"{engine.name}: 1 capsule vs plain forward")


@pytest.mark.parametrize("engine", FAMILIES, indirect=True)
def test_prefix_cache_hits_stay_exact(engine):
    """A capsule set vLLM has cached: the full placeholder blocks come from its prefix cache and the connector
    writes only the rest; the same prompt again is all cache."""
    ids = [6, 2, 11, 0, 9, 4, 1, 8]  # used by no other test: the first request writes everything
    engine.trace.take()
    writes = []
    for p in (0, 1, 0):
        reqs, (got,) = generate(engine, [(ids, p, "fp32")])
        assert_same(got, *hf_greedy(engine.hf, engine.banks["fp32"], ids, engine.prompts[p]),
                    f"{engine.name}: prefix-cache round, prompt {p}")
        writes.append([(w["start"], w["stop"]) for w in engine.trace.of(engine.trace.take(), got["req_id"])])
    n = reqs[0].num_injected
    full = (n + len(engine.prompts[0]) - 1) // BLOCK * BLOCK  # vLLM caches whole blocks, computes the last token
    assert n % BLOCK and full > n, f"the test needs a partial placeholder block and a later full one ({n}, {full})"
    assert writes[0] == [(0, n)], "first time: the connector writes every placeholder"
    assert writes[1] == [(n // BLOCK * BLOCK, n)], "other prompt: full blocks cached, the partial tail written"
    assert writes[2] == [] and got["cached"] == full, "same prompt again: a prefix-cache hit, nothing written"


@pytest.mark.parametrize("engine", ["llama", "qwen2"], indirect=True)
def test_placeholders_without_capsules_are_plain_tokens(engine):
    """Control: the same prompt without kv_transfer_params is computed as plain placeholder tokens (== HF), and
    that differs from the injected result, so the tests above cannot pass by accident."""
    from vllm import SamplingParams

    r = capsule_request(engine.banks["fp32"], EIGHT, engine.prompts[1], bank_name="fp32")
    (plain,) = run_vllm(engine.llm, [{"prompt_token_ids": r.prompt_token_ids}], [SamplingParams(**greedy_params())])
    assert_same(plain, *hf_plain_greedy(engine.hf, r.prompt_token_ids), "plain placeholders vs HF")
    inj_toks, inj_lps = hf_greedy(engine.hf, engine.banks["fp32"], EIGHT, engine.prompts[1])
    assert plain["tokens"] != inj_toks or max_diff(plain["logprobs"], inj_lps) > 1e-2
    assert plain["receipt"] is None
