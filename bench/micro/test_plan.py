"""build_plan: the host-side slot table of a batch (numpy, a row at a time), per layout."""
import pytest
from conftest import BATCH, INJECTED

from kvi_engine.benchmarks.attention import capsule_rows
from kvi_engine.plan.plan import build_plan


@pytest.mark.parametrize("layout", ["stacked", "parallel"])
def test_build_plan(benchmark, make_bank, layout):
    bank = make_bank("fp16")
    r = capsule_rows(bank, BATCH, INJECTED)
    benchmark.extra_info.update(op="build_plan", backend="numpy", layout=layout, batch=BATCH,
                                capsules=sum(map(len, r)))
    benchmark(build_plan, bank, r, layout=layout)
