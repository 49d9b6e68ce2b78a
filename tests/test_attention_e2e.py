"""End to end: greedy generation through each fused backend equals generation through the reference (fp32)."""
import atexit
import copy
import functools
import os
import shutil
import tempfile

import pytest
import torch

from kvi_engine import _core, dispatch
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.generate.engine import KVIEngine
from kvi_engine.generate.inject import inject
from kvi_engine.testing.helpers import CAPSULES, ENTITIES, model, tokenizer

_ROOT = tempfile.mkdtemp(prefix="kvi-e2e-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def bank(scheme):
    m, tok = model("llama", True), tokenizer(True)
    return compile_bank(m, tok, CAPSULES, f"{_ROOT}/{scheme}", quant=scheme, entities=ENTITIES, progress=False)


PROMPTS = ["Which disease does SFTSV cause?", "Where is Oslo?", "Who employs Mira Vance in Kestrel Bay?"]
CAPS = [[0, 1, 5], [2], []]


def spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("scheme", ["fp32", "int8"])
def test_cpp_generation_equals_reference(scheme, monkeypatch):
    m, tok, bank_ = model("llama", True), tokenizer(True), bank(scheme)
    want = KVIEngine(m, tok, bank_, backend="reference").generate(PROMPTS, CAPS, max_new_tokens=6).token_ids
    calls = spy(monkeypatch, _core, "prefix_attention")
    got = KVIEngine(m, tok, bank_, backend="cpp").generate(PROMPTS, CAPS, max_new_tokens=6).token_ids
    assert got == want
    assert len(calls) >= 6 * m.config.num_hidden_layers  # prefill + every decode step, every layer
    calls.clear()
    auto = KVIEngine(m, tok, bank_).generate(PROMPTS, CAPS, max_new_tokens=6).token_ids
    # Automatic choice on the CPU: the kernel for the prefill (one call a layer), the cached reference for decode.
    assert auto == want and len(calls) == m.config.num_hidden_layers
    calls.clear()
    monkeypatch.setenv("KVI_REFERENCE_CACHE_MAX_MB", "0")  # past the cap the kernel also runs every decode step
    auto = KVIEngine(m, tok, bank_).generate(PROMPTS, CAPS, max_new_tokens=6).token_ids
    assert auto == want and len(calls) >= 6 * m.config.num_hidden_layers


def test_cpp_logits_with_layer_masks_and_parallel_layout(tmp_path):
    m, tok = model("qwen3", True), tokenizer(True)
    fp32_bank = compile_bank(m, tok, CAPSULES, tmp_path / "bank", quant="fp32", entities=ENTITIES, progress=False)
    ids = torch.tensor([tok("Which disease does SFTSV cause?", add_special_tokens=False).input_ids])
    for kw in (dict(layers=[1]), dict(capsule_layers={0: [0]}), dict(layout="parallel")):
        with torch.no_grad():
            with inject(m, fp32_bank, [[0, 3, 1]], backend="reference", **kw):
                want = m(input_ids=ids).logits
            with inject(m, fp32_bank, [[0, 3, 1]], backend="cpp", **kw):
                got = m(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.skipif(not dispatch.triton_runnable(), reason="needs Triton (GPU or TRITON_INTERPRET=1)")
def test_triton_generation_equals_reference(monkeypatch):
    import kvi_engine.kernels.prefix_attention as kernel

    m, tok, bank_ = model("llama", True), tokenizer(True), bank("int8")
    if dispatch.cuda_available() and os.environ.get("TRITON_INTERPRET") != "1":  # on a GPU machine (bench/gpu.sh)
        m = copy.deepcopy(m).cuda()
    prompts, caps = PROMPTS[:2], CAPS[:2]
    want = KVIEngine(m, tok, bank_, backend="reference").generate(prompts, caps, max_new_tokens=3).token_ids
    calls = spy(monkeypatch, kernel, "prefix_attention_fwd")
    got = KVIEngine(m, tok, bank_, backend="triton").generate(prompts, caps, max_new_tokens=3).token_ids
    assert got == want and len(calls) >= 3 * m.config.num_hidden_layers


@pytest.mark.skipif(not dispatch.triton_runnable(), reason="needs Triton (GPU or TRITON_INTERPRET=1)")
def test_triton_after_evictions_equals_reference(monkeypatch, tmp_path):
    """A device cache with room for one row's capsules: every forward evicts the previous one's, and the Triton
    path still reads the right slots (its tables are rebuilt from the cache's epoch)."""
    m, tok = model("llama", True), tokenizer(True)
    b = compile_bank(m, tok, CAPSULES, tmp_path / "b", quant="int4", entities=ENTITIES, progress=False)
    rows = [[0, 1, 5], [2, 3], [0, 1, 5]]
    need = max(sum(-(-int(b.ranges[c, 1]) // 16) for c in r) for r in rows) * 16
    monkeypatch.setenv("KVI_DEVICE_CACHE_TOKENS", str(need))
    ids = torch.tensor([tok("Which disease does SFTSV cause?", add_special_tokens=False).input_ids])
    cache = b.device_cache("cpu")
    for row, other in zip(rows, rows[1:] + rows[:1]):
        with torch.no_grad():
            with inject(m, b, [row], backend="reference"):
                want = m(input_ids=ids).logits
            with inject(m, b, [row], backend="triton"):
                first = m(input_ids=ids).logits
                cache.fetch(other)  # another request's capsules take the pool between two forwards of this plan
                again = m(input_ids=ids).logits
        torch.testing.assert_close(first, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(again, want, atol=1e-4, rtol=0)
    assert cache.stats.evictions >= 3
