"""The reader: a small Llama trained from scratch here to answer questions from facts it is given (as text or as
injected KV), shipped in ``kvi_engine/reader/model`` (safetensors + tokenizer + model card) and, fine-tuned to read
capsules the way KVI injects them, in ``kvi_engine/reader/model-adapted``. It is the embedded default model when no
real one can be loaded, and the instrument of the fidelity benchmark (``kvi bench fidelity``).

    from kvi_engine.reader import load_reader, reader_dir
    model, tok = load_reader()              # = AutoModelForCausalLM / AutoTokenizer .from_pretrained(reader_dir())

Files: schema.py (relations, templates, phrasings), generator.py (seeded synthetic worlds and questions, name
blocklist), tokenizer.py (BPE + chat template), data.py (formats, branch masks, loss), plant.py (planted
previous-token head), train.py (``kvi train-reader``), card.py (model card).
"""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
ADAPTED_DIR = Path(__file__).resolve().parent / "model-adapted"  # fine-tuned to read block-diagonal capsules
NAMES = {"reader": MODEL_DIR, "reader-adapted": ADAPTED_DIR}  # --model names of the shipped checkpoints


def reader_dir(name: str = "reader") -> Path:
    """A shipped checkpoint directory: ``reader`` (base: trained on facts as text) or ``reader-adapted`` (fine-tuned
    on capsules the way KVI injects them); FileNotFoundError if the package was built without it."""
    if name not in NAMES:
        raise ValueError(f"unknown reader {name!r}; the package ships {', '.join(NAMES)}")
    path = NAMES[name]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: the {name} checkpoint is missing (kvi train-reader rebuilds it)")
    return path


def load_reader(path=None, *, dtype=None):
    """``(model, tokenizer)`` of the reader at ``path`` (a directory, or a name of :data:`NAMES`; default: the base
    reader), in eval mode, left padding. Weights are stored in fp16 and computed in float32 unless ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = reader_dir(path or "reader") if path is None or str(path) in NAMES else Path(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, attn_implementation="sdpa")
    tok.padding_side = "left"
    return model.eval(), tok
