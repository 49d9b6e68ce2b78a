"""Model loading: real Hugging Face models by hub name or local directory, with an offline-aware fallback.

A hub name is resolved from the local cache only when the hub cannot be reached: reachability is probed once per
process with a 2 s TCP connect to the hub, or to the proxy of ``HTTPS_PROXY``/``ALL_PROXY`` when one is set
(``HF_HUB_OFFLINE=1`` skips the probe), so a machine without network falls back in about that time instead of
spending ~50 s in per-file retries. A model the user named is never replaced by the
fallback: its load error is raised.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PROBE_TIMEOUT_S = 2.0


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a TCP connection within ``timeout`` seconds (DNS
    included: resolution runs in a daemon thread, so a hanging resolver cannot block the caller)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if url.scheme == "https" and os.environ.get(v)), None) or \
        next((os.environ[v] for v in ("HTTP_PROXY", "http_proxy") if url.scheme == "http" and os.environ.get(v)), None)
    if proxy and not _bypassed(host):  # behind a proxy the hub is reached through it: probe the proxy instead
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 3128
    ok = threading.Event()

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return ok.is_set()


def _bypassed(host: str) -> bool:
    """Whether NO_PROXY names ``host`` (exactly or as a domain suffix)."""
    entries = [e.strip().lstrip(".") for e in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",")]
    return any(e == "*" or host == e or host.endswith("." + e) for e in entries if e)


READER = "reader"  # --model reader: the reader shipped in kvi_engine/reader/model (reader-adapted: model-adapted)


def _pretrained(name: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvi_engine.reader import NAMES, reader_dir
    if name in NAMES:
        name, dtype = str(reader_dir(name)), dtype or torch.float32  # stored in fp16, computed in float32
    local = Path(name).expanduser().is_dir()
    offline = {} if local or hub_reachable() else {"local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(name, **offline)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", attn_implementation="sdpa", **offline)
    return model, tokenizer


READER_BANNER = ("FALLING BACK TO THE BUNDLED READER: a 4M-parameter Llama trained here on synthetic fact QA.\n"
                 "!! It answers short questions from facts it is given (prompt text or injected KV) and knows nothing "
                 "else.")
RANDOM_BANNER = "FALLING BACK TO A TINY RANDOM Qwen2 MODEL: timings are real, answers are noise."


def fallback_model(device: str = "cpu"):
    """``(model, tokenizer, banner)`` used when no real model can be loaded: the shipped reader
    (:mod:`kvi_engine.reader`), or a tiny random Qwen2 (answers are noise) when the package has no reader files."""
    try:
        from kvi_engine.reader import load_reader
        model, tokenizer = load_reader()
        return model.to(device), tokenizer, READER_BANNER
    except FileNotFoundError:
        from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer

        tokenizer = tiny_tokenizer(vocab_size=2048)
        return (tiny_model("qwen2", tokenizer, hidden=256, layers=4, heads=8, kv_heads=2).to(device), tokenizer,
                RANDOM_BANNER)


def load_model(name: str | None = None, *, dtype: torch.dtype | None = None, device: str = "cpu",
               allow_fallback: bool = True):
    """Load ``name`` (hub name or local dir). With no name, load :data:`DEFAULT_MODEL`; if that cannot be loaded
    (no network and not cached) and ``allow_fallback``, return :func:`fallback_model` instead and say so loudly on
    stderr. Returns ``(model, tokenizer, is_fallback)``."""
    allow_fallback = allow_fallback and name is None
    name = name or DEFAULT_MODEL
    try:
        model, tokenizer = _pretrained(name, dtype)
    except Exception as e:  # noqa: BLE001 -- any load failure (offline, missing dir) leads to the same choice
        if not allow_fallback:
            raise
        banner = "!" * 78
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
        model, tokenizer, what = fallback_model(device)
        print(f"{banner}\n!! could not load {name!r}: {why}\n!! {what}\n"
              f"!! Pass --model /path/to/a/local/model for a real LM.\n{banner}", file=sys.stderr)
        return model, tokenizer, True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer, False
