import functools

import pytest
import torch

from kvi_engine.capsules.capsule import Capsule, Entity
from kvi_engine.testing.tiny import FAMILIES, tiny_model, tiny_tokenizer

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


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def eager_logits(m, input_ids, **kw):
    """Plain HF forward with eager attention: an independent reference for the SDPA-based injected path."""
    old = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return m(input_ids=input_ids, **kw).logits
    finally:
        m.set_attn_implementation(old)
