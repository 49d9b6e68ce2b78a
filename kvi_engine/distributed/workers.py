"""Compile workers: one model replica each, as Ray actors (or one in this process), and the pool that holds them.

A :class:`CompileWorker` loads its replica once and then compiles shard after shard: each shard is one call of
:func:`kvi_engine.compile.compiler.compile_segment`, the very code a single-process compile runs, written as one
segment file straight into the bank directory (which every worker must see: :meth:`CompileWorker.check_shared`).

Fault tolerance is Ray's: an actor that dies is restarted (``max_restarts``: its ``__init__`` runs again, reloading
the model) and the shard it was running -- and any queued on it -- is resubmitted (``max_task_retries``; without it
they fail with ``RayActorError`` although the actor comes back). Measured on Ray 2.60.0: a worker ``os._exit`` in
the middle of a shard and a ``ray.kill(actor, no_restart=False)`` both end with every shard completed.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kvi_engine.distributed.cluster import ClusterError, cluster_resources, worker_error
from kvi_engine.distributed.faults import fault_point


def load_replica(name: str | None, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer, fell_back)`` as ``kvi compile --model/--dtype/--device`` loads them, inside a worker.
    ``device="auto"``: the GPU Ray gave this worker, else the CPU. Use as ``functools.partial(load_replica, name)``
    (importable by reference, so nothing but the arguments is shipped to the workers)."""
    import torch

    from kvi_engine.models.loading import load_model
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return load_model(name, dtype=torch_dtype, device=device)


class CompileWorker:
    """One model replica (made a Ray actor by :class:`CompilePool`; this module imports without Ray)."""

    def __init__(self, make_model: Callable, threads: int):
        # Ray re-runs __init__ on every restart: nothing here may be a one-shot check. By now the process has
        # started and imported torch, transformers and the engine (to unpickle this class): most of a start-up.
        self.init_unix = time.time()
        import torch
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS for its workers; torch is told explicitly
        t = time.perf_counter()
        made = make_model()
        self.model, self.tokenizer = made[0], made[1]
        self.fell_back = bool(made[2]) if len(made) > 2 else False
        self.load_s = time.perf_counter() - t

    def info(self) -> dict:
        import torch
        return {"pid": os.getpid(), "host": socket.gethostname(), "init_unix": self.init_unix,
                "load_s": round(self.load_s, 3), "torch_threads": torch.get_num_threads(),
                "device": str(next(self.model.parameters()).device), "fell_back": self.fell_back}

    def check_shared(self, out: str, probe: tuple[str, str]) -> None:
        p = Path(out) / probe[0]
        if not p.is_file() or p.read_text() != probe[1]:
            raise ClusterError(f"{out} is not visible from worker node {socket.gethostname()}: the bank directory "
                               "must be on a filesystem shared by the driver and every worker")

    def describe(self) -> dict:
        """The bank header fields of this replica (the driver loads no model: worker 0 describes it)."""
        from kvi_engine._version import __version__
        from kvi_engine.compile.compiler import model_dims
        from kvi_engine.models import fingerprint, rope
        rope.check_repositionable(self.model)
        return {"header": {"engine_version": __version__, "fingerprint": fingerprint.fingerprint(self.model,
                                                                                                   self.tokenizer),
                           "rope": rope.rope_parameters(self.model)},
                "dims": model_dims(self.model), "dtype": str(next(self.model.parameters()).dtype),
                "device_type": next(self.model.parameters()).device.type}

    def check_model(self, desc: dict) -> None:
        """Every replica must be worker 0's model, in the same dtype on the same kind of device: the fingerprint
        tolerates an fp16-vs-fp32 load, identical KV bits do not."""
        from kvi_engine.models import fingerprint
        fingerprint.check(desc["header"]["fingerprint"], self.model, self.tokenizer,
                          where=f"compile worker pid {os.getpid()}")
        p = next(self.model.parameters())
        if (str(p.dtype), p.device.type) != (desc["dtype"], desc["device_type"]):
            raise ClusterError(f"compile worker pid {os.getpid()} holds the model as {p.dtype} on {p.device.type}, "
                               f"worker 0 as {desc['dtype']} on {desc['device_type']}")

    def compile_shard(self, out: str, shard: int, ids: np.ndarray, caps: list, texts: list[str], quant: str,
                      generation: int, batch_size: int, shard_size: int, header: dict,
                      fault: dict | None = None) -> dict:
        """Compile one shard (bank ids ``ids``) into a fresh segment file of ``out``; returns its name and id."""
        from kvi_engine.bank.segments import SegmentWriter, new_segment_name
        from kvi_engine.bank.spec import QuantSpec
        from kvi_engine.compile.compiler import compile_segment, model_dims

        spec = QuantSpec.parse(quant)
        path = Path(out) / new_segment_name(generation)  # fresh name per attempt: a retry never overwrites

        def make_writer(lengths, token_ids, meta, prefix, pk, pv):
            return SegmentWriter(path, spec, **model_dims(self.model), lengths=lengths, token_ids=token_ids,
                                 meta=meta, capsule_ids=np.asarray(ids, np.int64), prefix_token_ids=prefix,
                                 prefix_k=pk, prefix_v=pv, header=dict(header, created_unix=time.time(), shard=shard))

        t = time.perf_counter()
        seg, _ = compile_segment(self.model, self.tokenizer, list(caps), list(texts), make_writer,
                                 batch_size=batch_size, shard_size=shard_size, progress=False,
                                 ids=[int(i) for i in ids],
                                 on_batch=lambda b, _n: fault_point(fault, shard, b))
        return {"shard": shard, "file": seg.path.name, "segment_id": seg.segment_id, "n": seg.num_capsules,
                "seconds": time.perf_counter() - t, "pid": os.getpid()}


