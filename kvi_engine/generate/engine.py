"""KVIEngine: batched generation where every row carries its own capsule set.

Prompts are left-padded into one batch. When the bank has a shared prefix (BOS), the injection supplies it and the
prompt is encoded without it, so a row with no capsules sees exactly what a plain model would: ``[BOS, prompt]``.

Requests are bounded before any forward pass: a prompt longer than ``max_prompt_tokens`` (default
``KVI_MAX_PROMPT_TOKENS`` or 8192), or a row whose injected + prompt + new tokens exceed the model's positions, is
a ValueError naming the row and the counts (a 116k-character question otherwise runs for minutes).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from kvi_engine.bank.bank import KVBank
from kvi_engine.generate.inject import inject
from kvi_engine.plan.plan import build_plan


@dataclass(slots=True)
class Generation:
    texts: list[str]
    token_ids: list[list[int]]
    prompt_tokens: list[int]
    ttft_s: float
    total_s: float
    capsule_ids: list[list[int]] | None = None
    extra: dict = field(default_factory=dict)


def encode_prompt(tokenizer, text: str | list[dict], *, chat: bool = False, prefix: Sequence[int] = ()) -> list[int]:
    """Token ids of one prompt, as every front end encodes it: ``chat`` (or a list of ``{"role", "content"}``
    messages) goes through the tokenizer's chat template when it has one; a leading ``prefix`` (the bank's shared
    prefix, which the injection supplies) is dropped."""
    messages = text if isinstance(text, list) else [{"role": "user", "content": text}]
    if (chat or isinstance(text, list)) and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False).input_ids
    elif isinstance(text, list):  # no template: the conversation as plain "role: content" lines
        ids = tokenizer("".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:").input_ids
    else:
        ids = tokenizer(text).input_ids
    prefix = list(prefix)
    return ids[len(prefix):] if prefix and ids[:len(prefix)] == prefix else ids


class KVIEngine:
    def __init__(self, model, tokenizer, bank: KVBank | None, *, layout: str = "stacked", backend: str | None = None,
                 check: bool = True, max_prompt_tokens: int | None = None):
        self.model, self.tokenizer, self.bank = model, tokenizer, bank
        self.layout, self.backend = layout, backend
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        cap = max_prompt_tokens or int(os.environ.get("KVI_MAX_PROMPT_TOKENS", 8192))
        self.max_prompt_tokens = min(cap, self.max_positions) if self.max_positions else cap
        if bank is not None and check:
            bank.check_model(model, tokenizer)
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos) first")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str], *, chat: bool = False, strip_prefix: bool = False):
        """Left-padded ``(input_ids, attention_mask)``; ``strip_prefix`` drops the bank's shared prefix tokens
        that the injection supplies instead."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i} is empty")
        prefix = self.bank.prefix_token_ids if (strip_prefix and self.bank is not None) else []
        rows = [encode_prompt(self.tokenizer, p, chat=chat, prefix=prefix) for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def check_lengths(self, prompt_tokens: Sequence[int], capsule_ids, max_new_tokens: int) -> None:
        """Raise ValueError for a row over ``max_prompt_tokens`` or past the model's positions. A row's prompt
        starts where its plan puts it (stacked: after every capsule; parallel: after the longest); generating
        ``new`` tokens feeds ``new - 1`` of them back, so the last position used is ``start + n + new - 2``."""
        offsets = None
        if capsule_ids is not None:
            offsets = build_plan(self.bank, capsule_ids, layout=self.layout).prompt_offset.tolist()
        for r, n in enumerate(prompt_tokens):
            if n > self.max_prompt_tokens:
                raise ValueError(f"prompt {r} has {n:,} tokens, more than max_prompt_tokens = "
                                 f"{self.max_prompt_tokens:,} (raise it with KVI_MAX_PROMPT_TOKENS)")
            start = offsets[r] if offsets is not None else 0
            if self.max_positions and start + n + max(max_new_tokens, 1) - 1 > self.max_positions:
                raise ValueError(f"row {r}: {start:,} injected + {n:,} prompt + {max_new_tokens:,} new tokens "
                                 f"exceed the model's {self.max_positions:,} positions")

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], capsule_ids: Sequence[Sequence[int]] | None = None, *,
                 max_new_tokens: int = 32, chat: bool = False, layers=None, **generate_kwargs) -> Generation:
        """Generate for every prompt; ``capsule_ids[r]`` are injected into row ``r`` (None: no injection).
        Greedy unless ``generate_kwargs`` say otherwise. Returns texts, token ids and timings."""
        if capsule_ids is not None:
            if self.bank is None:
                raise ValueError("capsule_ids given but the engine has no bank")
            if len(capsule_ids) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(capsule_ids)} capsule lists (one per prompt)")
        ids, mask = self.encode(prompts, chat=chat, strip_prefix=capsule_ids is not None)
        self.check_lengths(mask.sum(1).tolist(), capsule_ids, max_new_tokens)
        kw = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        kw.update(generate_kwargs)
        first = {}

        class _FirstToken:  # a streamer-like hook: records when the first new token exists (TTFT)
            def put(self, _):
                first.setdefault("n", 0)
                first["n"] += 1
                if first["n"] == 2:
                    first["t"] = time.perf_counter()

            def end(self):
                pass

        t0 = time.perf_counter()
        if capsule_ids is None:
            out = self.model.generate(input_ids=ids, attention_mask=mask, streamer=_FirstToken(), **kw)
        else:
            with inject(self.model, self.bank, capsule_ids, layout=self.layout, layers=layers, backend=self.backend,
                        check=False):
                out = self.model.generate(input_ids=ids, attention_mask=mask, streamer=_FirstToken(), **kw)
        total = time.perf_counter() - t0
        new = out[:, ids.shape[1]:]
        token_ids = []
        for row in new.tolist():
            eos = self.model.generation_config.eos_token_id
            stops = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            token_ids.append(row[:cut])
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return Generation(texts, token_ids, mask.sum(1).tolist(), first.get("t", t0 + total) - t0, total,
                          None if capsule_ids is None else [list(r) for r in capsule_ids])
