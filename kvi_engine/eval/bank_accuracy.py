"""Accuracy of quantised banks against fp16 on the same capsules and prompts.

Per scheme: KV bytes per token (scales included) as a ratio of fp16; relative RMS error of the stored keys and
values themselves; relative error of the attention output over the injected tokens alone (same queries -- recorded
from the fp16 run -- so only the bank's KV differs); KL divergence KL(p_fp16 || p_scheme) and top-1 agreement of the
next-token distributions at every prompt position, with a 95% Wilson interval. Injection runs through the PyTorch
reference attention, the oracle of every backend.

Noise floor: rows ``noise@<e>%`` are fp32 copies of the fp16 bank whose keys and values carry Gaussian noise of
relative RMS ``e`` per (token, head) row. They show the top-1 agreement that *any* scheme whose errors act like noise
of that size reaches on the model, which, with the rate-distortion bound of a Gaussian source (relative RMS error
>= 2^-R at R bits per element), bounds what a given byte budget can reach. Rows ``<scheme>+<coder>`` are candidate
coders simulated on the bank (:mod:`kvi_engine.eval.coders`).
"""
from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kvi_engine.attention.reference import reference
from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.eval import coders
from kvi_engine.generate.inject import inject
from kvi_engine.plan.plan import build_plan

DEFAULT_SCHEMES = ("int8", "int8:channel", "fp8", "int4", "int4:channel", "int4:g32", "int2", "int2:g32")
DEFAULT_NOISE = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def noise_label(rel: float) -> str:
    return f"noise@{100 * rel:g}%"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, mid - half), min(1.0, mid + half)


def perturbed_bank(ref: KVBank, out: str | Path, rel: float, seed: int = 0) -> KVBank:
    """An fp32 copy of ``ref`` at ``out`` whose keys and values carry i.i.d. Gaussian noise with RMS ``rel`` times
    the RMS of each (token, head) row -- the row granularity at which the quantised schemes scale their codes."""
    shutil.copytree(ref.root, out)

    def add_noise(layer, k, v):
        g = np.random.default_rng([seed, layer])
        return tuple(x + np.float32(rel) * np.sqrt((x * x).mean(-1, keepdims=True))
                     * g.standard_normal(x.shape, dtype=np.float32) for x in (k, v))

    bank_updates.requantize(out, "fp32", transform=add_noise)
    return KVBank.open(out)


def _prefix_only_attention(query, plan, layer, model) -> torch.Tensor:
    B, _, _, D = query.shape
    H = plan.bank.shape.num_kv_heads
    empty = torch.zeros(B, H, 0, D, dtype=query.dtype)
    out, _ = reference(query, empty, empty, torch.zeros(B, 1, query.shape[2], 0, dtype=torch.bool), plan,
                                 layer, model)
    return out.float()


def _kv_rel_err(bank: KVBank, ref: KVBank) -> float:
    num = den = 0.0
    for layer in range(ref.num_layers):
        for got, want in zip(bank.layer_kv(layer), ref.layer_kv(layer)):
            got, want = got.float(), want.float()
            num += float(((got - want) ** 2).sum())
            den += float((want ** 2).sum())
    return math.sqrt(num / den) if den else 0.0


@torch.no_grad()
def evaluate(model, tokenizer, capsules: Sequence[Capsule], prompts: Sequence[str], schemes=DEFAULT_SCHEMES, *,
             capsules_per_prompt: int = 4, draws: int = 1, noise: Sequence[float] = (), seed: int = 0,
             work_dir: str | Path | None = None, simulate: Sequence[str] = ()) -> list[dict]:
    """One row per scheme (fp16 first, the reference), then one per noise level, then one per simulated coder
    (:mod:`kvi_engine.eval.coders`, e.g. ``"int4+hadamard"``; bytes ratio: the wrapped scheme's): bytes ratio, KV
    and attention relative errors, KL, top-1 agreement. Each prompt is asked ``draws`` times with independent
    random capsule sets (draw 1 is the same for any ``draws``)."""
    with contextlib.ExitStack() as stack:
        work = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ref = compile_bank(model, tokenizer, capsules, work / "fp16", quant="fp16", progress=False)
        banks = {s: compile_bank(model, tokenizer, capsules, work / s.replace(":", "_"), quant=s, progress=False)
                 for s in schemes}
        banks.update({noise_label(e): perturbed_bank(ref, work / f"noise{i}", e, seed) for i, e in enumerate(noise)})
        banks.update({c: coders.simulated_bank(ref, work / f"sim{i}", c, seed) for i, c in enumerate(simulate)})
        rng = random.Random(seed)
        runs = []
        for _ in range(draws):
            for text in prompts:
                ids = rng.sample(range(ref.num_capsules), min(capsules_per_prompt, ref.num_capsules))
                prompt = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
                queries: dict[int, torch.Tensor] = {}
                record = lambda layer, q: queries.__setitem__(layer, q.detach().clone())  # noqa: E731
                with inject(model, ref, [ids], backend="reference", on_query=record):
                    logits = model(input_ids=prompt).logits[0].float()
                runs.append((ids, prompt, queries, logits))
        rows = [_row("fp16", ref, ref, model, runs)]
        rows += [_row(s, b, ref, model, runs) for s, b in banks.items()]
        for r in rows:
            if r["scheme"] in simulate:  # stored as fp32; a bank in that coder would take the wrapped scheme's bytes
                r["bytes_ratio"] = coders.bytes_ratio(coders.parse(r["scheme"])[0], ref.shape.head_dim)
                r["bytes_per_token"] = r["bytes_ratio"] * ref.bytes_per_token
                r["simulated"] = True
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
    lo, hi = wilson(agree, positions)
    return {"scheme": scheme, "bytes_per_token": bank.bytes_per_token,
            "bytes_ratio": bank.kv_bytes / ref.kv_bytes * ref.num_tokens / bank.num_tokens,
            "kv_rel_err": _kv_rel_err(bank, ref),
            "attn_rel_err": math.sqrt(err_num / err_den) if err_den else 0.0, "kl": kl / positions,
            "top1_agreement": agree / positions, "top1_ci95": [lo, hi], "agree": agree, "positions": positions}


def format_table(rows: list[dict], title: str = "") -> str:
    head = (f"{'scheme':<14}{'bytes/tok':>10}{'x fp16':>8}{'KV err':>9}{'attn err':>10}{'KL':>11}{'top-1':>9}"
            f"{'95% CI':>17}")
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["top1_ci95"]
        lines.append(f"{r['scheme']:<14}{r['bytes_per_token']:>10.0f}{r['bytes_ratio']:>8.3f}{r['kv_rel_err']:>9.4f}"
                     f"{r['attn_rel_err']:>10.4f}{r['kl']:>11.2e}{100 * r['top1_agreement']:>8.2f}%"
                     f"   [{100 * lo:5.2f}, {100 * hi:6.2f}]")
    return "\n".join(lines)
