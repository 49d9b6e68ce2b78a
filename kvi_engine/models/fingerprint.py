"""Model fingerprint stored in a bank: injecting KV compiled by another model (or tokenizer) is nonsense.

Config and tokenizer are hashed. Weights are summarised by the RMS of every parameter tensor plus a few sampled
values, compared with a tolerance: the same checkpoint loaded in fp32, fp16 or bf16 still matches (rounding moves
an RMS by ~1e-4 relative), while another checkpoint, a fine-tune of any layer or a rescaled tensor does not.
"""
from __future__ import annotations

import hashlib
import json
import weakref

import torch

_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
             "_attn_implementation_internal", "_attn_implementation_autoset", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict", "_commit_hash", "pad_token_id",
             "architectures"}  # architectures is filled in only when a model is saved
PROBE_VALUES = 16


class FingerprintMismatch(ValueError):
    pass


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(config) -> str:
    return _digest({k: v for k, v in config.to_dict().items() if k not in _VOLATILE})


def tokenizer_hash(tokenizer) -> str:
    # Vocabulary and special tokens only: the bank keeps its capsules' token ids itself, and transformers 5.x may
    # reload a saved fast tokenizer with a different digit pre-tokenizer, which must not orphan a bank.
    vocab = sorted(tokenizer.get_vocab().items())
    return _digest({"vocab": vocab, "bos": tokenizer.bos_token, "eos": tokenizer.eos_token})


def probe_names(names) -> list[str]:
    """The parameters the weight probe samples, in order: the first, middle and last of the key projections and
    embeddings (by sorted name)."""
    names = sorted(n for n in names if n.endswith(".weight") and ("k_proj" in n or "embed_tokens" in n))
    return [names[0], names[len(names) // 2], names[-1]] if names else []


def probe_values(tensors) -> list[float]:
    """:data:`PROBE_VALUES` evenly spaced values of each tensor, concatenated (tensors in :func:`probe_names`
    order; from a model or, in the vLLM integration, from checkpoint files)."""
    out: list[float] = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, PROBE_VALUES).long()
        out.extend(float(x) for x in flat[idx.to(flat.device)].float().cpu())
    return out


def weight_probe(model) -> list[float]:
    named = dict(model.named_parameters())
    return probe_values(named[n] for n in probe_names(named))


_RMS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
RMS_RTOL = 2e-3


@torch.no_grad()
def weight_rms(model) -> dict[str, float]:
    """RMS of every parameter, cached per model until a parameter is replaced or modified in place."""
    params = sorted(model.named_parameters())
    key = tuple((p.data_ptr(), p._version) for _, p in params)
    hit = _RMS_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    rms = {n: float(p.detach().float().pow(2).mean().sqrt()) for n, p in params}
    _RMS_CACHE[model] = (key, rms)
    return rms


def fingerprint(model, tokenizer=None) -> dict:
    return {"config": config_hash(model.config), "tokenizer": tokenizer_hash(tokenizer) if tokenizer else None,
            "weights": weight_probe(model), "weight_rms": weight_rms(model), "model_type": model.config.model_type,
            "name_or_path": getattr(model.config, "_name_or_path", "")}


def check(stored: dict, model, tokenizer=None, *, where: str = "bank") -> None:
    """Raise :class:`FingerprintMismatch` naming what differs between ``stored`` and ``model``/``tokenizer``."""
    cur = fingerprint(model, tokenizer)
    if stored.get("config") != cur["config"]:
        raise FingerprintMismatch(f"{where} was compiled by a different model configuration "
                                  f"({stored.get('model_type')} {stored.get('name_or_path')!r}, config "
                                  f"{stored.get('config')}) than the one given ({cur['model_type']} "
                                  f"{cur['name_or_path']!r}, config {cur['config']})")
    if tokenizer is not None and stored.get("tokenizer") not in (None, cur["tokenizer"]):
        raise FingerprintMismatch(f"{where} was compiled with a different tokenizer")
    a, b = torch.tensor(stored.get("weights", [])), torch.tensor(cur["weights"])
    differs = a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=1e-3)
    if not differs and "weight_rms" in stored:
        old, new = stored["weight_rms"], cur["weight_rms"]
        changed = sorted(n for n in set(old) | set(new)
                         if n not in old or n not in new or abs(old[n] - new[n]) > RMS_RTOL * abs(old[n]) + 1e-12)
        if changed:
            differs = True
            where = f"{where} (e.g. {changed[0]}{f' and {len(changed) - 1} more' if len(changed) > 1 else ''})"
    if differs:
        raise FingerprintMismatch(f"{where} was compiled by different weights of the same architecture "
                                  f"({stored.get('name_or_path')!r}); recompile the bank for this model")
