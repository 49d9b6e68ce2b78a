"""The distributed compile: capsule shards -> compile workers (one model replica each) -> one segment per shard ->
one atomic manifest write by the driver.

Capsule ids are fixed by :func:`~kvi_engine.compile.compiler.capsule_statements` before anything is sharded. Shards
are the blocks of the single-process schedule (:func:`~kvi_engine.compile.compiler.batch_schedule`): contiguous id
ranges of ``shard_size``, each compiled in the same batches as in one process. The manifest lists the segments in
shard order, so capsule ``i`` sits at the same global ``(token_start, length)`` as in a single-process bank, with the
same token ids and, batch for batch, the same KV bits -- for any number of workers, or none.

Workers write their segments straight into the bank directory under fresh names (``seg-<generation>-<uuid>.kvb``);
nothing refers to them until the driver, holding the bank's writer lock, has checked every shard's segment and
renamed the new manifest into place. A driver killed before that rename leaves the previous bank exactly as it was
(readers see it; the unregistered files are orphans that the next compile or update deletes). After the rename, the
files of killed or duplicate attempts are deleted too.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.segments import Segment, Snapshot
from kvi_engine.bank.spec import QuantSpec
from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.compile.compiler import DEFAULT_SHARD_SIZE, capsule_statements
from kvi_engine.distributed.workers import CompilePool
from kvi_engine.formats.container import BankFormatError


@dataclass(slots=True)
class DistributedCompile:
    """What :func:`compile_bank` did: the bank, and where the time went (seconds)."""
    bank: KVBank
    num_workers: int
    num_shards: int
    startup_s: float          # starting the workers (0 when a started pool was given)
    compile_s: float          # first shard sent -> last shard back
    commit_s: float
    total_s: float
    workers: list[dict] = field(default_factory=list)   # per worker: pid, host, import_s, load_s, device
    shards: list[dict] = field(default_factory=list)    # per shard: file, n, seconds, pid of the attempt kept
    garbage: list[str] = field(default_factory=list)    # files deleted after the commit

    @property
    def capsules_per_s(self) -> float:
        return self.bank.num_capsules / self.compile_s if self.compile_s > 0 else float("inf")


def shards_of(num_capsules: int, shard_size: int) -> list[np.ndarray]:
    """Bank ids of each shard: ``[0, shard_size), [shard_size, 2 shard_size), …``; the worker count plays no part."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [np.arange(lo, min(lo + shard_size, num_capsules)) for lo in range(0, num_capsules, shard_size)]


