"""Capture every layer's position-free keys and values during a plain forward pass (used by compile).

Model-agnostic: HF attention modules call their modeling module's ``apply_rotary_pos_emb(q, k, cos, sin)`` right
after the projections (and after Qwen3's q/k norms), then the registered attention function. Wrapping the former
records ``k`` before rotation; a registered attention function records ``v`` and the layer index, then runs SDPA.
"""
from __future__ import annotations

import contextlib
import sys
import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

CAPTURE_IMPL = "kvi_capture"
_state = threading.local()
# The RoPE wrapper is installed in the shared modeling module, so it is seen by every model of that family in
# every thread: it records only inside a capture on its own thread and is installed once, reference-counted.
_patch_lock = threading.Lock()
_patched: dict = {}  # modeling module -> [original apply_rotary_pos_emb, active captures]


def attention_modules(model) -> list[torch.nn.Module]:
    # k_proj looked up in _modules first: a failed hasattr on a Module raises inside __getattr__, and doing that
    # for every module of the model cost ~0.3 ms of each inject().
    mods = [m for m in model.modules() if "k_proj" in m._modules and hasattr(m, "layer_idx")]
    if not mods:
        raise ValueError(f"{type(model).__name__}: no attention modules with layer_idx/k_proj found")
    return mods


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    rec = getattr(_state, "records", None)
    if rec is not None:
        k_pre = _state.pending.pop(id(module), None)
        if k_pre is None:
            raise RuntimeError(f"no pre-RoPE key recorded for layer {module.layer_idx}: the model's attention does "
                               "not call apply_rotary_pos_emb from its modeling module")
        rec[module.layer_idx] = (k_pre, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAPTURE_IMPL, _capture_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_IMPL, sdpa_mask)


def set_attn_implementation(model, name: str) -> str:
    """Switch the attention implementation of ``model`` (and its sub-configs); return the previous one."""
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    return old


@contextlib.contextmanager
def capture_kv(model):
    """Inside, each forward fills ``records[layer] = (k_pre_rope, v)``, both ``[batch, kv_heads, len, head_dim]``."""
    attns = attention_modules(model)
    modeling = {sys.modules[type(m).__module__] for m in attns}
    originals = {}
    for mod in modeling:
        fn = getattr(mod, "apply_rotary_pos_emb", None)
        if fn is None:
            raise ValueError(f"{mod.__name__} has no apply_rotary_pos_emb; cannot capture position-free keys")
        originals[mod] = fn

    def wrap(orig):
        def apply_rotary_pos_emb(q, k, cos, sin, *a, **kw):
            if getattr(_state, "records", None) is not None:
                # Attribute k to the attention module whose forward is running (set by its pre-hook).
                _state.pending[_state.current] = k
            return orig(q, k, cos, sin, *a, **kw)
        return apply_rotary_pos_emb

    def pre_hook(m, args):
        _state.current = id(m)

    with _patch_lock:
        for mod, fn in originals.items():
            entry = _patched.setdefault(mod, [fn, 0])
            if entry[1] == 0:
                setattr(mod, "apply_rotary_pos_emb", wrap(entry[0]))
            entry[1] += 1
    hooks = [m.register_forward_pre_hook(pre_hook) for m in attns]
    old = set_attn_implementation(model, CAPTURE_IMPL)
    _state.records, _state.pending, _state.current = {}, {}, None
    try:
        yield _state.records
    finally:
        _state.records = None
        for h in hooks:
            h.remove()
        with _patch_lock:
            for mod in originals:
                entry = _patched[mod]
                entry[1] -= 1
                if entry[1] == 0:
                    setattr(mod, "apply_rotary_pos_emb", entry[0])
                    del _patched[mod]
        set_attn_implementation(model, old)
