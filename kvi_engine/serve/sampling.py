"""Choosing each row's next token with its own parameters (greedy, or temperature / top-k / top-p with a seeded
generator per choice), and the incremental text of a choice with OpenAI stop sequences (cut before the stop, never
streamed past it)."""
from __future__ import annotations

import torch

from kvi_engine.serve.request import Choice, SamplingParams


def generator(params: SamplingParams, index: int) -> torch.Generator | None:
    """The choice's own generator: reproducible per (seed, choice index) whatever else shares the batch."""
    if params.greedy:
        return None
    g = torch.Generator()
    g.manual_seed((params.seed if params.seed is not None else torch.seed()) * 1000003 + index)
    return g


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """One token from ``logits [vocab]`` under ``params``."""
    if params.greedy:
        return int(logits.argmax())
    x = logits.float() / params.temperature
    if params.top_k and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, -1)
        drop = probs.cumsum(-1) - probs > params.top_p  # keep the smallest prefix whose mass reaches top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(x, -1), 1, generator=gen))


def choose(logits: torch.Tensor, rows: list[tuple[SamplingParams, torch.Generator | None]]) -> list[int]:
    """Next token of every row of ``logits [rows, vocab]``; greedy rows in one argmax."""
    greedy = logits.argmax(-1).tolist()
    return [greedy[i] if p.greedy else sample(logits[i], p, g) for i, (p, g) in enumerate(rows)]


def advance_text(tokenizer, choice: Choice, stop: tuple[str, ...], final: bool) -> tuple[str, bool]:
    """Decode the choice's tokens; returns ``(text to stream now, a stop sequence was reached)``. Text that might
    still become a stop sequence, or an incomplete UTF-8 character, is held back until it cannot."""
    text = tokenizer.decode(choice.tokens, skip_special_tokens=True)
    hit = None
    if stop:
        start = max(0, choice.sent - max(map(len, stop)))
        found = [(i, s) for s in stop if (i := text.find(s, start)) >= 0]
        hit = min(found)[0] if found else None
    if hit is not None:
        text, final = text[:hit], True
    ready = len(text)
    if not final:
        if text.endswith("\ufffd"):
            ready = len(text.rstrip("\ufffd"))
        if stop:
            ready = min(ready, max(choice.sent, len(text) - max(map(len, stop)) + 1))
    choice.text = text
    delta = text[choice.sent:ready]
    choice.sent = max(choice.sent, ready)
    return delta, hit is not None