def compile_bank(model: Callable | CompilePool, capsules: Sequence[Capsule], out: str | os.PathLike,
                 quant: str = "fp16", *, entities: Sequence[Entity] = (), templates: dict[str, str] | None = None,
                 batch_size: int = 32, shard_size: int = DEFAULT_SHARD_SIZE, address: str | None = None,
                 num_workers: int | None = None, cpus_per_worker: float = 1, gpus_per_worker: float | None = None,
                 max_restarts: int = 3, fault: dict | None = None, progress: bool = True) -> DistributedCompile:
    """Compile ``capsules`` (then one anchor per entity) into bank directory ``out`` on a Ray cluster, replacing
    any bank there in one manifest rename. The bank equals :func:`kvi_engine.compile_bank`'s with the same
    ``batch_size`` and ``shard_size``: same capsule table and token ids, same KV bits (fp formats) and codes.

    ``model``: a factory ``() -> (model, tokenizer[, fell_back])`` run in every worker (an importable function or
    ``functools.partial`` of one, e.g. ``partial(load_replica, "Qwen/Qwen2.5-0.5B-Instruct")``), or a started
    :class:`CompilePool` to reuse. The driver loads no model. ``address``: the cluster (``None``: the one this
    process joined already, else a private local one; ``"auto"``; ``"HOST:PORT"``). ``num_workers=0`` runs the
    same schedule and commit in this process, without Ray. ``fault``: the test hook of
    :mod:`kvi_engine.distributed.faults`."""
    t0 = time.perf_counter()
    QuantSpec.parse(quant)  # a bad scheme fails before any worker starts
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    caps, texts = capsule_statements(capsules, entities, templates)  # bank ids are fixed here, before sharding
    if not caps:
        raise ValueError("nothing to compile: no capsules and no entities given")
    shards = shards_of(len(caps), shard_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    own = not isinstance(model, CompilePool)
    if not own and not model.actors:
        raise ValueError("the compile pool was closed")
    if own and num_workers is not None and num_workers > len(shards):
        num_workers = len(shards)  # a worker with no shard would only cost a start-up
    pool = CompilePool(model, num_workers=num_workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, max_restarts=max_restarts, address=address) if own else model
    try:
        with bank_updates.writer_lock(out):
            run = _compile_locked(pool, caps, texts, shards, out, quant, batch_size, shard_size, fault, progress)
    finally:
        if own:
            pool.close()
    run.startup_s = pool.startup_s if own else 0.0
    run.total_s = time.perf_counter() - t0
    return run


def _compile_locked(pool: CompilePool, caps, texts, shards, out: Path, quant: str, batch_size: int, shard_size: int,
                    fault, progress: bool) -> DistributedCompile:
    try:
        generation = Snapshot.open(out).generation + 1
    except (BankFormatError, OSError):  # no bank yet, or a broken one: replaced all the same
        generation = 1
    # named like a writer's temp file, so that a driver killed before removing it leaves it to the next writer's GC
    probe = (f".seg-probe-{secrets.token_hex(6)}", secrets.token_hex(16))
    (out / probe[0]).write_text(probe[1])
    try:
        pool.get([a.check_shared.remote(str(out), probe) for a in pool.actors])
    finally:
        (out / probe[0]).unlink(missing_ok=True)
    desc = pool.get(pool.actors[0].describe.remote())
    QuantSpec.parse(quant).header(desc["dims"]["head_dim"])  # a group size not dividing head_dim: refused here
    pool.get([a.check_model.remote(desc) for a in pool.actors[1:]])
    header = desc["header"]

    results: dict[int, dict] = {}
    label = f"compile x{pool.num_workers}" if pool.num_workers else "compile (in process)"
    bar = tqdm(total=len(caps), unit="capsule", desc=label, disable=not progress)
    t = time.perf_counter()
    work = [(s, ids) for s, ids in enumerate(shards)]
    for r in pool.map_unordered(lambda a, v: a.compile_shard.remote(
            str(out), v[0], v[1], [caps[i] for i in v[1]], [texts[i] for i in v[1]], quant, generation, batch_size,
            shard_size, header, fault), work):
        results[r["shard"]] = r
        bar.update(r["n"])
        bar.set_postfix(shards=f"{len(results)}/{len(shards)}")  # the bar's own rate is capsules/s
    bar.close()
    compile_s = time.perf_counter() - t

    t = time.perf_counter()
    segs = [Segment(out / results[s]["file"]) for s in range(len(shards))]
    for s, seg in enumerate(segs):
        if seg.segment_id != results[s]["segment_id"] or not np.array_equal(seg.capsule_ids, shards[s]):
            raise BankFormatError(f"shard {s}: segment {seg.path.name} does not hold the shard's capsules")
        segs[0].compatible(seg)
    seg_of = np.concatenate([np.full(len(ids), s, np.int64) for s, ids in enumerate(shards)])
    row_of = np.concatenate([np.arange(len(ids), dtype=np.int64) for ids in shards])
    bank_updates.write_manifest(out, generation, segs, seg_of, row_of)
    garbage = bank_updates.collect_garbage(out, {s.path.name for s in segs})
    commit_s = time.perf_counter() - t
    return DistributedCompile(KVBank.open(out), pool.num_workers, len(shards), 0.0, compile_s, commit_s, 0.0,
                              list(pool.infos), [results[s] for s in range(len(shards))], garbage)
