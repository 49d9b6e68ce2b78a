"""Reaching a Ray cluster: the optional import, ``--ray [ADDRESS]``, and what the cluster offers.

    --ray            a private local cluster in this process: ray.init(address="local")
    --ray auto       join the cluster ``ray start`` made on this machine
    --ray HOST:PORT  join that cluster's GCS

Measured pitfalls this module exists for (Ray 2.60.0): ``ray.init()`` with no address silently joins any
``ray start`` cluster on the machine, even a dead one, so a local cluster is always asked for as ``"local"``. A
driver given an explicit address does not pick up the login token that ``ray start`` writes to
``~/.ray/auth_token`` (AuthenticationError after ~20 s), and Ray reads its auth settings when it is imported, so
the token mode is set before ``import ray``. Ray is found through its distribution metadata: with the working
directory at /tmp, ``importlib.util.find_spec("ray")`` finds Ray's own temp dir ``/tmp/ray`` as a namespace package.
"""
from __future__ import annotations

import logging
import os
import sys

from kvi_engine.utils.extras import MissingExtra, installed, require

AUTH_HINT = ("the cluster requires Ray's token authentication: make its token available (~/.ray/auth_token, "
             "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) with RAY_AUTH_MODE=token before the program starts")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or cannot run the work (a user can fix it: one line in the CLI)."""


def require_ray(what: str = "a Ray cluster"):
    """The ``ray`` module, or :class:`~kvi_engine.utils.extras.MissingExtra` naming the ``ray`` extra."""
    hint = f"{what} needs ray: pip install 'kvi-engine[ray]'"
    if not installed("ray"):
        raise MissingExtra(hint)
    ray = require("ray", "ray", what)
    if not hasattr(ray, "init"):  # a directory named ray/ on sys.path imported as a namespace package
        raise MissingExtra(f"{hint} (found only a directory {list(ray.__path__)})")
    return ray


def connect(address: str | None = "local", *, num_cpus: int | None = None, num_gpus: int | None = None,
            quiet: bool = True, what: str = "a Ray cluster"):
    """Initialise Ray for the engine (nothing happens if this process already did); returns the ``ray`` module.
    ``address``: ``None`` or ``"local"`` (a private cluster of ``num_cpus``/``num_gpus``), ``"auto"`` or
    ``"HOST:PORT"``."""
    if ("ray" not in sys.modules and address not in (None, "local", "auto") and "RAY_AUTH_MODE" not in os.environ
            and os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
        os.environ["RAY_AUTH_MODE"] = "token"  # what Ray itself does for "auto", not for an explicit address
    ray = require_ray(what)
    if ray.is_initialized():
        return ray
    kw = dict(logging_level=logging.ERROR, log_to_driver=False) if quiet else {}
    if address in (None, "local"):
        kw.update(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
    else:
        kw.update(address=address)
    try:
        ray.init(**kw)
    except ConnectionError as e:
        if "auth" in f"{e!r} {e.__cause__!r}".lower():
            raise ClusterError(f"cannot join the Ray cluster at {address}: {AUTH_HINT}") from None
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e}") from None
    return ray


def cluster_resources(ray) -> dict[str, float]:
    """``{"CPU": n, "GPU": m}`` of the whole cluster (every node)."""
    res = ray.cluster_resources()
    return {"CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))}


def worker_error(e: BaseException) -> BaseException:
    """What to raise for an error Ray reports from a task or actor: the exception the worker's code raised (a
    ValueError stays a ValueError, so the CLI prints it as one line), also when it killed an actor's constructor;
    else a :class:`ClusterError` with the first line of Ray's message (a worker that died past its retries)."""
    for x in (e, *(getattr(e, "args", ()) or ())[:1]):
        cause = getattr(x, "cause", None)
        if isinstance(cause, Exception):
            return cause
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return ClusterError(f"Ray: {type(e).__name__}: {first}")
