"""compile_bank: run a frozen causal LM over every capsule statement, batched, and store its KV as a bank.

Each capsule is compiled alone (after the tokenizer's shared prefix, e.g. BOS, which it attends to as in normal
use), so its KV does not depend on which other capsules it is later injected with. Capsules are sorted by length
and right-padded in batches: causal attention means real tokens never see the padding, so batched compile equals
one-at-a-time compile up to float rounding.

The schedule is fixed by the corpus alone (:func:`batch_schedule`): contiguous blocks of ``shard_size`` ids, each
sorted by length and cut into batches of ``batch_size``. A capsule's batch -- and so the exact float bits of its
KV, which depend on the batch's padded shape -- is then the same whether the whole corpus is compiled here or its
blocks are compiled as shards by any number of workers (:mod:`kvi_engine.distributed`).

The same machinery compiles the new segment of an update: :func:`add_capsules` (new ids) and
:func:`recompile_entity` (new KV under the same ids); removal, compaction and requantization need no model and live
in :mod:`kvi_engine.bank.updates`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kvi_engine._version import __version__
from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.segments import FIRST_SEGMENT, MANIFEST_FILE, SegmentWriter, Snapshot, new_segment_name
from kvi_engine.bank.spec import QuantSpec
from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.capsules.statements import anchor_capsule, anchor_statement, render_statement, template_fault
from kvi_engine.compile.capture import capture_kv
from kvi_engine.formats.container import BankFormatError
from kvi_engine.models import fingerprint, rope
from kvi_engine.utils.atomic import fsync_dir


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
    for rel, tpl in (templates or {}).items():
        fault = template_fault(tpl, require_both=False)
        if fault:
            raise ValueError(f"template for {rel!r} {fault}")
    caps, texts = list(capsules), []
    for c in caps:
        texts.append(render_statement(c, {**(templates or {}), "is_a": "{subject} is a {object}."})
                     if c.kind == "anchor" else render_statement(c, templates))
    for e in entities:
        caps.append(anchor_capsule(e))
        texts.append(anchor_statement(e))
    return caps, texts


@torch.no_grad()
def _run(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    with capture_kv(model) as rec:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return dict(rec)


DEFAULT_SHARD_SIZE = 4096


def batch_schedule(lengths: np.ndarray, batch_size: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[np.ndarray]:
    """Rows of each batch: blocks ``[0, shard_size), [shard_size, 2 shard_size), …`` of the rows, each sorted by
    descending length (stable) and cut into batches of ``batch_size``; no batch spans two blocks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    lengths = np.asarray(lengths)
    out = []
    for lo in range(0, len(lengths), shard_size):
        order = lo + np.argsort(-lengths[lo:lo + shard_size], kind="stable")
        out += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return out


