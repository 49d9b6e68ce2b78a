"""Shared test helpers: the small capsule set most tests inject, cached tiny models and tokenizers, an independent
eager-attention forward, and a verbose allclose that says where and by how much tensors differ."""
from __future__ import annotations

import functools

import torch

from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer

CAPSULES = [
    Capsule("SFTSV", "causes", "fever", sentence_id="d1:s1", sentence="SFTSV infection causes fever."),
    Capsule("SFTSV", "transmitted_by", "Haemaphysalis ticks in grassland"),
    Capsule("Oslo", "located_in", "Norway"),
    Capsule("Favipiravir", "treats", "SFTS"),
    Capsule("Mira Vance", "works_for", "the Institute of Vector Biology in Kestrel Bay"),
]
ENTITIES = [Entity("SFTSV", "virus", ("SFTS virus",)), Entity("Oslo", "city")]


@functools.lru_cache(maxsize=None)
def tokenizer(bos: bool):
    return tiny_tokenizer(bos=bos)


@functools.lru_cache(maxsize=None)
def model(family: str, bos: bool, seed: int = 0):
    return tiny_model(family, tokenizer(bos), seed=seed)


def eager_logits(m, input_ids, **kw):
    """Plain HF forward with eager attention: an independent reference for the SDPA-based injected path."""
    old = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return m(input_ids=input_ids, **kw).logits
    finally:
        m.set_attn_implementation(old)


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> None:
    """allclose that says where and by how much the worst element differs (infinities of one sign are equal)."""
    got, want = got.float(), want.float()
    both_inf = torch.isinf(got) & torch.isinf(want) & (got.sign() == want.sign())
    diff = torch.where(both_inf, 0.0, (got - want).abs()).nan_to_num(float("inf"))
    if diff.max() > atol:
        idx = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise AssertionError(f"{what}: {int((diff > atol).sum())} of {diff.numel()} elements differ by more than "
                             f"{atol}; worst {diff.max().item():.3g} at {idx}: got {got[idx].item():.6g}, "
                             f"want {want[idx].item():.6g}")
