"""Refuse a bank compiled by another model, from vLLM's model config and checkpoint files (no HF model is built)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from kvi_engine.models import fingerprint as fp

logger = logging.getLogger("vllm.kvi")


def check_bank_model(bank, vllm_config) -> None:
    """Raise :class:`~kvi_engine.models.fingerprint.FingerprintMismatch` unless ``bank`` was compiled by the model
    vLLM serves: its shape, kvi's config hash and the fingerprint's sampled weight values and RMS of the probed
    tensors, read from the checkpoint's safetensors. A model without local safetensors is checked by shape and
    config only (logged)."""
    mc = vllm_config.model_config
    hf = _hf_config(mc)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    got = (hf.num_hidden_layers, hf.num_key_value_heads, head_dim)
    have = (bank.shape.num_layers, bank.shape.num_kv_heads, bank.shape.head_dim)
    if got != have:
        raise fp.FingerprintMismatch(f"{bank.path}: bank shape (layers, kv_heads, head_dim) {have} does not match "
                                     f"the served model's {got} ({mc.model})")
    stored = bank.fingerprint
    if stored.get("config") != fp.config_hash(hf):
        raise fp.FingerprintMismatch(f"{bank.path} was compiled by a different model configuration "
                                     f"({stored.get('model_type')} {stored.get('name_or_path')!r}) than the served "
                                     f"{mc.model}")
    tensors = _checkpoint_tensors(mc.model, fp.probe_names(stored.get("weight_rms", {})))
    if tensors is None:
        logger.warning("kvi: %s: no local safetensors checkpoint with the probed tensors; bank %s checked by shape "
                       "and config only", mc.model, bank.path)
        return
    a, b = torch.tensor(stored.get("weights", [])), torch.tensor(fp.probe_values(tensors.values()))
    rms = stored.get("weight_rms", {})
    moved = [n for n, t in tensors.items()
             if n in rms and abs(float(t.float().pow(2).mean().sqrt()) - rms[n]) > fp.RMS_RTOL * abs(rms[n]) + 1e-12]
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=1e-3) or moved:
        raise fp.FingerprintMismatch(f"{bank.path} was compiled by different weights of the same architecture "
                                     f"({stored.get('name_or_path')!r}) than the served {mc.model}; recompile the "
                                     "bank for this model")


def _hf_config(mc):
    """The config as ``compile_bank`` hashed it: transformers' own, loaded from the checkpoint (vLLM may normalise
    fields of its copy, which then hash differently); vLLM's copy when that cannot be loaded."""
    try:
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(mc.model, revision=getattr(mc, "revision", None),
                                        trust_remote_code=getattr(mc, "trust_remote_code", False))
        return hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    except Exception:  # noqa: BLE001 -- any failure: vLLM's copy, whose hash then decides
        return mc.hf_text_config


def _checkpoint_tensors(model_dir: str, names: list[str]) -> dict[str, torch.Tensor] | None:
    """``{name: tensor}`` of the probed parameters, read from the model directory's safetensors files; None when
    the model is not a local directory or a name is missing."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files or not names:
        return None
    from safetensors import safe_open

    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            where.update(dict.fromkeys(h.keys(), f))
    if any(n not in where for n in names):
        return None
    out = {}
    for n in names:
        with safe_open(str(where[n]), framework="pt") as h:
            out[n] = h.get_tensor(n)
    return out