def compile_segment(model, tokenizer, caps: list[Capsule], texts: list[str], make_writer, *, batch_size: int,
                    progress: bool, shard_size: int = DEFAULT_SHARD_SIZE, ids: Sequence[int] | None = None,
                    on_batch=None) -> tuple:
    """Run the model over ``texts`` and stream their KV into ``make_writer(lengths, token_ids, meta, prefix,
    prefix_k, prefix_v)`` (a :class:`SegmentWriter`) in the order of :func:`batch_schedule`; returns the closed
    segment and the compile seconds. ``ids``: the bank ids of the rows (for messages; default the row numbers).
    ``on_batch(batches_done, capsules_done)``, if given, runs after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    rope.check_repositionable(model)
    if not caps:
        raise ValueError("nothing to compile: no capsules and no entities given")
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    for i, t in enumerate(ids):
        if not t:
            raise ValueError(f"capsule {i if ids is None else ids[i]} ({caps[i].triple}) renders to an empty "
                             "statement")
    prefix = shared_prefix(tokenizer)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    L, H, P = cfg.num_hidden_layers, cfg.num_key_value_heads, len(prefix)
    lengths = np.array([len(t) for t in ids], dtype=np.int64)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    pk = np.zeros((L, P, H, head_dim), np.float32)
    pv = np.zeros_like(pk)
    if P:
        rec = _run(model, torch.tensor([prefix], device=device), torch.ones(1, P, dtype=torch.long, device=device))
        for layer, (k, v) in rec.items():
            pk[layer], pv[layer] = k[0].transpose(0, 1).float().cpu(), v[0].transpose(0, 1).float().cpu()
    meta = [{**c.to_dict(), "kind": c.kind, "statement": s} for c, s in zip(caps, texts)]
    w: SegmentWriter = make_writer(lengths, np.concatenate([np.asarray(t, np.int32) for t in ids]), meta, prefix,
                                   pk, pv)
    try:
        batches = batch_schedule(lengths, batch_size, shard_size)
        t0 = time.perf_counter()
        done = 0
        for b, batch in enumerate(tqdm(batches, desc="compile", unit="batch", disable=not progress)):
            T = P + int(lengths[batch].max())
            input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, ci in enumerate(batch):
                row = prefix + ids[ci]
                input_ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            rec = _run(model, input_ids.to(device), mask.to(device))
            for layer, (k, v) in rec.items():
                k, v = k.transpose(1, 2).float().cpu(), v.transpose(1, 2).float().cpu()  # [batch, len, heads, dim]
                ks = torch.cat([k[r, P:P + int(lengths[ci])] for r, ci in enumerate(batch)]).numpy()
                vs = torch.cat([v[r, P:P + int(lengths[ci])] for r, ci in enumerate(batch)]).numpy()
                w.put(layer, batch, ks, vs)
            done += len(batch)
            if on_batch is not None:
                on_batch(b + 1, done)
        seconds = time.perf_counter() - t0
        w.header["compile"] = {"batch_size": batch_size, "shard_size": shard_size,
                               "model_dtype": str(next(model.parameters()).dtype), "seconds": seconds}
        return w.close(), seconds
    except BaseException:
        w.abort()
        raise


def model_dims(model) -> dict:
    cfg = model.config
    return {"num_layers": cfg.num_hidden_layers, "num_kv_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads}


def compile_bank(model, tokenizer, capsules: Sequence[Capsule], out: str | os.PathLike, quant="fp16", *,
                 entities: Sequence[Entity] = (), templates: dict[str, str] | None = None, batch_size: int = 32,
                 shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True) -> KVBank:
    """Compile ``capsules`` (then one anchor per entity in ``entities``) into a new bank directory ``out``
    (replacing any bank there).

    Capsule id ``i`` of the bank is ``capsules[i]``; anchors follow in entity order. ``quant`` is the storage
    scheme: "fp32", "fp16", "bf16", "int8", "int4", "int2" or "fp8", with options as in
    :meth:`QuantSpec.parse` (e.g. "int4:g64", "int8:channel"); see :mod:`kvi_engine.bank.quant` for the formats.
    ``batch_size`` and ``shard_size`` fix the schedule (:func:`batch_schedule`): the same values give the same
    bits here and in :func:`kvi_engine.distributed.compile_bank` on any number of workers.
    """
    spec = QuantSpec.parse(quant)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    spec.header(model_dims(model)["head_dim"])
    rope.check_repositionable(model)
    caps, texts = capsule_statements(capsules, entities, templates)
    if not caps:
        raise ValueError("nothing to compile: no capsules and no entities given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def writer_to(path: Path):
        def make_writer(lengths, token_ids, meta, prefix, pk, pv):
            header = {"engine_version": __version__, "created_unix": time.time(),
                      "fingerprint": fingerprint.fingerprint(model, tokenizer), "rope": rope.rope_parameters(model)}
            return SegmentWriter(path, spec, **model_dims(model), lengths=lengths, token_ids=token_ids, meta=meta,
                                 capsule_ids=np.arange(len(meta)), prefix_token_ids=prefix, prefix_k=pk,
                                 prefix_v=pv, header=header)
        return make_writer

    with bank_updates.writer_lock(out):
        if not (out / MANIFEST_FILE).exists():  # empty directory or a single-file bank: one rename replaces it
            compile_segment(model, tokenizer, caps, texts, writer_to(out / FIRST_SEGMENT), batch_size=batch_size,
                            shard_size=shard_size, progress=progress)
            bank_updates.collect_garbage(out, {FIRST_SEGMENT})
        else:
            _replace_updated_bank(out, lambda path: compile_segment(
                model, tokenizer, caps, texts, writer_to(path), batch_size=batch_size, shard_size=shard_size,
                progress=progress)[0])
    return KVBank.open(out)


def _replace_updated_bank(out: Path, compile_to) -> None:
    """Swap an updated bank (manifest + segments, possibly ``bank.kvb`` among them) for the fresh single segment
    ``compile_to(path)`` writes, so that a reader opening it at any moment sees the old bank or the new one.

    Renaming the new ``bank.kvb`` into place first would put it behind the old manifest (which may name the old
    ``bank.kvb``: readers fail) or bring back the pre-update ``bank.kvb`` alone (removed capsules reappear). So the
    new bank goes in as an update -- a new segment named by a new manifest, one rename -- and only then returns to
    the plain layout: ``bank.kvb`` becomes a second name (hard link) of that segment, the manifest goes (readers
    now open ``bank.kvb``: the same file), then the segment's own name. A crash between the last two unlinks leaves
    a valid plain bank and a stray ``seg-*.kvb`` the size of the bank, removed by the next compile or update."""
    try:
        generation = Snapshot.open(out).generation + 1
    except (BankFormatError, OSError):  # a broken old bank is replaced all the same
        generation = 1
    seg = compile_to(out / new_segment_name(generation))
    bank_updates.write_manifest(out, generation, [seg], np.zeros(seg.num_capsules, np.int64),
                                np.arange(seg.num_capsules))
    bank_updates.collect_garbage(out, {seg.path.name})
    tmp = out / f".seg-link-{seg.path.name}"
    try:
        os.link(seg.path, tmp)
    except OSError:  # no hard links on this filesystem: the bank stays valid in the updated layout (one segment)
        return
    os.replace(tmp, out / FIRST_SEGMENT)
    fsync_dir(out)
    (out / MANIFEST_FILE).unlink()
    seg.path.unlink()
    fsync_dir(out)


def _check_bank_model(u: bank_updates.Update, model, tokenizer) -> None:
    first = u.snap.first
    dims = model_dims(model)
    have = {"num_layers": first.num_layers, "num_kv_heads": first.num_kv_heads, "head_dim": first.head_dim}
    if dims != have:
        raise fingerprint.FingerprintMismatch(f"{u.root}: bank shape {have} does not match the model's {dims}")
    fingerprint.check(first.c.header["fingerprint"], model, tokenizer, where=str(u.root))


def _update_writer(u: bank_updates.Update, capsule_ids: np.ndarray):
    want = [int(t) for t in u.snap.first.c.header["prefix_token_ids"]]

    def make_writer(lengths, token_ids, meta, prefix, pk, pv):
        if list(prefix) != want:
            raise ValueError(f"{u.root}: the tokenizer's shared prefix {prefix} differs from the bank's {want}")
        return u.writer(lengths, token_ids, meta, capsule_ids)
    return make_writer


def add_capsules(bank_dir: str | os.PathLike, model, tokenizer, capsules: Sequence[Capsule], *,
                 entities: Sequence[Entity] = (), templates: dict[str, str] | None = None, batch_size: int = 32,
                 progress: bool = False) -> list[int]:
    """Compile ``capsules`` (and anchors of ``entities``) into a new segment of the bank; returns their new ids.
    Existing ids, segments and readers are untouched."""
    caps, texts = capsule_statements(capsules, entities, templates)
    with bank_updates.Update(bank_dir) as u:
        _check_bank_model(u, model, tokenizer)
        ids = u.next_ids(len(caps))
        seg, _ = compile_segment(model, tokenizer, caps, texts, _update_writer(u, ids), batch_size=batch_size,
                                 progress=progress)
        u.commit(u.snap.segments + [seg], np.concatenate([u.seg, np.full(len(ids), len(u.snap.segments))]),
                 np.concatenate([u.row, np.arange(len(ids))]))
    return ids.tolist()


def recompile_entity(bank_dir: str | os.PathLike, model, tokenizer, entity: str, *,
                     updates: dict[int, Capsule] | None = None, templates: dict[str, str] | None = None,
                     batch_size: int = 32) -> list[int]:
    """Re-compile every live capsule whose subject is ``entity`` (its anchor and its triples) under the same ids,
    optionally with new content ``updates = {id: Capsule}`` (ids must be among them). Returns the ids."""
    bank = KVBank.open(bank_dir)
    ids = [i for i in bank.live_ids() if bank.capsule(i).subject == entity]
    if not ids:
        raise KeyError(f"{bank_dir}: no live capsule has subject {entity!r}")
    stray = sorted(set(updates or {}) - set(ids))
    if stray:
        raise ValueError(f"updates for capsules {stray} that are not {entity!r}'s (its capsules: {ids})")
    caps = [(updates or {}).get(i, bank.capsule(i)) for i in ids]
    with bank_updates.Update(bank_dir) as u:
        _check_bank_model(u, model, tokenizer)
        ids_arr = np.asarray(ids, np.int64)
        if (u.seg[ids_arr] < 0).any():
            raise KeyError(f"{bank_dir}: a capsule of {entity!r} was removed while re-compiling")
        caps_, texts = capsule_statements(caps, (), templates)
        seg, _ = compile_segment(model, tokenizer, caps_, texts, _update_writer(u, ids_arr), batch_size=batch_size,
                                 progress=False)
        u.seg[ids_arr], u.row[ids_arr] = len(u.snap.segments), np.arange(len(ids))
        u.commit(u.snap.segments + [seg], u.seg, u.row)
    return ids
