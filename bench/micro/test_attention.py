"""prefix_attention per mode, storage scheme and backend (the float32 oracle, SDPA over the gathered KV, the fused
C++ kernel; Triton where it can run natively). Prefill drops the plan's gathered KV before every round (a new batch
pays it); decode keeps it (later tokens reuse it)."""
import pytest
from conftest import PROMPT, SCHEMES, activations, model

from kvi_engine import dispatch
from kvi_engine.attention import op as attention

BACKENDS = ["reference", "sdpa", "cpp"] + (["triton"] if dispatch.cuda_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_prefix_attention(benchmark, make_plan, mode, scheme, backend):
    plan = make_plan(scheme)
    m, _ = model()
    q, k, v = activations(PROMPT if mode == "prefill" else 1, PROMPT + (mode == "decode"))

    def run():
        attention.prefix_attention(q, k, v, None, plan, 0, m, backend=backend)

    def fresh():
        plan.forget(lambda key: isinstance(key[0], int))  # the gathered KV of the unfused path; tables stay

    run()
    benchmark.extra_info.update(op="prefix_attention", mode=mode, scheme=scheme, backend=backend,
                                injected_tokens=int(plan.valid.sum()) // plan.batch_size)
    if mode == "prefill":
        benchmark.pedantic(run, setup=fresh, rounds=5, iterations=1)
    else:
        benchmark(run)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_decode_attention(benchmark, make_plan, backend):
    """Op decode_attention alone: one decode step over the plan's gathered KV (what the sdpa backend's decode runs),
    the PyTorch twin against the C++ kernel."""
    from kvi_engine.attention.split import OP
    from kvi_engine.plan.gather import injected_kv

    plan = make_plan("fp16")
    m, _ = model()
    q, k, v = activations(1, PROMPT + 1)
    k_inj, v_inj, valid = injected_kv(plan, 0, m, q.dtype, q.device)
    _, fn = dispatch.select(OP, backend)

    def run():
        fn(q, k_inj, v_inj, valid, k, v, None)

    run()
    benchmark.extra_info.update(op=OP, backend=backend, injected_tokens=int(plan.valid.sum()) // plan.batch_size)
    benchmark(run)


@pytest.mark.parametrize("values", ["fp32", "fp16"])
def test_decode_step(benchmark, make_plan, values):
    """inject's prepared decode step (``DecodeStep``): the C++ kernel over arrays bound once per plan, the injected
    values as gathered (float32) or kept in fp16 (what an fp16 bank's step does); against test_decode_attention's
    cpp entry this is the per-call Python the step saves."""
    from kvi_engine.attention.decode_cpp import DecodeStep
    from kvi_engine.plan.gather import injected_kv

    plan = make_plan("fp16")
    m, _ = model()
    q, k, v = activations(1, PROMPT + 1)
    step = DecodeStep(*injected_kv(plan, 0, m, q.dtype, q.device), values_fp16=values == "fp16")

    def run():
        step(q, k, v)

    run()
    benchmark.extra_info.update(op="decode_step", backend="cpp", values=values,
                                injected_tokens=int(plan.valid.sum()) // plan.batch_size)
    benchmark(run)
