"""Op ``slot_gather``: a plan's injected KV gathered, dequantised and rotated to its slots (C++ vs PyTorch)."""
import pytest
import torch
from conftest import SCHEMES, model

from kvi_engine.plan import gather


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_slot_gather(benchmark, make_plan, scheme, backend):
    plan = make_plan(scheme)
    m, _ = model()
    fn = gather.gather_cpp if backend == "cpp" else gather.gather_reference
    fn(plan, 0, m, torch.float32, "cpu")  # tables and rotation caches built once, as in use
    benchmark.extra_info.update(op="slot_gather", scheme=scheme, backend=backend,
                                injected_tokens=int(plan.valid.sum()))
    benchmark(fn, plan, 0, m, torch.float32, "cpu")
