"""The bank codec: encoding rows (C++ vs the PyTorch reference) and gathering + dequantising tokens (op
``bank_dequant``: C++ vs reference)."""
import numpy as np
import pytest
import torch

from kvi_engine import _core
from kvi_engine.bank import quant
from kvi_engine.bank.spec import QuantSpec

ROWS, D = 4096, 64


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((ROWS, D), dtype=np.float32)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_encode(benchmark, x, scheme, backend):
    spec = QuantSpec.parse(scheme)
    g = spec.group_for(D)
    benchmark.extra_info.update(op="codec_encode", scheme=scheme, backend=backend, rows=ROWS, head_dim=D)
    if backend == "cpp":
        benchmark(_core.quant_encode_rows, x, scheme, g, 1)
    else:
        t = torch.from_numpy(x)
        benchmark(quant.encode_rows, t, spec)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_dequant_gather(benchmark, make_bank, scheme, backend):
    bank = make_bank(scheme)
    idx = torch.arange(0, bank.num_tokens, 3)
    benchmark.extra_info.update(op="bank_dequant", scheme=scheme, backend=backend, tokens=len(idx))
    benchmark(bank.gather_kv, 0, idx, backend=backend)
