"""Runnable example: answer with vLLM while capsules of a kvi bank are injected as KV (vLLM's environment:
``bash tests/vllm/env.sh``).

    .venv-vllm/bin/python -m kvi_engine.integrations.vllm.example MODEL_DIR BANK_DIR "question" [capsule id ...]

MODEL_DIR is the local HF checkpoint the bank was compiled with. With the test fixtures (tiny random weights: the
text is noise, the mechanics are real):
    .venv-vllm/bin/python tests/vllm/make_fixtures.py /tmp/fx qwen2
    .venv-vllm/bin/python -m kvi_engine.integrations.vllm.example /tmp/fx/qwen2/model /tmp/fx/qwen2/bank-fp32 \\
        "Which disease does SFTSV cause?" 0 1 3
It also prints the same request for the OpenAI-compatible server.
"""
from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, bank_dir, question, ids = argv[0], argv[1], argv[2], [int(x) for x in argv[3:]]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM

    from kvi_engine.bank.bank import KVBank
    from kvi_engine.integrations.vllm import capsule_request, kv_transfer_config, text_prompt_ids

    bank = KVBank.open(bank_dir)
    ids = ids or bank.live_ids()[:3]
    tok = AutoTokenizer.from_pretrained(model_dir)
    req = capsule_request(bank, ids, text_prompt_ids(tok, f"Question: {question}\nAnswer:"))
    print("injected:", [bank.statement(i) for i in ids], f"({req.num_injected} tokens)")
    config = kv_transfer_config(bank)
    llm = LLM(model_dir, dtype="float32", enforce_eager=True, block_size=32, max_model_len=2048,
              kv_transfer_config=config)
    try:
        out = llm.generate(req.prompt, req.sampling_params(temperature=0.0, max_tokens=32), use_tqdm=False)[0]
    finally:  # vLLM's engine-core and worker processes outlive a main process that does not stop them
        llm.llm_engine.engine_core.shutdown()
    print("answer:", repr(out.outputs[0].text))
    print("receipt:", (out.kv_transfer_params or {}).get("kvi"))
    print("\nthe same with the OpenAI-compatible server:")
    print(f"  python -m vllm.entrypoints.openai.api_server --model {model_dir} --dtype float32 --block-size 32 "
          f"--kv-transfer-config '{json.dumps(config)}'")
    body = {"model": model_dir, "max_tokens": 32, "temperature": 0, **req.openai_body()}
    print(f"  curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
