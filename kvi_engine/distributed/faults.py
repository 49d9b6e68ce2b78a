"""The fault hooks of the distributed compile and ingestion: a worker dies, once and deterministically, in the middle
of a shard (compile) or at the start of a task (:func:`exit_once`).

A fault is a plain dict passed to :func:`kvi_engine.distributed.compile_bank` (``fault=``)::

    {"shard": 1, "after_batches": 1, "flag": "/tmp/x/flag", "how": "exit" | "wait"}

The first attempt of shard ``shard`` to finish ``after_batches`` batches creates ``flag`` (``O_EXCL``, so only one
attempt ever fires and the retry passes) and writes ``"<pid> <actor id>"`` into it. Then ``"exit"`` ends the worker
process at once (``os._exit``: a crash, no cleanup, a partial segment file left behind); ``"wait"`` blocks until
someone kills the actor (a test thread calls ``ray.kill`` on the actor named in the flag).
"""
from __future__ import annotations

import os
import time

EXIT_STATUS = 17


def fault_point(fault: dict | None, shard: int, batches_done: int) -> None:
    if not fault or fault.get("shard") != shard or batches_done != fault.get("after_batches", 1):
        return
    try:
        fd = os.open(fault["flag"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    actor = ""
    try:
        import ray
        actor = ray.get_runtime_context().get_actor_id() or ""
    except Exception:  # noqa: BLE001 -- in-process (no Ray): the pid is all there is
        pass
    os.write(fd, f"{os.getpid()} {actor}\n".encode())
    os.close(fd)
    if fault.get("how", "exit") == "exit":
        os._exit(EXIT_STATUS)
    while True:
        time.sleep(0.05)


def exit_once(flag: str, fn, *args):
    """``fn(*args)``, except that the first call anywhere on the cluster (it creates ``flag``, ``O_EXCL``) ends its
    worker process first: a task whose worker crashed, for :func:`kvi_engine.distributed.map_shards` to retry. Use
    as ``functools.partial(exit_once, flag, fn)``."""
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return fn(*args)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    os._exit(EXIT_STATUS)
