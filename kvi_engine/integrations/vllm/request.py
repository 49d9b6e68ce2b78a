"""Turn ``(bank, capsule_ids, prompt)`` into a vLLM request that :class:`KVIConnector` completes with capsule KV.

    req = capsule_request(bank, [3, 0, 7], prompt_ids)
    llm.generate(req.prompt, req.sampling_params(temperature=0, max_tokens=16))            # offline LLM
    POST /v1/completions {"model": M, "max_tokens": 16, **req.openai_body()}               # OpenAI server

The prompt is ``N`` placeholder tokens (``N`` = shared prefix + capsule tokens: the connector supplies their KV) and
then the prompt's own tokens, which vLLM computes at positions ``N, N+1, ...``: the stacked layout. ``cache_salt``
keys vLLM's prefix cache to the capsule set and bank state (two sets behind the same placeholder ids would otherwise
share cached blocks); ``kv_transfer_params`` tells the connector which capsules to load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from kvi_engine.integrations.vllm.config import DEFAULT_BANK, PARAMS_KEY
from kvi_engine.integrations.vllm.layout import bank_identity, cache_salt, capsule_plan


@dataclass(frozen=True)
class CapsuleRequest:
    prompt_token_ids: list[int]       # N placeholders, then the prompt
    cache_salt: str
    kv_transfer_params: dict[str, Any]
    num_injected: int                 # N

    @property
    def prompt(self) -> dict:
        """A vLLM ``TokensPrompt`` (a TypedDict: the plain dict is one)."""
        return {"prompt_token_ids": list(self.prompt_token_ids), "cache_salt": self.cache_salt}

    def sampling_params(self, **kw):
        """vLLM ``SamplingParams(**kw)`` carrying the capsule set. ``prompt_logprobs`` is refused: with it vLLM
        reads no cached or connector KV (``skip_reading_prefix_cache``) and would compute the placeholders as
        plain tokens."""
        from vllm import SamplingParams

        if kw.get("prompt_logprobs") is not None:
            raise ValueError("prompt_logprobs makes vLLM bypass KV connectors: the capsules would not be injected")
        extra = dict(kw.pop("extra_args", None) or {})
        extra["kv_transfer_params"] = self.kv_transfer_params
        return SamplingParams(extra_args=extra, **kw)

    def openai_body(self) -> dict:
        """The fields this request adds to a ``/v1/completions`` body (prompt as token ids; ``cache_salt`` and
        ``kv_transfer_params`` are vLLM's extra body fields)."""
        return {"prompt": list(self.prompt_token_ids), "cache_salt": self.cache_salt,
                "kv_transfer_params": self.kv_transfer_params}


def capsule_request(bank, capsule_ids: Sequence[int], prompt_token_ids: Sequence[int], *, placeholder_id: int = 0,
                    bank_name: str = DEFAULT_BANK) -> CapsuleRequest:
    """The request injecting ``capsule_ids`` (bank ids, in ranked order) before ``prompt_token_ids`` (tokenised
    without the tokenizer's shared prefix, e.g. BOS: the bank injects that itself; see :func:`text_prompt_ids`).
    ``bank_name`` picks one of the banks the engine serves (``kv_transfer_config(banks={name: path})``). Raises
    IndexError / KeyError / ValueError for bad ids and an empty prompt."""
    plan = capsule_plan(bank, capsule_ids)
    prompt = [int(t) for t in prompt_token_ids]
    if not prompt:
        raise ValueError("the prompt needs at least one token after the injected capsules")
    n = plan.num_slots
    ids = plan.capsule_ids[0]
    params = {PARAMS_KEY: {"capsule_ids": ids, "num_tokens": n, "placeholder_id": int(placeholder_id),
                           "bank": bank_identity(bank), "bank_name": bank_name}}
    return CapsuleRequest([int(placeholder_id)] * n + prompt, cache_salt(bank, ids), params, n)


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """``text`` tokenised without special tokens (the bank's shared prefix, BOS, is injected as KV instead)."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)
