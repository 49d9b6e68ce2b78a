"""Shared inputs of the micro-benchmarks: small banks of every timed storage scheme compiled by a tiny model, a plan
over them, and activations. ``KVI_MICRO=full`` uses the bench model's attention geometry and longer plans.

    pytest bench/micro --benchmark-only                                  # table; one entry per op x backend
    pytest bench/micro --benchmark-only --benchmark-autosave             # saved under .benchmarks/
    pytest bench/micro --benchmark-only --benchmark-compare=0001         # against an earlier saved run
    pytest bench/micro --benchmark-only --benchmark-json out.json        # machine_info + commit_info + entries
"""
import functools
import os

import pytest
import torch

from kvi_engine.benchmarks.attention import capsule_rows
from kvi_engine.benchmarks.ttft import synthetic_capsules
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.plan.plan import build_plan
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer

FULL = os.environ.get("KVI_MICRO") == "full"
GEOMETRY = dict(hidden=768, heads=12, kv_heads=4) if FULL else dict(hidden=256, heads=4, kv_heads=2)
INJECTED = 1024 if FULL else 256   # injected tokens per row
BATCH = 8 if FULL else 4
PROMPT = 32 if FULL else 16
SCHEMES = ("fp16", "int8", "int4")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One core, like the README's kernel table: comparable across machines with different core counts."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@functools.lru_cache(maxsize=None)
def model():
    tok = tiny_tokenizer(vocab_size=2048)
    return tiny_model("qwen2", tok, layers=1, intermediate=512, **GEOMETRY), tok


@functools.lru_cache(maxsize=None)
def bank(scheme: str, root: str):
    m, tok = model()
    return compile_bank(m, tok, synthetic_capsules(2 * INJECTED // 10), f"{root}/{scheme}", quant=scheme,
                        progress=False)


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="session")
def make_bank(root):
    return lambda scheme: bank(scheme, root)


@pytest.fixture(scope="session")
def make_plan(make_bank):
    return lambda scheme: build_plan(make_bank(scheme), capsule_rows(make_bank(scheme), BATCH, INJECTED))


def activations(q_len: int, kv_len: int, seed: int = 0):
    m, _ = model()
    g = torch.Generator().manual_seed(seed)
    H, Hkv = m.config.num_attention_heads, m.config.num_key_value_heads
    D = m.config.hidden_size // H
    q = torch.randn(BATCH, H, q_len, D, generator=g)
    k = torch.randn(BATCH, Hkv, kv_len, D, generator=g)
    v = torch.randn(BATCH, Hkv, kv_len, D, generator=g)
    return q, k, v
