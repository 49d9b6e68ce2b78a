"""RoPE handling: which variants can be re-positioned exactly, and rotating position-free keys to their slots.

Capsule keys are stored before rotation; at injection they are rotated to slot positions with the model's own
rotary module (same cos/sin, same formula as the model), so an injected capsule is bit-for-bit the key the
model would have produced at that position. That only holds when cos/sin depend on the position alone.
"""
from __future__ import annotations

import torch

# inv_freq fixed at init (position-only cos/sin). "dynamic" rescales with sequence length and "longrope"
# switches frequency sets past the original context: a stored key could not be placed exactly.
REPOSITIONABLE = ("default", "linear", "llama3", "yarn")


class UnsupportedRoPE(ValueError):
    pass


def rotary_module(model) -> torch.nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    rot = getattr(decoder, "rotary_emb", None)
    if rot is None:
        raise UnsupportedRoPE(f"{type(model).__name__}: no rotary embedding module found (decoder.rotary_emb); "
                              "only rotary-position models can be injected")
    return rot


def check_repositionable(model) -> None:
    """Raise :class:`UnsupportedRoPE` unless stored keys can be rotated to any slot exactly."""
    rot = rotary_module(model)
    rope_type = getattr(rot, "rope_type", "default")
    if rope_type not in REPOSITIONABLE:
        raise UnsupportedRoPE(f"RoPE type {rope_type!r} of {type(model).__name__} changes its frequencies with the "
                              f"sequence length, so position-free keys cannot be re-positioned exactly; supported: "
                              f"{REPOSITIONABLE}")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if rot.inv_freq.numel() * 2 != head_dim:
        raise UnsupportedRoPE(f"partial rotary embedding ({rot.inv_freq.numel() * 2} of {head_dim} dims) is not "
                              "supported yet")


def rope_parameters(model) -> dict:
    """What a kernel needs to rotate keys itself: inverse frequencies and the cos/sin scale."""
    rot = rotary_module(model)
    return {"rope_type": getattr(rot, "rope_type", "default"),
            "inv_freq": [float(x) for x in rot.inv_freq.float().cpu()],
            "attention_scaling": float(getattr(rot, "attention_scaling", 1.0))}


def cos_sin(model, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[batch, len, head_dim]`` for integer ``positions [batch, len]``, from the model's own module."""
    rot = rotary_module(model)
    dummy = torch.empty(0, dtype=dtype, device=positions.device)
    return rot(dummy, positions)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``k [batch, heads, len, head_dim]`` by ``cos/sin [batch, len, head_dim]`` (same ops as HF models)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (k * cos) + (rotate_half(k) * sin)
