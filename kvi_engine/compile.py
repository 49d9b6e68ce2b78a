"""compile_bank: run a frozen causal LM over every capsule statement, batched, and store its KV as a bank.

Each capsule is compiled alone (after the tokenizer's shared prefix, e.g. BOS, which it attends to as in normal
use), so its KV does not depend on which other capsules it is later injected with. Capsules are sorted by length
and right-padded in batches: causal attention means real tokens never see the padding, so batched compile equals
one-at-a-time compile.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import msgpack
import numpy as np
import torch
from tqdm.auto import tqdm

from kvi_engine import __version__, fingerprint, rope
from kvi_engine.bank import STORAGE_DTYPES, KVBank
from kvi_engine.bank_format import ContainerWriter
from kvi_engine.capsules import Capsule, Entity
from kvi_engine.capture import capture_kv
from kvi_engine.statements import anchor_capsule, anchor_statement, render_statement

_NP_STORAGE = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}


def shared_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before every text (BOS for Llama-style tokenizers, none for Qwen)."""
    probe = "knowledge capsule"
    full = tokenizer(probe).input_ids
    plain = tokenizer(probe, add_special_tokens=False).input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    raise ValueError(f"cannot locate the text inside the tokenizer's special-token framing: {full} vs {plain}")


def capsule_statements(capsules: Sequence[Capsule], entities: Sequence[Entity] = (),
                       templates: dict[str, str] | None = None) -> tuple[list[Capsule], list[str]]:
    """Capsules in bank order (the given ones, then one anchor per entity) and the text each compiles from."""
    caps, texts = list(capsules), []
    for c in caps:
        texts.append(render_statement(c, {**(templates or {}), "is_a": "{subject} is a {object}."})
                     if c.kind == "anchor" else render_statement(c, templates))
    for e in entities:
        caps.append(anchor_capsule(e))
        texts.append(anchor_statement(e))
    return caps, texts


def _to_storage(x: torch.Tensor, quant: str) -> np.ndarray:
    x = x.to(STORAGE_DTYPES[quant]).cpu()
    return x.view(torch.uint16).numpy() if quant == "bf16" else x.numpy()


@torch.no_grad()
def _run(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    with capture_kv(model) as rec:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return dict(rec)


def compile_bank(model, tokenizer, capsules: Sequence[Capsule], out: str | os.PathLike, quant: str = "fp16", *,
                 entities: Sequence[Entity] = (), templates: dict[str, str] | None = None, batch_size: int = 32,
                 progress: bool = True) -> KVBank:
    """Compile ``capsules`` (then one anchor per entity in ``entities``) into a bank directory ``out``.

    Capsule id ``i`` of the bank is ``capsules[i]``; anchors follow in entity order. ``quant`` is the storage
    format: "fp32", "fp16" or "bf16".
    """
    if quant not in STORAGE_DTYPES:
        raise ValueError(f"unknown bank storage {quant!r}; supported: {sorted(STORAGE_DTYPES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rope.check_repositionable(model)
    caps, texts = capsule_statements(capsules, entities, templates)
    if not caps:
        raise ValueError("nothing to compile: no capsules and no entities given")
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    for i, t in enumerate(ids):
        if not t:
            raise ValueError(f"capsule {i} ({caps[i].triple}) renders to an empty statement")
    prefix = shared_prefix(tokenizer)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    L, H, P = cfg.num_hidden_layers, cfg.num_key_value_heads, len(prefix)
    lengths = np.array([len(t) for t in ids], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    num_tokens = int(lengths.sum())
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = ContainerWriter(out / "bank.kvb")
    try:
        w.add("capsule_table", np.stack([starts, lengths], axis=1))
        w.add("token_ids", np.concatenate([np.asarray(t, np.int32) for t in ids]))
        meta = [{**c.to_dict(), "kind": c.kind, "statement": s} for c, s in zip(caps, texts)]
        w.add("capsule_meta", msgpack.packb(meta, use_bin_type=True))
        w.add("prefix_token_ids", np.asarray(prefix, np.int32))
        k_out = w.reserve("k", quant, (L, num_tokens, H, head_dim))
        v_out = w.reserve("v", quant, (L, num_tokens, H, head_dim))
        pk = np.zeros((L, P, H, head_dim), _NP_STORAGE[quant])
        pv = np.zeros_like(pk)
        if P:
            rec = _run(model, torch.tensor([prefix], device=device), torch.ones(1, P, dtype=torch.long, device=device))
            for layer, (k, v) in rec.items():
                pk[layer], pv[layer] = _to_storage(k[0].transpose(0, 1), quant), _to_storage(v[0].transpose(0, 1), quant)
        w.add("prefix_k", pk, quant)
        w.add("prefix_v", pv, quant)

        order = np.argsort(-lengths, kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        t0 = time.perf_counter()
        for batch in tqdm(batches, desc="compile", unit="batch", disable=not progress):
            T = P + int(lengths[batch].max())
            input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, ci in enumerate(batch):
                row = prefix + ids[ci]
                input_ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            rec = _run(model, input_ids.to(device), mask.to(device))
            for layer, (k, v) in rec.items():
                k, v = k.transpose(1, 2), v.transpose(1, 2)  # [batch, len, kv_heads, head_dim]
                for r, ci in enumerate(batch):
                    s, n = int(starts[ci]), int(lengths[ci])
                    k_out[layer, s:s + n] = _to_storage(k[r, P:P + n], quant)
                    v_out[layer, s:s + n] = _to_storage(v[r, P:P + n], quant)
        for arr in (k_out, v_out):
            if isinstance(arr, np.memmap):
                arr.flush()
        del k_out, v_out
        w.close({
            "kind": "kvi-bank", "engine_version": __version__, "created_unix": time.time(),
            "num_layers": L, "num_kv_heads": H, "head_dim": head_dim, "num_capsules": len(caps),
            "num_tokens": num_tokens, "quant": {"scheme": quant}, "prefix_token_ids": prefix,
            "fingerprint": fingerprint.fingerprint(model, tokenizer), "rope": rope.rope_parameters(model),
            "compile": {"batch_size": batch_size, "model_dtype": str(next(model.parameters()).dtype),
                        "seconds": time.perf_counter() - t0},
        })
    except BaseException:
        w.abort()
        raise
    return KVBank.open(out)
