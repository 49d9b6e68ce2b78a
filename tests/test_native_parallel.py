"""The native core's worker pool: a fork()ed child still runs parallel calls (libgomp's pool does not survive fork,
so the module's fork guard sends the child to plain threads); concurrent callers get correct results."""
import os
import signal
import sys
import threading

import numpy as np
import pytest

from kvi_engine import _core


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_parallel_calls():
    x = np.random.default_rng(0).random((4000, 128), dtype=np.float32)
    want = _core.quant_encode_rows(x, "int4", 32, 2)  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # child: hang -> SIGALRM kills it; wrong result -> exit 1
        signal.alarm(30)
        got = _core.quant_encode_rows(x, "int4", 32, 2)
        os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, want)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked child failed: status {status}"


def test_concurrent_callers_agree():
    rng = np.random.default_rng(1)
    xs = [rng.random((3000, 64), dtype=np.float32) for _ in range(4)]
    want = [_core.quant_encode_rows(x, "int8", 64, 1) for x in xs]
    got = [None] * len(xs)

    def run(i):
        got[i] = _core.quant_encode_rows(xs[i], "int8", 64, 2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert np.array_equal(g[0], w[0]) and np.array_equal(g[1], w[1])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
