"""Tiny random HF checkpoints that vLLM loads, and their banks compiled by kvi on the same weights.

    python tests/vllm/make_fixtures.py OUT_DIR [family ...]

OUT_DIR/<family>/model          safetensors checkpoint + tokenizer
OUT_DIR/<family>/bank-fp32      fp32 bank; bank-int8 the same capsules in int8
OUT_DIR/qwen2/bank-other-weights  a bank of the same Qwen2 config with other weights (seed 1): must be refused
Families: llama (BOS prefix), qwen2 (none), llama-llama3 and qwen2-yarn (RoPE scaling: llama3 rescales inv_freq,
yarn also scales cos/sin). head_dim 64: vLLM's CPU attention supports 32, 64, 80, ..., not the suite's usual 16.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import kvi_engine as kvi
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer

CAPSULES = [
    Capsule("SFTSV", "causes", "fever", sentence_id="d1:s1", sentence="SFTSV infection causes fever."),
    Capsule("SFTSV", "transmitted_by", "Haemaphysalis ticks in grassland"),
    Capsule("Oslo", "located_in", "Norway"),
    Capsule("Favipiravir", "treats", "SFTS"),
    Capsule("Mira Vance", "works_for", "the Institute of Vector Biology in Kestrel Bay"),
    Capsule("Kestrel Bay", "located_in", "the north coast"),
    Capsule("Ribavirin", "treats", "Lassa fever"),
    Capsule("Lassa virus", "causes", "Lassa fever"),
    Capsule("Bergen", "located_in", "Norway"),
    Capsule("Mira Vance", "born_in", "Bergen"),
    Capsule("Haemaphysalis ticks", "part_of", "the family Ixodidae"),
    Capsule("Institute of Vector Biology", "founded_in", "1987"),
]
MODEL_KW = dict(hidden=256, layers=2, heads=4, kv_heads=2)  # head_dim 64, GQA 4/2
FAMILIES = {  # name -> (model family, tokenizer has a BOS prefix, rope_parameters)
    "llama": ("llama", True, None),
    "qwen2": ("qwen2", False, None),
    "llama-llama3": ("llama", True, {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}),
    "qwen2-yarn": ("qwen2", False, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                    "original_max_position_embeddings": 1024}),
}


def build(out: Path, name: str) -> Path:
    family, bos, rope = FAMILIES[name]
    tok = tiny_tokenizer(bos=bos)
    model = tiny_model(family, tok, seed=0, **MODEL_KW, **({"rope_parameters": rope} if rope else {}))
    d = out / name
    (d / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    for q in ("fp32", "int8"):
        kvi.compile_bank(model, tok, CAPSULES, d / f"bank-{q}", quant=q, progress=False)
    if name == "qwen2":
        other = tiny_model(family, tok, seed=1, **MODEL_KW)
        kvi.compile_bank(other, tok, CAPSULES, d / "bank-other-weights", quant="fp32", progress=False)
    return d


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out = Path(argv[0])
    for name in argv[1:] or FAMILIES:
        t = time.perf_counter()
        build(out, name)
        print(f"fixtures {name}: {time.perf_counter() - t:.1f} s", flush=True)
    (out / "READY").write_text("\n".join(argv[1:] or FAMILIES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
