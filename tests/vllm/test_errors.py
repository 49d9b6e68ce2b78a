"""Bad requests fail with a clear error instead of hanging or running without their capsules, the engine keeps
serving, and a bank compiled by another model is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from support import EIGHT, assert_same, greedy_params, hf_greedy, run_vllm

import kvi_engine as kvi
from kvi_engine.integrations.vllm import capsule_request, kv_transfer_config
from kvi_engine.integrations.vllm.check import check_bank_model
from kvi_engine.models.fingerprint import FingerprintMismatch

FORGED = {  # case -> (mutate(prompt, kvi params), what the connector's error names)
    "out-of-range capsule id": (lambda pr, pa: pa.__setitem__("capsule_ids", [0, 999]), "capsule id 999 out of range"),
    "repeated capsule id": (lambda pr, pa: pa.__setitem__("capsule_ids", [1, 1]), "injects a capsule twice"),
    "missing cache_salt": (lambda pr, pa: pr.pop("cache_salt"), "cache_salt missing or wrong"),
    "unknown bank name": (lambda pr, pa: pa.__setitem__("bank_name", "nope"), "no bank named 'nope'"),
    "request built for another bank state": (lambda pr, pa: pa["bank"].__setitem__("generation", 7),
                                             "built for bank state"),
    "placeholder count does not match": (lambda pr, pa: pa.__setitem__("num_tokens", 3), "claims 3 injected"),
}


@pytest.mark.parametrize("engine", ["qwen2", "llama"], indirect=True)
@pytest.mark.parametrize("case", FORGED)
def test_forged_request_fails_with_its_reason(engine, case):
    from vllm import SamplingParams

    mutate, reason = FORGED[case]
    r = capsule_request(engine.banks["fp32"], [0, 1], engine.prompts[0], bank_name="fp32")
    prompt, params = dict(r.prompt), json.loads(json.dumps(r.kv_transfer_params))
    mutate(prompt, params["kvi"])
    engine.trace.take()
    t = time.perf_counter()
    (out,) = run_vllm(engine.llm, [prompt], [SamplingParams(extra_args={"kv_transfer_params": params},
                                                            **greedy_params())])
    assert time.perf_counter() - t < 60, "a bad request must fail, not hang"
    assert out["finish"] == "error" and out["tokens"] == [], out
    errors = [w["error"] for w in engine.trace.of(engine.trace.take(), out["req_id"], "error")]
    assert len(errors) == 1 and reason in errors[0], errors


@pytest.mark.parametrize("engine", ["qwen2"], indirect=True)
def test_prompt_logprobs_is_refused_and_reported(engine):
    """vLLM reads no connector KV for a request with prompt_logprobs: the helper refuses it, and a forged one
    comes back with a receipt that says it was not injected."""
    from vllm import SamplingParams

    r = capsule_request(engine.banks["fp32"], [0, 1], engine.prompts[0], bank_name="fp32")
    with pytest.raises(ValueError, match="prompt_logprobs"):
        r.sampling_params(prompt_logprobs=1)
    (out,) = run_vllm(engine.llm, [r.prompt], [SamplingParams(extra_args={"kv_transfer_params": r.kv_transfer_params},
                                                              prompt_logprobs=1, **greedy_params())])
    assert out["receipt"]["injected_tokens"] == 0 and "prompt_logprobs" in out["receipt"]["error"], out["receipt"]


@pytest.mark.parametrize("engine", ["qwen2"], indirect=True)
def test_helper_refuses_bad_ids_and_the_engine_keeps_serving(engine):
    bank = engine.banks["fp32"]
    with pytest.raises(IndexError, match=f"capsule id {bank.num_capsules + 5} out of range"):
        capsule_request(bank, [0, bank.num_capsules + 5], engine.prompts[0])
    with pytest.raises(ValueError, match="at least one token"):
        capsule_request(bank, [0], [])
    # after every failure above, one batch of a bad and a good request: the good one is exact
    from vllm import SamplingParams

    good = capsule_request(bank, [11, 10, 6], engine.prompts[2], bank_name="fp32")
    bad = json.loads(json.dumps(good.kv_transfer_params))
    bad["kvi"]["capsule_ids"] = [11, 10, 60]
    outs = run_vllm(engine.llm, [good.prompt, good.prompt],
                    [good.sampling_params(**greedy_params()),
                     SamplingParams(extra_args={"kv_transfer_params": bad}, **greedy_params())])
    assert_same(outs[0], *hf_greedy(engine.hf, bank, [11, 10, 6], engine.prompts[2]), "good request beside a bad one")
    assert outs[1]["finish"] == "error"
    (again,) = run_vllm(engine.llm, [capsule_request(bank, EIGHT, engine.prompts[0], bank_name="fp32").prompt],
                        [capsule_request(bank, EIGHT, engine.prompts[0], bank_name="fp32")
                         .sampling_params(**greedy_params())])
    assert_same(again, *hf_greedy(engine.hf, bank, EIGHT, engine.prompts[0]), "after the errors")


def test_bank_from_another_model_is_refused_at_engine_start(fixtures_dir, tmp_path):
    """A Qwen2 engine given the Llama bank does not start; the error names the bank and the mismatch."""
    code = (f"from vllm import LLM\n"
            f"LLM({str(fixtures_dir / 'qwen2' / 'model')!r}, dtype='float32', enforce_eager=True, block_size=32, "
            f"max_model_len=512, kv_transfer_config={kv_transfer_config(fixtures_dir / 'llama' / 'bank-fp32')!r})\n")
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    out = run.stdout + run.stderr
    assert run.returncode != 0, "the engine started with a bank of another model"
    assert "FingerprintMismatch" in out and "compiled by a different model configuration" in out, out[-3000:]
    assert time.perf_counter() - t < 300


def test_bank_from_other_weights_is_refused(fixtures_dir):
    """Same config, other weights (seed 1): the checkpoint probe refuses it; the right bank passes."""
    from transformers import AutoConfig

    d = fixtures_dir / "qwen2"
    cfg = SimpleNamespace(model_config=SimpleNamespace(model=str(d / "model"),
                                                       hf_text_config=AutoConfig.from_pretrained(d / "model")))
    check_bank_model(kvi.KVBank.open(d / "bank-fp32"), cfg)
    check_bank_model(kvi.KVBank.open(d / "bank-int8"), cfg)
    with pytest.raises(FingerprintMismatch, match="different weights of the same architecture"):
        check_bank_model(kvi.KVBank.open(d / "bank-other-weights"), cfg)
    with pytest.raises(FingerprintMismatch, match="different model configuration"):
        check_bank_model(kvi.KVBank.open(fixtures_dir / "qwen2-yarn" / "bank-fp32"), cfg)
