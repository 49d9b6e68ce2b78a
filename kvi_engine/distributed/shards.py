"""A per-item stage on Ray: contiguous shards of items -> Ray tasks (retried if their worker dies) -> the results in
shard order, never completion order.

This is the distributed half of any ingestion whose per-document stage is a pure function of its documents (the
rule/LLM extraction of :mod:`kvi_engine.ingest.assets`, or a per-document NLP analysis): run it on shards with
:func:`map_shards`, then the corpus-wide stage once on the driver, over the results in document order.
"""
from __future__ import annotations

from typing import Callable, Sequence

from kvi_engine.distributed.cluster import connect, worker_error


def map_shards(fn: Callable, items: Sequence, shard_size: int, *, args: tuple = (), address: str | None = None,
               cpus_per_task: float = 1, max_retries: int = 3, progress: bool = True, unit: str = "item",
               desc: str = "shards") -> list:
    """``[fn(shard, *args) for shard in shards]`` on a Ray cluster, ``shard_size`` contiguous items a shard, one
    task each. ``fn`` must be importable by reference (a module-level function or a ``functools.partial`` of one);
    ``args`` are put in the object store once and shared by every task. A task whose worker dies is retried
    (``max_retries``, Ray's task retries); an exception ``fn`` raises is not retried and reaches the caller as
    itself. ``address`` as in :func:`kvi_engine.distributed.cluster.connect`. The driver shows a tqdm bar of items
    (its rate is items/s) with ``shards=done/total``."""
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    items = list(items)
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    ray = connect(address, what=desc)
    task = ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)(_apply)  # fn may be a partial: an argument
    fn_ref, refs = ray.put(fn), [ray.put(a) for a in args]
    pending = {task.remote(fn_ref, s, *refs): i for i, s in enumerate(shards)}
    out: dict[int, object] = {}
    bar = tqdm(total=len(items), unit=unit, desc=desc, disable=not progress)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            out[i] = _get(ray, done[0])
            bar.update(len(shards[i]))
            bar.set_postfix(shards=f"{len(out)}/{len(shards)}")
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
    return [out[i] for i in range(len(shards))]


def _apply(fn: Callable, shard: list, *args):
    return fn(shard, *args)


def _get(ray, ref):
    from ray.exceptions import RayError
    try:
        return ray.get(ref)
    except RayError as e:
        raise worker_error(e) from None