class _Local:
    """Stands in for an actor handle in this process: ``h.method.remote(...)`` calls the method now."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return type("Method", (), {"remote": staticmethod(getattr(self._obj, name))})


class CompilePool:
    """``num_workers`` compile workers, each holding one model replica, kept for as many compiles as you like.

    On a cluster with GPUs every worker takes one (``gpus_per_worker``, default 1 there, else 0) and
    ``cpus_per_worker`` CPUs (torch threads = that count, at least 1). ``num_workers=None``: one per GPU, or as
    many as the cluster's CPUs allow. ``num_workers=0``: one worker in this process, no Ray (the same shard
    schedule and commit). Start-up (actor processes, imports, model loads) is timed in :attr:`startup_s`."""

    def __init__(self, make_model: Callable, *, num_workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, max_restarts: int = 3, address: str | None = None):
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if cpus_per_worker < 0 or max_restarts < 0:
            raise ValueError("cpus_per_worker and max_restarts must be >= 0")
        t = time.perf_counter()
        threads = max(1, int(cpus_per_worker))
        self.local = num_workers == 0
        self.ray = None
        if self.local:
            self.actors = [_Local(CompileWorker(make_model, threads))]
            self.infos = [self.actors[0].info.remote()]
        else:
            from kvi_engine.distributed.cluster import connect
            ray = self.ray = connect(address)
            res = cluster_resources(ray)
            if gpus_per_worker is None:
                gpus_per_worker = 1 if res["GPU"] >= 1 else 0
            if num_workers is None:
                per = gpus_per_worker or cpus_per_worker
                num_workers = max(1, int((res["GPU"] if gpus_per_worker else res["CPU"]) // per)) if per else 1
            need = {"CPU": cpus_per_worker * num_workers, "GPU": gpus_per_worker * num_workers}
            short = [f"{need[k]:g} {k}s" for k in need if need[k] > res[k]]
            if short:
                raise ClusterError(f"{num_workers} compile workers need {' and '.join(short)}; the cluster has "
                                   f"{res['CPU']:g} CPUs and {res['GPU']:g} GPUs")
            Worker = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=max_restarts,
                                max_task_retries=max_restarts)(CompileWorker)
            submitted = time.time()
            self.actors = [Worker.remote(make_model, threads) for _ in range(num_workers)]
            try:
                self.infos = self.get([a.info.remote() for a in self.actors])
            except BaseException:
                self.close()
                raise
            for i in self.infos:  # process start + imports, as the driver saw it (one clock on one machine)
                i["spawn_import_s"] = round(i["init_unix"] - submitted, 3)
        self.num_workers = len(self.actors) if not self.local else 0
        self.gpus_per_worker = gpus_per_worker or 0
        self.startup_s = time.perf_counter() - t

    def get(self, refs):
        """``ray.get`` (values as they are in this process); an error a worker raised is re-raised as itself."""
        if self.local:
            return refs
        from ray.exceptions import RayError
        try:
            return self.ray.get(refs)
        except RayError as e:
            raise worker_error(e) from None

    def map_unordered(self, fn, values):
        """``fn(actor, value)`` over ``values``, at most one in flight per worker; results as they finish."""
        if self.local:
            for v in values:
                yield fn(self.actors[0], v)
            return
        from ray.exceptions import RayError
        from ray.util import ActorPool
        it = ActorPool(self.actors).map_unordered(fn, values)
        while True:
            try:
                r = next(it)
            except StopIteration:
                return
            except RayError as e:
                raise worker_error(e) from None
            yield r

    def close(self) -> None:
        """End the replicas now (a GPU replica otherwise holds its memory until the driver exits)."""
        if self.ray is not None:
            for a in self.actors:
                self.ray.kill(a, no_restart=True)
        self.actors = []

    def __enter__(self) -> "CompilePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
