"""The reader: a small Llama trained from scratch here to answer questions from facts it is given (as text or as
injected KV), shipped in ``kvi_engine/reader/model`` (safetensors + tokenizer + model card). It is the embedded
default model when no real one can be loaded, and the instrument of the fidelity benchmark (``kvi bench fidelity``).

    from kvi_engine.reader import load_reader, reader_dir
    model, tok = load_reader()              # = AutoModelForCausalLM / AutoTokenizer .from_pretrained(reader_dir())

Files: schema.py (relations, templates, phrasings), generator.py (seeded synthetic worlds and questions, name
blocklist), tokenizer.py (BPE + chat template), data.py (formats, branch masks, loss), plant.py (planted
previous-token head), train.py (``kvi train-reader``), card.py (model card).
"""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def reader_dir() -> Path:
    """The shipped checkpoint directory (FileNotFoundError if the package was built without it)."""
    if not (MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"{MODEL_DIR}: the reader checkpoint is missing (kvi train-reader --out {MODEL_DIR})")
    return MODEL_DIR


def load_reader(path=None, *, dtype=None):
    """``(model, tokenizer)`` of the reader at ``path`` (default: the shipped one), in eval mode, left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path else reader_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, attn_implementation="sdpa")
    tok.padding_side = "left"
    return model.eval(), tok
