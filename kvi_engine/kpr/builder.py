"""Entity knowledge builder: the linker, vocabulary and fp16 table of a KPR model directory.

An entity's vector is the sum of base-encoder embeddings of up to ``max_contexts`` mention contexts (each mention
of it replaced by the mask token), scaled to ``norm``; an entity with no context is embedded from its anchor
statement (kvi_engine.statements). A context counts for an entity when the linker gives it prior > 0.5 there, so an
ambiguous alias does not smear one context over several entities. Each row carries a fingerprint of everything its
vector depends on (entity record, contexts, encoder, norm); an update copies the rows whose fingerprint is unchanged
bit for bit and computes only the rest. Work is checkpointed under ``<out>/.kpr_build`` and resumes after a crash.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from kvi_engine.capsules.capsule import Entity
from kvi_engine.capsules.statements import anchor_statement
from kvi_engine.kpr.table import LINKER_FILE, TABLE_FILE, VOCAB_FILE, EntityTable, TableMeta, write_vocab
from kvi_engine.utils.atomic import atomic_open, atomic_write_bytes, fsync_dir
from kvi_engine.utils.jsonl import read_jsonl

CONTEXT_MIN_PRIOR = 0.5
STATE_DIR = ".kpr_build"


def load_contexts(path: str | os.PathLike) -> list[str]:
    """A JSONL file of {"text": ...} lines (extra keys ignored) or a plain text file, one context per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such context file")
    if path.suffix == ".jsonl":
        texts = []
        for lineno, obj in read_jsonl(path, what="context file"):
            if not isinstance(obj.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string \"text\"")
            texts.append(obj["text"])
        return texts
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def surface_forms(entities: Sequence[Entity]) -> tuple[list[str], np.ndarray]:
    """Linker rows: every name and alias -> its entity row. Priors are left to the linker: a name shared (after its
    normalisation) by k entities gives each prior 1/k."""
    forms = [(form, i) for i, e in enumerate(entities) for form in dict.fromkeys(e.names)]
    return [f for f, _ in forms], np.array([i for _, i in forms], dtype=np.int64)


def build_linker(entities: Sequence[Entity]):
    from kvi_engine.graph.linker import EntityLinker

    return EntityLinker.build(*surface_forms(entities))


def collect_contexts(linker, num_entities: int, texts: Sequence[str], max_contexts: int, mask_token: str,
                     batch_size: int = 512) -> list[list[str]]:
    """Up to ``max_contexts`` masked contexts per entity row, in corpus order."""
    out: list[list[str]] = [[] for _ in range(num_entities)]
    for s in tqdm(range(0, len(texts), batch_size), desc="link contexts", disable=len(texts) <= batch_size,
                  leave=False):
        chunk = texts[s:s + batch_size]
        for text, mentions in zip(chunk, linker.link(list(chunk))):
            spans: dict[int, list[tuple[int, int]]] = {}
            for m in mentions:
                for eid, prior in m.candidates:
                    if prior > CONTEXT_MIN_PRIOR and len(out[eid]) < max_contexts:
                        spans.setdefault(int(eid), []).append((m.start, m.end))
            for eid, sp in spans.items():
                out[eid].append(_mask_spans(text, sp, mask_token))
    return out


def _mask_spans(text: str, spans: list[tuple[int, int]], mask_token: str) -> str:
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in reversed(merged):
        text = text[:a] + mask_token + text[b:]
    return text


def encoder_id(path: str | os.PathLike) -> str:
    """Path plus a digest of the weights' size and first/last MiB: a changed encoder invalidates every row."""
    path = Path(path)
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    h = hashlib.sha1()
    for w in weights:
        size = w.stat().st_size
        with open(w, "rb") as f:
            h.update(str(size).encode() + f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read())
    return f"{path.resolve()}#{h.hexdigest()[:16]}"


def fingerprint(entity: Entity, contexts: list[str], encoder: str, norm: float) -> str:
    blob = json.dumps([asdict(entity), contexts, encoder, norm], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def build_knowledge(out_dir: str | os.PathLike, entities: Sequence[Entity], encoder, encoder_key: str,
                    contexts: Sequence[str] = (), max_contexts: int = 32, norm: float = 1.0,
                    previous: EntityTable | None = None, chunk: int = 256) -> dict:
    """Write linker, vocabulary and table for ``entities`` into ``out_dir``. ``encoder`` has ``encode(texts)`` and
    ``mask_token``; ``previous`` supplies rows to reuse. Returns counts {"entities", "reused", "computed",
    "from_contexts", "from_anchors"}."""
    if not entities:
        raise ValueError("no entities to build knowledge for")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    linker = build_linker(entities)
    ctx = collect_contexts(linker, len(entities), list(contexts), max_contexts, encoder.mask_token)
    fps = [fingerprint(e, c, encoder_key, norm) for e, c in zip(entities, ctx)]
    dim = int(encoder.encode(["probe"]).shape[1])
    if previous is not None and previous.dim != dim:
        raise ValueError(f"previous table has dim {previous.dim}, the encoder gives {dim}")

    state = out_dir / STATE_DIR
    plan_key = hashlib.sha1(json.dumps([fps, dim]).encode()).hexdigest()
    state.mkdir(exist_ok=True)
    partial, done_path, plan_path = state / "table.npy", state / "done.npy", state / "plan.txt"
    resume = plan_path.is_file() and plan_path.read_text() == plan_key and partial.is_file() and done_path.is_file()
    if resume:
        table = np.load(partial, mmap_mode="r+")
        done = np.load(done_path)
    else:
        table = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(entities), dim))
        done = np.zeros(len(entities), dtype=bool)
        atomic_write_bytes(plan_path, plan_key.encode())
    reused = 0
    if previous is not None:
        for i, (e, fp) in enumerate(zip(entities, fps)):
            j = previous.index.get(e.name)
            if not done[i] and j is not None and previous.fingerprints[j] == fp:
                table[i] = previous.vectors[j]
                done[i] = True
                reused += 1
    todo = np.flatnonzero(~done)
    stats = {"entities": len(entities), "reused": reused, "computed": int(len(todo)), "resumed": int(resume),
             "from_contexts": sum(bool(ctx[i]) for i in todo), "from_anchors": sum(not ctx[i] for i in todo)}
    for s in tqdm(range(0, len(todo), chunk), desc="entity vectors", disable=len(todo) == 0):
        rows = todo[s:s + chunk]
        texts, owner = [], []
        for local, i in enumerate(rows):
            for t in (ctx[i] or [anchor_statement(entities[i])]):
                texts.append(t)
                owner.append(local)
        vec = np.zeros((len(rows), dim), dtype=np.float64)
        np.add.at(vec, np.asarray(owner), encoder.encode(texts))
        vec *= norm / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        table[rows] = vec.astype(np.float16)
        table.flush()
        done[rows] = True
        with atomic_open(done_path, "wb") as f:
            np.save(f, done)
    table.flush()
    del table  # the memory-mapped partial table is published by rename only once every row is written

    meta = TableMeta(dim=dim, norm=norm, source="contexts+anchors", encoder=encoder_key)
    os.replace(partial, out_dir / TABLE_FILE)
    write_vocab(out_dir / VOCAB_FILE, [e.name for e in entities], fps, meta)
    linker.save(out_dir / LINKER_FILE)
    fsync_dir(out_dir)
    shutil.rmtree(state)
    return stats
