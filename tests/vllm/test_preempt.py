"""A KV cache too small for the batch: vLLM preempts (frees) a running request's blocks and recomputes it later;
the connector is asked again and writes the capsules into the new blocks. Results stay exact."""
from __future__ import annotations

import pytest
from support import EIGHT, assert_same, greedy_params, hf_greedy, run_vllm

from kvi_engine.integrations.vllm import capsule_request

STEPS = 64


@pytest.mark.parametrize("engine", ["qwen2-preempt"], indirect=True)
def test_preempted_requests_are_rewritten_and_exact(engine):
    bank = engine.banks["fp32"]
    cases = [(EIGHT, 0), ([1, 6], 1), ([8, 10, 2], 2), ([11, 10, 6], 0)]
    reqs = [capsule_request(bank, ids, engine.prompts[p], bank_name="fp32") for ids, p in cases]
    engine.trace.take()
    outs = run_vllm(engine.llm, [r.prompt for r in reqs],
                    [r.sampling_params(**greedy_params(max_tokens=STEPS)) for r in reqs])
    writes = engine.trace.take()
    rewritten = 0
    for (ids, p), got in zip(cases, outs):
        assert_same(got, *hf_greedy(engine.hf, bank, ids, engine.prompts[p], STEPS), f"{ids}, {STEPS} steps")
        rewritten += len(engine.trace.of(writes, got["req_id"])) > 1
    assert rewritten > 0, "no request was preempted: the test did not test preemption"
