"""vLLM front end: capsule KV from a kvi bank written into vLLM's paged cache through its KV-connector API.

    from kvi_engine.integrations.vllm import capsule_request, kv_transfer_config
    llm = LLM(model_dir, kv_transfer_config=kv_transfer_config("/path/to/bank"))
    req = capsule_request(bank, [3, 0, 7], prompt_ids)
    llm.generate(req.prompt, req.sampling_params(temperature=0, max_tokens=16))

Nothing here imports vLLM or transformers at import time; :mod:`.connector` (the class vLLM loads by module path)
imports vLLM. See README.md beside this file.
"""
from kvi_engine.integrations.vllm.config import CONNECTOR, MODULE, PARAMS_KEY, kv_transfer_config
from kvi_engine.integrations.vllm.layout import bank_identity, cache_salt, capsule_plan
from kvi_engine.integrations.vllm.request import CapsuleRequest, capsule_request, text_prompt_ids

__all__ = ["CONNECTOR", "MODULE", "PARAMS_KEY", "kv_transfer_config", "bank_identity", "cache_salt", "capsule_plan",
           "CapsuleRequest", "capsule_request", "text_prompt_ids"]
