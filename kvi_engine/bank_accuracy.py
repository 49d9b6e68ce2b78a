"""Accuracy of quantised banks against fp16 on the same capsules and prompts.

Per scheme: KV bytes per token (scales included) as a ratio of fp16; relative error of the attention output over
the injected tokens alone (same queries -- recorded from the fp16 run -- so only the bank's KV differs); KL
divergence KL(p_fp16 || p_scheme) and top-1 agreement of the next-token distributions at every prompt position.
Injection runs through the PyTorch reference attention, the oracle of every backend.
"""
from __future__ import annotations

import contextlib
import math
import random
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from kvi_engine import attention
from kvi_engine.bank import KVBank
from kvi_engine.capsules import Capsule
from kvi_engine.compile import compile_bank
from kvi_engine.inject import inject
from kvi_engine.plan import build_plan

DEFAULT_SCHEMES = ("int8", "int8:channel", "fp8", "int4", "int4:channel", "int4:g32", "int2", "int2:g32")


@contextlib.contextmanager
def _record_queries(store: dict):
    real = attention.prefix_attention

    def wrapper(query, *args, **kw):
        store[args[4]] = query.detach().clone()  # args: own_k, own_v, own_mask, plan, layer, ...
        return real(query, *args, **kw)

    attention.prefix_attention = wrapper
    try:
        yield
    finally:
        attention.prefix_attention = real


def _prefix_only_attention(query, plan, layer, model) -> torch.Tensor:
    B, _, _, D = query.shape
    H = plan.bank.shape.num_kv_heads
    empty = torch.zeros(B, H, 0, D, dtype=query.dtype)
    out, _ = attention.reference(query, empty, empty, torch.zeros(B, 1, query.shape[2], 0, dtype=torch.bool), plan,
                                 layer, model)
    return out.float()


@torch.no_grad()
def evaluate(model, tokenizer, capsules: Sequence[Capsule], prompts: Sequence[str], schemes=DEFAULT_SCHEMES, *,
             capsules_per_prompt: int = 4, seed: int = 0, work_dir: str | Path | None = None) -> list[dict]:
    """One row per scheme (fp16 first, the reference): bytes ratio, attention rel. error, KL, top-1 agreement."""
    with contextlib.ExitStack() as stack:
        work = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ref = compile_bank(model, tokenizer, capsules, work / "fp16", quant="fp16", progress=False)
        banks = {s: compile_bank(model, tokenizer, capsules, work / s.replace(":", "_"), quant=s, progress=False)
                 for s in schemes}
        rng = random.Random(seed)
        runs = []
        for text in prompts:
            ids = rng.sample(range(ref.num_capsules), min(capsules_per_prompt, ref.num_capsules))
            prompt = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
            queries: dict[int, torch.Tensor] = {}
            with _record_queries(queries), inject(model, ref, [ids], backend="reference"):
                logits = model(input_ids=prompt).logits[0].float()
            runs.append((ids, prompt, queries, logits))
        rows = [_row("fp16", ref, ref, model, runs)]
        rows += [_row(s, b, ref, model, runs) for s, b in banks.items()]
        return rows


def _row(scheme: str, bank: KVBank, ref: KVBank, model, runs) -> dict:
    kl, agree, positions, err_num, err_den = 0.0, 0, 0, 0.0, 0.0
    for ids, prompt, queries, ref_logits in runs:
        if bank is ref:
            logits = ref_logits
        else:
            with inject(model, bank, [ids], backend="reference"):
                logits = model(input_ids=prompt).logits[0].float()
        logp, logq = ref_logits.log_softmax(-1), logits.log_softmax(-1)
        kl += float((logp.exp() * (logp - logq)).sum())
        agree += int((ref_logits.argmax(-1) == logits.argmax(-1)).sum())
        positions += logits.shape[0]
        plan_ref, plan = build_plan(ref, [ids]), build_plan(bank, [ids])
        for layer, q in queries.items():
            a = _prefix_only_attention(q, plan_ref, layer, model)
            b = _prefix_only_attention(q, plan, layer, model)
            err_num += float(((a - b) ** 2).sum())
            err_den += float((a ** 2).sum())
    return {"scheme": scheme, "bytes_per_token": bank.bytes_per_token,
            "bytes_ratio": bank.kv_bytes / ref.kv_bytes * ref.num_tokens / bank.num_tokens,
            "attn_rel_err": math.sqrt(err_num / err_den) if err_den else 0.0, "kl": kl / positions,
            "top1_agreement": agree / positions, "positions": positions}


def format_table(rows: list[dict], title: str = "") -> str:
    head = f"{'scheme':<14}{'bytes/tok':>10}{'x fp16':>8}{'attn err':>10}{'KL':>11}{'top-1':>8}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scheme']:<14}{r['bytes_per_token']:>10.0f}{r['bytes_ratio']:>8.3f}"
                     f"{r['attn_rel_err']:>10.4f}{r['kl']:>11.2e}{100 * r['top1_agreement']:>7.2f}%")
    return "\n".join(lines)
