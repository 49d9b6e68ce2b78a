import os
import secrets
import tempfile
from pathlib import Path

import pytest

from kvi_engine.testing.tiny import FAMILIES

# tests/vllm/ runs in vLLM's own environment (bash tests/vllm/run.sh sets KVI_VLLM_TESTS=1); the main suite never
# collects it, so it never imports vLLM.
collect_ignore = [] if os.environ.get("KVI_VLLM_TESTS") == "1" else ["vllm"]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


# Ray (tests/test_distributed_*.py). Ray >= 2.5x turns token authentication on for new clusters and a driver that
# joins by address does not pick the token up by itself; Ray reads these settings when it is imported. One private
# token for the session, set before anything imports ray, keeps every cluster and child driver consistent and
# leaves ~/.ray alone.
_RAY_TOKEN_DIR = tempfile.mkdtemp(prefix="kvi-raytok-")
Path(_RAY_TOKEN_DIR, "token").write_text(secrets.token_hex(32))
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(Path(_RAY_TOKEN_DIR, "token")))


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray cluster of 2 CPUs in this process (never one another user started: address="local"),
    shut down at the end of the module. Yields the ``ray`` module."""
    import ray

    from kvi_engine.distributed.cluster import connect
    assert not ray.is_initialized()
    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()
